// @ts-check
// The module worker protocol (MSG), and the limits and helpers the manager, the module worker
// and the spawn hosts share (the spawn host's frames are in host-protocol.js). Plain
// JavaScript so that the child entries run without a build step and load nothing but this
// file (and, for a module worker, the handler).

/**
 * Message kinds. Parent → child: `run`. Child → parent: `ready`, `result`, `error`,
 * `load-error`.
 */
export const MSG = /** @type {const} */ ({
  RUN: 'run',
  READY: 'ready',
  RESULT: 'result',
  ERROR: 'error',
  LOAD_ERROR: 'load-error',
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

/** Bytes of a worker's stderr kept for its failure message. */
export const STDERR_TAIL = 2048;
/** A command's stdout beyond this fails the attempt (the result would not fit a message anyway). */
export const MAX_OUTPUT = 16 * 1024 * 1024;

/**
 * @typedef {{ name?: string, message: string, code?: string, stack?: string }} ErrorInfo
 * @typedef {{ k: 'run', task: unknown, attempt: number, taskId: string, workerId: string, last: boolean }} RunMessage
 * @typedef {{ k: 'ready' }
 *   | { k: 'result', value: unknown }
 *   | { k: 'error', error: ErrorInfo, retryable: boolean }
 *   | { k: 'load-error', error: ErrorInfo }} ChildMessage
 */

/**
 * An error as plain JSON, whatever was thrown.
 * @param {unknown} err
 * @returns {ErrorInfo}
 */
export function serializeError(err) {
  if (err instanceof Error) {
    /** @type {ErrorInfo} */
    const info = { name: err.name, message: err.message };
    const code = /** @type {{ code?: unknown }} */ (err).code;
    if (typeof code === 'string') info.code = code;
    if (err.stack) info.stack = err.stack;
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
 * Whether a thrown value asks not to be retried (see `NonRetryableError`). Checked by shape,
 * not by class identity, so a handler bundling its own copy of the class still works.
 * @param {unknown} err
 */
export function isNonRetryable(err) {
  return typeof err === 'object' && err !== null && /** @type {{ retryable?: unknown }} */ (err).retryable === false;
}
