import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { createActor, fromPromise, toPromise } from 'xstate';
import type { Actor, ActorOptions, InspectionEvent, Observer } from 'xstate';
import { poolMachine } from '../machines/pool.js';
import type {
  BreakerState,
  ForgetParams,
  PhaseCounts,
  PoolEmitted,
  PoolEvent,
  ReleaseParams,
  SettleParams,
  SpawnParams,
  TellParams,
} from '../machines/pool.js';
import type { ErrorInfo, FailedOutcome, FailureKind, Outcome, WorkerReport } from '../machines/types.js';
import { workerMachine } from '../machines/worker.js';
import { OptionError, TidepoolError } from './errors.js';
import { resolveOptions } from './options.js';
import type { PoolOptions, ResolvedOptions } from './options.js';
import { hostSpec, processActor } from './process/driver.js';
import { ProcessRegistry, registry } from './process/registry.js';
import { checkHandler } from './process/load-check.js';
import { Ledger, sweepStateDir } from './process/ledger.js';
import { SpawnHost } from './process/spawn-host.js';
import { WorkerActors } from './worker-actors.js';
import { asChildrenOf } from './inspection.js';
import type { InspectObserver } from './inspection.js';
import type { HostEdition } from './process/spawn-host.js';
import { stderrLogger } from './logging.js';
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

/** An attempt that began: a worker took its delivery (`attempt:start`). */
export interface AttemptStart {
  taskId: string;
  /** 1-based. */
  attempt: number;
  workerId: string;
  /** The worker's process (its group leader), or null if the driver has not said it yet. */
  pid: number | null;
}

/** A progress value a running attempt reported (`ctx.progress`, or a command's progress line). */
export interface ProgressEvent {
  taskId: string;
  attempt: number;
  workerId: string;
  /** Any JSON value, as the worker sent it (at most `MAX_PROGRESS` bytes of JSON). */
  value: unknown;
}

/**
 * The crash breaker as it stands (see README, "Retries and dead letters"): `closed`; `open`
 * (intake paused until `retryAt`); `half-open` (one attempt let through as the probe).
 */
export interface BreakerStatus {
  state: BreakerState;
  /** Times it tripped since the pool started. */
  trips: number;
  /** Crashes within the current `crashWindow`. */
  crashes: number;
  /** The cooldown in force while open, else the one the next trip will use, in ms. */
  cooldownMs: number;
  /**
   * When an open breaker lets its probe through, in epoch ms (the pool's clock); null unless
   * open (and while a user pause is in force, as the probe then waits for `resume()`).
   */
  retryAt: number | null;
}

/** The breaker's `breaker:tripped` event. */
export interface BreakerTripped {
  /** Crashes within the window when it tripped. */
  crashes: number;
  /** Trips since the pool started, this one included. */
  trips: number;
  /** How long intake stays paused, in ms. */
  cooldownMs: number;
  /** When the probe is let through, in epoch ms (the pool's clock). */
  retryAt: number;
}

/**
 * Where the pool's machine stands. `stopped` also before `start()` is called; `starting` from
 * the call of `start()` (its handler check) until the source has opened.
 */
export type PoolState = 'starting' | 'running' | 'paused' | 'draining' | 'stopping' | 'stopped';

/** What `pool.cancel(taskId)` found (the effect follows; see `Pool.cancel`). */
export type CancelAnswer = 'queued' | 'running' | 'unknown';

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
  /**
   * An attempt ended (every attempt, retried or not; not a task cancelled before any attempt
   * of it began).
   */
  attempt: [AttemptEvent];
  /** A worker took a delivery and began the attempt, in process `pid`. */
  'attempt:start': [AttemptStart];
  /** A running attempt reported progress; the latest is kept (`pool.progressOf`). */
  progress: [ProgressEvent];
  'worker:spawned': [{ workerId: string; pid: number }];
  'worker:reaped': [WorkerReport];
  /**
   * Too many crashes within the window, or the half-open probe crashed: intake paused for
   * `cooldownMs` (doubled for each probe that crashed, up to `breakerMaxCooldown`).
   */
  'breaker:tripped': [BreakerTripped];
  /** The cooldown passed: the next attempt is the probe. */
  'breaker:half-open': [];
  /** The probe did not crash (or a drain began): intake is open again. */
  'breaker:closed': [];
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

/** An attempt under way: its delivery's task, and the latest progress it reported. */
interface Running {
  taskId: string;
  attempt: number;
  workerId: string;
  progress: unknown;
}

/**
 * Most task ids remembered per kind (cancelled while in a broker's queue; waiting for a retry):
 * the oldest are forgotten past it, so a long-running pool's memory stays flat.
 */
const REMEMBERED = 10_000;

/** Remember `key` in an insertion-ordered map bounded to REMEMBERED entries. */
function remember<V>(map: Map<string, V>, key: string, value: V): void {
  map.delete(key);
  map.set(key, value);
  if (map.size > REMEMBERED) map.delete(map.keys().next().value!);
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
  /** Attempts under way (a worker reported `running`), by delivery id. */
  readonly #running = new Map<string, Running>();
  /** Tasks waiting for a retry: the attempts they have made, by task id (bounded). */
  readonly #retrying = new Map<string, number>();
  /** Tasks cancelled while in a source that cannot drop them: acked when delivered (bounded). */
  readonly #cancelled = new Map<string, true>();
  /** When an open breaker lets its probe through (the pool's clock, ms). */
  #retryAt: number | null = null;
  /** start() was called. */
  #started = false;
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
  /** The live workers' pids and start times in `stateDir`, for the next manager if this one dies. */
  readonly #ledger: Ledger | null;

  /** Throws `OptionError` (TIDEPOOL_ERR_OPTION_INVALID) naming the first bad option, or a missing `source`. */
  constructor(options: PoolOptions, internals: PoolInternals = {}) {
    super();
    this.options = resolveOptions(options);
    if (!options.source) throw new OptionError('source', 'is required (createPool gives the embedded queue by default)');
    this.source = options.source as S;
    this.#internals = internals;
    this.logger = this.options.logger ?? stderrLogger(this.options.logLevel).logger;
    const stderr = options.stderr;
    this.#ledger = this.options.stateDir === undefined ? null : new Ledger(this.options.stateDir, this.logger);
    this.#host = new SpawnHost(
      hostSpec(this.options, (message) => this.logger.warn(message)),
      this.logger,
      internals.spawnHost,
      stderr ? (chunk) => stderr.write(chunk) : null,
      this.#ledger,
    );
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
   * Where the pool stands, from its machine's snapshot: `starting` from the call of `start()`
   * (the handler check included) until the source opened; `running` (with the breaker closed
   * or half-open); `paused` (by `pause()` or an open breaker: see `pausedBy`); `draining`;
   * `stopping`; `stopped`, which is also what a pool reports before `start()` is called.
   */
  get state(): PoolState {
    if (this.#finished) return 'stopped';
    if (!this.#actor) return this.#started ? 'starting' : 'stopped';
    const snapshot = this.#actor.getSnapshot();
    return snapshot.status === 'active' ? (snapshot.value as PoolState) : 'stopped';
  }

  /**
   * Who paused intake: `user` (`pause()`, also one asked for while starting, carried out once
   * started), `breaker` (open), or null when not paused.
   */
  get pausedBy(): 'user' | 'breaker' | null {
    const state = this.state;
    if (!this.#actor || (state !== 'paused' && state !== 'starting')) return null;
    return this.#actor.getSnapshot().context.pausedBy;
  }

  /**
   * Tasks waiting and not running: the pool's backlog (delivered, not yet handed to a worker)
   * plus what the source holds undelivered (`source.depth()`: ready, and in a retry delay; a
   * source without `depth` adds nothing).
   */
  get queued(): number {
    const backlog = this.#actor?.getSnapshot().context.backlog.length ?? 0;
    return backlog + (this.source.depth?.() ?? 0);
  }

  /** The crash breaker: its state, trips since the start, crashes in the window, cooldown and next retry. */
  get breaker(): BreakerStatus {
    if (!this.#actor) {
      return { state: 'closed', trips: 0, crashes: 0, cooldownMs: this.options.breakerCooldown, retryAt: null };
    }
    const { breaker, trips, crashes, cooldown, pausedBy } = this.#actor.getSnapshot().context;
    const retryAt = breaker === 'open' && pausedBy === 'breaker' ? this.#retryAt : null;
    return { state: breaker, trips, crashes, cooldownMs: cooldown, retryAt };
  }

  /**
   * The latest progress value the running attempt of `taskId` reported, or undefined (none
   * reported, or no attempt of it running). Kept per running attempt: a retry starts afresh.
   */
  progressOf(taskId: string): unknown {
    for (const attempt of this.#running.values()) if (attempt.taskId === taskId) return attempt.progress;
    return undefined;
  }

  /**
   * Cancel a task: the answer says where it was; the effect follows.
   * - `queued`: no attempt of it had begun (waiting in the source, in the pool's backlog, or
   *   for a retry delay): it is removed and never runs. Its `run()` promise resolves `failed`
   *   with kind `cancelled` and the attempts already made, an `outcome` event fires, and a
   *   delivery the pool held is acked. A source without `cancel` (a broker's queue) keeps the
   *   message: the pool remembers the id and acks its delivery at once when it comes.
   * - `running`: an attempt is running: its worker's whole process group gets SIGTERM, then
   *   SIGKILL after `killGrace` (a module handler's `ctx.signal` aborts first, its reason
   *   saying it was cancelled); once the worker is reaped the attempt's outcome is `cancelled`
   *   (never retried, acked), whatever the process did on its way out, and `run()` resolves
   *   with it. A worker cancelled is never reused.
   * - `unknown`: not in flight in this pool (never seen, already final, or the pool is not
   *   running).
   *
   * Throws `TidepoolError` `TIDEPOOL_ERR_ARGUMENT` when `taskId` is not a string.
   */
  cancel(taskId: string): CancelAnswer {
    if (typeof taskId !== 'string') {
      throw new TidepoolError('TIDEPOOL_ERR_ARGUMENT', `cancel(taskId): taskId must be a string, got ${describeValue(taskId)}`);
    }
    const actor = this.#actor;
    if (!actor || this.#finished) return 'unknown';
    const snapshot = actor.getSnapshot();
    if (snapshot.status !== 'active' || snapshot.matches('stopping')) return 'unknown';
    for (const [deliveryId, held] of this.#deliveries) {
      if (held.void || held.delivery.task.id !== taskId) continue;
      const workerId = this.#workers?.holding(deliveryId) ?? null;
      if (workerId === null && !snapshot.context.backlog.includes(deliveryId)) continue;
      this.logger.info({ taskId, attempt: held.delivery.attempt, workerId }, 'task cancelled');
      const answer = this.#running.has(deliveryId) ? 'running' : 'queued';
      actor.send({ type: 'task.cancel', deliveryId, workerId });
      return answer;
    }
    if (this.source.cancel) {
      if (!this.source.cancel(taskId)) return 'unknown';
    } else {
      // A broker cannot take the message out of its queue: its delivery is acked when it comes.
      if (!this.#pending.has(taskId) && !this.#retrying.has(taskId)) return 'unknown';
      remember(this.#cancelled, taskId, true);
    }
    this.logger.info({ taskId }, 'task cancelled before it started');
    this.#final({ id: taskId, status: 'failed', error: { kind: 'cancelled', message: 'cancelled before it started' }, attempts: this.#retrying.get(taskId) ?? 0 });
    return 'queued';
  }

  /**
   * Check that a module worker's handler loads, open the source and begin taking work.
   * Rejects with `TIDEPOOL_ERR_WORKER_LOAD` when the handler cannot load (the message has its
   * error, file and line), `TIDEPOOL_ERR_OPTION_INVALID` when an attempt could outlast the
   * source's `deliveryTimeout`, `TIDEPOOL_ERR_START_FAILED` when the source cannot open,
   * `TIDEPOOL_ERR_POOL_STATE` when called twice or after the pool stopped.
   * With `stateDir`, it first kills what dead managers left running (their ledgers: see
   * `sweepStateDir` in src/process/ledger.ts) and opens this pool's ledger; rejects with
   * `TIDEPOOL_ERR_OPTION_INVALID` (option `stateDir`) when that cannot be written.
   */
  async start(): Promise<void> {
    if (this.#actor || this.#checking || this.#finished) {
      const why = this.#finished ? 'the pool has stopped; create a new one' : 'the pool is already started';
      throw new TidepoolError('TIDEPOOL_ERR_POOL_STATE', why);
    }
    this.#checkDeliveryTimeout();
    this.#started = true;
    if (this.#ledger) {
      sweepStateDir(this.#ledger.dir, this.logger);
      this.#ledger.open();
    }
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
        breakerCooldown: this.options.breakerCooldown,
        breakerMaxCooldown: this.options.breakerMaxCooldown,
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
    await this.#ledger?.close();
    for (const [, pending] of this.#pending) {
      pending.reject(new TidepoolError('TIDEPOOL_ERR_POOL_STOPPED', 'the pool stopped before the task reached a final outcome'));
    }
    this.#pending.clear();
    this.#deliveries.clear();
    this.#running.clear();
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
        const { crashes, trips, cooldownMs } = emitted;
        const retryAt = this.#now() + cooldownMs;
        this.#retryAt = retryAt;
        this.logger.error(
          { crashes, trips, crashWindow: this.options.crashWindow, cooldown: cooldownMs },
          `crash breaker tripped (${trips} so far): ${crashes} crashes within ${this.options.crashWindow} ms; intake paused for ${cooldownMs} ms, then one attempt is let through as a probe`,
        );
        return this.#notify('breaker:tripped', { crashes, trips, cooldownMs, retryAt });
      }
      case 'breaker.half-open':
        this.#retryAt = null;
        this.logger.warn('crash breaker half-open: the next attempt is its probe');
        return this.#notify('breaker:half-open');
      case 'breaker.closed':
        this.logger.info('crash breaker closed');
        return this.#notify('breaker:closed');
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
          onProgress: (workerId, deliveryId, value) => this.#progress(workerId, deliveryId, value),
        }),
      },
      delays: {
        spawnTimeout: o.spawnTimeout,
        taskTimeout: o.timeout,
        killGrace: o.killGrace,
        idleTimeout: o.idleTimeout,
      },
    });
    const workers = new WorkerActors(worker, (event) => this.#fromWorker(event), {
      inspect: o.inspect ? asChildrenOf(() => this.#actor, o.inspect as InspectObserver) : undefined,
      clock: this.#internals.clock,
    });
    this.#workers = workers;
    return poolMachine.provide({
      actors: {
        startup: fromPromise(async () => {
          await source.open(
            {
              deliver: (delivery) => {
                const taskId = delivery.task.id;
                this.#retrying.delete(taskId);
                if (this.#cancelled.delete(taskId)) {
                  log.info({ taskId, attempt: delivery.attempt }, 'delivery of a cancelled task acked without running it');
                  this.#track(source.settle(delivery, { action: 'ack' }), 'settle');
                  return;
                }
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
            this.#running.delete(id);
            if (!held.void) this.#track(source.release(held.delivery), 'release');
          }
        }),
        forget: safe('forget', (_: unknown, params: unknown) => {
          for (const id of (params as ForgetParams).deliveryIds) {
            this.#deliveries.delete(id);
            this.#running.delete(id);
          }
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
      // The breaker's cooldown is the machine's own (it grows): given through its input.
      delays: {
        crashWindow: o.crashWindow,
      },
    });
  }

  /** A worker's report on its way to the pool machine; an attempt's start is told here. */
  #fromWorker(event: PoolEvent): void {
    if (event.type === 'worker.running') {
      const held = this.#deliveries.get(event.deliveryId);
      if (held) {
        const { task, attempt } = held.delivery;
        this.#running.set(event.deliveryId, { taskId: task.id, attempt, workerId: event.workerId, progress: undefined });
        this.#notify('attempt:start', { taskId: task.id, attempt, workerId: event.workerId, pid: event.pid });
      }
    } else if ((event.type === 'worker.done' || event.type === 'worker.error') && event.held !== null) {
      // It ended without reporting on its attempt: the delivery goes back to the backlog.
      this.#running.delete(event.held);
    } else if (event.type === 'worker.declined' && this.#running.get(event.deliveryId)?.workerId === event.workerId) {
      // Its task never reached its process (gone before it could read it): not running after all.
      this.#running.delete(event.deliveryId);
    }
    this.#actor?.send(event);
  }

  /** A progress value from a worker: kept and told while its attempt is the one running. */
  #progress(workerId: string, deliveryId: string, value: unknown): void {
    const attempt = this.#running.get(deliveryId);
    if (!attempt || attempt.workerId !== workerId) return;
    attempt.progress = value;
    this.#notify('progress', { taskId: attempt.taskId, attempt: attempt.attempt, workerId, value });
  }

  /** Now on the pool's clock (a simulated one in tests), in ms. */
  #now(): number {
    return (this.#internals.clock as { now?: () => number } | undefined)?.now?.() ?? Date.now();
  }

  /** A task's final outcome decided without a settlement of an attempt: told to its caller. */
  #final(result: TaskResult extends infer R ? (R extends unknown ? Omit<R, 'durationMs'> : never) : never): void {
    const pending = this.#pending.get(result.id);
    this.#pending.delete(result.id);
    this.#retrying.delete(result.id);
    const final = { ...result, durationMs: pending ? Math.round(performance.now() - pending.startedAt) : 0 } as TaskResult;
    pending?.resolve(final);
    this.#notify('outcome', final);
  }

  /** Keep a source call's promise until it settles, so drain and stop can wait for it. */
  #track(promise: Promise<void>, what: string, then?: () => void): void {
    // One reaction per settlement (this runs once per task): it ends the tracking itself.
    const tracked: Promise<void> = promise.then(
      () => {
        this.#settling.delete(tracked);
        then?.();
      },
      (err: unknown) => {
        this.#settling.delete(tracked);
        this.logger.error({ err }, `the source could not ${what} a delivery; it will be delivered again`);
      },
    );
    this.#settling.add(tracked);
  }

  #settle({ deliveryId, outcome }: SettleParams): void {
    const held = this.#deliveries.get(deliveryId);
    if (!held) return;
    this.#deliveries.delete(deliveryId);
    const { delivery } = held;
    const taskId = delivery.task.id;
    const started = this.#running.delete(deliveryId);
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
    // A task cancelled before its attempt began made one attempt fewer than its delivery says.
    const cancelledEarly = outcome.status === 'failed' && outcome.kind === 'cancelled' && !started;
    const attempts = cancelledEarly ? delivery.attempt - 1 : delivery.attempt;
    // The final result goes with the settlement (a broker source replies to the sender with it).
    let result: TaskResult | undefined;
    if (settlement.action !== 'retry') {
      const pending = this.#pending.get(taskId);
      const durationMs = pending ? Math.round(performance.now() - pending.startedAt) : 0;
      result =
        outcome.status === 'resolved'
          ? { id: taskId, status: 'resolved', result: outcome.result ?? null, attempts, durationMs }
          : { id: taskId, status: 'failed', error: publicError(outcome), attempts, durationMs };
    }
    // The outcome is told once the settlement is safe: a task whose ack failed comes again.
    this.#track(this.source.settle(delivery, settlement, result), 'settle', () => {
      if (!cancelledEarly) this.#notify('attempt', { taskId, attempt: delivery.attempt, outcome, settlement });
      if (result === undefined) {
        remember(this.#retrying, taskId, delivery.attempt);
        return;
      }
      this.#final(result);
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

/** A value as an error message names it. */
function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `${typeof value} ${String(value)}`;
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
