import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createService } from '../src/serve/create.js';
import type { ServiceParts } from '../src/serve/create.js';
import type { ServeOptions } from '../src/serve/options.js';
import type { MemorySource, PoolOptions } from '../src/index.js';
import { trackPools } from './helpers/pools.js';
import { fixture, groupMembers, isAlive, until } from './helpers/procs.js';
import { call, parsePrometheus, pollUntil, sampleValue, tempDirs } from './helpers/serve.js';

/**
 * The serve app in this process: a real pool (real worker processes) behind real HTTP on a
 * free loopback port. The signal and drain behaviour of the command is in serve-cli.test.ts.
 */

const { track } = trackPools({});
const started: ServiceParts[] = [];
const temp = tempDirs();
/** A release file for progress-until.js that exists from the start of each test. */
let released: string;

beforeEach(() => {
  released = join(temp.root, 'released');
  writeFileSync(released, '');
});

afterEach(async () => {
  for (const { app, service } of started.splice(0)) {
    await app.close();
    service.close();
  }
});

interface Served extends ServiceParts {
  url: string;
  /** Every log line of the pool and the service, at level trace. */
  logs: string[];
}

async function serve(pool: Partial<PoolOptions> & Pick<PoolOptions, 'worker'>, options: ServeOptions = {}): Promise<Served> {
  const logs: string[] = [];
  const logger = pino({ level: 'trace' }, { write: (line: string) => void logs.push(line) });
  const parts = createService({ concurrency: 1, attempts: 1, ...pool, logger }, { httpPort: 0, ...options });
  track(parts.pool);
  started.push(parts);
  await parts.pool.start();
  const url = await parts.app.listen({ port: 0, host: '127.0.0.1' });
  return { ...parts, url, logs };
}

const mark = { module: fixture('mark.js') };
const ran = () => temp.ran();

/**
 * Proof that nothing but `expected` was queued by the requests before: with one worker and a
 * FIFO queue, a task queued before the sentinel would run before it; once the sentinel has
 * ended, only `expected` and the sentinel may have left a mark (mark.js or progress-until.js).
 */
async function onlyThoseRan(url: string, expected: string[] = [], token?: string): Promise<void> {
  const sentinel = await call(`${url}/tasks?wait=true`, { body: { id: 'sentinel', params: { dir: temp.dir, release: released, progress: 0 } }, token });
  expect(sentinel.json).toMatchObject({ id: 'sentinel', status: 'resolved' });
  expect(ran()).toEqual([...expected, 'sentinel'].sort());
}

describe('POST /tasks', () => {
  it('takes one task: 202 with its id (assigned when it has none), then GET shows its outcome', async () => {
    const { url } = await serve({ worker: mark });
    const posted = await call(`${url}/tasks`, { body: { params: { dir: temp.dir } } });
    expect(posted.status).toBe(202);
    const { id } = posted.json;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(posted.headers.get('location')).toBe(`/tasks/${id}`);
    const done = await pollUntil(`${url}/tasks/${id}`, (a) => a.json?.status === 'resolved', 'the task to resolve');
    expect(done.json).toMatchObject({ id, status: 'resolved', attempts: 1, result: { pid: expect.any(Number) } });
    expect(ran()).toEqual([id]);
  });

  it('?wait=true answers the final outcome, the line tidepool run prints', async () => {
    const { url } = await serve({ worker: { module: fixture('throw.js') } });
    const answer = await call(`${url}/tasks?wait=true`, { body: { id: 'w-1', params: { why: 'on purpose' } } });
    expect(answer.status).toBe(200);
    expect(answer.json).toMatchObject({ id: 'w-1', status: 'failed', attempts: 1, error: { kind: 'error', message: 'boom: on purpose' } });
    expect(answer.json.durationMs).toEqual(expect.any(Number));
  });

  it('takes JSON Lines: 202 with every id; with ?wait=true one outcome line per task, in input order', async () => {
    const { url } = await serve({ worker: mark, concurrency: 2 });
    const body = `{"id":"a","params":{"dir":${JSON.stringify(temp.dir)}}}\r\n\n{"id":"b","params":{"dir":${JSON.stringify(temp.dir)}}}\n`;
    const queued = await call(`${url}/tasks`, { body, type: 'application/x-ndjson' });
    expect(queued.status).toBe(202);
    expect(queued.json).toEqual({ ids: ['a', 'b'] });
    await until(() => ran().length === 2, 'both tasks to run', 20_000);
    const waited = await call(`${url}/tasks?wait=true`, { body: body.replace(/"a"/, '"c"').replace(/"b"/, '"d"'), type: 'application/jsonl' });
    expect(waited.status).toBe(200);
    expect(waited.headers.get('content-type')).toMatch(/^application\/x-ndjson/);
    const lines = waited.text.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => [l.id, l.status])).toEqual([
      ['c', 'resolved'],
      ['d', 'resolved'],
    ]);
  });

  it('answers a body that is not a task with 400 naming the fault, and queues nothing (for JSON Lines, not even the good lines)', async () => {
    const { url } = await serve({ worker: mark });
    const good = (id: string) => JSON.stringify({ id, params: { dir: temp.dir } });
    const cases: [string | Uint8Array, string, RegExp][] = [
      ['{"id":"x",', 'application/json', /^the body is not a task: not JSON/],
      [`[${good('y')}]`, 'application/json', /got an array \(send many tasks as JSON Lines/],
      ['{"id":7}', 'application/json', /id must be a non-empty string, got 7/],
      [JSON.stringify({ id: 'x'.repeat(20_000) }), 'application/json', /id must be at most 1024 characters, got 20000/],
      [new Uint8Array([0x7b, 0xff, 0x7d]), 'application/json', /not valid UTF-8/],
      [`${good('l1')}\n${good('l2')}\n[1,2]\n${good('l4')}`, 'application/x-ndjson', /^line 3 is not a task: a task must be a JSON object, got an array/],
      ['\n\n', 'application/x-ndjson', /holds no task/],
      ['', 'application/json', /^the body is empty/],
    ];
    for (const [body, type, message] of cases) {
      const answer = await call(`${url}/tasks`, { body, type });
      expect(answer.status, String(body)).toBe(400);
      expect(answer.json.error).toBe('bad_request');
      expect(answer.json.message).toMatch(message);
    }
    const line = await call(`${url}/tasks`, { body: `${good('l1')}\nnope`, type: 'application/x-ndjson' });
    expect(line.json).toMatchObject({ line: 2 });
    await onlyThoseRan(url);
  });

  it('answers 409 for an id already in flight (or twice in one body), and queues nothing of that body', async () => {
    const { url } = await serve({ worker: { module: fixture('progress-until.js') }, concurrency: 2 });
    const release = join(temp.root, 'release');
    const held = { id: 'held', params: { progress: 1, release } };
    expect((await call(`${url}/tasks`, { body: held })).status).toBe(202);
    const again = await call(`${url}/tasks`, { body: held });
    expect(again.status).toBe(409);
    expect(again.json).toMatchObject({ error: 'conflict', id: 'held' });
    const batch = await call(`${url}/tasks`, { body: `{"id":"fresh","params":{"release":"${release}"}}\n{"id":"held"}`, type: 'application/x-ndjson' });
    expect(batch.status).toBe(409);
    expect(batch.json).toMatchObject({ line: 2, id: 'held' });
    const twice = await call(`${url}/tasks`, { body: '{"id":"t"}\n{"id":"t"}', type: 'application/x-ndjson' });
    expect(twice.status).toBe(409);
    expect(twice.json.message).toMatch(/given twice/);
    expect((await call(`${url}/tasks/fresh`)).status).toBe(404);
    writeFileSync(release, '');
    await pollUntil(`${url}/tasks/held`, (a) => a.json?.status === 'resolved', 'the held task to end');
    // Final, so the same id may run again.
    expect((await call(`${url}/tasks?wait=true`, { body: held })).json).toMatchObject({ id: 'held', status: 'resolved' });
  });

  it('answers a body over --max-body with 413 and one of another type with 415; nothing is queued', async () => {
    const { url } = await serve({ worker: mark }, { maxBody: 512 });
    const big = await call(`${url}/tasks`, { body: { id: 'big', params: { dir: temp.dir, pad: 'x'.repeat(600) } } });
    expect(big.status).toBe(413);
    expect(big.json).toMatchObject({ error: 'payload_too_large', message: expect.stringContaining('512 bytes') });
    const form = await call(`${url}/tasks`, { body: 'id=form', type: 'application/x-www-form-urlencoded' });
    expect(form.status).toBe(415);
    expect(form.json.message).toMatch(/Content-Type must be application\/json/);
    await onlyThoseRan(url);
  });

  it('answers 429 with Retry-After when --max-queued tasks are in flight, and queues nothing of the request', async () => {
    const { url } = await serve({ worker: { module: fixture('progress-until.js') } }, { maxQueued: 2 });
    const release = join(temp.root, 'release');
    const task = (id: string) => ({ id, params: { dir: temp.dir, progress: 0, release } });
    for (const id of ['h1', 'h2']) expect((await call(`${url}/tasks`, { body: task(id) })).status).toBe(202);
    const one = await call(`${url}/tasks`, { body: task('over') });
    expect(one.status).toBe(429);
    expect(one.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(one.json).toMatchObject({ error: 'queue_full', message: expect.stringMatching(/2 task\(s\) in flight of at most 2/) });
    writeFileSync(release, '');
    await pollUntil(`${url}/tasks/h2`, (a) => a.json?.status === 'resolved', 'the held tasks to end');
    // Room for two again, but one is taken: a batch of two does not fit, and none of it is queued.
    rmSync(release);
    expect((await call(`${url}/tasks`, { body: task('h3') })).status).toBe(202);
    const batch = await call(`${url}/tasks`, { body: `${JSON.stringify(task('b1'))}\n${JSON.stringify(task('b2'))}`, type: 'application/x-ndjson' });
    expect(batch.status).toBe(429);
    const never = await call(`${url}/tasks`, { body: ['n1', 'n2', 'n3'].map((id) => JSON.stringify(task(id))).join('\n'), type: 'application/x-ndjson' });
    expect(never.status).toBe(413);
    expect(never.json.message).toMatch(/3 tasks, more than --max-queued \(2\) can ever hold/);
    writeFileSync(release, '');
    await pollUntil(`${url}/tasks/h3`, (a) => a.json?.status === 'resolved', 'the held task to end');
    await onlyThoseRan(url, ['h1', 'h2', 'h3']);
  });
});

describe('bearer token', () => {
  const token = 'right-token-0123456789abcdef';
  const wrong = ['wrong-token-0123456789abcdef', 'right-token-0123456789abcdeX'];

  it('guards every task route (401 before the body is read; nothing queued), not the probes; the token is in no log line', async () => {
    const { url, logs } = await serve({ worker: mark }, { httpToken: token });
    const body = { id: 'guarded', params: { dir: temp.dir } };
    const none = await call(`${url}/tasks`, { body });
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect(none.json).toMatchObject({ error: 'unauthorized', message: expect.stringContaining('no Authorization header') });
    for (const bad of wrong) {
      expect((await call(`${url}/tasks?wait=true`, { body, token: bad })).status).toBe(401);
      expect((await call(`${url}/tasks/guarded`, { token: bad })).status).toBe(401);
      expect((await call(`${url}/tasks/guarded`, { method: 'DELETE', token: bad })).status).toBe(401);
    }
    expect((await call(`${url}/tasks`, { body, headers: { authorization: `Basic ${token}` } })).status).toBe(401);
    // A body over the limit without the token is refused for the token, not read.
    expect((await call(`${url}/tasks`, { body: 'x'.repeat(2 * 1024 * 1024) })).status).toBe(401);
    for (const probe of ['/healthz', '/readyz', '/metrics']) expect((await call(`${url}${probe}`)).status).not.toBe(401);
    await onlyThoseRan(url, [], token);
    expect((await call(`${url}/tasks/sentinel`, { token })).json).toMatchObject({ status: 'resolved' });
    expect(logs.length).toBeGreaterThan(5);
    for (const secret of [token, ...wrong]) expect(logs.filter((l) => l.includes(secret))).toEqual([]);
  });
});

describe('GET and DELETE /tasks/:id', () => {
  it('shows a task queued, then running with its attempt, worker id, pid and progress, then its outcome', async () => {
    const { url } = await serve({ worker: { module: fixture('progress-until.js') } });
    const release = join(temp.root, 'release');
    await call(`${url}/tasks`, { body: { id: 'first', params: { progress: { done: 40, of: 100 }, release } } });
    await call(`${url}/tasks`, { body: { id: 'second', params: { progress: 'second', release } } });
    expect((await call(`${url}/tasks/second`)).json).toEqual({ id: 'second', status: 'queued', attempts: 0 });
    const running = await pollUntil(`${url}/tasks/first`, (a) => a.json?.progress?.done === 40, 'the progress of the first task');
    expect(running.json).toMatchObject({ id: 'first', status: 'running', attempt: 1, workerId: expect.any(String), pid: expect.any(Number) });
    expect(isAlive(running.json.pid)).toBe(true);
    writeFileSync(release, '');
    const done = await pollUntil(`${url}/tasks/second`, (a) => a.json?.status === 'resolved', 'the second task to end');
    expect(done.json).toMatchObject({ result: { released: true }, attempts: 1 });
  });

  it('answers 404 for a task never seen, and for one forgotten past --max-recent', async () => {
    const { url } = await serve({ worker: mark }, { maxRecent: 2 });
    expect((await call(`${url}/tasks/nobody`)).json).toMatchObject({ error: 'not_found', message: expect.stringContaining('--max-recent') });
    expect((await call(`${url}/tasks/%E0%A4%A`)).json).toMatchObject({ error: 'bad_request', message: expect.stringContaining('not a valid url component') });
    for (const id of ['r1', 'r2', 'r3']) await call(`${url}/tasks?wait=true`, { body: { id, params: { dir: temp.dir } } });
    expect((await call(`${url}/tasks/r1`)).status).toBe(404);
    expect((await call(`${url}/tasks/r2`)).json).toMatchObject({ status: 'resolved' });
    expect((await call(`${url}/tasks/r3`)).json).toMatchObject({ status: 'resolved' });
  });

  it('cancels a queued task: it never runs, its outcome is cancelled', async () => {
    const { url } = await serve({ worker: { module: fixture('progress-until.js') } });
    const release = join(temp.root, 'release');
    await call(`${url}/tasks`, { body: { id: 'holder', params: { progress: 0, release } } });
    const waiting = call(`${url}/tasks?wait=true`, { body: { id: 'doomed', params: { progress: 0, release: join(temp.root, 'never') } } });
    await pollUntil(`${url}/tasks/doomed`, (a) => a.status === 200, 'the task to be queued');
    const cancel = await call(`${url}/tasks/doomed`, { method: 'DELETE' });
    expect(cancel.status).toBe(202);
    expect(cancel.json).toMatchObject({ id: 'doomed', cancelled: 'queued' });
    expect((await waiting).json).toMatchObject({ id: 'doomed', status: 'failed', attempts: 0, error: { kind: 'cancelled' } });
    writeFileSync(release, '');
    // One worker, FIFO: had it not been removed, it would run (and hang) before this one.
    expect((await call(`${url}/tasks?wait=true`, { body: { id: 'after', params: { progress: 0, release } } })).json).toMatchObject({ status: 'resolved' });
    expect((await call(`${url}/tasks/doomed`, { method: 'DELETE' })).status).toBe(409);
    expect((await call(`${url}/tasks/nobody`, { method: 'DELETE' })).status).toBe(404);
  });

  it('cancels a running task: its whole process group is gone from /proc, outcome cancelled, never retried', async () => {
    const { url } = await serve({ worker: { module: fixture('hang.js') }, attempts: 3, killGrace: 500 });
    const pidFile = join(temp.root, 'grandchild');
    const waiting = call(`${url}/tasks?wait=true`, { body: { id: 'hanging', params: { pidFile } } });
    const running = await pollUntil(`${url}/tasks/hanging`, (a) => a.json?.status === 'running', 'the task to run');
    await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'), 'the grandchild to start', 20_000);
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    const { pid } = running.json;
    expect(groupMembers(pid).sort()).toEqual([pid, grandchild].sort());
    const cancel = await call(`${url}/tasks/hanging`, { method: 'DELETE' });
    expect(cancel.json).toMatchObject({ cancelled: 'running' });
    expect((await waiting).json).toMatchObject({ id: 'hanging', status: 'failed', attempts: 1, error: { kind: 'cancelled' } });
    await until(() => groupMembers(pid).length === 0, 'the process group to be gone', 20_000);
    expect(isAlive(grandchild)).toBe(false);
  });
});

describe('drain', () => {
  it('past its deadline terminates what runs and hands every unfinished delivery back to the source, acking none', async () => {
    const { url, service, pool } = await serve({ worker: { module: fixture('hang.js') }, killGrace: 300 }, { drainTimeout: 300 });
    const running = call(`${url}/tasks?wait=true`, { body: { id: 'stuck', params: {} } });
    const queued = call(`${url}/tasks?wait=true`, { body: { id: 'waiting', params: {} } });
    const view = await pollUntil(`${url}/tasks/stuck`, (a) => a.json?.status === 'running', 'the task to run');
    const acked: string[] = [];
    pool.on('attempt', ({ taskId, settlement }) => acked.push(`${taskId} ${settlement.action}`));
    const drained = service.drain();
    expect((await call(`${url}/readyz`)).json.reasons).toEqual([expect.stringMatching(/^draining/)]);
    expect(await drained).toEqual({ finished: false, handedBack: 2 });
    for (const answer of [await running, await queued]) expect(answer.status).toBe(503);
    const source = pool.source as MemorySource;
    // Back in the queue, the running one first (released to the front), neither settled.
    expect(source.size.ready).toBe(2);
    expect(source.deadLetters).toEqual([]);
    expect(acked).toEqual([]);
    expect(groupMembers(view.json.pid)).toEqual([]);
  });
});

describe('probes and metrics', () => {
  it('/healthz: 200 with the event loop delay; 503 while the loop was blocked past --max-loop-delay', async () => {
    const { url } = await serve({ worker: mark }, { maxLoopDelay: 300 });
    const ok = await pollUntil(`${url}/healthz`, (a) => a.status === 200, 'a responsive loop');
    expect(ok.json).toMatchObject({ healthy: true, loopDelayMs: expect.any(Number), maxLoopDelayMs: 300 });
    // Block this process's event loop (the service's own) for longer than the bound.
    const until = Date.now() + 1_000;
    while (Date.now() < until);
    const blocked = await call(`${url}/healthz`);
    expect(blocked.status).toBe(503);
    expect(blocked.json.loopDelayMs).toBeGreaterThan(300);
    await pollUntil(`${url}/healthz`, (a) => a.status === 200, 'the loop to be responsive again');
  });

  it('/readyz: 200 while intake runs, with the breaker and the containment in force', async () => {
    const { url } = await serve({ worker: mark });
    await call(`${url}/tasks?wait=true`, { body: { id: 'one', params: { dir: temp.dir } } });
    const ready = await call(`${url}/readyz`);
    expect(ready.status).toBe(200);
    expect(ready.json).toMatchObject({ ready: true, reasons: [], state: 'running', pausedBy: null, breaker: { state: 'closed' } });
    expect(['subreaper', 'group', 'proc']).toContain(ready.json.containment);
  });

  it('/readyz: 503 once workers cannot be started (kind spawn), saying so', async () => {
    const { url } = await serve({ worker: { command: [join(temp.root, 'no-such-command')] }, maxCrashes: 100 });
    expect((await call(`${url}/readyz`)).status).toBe(200);
    expect((await call(`${url}/tasks?wait=true`, { body: { id: 'x' } })).json).toMatchObject({ status: 'failed', error: { kind: 'spawn' } });
    const answer = await call(`${url}/readyz`);
    expect(answer.status).toBe(503);
    expect(answer.json).toMatchObject({ ready: false, breaker: { state: 'closed' } });
    expect(answer.json.reasons.join(' ')).toMatch(/workers cannot be started: .*no-such-command/);
  });

  it('/metrics is Prometheus text whose counters and histograms move with real tasks', async () => {
    const { url } = await serve({ worker: { module: fixture('mixed.js') } });
    const scrape = async () => {
      const answer = await call(`${url}/metrics`);
      expect(answer.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      return parsePrometheus(answer.text);
    };
    const before = await scrape();
    for (const outcome of ['resolved', 'error', 'crash', 'cancelled']) expect(sampleValue(before.samples, 'tidepool_tasks_total', { outcome })).toBe(0);
    expect(before.types.get('tidepool_attempt_duration_seconds')).toBe('histogram');
    expect(before.types.get('tidepool_tasks_total')).toBe('counter');
    expect(before.types.get('tidepool_process_cpu_user_seconds_total')).toBe('counter');
    expect(sampleValue(before.samples, 'tidepool_process_resident_memory_bytes')).toBeGreaterThan(0);
    for (const name of before.types.keys()) expect(name).toMatch(/^tidepool_/);

    const lines = ['resolve', 'resolve', 'throw'].map((kind, i) => JSON.stringify({ id: `t${i}`, params: { kind } })).join('\n');
    expect((await call(`${url}/tasks?wait=true`, { body: lines, type: 'application/x-ndjson' })).status).toBe(200);
    const after = await scrape();
    expect(sampleValue(after.samples, 'tidepool_tasks_total', { outcome: 'resolved' })).toBe(2);
    expect(sampleValue(after.samples, 'tidepool_tasks_total', { outcome: 'error' })).toBe(1);
    expect(sampleValue(after.samples, 'tidepool_attempts_total', { outcome: 'resolved', settlement: 'ack' })).toBe(2);
    expect(sampleValue(after.samples, 'tidepool_attempt_duration_seconds_count', { outcome: 'resolved' })).toBe(2);
    expect(sampleValue(after.samples, 'tidepool_queue_wait_seconds_count')).toBe(3);
    expect(sampleValue(after.samples, 'tidepool_spawn_duration_seconds_count')).toBe(3);
    expect(sampleValue(after.samples, 'tidepool_workers_spawned_total')).toBe(3);
    // A worker is reaped just after its outcome is told.
    await pollUntil(`${url}/metrics`, (a) => sampleValue(parsePrometheus(a.text).samples, 'tidepool_workers_reaped_total') === 3, 'three workers reaped');
    expect(sampleValue(after.samples, 'tidepool_breaker_state', { state: 'closed' })).toBe(1);
    expect(sampleValue(after.samples, 'tidepool_queue_depth')).toBe(0);
    expect(sampleValue(after.samples, 'tidepool_http_requests_total', { route: '/tasks', code: '200' })).toBe(1);
  });
});
