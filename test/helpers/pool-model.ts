import { EventEmitter } from 'node:events';
import { isDeepStrictEqual } from 'node:util';
import { pino } from 'pino';
import { fromCallback, SimulatedClock } from 'xstate';
import type { AnyActorRef, AnyEventObject, InspectionEvent } from 'xstate';
import type { PoolContext } from '../../machines/pool.js';
import type { Outcome, ProcessExit, WorkerReport } from '../../machines/types.js';
import type { ProcessAnswer, ProcessCommand, ProcessEvent, ProcessInput, WorkerContext } from '../../machines/worker.js';
import { WorkerActorTracker } from './coverage.js';
import { FrameReader, HOST, frame, parseConfigure } from '../../src/child/host-protocol.js';
import type { SpawnSpec } from '../../src/child/host-protocol.js';
import { MSG } from '../../src/child/protocol.js';
import type { ChildMessage, RunMessage } from '../../src/child/protocol.js';
import { createPool } from '../../src/create-pool.js';
import { TidepoolError } from '../../src/errors.js';
import type { AttemptEvent, Pool, TaskResult } from '../../src/pool.js';
import type { Settlement } from '../../src/settlement.js';
import type { MemorySource } from '../../src/sources/memory.js';
import type { Delivery, SourceConsumer, Task } from '../../src/sources/source.js';

/**
 * A model of the whole pool (`createPool` with a simulated clock) for fast-check model-based
 * runs: commands that drive the pool and its fake processes, and the lifecycle invariants
 * checked after every command and at the end of a run.
 *
 * Two ways a fake process is attached, following what the pool does for each kind of worker:
 * - hosted (commands, and module workers that serve one task: the default): the real driver
 *   and the real `SpawnHost` run; only the spawn host process is fake. It speaks the frame
 *   protocol of src/child/host-protocol.js (configure, spawn, input, signal in; up, spawned,
 *   failed, exited out), so what the pool writes to the host and reads from it is checked.
 *   The test file routes `child_process.spawn` of a host here (see `FAKE_SPAWN_HOST`).
 * - at the process slot (module workers that serve several tasks, over a channel): a fake
 *   `process` actor that answers the way the driver does, one step at a time.
 *
 * Either way the fake processes act one step at a time, so that the order in which processes
 * act, time passes and the user calls the pool is what the property explores.
 */

/**
 * Where the test file's `child_process` mock looks for a fake spawn host: a function on
 * `globalThis` under this symbol, given the command and arguments of a `spawn`, returning a
 * fake child or undefined (then the real `spawn` runs). A symbol, not an import, because the
 * mock's factory runs before any module of the test is loaded.
 */
export const FAKE_SPAWN_HOST = Symbol.for('tidepool.test.fakeSpawnHost');
type SpawnHook = (command: string, args: readonly string[]) => unknown;
const hooks = globalThis as unknown as Record<typeof FAKE_SPAWN_HOST, SpawnHook | undefined>;

// ---------------------------------------------------------------------------------------------
// Vocabulary of a run

/** What a task's handler does on one attempt. */
export type Behaviour = 'resolve' | 'throw' | 'fatal' | 'crash' | 'hang' | 'memory';

/** A task as submitted: what it does on attempt 1, 2, 3 (the last repeats), and how it takes SIGTERM. */
export interface TaskSpec {
  behaviours: Behaviour[];
  /** Ignores SIGTERM (a handler deaf to its AbortSignal, a script that traps TERM). */
  stubborn: boolean;
}

export interface ModelConfig {
  kind: 'module' | 'command';
  concurrency: number;
  spares: number;
  maxTasksPerWorker: number;
  attempts: number;
  maxCrashes: number;
  /** How an idle command process (a spare waiting on stdin) takes SIGTERM. */
  stubbornIdle: boolean;
  /** Called while the pool is still starting (its source opening). */
  early?: 'pause' | 'drain' | 'stop';
  /** Overrides of the default TIMING (equal delays make timers fire at the same instant). */
  timing?: Partial<Timing>;
}

export interface Timing {
  spawnTimeout: number;
  timeout: number;
  killGrace: number;
  idleTimeout: number;
  retryDelay: number;
  retryMaxDelay: number;
  crashWindow: number;
  breakerCooldown: number;
  breakerMaxCooldown: number;
}

/** The default timing: distinct values, so that a transition on the wrong delay shows. */
export const TIMING: Timing = {
  spawnTimeout: 100,
  timeout: 1_000,
  killGrace: 50,
  idleTimeout: 500,
  retryDelay: 20,
  retryMaxDelay: 80,
  crashWindow: 3_000,
  breakerCooldown: 200,
  breakerMaxCooldown: 800,
};

export type Delay =
  | 'spawnTimeout'
  | 'taskTimeout'
  | 'killGrace'
  | 'idleTimeout'
  | 'retry'
  | 'crashWindow'
  | 'breakerCooldown'
  | 'tick';

/** How far each `advance` goes (`retry`: about the first backoff, between retryDelay/2 and retryDelay). */
const delays = (t: Timing): Record<Delay, number> => ({
  spawnTimeout: t.spawnTimeout,
  taskTimeout: t.timeout,
  killGrace: t.killGrace,
  idleTimeout: t.idleTimeout,
  retry: Math.round((t.retryDelay * 3) / 4),
  crashWindow: t.crashWindow,
  breakerCooldown: t.breakerCooldown,
  tick: 1,
});

/** One command of a run, as plain data (printed by fast-check, replayed by regression tests). */
export type Cmd =
  /** `pool.run(task)`, `n` times (default 1). */
  | { k: 'submit'; spec: TaskSpec; n?: number }
  /** Process `i` (among the live ones, modulo) does the next thing it would do by itself. */
  | { k: 'step'; i: number }
  /** Every live process does its next thing. */
  | { k: 'stepAll' }
  /** A process not yet started fails to (ENOENT), or a module's handler fails to load. */
  | { k: 'spawnFail'; i: number; how: 'enoent' | 'load' }
  /**
   * The next process fails inside the slot: for a worker at the process slot, the driver
   * reports spawnError + exit at once; for hosted workers, the next start of a spawn host
   * throws (ENOMEM) out of the slot (it takes effect when no host is running).
   */
  | { k: 'breakSpawn' }
  /** The spawn host dies: every process it holds fails (hosted workers only). */
  | { k: 'hostDies' }
  /** The source loses its connection and gets it back: what it had delivered is void. */
  | { k: 'lost' }
  /** A live process dies from outside: SIGKILL, the OOM killer, or exit code 1. */
  | { k: 'external'; i: number; how: 'kill' | 'oom' | 'exit' }
  /** Time passes: one of the named delays (+/- 1 ms), or up to the next due timer. */
  | { k: 'advance'; by: Delay; delta: -1 | 0 | 1 }
  | { k: 'advanceToNext' }
  | { k: 'pause' }
  | { k: 'resume' }
  | { k: 'drain' }
  | { k: 'stop' };

// ---------------------------------------------------------------------------------------------
// Fake processes

/** Exit codes of the module worker's child entry (src/child/protocol.js). */
const EXIT_TERMINATED = 143;
const EXIT_LOAD_FAILED = 78;
/** src/process/driver.ts: a command exiting with 65 fails without retries. */
const EXIT_NON_RETRYABLE = 65;

interface Run {
  deliveryId: string;
  taskId: string;
  attempt: number;
  last: boolean;
  behaviour: Behaviour;
  stubborn: boolean;
  /** Clock time of `proc.run`. */
  at: number;
  /** What the process answered for this task, if anything. */
  reply: null | { type: 'result'; result: unknown } | { type: 'failed'; retryable: boolean };
  repliedAt: number | null;
  /** The process died while this task was running (no reply). */
  diedDuring: ProcessExit | null;
}

/** One fake OS process, driven by the commands of the run. */
export class FakeProc {
  /** `starting`: forked, no 'spawn' event yet; `loading`: a module process loading its handler. */
  phase: 'starting' | 'loading' | 'up' | 'exited' = 'starting';
  pid: number | null = null;
  /** The slot's cleanup ran: its worker machine stopped it. */
  stopped = false;
  readonly commands: ProcessCommand[] = [];
  readonly sent: ProcessEvent[] = [];
  readonly runs: Run[] = [];
  /** Got SIGTERM / SIGKILL (one sent before the 'spawn' event waits for it, as in the driver). */
  term = false;
  kill = false;
  earlySignals = 0;
  /** Will exit like this on its next step (a module after its last reply, a failed load). */
  pendingExit: ProcessExit | null = null;
  exit: ProcessExit | null = null;
  /** Clock times of its life, for the timer checks. */
  readyAt: number | null = null;
  /** The first SIGTERM or SIGKILL sent to it. */
  firstSignalAt: number | null = null;
  /** The command (index in the run's log) during which it got its first signal. */
  firstSignalCmd = -1;
  killAt: number | null = null;
  /** It failed to start (a spawn error, or an exit before ready) before any signal. */
  spawnFailedAt: number | null = null;
  /** The worker machine's reports, as the pool received them. */
  readonly reports: Outcome[] = [];
  /** Crash outcomes without a delivery: the worker died while idle (the breaker counts them). */
  readonly idleDeaths: Outcome[] = [];
  /** The slot threw as it started: its worker machine ends in error, not with a report. */
  threw = false;
  /** A hosted module worker whose handler failed to load (it answers `load-error`, exits 78). */
  loadFailed = false;
  /** Its handler failed to load while it held a task and no signal had been sent: one `spawn` outcome. */
  loadFailedRunning = false;
  /** Hosted: its stdin was closed (its task written, with the spawn or later). */
  stdinClosed = false;

  constructor(
    readonly workerId: string,
    readonly startedAt: number,
    readonly sendBack: (event: ProcessEvent) => void,
    /** Hosted: the fake spawn host that started it, and its id there. */
    readonly host: FakeHost | null = null,
    readonly hostId = '',
  ) {}

  get live(): boolean {
    return !this.stopped && this.phase !== 'exited';
  }

  get spawned(): boolean {
    return this.phase === 'loading' || this.phase === 'up';
  }

  /** The task it is running and has not answered. */
  get running(): Run | null {
    const run = this.runs.at(-1);
    return run && run.reply === null && run.diedDuring === null ? run : null;
  }
}

/**
 * A fake spawn host process: what `child_process.spawn` returns to `SpawnHost` in place of
 * the Perl or Node host. Frames written to its stdin go to the model synchronously; the
 * model answers with `send` when its processes act.
 */
export class FakeHost extends EventEmitter {
  readonly pid = fakePids++;
  readonly stdin: EventEmitter & { write(bytes: Buffer | string): boolean; end(): void };
  readonly stdout: EventEmitter & { ref(): void; unref(): void };
  readonly stderr = null;
  readonly stdio: unknown[];
  readonly #reader = new FrameReader();
  /** The configure frame, once received. */
  spec: SpawnSpec | null = null;
  /** Its stdin ended (the manager let it go) or it died. */
  gone = false;
  readonly frames: string[] = [];

  constructor(onFrame: (host: FakeHost, kind: string, fields: string[], payload: Buffer) => void, onEnd: (host: FakeHost) => void) {
    super();
    const stdin = Object.assign(new EventEmitter(), {
      write: (bytes: Buffer | string) => {
        for (const f of this.#reader.push(typeof bytes === 'string' ? Buffer.from(bytes) : bytes)) {
          this.frames.push(f.kind);
          onFrame(this, f.kind, f.fields, f.payload);
        }
        return true;
      },
      end: () => onEnd(this),
    });
    this.stdin = stdin;
    this.stdout = Object.assign(new EventEmitter(), { ref: () => {}, unref: () => {} });
    this.stdio = [this.stdin, this.stdout, null];
  }

  ref(): void {}
  unref(): void {}
  kill(): boolean {
    return false;
  }

  /** A frame to the manager, at once (the model decides when a host speaks). */
  send(bytes: Buffer): void {
    if (!this.gone) this.stdout.emit('data', bytes);
  }

  /** The host process ends: SpawnHost fails whatever it still held. */
  die(code: number | null, signal: NodeJS.Signals | null): void {
    this.gone = true;
    this.emit('exit', code, signal);
    this.emit('close', code, signal);
  }
}

/** A handler load check that succeeds, as a process does: it closes after the call. */
function loadCheck(): EventEmitter {
  const child = Object.assign(new EventEmitter(), {
    pid: fakePids++,
    stdin: Object.assign(new EventEmitter(), { write: () => true, end: () => {}, destroy: () => {} }),
    stdout: Object.assign(new EventEmitter(), { setEncoding: () => {} }),
    stderr: Object.assign(new EventEmitter(), { setEncoding: () => {} }),
    kill: () => false,
  });
  setImmediate(() => {
    // The check says the module loaded, then exits 0.
    child.stdout.emit('data', 'loaded\n');
    child.emit('exit', 0, null);
    child.emit('close', 0, null);
  });
  return child;
}

/** Fake pids lie above any pid_max (2^22): a signal that reached the kernel by mistake would find nothing. */
let fakePids = 5_000_000;

/** An `X` frame: `X <id> <code> <signal> <overflow> <outlen> <errlen> <memory>` and the bytes. */
function exitedFrame(id: string, exit: ProcessExit, answer: string): Buffer {
  const out = Buffer.from(answer, 'utf8');
  const err = Buffer.from(exit.detail ?? '', 'utf8');
  const header = `${HOST.EXITED} ${id} ${exit.code ?? '-'} ${exit.signal ?? '-'} 0 ${out.length} ${err.length} ${exit.memory ? 1 : 0}\n`;
  return Buffer.concat([Buffer.from(header, 'latin1'), out, err]);
}

// ---------------------------------------------------------------------------------------------
// Records of what the pool did

interface TaskRecord {
  id: string;
  spec: TaskSpec;
  state: 'pending' | 'resolved' | 'rejected';
  result?: TaskResult;
  error?: unknown;
  attempts: AttemptEvent[];
  outcomes: TaskResult[];
}

interface DeliveryRecord {
  delivery: Delivery;
  settles: Settlement[];
  releases: number;
  run: { proc: FakeProc; run: Run } | null;
  /** Held when the source lost its connection: never settled nor released afterwards. */
  void: boolean;
}

/** A worker as its own machine has it. */
interface WorkerView {
  id: string;
  /** Its top-level state. */
  state: string;
  status: string;
  reported: WorkerContext['reported'];
  deliveryId: string | null;
}

type RootSnapshot = {
  value: unknown;
  status: string;
  context: PoolContext;
  children: Record<string, unknown>;
};

/** What the breaker counts, per DESIGN.md (not imported: the model must not share the pool's mistakes). */
const CRASH_KINDS: readonly string[] = ['crash', 'memory', 'spawn'];
const isCrash = (o: Outcome) => o.status === 'failed' && CRASH_KINDS.includes(o.kind);


/**
 * The retry jitter (Math.random) would make runs irreproducible: `pinRandom` replaces
 * Math.random with a seeded generator, reseeded for every model, so that a replayed command
 * sequence runs exactly the same. (A constant would not do: XState draws the ids of delayed
 * events from Math.random, and equal ids make it lose track of their timers.)
 */
let random: () => number = Math.random;
const reseed = () => {
  let a = 0x2545f491;
  random = () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
};
export function pinRandom(): () => void {
  const original = Math.random;
  Math.random = () => random();
  return () => {
    Math.random = original;
  };
}

/** Run the microtasks and the promise continuations that the last command queued. */
const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

export class ModelViolation extends Error {
  override name = 'ModelViolation';
}

/**
 * The pool under test, its fake processes and everything it was seen to do. `apply` carries
 * out one command and checks the invariants; `finish` drains the pool to the end and checks
 * the final ones. Violations seen inside the pool's callbacks are collected (throwing there
 * would be swallowed by the pool's slots) and thrown after the command.
 */
export class PoolModel {
  readonly clock = new SimulatedClock();
  /** The delays of this run. */
  readonly t: Timing;
  readonly pool: Pool;
  readonly procs: FakeProc[] = [];
  readonly tasks = new Map<string, TaskRecord>();
  readonly deliveries = new Map<string, DeliveryRecord>();
  readonly reaped = new Map<string, WorkerReport[]>();
  readonly violations: string[] = [];
  /** The commands applied so far, for messages. */
  readonly log: Cmd[] = [];

  #state = 'starting';
  #taskSeq = 0;
  #breakSpawns = 0;
  #drainP: Promise<unknown> | null = null;
  #stopP: Promise<unknown> | null = null;
  #stopAsked = false;
  #done = false;
  /** Times of the crashes the pool counted, for the breaker. */
  #crashes: number[] = [];
  /** The breaker's pause in force: when it tripped. Null once a user pause takes over. */
  #trippedAt: number | null = null;
  /**
   * The breaker's cooldown as the model expects it (README): `breakerCooldown` at first,
   * doubled (up to `breakerMaxCooldown`) by each trip of a half-open breaker, back to
   * `breakerCooldown` once `crashWindow` has passed since it closed without a trip.
   */
  #cooldown = 0;
  /** The cooldown of the breaker pause in force. */
  #pauseCooldown = 0;
  /** When the breaker last closed after a trip (its quiet window runs from then), or null. */
  #closedAt: number | null = null;
  /** The breaker's state after the last root snapshot. */
  #breakerWas = 'closed';
  /** The pool's backlog after the last root snapshot, and the deliveries handed out while half-open. */
  #backlogWas: string[] = [];
  readonly #probes = new Set<string>();
  /** Cooldowns the pool announced with `breaker:tripped`, for the check against the model's. */
  readonly #announced: number[] = [];
  readonly #expectedCooldowns: number[][] = [];
  #trips = 0;
  #tripEvents = 0;
  /** Settlements the source carried out, by `taskId#attempt`, until the attempt event comes. */
  readonly #settledAttempts = new Map<string, { delivery: Delivery; settlement: Settlement }>();
  /** The pool told the source to pause (and not to resume since). */
  #intakePaused = false;
  /** Hosted workers: the spawn hosts started so far (the last is the live one, if any). */
  readonly hosts: FakeHost[] = [];
  /** The worker whose process actor is starting right now (its `xstate.init`), for the host's `S` frame. */
  #startingWorker: string | null = null;
  /** The pool's worker actors, seen through inspection (each is the root of its own system). */
  readonly workerActors = new WorkerActorTracker();
  /** Times the source lost its connection. */
  #losses = 0;

  /** Whether the pool starts this config's workers through its spawn host (else at the process slot). */
  readonly hosted: boolean;

  private constructor(readonly config: ModelConfig) {
    this.t = { ...TIMING, ...config.timing };
    this.#cooldown = this.t.breakerCooldown;
    this.hosted = config.kind === 'command' || config.maxTasksPerWorker === 1;
    const logger = pino(
      { level: 'error' },
      {
        write: (line: string) => {
          // A slot that threw, or the machine failing: the pool swallowed a bug.
          if (line.includes('pool slot failed') || line.includes('pool machine failed')) {
            this.violate(`the pool logged an internal failure: ${line.trim()}`);
          }
        },
      },
    );
    this.pool = createPool(
      {
        worker: config.kind === 'module' ? { module: 'test/fixtures/noop.js' } : { command: ['/bin/cat'] },
        concurrency: config.concurrency,
        spares: config.spares,
        maxTasksPerWorker: config.maxTasksPerWorker,
        attempts: config.attempts,
        maxCrashes: config.maxCrashes,
        timeout: this.t.timeout,
        spawnTimeout: this.t.spawnTimeout,
        killGrace: this.t.killGrace,
        idleTimeout: this.t.idleTimeout,
        retryDelay: this.t.retryDelay,
        retryMaxDelay: this.t.retryMaxDelay,
        crashWindow: this.t.crashWindow,
        breakerCooldown: this.t.breakerCooldown,
        breakerMaxCooldown: this.t.breakerMaxCooldown,
        logger,
        inspect: (event: InspectionEvent) => this.#inspect(event),
      },
      this.hosted ? { clock: this.clock } : { processActor: this.#processSlot(), clock: this.clock },
    );
    this.#instrument();
  }

  /** Route the spawn of a spawn host to a fake one of this model (one model at a time). */
  #hookSpawn(): void {
    hooks[FAKE_SPAWN_HOST] = (command, args) => {
      // The pool's check that a module handler loads, before it starts: it loads (the model's
      // load failures are the workers').
      if (args.some((a) => /\/child\/check\.js$/.test(a))) return loadCheck();
      if (!args.some((a) => /spawn-host\.(pl|js)$/.test(a))) return undefined;
      if (!this.hosted) {
        this.violate(`a spawn host started for workers served at the process slot: ${command} ${args.join(' ')}`);
      }
      if (this.#breakSpawns > 0) {
        // fork() of the host fails synchronously (ENOMEM): the exception leaves the slot.
        this.#breakSpawns--;
        const workerId = this.#takeStartingWorker('a spawn host started');
        if (workerId !== null) {
          const p = new FakeProc(workerId, this.clock.now(), () => {});
          p.phase = 'exited';
          p.exit = { code: null, signal: null };
          p.stopped = true;
          p.threw = true;
          this.procs.push(p);
        }
        throw Object.assign(new Error('spawn ENOMEM'), { code: 'ENOMEM' });
      }
      if (this.hosts.some((h) => !h.gone)) this.violate('a second spawn host started while one is running');
      const host = new FakeHost(
        (h, kind, fields, payload) => this.#hostFrame(h, kind, fields, payload),
        (h) => this.#hostEnd(h),
      );
      this.hosts.push(host);
      return host;
    };
  }

  /** Stop routing spawns here (the end of the run). */
  #unhookSpawn(): void {
    if (hooks[FAKE_SPAWN_HOST] !== undefined) hooks[FAKE_SPAWN_HOST] = undefined;
  }

  static async create(config: ModelConfig): Promise<PoolModel> {
    reseed();
    const model = new PoolModel(config);
    model.#hookSpawn();
    const started = model.pool.start();
    if (config.early === 'pause') model.pool.pause();
    if (config.early === 'drain') {
      model.#drainP = model.#settled(model.pool.drain());
    }
    if (config.early === 'stop') {
      model.#stopAsked = true;
      model.#stopP = model.#settled(model.pool.stop());
    }
    try {
      await started;
    } catch (err) {
      // A pool stopped before it started did not start.
      const code = err instanceof TidepoolError ? err.code : String(err);
      if (config.early !== 'stop' || code !== 'TIDEPOOL_ERR_START_FAILED') model.violate(`start() rejected: ${code}`);
    }
    await flush();
    model.check();
    return model;
  }

  get state(): string {
    return this.#state;
  }

  get snapshot() {
    return this.pool.actor.getSnapshot();
  }

  violate(message: string): void {
    this.violations.push(`[t=${this.clock.now()} ${this.#state}] ${message}`);
  }

  // -------------------------------------------------------------------------------------------
  // Commands

  async apply(cmd: Cmd): Promise<void> {
    this.log.push(cmd);
    switch (cmd.k) {
      case 'submit':
        for (let i = 0; i < (cmd.n ?? 1); i++) this.#submit(cmd.spec);
        break;
      case 'step': {
        const live = this.procs.filter((p) => p.live);
        if (live.length > 0) this.#step(live[cmd.i % live.length]);
        break;
      }
      case 'stepAll':
        for (const p of this.procs.filter((q) => q.live)) this.#step(p);
        break;
      case 'spawnFail':
        this.#spawnFail(cmd.i, cmd.how);
        break;
      case 'breakSpawn':
        this.#breakSpawns++;
        break;
      case 'hostDies':
        if (this.hosted) this.#hostDies();
        break;
      case 'lost':
        this.#losses++;
        (this.pool.source as MemorySource).interrupt();
        break;
      case 'external': {
        const live = this.procs.filter((p) => p.live && p.spawned);
        if (live.length === 0) break;
        const p = live[cmd.i % live.length];
        this.#exitProcess(
          p,
          cmd.how === 'kill'
            ? { code: null, signal: 'SIGKILL' }
            : cmd.how === 'oom'
              ? { code: null, signal: 'SIGKILL', memory: true }
              : { code: 1, signal: null, detail: 'exited from outside' },
        );
        break;
      }
      case 'advance':
        this.#advance(Math.max(1, delays(this.t)[cmd.by] + cmd.delta));
        break;
      case 'advanceToNext': {
        this.#catchUp();
        const next = this.#nextDue();
        if (next !== undefined) this.#setTime(next);
        break;
      }
      case 'pause':
        this.pool.pause();
        break;
      case 'resume':
        this.pool.resume();
        break;
      case 'drain':
        this.#drainP ??= this.#settled(this.pool.drain());
        break;
      case 'stop':
        this.#stopAsked = true;
        this.#stopP ??= this.#settled(this.pool.stop());
        break;
    }
    await flush();
    this.check();
  }

  #submit(spec: TaskSpec): void {
    const id = `t${++this.#taskSeq}`;
    const record: TaskRecord = { id, spec, state: 'pending', attempts: [], outcomes: [] };
    this.tasks.set(id, record);
    this.pool.run({ id, type: 'model', spec }).then(
      (result) => {
        record.state = 'resolved';
        record.result = result;
      },
      (err: unknown) => {
        record.state = 'rejected';
        record.error = err;
      },
    );
  }

  #settled(p: Promise<void>): Promise<unknown> {
    return p.then(
      () => 'ok',
      (err: unknown) => {
        this.violate(`drain()/stop() rejected: ${String(err)}`);
        return err;
      },
    );
  }

  // -------------------------------------------------------------------------------------------
  // The fake process slot

  #processSlot() {
    return fromCallback<ProcessCommand, ProcessInput>(({ input, sendBack, receive }) => {
      this.#startingWorker = null;
      const p = new FakeProc(input.workerId, this.clock.now(), (event) => {
        p.sent.push(event);
        const now = this.clock.now();
        if (event.type === 'proc.ready') p.readyAt ??= now;
        const failedToStart = event.type === 'proc.spawnError' || (event.type === 'proc.exit' && p.readyAt === null);
        if (failedToStart && p.firstSignalAt === null && p.readyAt === null) p.spawnFailedAt ??= now;
        sendBack(event);
      });
      this.procs.push(p);
      if (this.procs.some((q) => q !== p && q.workerId === p.workerId)) {
        this.violate(`a second process for ${p.workerId}`);
      }
      const alive = this.procs.filter((q) => !q.stopped).length;
      if (alive > this.config.concurrency) {
        this.violate(`${alive} processes alive (started, not stopped) > concurrency ${this.config.concurrency}`);
      }
      receive((command) => this.#receive(p, command));
      if (this.#breakSpawns > 0) {
        // The driver when fork() throws: both events from inside the slot, before it returns.
        this.#breakSpawns--;
        p.phase = 'exited';
        p.exit = { code: null, signal: null };
        p.sendBack({ type: 'proc.spawnError', error: { message: 'fork EAGAIN', code: 'EAGAIN' } });
        p.sendBack({ type: 'proc.exit', code: null, signal: null });
      }
      return () => {
        if (p.stopped) this.violate(`the cleanup of ${p.workerId}'s process ran twice`);
        p.stopped = true;
        // The real slot would SIGKILL the group here; a process that never exited was abandoned
        // by its worker (it could not have been reaped).
        if (p.phase !== 'exited') {
          this.violate(`${p.workerId}'s process was stopped while still alive (${p.phase})`);
        }
      };
    });
  }

  #receive(p: FakeProc, command: ProcessCommand): void {
    p.commands.push(command);
    if (p.stopped) {
      this.violate(`${p.workerId}'s process got ${command.type} after its cleanup`);
      return;
    }
    // The driver: no child, or its IPC channel is closed.
    if (p.phase === 'exited') return;
    switch (command.type) {
      case 'proc.run': {
        if (p.phase !== 'up') this.violate(`${p.workerId}: proc.run to a process that is ${p.phase}`);
        if (p.running) this.violate(`${p.workerId}: proc.run ${command.deliveryId} while running ${p.running.deliveryId}`);
        if (p.term || p.kill) this.violate(`${p.workerId}: proc.run after a signal`);
        const d = this.deliveries.get(command.deliveryId);
        if (!d) {
          this.violate(`${p.workerId}: proc.run of unknown delivery ${command.deliveryId}`);
          return;
        }
        if (d.settles.length + d.releases > 0) {
          this.violate(`${p.workerId}: proc.run of ${command.deliveryId}, already settled or released`);
        }
        const served = p.runs.length + 1;
        const expectLast = served >= this.config.maxTasksPerWorker;
        if (command.last !== expectLast) {
          this.violate(`${p.workerId}: proc.run #${served} with last=${command.last}, maxTasksPerWorker ${this.config.maxTasksPerWorker}`);
        }
        this.#startRun(p, d, command.last, this.clock.now());
        return;
      }
      case 'proc.terminate':
      case 'proc.kill':
        this.#signal(p, command.type);
        return;
    }
  }

  // -------------------------------------------------------------------------------------------
  // The fake spawn host (hosted workers)

  #takeStartingWorker(what: string): string | null {
    const workerId = this.#startingWorker;
    this.#startingWorker = null;
    if (workerId === null) this.violate(`${what} outside the start of a worker's process actor`);
    return workerId;
  }

  #hostProc(host: FakeHost, id: string, kind: string): FakeProc | undefined {
    const p = this.procs.find((q) => q.host === host && q.hostId === id);
    if (!p) this.violate(`spawn host frame ${kind} for unknown worker ${id}`);
    return p;
  }

  /** A frame the manager wrote to a spawn host. */
  #hostFrame(host: FakeHost, kind: string, fields: string[], payload: Buffer): void {
    if (host.gone) {
      this.violate(`frame ${kind} written to a spawn host that is gone`);
      return;
    }
    if (host.spec === null && kind !== HOST.CONFIGURE) this.violate(`frame ${kind} before the configure frame`);
    switch (kind) {
      case HOST.CONFIGURE: {
        if (host.spec !== null) this.violate('a spawn host configured twice');
        const spec = parseConfigure(payload);
        host.spec = spec;
        // What the host must start: a command with its answer on stdout, or the module entry
        // with its answer on fd 3 (a module's console.log is not its answer).
        const module = this.config.kind === 'module';
        const argvOk = module ? spec.argv.some((a) => a.endsWith('noop.js')) : isDeepStrictEqual(spec.argv, ['/bin/cat']);
        if (!argvOk || (spec.answerFd === 3) !== module || spec.channel !== undefined) {
          this.violate(`spawn host configured with ${JSON.stringify(spec)} for ${this.config.kind} workers`);
        }
        host.send(frame(`${HOST.UP} ${host.pid} subreaper`));
        return;
      }
      case HOST.SPAWN: {
        const [id, length] = fields;
        if (this.procs.some((q) => q.host === host && q.hostId === id)) this.violate(`spawn host id ${id} reused`);
        const workerId = this.#takeStartingWorker(`spawn frame ${id}`);
        if (workerId === null) return;
        const p = new FakeProc(workerId, this.clock.now(), () => {}, host, id);
        this.#addProc(p);
        if (length !== '-') this.#hostedInput(p, payload, 'spawn');
        return;
      }
      case HOST.INPUT: {
        const p = this.#hostProc(host, fields[0], kind);
        if (p) this.#hostedInput(p, payload, 'input');
        return;
      }
      case HOST.SIGNAL: {
        const p = this.#hostProc(host, fields[0], kind);
        if (!p) return;
        // The host signals a group only while its worker is not reaped; the manager must not
        // even ask once the exit was reported (the pid may belong to another process by then).
        if (p.phase === 'exited') {
          this.violate(`${p.workerId}: ${fields[1]} asked for after its exit was reported`);
          return;
        }
        if (fields[1] !== 'SIGTERM' && fields[1] !== 'SIGKILL') this.violate(`${p.workerId}: unexpected signal ${fields[1]}`);
        this.#signal(p, fields[1] === 'SIGKILL' ? 'proc.kill' : 'proc.terminate');
        return;
      }
      default:
        this.violate(`unknown frame ${kind} to the spawn host`);
    }
  }

  /** The manager let the host go: it kills every tree it still holds, then exits. */
  #hostEnd(host: FakeHost): void {
    if (host.gone) return;
    for (const p of this.procs.filter((q) => q.host === host && q.live)) {
      this.violate(`${p.workerId}'s process (${p.phase}) still held by the spawn host when the pool let it go`);
      p.phase = 'exited';
      p.exit = { code: null, signal: 'SIGKILL' };
      p.stopped = true;
    }
    host.gone = true;
    // It exits once its stdin is closed, as a process does: later than the call.
    setImmediate(() => host.die(0, null));
  }

  #addProc(p: FakeProc): void {
    if (this.procs.some((q) => q.workerId === p.workerId)) this.violate(`a second process for ${p.workerId}`);
    this.procs.push(p);
    const alive = this.procs.filter((q) => q.live).length;
    if (alive > this.config.concurrency) {
      this.violate(`${alive} processes alive (started, not exited) > concurrency ${this.config.concurrency}`);
    }
  }

  /** A hosted process's stdin: its task (a command's JSON line, a module's `run` message), then EOF. */
  #hostedInput(p: FakeProc, payload: Buffer, how: 'spawn' | 'input'): void {
    const text = payload.toString('utf8');
    if (p.stdinClosed) {
      this.violate(`${p.workerId}: input written after its stdin was closed`);
      return;
    }
    p.stdinClosed = true;
    p.commands.push({ type: 'proc.run', deliveryId: '?', last: true });
    if (p.phase === 'exited') return; // the host drops input for a process that is gone
    if (p.term || p.kill) this.violate(`${p.workerId}: task written after a signal`);
    let task: Task;
    let attempt: number | null = null;
    try {
      if (this.config.kind === 'module') {
        const run = JSON.parse(text) as RunMessage;
        if (run.k !== MSG.RUN || run.workerId !== p.workerId || run.last !== true || run.taskId !== (run.task as Task).id) {
          this.violate(`${p.workerId}: run message ${text}`);
        }
        task = run.task as Task;
        attempt = run.attempt;
      } else {
        if (!text.endsWith('\n') || text.indexOf('\n') !== text.length - 1) this.violate(`${p.workerId}: stdin is not one JSON line: ${JSON.stringify(text)}`);
        task = JSON.parse(text) as Task;
      }
    } catch {
      this.violate(`${p.workerId}: stdin is not a task: ${JSON.stringify(text)}`);
      return;
    }
    // The delivery it runs: the one its worker machine holds (a void delivery and its
    // redelivery carry the same task and attempt).
    const child = this.workerActors.live.get(p.workerId);
    const deliveryId = (child?.getSnapshot() as { context?: WorkerContext } | undefined)?.context?.deliveryId ?? null;
    const d = deliveryId === null ? undefined : this.deliveries.get(deliveryId);
    if (!d) {
      this.violate(`${p.workerId}: given task ${task.id} by ${how}, its worker holds delivery ${deliveryId}`);
      return;
    }
    if (d.settles.length + d.releases > 0) this.violate(`${p.workerId}: given ${d.delivery.id}, already settled or released`);
    if (!isDeepStrictEqual(task, JSON.parse(JSON.stringify(d.delivery.task))) || (attempt !== null && attempt !== d.delivery.attempt)) {
      this.violate(`${p.workerId}: given ${text}, its delivery ${d.delivery.id} is attempt ${d.delivery.attempt} of ${JSON.stringify(d.delivery.task)}`);
    }
    this.#startRun(p, d, true, p.phase === 'up' ? this.clock.now() : null);
  }

  /** Process `p` starts the task of delivery `d`; `at`: when it is running (null: once it is up). */
  #startRun(p: FakeProc, d: DeliveryRecord, last: boolean, at: number | null): void {
    if (d.run) this.violate(`delivery ${d.delivery.id} run twice (${d.run.proc.workerId}, ${p.workerId})`);
    const { task, attempt } = d.delivery;
    const spec = (task as Task & { spec: TaskSpec }).spec;
    const run: Run = {
      deliveryId: d.delivery.id,
      taskId: task.id,
      attempt,
      last,
      behaviour: spec.behaviours[Math.min(attempt, spec.behaviours.length) - 1],
      stubborn: spec.stubborn,
      at: at ?? Number.NaN,
      reply: null,
      repliedAt: null,
      diedDuring: null,
    };
    p.runs.push(run);
    d.run = { proc: p, run };
  }

  /** A signal reaches process `p` (held until it has started, as both the driver and the host do). */
  #signal(p: FakeProc, type: 'proc.terminate' | 'proc.kill'): void {
    if (p.host) p.commands.push({ type });
    if (p.firstSignalAt === null) {
      p.firstSignalAt = this.clock.now();
      p.firstSignalCmd = this.log.length;
    }
    if (p.phase === 'starting') p.earlySignals++;
    if (type === 'proc.terminate') p.term = true;
    else {
      p.kill = true;
      p.killAt ??= this.clock.now();
    }
  }

  /** The next thing process `p` does by itself, if any. */
  #step(p: FakeProc): boolean {
    if (!p.live) return false;
    if (p.host) return this.#stepHosted(p);
    const module = this.config.kind === 'module';
    if (p.phase === 'starting') {
      // The 'spawn' event: a module at the slot is ready once its handler has loaded.
      p.pid = fakePids++;
      if (module) {
        p.sendBack({ type: 'proc.spawned', pid: p.pid });
        p.phase = 'loading';
      } else {
        p.phase = 'up';
        p.sendBack({ type: 'proc.ready', pid: p.pid });
      }
      return true;
    }
    if (p.kill) {
      this.#exitProcess(p, { code: null, signal: 'SIGKILL' });
      return true;
    }
    if (p.pendingExit) {
      this.#exitProcess(p, p.pendingExit);
      return true;
    }
    const run = p.running;
    if (p.term) {
      if (module) {
        // The child entry's SIGTERM handler: leave at once when idle, else abort the task.
        if (!run) {
          this.#exitProcess(p, { code: EXIT_TERMINATED, signal: null });
          return true;
        }
        if (!run.stubborn) {
          this.#reply(p, run, { type: 'failed', retryable: true }, 'aborted: the worker is terminating');
          p.pendingExit = { code: EXIT_TERMINATED, signal: null };
          return true;
        }
      } else {
        const stubborn = run ? run.stubborn : this.config.stubbornIdle;
        if (!stubborn) {
          this.#exitProcess(p, { code: null, signal: 'SIGTERM' });
          return true;
        }
      }
    }
    if (p.phase === 'loading') {
      p.phase = 'up';
      p.sendBack({ type: 'proc.ready' });
      return true;
    }
    if (!run) return false;
    switch (run.behaviour) {
      case 'hang':
        return false;
      case 'crash':
        this.#exitProcess(p, module ? { code: 1, signal: null, detail: 'Error: boom' } : { code: null, signal: 'SIGSEGV' });
        return true;
      case 'memory':
        this.#exitProcess(p, { code: null, signal: 'SIGKILL', memory: true });
        return true;
      case 'resolve':
      case 'throw':
      case 'fatal': {
        if (!module) {
          this.#exitProcess(p, { code: run.behaviour === 'resolve' ? 0 : run.behaviour === 'throw' ? 1 : EXIT_NON_RETRYABLE, signal: null });
          return true;
        }
        this.#reply(
          p,
          run,
          run.behaviour === 'resolve'
            ? { type: 'result', result: { task: run.taskId, attempt: run.attempt, by: p.workerId } }
            : { type: 'failed', retryable: run.behaviour === 'throw' },
          'handler threw',
        );
        if (run.last || p.term) p.pendingExit = { code: p.term ? EXIT_TERMINATED : 0, signal: null };
        return true;
      }
    }
  }

  /**
   * The next thing a hosted process does. A single-use module worker loads its handler, reads
   * its `run` message from stdin (a spare waits there, where SIGTERM keeps its default
   * action), writes its one reply to fd 3 and exits; a command reads its task line and
   * answers with its exit status and stdout. The host reports the start (`P`) and the exit
   * with the answer (`X`).
   */
  #stepHosted(p: FakeProc): boolean {
    const module = this.config.kind === 'module';
    if (p.phase === 'starting') {
      p.pid = fakePids++;
      p.phase = 'up';
      const now = this.clock.now();
      p.readyAt ??= now;
      // A task written with the spawn runs from now on.
      for (const run of p.runs) if (Number.isNaN(run.at)) run.at = now;
      p.host!.send(frame(`${HOST.SPAWNED} ${p.hostId} ${p.pid}`));
      return true;
    }
    if (p.kill) {
      this.#exitHosted(p, { code: null, signal: 'SIGKILL' });
      return true;
    }
    const run = p.running;
    if (p.term) {
      if (module) {
        // Waiting on stdin, SIGTERM kills it; running a task, its handler aborts the task.
        if (!run) {
          this.#exitHosted(p, { code: null, signal: 'SIGTERM' });
          return true;
        }
        if (!run.stubborn) {
          this.#exitHosted(p, { code: EXIT_TERMINATED, signal: null }, { type: 'failed', retryable: true });
          return true;
        }
      } else if (!(run ? run.stubborn : this.config.stubbornIdle)) {
        this.#exitHosted(p, { code: null, signal: 'SIGTERM' });
        return true;
      }
    }
    if (!run) return false;
    switch (run.behaviour) {
      case 'hang':
        return false;
      case 'crash':
        this.#exitHosted(p, module ? { code: 1, signal: null, detail: 'Error: boom' } : { code: null, signal: 'SIGSEGV' });
        return true;
      case 'memory':
        this.#exitHosted(p, { code: null, signal: 'SIGKILL', memory: true });
        return true;
      case 'resolve':
      case 'throw':
      case 'fatal':
        if (!module) {
          this.#exitHosted(p, { code: run.behaviour === 'resolve' ? 0 : run.behaviour === 'throw' ? 1 : EXIT_NON_RETRYABLE, signal: null });
        } else {
          this.#exitHosted(
            p,
            { code: 0, signal: null },
            run.behaviour === 'resolve'
              ? { type: 'result', result: { task: run.taskId, attempt: run.attempt, by: p.workerId } }
              : { type: 'failed', retryable: run.behaviour === 'throw' },
          );
        }
        return true;
    }
  }

  /**
   * A hosted process exits; the host reports it with its answer: a module's reply on fd 3, a
   * command's stdout (a command that ran its task answers with its exit status).
   */
  #exitHosted(p: FakeProc, exit: ProcessExit, reply?: NonNullable<Run['reply']>, answer = ''): void {
    const run = p.running;
    if (run && reply) {
      this.#record(run, reply);
      const message: ChildMessage =
        reply.type === 'result'
          ? { k: MSG.RESULT, value: reply.result }
          : { k: MSG.ERROR, error: { name: 'Error', message: 'handler threw' }, retryable: reply.retryable };
      answer = `${JSON.stringify(message)}\n`;
    } else if (this.config.kind === 'command' && run && exit.code !== null && !exit.memory) {
      if (exit.code === 0) {
        const result = { task: run.taskId, attempt: run.attempt, by: p.workerId };
        this.#record(run, { type: 'result', result });
        answer = JSON.stringify(result);
      } else {
        this.#record(run, { type: 'failed', retryable: exit.code !== EXIT_NON_RETRYABLE });
      }
    } else if (run) {
      run.diedDuring = exit;
    }
    p.phase = 'exited';
    p.exit = exit;
    p.stopped = true;
    p.host!.send(exitedFrame(p.hostId, exit, answer));
  }

  #reply(p: FakeProc, run: Run, reply: NonNullable<Run['reply']>, message: string): void {
    this.#record(run, reply);
    if (reply.type === 'result') p.sendBack({ type: 'proc.result', result: reply.result });
    else p.sendBack({ type: 'proc.failed', error: { name: 'Error', message }, retryable: reply.retryable });
  }

  #record(run: Run, reply: NonNullable<Run['reply']>): void {
    run.reply = reply;
    run.repliedAt = this.clock.now();
  }

  /**
   * The spawn host died (SpawnHost's 'exit' handler): a process it had not started yet fails to
   * spawn, one it had started "exits" with no status (its group is killed by the registry).
   */
  #hostDies(): void {
    const host = this.hosts.find((h) => !h.gone);
    if (!host) return;
    for (const p of this.procs.filter((q) => q.live && q.host === host)) {
      if (p.phase === 'starting' && p.firstSignalAt === null) p.spawnFailedAt ??= this.clock.now();
      const run = p.running;
      if (run) run.diedDuring = { code: null, signal: null };
      p.phase = 'exited';
      p.exit = { code: null, signal: null };
      p.stopped = true;
    }
    host.die(null, 'SIGKILL');
  }

  /** The process ends; a command that ran its task answers with its exit status, in the same event. */
  #exitProcess(p: FakeProc, exit: ProcessExit): void {
    if (p.host) return this.#exitHosted(p, exit);
    const run = p.running;
    let answer: ProcessAnswer | undefined;
    if (this.config.kind === 'command' && run && exit.code !== null && !exit.memory) {
      if (exit.code === 0) {
        const result = { task: run.taskId, attempt: run.attempt, by: p.workerId };
        this.#record(run, { type: 'result', result });
        answer = { status: 'resolved', result };
      } else {
        const retryable = exit.code !== EXIT_NON_RETRYABLE;
        this.#record(run, { type: 'failed', retryable });
        answer = { status: 'failed', error: { name: 'Error', message: `command exited with code ${exit.code}` }, retryable };
      }
    } else if (run) {
      run.diedDuring = exit;
    }
    p.phase = 'exited';
    p.pendingExit = null;
    p.exit = exit;
    p.sendBack({ type: 'proc.exit', ...exit, memory: exit.memory ?? false, ...(answer ? { answer } : {}) });
  }

  #spawnFail(i: number, how: 'enoent' | 'load'): void {
    if (this.hosted) return this.#spawnFailHosted(i, how);
    if (how === 'load' && this.config.kind === 'module') {
      // The handler module threw while loading: a load error, then exit 78.
      const loading = this.procs.filter((p) => p.live && p.phase === 'loading' && !p.pendingExit && !p.term && !p.kill);
      if (loading.length === 0) return;
      const p = loading[i % loading.length];
      p.sendBack({ type: 'proc.spawnError', error: { name: 'Error', message: 'handler failed to load' } });
      p.pendingExit = { code: EXIT_LOAD_FAILED, signal: null };
      return;
    }
    const starting = this.procs.filter((p) => p.live && p.phase === 'starting');
    if (starting.length === 0) return;
    const p = starting[i % starting.length];
    // The driver on an 'error' before 'spawn' (ENOENT): spawnError, then an exit with no status.
    p.sendBack({ type: 'proc.spawnError', error: { message: 'spawn ENOENT', code: 'ENOENT' } });
    p.phase = 'exited';
    p.exit = { code: null, signal: null };
    p.sendBack({ type: 'proc.exit', code: null, signal: null });
  }

  /**
   * A hosted process fails to start: its exec fails (`F`), or, for a module, its handler fails
   * to load once it is up (it writes `load-error` to fd 3 and exits 78: an attempt that fails as
   * `spawn`, or, for a spare that had no task yet, a death while idle).
   */
  #spawnFailHosted(i: number, how: 'enoent' | 'load'): void {
    if (how === 'load') {
      if (this.config.kind !== 'module') return;
      const up = this.procs.filter((p) => p.live && p.phase === 'up' && !p.term && !p.kill && !p.runs.some((r) => r.reply));
      if (up.length === 0) return;
      const p = up[i % up.length];
      p.loadFailed = true;
      p.loadFailedRunning = p.running !== null && p.firstSignalAt === null;
      const message: ChildMessage = { k: MSG.LOAD_ERROR, error: { name: 'Error', message: 'handler failed to load' } };
      this.#exitHosted(p, { code: EXIT_LOAD_FAILED, signal: null }, undefined, `${JSON.stringify(message)}\n`);
      return;
    }
    const starting = this.procs.filter((p) => p.live && p.phase === 'starting');
    if (starting.length === 0) return;
    const p = starting[i % starting.length];
    if (p.firstSignalAt === null) p.spawnFailedAt ??= this.clock.now();
    p.phase = 'exited';
    p.exit = { code: null, signal: null };
    p.stopped = true;
    p.host!.send(frame(`${HOST.FAILED} ${p.hostId}`, 'ENOENT\0exec\0No such file or directory'));
  }

  // -------------------------------------------------------------------------------------------
  // Time

  /**
   * What happens within a tick of the event loop, before any timer can fire: a forked process
   * gets its 'spawn' event (or its error), and a SIGKILLed process exits.
   */
  #catchUp(): void {
    for (let round = 0; round < 100; round++) {
      const due = this.procs.filter((p) => p.live && (p.phase === 'starting' || (p.kill && p.spawned)));
      if (due.length === 0) return;
      for (const p of due) this.#step(p);
    }
    this.violate('processes keep starting and dying within one tick');
  }

  #timers(): { start: number; timeout: number }[] {
    const clock = this.clock as unknown as { timeouts: Map<number, { start: number; timeout: number }> };
    return [...clock.timeouts.values()];
  }

  #nextDue(): number | undefined {
    let next: number | undefined;
    for (const t of this.#timers()) next = Math.min(next ?? Infinity, t.start + t.timeout);
    return next;
  }

  #setTime(t: number): void {
    this.clock.set(Math.max(t, this.clock.now()));
    this.#catchUp();
  }

  /**
   * `SimulatedClock.increment` jumps to the end and fires every due timer there; this walks
   * from timer to timer so that each fires at its own time.
   */
  #advance(ms: number): void {
    this.#catchUp();
    const end = this.clock.now() + ms;
    for (let i = 0; i < 10_000; i++) {
      const next = this.#nextDue();
      if (next === undefined || next > end) break;
      this.#setTime(next);
    }
    this.#setTime(end);
  }

  // -------------------------------------------------------------------------------------------
  // Instruments

  #instrument(): void {
    const source = this.pool.source as MemorySource;
    const open = source.open.bind(source);
    source.open = (consumer: SourceConsumer, prefetch: number) =>
      open(
        {
          deliver: (delivery) => {
            if (this.#done) this.violate(`delivery ${delivery.id} after the pool stopped`);
            if (this.deliveries.has(delivery.id)) this.violate(`delivery id ${delivery.id} reused`);
            this.deliveries.set(delivery.id, { delivery, settles: [], releases: 0, run: null, void: false });
            const held = this.#held().length;
            if (held > this.config.concurrency) this.violate(`${held} unsettled deliveries > prefetch ${this.config.concurrency}`);
            consumer.deliver(delivery);
          },
          malformed: (rejected) => {
            this.violate(`${rejected.id} dead-lettered as malformed: ${rejected.message}`);
            consumer.malformed(rejected);
          },
          drained: () => consumer.drained(),
          lost: (reason) => {
            // Every delivery made before is void: the source delivers it again.
            for (const d of this.#held()) d.void = true;
            consumer.lost(reason);
          },
          restored: () => consumer.restored(),
        },
        prefetch,
      );
    const settle = source.settle.bind(source);
    source.settle = (delivery: Delivery, settlement: Settlement) => {
      const d = this.#settling(delivery, 'settled');
      d?.settles.push(settlement);
      this.#settledAttempts.set(`${delivery.task.id}#${delivery.attempt}`, { delivery, settlement });
      return settle(delivery, settlement);
    };
    const pause = source.pause.bind(source);
    source.pause = () => {
      this.#intakePaused = true;
      pause();
    };
    const resume = source.resume.bind(source);
    source.resume = () => {
      this.#intakePaused = false;
      resume();
    };
    const release = source.release.bind(source);
    source.release = (delivery: Delivery) => {
      const d = this.#settling(delivery, 'released');
      if (d) d.releases++;
      return release(delivery);
    };

    this.pool.on('attempt', (event) => this.#onAttempt(event));
    this.pool.on('outcome', (result) => this.#onOutcome(result));
    this.pool.on('worker:reaped', (report) => this.#onReaped(report));
    this.pool.on('breaker:tripped', ({ cooldownMs }) => {
      this.#trips++;
      this.#announced.push(cooldownMs);
    });
  }

  /** Deliveries the pool holds: delivered, not settled, released or void. */
  #held(): DeliveryRecord[] {
    return [...this.deliveries.values()].filter((d) => !d.void && d.settles.length + d.releases === 0);
  }

  #settling(delivery: Delivery, what: string): DeliveryRecord | undefined {
    const d = this.deliveries.get(delivery.id);
    if (!d) {
      this.violate(`${what} ${delivery.id}, which was never delivered`);
      return undefined;
    }
    if (d.settles.length + d.releases > 0) {
      this.violate(`${delivery.id} ${what} again (settled ${d.settles.length}, released ${d.releases} before)`);
    }
    if (d.void) this.violate(`${delivery.id} ${what} though the source lost the connection it came on`);
    if (this.#done) this.violate(`${delivery.id} ${what} after the pool stopped`);
    if (what === 'settled' && (this.#state === 'stopping' || this.#state === 'stopped')) {
      this.violate(`${delivery.id} settled while ${this.#state}`);
    }
    return d;
  }

  #onAttempt(event: AttemptEvent): void {
    const task = this.tasks.get(event.taskId);
    const key = `${event.taskId}#${event.attempt}`;
    const last = this.#settledAttempts.get(key) ?? null;
    this.#settledAttempts.delete(key);
    if (!task) {
      this.violate(`attempt of unknown task ${event.taskId}`);
      return;
    }
    const where = `${event.taskId} attempt ${event.attempt}`;
    if (task.attempts.some((a) => a.attempt === event.attempt)) this.violate(`a second outcome for ${where}`);
    const previous = task.attempts.at(-1);
    if (event.attempt !== (previous ? previous.attempt + 1 : 1)) {
      this.violate(`${where} follows attempt ${previous?.attempt ?? 'none'}`);
    }
    if (previous && previous.settlement.action !== 'retry') this.violate(`${where} after a final settlement`);
    if (task.outcomes.length > 0) this.violate(`${where} after the task's final outcome`);
    task.attempts.push(event);
    if (!last || last.delivery.task.id !== event.taskId || last.delivery.attempt !== event.attempt) {
      this.violate(`${where} was not settled with the source`);
      return;
    }
    // The settlement policy, restated: ack a result; dead-letter what may not be retried or
    // has used its attempts; else retry with the next attempt after a backoff with jitter.
    const { outcome, settlement } = event;
    const expected: Settlement['action'] =
      outcome.status === 'resolved'
        ? 'ack'
        : !outcome.retryable || event.attempt >= this.config.attempts
          ? 'dead-letter'
          : 'retry';
    if (settlement !== last.settlement) this.violate(`${where}: the attempt event and the source got different settlements`);
    if (settlement.action !== expected) this.violate(`${where}: ${JSON.stringify(outcome)} settled ${JSON.stringify(settlement)}, expected ${expected}`);
    if (settlement.action === 'retry') {
      const ceiling = Math.min(this.t.retryMaxDelay, this.t.retryDelay * 2 ** (event.attempt - 1));
      if (settlement.delay < ceiling / 2 || settlement.delay > ceiling) {
        this.violate(`${where}: retry in ${settlement.delay} ms, outside [${ceiling / 2}, ${ceiling}]`);
      }
      if (settlement.attempt !== event.attempt + 1) this.violate(`${where}: retried as attempt ${settlement.attempt}`);
    }
    // Only a handler's own error may say "not retryable".
    if (outcome.status === 'failed' && outcome.kind !== 'error' && !outcome.retryable) {
      this.violate(`${where}: a ${outcome.kind} outcome marked not retryable`);
    }
    this.#checkOutcome(where, last.delivery, event.outcome);
  }

  /** The outcome is what the process did with the delivery. */
  #checkOutcome(where: string, delivery: Delivery, outcome: Outcome): void {
    const ran = this.deliveries.get(delivery.id)?.run ?? null;
    const run = ran?.run;
    const now = this.clock.now();
    const bad = (why: string) => this.violate(`${where}: outcome ${JSON.stringify(outcome)} but ${why}`);
    if (outcome.status === 'resolved') {
      if (run?.reply?.type !== 'result') bad('the process sent no result');
      else if (!isDeepStrictEqual(run.reply.result, outcome.result)) bad(`the process sent ${JSON.stringify(run.reply.result)}`);
      return;
    }
    switch (outcome.kind) {
      case 'error':
        if (run?.reply?.type !== 'failed') bad('the process reported no failure');
        else if (run.reply.retryable !== outcome.retryable) bad(`the process said retryable=${run.reply.retryable}`);
        return;
      case 'timeout':
        if (!run) bad('no process ran it');
        else if (now - run.at < this.t.timeout) bad(`it ran for ${now - run.at} ms only`);
        return;
      case 'crash':
        if (!run?.diedDuring || run.diedDuring.memory) bad(`its process did not die during it (${JSON.stringify(run?.diedDuring)})`);
        return;
      case 'memory':
        if (!run?.diedDuring?.memory) bad('its process did not exceed its memory');
        return;
      case 'spawn':
        // A hosted process is given its task with its spawn, before it has started (NaN); a
        // hosted module worker takes its task before its handler has loaded.
        if (run && !Number.isNaN(run.at) && !ran!.proc.loadFailedRunning) bad(`${ran!.proc.workerId} ran it`);
        return;
      case 'malformed':
        bad('tasks here are well formed');
        return;
    }
  }

  #onOutcome(result: TaskResult): void {
    const task = this.tasks.get(result.id);
    if (!task) {
      this.violate(`final outcome of unknown task ${result.id}`);
      return;
    }
    if (task.outcomes.length > 0) this.violate(`a second final outcome for ${result.id}`);
    task.outcomes.push(result);
    const last = task.attempts.at(-1);
    if (!last) {
      this.violate(`final outcome of ${result.id} without an attempt`);
      return;
    }
    if (last.settlement.action === 'retry') this.violate(`final outcome of ${result.id} after a retry settlement`);
    if (result.attempts !== last.attempt) this.violate(`final outcome of ${result.id} says ${result.attempts} attempts, saw ${last.attempt}`);
    if (result.status !== last.outcome.status) this.violate(`final outcome of ${result.id} is ${result.status}, last attempt ${last.outcome.status}`);
  }

  #onReaped(report: WorkerReport): void {
    const reports = this.reaped.get(report.workerId) ?? [];
    reports.push(report);
    this.reaped.set(report.workerId, reports);
    if (reports.length > 1) this.violate(`${report.workerId} reaped ${reports.length} times`);
    const p = this.procs.find((q) => q.workerId === report.workerId);
    if (!p) {
      this.violate(`${report.workerId} reaped without a process`);
      return;
    }
    if (!p.exit) this.violate(`${report.workerId} reaped while its process is ${p.phase}`);
    else if (report.exitCode !== p.exit.code || report.signal !== p.exit.signal) {
      this.violate(`${report.workerId} reaped with exit ${report.exitCode}/${report.signal}, the process exited ${p.exit.code}/${p.exit.signal}`);
    }
    if (report.pid !== p.pid) this.violate(`${report.workerId} reaped with pid ${report.pid}, the process had ${p.pid}`);
    if (p.threw) {
      // Its machine ended in error: the pool counts that as a crash (see #breaker).
      if (p.reports.length > 0) this.violate(`${report.workerId} reported ${p.reports.length} outcomes though its slot threw`);
      return;
    }
    // A worker whose process failed to start, or was not ready within spawnTimeout, reports
    // one `spawn` failure (a spare too: the breaker must see spares that cannot start).
    const deadline = p.startedAt + this.t.spawnTimeout;
    const ends = [p.readyAt, p.firstSignalAt, p.spawnFailedAt].filter((t): t is number => t !== null);
    const end = Math.min(...ends, Infinity);
    const ambiguous = end === deadline;
    // A hosted module worker whose handler failed to load while it held its task says so too.
    const expected = p.loadFailedRunning || (!ambiguous && (end > deadline || (p.spawnFailedAt !== null && p.spawnFailedAt === end)));
    const spawnReports = p.reports.filter((o) => o.status === 'failed' && o.kind === 'spawn').length;
    if ((!ambiguous || p.loadFailedRunning) && spawnReports !== (expected ? 1 : 0)) {
      this.violate(
        `${report.workerId} reported ${spawnReports} spawn failures, expected ${expected ? 1 : 0} (started ${p.startedAt}, ready ${p.readyAt}, failed ${p.spawnFailedAt}, signalled ${p.firstSignalAt})`,
      );
    }
    if (p.reports.length > Math.max(1, p.runs.length)) this.violate(`${report.workerId} reported ${p.reports.length} outcomes for ${p.runs.length} tasks`);
    // A worker dies while idle at most once, and only as a crash (or over its memory cap).
    if (p.idleDeaths.length > 1) this.violate(`${report.workerId} reported ${p.idleDeaths.length} idle deaths`);
    for (const o of p.idleDeaths) if (o.status !== 'failed' || !isCrash(o)) this.violate(`${report.workerId} reported an idle death that is not a crash`);
  }

  // -------------------------------------------------------------------------------------------
  // The root machine, event by event (inspection): bounds and the crash breaker

  #inspect(event: InspectionEvent): void {
    // A worker's process actor starting: a hosted one writes its spawn frame now.
    if (event.type === '@xstate.event' && event.event.type === 'xstate.init' && (event.actorRef as AnyActorRef).id === 'process') {
      this.#startingWorker = (event.sourceRef as AnyActorRef | undefined)?.id ?? null;
      return;
    }
    // Workers are actors of their own: roots of their own systems, not the pool machine.
    if (this.workerActors.observe(event)) return;
    if (event.type !== '@xstate.snapshot' || event.actorRef.sessionId !== event.rootId) return;
    const snapshot = event.snapshot as unknown as RootSnapshot;
    const prev = this.#state;
    const next = typeof snapshot.value === 'string' ? snapshot.value : JSON.stringify(snapshot.value);
    this.#state = next;
    if (snapshot.status === 'error') this.violate(`the pool machine failed on ${event.event.type}`);
    if (snapshot.status === 'done') this.#done = true;
    const actors = this.workerActors.live.size;
    if (actors > this.config.concurrency) this.violate(`${actors} worker actors > concurrency ${this.config.concurrency}`);
    const { live, phases } = snapshot.context;
    if (live > this.config.concurrency) this.violate(`${live} live workers counted > concurrency ${this.config.concurrency}`);
    const total = phases.spawning + phases.ready + phases.running + phases.leaving;
    if (total !== live || Object.values(phases).some((n) => n < 0)) this.violate(`phase counts ${JSON.stringify(phases)} do not add up to live ${live}`);
    if (event.event.type === 'worker.outcome') {
      const { workerId, deliveryId, outcome } = event.event as unknown as { workerId: string; deliveryId: string | null; outcome: Outcome };
      const proc = this.procs.find((p) => p.workerId === workerId);
      const idleDeath = deliveryId === null && outcome.status === 'failed' && outcome.kind !== 'spawn';
      (idleDeath ? proc?.idleDeaths : proc?.reports)?.push(outcome);
    }
    this.#breaker(prev, next, event.event, snapshot.context.breaker);
  }

  #inWindow(inclusive: boolean): number {
    const now = this.clock.now();
    return this.#crashes.filter((t) => (inclusive ? t + this.t.crashWindow >= now : t + this.t.crashWindow > now)).length;
  }

  /**
   * The breaker: a crash-kind outcome (or a worker machine ending in error: its slot failed)
   * counted while running trips it when, with it, more than maxCrashes fall within
   * crashWindow; nothing else pauses a running pool but `pause`; only `resume` or the
   * cooldown of a breaker pause resumes it.
   */
  #breaker(prev: string, next: string, event: AnyEventObject, breaker: string): void {
    const now = this.clock.now();
    const { maxCrashes } = this.config;
    let tripped = false;
    const halfOpen = this.#breakerWas === 'half-open';
    // The quiet window since the breaker closed: past it the cooldown is back to its base (at
    // the very instant it ends, the pool's timer may or may not have fired: either is right).
    const quietEnds = this.#closedAt === null ? Infinity : this.#closedAt + this.t.crashWindow;
    if (now > quietEnds) {
      this.#cooldown = this.t.breakerCooldown;
      this.#closedAt = null;
    }
    const crashed =
      event.type === 'worker.outcome'
        ? prev !== 'stopping' && isCrash((event as unknown as { outcome: Outcome }).outcome)
        : event.type === 'worker.error';
    if (crashed && prev !== 'stopped') {
      // A crash expiring at this very instant may be counted or not: ties go either way.
      const strict = this.#inWindow(false);
      const loose = this.#inWindow(true);
      this.#crashes = this.#crashes.filter((t) => t + this.t.crashWindow >= now);
      this.#crashes.push(now);
      if (prev === 'running') {
        if (strict + 1 > maxCrashes && next !== 'paused') {
          this.violate(`the breaker did not trip: ${strict + 1} crashes within crashWindow > maxCrashes ${maxCrashes}`);
        }
        // A half-open breaker re-opens on its probe's crash, whatever the count.
        if (loose + 1 <= maxCrashes && next === 'paused' && !halfOpen) {
          this.violate(`the breaker tripped on ${loose + 1} crashes within crashWindow, maxCrashes ${maxCrashes}`);
        }
        if (next === 'paused') {
          tripped = true;
          this.#trippedAt = now;
          this.#tripEvents++;
          const grown = (base: number) => (halfOpen ? Math.min(base * 2, this.t.breakerMaxCooldown) : base);
          const expected = [grown(this.#cooldown), ...(now === quietEnds ? [grown(this.t.breakerCooldown)] : [])];
          this.#expectedCooldowns.push(expected);
          this.#cooldown = expected[0];
          this.#closedAt = null;
        }
      }
    }
    if (prev === 'running' && next === 'paused' && !tripped && event.type !== 'pause') {
      this.violate(`running → paused on ${event.type}`);
    }
    if (prev === 'paused' && next === 'running' && event.type !== 'resume') {
      if (this.#trippedAt === null) this.violate(`a user pause ended on ${event.type}`);
      else if (now < this.#trippedAt + this.#cooldown) {
        this.violate(`the breaker pause ended after ${now - this.#trippedAt} ms, before its cooldown ${this.#cooldown}`);
      }
    }
    if (event.type === 'pause' && next === 'paused') this.#trippedAt = null;
    if (next !== 'paused') this.#trippedAt = null;
    // The pool's cooldown after a trip: the model's (the pool's own, where a tie allows either).
    if (tripped) {
      const expected = this.#expectedCooldowns.at(-1)!;
      const { cooldown } = this.snapshot.context;
      if (!expected.includes(cooldown)) this.violate(`the breaker tripped with a cooldown of ${cooldown} ms, expected ${expected.join(' or ')}`);
      this.#cooldown = cooldown;
      this.#pauseCooldown = cooldown;
    }
    // Half-open, the pool hands out one delivery at most, the probe (workers given theirs
    // before the trip still run them): what leaves its backlog, or never enters it.
    const { backlog } = this.snapshot.context;
    if (breaker === 'half-open') {
      if (this.#breakerWas !== 'half-open') this.#probes.clear();
      // (A stop and a pause give the backlog back to the source, a lost connection drops it:
      // none lets anything run. Paused, nothing is dispatched.)
      if (event.type !== 'source.lost' && next === 'running') {
        const offered = [...this.#backlogWas, ...(event.type === 'delivery' ? [(event as unknown as { deliveryId: string }).deliveryId] : [])];
        for (const id of offered) if (!backlog.includes(id)) this.#probes.add(id);
      }
      if (this.#probes.size > 1) this.violate(`the half-open breaker let ${[...this.#probes].join(', ')} through: more than one probe`);
    }
    this.#backlogWas = backlog;
    if (breaker === 'closed' && this.#breakerWas !== 'closed') this.#closedAt = now;
    this.#breakerWas = breaker;
  }

  // -------------------------------------------------------------------------------------------
  // Invariants after every command

  /** Each timer did its job: nothing outlives its deadline. */
  #checkTimers(): void {
    const now = this.clock.now();
    for (const p of this.procs) {
      if (!p.live) continue;
      const run = p.running;
      if (run) {
        const d = this.deliveries.get(run.deliveryId)!;
        // Settled (a timeout is), or for a void delivery, whose outcome is dropped, signalled.
        const handled = d.settles.length + d.releases > 0 || (d.void && p.firstSignalAt !== null);
        if (!handled && now >= run.at + this.t.timeout) {
          this.violate(`${p.workerId} still runs ${run.deliveryId} ${now - run.at} ms after it started (taskTimeout ${this.t.timeout})`);
        }
      }
      if (p.readyAt === null && p.firstSignalAt === null && p.spawnFailedAt === null && now >= p.startedAt + this.t.spawnTimeout) {
        this.violate(`${p.workerId} still starting ${now - p.startedAt} ms after its spawn, not signalled (spawnTimeout ${this.t.spawnTimeout})`);
      }
      if (p.firstSignalAt !== null && p.killAt === null && now >= p.firstSignalAt + this.t.killGrace) {
        this.violate(`${p.workerId} signalled at ${p.firstSignalAt}, still alive and not SIGKILLed (killGrace ${this.t.killGrace})`);
      }
      const last = p.runs.at(-1);
      // A process told its task was its last exits by itself; else it is signalled after killGrace.
      if (!run && last?.repliedAt != null && last.last && p.firstSignalAt === null && now >= last.repliedAt + this.t.killGrace) {
        this.violate(`${p.workerId} served its last task at ${last.repliedAt}, still alive and not signalled (killGrace ${this.t.killGrace})`);
      }
      if (!run && last?.repliedAt != null && !last.last && p.firstSignalAt === null && now >= last.repliedAt + this.t.idleTimeout) {
        this.violate(`${p.workerId} idle since ${last.repliedAt}, not retired (idleTimeout ${this.t.idleTimeout})`);
      }
    }
  }

  /** The pool's workers as their own machines have them (the live worker actors' snapshots). */
  #workerViews(): WorkerView[] {
    return [...this.workerActors.live]
      .map(([id, child]) => {
        const snap = child.getSnapshot() as { value: unknown; status: string; context: WorkerContext };
        const value = typeof snap.value === 'string' ? snap.value : Object.keys(snap.value as object)[0];
        return { id, state: value, status: snap.status, reported: snap.context.reported, deliveryId: snap.context.deliveryId };
      });
  }

  /**
   * Once quiescent (every command ends so), the pool's ids and counts are what its children
   * report: `live` is their number, each phase count the number that last reported it, the
   * idle lists name exactly the idle ones, and each assignment not yet acknowledged is held by
   * the worker it names.
   */
  #checkCounts(ctx: PoolContext, workers: WorkerView[]): void {
    const bad = (what: string) => this.violate(`${what}; children ${JSON.stringify(workers)}`);
    if (ctx.live !== workers.length) bad(`live ${ctx.live} != ${workers.length} worker actors`);
    for (const phase of ['spawning', 'ready', 'running', 'leaving'] as const) {
      const n = workers.filter((w) => w.reported === phase).length;
      if (ctx.phases[phase] !== n) bad(`phases.${phase} ${ctx.phases[phase]} != ${n} children that reported it`);
    }
    const sameSet = (a: string[], b: string[]) => a.length === b.length && new Set(a).size === a.length && a.every((id) => b.includes(id));
    const ids = (ws: WorkerView[]) => ws.map((w) => w.id);
    const inStopping = this.#state === 'stopping';
    const ready = ids(workers.filter((w) => w.reported === 'ready' && w.state === 'ready'));
    const warming = ids(workers.filter((w) => w.reported === 'spawning' && w.deliveryId === null && w.state === 'spawning'));
    // Draining retires idle workers; stopping kills them: neither keeps any in its lists.
    if (!sameSet(ctx.ready, inStopping ? [] : ready)) bad(`ready ${JSON.stringify(ctx.ready)}, idle children ready ${JSON.stringify(ready)}`);
    if (!sameSet(ctx.warming, inStopping ? [] : warming)) bad(`warming ${JSON.stringify(ctx.warming)}, spares spawning without a task ${JSON.stringify(warming)}`);
    for (const a of ctx.assigned) {
      const w = workers.find((x) => x.id === a.workerId);
      if (!w || w.deliveryId !== a.deliveryId) bad(`${a.deliveryId} assigned to ${a.workerId}, which does not hold it`);
    }
  }

  check(): void {
    const { concurrency, spares } = this.config;
    this.#checkTimers();
    const alive = this.procs.filter((p) => !p.stopped).length;
    if (alive > concurrency) this.violate(`${alive} processes alive > concurrency ${concurrency}`);
    if (this.#trips !== this.#tripEvents) this.violate(`breaker:tripped emitted ${this.#trips} times, tripped ${this.#tripEvents} times`);
    this.#announced.forEach((cooldown, i) => {
      const expected = this.#expectedCooldowns[i];
      if (expected && !expected.includes(cooldown)) this.violate(`breaker:tripped #${i + 1} announced ${cooldown} ms, expected ${expected.join(' or ')}`);
    });
    for (const task of this.tasks.values()) {
      if (task.outcomes.length > 1) this.violate(`${task.id} has ${task.outcomes.length} final outcomes`);
    }
    const snapshot = this.snapshot;
    if (snapshot.status === 'active') {
      const ctx = snapshot.context;
      const workers = this.#workerViews();
      if (workers.length > concurrency) this.violate(`${workers.length} worker actors > concurrency`);
      this.#checkCounts(ctx, workers);
      const state = this.#state;
      if (state === 'running' || state === 'paused' || state === 'draining') {
        const expected = this.#inWindow(false);
        if (ctx.crashes !== expected) this.violate(`the pool counts ${ctx.crashes} crashes within crashWindow, saw ${expected}`);
      }
      if (state === 'paused' && this.#trippedAt !== null && this.clock.now() >= this.#trippedAt + this.#pauseCooldown) {
        this.violate(`the breaker pause outlived its cooldown ${this.#pauseCooldown} (tripped at ${this.#trippedAt})`);
      }

      if (state === 'running' || state === 'paused' || state === 'draining') {
        // Every delivery the pool holds unsettled is in its backlog or held by one worker (as
        // the worker's own machine has it), once; a void one may still be held by its worker.
        const places = [...ctx.backlog, ...workers.flatMap((w) => (w.deliveryId === null ? [] : [w.deliveryId]))];
        const held = this.#held().map((d) => d.delivery.id);
        for (const id of held) {
          const n = places.filter((x) => x === id).length;
          if (n !== 1) this.violate(`delivery ${id} is held unsettled but is ${n === 0 ? 'neither in the backlog nor held by a worker' : `in ${n} places`}: backlog ${JSON.stringify(ctx.backlog)}, workers ${JSON.stringify(workers)}`);
        }
        for (const id of places) {
          const d = this.deliveries.get(id);
          if (!held.includes(id) && !(d?.void && !ctx.backlog.includes(id))) this.violate(`the pool holds ${id}, which is settled, void or unknown`);
        }
      }
      // The pool pauses intake while paused (by the user or the breaker), and only then.
      if ((state === 'paused') !== this.#intakePaused && (state === 'running' || state === 'paused' || state === 'draining')) {
        this.violate(`the pool is ${state} with intake ${this.#intakePaused ? 'paused' : 'open'}`);
      }
      // Idle workers, as their machines have them: waiting for a task (a spare spawning, or ready).
      const idle = workers.filter((w) => w.deliveryId === null && (w.reported === 'ready' || w.reported === 'spawning'));
      if (state === 'running' || state === 'paused') {
        // A warm spare that started fine is not terminated while the pool runs (nor churned).
        for (const p of this.procs) {
          if (p.firstSignalCmd !== this.log.length || p.runs.length > 0 || p.spawnFailedAt !== null) continue;
          if (p.readyAt !== null && p.readyAt < p.startedAt + this.t.spawnTimeout) {
            this.violate(`${p.workerId}, a warm spare ready at ${p.readyAt}, was signalled at ${p.firstSignalAt} while the pool is ${state}`);
          }
        }
        // Warm spares: idle workers that never ran a task.
        const fresh = idle.filter((w) => !this.procs.find((p) => p.workerId === w.id)?.runs.length).length;
        if (fresh > spares) this.violate(`${fresh} idle spares > spares ${spares}`);
      }
      // Half-open, the backlog waits and no spare is kept: only the probe runs.
      if (state === 'running' && ctx.breaker !== 'half-open') {
        const live = workers.length;
        if (ctx.backlog.length > 0 && (idle.length > 0 || live < concurrency)) {
          this.violate(`${ctx.backlog.length} deliveries wait while ${idle.length} workers idle, ${live}/${concurrency} live`);
        }
        if (idle.length < spares && live < concurrency) this.violate(`${idle.length} idle workers < spares ${spares} with ${live}/${concurrency} live`);
      }
    }
    this.#throwViolations();
  }

  #throwViolations(): void {
    if (this.violations.length === 0) return;
    throw new ModelViolation(
      `${this.violations.join('\n')}\nconfig: ${JSON.stringify(this.config)}\ncommands: ${JSON.stringify(this.log)}`,
    );
  }

  // -------------------------------------------------------------------------------------------
  // The end of a run: drain (unless stopped), let every process and timer run out, check

  async finish(): Promise<void> {
    if (this.snapshot.status === 'active' && !this.#stopAsked) {
      this.#drainP ??= this.#settled(this.pool.drain());
      // drain() sends its event to the machine after a microtask (it first awaits a start
      // still checking the handler).
      await flush();
    }
    for (let i = 0; i < 5_000 && !this.#done; i++) {
      let acted = false;
      for (const p of this.procs.filter((q) => q.live)) acted = this.#step(p) || acted;
      if (acted) continue;
      const next = this.#nextDue();
      if (next === undefined) break;
      this.#setTime(next);
    }
    await flush();
    if (!this.#done) {
      const { live, phases, backlog, assigned } = this.snapshot.context;
      this.violate(
        `the pool never stopped: ${this.#state}, live ${live} ${JSON.stringify(phases)}, workers ${JSON.stringify(this.#workerViews())}, ` +
          `assigned ${JSON.stringify(assigned)}, backlog ${JSON.stringify(backlog)}, source ${JSON.stringify((this.pool.source as MemorySource).size)}, ` +
          `processes ${JSON.stringify(this.procs.filter((p) => !p.stopped).map((p) => ({ id: p.workerId, phase: p.phase, term: p.term, running: !!p.running, pending: p.pendingExit, commands: p.commands.map((c) => c.type), sent: p.sent.map((e) => e.type) })))}`,
      );
      this.#unhookSpawn();
      this.#throwViolations();
    }
    await Promise.all([this.#drainP, this.#stopP]);
    await flush();
    this.#unhookSpawn();
    this.#finalChecks();
    this.#throwViolations();
  }

  /** Give up on a run that failed before its end: the spawn of hosts is no longer routed here. */
  dispose(): void {
    this.#unhookSpawn();
  }

  /** What this run went through, for coverage statistics. */
  labels(): string[] {
    const labels = new Set<string>();
    labels.add(`kind:${this.config.kind}${this.config.kind === 'module' ? (this.hosted ? ' (single use, hosted)' : ' (reused, at the slot)') : ' (hosted)'}`);
    if (this.hosts.length > 1) labels.add('spawn host restarted');
    if (this.#losses > 0) labels.add('source lost its connection');
    if ([...this.deliveries.values()].some((d) => d.void && d.run)) labels.add('void delivery ran');
    if (this.procs.some((p) => p.threw)) labels.add('slot threw');
    if (this.procs.some((p) => p.loadFailed)) labels.add(this.procs.some((p) => p.loadFailedRunning) ? 'load failed with a task' : 'load failed idle');
    if (this.#stopAsked) labels.add('stopped');
    else labels.add('drained');
    if (this.#tripEvents > 0) labels.add('breaker tripped');
    if (this.#tripEvents > 1) labels.add('breaker tripped twice');
    for (const task of this.tasks.values()) {
      for (const a of task.attempts) {
        labels.add(`outcome:${a.outcome.status === 'resolved' ? 'resolved' : a.outcome.kind}`);
        labels.add(`settlement:${a.settlement.action}`);
      }
      if (task.state === 'rejected') labels.add(`rejected:${task.error instanceof TidepoolError ? task.error.code : 'other'}`);
    }
    for (const d of this.deliveries.values()) if (d.releases > 0) labels.add('released');
    for (const p of this.procs) {
      if (p.runs.length > 1) labels.add('reused worker');
      if (p.runs.length === 0 && p.pid !== null) labels.add('spare started');
      if (p.runs.length > 0 && p.runs[0].at > p.startedAt && this.config.spares > 0) labels.add('task on a spare');
      if (p.earlySignals > 0) labels.add('signal before spawn');
      if (p.commands.some((c) => c.type === 'proc.kill')) labels.add('SIGKILL');
      if (p.commands.some((c) => c.type === 'proc.terminate')) labels.add('SIGTERM');
      if (p.exit?.memory) labels.add('memory exit');
    }
    if (this.procs.length >= this.config.concurrency && this.config.concurrency > 1) labels.add('full pool');
    if (this.config.maxTasksPerWorker > 1) labels.add('reusable config');
    labels.add(`commands:${this.log.length < 10 ? '<10' : this.log.length < 30 ? '10-29' : '30+'}`);
    const tasks = [...this.tasks.values()];
    if (this.#stopAsked && tasks.some((t) => t.state === 'resolved') && tasks.some((t) => t.state === 'rejected')) labels.add('stopped with work in flight');
    return [...labels];
  }

  #finalChecks(): void {
    const snapshot = this.snapshot;
    if (snapshot.status !== 'done' || this.#state !== 'stopped') this.violate(`the pool ended ${snapshot.status} in ${this.#state}`);
    const children = Object.keys(snapshot.children);
    if (children.length > 0) this.violate(`children left after the pool stopped: ${children.join(', ')}`);
    const workers = [...this.workerActors.live.keys()];
    if (workers.length > 0) this.violate(`worker actors still running after the pool stopped: ${workers.join(', ')}`);
    if (this.workerActors.started === 0 && this.procs.length > 0) this.violate(`${this.procs.length} processes started, no worker actor seen`);
    // Nothing may keep the process alive (or fire into the stopped pool) afterwards.
    const timers = this.#timers();
    if (timers.length > 0) {
      this.violate(`${timers.length} timers left on the clock after the pool stopped, due at ${timers.map((t) => t.start + t.timeout).join(', ')}`);
    }
    for (const host of this.hosts) if (!host.gone) this.violate(`spawn host ${host.pid} still running after the pool stopped`);
    for (const p of this.procs) {
      if (!p.stopped) this.violate(`${p.workerId}'s process ${p.host ? 'still held by the spawn host' : 'actor still running'} after the pool stopped`);
      const reports = this.reaped.get(p.workerId)?.length ?? 0;
      if (reports !== 1) this.violate(`${p.workerId} reaped ${reports} times`);
    }
    for (const [id, d] of this.deliveries) {
      const n = d.settles.length + d.releases;
      if (n !== (d.void ? 0 : 1)) this.violate(`${d.void ? 'void ' : ''}delivery ${id} (${d.delivery.task.id} attempt ${d.delivery.attempt}) settled ${d.settles.length} and released ${d.releases} times`);
    }
    let failed = 0;
    for (const task of this.tasks.values()) {
      if (task.state === 'pending') this.violate(`run(${task.id}) never settled`);
      if (task.state === 'resolved') {
        if (task.outcomes.length !== 1 || task.outcomes[0] !== task.result) {
          this.violate(`${task.id} resolved with ${task.outcomes.length} final outcome events`);
        }
        if (task.result?.status === 'failed') failed++;
      }
      if (task.state === 'rejected') {
        const code = task.error instanceof TidepoolError ? task.error.code : String(task.error);
        const delivered = [...this.deliveries.values()].some((d) => d.delivery.task.id === task.id);
        if (task.outcomes.length > 0) this.violate(`${task.id} rejected (${code}) after its final outcome`);
        if (code === 'TIDEPOOL_ERR_POOL_STATE') {
          if (delivered) this.violate(`${task.id} rejected as not accepted, yet delivered`);
        } else if (code !== 'TIDEPOOL_ERR_POOL_STOPPED' || !this.#stopAsked) {
          this.violate(`${task.id} rejected with ${code}${this.#stopAsked ? '' : ' though the pool was drained, not stopped'}`);
        }
      }
    }
    if (!this.#stopAsked) {
      const source = this.pool.source as MemorySource;
      const size = source.size;
      if (size.ready + size.delayed + size.unsettled > 0) this.violate(`the queue still holds ${JSON.stringify(size)} after drain`);
      if (source.deadLetters.length + source.deadLettersDropped !== failed) {
        this.violate(`${source.deadLetters.length} dead letters for ${failed} failed tasks`);
      }
    }
    if (this.#settledAttempts.size > 0) {
      this.violate(`settlements without an attempt event: ${[...this.#settledAttempts.keys()].join(', ')}`);
    }
  }
}

/** Route no spawn to a model any more (after each test: a test may leave a model unfinished). */
export function unhookSpawnHosts(): void {
  hooks[FAKE_SPAWN_HOST] = undefined;
}

/** Replay a command sequence (a regression case, or a counterexample fast-check printed). */
export async function replay(config: ModelConfig, cmds: Cmd[]): Promise<PoolModel> {
  const model = await PoolModel.create(config);
  try {
    for (const cmd of cmds) await model.apply(cmd);
    await model.finish();
  } finally {
    model.dispose();
  }
  return model;
}

