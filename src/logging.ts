import { pino } from 'pino';
import type { DestinationStream, Logger, LoggerOptions } from 'pino';

/**
 * What tidepool's loggers never write: pino `redact` paths (pino's docs, "Redaction") for
 * the keys under which secrets are logged, at the top level of a line or one object down
 * (`options.env`):
 * - `env`: the workers' environment, as `NAME=VALUE` entries (`--env`) or as an object: each
 *   value becomes `[redacted]`, the names stay (`["API_KEY=[redacted]", "PATH"]`);
 * - `amqp`, `amqpUrl`, `url`: a URL keeps all but its password (`amqp://user:***@host/vhost`);
 * - `httpToken`, `token`, `authorization`, `headers.authorization`, `password`: replaced
 *   whole.
 * Log a secret under one of these keys, never in a message string: redaction sees keys only.
 */
export const LOG_REDACT = {
  paths: [
    'env',
    '*.env',
    'amqp',
    '*.amqp',
    'amqpUrl',
    '*.amqpUrl',
    'url',
    '*.url',
    'httpToken',
    '*.httpToken',
    'token',
    '*.token',
    'password',
    '*.password',
    'authorization',
    '*.authorization',
    'headers.authorization',
    '*.headers.authorization',
  ],
  censor: censor as (value: unknown, path: string[]) => unknown,
};

const REDACTED = '[redacted]';

function censor(value: unknown, path: string[]): unknown {
  const key = path[path.length - 1];
  if (key === 'env') return redactEnv(value);
  if ((key === 'amqp' || key === 'amqpUrl' || key === 'url') && typeof value === 'string') return redactUrl(value);
  return REDACTED;
}

/** `NAME=VALUE` entries (or an object of them) with every value replaced; names kept. */
function redactEnv(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redactEntry);
  if (typeof value === 'object' && value !== null) return Object.fromEntries(Object.keys(value).map((name) => [name, REDACTED]));
  return redactEntry(value);
}

/** `NAME=VALUE` as `NAME=[redacted]`; a bare `NAME` (no value) stays. */
function redactEntry(entry: unknown): unknown {
  if (typeof entry !== 'string') return REDACTED;
  const eq = entry.indexOf('=');
  return eq === -1 ? entry : `${entry.slice(0, eq)}=${REDACTED}`;
}

/**
 * A URL with its password replaced by `mask` (`amqp://user:***@host:5672/vhost`), or dropped
 * when `mask` is empty (`amqp://user@host:5672/vhost`); text that is no URL but holds
 * `user:password@` is treated alike. Without a password it is unchanged.
 */
export function redactUrl(text: string, mask = '***'): string {
  try {
    const url = new URL(text);
    if (url.password === '') return text;
    url.password = mask;
    return url.href;
  } catch {
    return text.replace(/(\/\/[^/:@\s]*):[^@/\s]*@/g, mask === '' ? '$1@' : `$1:${mask}@`);
  }
}

/**
 * The manager's logger: pino at `level`, `managerPid` on every line, secrets redacted
 * (LOG_REDACT), to `destination`.
 */
export function managerLogger(level: LoggerOptions['level'], destination: DestinationStream): Logger {
  return pino({ level, base: { managerPid: process.pid }, redact: LOG_REDACT }, destination);
}

/** How long `flush` waits for the lines still buffered, in ms. */
export const FLUSH_WAIT_MS = 2_000;

/**
 * The manager's logger on fd 2 (`managerLogger`; `pid` in a line is a worker's, the manager's
 * is `managerPid`), and a way to write out what it buffered.
 * If stderr cannot be written (its reader is gone, a full disk), logging stops rather than
 * retrying and holding the process. `flush` waits at most FLUSH_WAIT_MS and never uses
 * sonic-boom's `flushSync`, which retries EPIPE forever: a service whose stderr reader had
 * gone would never exit.
 */
export function stderrLogger(level: LoggerOptions['level']): { logger: Logger; flush(): Promise<void> } {
  const destination = pino.destination({ fd: 2, sync: false });
  const logger = managerLogger(level, destination);
  let failed = false;
  destination.on('error', () => {
    failed = true;
    logger.level = 'silent';
    destination.destroy();
  });
  const flush = () =>
    new Promise<void>((resolve) => {
      if (failed) return resolve();
      const timer = setTimeout(resolve, FLUSH_WAIT_MS);
      try {
        destination.flush(() => {
          clearTimeout(timer);
          resolve();
        });
      } catch {
        // stderr is gone or full: nothing more can be said
        clearTimeout(timer);
        resolve();
      }
    });
  return { logger, flush };
}
