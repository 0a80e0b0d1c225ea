/**
 * Every error tidepool throws, each with a stable `code`. Tests assert codes, not messages;
 * the README lists every code (a test checks that).
 */
export const ERROR_CODES = {
  TIDEPOOL_ERR_OPTION_INVALID: 'an option has an invalid value; the message names it',
  TIDEPOOL_ERR_USAGE: 'the command line is wrong (unknown flag, missing argument)',
  TIDEPOOL_ERR_INPUT: 'the task input could not be read',
  TIDEPOOL_ERR_ARGUMENT: 'a method was called with an argument of the wrong type (cancel(taskId) with a taskId that is not a string); the message names it',
  TIDEPOOL_ERR_POOL_STATE: 'the pool is not in a state that allows the call (run before start, after drain)',
  TIDEPOOL_ERR_POOL_STOPPED: 'the pool was stopped before the task reached a final outcome',
  TIDEPOOL_ERR_START_FAILED: 'the pool could not start (its source could not open)',
  TIDEPOOL_ERR_BROKER: 'RabbitMQ could not be reached, refused the login, holds the queue with other arguments, or lost the connection before a settlement was safe (the message names the URL without its password)',
  TIDEPOOL_ERR_WORKER_LOAD: 'the handler module could not be loaded (checked once before any work; the message has its error, file and line)',
  TIDEPOOL_ERR_LISTEN: 'tidepool serve could not listen on its HTTP address (in use, not permitted, unknown host)',
  TIDEPOOL_ERR_CONFIG: 'the config file could not be read, parsed or loaded, or holds a key that is no option (the message names the file and the key)',
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

/**
 * An invalid option; `option` is its name in the library API (camelCase, `worker.command`,
 * `env.2` for an array's item).
 */
export class OptionError extends TidepoolError {
  readonly option: string;
  /** What is wrong with it, without its name ("must be a positive integer"). */
  readonly detail: string;
  /** The value that was refused, when the schema saw one (`{ value: "four" }`). */
  readonly received: { value: unknown } | undefined;

  constructor(option: string, detail: string, received?: { value: unknown }) {
    super('TIDEPOOL_ERR_OPTION_INVALID', `${option} ${detail}`);
    this.name = 'OptionError';
    this.option = option;
    this.detail = detail;
    this.received = received;
  }
}

/**
 * A config file (`tidepool run --config FILE`) that cannot be used: unreadable, not JSON, a
 * module that throws or exports no object, or a key that is no option. `file` is the path as
 * the user gave it; `key` the key at fault, when one is.
 */
export class ConfigError extends TidepoolError {
  readonly file: string;
  readonly key: string | undefined;

  constructor(file: string, message: string, key?: string, options?: ErrorOptions) {
    super('TIDEPOOL_ERR_CONFIG', `${file}: ${message}`, options);
    this.name = 'ConfigError';
    this.file = file;
    this.key = key;
  }
}

export class UsageError extends TidepoolError {
  constructor(message: string) {
    super('TIDEPOOL_ERR_USAGE', message);
    this.name = 'UsageError';
  }
}
