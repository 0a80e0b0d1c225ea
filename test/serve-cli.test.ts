import { fileURLToPath } from 'node:url';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isLoopback, resolveServeOptions } from '../src/serve/options.js';
import { alive, fixture, until } from './helpers/procs.js';
import { call, parsePrometheus, pollUntil, sampleValue, startServe, tempDirs, tidepoolOnce } from './helpers/serve.js';
import type { ServeChild } from './helpers/serve.js';

const BIN = fileURLToPath(new URL('../bin/tidepool', import.meta.url));

/**
 * `tidepool serve` as a real child process (bin/tidepool): its address, signals, drain, exit
 * codes, readiness through a crash storm, and its logs. Every process it starts must be gone
 * from /proc after each test (test/helpers/serve.ts checks).
 */

const temp = tempDirs();
const logLines = (serve: ServeChild) => serve.stderr.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
const progressUntil = ['--worker', fixture('progress-until.js')];

describe('tidepool serve: start-up', () => {
  it('prints its URL on stdout (a free port with --http-port 0) and logs it as {"msg":"listening","url"}', async () => {
    const serve = await startServe([...progressUntil, '--concurrency', '1']);
    expect(serve.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(Number(new URL(serve.url).port)).toBeGreaterThan(0);
    await until(() => logLines(serve).some((l) => l.msg === 'listening'), 'the listening line');
    expect(logLines(serve).find((l) => l.msg === 'listening')).toMatchObject({ url: serve.url, level: 30 });
    expect((await call(`${serve.url}/readyz`)).status).toBe(200);
    serve.child.kill('SIGTERM');
    expect(await serve.exited).toEqual({ code: 0, signal: null });
  });

  it('refuses to bind beyond loopback without a token: exit 2 naming the flag', async () => {
    const run = await tidepoolOnce(['serve', ...progressUntil, '--http-host', '0.0.0.0']);
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(/--http-host is "0\.0\.0\.0", not loopback: .*needs a bearer token \(--http-token or TIDEPOOL_HTTP_TOKEN\)/);
    const fromEnv = await tidepoolOnce(['serve', ...progressUntil], { TIDEPOOL_HTTP_HOST: '::', TIDEPOOL_HTTP_TOKEN: 'short' });
    expect(fromEnv.code).toBe(2);
    expect(fromEnv.stderr).toMatch(/TIDEPOOL_HTTP_TOKEN must be at least 16 characters long/);
    expect(fromEnv.stderr).not.toContain('short');
  });

  it('answers bad serve flags with exit 2 naming them; --help lists them with their defaults', async () => {
    const port = await tidepoolOnce(['serve', ...progressUntil, '--http-port', '70000']);
    expect(port.code).toBe(2);
    expect(port.stderr).toMatch(/--http-port must be a port number from 0 to 65535/);
    const file = await tidepoolOnce(['serve', ...progressUntil, 'tasks.jsonl']);
    expect(file.code).toBe(2);
    expect(file.stderr).toMatch(/serve takes no input file/);
    const help = await tidepoolOnce(['serve', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--http-port PORT +.*\(default: 8080\)/);
    expect(help.stdout).toMatch(/--drain-timeout MS +.*\(default: 25000\)/);
    expect(help.stdout).toMatch(/--max-body BYTES +.*\(default: 1048576\)/);
    const runHelp = await tidepoolOnce(['run', '--help']);
    expect(runHelp.stdout).not.toContain('--http-port');
    expect((await tidepoolOnce(['--help'])).stdout).toContain('tidepool serve --help');
  });

  it('the token is in no log line, whatever the requests (right, wrong, at trace level)', async () => {
    const token = 'tok-7f3a9c1e5b2d8f4a6c0e';
    const wrong = ['tok-7f3a9c1e5b2d8f4a6c0X', 'guess-guess-guess-guess'];
    const serve = await startServe([...progressUntil, '--log-level', 'trace'], { TIDEPOOL_HTTP_TOKEN: token });
    const released = join(temp.root, 'released');
    writeFileSync(released, '');
    const task = { id: 'secretive', params: { dir: temp.dir, progress: { step: 1 }, release: released } };
    expect((await call(`${serve.url}/tasks?wait=true`, { body: task, token })).json).toMatchObject({ status: 'resolved' });
    for (const bad of wrong) {
      expect((await call(`${serve.url}/tasks`, { body: { ...task, id: bad }, token: bad })).status).toBe(401);
      expect((await call(`${serve.url}/tasks/secretive`, { token: bad })).status).toBe(401);
    }
    expect((await call(`${serve.url}/tasks/secretive`, { token })).status).toBe(200);
    expect((await call(`${serve.url}/tasks/secretive`, { headers: { authorization: token } })).status).toBe(401);
    serve.child.kill('SIGTERM');
    expect((await serve.exited).code).toBe(0);
    // Debug lines of every request and of the worker are there; no secret is in any line.
    expect(logLines(serve).filter((l) => l.msg === 'HTTP request').length).toBeGreaterThanOrEqual(6);
    for (const secret of [token, ...wrong]) expect(serve.stderr.filter((l) => l.includes(secret))).toEqual([]);
  });
});

describe('tidepool serve: drain on SIGTERM and SIGINT', () => {
  it('SIGTERM with work in flight: intake stops (/readyz 503, POST 503), the running task finishes and is answered, the queued one never starts, exit 0', async () => {
    const release = join(temp.root, 'release');
    const serve = await startServe([...progressUntil, '--concurrency', '1']);
    const waiting = call(`${serve.url}/tasks?wait=true`, { body: { id: 'inflight', params: { dir: temp.dir, progress: 0, release } } });
    await pollUntil(`${serve.url}/tasks/inflight`, (a) => a.json?.status === 'running', 'the task to run');
    // Queued behind it (one worker): a drain never starts it, though a worker frees up.
    const behind = call(`${serve.url}/tasks?wait=true`, { body: { id: 'behind', params: { dir: temp.dir, progress: 0, release } } });
    await pollUntil(`${serve.url}/tasks/behind`, (a) => a.json?.status === 'queued', 'the second task to be queued');
    serve.noteDescendants();
    serve.child.kill('SIGTERM');
    const draining = await pollUntil(`${serve.url}/readyz`, (a) => a.status === 503, '/readyz to say draining');
    expect(draining.json.reasons.join(' ')).toMatch(/draining/);
    const refused = await call(`${serve.url}/tasks`, { body: { id: 'late', params: { dir: temp.dir, progress: 0, release } } });
    expect(refused.status).toBe(503);
    expect(refused.json.message).toMatch(/draining/);
    writeFileSync(release, '');
    expect((await waiting).json).toMatchObject({ id: 'inflight', status: 'resolved', result: { released: true } });
    expect((await behind).status).toBe(503);
    expect(await serve.exited).toEqual({ code: 0, signal: null });
    expect(temp.ran()).toEqual(['inflight']);
    const msgs = logLines(serve).map((l) => String(l.msg));
    expect(msgs.some((m) => m.startsWith('draining: intake stopped; waiting up to 25000 ms for 1 running task'))).toBe(true);
    expect(msgs.some((m) => m.startsWith('draining: every running task ended'))).toBe(true);
    expect(msgs.some((m) => m.startsWith('draining: 1 task(s) without a final outcome handed back'))).toBe(true);
  });

  it('SIGTERM past --drain-timeout: the running task is terminated, it and the queued one are handed back (503 to their waiters), exit 0, no process left', async () => {
    const serve = await startServe(['--worker', fixture('hang.js'), '--concurrency', '1', '--drain-timeout', '300', '--kill-grace', '300']);
    const pidFile = join(temp.root, 'grandchild');
    const running = call(`${serve.url}/tasks?wait=true`, { body: { id: 'stuck', params: { pidFile } } });
    const queued = call(`${serve.url}/tasks?wait=true`, { body: { id: 'never', params: {} } });
    const view = await pollUntil(`${serve.url}/tasks/stuck`, (a) => a.json?.status === 'running', 'the task to run');
    await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'), 'the grandchild to start', 20_000);
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    serve.noteDescendants();
    expect(serve.seen).toContain(view.json.pid);
    serve.child.kill('SIGTERM');
    for (const answer of [await running, await queued]) {
      expect(answer.status).toBe(503);
      expect(answer.json.message).toMatch(/handed back to the source, never acked/);
    }
    expect(await serve.exited).toEqual({ code: 0, signal: null });
    const msgs = logLines(serve).map((l) => String(l.msg));
    expect(msgs.some((m) => /deadline of 300 ms passed with 1 task\(s\) running; terminating them/.test(m))).toBe(true);
    expect(msgs.some((m) => /^draining: 2 task\(s\) without a final outcome handed back/.test(m))).toBe(true);
    await until(() => alive([...serve.seen, grandchild]).length === 0, 'every process of the service to be gone', 10_000);
  });

  it('a second signal stops at once: exit 130 after SIGINT twice, no process left', async () => {
    const serve = await startServe(['--worker', fixture('hang.js'), '--concurrency', '1', '--drain-timeout', '600000']);
    const pidFile = join(temp.root, 'grandchild');
    const waiting = call(`${serve.url}/tasks?wait=true`, { body: { id: 'stuck', params: { pidFile } } }).catch((err: Error) => err);
    await pollUntil(`${serve.url}/tasks/stuck`, (a) => a.json?.status === 'running', 'the task to run');
    await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'), 'the grandchild to start', 20_000);
    serve.noteDescendants();
    serve.child.kill('SIGINT');
    await pollUntil(`${serve.url}/readyz`, (a) => a.status === 503, 'the drain to begin');
    serve.child.kill('SIGINT');
    // Well before the drain's deadline of ten minutes.
    expect(await serve.exited).toEqual({ code: 130, signal: null });
    expect(logLines(serve).some((l) => String(l.msg).startsWith('SIGINT again: stopping now'))).toBe(true);
    await waiting;
    await until(() => alive([...serve.seen, Number(readFileSync(pidFile, 'utf8'))]).length === 0, 'every process of the service to be gone', 10_000);
  });
});

describe('tidepool serve: readiness', () => {
  it('goes 503 through a crash storm (breaker open, with trips and retryAt) and back to 200 once workers stop crashing', async () => {
    const marker = join(temp.root, 'crash');
    writeFileSync(marker, '');
    const serve = await startServe([
      '--worker',
      fixture('crash-while-marker.js'),
      '--env',
      `TIDEPOOL_TEST_MARKER=${marker}`,
      '--concurrency',
      '2',
      '--attempts',
      '1',
      '--max-crashes',
      '2',
      '--breaker-cooldown',
      '200',
      '--breaker-max-cooldown',
      '400',
    ]);
    expect((await call(`${serve.url}/readyz`)).status).toBe(200);
    const tasks = Array.from({ length: 40 }, (_, i) => JSON.stringify({ id: `t${i}` })).join('\n');
    expect((await call(`${serve.url}/tasks`, { body: tasks, type: 'application/x-ndjson' })).status).toBe(202);
    const storm = await pollUntil(`${serve.url}/readyz`, (a) => a.status === 503 && a.json?.breaker?.state === 'open', 'the breaker to open');
    expect(storm.json).toMatchObject({ ready: false, breaker: { state: 'open', trips: expect.any(Number), retryAt: expect.any(Number) } });
    expect(storm.json.breaker.trips).toBeGreaterThanOrEqual(1);
    expect(storm.json.reasons.join(' ')).toMatch(/crash breaker/);
    expect(['subreaper', 'group', 'proc']).toContain(storm.json.containment);
    const metrics = parsePrometheus((await call(`${serve.url}/metrics`)).text);
    expect(sampleValue(metrics.samples, 'tidepool_breaker_trips_total')).toBeGreaterThanOrEqual(1);
    expect(sampleValue(metrics.samples, 'tidepool_tasks_total', { outcome: 'crash' })).toBeGreaterThanOrEqual(3);
    rmSync(marker);
    const calm = await pollUntil(`${serve.url}/readyz`, (a) => a.status === 200, 'readiness to come back', 30_000);
    expect(calm.json).toMatchObject({ ready: true, reasons: [], breaker: { state: 'closed' } });
    serve.noteDescendants();
    serve.child.kill('SIGTERM');
    expect((await serve.exited).code).toBe(0);
  });
});

describe('serve options', () => {
  it('tells loopback from the rest', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]', '::ffff:127.0.0.1']) expect(isLoopback(host), host).toBe(true);
    for (const host of ['0.0.0.0', '::', '10.0.0.1', '127.0.0.1.nip.io', 'example.com', '128.0.0.1']) expect(isLoopback(host), host).toBe(false);
  });

  it('names the bad option', () => {
    expect(() => resolveServeOptions({ maxBody: 0 })).toThrow(expect.objectContaining({ code: 'TIDEPOOL_ERR_OPTION_INVALID', option: 'maxBody' }));
    expect(() => resolveServeOptions({ httpToken: 'has space in it 12345' })).toThrow(expect.objectContaining({ option: 'httpToken' }));
    expect(() => resolveServeOptions({ nope: 1 } as never)).toThrow(expect.objectContaining({ option: 'nope' }));
    expect(resolveServeOptions({ httpHost: '0.0.0.0', httpToken: 'a'.repeat(16) })).toMatchObject({ httpHost: '0.0.0.0', httpPort: 8080 });
  });
});

describe('tidepool serve: logs that cannot be written', () => {
  it('drains and exits 0 on SIGTERM when the reader of its stderr has gone (EPIPE)', async () => {
    const child = spawn(process.execPath, [BIN, 'serve', ...progressUntil, '--http-port', '0', '--state-dir', 'none'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
    // From now on nobody reads its stderr: every log line meets EPIPE (it waited forever for
    // them to be written out before).
    child.stderr!.destroy();
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
