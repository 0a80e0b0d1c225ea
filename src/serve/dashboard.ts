import { readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { describeMachine } from '../../machines/describe.js';
import { poolMachine } from '../../machines/pool.js';
import { workerMachine } from '../../machines/worker.js';
import { bearerGuard } from './app.js';
import { diagramSvg } from './diagram.js';
import type { LiveMessage, LiveView } from './live.js';

/**
 * The live dashboard at `/`: one page (no framework, nothing from the internet) with the pool's
 * state and counters, every live worker, recent outcomes and both statecharts with the current
 * states highlighted; kept live by Server-Sent Events from `/dashboard/events` (a snapshot,
 * then coalesced updates). Read-only like `/metrics`; cancelling from the page goes through
 * `DELETE /tasks/:id`, with the token when the service has one.
 */

const asset = (name: string) => readFileSync(new URL(`./dashboard/${name}`, import.meta.url), 'utf8');

/** How the service runs the dashboard. */
export interface DashboardOptions {
  /** The service's bearer token: when set, the page's data needs it too (the page asks for it). */
  token: string | null;
  /** Delays as the service runs them (ms), for the diagrams. */
  delays?: { pool?: Record<string, number>; worker?: Record<string, number> };
}

/**
 * Routes: `GET /` (the page), `/dashboard/page.js`, `/dashboard/page.css` (public: they hold
 * no data), and the data: `/dashboard/events` (Server-Sent Events) and `/dashboard/snapshot`
 * (JSON), behind the bearer token when the service has one (the page sends it as a header,
 * never in a URL).
 */
export function registerDashboard(app: FastifyInstance, live: LiveView, options: DashboardOptions): void {
  const delays = options.delays ?? {};
  const page = asset('page.html')
    .replace('<!--pool-chart-->', diagramSvg(describeMachine(poolMachine, delays.pool)))
    .replace('<!--worker-chart-->', diagramSvg(describeMachine(workerMachine, delays.worker), 'TB'));
  const script = asset('page.js');
  const style = asset('page.css');
  const html = (type: string, body: string) => (_: unknown, reply: { type(t: string): { send(b: string): unknown } }) =>
    reply.type(type).send(body);
  app.get('/', html('text/html; charset=utf-8', page));
  app.get('/dashboard/page.js', html('text/javascript; charset=utf-8', script));
  app.get('/dashboard/page.css', html('text/css; charset=utf-8', style));
  // Event streams never end by themselves: the server's close ends them, or it would wait for
  // every open page (a drain that never finishes while someone watches it).
  const streams = new Set<EventStream>();
  app.addHook('preClose', (done) => {
    for (const stream of streams) stream.close();
    done();
  });
  void app.register(async (data) => {
    if (options.token !== null) data.addHook('onRequest', bearerGuard(options.token, "the dashboard's data"));
    data.get('/dashboard/snapshot', async () => live.snapshot());
    data.get('/dashboard/events', (request, reply) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      // Proxies (nginx) would buffer the stream otherwise.
      'x-accel-buffering': 'no',
    });
    const stream = new EventStream(res, live);
    streams.add(stream);
    request.raw.on('close', () => {
      streams.delete(stream);
      stream.close();
    });
    });
  });
}

/** Between keep-alive comments on an idle stream, in ms (proxies close silent connections). */
const KEEPALIVE_MS = 15_000;

/**
 * One page's event stream. A page that cannot keep up (its socket's buffer is full) gets no
 * updates until the buffer drains, then a fresh snapshot: memory per page stays bounded
 * however fast the pool runs.
 */
class EventStream {
  readonly #res: ServerResponse;
  readonly #live: LiveView;
  readonly #unsubscribe: () => void;
  readonly #keepalive: NodeJS.Timeout;
  #lagging = false;

  constructor(res: ServerResponse, live: LiveView) {
    this.#res = res;
    this.#live = live;
    // A reconnecting EventSource waits this long (ms) before it tries again.
    res.write('retry: 1000\n\n');
    this.#send(live.snapshot());
    this.#unsubscribe = live.subscribe((message) => {
      if (!this.#lagging) this.#send(message);
    });
    this.#keepalive = setInterval(() => res.write(': keep-alive\n\n'), KEEPALIVE_MS);
    this.#keepalive.unref();
    res.on('drain', () => {
      if (!this.#lagging) return;
      this.#lagging = false;
      this.#send(this.#live.snapshot());
    });
  }

  #send(message: LiveMessage): void {
    if (!this.#res.write(`event: ${message.type}\ndata: ${JSON.stringify(message)}\n\n`)) this.#lagging = true;
  }

  close(): void {
    this.#unsubscribe();
    clearInterval(this.#keepalive);
    if (!this.#res.writableEnded) this.#res.end();
  }
}
