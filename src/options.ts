import { availableParallelism } from 'node:os';
import { accessSync, constants, statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import type { Logger } from 'pino';
import * as v from 'valibot';
import { DELAY_DEFAULTS } from '../machines/defaults.js';
import { OptionError } from './errors.js';
import type { Source } from './sources/source.js';

/**
 * Every pool option, validated in one place. The CLI flags are these names in kebab-case
 * (`maxTasksPerWorker` → `--max-tasks-per-worker`).
 */

/** The largest whole number an option takes: a time beyond it would overflow a Node timer. */
export const MAX_WHOLE = 2 ** 31 - 1;

const integer = (min: 0 | 1, max: number = MAX_WHOLE) => {
  const message = min === 1 ? 'must be a positive integer' : 'must be a non-negative integer';
  return v.pipe(v.number(message), v.integer(message), v.minValue(min, message), v.maxValue(max, `must be at most ${max}`));
};
const positiveInt = integer(1);
const nonNegativeInt = integer(0);
/** A user or group id (Linux ids are 32-bit; -1 is "unchanged" and refused). */
const id = integer(0, 2 ** 32 - 2);

/** The OS takes arguments, environment entries and paths as C strings: a NUL would cut them. */
const noNul = v.check((x: string) => !x.includes('\0'), 'must not contain a NUL character');
const path = v.pipe(v.string('must be a path'), v.minLength(1, 'must be a path'), noNul);

const workerSchema = v.union(
  [
    v.strictObject({ module: path }),
    v.strictObject({
      command: v.pipe(
        v.array(v.pipe(v.string(), noNul), 'must be an array of strings without NUL characters'),
        v.minLength(1, 'must name an executable'),
      ),
    }),
  ],
  'must be { module: "path/to/handler.js" } or { command: ["executable", ...args] }',
);

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const envEntry = v.pipe(
  v.string('must hold strings'),
  v.regex(/^[A-Za-z_][A-Za-z0-9_]*(=|$)/, 'must hold NAME or NAME=VALUE'),
  noNul,
);

// valibot, not a bigger schema library: the CLI validates once per start, and the import is
// part of every `tidepool run` (zod cost ~100 ms of start-up here, valibot ~20 ms).
const schema = v.strictObject({
  worker: workerSchema,
  concurrency: v.optional(positiveInt),
  spares: v.optional(nonNegativeInt),
  timeout: v.optional(positiveInt),
  attempts: v.optional(positiveInt),
  retryDelay: v.optional(nonNegativeInt),
  retryMaxDelay: v.optional(nonNegativeInt),
  maxTasksPerWorker: v.optional(positiveInt),
  spawnTimeout: v.optional(positiveInt),
  killGrace: v.optional(positiveInt),
  idleTimeout: v.optional(positiveInt),
  maxCrashes: v.optional(nonNegativeInt),
  maxSpawning: v.optional(positiveInt),
  crashWindow: v.optional(positiveInt),
  breakerCooldown: v.optional(positiveInt),
  breakerMaxCooldown: v.optional(positiveInt),
  memoryLimit: v.optional(positiveInt),
  env: v.optional(v.array(envEntry, 'must be an array of NAME or NAME=VALUE strings')),
  cwd: v.optional(path),
  uid: v.optional(id),
  gid: v.optional(id),
  stateDir: v.optional(path),
  logLevel: v.optional(v.picklist(LOG_LEVELS, `must be one of ${LOG_LEVELS.join(', ')}`)),
  logger: v.optional(
    v.custom<Logger>((x) => typeof x === 'object' && x !== null && typeof (x as Logger).child === 'function', 'must be a pino logger'),
  ),
  inspect: v.optional(
    v.custom<unknown>((x) => typeof x === 'function' || (typeof x === 'object' && x !== null), 'must be an inspection observer'),
  ),
  stderr: v.optional(
    v.custom<{ write(chunk: Buffer): unknown }>(
      (x) => typeof x === 'object' && x !== null && typeof (x as { write?: unknown }).write === 'function',
      'must be a writable stream (an object with write(chunk))',
    ),
  ),
  source: v.optional(
    v.custom<Source>(
      (x) => typeof x === 'object' && x !== null && ['open', 'settle', 'release', 'close'].every((m) => typeof (x as Record<string, unknown>)[m] === 'function'),
      'must implement the Source interface (open, settle, release, close, ...)',
    ),
  ),
});

/** The options of `createPool`, as a user writes them. */
export interface PoolOptions {
  /**
   * The worker: a module (`{ module: './handler.js' }`, resolved from the current directory
   * when relative) or an executable (`{ command: ['python3', 'job.py'] }`); not both.
   */
  worker: { module: string; command?: never } | { command: string[]; module?: never };
  /** Most live worker processes at once. Default: the CPU count. */
  concurrency?: number;
  /** Warm workers kept ready for the next task (each still serves `maxTasksPerWorker`). Default 0. */
  spares?: number;
  /** Hard timeout of one attempt, in ms. Default 900000 (15 min, below RabbitMQ's consumer timeout). */
  timeout?: number;
  /** Attempts per task, the first included. Default 3. */
  attempts?: number;
  /** Base of the exponential retry backoff, in ms. Default 1000. */
  retryDelay?: number;
  /** Ceiling of the retry backoff, in ms. Default 60000. */
  retryMaxDelay?: number;
  /** Tasks a worker serves before it exits. Default 1 (a fresh process per task). */
  maxTasksPerWorker?: number;
  /** How long a worker may take to become ready, in ms. Default 10000. */
  spawnTimeout?: number;
  /** Between SIGTERM and SIGKILL, in ms. Default 5000. */
  killGrace?: number;
  /** A reused worker idle this long exits, in ms. Default 60000. */
  idleTimeout?: number;
  /**
   * Most workers starting at once; a burst of tasks is started in waves (PHP-FPM's
   * `pm.max_spawn_rate`), so none waits past `spawnTimeout` behind the others. Default 32.
   */
  maxSpawning?: number;
  /** The crash breaker trips on the crash after this many within `crashWindow`. Default 10. */
  maxCrashes?: number;
  /** The breaker's sliding window, in ms. Default 60000. */
  crashWindow?: number;
  /**
   * How long intake stays paused once the breaker trips, in ms; then one attempt is let
   * through as a probe (half-open). Default 5000.
   */
  breakerCooldown?: number;
  /**
   * Each probe that crashes re-opens the breaker with the cooldown doubled, up to this, in ms;
   * the cooldown returns to `breakerCooldown` after `crashWindow` without a trip. Default
   * 300000 (5 min). At least `breakerCooldown`.
   */
  breakerMaxCooldown?: number;
  /** Memory cap on each worker's whole process tree (resident set summed), in MiB. Default none. */
  memoryLimit?: number;
  /**
   * The workers' environment: `NAME` passes the manager's value through, `NAME=VALUE` sets it.
   * Always passed: PATH, HOME, LANG, TZ, TMPDIR, NODE_ENV, when set.
   */
  env?: string[];
  /** Working directory of the workers. */
  cwd?: string;
  uid?: number;
  gid?: number;
  /** Default `info`. Ignored when `logger` is given. */
  logLevel?: (typeof LOG_LEVELS)[number];
  /** A pino logger to log through (its child loggers carry workerId, pid, taskId). */
  logger?: Logger;
  /** An XState inspection observer for the root actor (see `createActor`'s `inspect`). */
  inspect?: unknown;
  /** Where tasks come from: any `Source`. Default: the embedded queue (`MemorySource`). */
  source?: Source;
  /** Where the workers' stderr goes, chunk by chunk (`{ write(chunk) }`). Default: the manager's stderr. */
  stderr?: { write(chunk: Buffer): unknown };
  /**
   * A directory for the ledger of live workers (docs/containment.md): the pool writes the pid
   * and start time of each worker there while it lives, and at `start()` kills what a manager
   * that died with its spawn host left running, then removes that manager's ledger. Several
   * managers may share it. Default: none, no ledger (the CLI has a default of its own).
   */
  stateDir?: string;
}

export type WorkerSpec = { kind: 'module'; path: string } | { kind: 'command'; argv: string[] };

export interface ResolvedOptions {
  worker: WorkerSpec;
  concurrency: number;
  spares: number;
  timeout: number;
  attempts: number;
  retryDelay: number;
  retryMaxDelay: number;
  maxTasksPerWorker: number;
  spawnTimeout: number;
  killGrace: number;
  idleTimeout: number;
  maxCrashes: number;
  maxSpawning: number;
  crashWindow: number;
  breakerCooldown: number;
  breakerMaxCooldown: number;
  memoryLimit: number | null;
  env: Record<string, string>;
  cwd: string | undefined;
  uid: number | undefined;
  gid: number | undefined;
  logLevel: (typeof LOG_LEVELS)[number];
  logger: Logger | undefined;
  inspect: unknown;
  /** The ledger's directory, absolute; undefined: no ledger. */
  stateDir: string | undefined;
}

/** The smallest memory cap, in MiB, a module worker (a Node process) can start under. */
export const MIN_MODULE_MEMORY = 64;

/** Variables every worker gets when the manager has them. */
export const BASE_ENV = ['PATH', 'HOME', 'LANG', 'TZ', 'TMPDIR', 'NODE_ENV'] as const;

/**
 * The default of every option that has one, in ms where it is a time (`concurrency` defaults
 * to the CPU count, `memoryLimit` to none). The CLI's usage text is generated from it.
 */
export const DEFAULTS = {
  spares: 0,
  timeout: DELAY_DEFAULTS.taskTimeout,
  attempts: 3,
  retryDelay: 1_000,
  retryMaxDelay: 60_000,
  maxTasksPerWorker: 1,
  spawnTimeout: DELAY_DEFAULTS.spawnTimeout,
  killGrace: DELAY_DEFAULTS.killGrace,
  idleTimeout: DELAY_DEFAULTS.idleTimeout,
  maxCrashes: 10,
  maxSpawning: 32,
  crashWindow: DELAY_DEFAULTS.crashWindow,
  breakerCooldown: DELAY_DEFAULTS.breakerCooldown,
  breakerMaxCooldown: DELAY_DEFAULTS.breakerMaxCooldown,
  logLevel: 'info',
} as const;

/** Validate `options`; throws an `OptionError` naming the first bad option. */
export function resolveOptions(options: PoolOptions, baseEnv: NodeJS.ProcessEnv = process.env): ResolvedOptions {
  if (typeof options !== 'object' || options === null) throw new OptionError('options', 'must be an object');
  const parsed = v.safeParse(schema, options);
  if (!parsed.success) {
    const issue = parsed.issues[0];
    const path = (issue.path ?? []).map((item) => String(item.key));
    const option = path.length > 0 ? path.join('.') : 'options';
    // An unknown key is reported at its own path by a strict object.
    const unknown = issue.type === 'strict_object' && path.length === 1;
    throw new OptionError(option, unknown ? 'is not an option' : issue.message, unknown ? undefined : { value: issue.input });
  }
  const o = parsed.output;
  const concurrency = o.concurrency ?? availableParallelism();
  const spares = o.spares ?? DEFAULTS.spares;
  if (spares > concurrency) throw new OptionError('spares', `must not exceed concurrency (${concurrency})`);
  const maxTasksPerWorker = o.maxTasksPerWorker ?? DEFAULTS.maxTasksPerWorker;
  const worker: WorkerSpec =
    'module' in o.worker
      ? { kind: 'module', path: isAbsolute(o.worker.module) ? o.worker.module : resolve(o.worker.module) }
      : { kind: 'command', argv: o.worker.command };
  // Checked once here rather than found out by every task failing to load.
  if (worker.kind === 'module' && !isFile(worker.path)) throw new OptionError('worker.module', `is not a file: ${worker.path}`);
  if (o.cwd !== undefined && !isDirectory(o.cwd)) throw new OptionError('cwd', `is not a directory: ${o.cwd}`);
  const stateDir = o.stateDir === undefined ? undefined : resolve(o.stateDir);
  if (stateDir !== undefined && !isDirectory(stateDir)) throw new OptionError('stateDir', `is not a directory: ${stateDir}`);
  if (stateDir !== undefined && !isWritable(stateDir)) throw new OptionError('stateDir', `is not writable: ${stateDir}`);
  // A ledger there names processes to kill: a directory another user owns or can write could
  // hold one naming this user's processes.
  if (stateDir !== undefined) {
    const why = unsafeDirectory(stateDir);
    if (why !== null) throw new OptionError('stateDir', `${why}: ${stateDir} (a ledger there names processes to kill; use a directory only you can write, mode 0700)`);
  }
  // A Node process needs about 40 MiB to start; below the floor every module worker would die
  // at start (V8's "Fatal javascript OOM", a SIGTRAP) and look like a crash.
  if (worker.kind === 'module' && o.memoryLimit !== undefined && o.memoryLimit < MIN_MODULE_MEMORY) {
    throw new OptionError('memoryLimit', `must be at least ${MIN_MODULE_MEMORY} (MiB) for a module worker: Node needs about 40 MiB to start`);
  }
  if (worker.kind === 'command' && maxTasksPerWorker > 1) {
    throw new OptionError('maxTasksPerWorker', 'must be 1 for a command worker (a command serves one task per process)');
  }
  const breakerCooldown = o.breakerCooldown ?? DEFAULTS.breakerCooldown;
  const breakerMaxCooldown = o.breakerMaxCooldown ?? Math.max(DEFAULTS.breakerMaxCooldown, breakerCooldown);
  if (breakerMaxCooldown < breakerCooldown) {
    throw new OptionError('breakerMaxCooldown', `must be at least breakerCooldown (${breakerCooldown})`);
  }
  const retryDelay = o.retryDelay ?? DEFAULTS.retryDelay;
  const retryMaxDelay = o.retryMaxDelay ?? Math.max(DEFAULTS.retryMaxDelay, retryDelay);
  if (retryMaxDelay < retryDelay) throw new OptionError('retryMaxDelay', `must be at least retryDelay (${retryDelay})`);

  return {
    worker,
    concurrency,
    spares,
    timeout: o.timeout ?? DEFAULTS.timeout,
    attempts: o.attempts ?? DEFAULTS.attempts,
    retryDelay,
    retryMaxDelay,
    maxTasksPerWorker,
    spawnTimeout: o.spawnTimeout ?? DEFAULTS.spawnTimeout,
    killGrace: o.killGrace ?? DEFAULTS.killGrace,
    idleTimeout: o.idleTimeout ?? DEFAULTS.idleTimeout,
    maxCrashes: o.maxCrashes ?? DEFAULTS.maxCrashes,
    maxSpawning: o.maxSpawning ?? DEFAULTS.maxSpawning,
    crashWindow: o.crashWindow ?? DEFAULTS.crashWindow,
    breakerCooldown,
    breakerMaxCooldown,
    memoryLimit: o.memoryLimit ?? null,
    // The child's own logger (ctx.log) follows the manager's level; a module worker started
    // for one task gives up loading its handler at the spawn timeout.
    env: {
      ...workerEnv(o.env ?? [], baseEnv),
      TIDEPOOL_LOG_LEVEL: o.logLevel ?? DEFAULTS.logLevel,
      TIDEPOOL_SPAWN_TIMEOUT: String(o.spawnTimeout ?? DEFAULTS.spawnTimeout),
    },
    cwd: o.cwd,
    uid: o.uid,
    gid: o.gid,
    logLevel: o.logLevel ?? DEFAULTS.logLevel,
    logger: o.logger,
    inspect: o.inspect,
    stateDir,
  };
}

/**
 * The workers' environment: an allowlist, not the manager's whole environment. Inheriting
 * everything leaks credentials and, here, NODE_EXTRA_CA_CERTS alone nearly triples Node's
 * start-up (it parses the CA bundle on every start).
 */
export function workerEnv(entries: readonly string[], from: NodeJS.ProcessEnv): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of BASE_ENV) if (from[name] !== undefined) env[name] = from[name]!;
  for (const entry of entries) {
    const eq = entry.indexOf('=');
    if (eq === -1) {
      if (from[entry] !== undefined) env[entry] = from[entry]!;
    } else {
      env[entry.slice(0, eq)] = entry.slice(eq + 1);
    }
  }
  return env;
}

/**
 * Why a state directory is unsafe, or null: it must belong to this user (root may use one of
 * its own) and no other user may write it (group and others without write permission; the
 * sticky /tmp itself is refused too: anyone can create a file there).
 */
export function unsafeDirectory(path: string): string | null {
  const stat = statSync(path);
  const uid = process.getuid?.();
  if (uid !== undefined && stat.uid !== uid) return `belongs to uid ${stat.uid}, not this user (${uid})`;
  if ((stat.mode & 0o022) !== 0) return 'can be written by other users';
  return null;
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function isWritable(path: string): boolean {
  try {
    accessSync(path, constants.W_OK | constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}
