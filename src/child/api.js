// @ts-check
// What a handler module may import (`tidepool-runtime/worker`). Loaded inside the worker
// process, so it imports nothing.

/**
 * What a handler is given besides its task.
 * @typedef {object} HandlerContext
 * @property {number} attempt 1-based
 * @property {string} workerId
 * @property {string} taskId
 * @property {AbortSignal} signal fires at the task's deadline, or when the pool stops or
 *   cancels the task; its `reason` (an Error) says which
 * @property {{ debug: LogFn, info: LogFn, warn: LogFn, error: LogFn }} log a pino-compatible
 *   logger writing JSON lines (with pid, workerId, taskId) to stderr at the pool's level
 * @property {(value: unknown) => void} progress report progress: any JSON value, at most
 *   4096 bytes (4 KiB) serialised. The pool emits it (`'progress'`) and keeps the latest per
 *   running attempt (`pool.progressOf(taskId)`). Throws a TypeError for a value JSON cannot
 *   carry (undefined, a function, a BigInt, a cycle) and a RangeError past 4 KiB; nothing is
 *   sent then. Each call is one message to the manager: report at a human pace (a few per
 *   second), not per item of a tight loop.
 */

/**
 * @callback LogFn
 * @param {string | Record<string, unknown>} objOrMsg
 * @param {string} [msg]
 * @returns {void}
 */

/**
 * A module worker's default export: takes the task (the JSON object, `JSON.parse` semantics)
 * and resolves with a JSON-serialisable result; a throw fails the attempt.
 * @template [TTask=Record<string, unknown> & { id: string }]
 * @template [TResult=unknown]
 * @typedef {(task: TTask, ctx: HandlerContext) => TResult | Promise<TResult>} Handler
 */

/**
 * Throw this from a handler to fail the attempt and dead-letter the task at once, without
 * retries: the input is wrong and will stay wrong.
 *
 * @example
 * import { NonRetryableError } from 'tidepool-runtime/worker';
 * export default async function (task) {
 *   if (!task.params?.url) throw new NonRetryableError('params.url is required');
 * }
 */
export class NonRetryableError extends Error {
  /**
   * @param {string} message
   * @param {ErrorOptions} [options]
   */
  constructor(message, options) {
    super(message, options);
    this.name = 'NonRetryableError';
    /** @readonly */
    this.retryable = false;
  }
}
