import type { FastifyInstance } from 'fastify';
import { createPool } from '../create-pool.js';
import type { PoolOptions } from '../options.js';
import type { Pool } from '../pool.js';
import type { InspectionEvent } from 'xstate';
import type { InspectObserver } from '../inspection.js';
import { buildApp } from './app.js';
import { registerDashboard } from './dashboard.js';
import { LiveView } from './live.js';
import { ServiceMetrics } from './metrics.js';
import { resolveServeOptions } from './options.js';
import type { ServeOptions } from './options.js';
import { Service } from './service.js';

/** A service ready to start: its pool (not started), the service over it, and its HTTP app (not listening). */
export interface ServiceParts {
  pool: Pool;
  service: Service;
  app: FastifyInstance;
}

/**
 * Build what `tidepool serve` runs: a pool on the embedded queue (or `poolOptions.source`)
 * whose events feed the service's registry and metrics, and the HTTP app over it. The caller
 * starts the pool, listens, and drains. Throws `OptionError` (TIDEPOOL_ERR_OPTION_INVALID)
 * naming the first bad pool or serve option.
 *
 * @example
 * const { pool, service, app } = createService({ worker: { module: './handler.js' } }, { httpPort: 0 });
 * await pool.start();
 * await app.listen({ port: service.options.httpPort, host: service.options.httpHost });
 */
export function createService(poolOptions: PoolOptions, serveOptions: ServeOptions = {}): ServiceParts {
  const options = resolveServeOptions(serveOptions);
  let pool: Pool | null = null;
  const metrics = new ServiceMetrics(() => {
    const p = pool!;
    return { workers: p.workers, breaker: p.breaker, queued: p.queued, inFlight: p.inFlight };
  });
  // One inspection stream feeds the metrics, the dashboard, and the caller's observer if any.
  const live = new LiveView();
  const user = poolOptions.inspect as InspectObserver | undefined;
  const observers = [metrics.inspect, live.observer.next!, ...(user ? [typeof user === 'function' ? user : (e: InspectionEvent) => user.next?.(e)] : [])];
  pool = createPool({ ...poolOptions, inspect: (event: InspectionEvent) => observers.forEach((next) => next(event)) });
  live.attach(pool);
  const service = new Service(pool, options, metrics);
  const app = buildApp(service);
  const o = pool.options;
  registerDashboard(app, live, {
    token: options.httpToken,
    delays: {
      pool: { crashWindow: o.crashWindow, breakerCooldown: o.breakerCooldown },
      worker: { spawnTimeout: o.spawnTimeout, taskTimeout: o.timeout, killGrace: o.killGrace, idleTimeout: o.idleTimeout },
    },
  });
  app.addHook('onClose', async () => live.close());
  return { pool, service, app };
}
