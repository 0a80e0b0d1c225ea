import { EventEmitter } from 'node:events';
import { pino } from 'pino';
import type { Logger } from 'pino';
import { createActor, fromPromise, toPromise } from 'xstate';
import type { Actor, ActorOptions, InspectionEvent, Observer } from 'xstate';
import { poolMachine } from '../machines/pool.js';
import type { BreakerParams, ReapedParams, ReleaseParams, SettleParams } from '../machines/pool.js';
import type { FailedOutcome, FailureKind, Outcome, WorkerReport } from '../machines/types.js';
import { workerMachine } from '../machines/worker.js';
import { TidepoolError } from './errors.js';
import { resolveOptions } from './options.js';
import type { PoolOptions, ResolvedOptions } from './options.js';
import { hostSpec, processActor } from './process/driver.js';
import { ProcessRegistry, registry } from './process/registry.js';
import { SpawnHost } from './process/spawn-host.js';
import type { HostEdition } from './process/spawn-host.js';
import { decideSettlement } from './settlement.js';
import type { Settlement } from './settlement.js';
import { MemorySource } from './sources/memory.js';
import type { Clock as MemoryClock } from './sources/memory.js';
import type { Delivery, Source, Task } from './sources/source.js';

/** The final outcome of a task: one per task, after its last attempt. */
export type TaskResult =
  | { id: string; status: 'resolved'; result: unknown; attempts: number; durationMs: number }
  | {
      id: string;
      status: 'failed';
      error: { kind: FailureKind; message: string; exitCode?: number | null; signal?: string | null };
      attempts: number;
      durationMs: number;
    };

/** One attempt's outcome and what the source did with it. */
export interface AttemptEvent {
  taskId: string;
  attempt: number;
  outcome: Outcome;
  settlement: Settlement;
}

export interface PoolEvents {
  /** A task reached its final outcome. */
  outcome: [TaskResult];
  /** An attempt ended (every attempt, retried or not). */
  attempt: [AttemptEvent];
  'worker:spawned': [{ workerId: string; pid: number }];
  'worker:reaped': [WorkerReport];
  /** Too many crashes within the window: intake paused for the cooldown. */
  'breaker:tripped': [{ crashes: number }];
}

export interface DrainOptions {
  /** After this many ms, stop: kill the workers and release what is unsettled. */
  timeout?: number;
}

interface Pending {
  resolve(result: TaskResult): void;
  reject(err: Error): void;
  startedAt: number;
}

type PoolActorRef = Actor<typeof poolMachine>;

/**
 * Seams for tests of the whole pool without real processes or real time: a fake `process`
 * slot and a simulated clock (XState's `SimulatedClock`), shared by the machines and the
 * embedded queue. Not for production use.
 */
export interface PoolInternals {
  processActor?: ReturnType<typeof processActor>;
  clock?: MemoryClock;
  /** Which spawn host starts workers (default `auto`: Perl if installed, else Node). */
  spawnHost?: HostEdition;
}

/** Ids the pool assigns to tasks that come without one. */
let assigned = 0;

/**
 * A pool of single-use (or reused) worker processes fed by a source.
 *
 * @example
 * const pool = createPool({ worker: { module: './handler.js' }, concurrency: 4 });
 * await pool.start();
 * const result = await pool.run({ type: 'resize', params: { url } });
 * await pool.drain();
 */
export class Pool extends EventEmitter<PoolEvents> {
  readonly options: ResolvedOptions;
  readonly logger: Logger;
  readonly source: MemorySource;
  readonly #deliveries = new Map<string, Delivery>();
  /** Keyed by the task object, which the source keeps across retries (ids may repeat). */
  readonly #pending = new Map<Task, Pending>();
  #actor: PoolActorRef | null = null;
  #done: Promise<unknown> | null = null;

  readonly #internals: PoolInternals;
  /** This pool's live process groups; the process-wide registry holds them too. */
  readonly #registry = new ProcessRegistry(registry);
  /** Starts command workers and single-use module workers (none for reused ones). */
  readonly #host: SpawnHost | null;

  constructor(options: PoolOptions, internals: PoolInternals = {}) {
    super();
    this.options = resolveOptions(options);
    this.#internals = internals;
    this.logger =
      this.options.logger ??
      // `pid` in a log line is the worker's; the manager's is `managerPid`.
      pino({ level: this.options.logLevel, base: { managerPid: process.pid } }, pino.destination({ fd: 2, sync: false }));
    this.source = new MemorySource(internals.clock);
    const spec = hostSpec(this.options);
    this.#host = spec === null ? null : new SpawnHost(spec, this.logger, internals.spawnHost);
  }

  /** The root actor (the pool machine), for inspection and snapshots. Set by `start()`. */
  get actor(): PoolActorRef {
    if (!this.#actor) throw new TidepoolError('TIDEPOOL_ERR_POOL_STATE', 'the pool has not been started');
    return this.#actor;
  }

  /** This pool's live worker processes, from its registry outside XState. */
  get liveProcesses(): number[] {
    return this.#registry.pids();
  }

  /** Open the source and begin taking work. */
  async start(): Promise<void> {
    if (this.#actor) throw new TidepoolError('TIDEPOOL_ERR_POOL_STATE', 'the pool is already started');
    const actor = createActor(this.#machine(this.source), {
      input: {
        maxWorkers: this.options.concurrency,
        spares: this.options.spares,
        maxTasksPerWorker: this.options.maxTasksPerWorker,
        maxCrashes: this.options.maxCrashes,
      },
      inspect: this.options.inspect as Observer<InspectionEvent> | undefined,
      ...(this.#internals.clock ? { clock: this.#internals.clock as ActorOptions<typeof poolMachine>['clock'] } : {}),
    });
    this.#actor = actor;
    this.#done = toPromise(actor).catch((err: unknown) => {
      // The machine failed (an action threw): no child of it may survive.
      this.logger.error({ err }, 'pool machine failed; killing every worker');
      this.#registry.killAll('SIGKILL');
      throw err;
    });
    this.#done.catch(() => {});
    actor.subscribe({ error: () => {} });
    actor.start();
    const snapshot = await new Promise<ReturnType<PoolActorRef['getSnapshot']>>((resolve) => {
      const check = (s: ReturnType<PoolActorRef['getSnapshot']>) => {
        if (!s.matches('starting')) {
          sub.unsubscribe();
          resolve(s);
        }
      };
      const sub = actor.subscribe({ next: check, error: () => resolve(actor.getSnapshot()) });
      check(actor.getSnapshot());
    });
    if (snapshot.status !== 'active') {
      const cause = snapshot.output?.error ?? snapshot.error;
      const why = cause instanceof Error ? `: ${cause.message}` : '';
      throw new TidepoolError('TIDEPOOL_ERR_START_FAILED', `the pool could not start${why}`, { cause });
    }
  }

  /**
   * Queue a task and resolve with its final outcome. Never rejects for the task's own failures
   * (they are outcomes); rejects only when the pool cannot take it or stops before it ends.
   * `defaultId` is the id of a task that has none (else the pool assigns one).
   */
  run(task: unknown, options: { defaultId?: string } = {}): Promise<TaskResult> {
    const startedAt = performance.now();
    const parsed = parseTask(task, options.defaultId);
    if ('malformed' in parsed) {
      const result = malformedResult(parsed.id, parsed.malformed, startedAt);
      this.emit('outcome', result);
      return Promise.resolve(result);
    }
    if (!this.#actor) {
      return Promise.reject(new TidepoolError('TIDEPOOL_ERR_POOL_STATE', 'start() the pool before run()'));
    }
    return new Promise<TaskResult>((resolve, reject) => {
      this.#pending.set(parsed.task, { resolve, reject, startedAt });
      try {
        this.source.submit(parsed.task);
      } catch (err) {
        this.#pending.delete(parsed.task);
        reject(err);
      }
    });
  }

  /** Finish everything queued (retries included), take nothing new, then stop. */
  async drain(options: DrainOptions = {}): Promise<void> {
    this.#send({ type: 'drain' });
    let timer: NodeJS.Timeout | undefined;
    if (options.timeout !== undefined) {
      timer = setTimeout(() => this.#send({ type: 'stop' }), options.timeout);
    }
    try {
      await this.#done;
    } finally {
      clearTimeout(timer);
      this.#finish();
    }
  }

  /** Stop now: kill every worker; tasks not yet finished are rejected with POOL_STOPPED. */
  async stop(): Promise<void> {
    this.#send({ type: 'stop' });
    try {
      await this.#done;
    } finally {
      this.#finish();
    }
  }

  pause(): void {
    this.#send({ type: 'pause' });
  }

  resume(): void {
    this.#send({ type: 'resume' });
  }

  /** Events for a stopped pool are dropped (XState would warn about each). */
  #send(event: { type: 'drain' | 'stop' | 'pause' | 'resume' }): void {
    const actor = this.actor;
    if (actor.getSnapshot().status === 'active') actor.send(event);
  }

  #finish(): void {
    this.source.dispose();
    this.#host?.close();
    for (const [, pending] of this.#pending) {
      pending.reject(new TidepoolError('TIDEPOOL_ERR_POOL_STOPPED', 'the pool stopped before the task reached a final outcome'));
    }
    this.#pending.clear();
    this.#deliveries.clear();
  }

  #machine(source: Source) {
    const o = this.options;
    const log = this.logger;
    // Slots run inside XState transitions: one that throws would leave the pool in error with
    // its children running (xstate#5153). They log instead.
    const safe =
      <A extends unknown[]>(name: string, fn: (...args: A) => void) =>
      (...args: A) => {
        try {
          fn(...args);
        } catch (err) {
          log.error({ err, slot: name }, 'pool slot failed');
        }
      };
    const worker = workerMachine.provide({
      actors: {
        process: this.#internals.processActor ?? processActor({
          options: o,
          registry: this.#registry,
          logger: log,
          taskFor: (deliveryId) => this.#deliveries.get(deliveryId),
          host: this.#host ?? undefined,
          onSpawned: (workerId, pid) => this.emit('worker:spawned', { workerId, pid }),
        }),
      },
      delays: {
        spawnTimeout: o.spawnTimeout,
        taskTimeout: o.timeout,
        killGrace: o.killGrace,
        idleTimeout: o.idleTimeout,
      },
    });
    return poolMachine.provide({
      actors: {
        worker,
        startup: fromPromise(async () => {
          await source.open(
            {
              deliver: (delivery) => {
                this.#deliveries.set(delivery.id, delivery);
                this.#actor?.send({ type: 'delivery', deliveryId: delivery.id });
              },
              drained: () => this.#actor?.send({ type: 'source.drained' }),
            },
            o.concurrency,
          );
        }),
      },
      actions: {
        settle: safe('settle', (_: unknown, params: unknown) => this.#settle(params as SettleParams)),
        release: safe('release', (_: unknown, params: unknown) => {
          for (const id of (params as ReleaseParams).deliveryIds) {
            const delivery = this.#deliveries.get(id);
            if (!delivery) continue;
            this.#deliveries.delete(id);
            source.release(delivery);
          }
        }),
        reaped: safe('reaped', (_: unknown, params: unknown) => {
          const { report } = params as ReapedParams;
          if (log.isLevelEnabled('debug')) log.debug(report, 'worker reaped');
          this.emit('worker:reaped', report);
        }),
        pauseIntake: safe('pauseIntake', () => source.pause()),
        resumeIntake: safe('resumeIntake', () => source.resume()),
        closeIntake: safe('closeIntake', () => source.close()),
        breakerTripped: safe('breakerTripped', (_: unknown, params: unknown) => {
          const { crashes } = params as BreakerParams;
          log.error(
            { crashes, crashWindow: o.crashWindow, cooldown: o.breakerCooldown },
            `crash breaker tripped: ${crashes} crashes within ${o.crashWindow} ms; intake paused for ${o.breakerCooldown} ms`,
          );
          this.emit('breaker:tripped', { crashes });
        }),
      },
      delays: {
        crashWindow: o.crashWindow,
        breakerCooldown: o.breakerCooldown,
      },
    });
  }

  #settle({ deliveryId, outcome }: SettleParams): void {
    const delivery = this.#deliveries.get(deliveryId);
    if (!delivery) return;
    this.#deliveries.delete(deliveryId);
    const settlement = decideSettlement(outcome, delivery.attempt, this.options);
    const taskId = delivery.task.id;
    if (outcome.status === 'failed') {
      logFailure(this.logger, outcome, delivery, settlement);
    } else if (this.logger.isLevelEnabled('debug')) {
      this.logger.debug({ taskId, attempt: delivery.attempt }, 'task resolved');
    }
    this.source.settle(delivery, settlement);
    this.emit('attempt', { taskId, attempt: delivery.attempt, outcome, settlement });
    if (settlement.action === 'retry') return;
    const pending = this.#pending.get(delivery.task);
    this.#pending.delete(delivery.task);
    const durationMs = pending ? Math.round(performance.now() - pending.startedAt) : 0;
    const result: TaskResult =
      outcome.status === 'resolved'
        ? { id: taskId, status: 'resolved', result: outcome.result, attempts: delivery.attempt, durationMs }
        : { id: taskId, status: 'failed', error: publicError(outcome), attempts: delivery.attempt, durationMs };
    this.emit('outcome', result);
    pending?.resolve(result);
  }
}

function logFailure(logger: Logger, outcome: FailedOutcome, delivery: Delivery, settlement: Settlement): void {
  const fields = {
    taskId: delivery.task.id,
    attempt: delivery.attempt,
    kind: outcome.kind,
    settlement: settlement.action,
    ...(settlement.action === 'retry' ? { retryIn: settlement.delay } : {}),
  };
  const msg = `attempt failed (${outcome.kind}): ${outcome.message}`;
  if (settlement.action === 'dead-letter') logger.warn(fields, msg);
  else logger.info(fields, msg);
}

function publicError(outcome: FailedOutcome): Extract<TaskResult, { status: 'failed' }>['error'] {
  const error: Extract<TaskResult, { status: 'failed' }>['error'] = { kind: outcome.kind, message: outcome.message };
  if (outcome.exitCode !== undefined) error.exitCode = outcome.exitCode;
  if (outcome.signal !== undefined) error.signal = outcome.signal;
  return error;
}

function malformedResult(id: string, message: string, startedAt: number): TaskResult {
  return {
    id,
    status: 'failed',
    error: { kind: 'malformed', message },
    attempts: 0,
    durationMs: Math.round(performance.now() - startedAt),
  };
}

/** A task is a JSON object; its `id`, when given, a non-empty string. */
export function parseTask(value: unknown, defaultId?: string): { task: Task } | { id: string; malformed: string } {
  const id = defaultId ?? `task-${process.pid}-${++assigned}`;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const found = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
    return { id, malformed: `a task must be a JSON object, got ${found}` };
  }
  const given = (value as { id?: unknown }).id;
  if (given === undefined) return { task: { ...(value as object), id } as Task };
  if (typeof given !== 'string' || given === '') {
    return { id, malformed: `a task's id must be a non-empty string, got ${JSON.stringify(given)}` };
  }
  // A copy: the pool tracks tasks by object, and the caller may run the same object twice.
  return { task: { ...(value as Task) } };
}

/** Create a pool; validates every option (an `OptionError` names the first bad one). */
export function createPool(options: PoolOptions, internals?: PoolInternals): Pool {
  return new Pool(options, internals);
}
