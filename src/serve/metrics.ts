import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { InspectionEvent } from 'xstate';
import type { FailureKind } from '../../machines/types.js';
import type { TaskResult } from '../pool.js';

/** Every failure kind, so that each `outcome` series exists (at 0) from the start. */
const OUTCOMES: readonly ('resolved' | FailureKind)[] = ['resolved', 'error', 'timeout', 'crash', 'memory', 'spawn', 'malformed', 'cancelled'];
const WORKER_STATES = ['spawning', 'ready', 'running', 'leaving'] as const;
const BREAKER_STATES = ['closed', 'open', 'half-open'] as const;

/** What the gauges read at each scrape. */
export interface MetricsSource {
  workers: Record<(typeof WORKER_STATES)[number], number>;
  breaker: { state: (typeof BREAKER_STATES)[number] };
  /** Tasks waiting for an attempt (`pool.queued`). */
  queued: number;
  /** Tasks accepted and not yet final (`pool.inFlight`). */
  inFlight: number;
}

/** The `outcome` label of a final result or an attempt: `resolved`, or the failure kind. */
export const outcomeLabel = (result: TaskResult): string => (result.status === 'resolved' ? 'resolved' : result.error.kind);

/**
 * The Prometheus series of one service, in a registry of its own (never prom-client's global
 * one, so two services in one process do not mix). Names carry the `tidepool_` prefix, times
 * are in seconds (Prometheus convention); the README lists every series. prom-client's
 * default metrics (process CPU, memory, event loop, GC) are included, prefixed too.
 *
 * @example
 * const metrics = new ServiceMetrics(() => pool);
 * res.type(metrics.contentType).send(await metrics.text());
 */
export class ServiceMetrics {
  readonly registry = new Registry();
  readonly #tasks: Counter<'outcome'>;
  readonly #attempts: Counter<'outcome' | 'settlement'>;
  readonly #attemptDuration: Histogram<'outcome'>;
  readonly #queueWait: Histogram;
  readonly #spawnDuration: Histogram;
  readonly #spawned: Counter;
  readonly #reaped: Counter;
  readonly #trips: Counter;
  readonly #requests: Counter<'route' | 'code'>;
  /** Worker actors started and not yet ready, with their start time (ms). Weak: one that never gets ready is let go. */
  readonly #starting = new WeakMap<object, number>();

  constructor(read: () => MetricsSource) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'tidepool_' });
    this.#tasks = new Counter({
      name: 'tidepool_tasks_total',
      help: 'Tasks that reached their final outcome, by outcome (resolved, or the failure kind)',
      labelNames: ['outcome'],
      registers,
    });
    this.#attempts = new Counter({
      name: 'tidepool_attempts_total',
      help: 'Attempts that ended, by outcome and by what the source did with the delivery (ack, retry, dead-letter)',
      labelNames: ['outcome', 'settlement'],
      registers,
    });
    for (const outcome of OUTCOMES) this.#tasks.inc({ outcome }, 0);
    this.#attemptDuration = new Histogram({
      name: 'tidepool_attempt_duration_seconds',
      help: 'Time from the start of an attempt in its worker to its outcome, by outcome',
      labelNames: ['outcome'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900],
      registers,
    });
    this.#queueWait = new Histogram({
      name: 'tidepool_queue_wait_seconds',
      help: 'Time from the acceptance of a task to the start of its first attempt',
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.#spawnDuration = new Histogram({
      name: 'tidepool_spawn_duration_seconds',
      help: 'Time from the pool starting a worker to the worker being ready for a task (a module worker: its handler loaded)',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.#spawned = new Counter({ name: 'tidepool_workers_spawned_total', help: 'Worker processes started', registers });
    this.#reaped = new Counter({ name: 'tidepool_workers_reaped_total', help: 'Worker processes reaped (exited and waited for)', registers });
    this.#trips = new Counter({ name: 'tidepool_breaker_trips_total', help: 'Times the crash breaker opened', registers });
    this.#requests = new Counter({
      name: 'tidepool_http_requests_total',
      help: 'HTTP requests answered, by route and status code',
      labelNames: ['route', 'code'],
      registers,
    });
    new Gauge({
      name: 'tidepool_workers',
      help: 'Live worker processes by state (spawning, ready, running, leaving)',
      labelNames: ['state'],
      registers,
      collect() {
        const workers = read().workers;
        for (const state of WORKER_STATES) this.set({ state }, workers[state]);
      },
    });
    new Gauge({
      name: 'tidepool_breaker_state',
      help: 'The crash breaker: 1 for its current state (closed, open, half-open), 0 for the others',
      labelNames: ['state'],
      registers,
      collect() {
        const now = read().breaker.state;
        for (const state of BREAKER_STATES) this.set({ state }, state === now ? 1 : 0);
      },
    });
    new Gauge({
      name: 'tidepool_queue_depth',
      help: 'Tasks waiting for an attempt (queued, or waiting for a retry), not running',
      registers,
      collect() {
        this.set(read().queued);
      },
    });
    new Gauge({
      name: 'tidepool_tasks_in_flight',
      help: 'Tasks accepted and not yet final (queued, running, or waiting for a retry)',
      registers,
      collect() {
        this.set(read().inFlight);
      },
    });
  }

  /** The text format's content type, for the response header. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** Every series in the Prometheus text format. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  taskEnded(result: TaskResult): void {
    this.#tasks.inc({ outcome: outcomeLabel(result) });
  }

  /** An attempt ended after `ms` in its worker (null when it never started: no duration is observed). */
  attemptEnded(outcome: string, settlement: string, ms: number | null): void {
    this.#attempts.inc({ outcome, settlement });
    if (ms !== null) this.#attemptDuration.observe({ outcome }, ms / 1000);
  }

  queueWait(ms: number): void {
    this.#queueWait.observe(ms / 1000);
  }

  workerSpawned(): void {
    this.#spawned.inc();
  }

  workerReaped(): void {
    this.#reaped.inc();
  }

  breakerTripped(): void {
    this.#trips.inc();
  }

  request(route: string, code: number): void {
    this.#requests.inc({ route, code: String(code) });
  }

  /**
   * An XState inspection observer (the pool's `inspect` option) that times each worker from
   * its machine's start to its `proc.ready` event: the spawn latency. It reads two event
   * types and ignores the rest.
   */
  readonly inspect = (event: InspectionEvent): void => {
    if (event.type === '@xstate.actor') {
      const id = (event.actorRef as { id?: string }).id;
      if (id?.startsWith('worker.')) this.#starting.set(event.actorRef, performance.now());
    } else if (event.type === '@xstate.event' && event.event.type === 'proc.ready') {
      const startedAt = this.#starting.get(event.actorRef);
      if (startedAt === undefined) return;
      this.#starting.delete(event.actorRef);
      this.#spawnDuration.observe((performance.now() - startedAt) / 1000);
    }
  };
}
