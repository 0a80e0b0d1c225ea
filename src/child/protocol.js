// @ts-check
// The module worker protocol (MSG), and the limits and helpers the manager, the module worker
// and the spawn hosts share (the spawn host's frames are in host-protocol.js). Plain
// JavaScript so that the child entries run without a build step and load nothing but this
// file (and, for a module worker, the handler).

/**
 * Message kinds. Parent → child: `run`. Child → parent: `ready`, `result`, `error`,
 * `load-error`, and `progress` (a reused worker's `ctx.progress`, over its channel; a
 * single-use worker writes a progress line on stderr instead, as commands do).
 */
export const MSG = /** @type {const} */ ({
  RUN: 'run',
  READY: 'ready',
  RESULT: 'result',
  ERROR: 'error',
  LOAD_ERROR: 'load-error',
  PROGRESS: 'progress',
});

/**
 * Exit codes of the child entry.
 * - `OK`: served its task(s) and left.
 * - `LOAD_FAILED`: the handler module could not be loaded (EX_CONFIG).
 * - `TERMINATED`: left on SIGTERM (128 + 15).
 */
export const EXIT = /** @type {const} */ ({ OK: 0, LOAD_FAILED: 78, TERMINATED: 143 });

/** After a worker exits, how long to wait for its pipes to close before reporting the exit. */
export const FLUSH_LIMIT_MS = 1_000;

/**
 * Signal a worker's process group (its pid is the group id: workers start detached). Shared by
 * the manager and the spawn host.
 * @param {number} pid
 * @param {NodeJS.Signals} signal
 * @returns {boolean} false when the group is already gone (ESRCH)
 */
export function killGroup(pid, signal) {
  try {
    process.kill(-pid, signal);
    return true;
  } catch {
    return false;
  }
}

/**
 * A progress report is one line on a worker's stderr: this prefix, then the value as JSON (at
 * most MAX_PROGRESS bytes), then a newline. The spawn host takes such lines out of the stderr
 * it forwards and sends the value to the manager. A line that starts so but whose JSON is
 * longer is no progress: it is forwarded as ordinary stderr.
 */
export const PROGRESS_PREFIX = 'TIDEPOOL_PROGRESS ';
/** Most bytes of JSON one progress value may take (4 KiB). */
export const MAX_PROGRESS = 4096;

/** Bytes of a worker's stderr kept for its failure message. */
export const STDERR_TAIL = 2048;
/** A command's stdout beyond this fails the attempt (the result would not fit a message anyway). */
export const MAX_OUTPUT = 16 * 1024 * 1024;

/**
 * @typedef {{ name?: string, message: string, code?: string, stack?: string, cause?: ErrorInfo, [field: string]: unknown }} ErrorInfo
 * @typedef {{ k: 'run', task: unknown, attempt: number, taskId: string, workerId: string, last: boolean, deadline: number }} RunMessage
 *   `deadline`: when the attempt's timeout passes (ms since the epoch): a SIGTERM at or after it
 *   is the deadline, one before it is the pool stopping or cancelling the task.
 * @typedef {{ k: 'ready' }
 *   | { k: 'result', value: unknown }
 *   | { k: 'error', error: ErrorInfo, retryable: boolean }
 *   | { k: 'load-error', error: ErrorInfo }
 *   | { k: 'progress', value: unknown }} ChildMessage
 */

/** How deep a chain of `cause`s is followed, and how large one own field may be (JSON bytes). */
export const ERROR_LIMITS = /** @type {const} */ ({ causeDepth: 5, fieldBytes: 4096, fields: 20 });

/** Fields an ErrorInfo sets itself; an error's own fields of these names are not copied. */
const RESERVED = new Set(['name', 'message', 'code', 'stack', 'cause', 'kind', 'retryable', 'exitCode', 'signal']);

/**
 * An error as plain JSON, whatever was thrown: its name, message, string code, stack, its
 * `cause` (recursively, at most ERROR_LIMITS.causeDepth deep) and its own enumerable fields
 * that JSON can carry (each at most ERROR_LIMITS.fieldBytes; a `status: 503` stays a number).
 * @param {unknown} err
 * @param {number} [depth]
 * @returns {ErrorInfo}
 */
export function serializeError(err, depth = 0) {
  if (err instanceof Error) {
    /** @type {ErrorInfo & Record<string, unknown>} */
    const info = { name: err.name, message: err.message };
    const code = /** @type {{ code?: unknown }} */ (err).code;
    if (typeof code === 'string') info.code = code;
    if (err.stack) info.stack = err.stack;
    if (err.cause !== undefined && depth < ERROR_LIMITS.causeDepth) info.cause = serializeError(err.cause, depth + 1);
    let kept = 0;
    for (const key of Object.keys(err)) {
      if (RESERVED.has(key) || kept >= ERROR_LIMITS.fields) continue;
      const value = jsonSafe(/** @type {Record<string, unknown>} */ (/** @type {unknown} */ (err))[key]);
      if (value === undefined) continue;
      info[key] = value;
      kept++;
    }
    return info;
  }
  if (typeof err === 'string') return { message: err };
  try {
    return { message: `non-error thrown: ${JSON.stringify(err)}` };
  } catch {
    return { message: `non-error thrown: ${String(err)}` };
  }
}

/**
 * The value as JSON would carry it, or undefined when it cannot (a function, a BigInt, a
 * cycle) or is larger than ERROR_LIMITS.fieldBytes.
 * @param {unknown} value
 */
function jsonSafe(value) {
  try {
    const text = JSON.stringify(value);
    if (text === undefined || text.length > ERROR_LIMITS.fieldBytes) return undefined;
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * The handler a module exports: its default export function (or, for a CommonJS module, the
 * default of its `module.exports`). Throws a TypeError naming the module when there is none.
 * @param {Record<string, unknown>} mod the imported module namespace
 * @param {string} path the module's path, for the message
 * @returns {(task: unknown, ctx: object) => unknown}
 */
export function handlerOf(mod, path) {
  const exported = /** @type {{ default?: unknown } | undefined} */ (mod.default);
  const handler = typeof exported === 'function' ? exported : exported?.default;
  if (typeof handler !== 'function') {
    throw new TypeError(`${path} has no default export function (found ${typeof exported})`);
  }
  return /** @type {(task: unknown, ctx: object) => unknown} */ (handler);
}

/**
 * Whether a thrown value asks not to be retried (see `NonRetryableError`). Checked by shape,
 * not by class identity, so a handler bundling its own copy of the class still works.
 * @param {unknown} err
 */
export function isNonRetryable(err) {
  return typeof err === 'object' && err !== null && /** @type {{ retryable?: unknown }} */ (err).retryable === false;
}
