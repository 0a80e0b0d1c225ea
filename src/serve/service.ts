import type { Logger } from 'pino';
import { TidepoolError } from '../errors.js';
import { redactUrl } from '../logging.js';
import type { Pool, TaskResult } from '../pool.js';
import { outcomeLabel, ServiceMetrics } from './metrics.js';
import { RecentTasks } from './recent.js';
import type { TaskView } from './recent.js';
import type { ResolvedServeOptions } from './options.js';

/** While a drain waits, its progress is logged at least this often (ms). */
const DRAIN_LOG_MS = 5_000;
/** How often the event loop's delay is sampled (ms): the finest delay `/healthz` can see. */
const HEARTBEAT_MS = 20;

/** How `/readyz` sees the service. */
export interface Readiness {
  ready: boolean;
  /** Why it is not ready (empty when it is). */
  reasons: string[];
  /** The pool machine's state (`running`, `paused`, `draining`, ...). */
  state: string;
  pausedBy: 'user' | 'breaker' | null;
  breaker: Pool['breaker'];
  /** How worker trees are held (`subreaper`, `group`, `proc`), null until a worker has started. */
  containment: string | null;
  queued: number;
  inFlight: number;
}

/** How `/healthz` sees the process. */
export interface Health {
  healthy: boolean;
  /** The event loop's largest delay over the last second or so, in ms. */
  loopDelayMs: number;
  maxLoopDelayMs: number;
}

/** What happened to a submitted task: its final outcome, or the service stopped before it had one. */
export type Settled = { ok: true; result: TaskResult } | { ok: false; error: Error };

/** How a drain ended. */
export interface DrainReport {
  /** Every running attempt ended within the deadline. */
  finished: boolean;
  /** Tasks without a final outcome when the pool stopped: handed back to the source. */
  handedBack: number;
}

/**
 * The service behind `tidepool serve`, without HTTP: it submits tasks to a started pool, keeps
 * the recent ones by id (`RecentTasks`), feeds the metrics from the pool's events, says whether
 * it is ready and healthy, and drains. The HTTP app (`buildApp`) is a thin layer over it.
 */
export class Service {
  readonly pool: Pool;
  readonly options: ResolvedServeOptions;
  readonly metrics: ServiceMetrics;
  readonly logger: Logger;
  readonly #recent: RecentTasks;
  /** Attempts running, by task id, with their start time (ms): for the duration histogram and the drain. */
  readonly #running = new Map<string, number>();
  /** Set when a spawn failed; cleared once an attempt starts: workers cannot be started. */
  #spawnFailure: string | null = null;
  #draining = false;
  #drainWake: (() => void) | null = null;
  /** The loop's delay: the latest beat (performance.now(), ms), and the most late a beat came in this window and the last. */
  #beat = performance.now();
  #lateNow = 0;
  #lateBefore = 0;
  #beats = 0;
  readonly #heartbeat: NodeJS.Timeout;
  /** Why the source's broker connection was lost (null while connected). */
  #lost: string | null = null;

  /**
   * `metrics` must be the one whose `inspect` observer the pool was created with (for the
   * spawn latency); the pool must not have been started yet, or events before this are missed.
   */
  constructor(pool: Pool, options: ResolvedServeOptions, metrics: ServiceMetrics) {
    this.pool = pool;
    this.options = options;
    this.metrics = metrics;
    this.logger = pool.logger;
    this.#recent = new RecentTasks(options.maxRecent);
    pool.on('attempt:start', ({ taskId, attempt, workerId, pid }) => {
      this.#spawnFailure = null;
      this.#running.set(taskId, performance.now());
      // A broker's tasks were not submitted here: known from their first attempt on this host
      // (their time in the broker's queue is not seen, so no queue-wait sample).
      if (!this.takesTasks && !this.#recent.has(taskId)) {
        this.#recent.accepted(taskId);
        this.#recent.started(taskId, attempt, workerId, pid);
        return;
      }
      const waited = this.#recent.started(taskId, attempt, workerId, pid);
      if (waited !== null) metrics.queueWait(waited);
    });
    if (!this.takesTasks) {
      pool.on('outcome', (result) => this.#recent.ended(result));
      // Deliveries of a lost connection come again, here or on another host: no outcome here.
      pool.on('source:lost', ({ reason }) => {
        this.#lost = redactUrl(reason.message);
        this.#recent.droppedAll();
      });
      pool.on('source:restored', () => {
        this.#lost = null;
      });
    }
    pool.on('attempt', ({ taskId, attempt, outcome, settlement }) => {
      const startedAt = this.#running.get(taskId);
      this.#running.delete(taskId);
      const label = outcome.status === 'resolved' ? 'resolved' : outcome.kind;
      metrics.attemptEnded(label, settlement.action, startedAt === undefined ? null : performance.now() - startedAt);
      if (outcome.status === 'failed' && outcome.kind === 'spawn') this.#spawnFailure = outcome.message;
      // A broker's retry is a new message, which any host may take: no longer this one's.
      if (settlement.action === 'retry') {
        if (this.takesTasks) this.#recent.retrying(taskId, attempt);
        else this.#recent.dropped(taskId);
      }
      if (this.#draining) this.#drainWake?.();
    });
    pool.on('outcome', (result) => metrics.taskEnded(result));
    pool.on('worker:spawned', () => metrics.workerSpawned());
    pool.on('worker:reaped', () => {
      metrics.workerReaped();
      if (this.#draining) this.#drainWake?.();
    });
    pool.on('breaker:tripped', () => metrics.breakerTripped());
    // The loop's delay: a beat every HEARTBEAT_MS notes how late it came, kept as the most over
    // the current window of a second and the one before. A blocked loop shows whichever runs
    // first once it is free: the beat (its lateness), or a probe (the beat overdue so far);
    // Node's own delay histogram records only in a later phase of the loop than the one that
    // answers a request, so a probe right after a block could still read it clean.
    this.#heartbeat = setInterval(() => {
      const now = performance.now();
      this.#lateNow = Math.max(this.#lateNow, now - this.#beat - HEARTBEAT_MS);
      this.#beat = now;
      if (++this.#beats * HEARTBEAT_MS >= 1000) {
        this.#lateBefore = this.#lateNow;
        this.#lateNow = 0;
        this.#beats = 0;
      }
    }, HEARTBEAT_MS).unref();
  }

  /**
   * Whether `submit` can take tasks: the pool's source takes them from `run()` (the embedded
   * queue). A broker's source does not: its tasks are published to the broker.
   */
  get takesTasks(): boolean {
    return typeof this.pool.source.publish === 'function';
  }

  get draining(): boolean {
    return this.#draining;
  }

  /** Tasks accepted and not yet final. */
  get inFlight(): number {
    return this.#recent.inFlight;
  }

  /** Whether a task with this id is in flight (a second one is refused: ids are idempotency keys). */
  has(id: string): boolean {
    return this.#recent.has(id);
  }

  /**
   * Submit a task already parsed (its id known): `payload` is its JSON text, passed on as it
   * arrived (command workers get these bytes). Resolves once it is final, or once the service
   * stopped without it ending; never rejects. The caller has checked `has(id)` and the
   * `maxQueued` bound.
   */
  submit(id: string, payload: string): Promise<Settled> {
    this.#recent.accepted(id);
    return this.pool.run(payload, { defaultId: id }).then(
      (result): Settled => {
        this.#recent.ended(result);
        return { ok: true, result };
      },
      (error: Error): Settled => {
        this.#recent.dropped(id);
        return { ok: false, error };
      },
    );
  }

  /** What is known of a task, or undefined (never seen, or forgotten past `maxRecent`). */
  view(id: string): TaskView | undefined {
    return this.#recent.view(id, (taskId) => this.pool.progressOf(taskId));
  }

  /** Cancel a task (`pool.cancel`): `queued` (removed), `running` (its process group ended), or `unknown`. */
  cancel(id: string): 'queued' | 'running' | 'unknown' {
    return this.pool.cancel(id);
  }

  /** The process is alive and its event loop responsive. */
  health(): Health {
    const overdue = performance.now() - this.#beat - HEARTBEAT_MS;
    const loopDelayMs = Math.max(0, Math.round(Math.max(this.#lateNow, this.#lateBefore, overdue)));
    return { healthy: loopDelayMs <= this.options.maxLoopDelay, loopDelayMs, maxLoopDelayMs: this.options.maxLoopDelay };
  }

  /** Ready only while intake runs and workers can be started. */
  readiness(): Readiness {
    const { pool } = this;
    const breaker = pool.breaker;
    const reasons: string[] = [];
    if (this.#draining) reasons.push('draining: intake stopped, running tasks finishing');
    const state = pool.state;
    // A drain pauses the pool itself: that pause says nothing more.
    if (state === 'paused' && !(this.#draining && pool.pausedBy === 'user')) {
      reasons.push(pool.pausedBy === 'breaker' ? 'paused by the crash breaker' : 'intake paused');
    } else if (state !== 'running' && state !== 'paused' && !this.#draining) {
      reasons.push(`the pool is ${state}`);
    }
    if (breaker.state !== 'closed') {
      const until = breaker.retryAt === null ? '' : ` until ${new Date(breaker.retryAt).toISOString()}`;
      reasons.push(`the crash breaker is ${breaker.state}${until} (${breaker.trips} trips)`);
    }
    if (this.#spawnFailure !== null) reasons.push(`workers cannot be started: ${this.#spawnFailure}`);
    const source = pool.source as { connected?: unknown; url?: unknown };
    if (source.connected === false) {
      const where = typeof source.url === 'string' ? ` at ${redactUrl(source.url)}` : '';
      reasons.push(`not connected to the broker${where}; reconnecting${this.#lost === null ? '' : ` (lost: ${this.#lost})`}`);
    }
    return {
      ready: reasons.length === 0,
      reasons,
      state,
      pausedBy: pool.pausedBy,
      breaker,
      containment: pool.containment,
      queued: pool.queued,
      inFlight: pool.inFlight,
    };
  }

  /**
   * Stop intake at once (`readiness()` says draining, new tasks are refused), let running
   * attempts finish for up to `timeout` ms, then stop the pool: what still runs is terminated
   * (SIGTERM to its process group, SIGKILL after the kill grace) and every delivery without a
   * final outcome is handed back to the source, never acked (the embedded queue loses them
   * with the process). Progress is logged. Throws `TIDEPOOL_ERR_POOL_STATE` when called twice.
   */
  async drain(timeout = this.options.drainTimeout): Promise<DrainReport> {
    if (this.#draining) throw new TidepoolError('TIDEPOOL_ERR_POOL_STATE', 'the service is already draining');
    this.#draining = true;
    const { pool, logger } = this;
    // Nothing new starts: the source stops delivering and the backlog waits.
    pool.pause();
    const busy = () => this.#running.size + pool.workers.spawning;
    logger.info(
      { running: this.#running.size, starting: pool.workers.spawning, queued: pool.queued, drainTimeout: timeout },
      `draining: intake stopped; waiting up to ${timeout} ms for ${busy()} running task(s)`,
    );
    const deadline = Date.now() + timeout;
    let finished = busy() === 0;
    let timer: NodeJS.Timeout | undefined;
    // Progress is logged when the count changes, and every DRAIN_LOG_MS while it does not.
    let logged = { count: busy(), at: Date.now() };
    while (!finished && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        this.#drainWake = resolve;
        timer = setTimeout(resolve, Math.min(deadline - Date.now(), DRAIN_LOG_MS));
      });
      clearTimeout(timer);
      this.#drainWake = null;
      const count = busy();
      finished = count === 0;
      if (!finished && (count !== logged.count || Date.now() - logged.at >= DRAIN_LOG_MS)) {
        logger.info({ running: count, leftMs: Math.max(0, deadline - Date.now()) }, `draining: ${count} task(s) still running`);
        logged = { count, at: Date.now() };
      }
    }
    const running = busy();
    const handedBack = pool.inFlight;
    if (finished) {
      logger.info({ handedBack }, `draining: every running task ended; stopping the pool`);
    } else {
      logger.warn(
        { running, killGrace: pool.options.killGrace },
        `draining: deadline of ${timeout} ms passed with ${running} task(s) running; terminating them (SIGTERM, SIGKILL after ${pool.options.killGrace} ms)`,
      );
    }
    if (handedBack > 0) {
      logger.warn(
        { handedBack },
        `draining: ${handedBack} task(s) without a final outcome handed back to the source, never acked (the embedded queue loses them with the process)`,
      );
    }
    await pool.stop();
    logger.info('drained: the pool has stopped');
    return { finished, handedBack };
  }

  /** Release the service's own timers (the pool is stopped by `drain()` or by its owner). */
  close(): void {
    clearInterval(this.#heartbeat);
  }
}
