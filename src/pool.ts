import { EventEmitter } from 'node:events';
import { pino } from 'pino';
import type { Logger } from 'pino';
import { createActor, fromPromise, toPromise } from 'xstate';
import type { Actor, ActorOptions, InspectionEvent, Observer } from 'xstate';
import { poolMachine } from '../machines/pool.js';
import type { ForgetParams, PhaseCounts, PoolEmitted, ReleaseParams, SettleParams, SpawnParams, TellParams } from '../machines/pool.js';
import type { ErrorInfo, FailedOutcome, FailureKind, Outcome, WorkerReport } from '../machines/types.js';
import { workerMachine } from '../machines/worker.js';
import { OptionError, TidepoolError } from './errors.js';
import { resolveOptions } from './options.js';
import type { PoolOptions, ResolvedOptions } from './options.js';
import { hostSpec, processActor } from './process/driver.js';
import { ProcessRegistry, registry } from './process/registry.js';
import { checkHandler } from './process/load-check.js';
import { SpawnHost } from './process/spawn-host.js';
import { WorkerActors } from './worker-actors.js';
import type { HostEdition } from './process/spawn-host.js';
import { decideSettlement } from './settlement.js';
import type { Settlement } from './settlement.js';
import { taskIdOf } from './sources/parse.js';
import type { Delivery, Malformed, Source } from './sources/source.js';

/** The final outcome of a task: one per task, after its last attempt. */
export type TaskResult =
  | { id: string; status: 'resolved'; result: unknown; attempts: number; durationMs: number }
  | { id: string; status: 'failed'; error: PublicError; attempts: number; durationMs: number };

/**
 * A failure as the final outcome carries it: `kind`; `message` (never empty); what the
 * worker said of the error (`name`, `code`, `stack`, `cause`, and its own JSON-safe fields
 * such as `status`); and, for a process that died, `exitCode` and `signal`.
 */
export interface PublicError extends Partial<ErrorInfo> {
  kind: FailureKind;
  message: string;
  exitCode?: number | null;
  signal?: string | null;
}

/** One attempt's outcome and what the source did with it. */
export interface AttemptEvent {
  taskId: string;
  attempt: number;
  outcome: Outcome;
  settlement: Settlement;
}

/** Live workers by phase (as their machines report it), and their total. */
export interface WorkerCounts extends PhaseCounts {
  live: number;
}

/**
 * The pool's events. Listeners run after the transition that caused them, each in its own
 * try/catch: one that throws is logged and changes nothing (no task lost, nothing settled
 * twice, the manager goes on), and `run()` resolves whatever listeners do.
 */
export interface PoolEvents {
  /** A task reached its final outcome. */
  outcome: [TaskResult];
  /** An attempt ended (every attempt, retried or not). */
  attempt: [AttemptEvent];
  'worker:spawned': [{ workerId: string; pid: number }];
  'worker:reaped': [WorkerReport];
  /** Too many crashes within the window: intake paused for the cooldown. */
  'breaker:tripped': [{ crashes: number }];
  /** The source lost its connection: deliveries it made before are dropped, never settled. */
  'source:lost': [{ reason: Error }];
  'source:restored': [];
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

/** A delivery the pool holds; `void` once its source lost the connection it came on. */
interface Held {
  delivery: Delivery;
  void: boolean;
}

type PoolActorRef = Actor<typeof poolMachine>;

/**
 * Seams for tests of the whole pool without real processes or real time: a fake `process`
 * slot and a simulated clock (XState's `SimulatedClock`) for the machines. Not for
 * production use.
 */
export interface PoolInternals {
  processActor?: ReturnType<typeof processActor>;
  clock?: ActorOptions<typeof poolMachine>['clock'];
  /** Which spawn host starts workers (default `auto`: Perl if installed, else Node). */
  spawnHost?: HostEdition;
}

/** Ids the pool assigns to tasks that come without one. */
let assigned = 0;

const NO_COUNTS: WorkerCounts = { live: 0, spawning: 0, ready: 0, running: 0, leaving: 0 };

/**
 * A pool of single-use (or reused) worker processes fed by a source. Build it with
 * `createPool`, which gives it the embedded queue unless `options.source` names another.
 *
 * @example
 * const pool = createPool({ worker: { module: './handler.js' }, concurrency: 4 });
 * await pool.start();
 * const result = await pool.run({ type: 'resize', params: { url } });
 * await pool.drain();
 */
export class Pool<S extends Source = Source> extends EventEmitter<PoolEvents> {
  readonly options: ResolvedOptions;
  readonly logger: Logger;
  /** Where deliveries come from and settlements go. */
  readonly source: S;
  readonly #deliveries = new Map<string, Held>();
  /** Tasks given to `run()` without a final outcome yet, by task id (the idempotency key). */
  readonly #pending = new Map<string, Pending>();
  /** Settlements under way: drain and stop wait for them. */
  readonly #settling = new Set<Promise<void>>();
  #actor: PoolActorRef | null = null;
  /** The worker actors (set by start()). */
  #workers: WorkerActors | null = null;
  #done: Promise<unknown> | null = null;
  #finished = false;
  /** The handler check under way in start(), before the pool machine exists. */
  #checking: Promise<void> | null = null;
  /** Ends the handler check when the pool is stopped during it. */
  readonly #stopCheck = new AbortController();
  /** pause() and resume() called during the check, carried out once the machine exists. */
  #early: ('pause' | 'resume')[] = [];

  readonly #internals: PoolInternals;
  /** This pool's live process groups; the process-wide registry holds them too. */
  readonly #registry = new ProcessRegistry(registry);
  /** Starts every worker, holds its tree, and signals and reaps it. */
  readonly #host: SpawnHost;

  /** Throws `OptionError` (TIDEPOOL_ERR_OPTION_INVALID) naming the first bad option, or a missing `source`. */
  constructor(options: PoolOptions, internals: PoolInternals = {}) {
    super();
    this.options = resolveOptions(options);
    if (!options.source) throw new OptionError('source', 'is required (createPool gives the embedded queue by default)');
    this.source = options.source as S;
    this.#internals = internals;
    this.logger = this.options.logger ?? stderrLogger(this.options.logLevel);
    const stderr = options.stderr;
    this.#host = new SpawnHost(hostSpec(this.options), this.logger, internals.spawnHost, stderr ? (chunk) => stderr.write(chunk) : null);
  }

  /**
   * The root actor (the pool machine), for inspection and snapshots. Set by `start()`: before
   * it, reading it throws `TIDEPOOL_ERR_POOL_STATE`.
   */
  get actor(): PoolActorRef {
    if (!this.#actor) throw new TidepoolError('TIDEPOOL_ERR_POOL_STATE', 'the pool has not been started');
    return this.#actor;
  }

  /**
   * How the spawn host holds each worker's process tree (`subreaper`, `group` or `proc`; see
   * docs/containment.md), or null before the first worker has started.
   */
  get containment(): string | null {
    return this.#host.containment;
  }

  /** This pool's live worker processes, from its registry outside XState. */
  get liveProcesses(): number[] {
    return this.#registry.pids();
  }

  /**
   * Tasks given to `run()` that have no final outcome yet (queued, running, or waiting for a
   * retry). Callers that feed the pool from a stream pause while this is high (backpressure).
   */
  get inFlight(): number {
    return this.#pending.size;
  }

  /** Live workers by phase, read from the pool machine's counts (constant time). */
  get workers(): WorkerCounts {
    if (!this.#actor) return NO_COUNTS;
    const { live, phases } = this.#actor.getSnapshot().context;
    return { live, ...phases };
  }

  /**
   * Check that a module worker's handler loads, open the source and begin taking work.
   * Rejects with `TIDEPOOL_ERR_WORKER_LOAD` when the handler cannot load (the message has its
   * error, file and line), `TIDEPOOL_ERR_OPTION_INVALID` when an attempt could outlast the
   * source's `deliveryTimeout`, `TIDEPOOL_ERR_START_FAILED` when the source cannot open,
   * `TIDEPOOL_ERR_POOL_STATE` when called twice or after the pool stopped.
   */
  async start(): Promise<void> {
    if (this.#actor || this.#checking || this.#finished) {
      const why = this.#finished ? 'the pool has stopped; create a new one' : 'the pool is already started';
      throw new TidepoolError('TIDEPOOL_ERR_POOL_STATE', why);
    }
    this.#checkDeliveryTimeout();
    this.#checking = checkHandler(this.options, this.#stopCheck.signal);
    try {
      await this.#checking;
    } finally {
      this.#checking = null;
    }
    if (this.#finished) throw new TidepoolError('TIDEPOOL_ERR_POOL_STOPPED', 'the pool was stopped while it started');
    const actor = createActor(this.#machine(), {
      input: {
        maxWorkers: this.options.concurrency,
        spares: this.options.spares,
        maxTasksPerWorker: this.options.maxTasksPerWorker,
        maxCrashes: this.options.maxCrashes,
        maxSpawning: this.options.maxSpawning,
      },
      inspect: this.options.inspect as Observer<InspectionEvent> | undefined,
      ...(this.#internals.clock ? { clock: this.#internals.clock } : {}),
    });
    this.#actor = actor;
    // Notifications leave the machine here, after the transition; none can throw into it.
    actor.on('*', (emitted) => this.#onEmitted(emitted as PoolEmitted));
    this.#done = toPromise(actor).catch((err: unknown) => {
      // The machine failed (an action threw): no child of it may survive.
      this.logger.error({ err }, 'pool machine failed; killing every worker');
      this.#registry.killAll('SIGKILL');
      throw err;
    });
    this.#done.catch(() => {});
    actor.subscribe({ error: () => {} });
    actor.start();
    for (const type of this.#early.splice(0)) actor.send({ type });
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
    if (snapshot.matches('stopping') || (snapshot.status === 'done' && snapshot.output?.error === undefined)) {
      throw new TidepoolError('TIDEPOOL_ERR_POOL_STOPPED', 'the pool was stopped while it started');
    }
    if (snapshot.status !== 'active') {
      const cause = snapshot.output?.error ?? snapshot.error;
      const why = cause instanceof Error ? `: ${cause.message}` : '';
      throw new TidepoolError('TIDEPOOL_ERR_START_FAILED', `the pool could not start${why}`, { cause });
    }
  }

  /**
   * A delivery stays unsettled from its arrival until its attempt ends: at most the spawn
   * timeout, the task timeout and the kill grace. A broker that takes deliveries back sooner
   * (RabbitMQ's consumer timeout closes the channel) would run every long task twice.
   */
  #checkDeliveryTimeout(): void {
    const limit = this.source.deliveryTimeout;
    const o = this.options;
    const hold = o.spawnTimeout + o.timeout + o.killGrace;
    if (limit !== undefined && hold >= limit) {
      throw new OptionError(
        'timeout',
        `(${o.timeout} ms, with spawnTimeout ${o.spawnTimeout} ms and killGrace ${o.killGrace} ms: ${hold} ms) must end before the broker's consumer timeout (${limit} ms), or the broker takes the delivery back mid-task; lower the timeout or raise the broker's consumer_timeout (and the source's consumerTimeout)`,
      );
    }
  }

  /**
   * Queue a task and resolve with its final outcome. `task` is a task object, or its JSON as
   * text or bytes; it goes through the shared parser, and one that is not a task resolves as
   * `malformed` (attempts 0). Never rejects for the task's own failures (they are outcomes);
   * rejects only when the pool cannot take it (`TIDEPOOL_ERR_POOL_STATE`: not started,
   * draining, or a source without `publish`) or stops before it ends
   * (`TIDEPOOL_ERR_POOL_STOPPED`). `defaultId` is the id of a task that has none (else the pool
   * assigns one). A task whose id is already in flight resolves `malformed`: ids are
   * idempotency keys.
   */
  run(task: unknown, options: { defaultId?: string } = {}): Promise<TaskResult> {
    const startedAt = performance.now();
    if (!this.#actor) {
      return Promise.reject(new TidepoolError('TIDEPOOL_ERR_POOL_STATE', 'start() the pool before run()'));
    }
    if (!this.source.publish) {
      return Promise.reject(new TidepoolError('TIDEPOOL_ERR_POOL_STATE', 'this pool\'s source takes no tasks from run()'));
    }
    const id = taskIdOf(task, options.defaultId ?? `task-${process.pid}-${++assigned}`);
    if (this.#pending.has(id)) {
      const result = malformedResult({ id, message: `a task with id ${JSON.stringify(id)} is already in the pool` }, startedAt);
      this.#notify('outcome', result);
      return Promise.resolve(result);
    }
    return new Promise<TaskResult>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, startedAt });
      try {
        this.source.publish!(task, { defaultId: id });
      } catch (err) {
        this.#pending.delete(id);
        reject(err);
      }
    });
  }

  /** Finish everything queued (retries included), take nothing new, then stop. */
  async drain(options: DrainOptions = {}): Promise<void> {
    if (await this.#notStarted()) return;
    this.#send({ type: 'drain' });
    let timer: NodeJS.Timeout | undefined;
    if (options.timeout !== undefined) {
      timer = setTimeout(() => this.#send({ type: 'stop' }), options.timeout);
    }
    try {
      await this.#done;
    } finally {
      clearTimeout(timer);
      await this.#finish();
    }
  }

  /** Stop now: kill every worker; tasks not yet finished are rejected with POOL_STOPPED. */
  async stop(): Promise<void> {
    if (await this.#notStarted(true)) return;
    this.#send({ type: 'stop' });
    try {
      await this.#done;
    } finally {
      await this.#finish();
    }
  }

  pause(): void {
    if (this.#checking) this.#early.push('pause');
    else this.#send({ type: 'pause' });
  }

  resume(): void {
    if (this.#checking) this.#early.push('resume');
    else this.#send({ type: 'resume' });
  }

  /**
   * For drain() and stop() called while start() checks the handler: wait for the check (the
   * machine then exists, in `starting`, and takes the request). True when there is no machine
   * to stop (never started, or the check failed): the pool is then marked stopped.
   */
  async #notStarted(stopping = false): Promise<boolean> {
    if (this.#checking && stopping) this.#stopCheck.abort();
    if (this.#checking) await this.#checking.catch(() => {});
    if (this.#actor) return false;
    await this.#finish();
    return true;
  }

  /** Events for a stopped pool are dropped (XState would warn about each). */
  #send(event: { type: 'drain' | 'stop' | 'pause' | 'resume' | 'source.lost' }): void {
    const actor = this.actor;
    if (actor.getSnapshot().status === 'active') actor.send(event);
  }

  async #finish(): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    await Promise.allSettled([...this.#settling]);
    await this.source.dispose();
    // Only after a machine failure can a worker actor outlive the pool machine.
    this.#workers?.stopAll();
    this.#host.close();
    for (const [, pending] of this.#pending) {
      pending.reject(new TidepoolError('TIDEPOOL_ERR_POOL_STOPPED', 'the pool stopped before the task reached a final outcome'));
    }
    this.#pending.clear();
    this.#deliveries.clear();
  }

  /**
   * Deliver a pool event to each listener in turn, after the current transition (a
   * microtask), each in its own try/catch: a listener that throws is logged and nothing else
   * changes.
   */
  #notify<K extends keyof PoolEvents>(name: K, ...args: PoolEvents[K]): void {
    if (this.listenerCount(name) === 0) return;
    queueMicrotask(() => {
      for (const listener of this.rawListeners(name) as ((...a: PoolEvents[K]) => void)[]) {
        try {
          listener.apply(this, args);
        } catch (err) {
          this.logger.error({ err, event: name }, `a '${name}' listener threw; ignored`);
        }
      }
    });
  }

  #onEmitted(emitted: PoolEmitted): void {
    switch (emitted.type) {
      case 'worker.reaped':
        if (this.logger.isLevelEnabled('debug')) this.logger.debug(emitted.report, 'worker reaped');
        return this.#notify('worker:reaped', emitted.report);
      case 'breaker.tripped': {
        const o = this.options;
        this.logger.error(
          { crashes: emitted.crashes, crashWindow: o.crashWindow, cooldown: o.breakerCooldown },
          `crash breaker tripped: ${emitted.crashes} crashes within ${o.crashWindow} ms; intake paused for ${o.breakerCooldown} ms`,
        );
        return this.#notify('breaker:tripped', { crashes: emitted.crashes });
      }
      case 'prefetch':
        return this.source.prefetch(emitted.prefetch);
      case 'spares.unkept':
        this.logger.warn(
          { workerId: emitted.workerId, spares: this.options.spares },
          'a spare exited (code 0) before it was given a task: this worker cannot be kept warm, so the pool keeps no spares from now on',
        );
        return;
    }
  }

  #machine() {
    const o = this.options;
    const log = this.logger;
    const source = this.source;
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
          taskFor: (deliveryId) => this.#deliveries.get(deliveryId)?.delivery,
          host: this.#host,
          onSpawned: (workerId, pid) => this.#notify('worker:spawned', { workerId, pid }),
        }),
      },
      delays: {
        spawnTimeout: o.spawnTimeout,
        taskTimeout: o.timeout,
        killGrace: o.killGrace,
        idleTimeout: o.idleTimeout,
      },
    });
    const workers = new WorkerActors(worker, (event) => this.#actor?.send(event), {
      inspect: o.inspect as Observer<InspectionEvent> | undefined,
      clock: this.#internals.clock,
    });
    this.#workers = workers;
    return poolMachine.provide({
      actors: {
        startup: fromPromise(async () => {
          await source.open(
            {
              deliver: (delivery) => {
                this.#deliveries.set(delivery.id, { delivery, void: false });
                this.#actor?.send({ type: 'delivery', deliveryId: delivery.id });
              },
              malformed: (rejected) => this.#malformed(rejected),
              drained: () => this.#actor?.send({ type: 'source.drained' }),
              lost: (reason) => {
                log.warn({ err: reason }, 'the source lost its connection; what it delivered before will come again');
                this.#send({ type: 'source.lost' });
                this.#notify('source:lost', { reason });
              },
              restored: () => {
                log.info('the source is connected again');
                this.#notify('source:restored');
              },
            },
            o.concurrency,
          );
        }),
      },
      actions: {
        settle: safe('settle', (_: unknown, params: unknown) => this.#settle(params as SettleParams)),
        release: safe('release', (_: unknown, params: unknown) => {
          const { deliveryIds } = params as ReleaseParams;
          const ids = deliveryIds === 'all' ? [...this.#deliveries.keys()] : deliveryIds;
          for (const id of ids) {
            const held = this.#deliveries.get(id);
            if (!held) continue;
            this.#deliveries.delete(id);
            if (!held.void) this.#track(source.release(held.delivery), 'release');
          }
        }),
        forget: safe('forget', (_: unknown, params: unknown) => {
          for (const id of (params as ForgetParams).deliveryIds) this.#deliveries.delete(id);
          for (const held of this.#deliveries.values()) held.void = true;
        }),
        spawnWorker: safe('spawnWorker', (_: unknown, params: unknown) => workers.spawn(params as SpawnParams)),
        tellWorker: safe('tellWorker', (_: unknown, params: unknown) => {
          const { workerId, command } = params as TellParams;
          workers.tell(workerId, command);
        }),
        killWorkers: safe('killWorkers', () => workers.killAll()),
        pauseIntake: safe('pauseIntake', () => source.pause()),
        resumeIntake: safe('resumeIntake', () => source.resume()),
        closeIntake: safe('closeIntake', () => source.close()),
      },
      delays: {
        crashWindow: o.crashWindow,
        breakerCooldown: o.breakerCooldown,
      },
    });
  }

  /** Keep a source call's promise until it settles, so drain and stop can wait for it. */
  #track(promise: Promise<void>, what: string, then?: () => void): void {
    const tracked = promise.then(then, (err: unknown) => {
      this.logger.error({ err }, `the source could not ${what} a delivery; it will be delivered again`);
    });
    this.#settling.add(tracked);
    void tracked.finally(() => this.#settling.delete(tracked));
  }

  #settle({ deliveryId, outcome }: SettleParams): void {
    const held = this.#deliveries.get(deliveryId);
    if (!held) return;
    this.#deliveries.delete(deliveryId);
    const { delivery } = held;
    const taskId = delivery.task.id;
    if (held.void) {
      this.logger.info({ taskId, attempt: delivery.attempt }, 'outcome dropped: its delivery was lost with the connection');
      return;
    }
    const settlement = decideSettlement(outcome, delivery.attempt, this.options);
    if (outcome.status === 'failed') {
      logFailure(this.logger, outcome, delivery, settlement);
    } else if (this.logger.isLevelEnabled('debug')) {
      this.logger.debug({ taskId, attempt: delivery.attempt }, 'task resolved');
    }
    // The final result goes with the settlement (a broker source replies to the sender with it).
    let result: TaskResult | undefined;
    if (settlement.action !== 'retry') {
      const pending = this.#pending.get(taskId);
      const durationMs = pending ? Math.round(performance.now() - pending.startedAt) : 0;
      result =
        outcome.status === 'resolved'
          ? { id: taskId, status: 'resolved', result: outcome.result ?? null, attempts: delivery.attempt, durationMs }
          : { id: taskId, status: 'failed', error: publicError(outcome), attempts: delivery.attempt, durationMs };
    }
    // The outcome is told once the settlement is safe: a task whose ack failed comes again.
    this.#track(this.source.settle(delivery, settlement, result), 'settle', () => {
      this.#notify('attempt', { taskId, attempt: delivery.attempt, outcome, settlement });
      if (result === undefined) return;
      const pending = this.#pending.get(taskId);
      this.#pending.delete(taskId);
      pending?.resolve(result);
      this.#notify('outcome', result);
    });
  }

  /** A payload the source dead-lettered as not a task: its caller hears `malformed`. */
  #malformed(rejected: Malformed): void {
    const pending = this.#pending.get(rejected.id);
    this.#pending.delete(rejected.id);
    this.logger.warn({ taskId: rejected.id, kind: 'malformed' }, `payload dead-lettered: ${rejected.message}`);
    const result = malformedResult(rejected, pending?.startedAt ?? performance.now());
    pending?.resolve(result);
    this.#notify('outcome', result);
  }
}

/**
 * A pino logger on fd 2 (`pid` in a line is the worker's; the manager's is `managerPid`). If
 * stderr cannot be written (a full disk, a file size limit), logging stops rather than
 * retrying forever and holding the process.
 */
function stderrLogger(level: ResolvedOptions['logLevel']): Logger {
  const destination = pino.destination({ fd: 2, sync: false });
  const logger = pino({ level, base: { managerPid: process.pid } }, destination);
  destination.on('error', () => {
    logger.level = 'silent';
    destination.destroy();
  });
  return logger;
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

/**
 * A failure as the final outcome carries it: the kind and message, then what the worker said
 * of the error (name, code, stack, cause, its own fields), then how the process ended.
 */
function publicError(outcome: FailedOutcome): PublicError {
  const error: PublicError = { kind: outcome.kind, message: outcome.message };
  if (outcome.error) {
    const { message: _said, ...said } = outcome.error;
    Object.assign(error, said, { kind: outcome.kind, message: outcome.message });
  }
  if (outcome.exitCode !== undefined) error.exitCode = outcome.exitCode;
  if (outcome.signal !== undefined) error.signal = outcome.signal;
  return error;
}

function malformedResult({ id, message }: Malformed, startedAt: number): TaskResult {
  return {
    id,
    status: 'failed',
    error: { kind: 'malformed', message },
    attempts: 0,
    durationMs: Math.round(performance.now() - startedAt),
  };
}
