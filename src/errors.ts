/**
 * Every error tidepool throws, each with a stable `code`. Tests assert codes, not messages;
 * the README lists every code (a test checks that).
 */
export const ERROR_CODES = {
  TIDEPOOL_ERR_OPTION_INVALID: 'an option has an invalid value; the message names it',
  TIDEPOOL_ERR_USAGE: 'the command line is wrong (unknown flag, missing argument)',
  TIDEPOOL_ERR_INPUT: 'the task input could not be read',
  TIDEPOOL_ERR_POOL_STATE: 'the pool is not in a state that allows the call (run before start, after drain)',
  TIDEPOOL_ERR_POOL_STOPPED: 'the pool was stopped before the task reached a final outcome',
  TIDEPOOL_ERR_START_FAILED: 'the pool could not start (its source could not open)',
  TIDEPOOL_ERR_BROKER: 'RabbitMQ could not be reached, refused the login, holds the queue with other arguments, or lost the connection before a settlement was safe (the message names the URL without its password)',
  TIDEPOOL_ERR_WORKER_LOAD: 'the handler module could not be loaded (checked once before any work; the message has its error, file and line)',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class TidepoolError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'TidepoolError';
    this.code = code;
  }
}

/** An invalid option; `option` is its name in the library API (camelCase). */
export class OptionError extends TidepoolError {
  readonly option: string;
  /** What is wrong with it, without its name ("must be a positive integer"). */
  readonly detail: string;

  constructor(option: string, detail: string) {
    super('TIDEPOOL_ERR_OPTION_INVALID', `${option} ${detail}`);
    this.name = 'OptionError';
    this.option = option;
    this.detail = detail;
  }
}

export class UsageError extends TidepoolError {
  constructor(message: string) {
    super('TIDEPOOL_ERR_USAGE', message);
    this.name = 'UsageError';
  }
}
