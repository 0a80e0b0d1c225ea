// @ts-check
// What a handler module may import (`tidepool/worker`). Loaded inside the worker process, so
// it imports nothing.

/**
 * Throw this from a handler to fail the attempt and dead-letter the task at once, without
 * retries: the input is wrong and will stay wrong.
 *
 * @example
 * import { NonRetryableError } from 'tidepool/worker';
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
