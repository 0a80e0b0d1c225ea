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
 * A URL with its password replaced by `***` (`amqp://user:***@host:5672/vhost`); text that is
 * no URL but holds `user:password@` is treated alike. Without a password it is unchanged.
 */
export function redactUrl(text: string): string {
  try {
    const url = new URL(text);
    if (url.password === '') return text;
    url.password = '***';
    return url.href;
  } catch {
    return text.replace(/(\/\/[^/:@\s]*:)[^@/\s]*@/g, '$1***@');
  }
}

/**
 * The manager's logger: pino at `level`, `managerPid` on every line, secrets redacted
 * (LOG_REDACT), to `destination`.
 */
export function managerLogger(level: LoggerOptions['level'], destination: DestinationStream): Logger {
  return pino({ level, base: { managerPid: process.pid }, redact: LOG_REDACT }, destination);
}
