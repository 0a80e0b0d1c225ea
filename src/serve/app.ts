import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import Fastify from 'fastify';
import type { FastifyInstance, FastifyReply, onRequestHookHandler } from 'fastify';
import { parseTask } from '../sources/parse.js';
import type { Service, Settled } from './service.js';

/**
 * The HTTP app of `tidepool serve`, on fastify (v5): it brings body limits answered 413 before
 * a body is read whole, content-type parsers, hooks for the bearer check before any body is
 * read, and route-level encapsulation, without our own HTTP plumbing. Built over a `Service`;
 * `listen` is the caller's.
 *
 * Routes: `POST /tasks` (`?wait=true`), `GET /tasks/:id`, `DELETE /tasks/:id` (behind the bearer
 * token when the service has one), `/healthz`, `/readyz`, `/metrics`. Every error answer is
 * `{ "error": <code>, "message": <what was wrong> }`.
 */

/** The `error` field of an error answer, by status. */
const ERROR_NAMES: Record<number, string> = {
  400: 'bad_request',
  401: 'unauthorized',
  404: 'not_found',
  405: 'method_not_allowed',
  409: 'conflict',
  413: 'payload_too_large',
  415: 'unsupported_media_type',
  429: 'queue_full',
  500: 'internal',
  503: 'unavailable',
};

/** Content types of a body of many tasks, one JSON object a line. */
const JSON_LINES = ['application/x-ndjson', 'application/jsonl'];

/** An answer that is not a success: its status, and a message saying what was wrong. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

const digest = (text: string) => createHash('sha256').update(text).digest();

/**
 * Whether an `Authorization` header carries the token. The two are compared as SHA-256
 * digests with `crypto.timingSafeEqual`: fixed-length inputs, so neither the content nor the
 * length of the token shows in the time taken.
 */
export function bearerMatches(header: string | undefined, tokenDigest: Buffer): boolean {
  const match = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header ?? '');
  return timingSafeEqual(digest(match?.[1] ?? ''), tokenDigest) && match !== null;
}

/**
 * An `onRequest` hook that lets through only requests with `Authorization: Bearer <token>`
 * (checked before any body is read), else answers 401 with `WWW-Authenticate`, saying that
 * `what` needs the token and what the request had.
 */
export function bearerGuard(token: string, what: string): onRequestHookHandler {
  const tokenDigest = digest(token);
  return (request, reply, done) => {
    if (bearerMatches(request.headers.authorization, tokenDigest)) return done();
    void reply.header('WWW-Authenticate', 'Bearer realm="tidepool"');
    const said = request.headers.authorization === undefined ? 'no Authorization header' : 'a wrong token';
    sendError(reply, 401, `${what} needs Authorization: Bearer <token>; the request had ${said}`);
  };
}

/** One task of a body, checked: its id, and its JSON as it arrived. */
interface Checked {
  id: string;
  text: string;
}

/**
 * Check every task of a body before any is submitted: one that is not a task is a 400 naming
 * it (its line, for JSON Lines), an id given twice in one body or already in flight a 409.
 */
function checkBody(body: Buffer | undefined, lines: boolean, inFlight: (id: string) => boolean): Checked[] {
  if (body === undefined || body.length === 0) {
    throw new HttpError(400, 'the body is empty: send one task as a JSON object, or many as JSON Lines');
  }
  let all: string;
  try {
    all = new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    throw new HttpError(400, 'the body is not valid UTF-8');
  }
  const texts: { text: string; line?: number }[] = [];
  if (!lines) texts.push({ text: all });
  else {
    all.split('\n').forEach((line, i) => {
      const text = line.endsWith('\r') ? line.slice(0, -1) : line;
      if (text.trim() !== '') texts.push({ text, line: i + 1 });
    });
    if (texts.length === 0) throw new HttpError(400, 'the body holds no task (JSON Lines: one JSON object a line)');
  }
  const seen = new Set<string>();
  return texts.map(({ text, line }) => {
    const where = line === undefined ? {} : { line };
    const parsed = parseTask(text, randomUUID());
    if (!parsed.ok) {
      const hint = line === undefined && parsed.message.endsWith('got an array') ? ' (send many tasks as JSON Lines: Content-Type: application/x-ndjson)' : '';
      throw new HttpError(400, `${line === undefined ? 'the body' : `line ${line}`} is not a task: ${parsed.message}${hint}`, where);
    }
    const { id } = parsed.task;
    if (seen.has(id) || inFlight(id)) {
      const why = seen.has(id) ? 'is given twice in this body' : 'is already in flight (ids are idempotency keys)';
      throw new HttpError(409, `${line === undefined ? '' : `line ${line}: `}task id ${JSON.stringify(id)} ${why}; nothing was queued`, { id, ...where });
    }
    seen.add(id);
    return { id, text };
  });
}

function parseWait(query: unknown): boolean {
  const wait = (query as { wait?: unknown }).wait;
  if (wait === undefined || wait === 'false' || wait === '0') return false;
  if (wait === 'true' || wait === '1' || wait === '') return true;
  throw new HttpError(400, `wait must be true or false, got ${JSON.stringify(wait)}`);
}

/** The answer for tasks the service stopped before they ended. */
const stoppedMessage = 'the service stopped before the task reached a final outcome; it was handed back to the source, never acked';

/**
 * Build the HTTP app over a service (not listening yet: call `listen`). Errors from fastify
 * itself (a body over `maxBody`: 413; an unknown content type: 415) get the same JSON shape
 * as the app's own.
 */
export function buildApp(service: Service): FastifyInstance {
  const { options, metrics, logger } = service;
  const app = Fastify({
    // fastify logs nothing of its own: the service logs what it decides to (never a header).
    logger: false,
    bodyLimit: options.maxBody,
    // A task id is any string: keep it whole, however long.
    routerOptions: { maxParamLength: 10_000 },
    return503OnClosing: true,
    // Errors found before routing (a URL that is not valid percent-encoding) get the same shape.
    frameworkErrors: (err, _request, reply) => sendError(reply, err.statusCode ?? 400, err.message),
  });

  app.removeAllContentTypeParsers();
  app.addContentTypeParser(['application/json', ...JSON_LINES], { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  app.setErrorHandler((err: Error & { statusCode?: number }, request, reply) => {
    if (err instanceof HttpError) return sendError(reply, err.status, err.message, err.extra);
    const status = err.statusCode ?? 500;
    if (status >= 500) logger.error({ err, method: request.method, url: request.url }, 'HTTP request failed');
    let message = err.message;
    if (status === 413) message = `the body is larger than the limit of ${options.maxBody} bytes (--max-body)`;
    if (status === 415) message = `Content-Type must be application/json (one task) or ${JSON_LINES.join(' or ')} (JSON Lines), got ${JSON.stringify(request.headers['content-type'] ?? '')}`;
    return sendError(reply, status, status >= 500 ? 'internal error' : message);
  });
  app.setNotFoundHandler((request, reply) => sendError(reply, 404, `no route ${request.method} ${request.url.split('?')[0]}`));

  app.addHook('onResponse', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unmatched';
    metrics.request(route, reply.statusCode);
    if (logger.isLevelEnabled('debug')) {
      logger.debug({ method: request.method, route, statusCode: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'HTTP request');
    }
    done();
  });

  app.get('/healthz', (_request, reply) => {
    const health = service.health();
    return reply.code(health.healthy ? 200 : 503).send(health);
  });

  app.get('/readyz', (_request, reply) => {
    const readiness = service.readiness();
    return reply.code(readiness.ready ? 200 : 503).send(readiness);
  });

  app.get('/metrics', async (_request, reply) => reply.type(metrics.contentType).send(await metrics.text()));

  // The task routes: behind the token, checked before any body is read.
  void app.register(async (tasks) => {
    if (options.httpToken !== null) tasks.addHook('onRequest', bearerGuard(options.httpToken, 'this route'));

    tasks.post('/tasks', async (request, reply) => {
      if (!service.takesTasks) {
        // RFC 9110 §15.5.6: a 405 lists the methods allowed; an empty Allow allows none.
        void reply.header('Allow', '');
        throw new HttpError(
          405,
          'this service takes its tasks from a RabbitMQ queue (--amqp): publish them to the queue, e.g. with "tidepool enqueue --amqp URL --queue NAME"',
        );
      }
      if (service.draining) throw new HttpError(503, 'the service is draining: it takes no new tasks');
      const wait = parseWait(request.query);
      const type = String(request.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
      const checked = checkBody(request.body as Buffer | undefined, JSON_LINES.includes(type), (id) => service.has(id));
      if (checked.length > options.maxQueued) {
        throw new HttpError(413, `the body holds ${checked.length} tasks, more than --max-queued (${options.maxQueued}) can ever hold in flight: split it; nothing was queued`);
      }
      const room = options.maxQueued - service.inFlight;
      if (checked.length > room) {
        void reply.header('Retry-After', '1');
        throw new HttpError(
          429,
          `the queue is full: ${service.inFlight} task(s) in flight of at most ${options.maxQueued} (--max-queued); ${checked.length} more do not fit; nothing was queued`,
        );
      }
      const settled = checked.map(({ id, text }) => service.submit(id, text));
      const ids = checked.map((c) => c.id);
      const single = JSON_LINES.includes(type) === false;
      if (!wait) {
        if (single) void reply.header('Location', `/tasks/${encodeURIComponent(ids[0])}`);
        return reply.code(202).send(single ? { id: ids[0], status: 'queued' } : { ids });
      }
      const results = await Promise.all(settled);
      const stopped = results.filter((r): r is Extract<Settled, { ok: false }> => !r.ok);
      if (stopped.length > 0) {
        if (single) throw new HttpError(503, stoppedMessage, { id: ids[0] });
        const unfinished = ids.filter((_, i) => !results[i].ok);
        throw new HttpError(503, `${unfinished.length} of ${ids.length} tasks: ${stoppedMessage}`, {
          unfinished,
          results: results.flatMap((r) => (r.ok ? [r.result] : [])),
        });
      }
      const outcomes = results.map((r) => (r as Extract<Settled, { ok: true }>).result);
      if (single) return reply.code(200).send(outcomes[0]);
      return reply.code(200).type('application/x-ndjson').send(outcomes.map((o) => `${JSON.stringify(o)}\n`).join(''));
    });

    tasks.get('/tasks/:id', (request, reply) => {
      const { id } = request.params as { id: string };
      const view = service.view(id);
      if (view === undefined) throw notFound(id, options.maxRecent);
      return reply.send(view);
    });

    tasks.delete('/tasks/:id', (request, reply) => {
      const { id } = request.params as { id: string };
      const found = service.cancel(id);
      if (found === 'unknown') {
        const view = service.view(id);
        if (view !== undefined && view.status !== 'queued' && view.status !== 'running') {
          throw new HttpError(409, `task ${JSON.stringify(id)} already ended (${view.status}): nothing to cancel`, { outcome: view });
        }
        throw notFound(id, options.maxRecent);
      }
      const effect =
        found === 'queued'
          ? 'was removed from the queue: it will not run'
          : "is running: its attempt is being ended (SIGTERM to its process group, SIGKILL after the kill grace)";
      return reply.code(202).send({ id, cancelled: found, message: `the task ${effect}; its outcome is "cancelled"` });
    });
  });

  return app;
}

function notFound(id: string, maxRecent: number): HttpError {
  return new HttpError(404, `no task ${JSON.stringify(id)}: never seen, or forgotten (the last ${maxRecent} final outcomes are kept, --max-recent)`);
}

function sendError(reply: FastifyReply, status: number, message: string, extra: Record<string, unknown> = {}): FastifyReply {
  return reply.code(status).type('application/json').send({ error: ERROR_NAMES[status] ?? `http_${status}`, message, ...extra });
}

