import * as v from 'valibot';
import { OptionError } from '../errors.js';

/**
 * The options of `tidepool serve` beyond the pool's own, validated in one place (the pool's
 * are validated by `createPool`). The CLI flags are these names in kebab-case
 * (`httpPort` → `--http-port`).
 */
export interface ServeOptions {
  /** TCP port of the HTTP server; 0 picks a free one (the actual address is logged and printed). Default 8080. */
  httpPort?: number;
  /** Address to bind. Default `127.0.0.1`. Anything but loopback needs `httpToken`. */
  httpHost?: string;
  /**
   * Bearer token every task route requires (`Authorization: Bearer <token>`). Without one, the
   * server binds to loopback only. Never logged.
   */
  httpToken?: string;
  /** Largest request body, in bytes; a larger one is answered 413. Default 1048576 (1 MiB). */
  maxBody?: number;
  /** Most tasks in flight (accepted, not yet final); past it `POST /tasks` is answered 429. Default 10000. */
  maxQueued?: number;
  /** Final outcomes kept for `GET /tasks/:id`, newest first; older ones answer 404. Default 10000. */
  maxRecent?: number;
  /** On SIGTERM/SIGINT, how long running tasks may take to finish, in ms, before they are stopped. Default 25000. */
  drainTimeout?: number;
  /** `/healthz` answers 503 while the event loop's delay over the last second passes this, in ms. Default 1000. */
  maxLoopDelay?: number;
}

export type ResolvedServeOptions = Required<Omit<ServeOptions, 'httpToken'>> & { httpToken: string | null };

/** The default of every serve option (ms for times, bytes for sizes). The CLI's usage text shows them. */
export const SERVE_DEFAULTS = {
  httpPort: 8080,
  httpHost: '127.0.0.1',
  maxBody: 1024 * 1024,
  maxQueued: 10_000,
  maxRecent: 10_000,
  // Inside Kubernetes' default terminationGracePeriodSeconds (30 s).
  drainTimeout: 25_000,
  maxLoopDelay: 1_000,
} as const;

const whole = (min: number, max: number, what: string) =>
  v.pipe(v.number(what), v.integer(what), v.minValue(min, what), v.maxValue(max, what));
const MAX_TIMER = 2 ** 31 - 1;

const schema = v.strictObject({
  httpPort: v.optional(whole(0, 65535, 'must be a port number from 0 to 65535')),
  httpHost: v.optional(v.pipe(v.string('must be a host name or address'), v.minLength(1, 'must be a host name or address'))),
  httpToken: v.optional(
    v.pipe(
      v.string('must be a string'),
      v.minLength(16, 'must be at least 16 characters long'),
      // A header value cannot carry control characters, nor surrounding spaces (HTTP trims them).
      v.regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces'),
    ),
  ),
  maxBody: v.optional(whole(1, MAX_TIMER, 'must be a positive integer (bytes)')),
  maxQueued: v.optional(whole(1, MAX_TIMER, 'must be a positive integer')),
  maxRecent: v.optional(whole(0, MAX_TIMER, 'must be a non-negative integer')),
  drainTimeout: v.optional(whole(0, MAX_TIMER, 'must be a non-negative integer (ms)')),
  maxLoopDelay: v.optional(whole(1, MAX_TIMER, 'must be a positive integer (ms)')),
});

/**
 * Validate the serve options; throws an `OptionError` (TIDEPOOL_ERR_OPTION_INVALID) naming the
 * first bad one, including a non-loopback `httpHost` without `httpToken`.
 */
export function resolveServeOptions(options: ServeOptions): ResolvedServeOptions {
  const parsed = v.safeParse(schema, options);
  if (!parsed.success) {
    const issue = parsed.issues[0];
    const option = (issue.path ?? []).map((item) => String(item.key)).join('.') || 'options';
    const unknown = issue.type === 'strict_object' && issue.path?.length === 1;
    throw new OptionError(option, unknown ? 'is not an option' : issue.message);
  }
  const o = { ...SERVE_DEFAULTS, ...parsed.output };
  const resolved: ResolvedServeOptions = { ...o, httpToken: o.httpToken ?? null };
  if (resolved.httpToken === null && !isLoopback(resolved.httpHost)) {
    throw new OptionError(
      'httpHost',
      `is ${JSON.stringify(resolved.httpHost)}, not loopback: a server reachable from other hosts needs a bearer token (--http-token or TIDEPOOL_HTTP_TOKEN)`,
    );
  }
  return resolved;
}

/**
 * Whether a host to bind is loopback only: `localhost`, 127.0.0.0/8, `::1` (and its IPv4-mapped
 * form). `0.0.0.0`, `::` and every other address are not.
 */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  const parts = v4.split('.');
  return parts.length === 4 && parts[0] === '127' && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255);
}
