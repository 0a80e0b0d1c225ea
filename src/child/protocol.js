// @ts-check
// The parent–child protocol of module workers, in one place. Plain JavaScript so that the
// child entry runs without a build step and loads nothing but this file and the handler.

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
