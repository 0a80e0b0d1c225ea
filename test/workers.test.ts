import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createPool } from '../src/index.js';
import type { MemorySource, Pool, PoolInternals, PoolOptions, WorkerReport } from '../src/index.js';
import { MAX_OUTPUT } from '../src/process/driver.js';
import { failed } from './helpers/pools.js';
import { alive, fixture, until } from './helpers/procs.js';

/**
 * Real module and command workers through the whole pool: every outcome kind, and no process
 * (nor grandchild) left behind, checked in /proc.
 */

const dir = mkdtempSync(join(tmpdir(), 'tidepool-workers-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let pools: Pool<MemorySource>[] = [];
const spawned = new Set<number>();

afterEach(async () => {
  for (const pool of pools) await pool.stop().catch(() => {});
  pools = [];
  // Every worker this test started is gone once the pool has stopped.
  expect(alive(spawned)).toEqual([]);
  spawned.clear();
});

async function startPoolWith(options: Partial<PoolOptions> & Pick<PoolOptions, 'worker'>, internals?: PoolInternals): Promise<Pool<MemorySource>> {
  const pool = createPool({
    concurrency: 2,
    attempts: 1,
    retryDelay: 1,
    killGrace: 300,
    logLevel: 'silent',
    ...options,
  }, internals);
  pool.on('worker:spawned', ({ pid }) => spawned.add(pid));
  pools.push(pool);
  await pool.start();
  return pool;
}

const startPool = (options: Partial<PoolOptions> & Pick<PoolOptions, 'worker'>) => startPoolWith(options);


describe('module workers', () => {
  it('resolves with the handler result, in a fresh process per task', async () => {
    const pool = await startPool({ worker: { module: fixture('echo.js') } });
    const [a, b] = await Promise.all([pool.run({ params: { n: 1 } }), pool.run({ params: { n: 2 } })]);
    expect(a).toMatchObject({ status: 'resolved', attempts: 1, result: { params: { n: 1 }, attempt: 1 } });
    expect(b).toMatchObject({ status: 'resolved', result: { params: { n: 2 } } });
    const pids = [a, b].map((r) => (r.status === 'resolved' ? (r.result as { pid: number }).pid : 0));
    expect(new Set(pids).size).toBe(2);
    expect(pids).not.toContain(process.pid);
  });

  it('fails with kind error when the handler throws, and retries it', async () => {
    const pool = await startPool({ worker: { module: fixture('throw.js') }, attempts: 3 });
    const attempts: number[] = [];
    pool.on('attempt', (a) => attempts.push(a.attempt));
    const result = await pool.run({ id: 't1', params: { why: 'bad day' } });
    expect(failed(result)).toEqual({ kind: 'error', name: 'Error', message: 'boom: bad day', stack: expect.stringContaining('boom: bad day') });
    expect(result).toMatchObject({ id: 't1', attempts: 3 });
    expect(attempts).toEqual([1, 2, 3]);
    expect(pool.source.deadLetters).toHaveLength(1);
  });

  it('dead-letters at once when the handler throws NonRetryableError', async () => {
    const pool = await startPool({ worker: { module: fixture('non-retryable.js') }, attempts: 5 });
    const result = await pool.run({});
    expect(failed(result)).toMatchObject({ kind: 'error', message: 'this input will never work' });
    expect(result.attempts).toBe(1);
    expect(pool.source.deadLetters[0]).toMatchObject({ reason: 'error (not retryable)' });
  });

  it('fails with kind crash and the exit code when the process exits mid-task', async () => {
    const pool = await startPool({ worker: { module: fixture('exit.js') } });
    expect(failed(await pool.run({ params: { code: 7 } }))).toMatchObject({ kind: 'crash', exitCode: 7, signal: null });
  });

  it('fails with kind crash and the signal when the process is killed', async () => {
    const pool = await startPool({ worker: { module: fixture('signal.js') } });
    expect(failed(await pool.run({ params: { signal: 'SIGKILL' } }))).toMatchObject({ kind: 'crash', signal: 'SIGKILL' });
  });

  // A single-use worker's deadline runs from its start: these timeouts leave room for Node to
  // start and load the handler on a loaded machine (two CPU burners), so the handler is
  // running when the deadline passes.
  it('times out a hung task and kills its whole process group, grandchildren included', async () => {
    const pool = await startPool({ worker: { module: fixture('hang.js') }, timeout: 2_000 });
    const pidFile = join(dir, 'hang-module.pid');
    const reaped: WorkerReport[] = [];
    pool.on('worker:reaped', (r) => reaped.push(r));
    expect(failed(await pool.run({ params: { pidFile } }))).toMatchObject({ kind: 'timeout' });
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    await pool.drain();
    expect(reaped).toHaveLength(1);
    // The grandchild was killed with its group when the worker went; allow the kernel to finish.
    await until(() => alive([grandchild]).length === 0, `grandchild ${grandchild} to die`, 2_000);
  });

  it('SIGKILLs a worker that ignores SIGTERM after the grace period', async () => {
    const pool = await startPool({ worker: { module: fixture('stubborn.js') }, timeout: 2_000, killGrace: 200 });
    const reaped: WorkerReport[] = [];
    pool.on('worker:reaped', (r) => reaped.push(r));
    expect(failed(await pool.run({}))).toMatchObject({ kind: 'timeout' });
    await pool.drain();
    expect(reaped[0]).toMatchObject({ signal: 'SIGKILL', last: 'timeout' });
  });

  it('fires ctx.signal at the deadline so the handler can clean up', async () => {
    const pool = await startPool({ worker: { module: fixture('abortable.js') }, timeout: 2_000, killGrace: 2_000 });
    const file = join(dir, 'aborted.txt');
    expect(failed(await pool.run({ params: { file } }))).toMatchObject({ kind: 'timeout' });
    await pool.drain();
    expect(readFileSync(file, 'utf8')).toBe('aborted\n');
  });

  it.each(['perl', 'node'] as const)('returns a result larger than a pipe buffer (%s spawn host)', async (spawnHost) => {
    const pool = await startPoolWith({ worker: { module: fixture('big-result.js') } }, { spawnHost });
    const result = await pool.run({ params: { size: 1_000_000 } });
    expect(result.status).toBe('resolved');
    expect((result as { result: { blob: string } }).result.blob).toHaveLength(1_000_000);
  });

  it('gives a handler that reads ctx.signal after the deadline an aborted signal', async () => {
    const pool = await startPool({ worker: { module: fixture('late-signal.js') }, timeout: 2_000, killGrace: 3_000 });
    const file = join(dir, 'late-signal.txt');
    expect(failed(await pool.run({ params: { file, ms: 2_600 } }))).toMatchObject({ kind: 'timeout' });
    await pool.drain();
    expect(readFileSync(file, 'utf8')).toBe('aborted: true\n');
  });

  it('fails with kind memory when the worker exceeds its memory cap', async () => {
    const pool = await startPool({ worker: { module: fixture('oom.js') }, memoryLimit: 64 });
    expect(failed(await pool.run({}))).toMatchObject({ kind: 'memory' });
  });

  it('start() rejects once, naming the error, when the module throws while loading', async () => {
    await expect(startPool({ worker: { module: fixture('load-error.js') } })).rejects.toMatchObject({
      code: 'TIDEPOOL_ERR_WORKER_LOAD',
      message: expect.stringMatching(/load-error\.js cannot be loaded:[\s\S]*cannot load: missing configuration/),
    });
  });

  it('start() rejects when the module has no default export function', async () => {
    await expect(startPool({ worker: { module: fixture('no-default.js') } })).rejects.toMatchObject({
      code: 'TIDEPOOL_ERR_WORKER_LOAD',
      message: expect.stringContaining('no default export function'),
    });
  });

  it("start() rejects with a syntax error's file and line", async () => {
    const path = join(dir, 'syntax-error.js');
    writeFileSync(path, 'export default async function (task) {\n  return task +;\n}\n');
    const err = await startPool({ worker: { module: path } }).then(() => null, (e: unknown) => e as Error & { code: string });
    expect(err?.code).toBe('TIDEPOOL_ERR_WORKER_LOAD');
    expect(err?.message).toContain(`${path}:2`);
    expect(err?.message).toContain('SyntaxError');
  });

  it('fails with kind spawn when the module loaded at start but throws while loading in a worker', async () => {
    const mark = join(dir, `load-mark-${Date.now()}`);
    const pool = await startPool({ worker: { module: fixture('load-error-later.js') }, env: [`LOAD_MARK=${mark}`] });
    const error = failed(await pool.run({}));
    expect(error.kind).toBe('spawn');
    expect(error.message).toContain('cannot load: missing configuration');
  });

  it.each(['bigint', 'function', 'symbol'])('fails without retry when the result cannot be sent as JSON (a %s: JSON would drop a function or symbol and resolve null)', async (kind) => {
    const pool = await startPool({ worker: { module: fixture('unsendable.js') }, attempts: 3 });
    const result = await pool.run({ params: { kind } });
    expect(failed(result).message).toMatch(/cannot be sent as JSON/);
    expect(result.attempts).toBe(1);
  });

  it('gives workers an allowlisted environment, not the manager one', async () => {
    process.env.TIDEPOOL_TEST_SECRET = 'hunter2';
    try {
      const pool = await startPool({ worker: { module: fixture('env.js') }, env: ['KEPT=yes'] });
      const result = await pool.run({});
      expect(result.status).toBe('resolved');
      const env = (result as { result: Record<string, string> }).result;
      expect(env.KEPT).toBe('yes');
      expect(env.PATH).toBe(process.env.PATH);
      expect(env.TIDEPOOL_TEST_SECRET).toBeUndefined();
      expect(env.NODE_EXTRA_CA_CERTS).toBeUndefined();
    } finally {
      delete process.env.TIDEPOOL_TEST_SECRET;
    }
  });

  it('reuses a worker for up to maxTasksPerWorker tasks', async () => {
    const pool = await startPool({ worker: { module: fixture('slow.js') }, concurrency: 1, maxTasksPerWorker: 3 });
    const results = [];
    for (let i = 0; i < 4; i++) results.push(await pool.run({ params: { ms: 1 } }));
    const pids = results.map((r) => (r as { result: { pid: number } }).result.pid);
    expect(pids[0]).toBe(pids[1]);
    expect(pids[1]).toBe(pids[2]);
    expect(pids[3]).not.toBe(pids[0]);
  });
});

// Both editions of the spawn host (src/child/spawn-host.pl and spawn-host.js) pass the same tests.
describe.each(['perl', 'node'] as const)('command workers (%s spawn host)', (edition) => {
  const startPool = (options: Partial<PoolOptions> & Pick<PoolOptions, 'worker'>) => startPoolWith(options, { spawnHost: edition });

  it('resolves with stdout parsed as JSON (the task arrives on stdin)', async () => {
    const pool = await startPool({ worker: { command: ['cat'] } });
    const result = await pool.run({ id: 'c1', params: { x: [1, 2] } });
    expect(result).toMatchObject({ status: 'resolved', result: { id: 'c1', params: { x: [1, 2] } } });
  });

  it('resolves with text when stdout is not JSON', async () => {
    const pool = await startPool({ worker: { command: ['sh', '-c', 'cat >/dev/null; echo "not {json"'] } });
    expect(await pool.run({})).toMatchObject({ status: 'resolved', result: 'not {json\n' });
  });

  it('fails with kind error and the stderr tail on a non-zero exit', async () => {
    const pool = await startPool({ worker: { command: ['sh', '-c', 'echo "disk full" >&2; exit 3'] }, attempts: 2 });
    const result = await pool.run({});
    expect(failed(result)).toMatchObject({ kind: 'error', message: 'command exited with code 3: disk full' });
    expect(result.attempts).toBe(2);
  });

  it('dead-letters at once on exit code 65', async () => {
    const pool = await startPool({ worker: { command: ['sh', '-c', 'exit 65'] }, attempts: 3 });
    const result = await pool.run({});
    expect(failed(result).kind).toBe('error');
    expect(result.attempts).toBe(1);
  });

  it('fails with kind crash when the command dies from a signal', async () => {
    const pool = await startPool({ worker: { command: ['sh', '-c', 'kill -9 $$'] } });
    expect(failed(await pool.run({}))).toMatchObject({ kind: 'crash', signal: 'SIGKILL' });
  });

  it('fails with kind spawn when the command does not exist', async () => {
    const pool = await startPool({ worker: { command: ['/nonexistent/tidepool-job'] } });
    const error = failed(await pool.run({}));
    expect(error.kind).toBe('spawn');
    expect(error.message).toContain('ENOENT');
  });

  it('times out a hung command and kills the grandchild it started', async () => {
    const pidFile = join(dir, 'hang-command.pid');
    const pool = await startPool({ worker: { command: ['sh', fixture('hang.sh'), pidFile] }, timeout: 500 });
    expect(failed(await pool.run({}))).toMatchObject({ kind: 'timeout' });
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    await pool.drain();
    await until(() => alive([grandchild]).length === 0, `grandchild ${grandchild} to die`, 2_000);
  });

  it('fails with kind memory when the command exceeds its memory cap', async () => {
    // Python would do; a shell that grows a string is everywhere.
    const grow = 'cat >/dev/null; s=x; while :; do s="$s$s"; done';
    const pool = await startPool({ worker: { command: ['sh', '-c', grow] }, memoryLimit: 32 });
    expect(failed(await pool.run({}))).toMatchObject({ kind: 'memory' });
  });

  it('fails without retry when stdout passes the output cap, and kills the command', async () => {
    const pool = await startPool({ worker: { command: ['sh', '-c', `head -c ${MAX_OUTPUT + 1} /dev/zero; sleep 30`] }, attempts: 3 });
    const result = await pool.run({});
    expect(failed(result)).toMatchObject({ kind: 'error', message: `the command wrote more than ${MAX_OUTPUT} bytes to stdout` });
    expect(result.attempts).toBe(1);
  });

  it('passes input larger than a pipe buffer, and does not hang on a command that never reads it', async () => {
    const big = { id: 'big', blob: 'x'.repeat(300_000) };
    const echo = await startPool({ worker: { command: ['cat'] } });
    expect(await echo.run(big)).toMatchObject({ status: 'resolved', result: big });
    const deaf = await startPool({ worker: { command: ['sh', '-c', 'echo ignored'] } });
    expect(await deaf.run(big)).toMatchObject({ status: 'resolved', result: 'ignored\n' });
  });

  it('gives a warm spare its task when one arrives', async () => {
    const pool = await startPool({ worker: { command: ['cat'] }, spares: 1, concurrency: 1 });
    const spawnedFirst = new Promise<void>((resolve) => pool.once('worker:spawned', () => resolve()));
    await spawnedFirst;
    expect(await pool.run({ id: 'late' })).toMatchObject({ status: 'resolved', result: { id: 'late' } });
  });

  it('runs the command in cwd, with the allowlisted environment', async () => {
    const pool = await startPool({ worker: { command: ['sh', '-c', 'cat >/dev/null; echo "$PWD $EXTRA ${SECRET_THING:-unset}"'] }, cwd: dir, env: ['EXTRA=yes'] });
    process.env.SECRET_THING = 'leaked';
    try {
      expect(await pool.run({})).toMatchObject({ status: 'resolved', result: `${dir} yes unset\n` });
    } finally {
      delete process.env.SECRET_THING;
    }
  });

  it('refuses a cwd that does not exist at start, and fails a task with kind spawn when it went away later', async () => {
    expect(() => createPool({ worker: { command: ['cat'] }, cwd: join(dir, 'missing') })).toThrow(expect.objectContaining({ option: 'cwd' }));
    const gone = join(dir, 'gone');
    mkdirSync(gone);
    const pool = await startPool({ worker: { command: ['cat'] }, cwd: gone });
    rmSync(gone, { recursive: true });
    const error = failed(await pool.run({}));
    expect(error.kind).toBe('spawn');
    expect(error.message).toMatch(/ENOENT/);
  });

  it.runIf(process.getuid?.() === 0)('runs the command as uid and gid (needs root)', async () => {
    const pool = await startPool({ worker: { command: ['sh', '-c', 'cat >/dev/null; echo "$(id -u) $(id -g) $(id -G)"'] }, uid: 65534, gid: 65534 });
    expect(await pool.run({})).toMatchObject({ status: 'resolved', result: '65534 65534 65534\n' });
  });
});

describe('the pool', () => {
  it('never runs more than concurrency workers at once', async () => {
    const pool = await startPool({ worker: { module: fixture('slow.js') }, concurrency: 2 });
    let live = 0;
    let peak = 0;
    pool.on('worker:spawned', () => (peak = Math.max(peak, ++live)));
    pool.on('worker:reaped', () => live--);
    const results = await Promise.all(Array.from({ length: 6 }, () => pool.run({ params: { ms: 30 } })));
    expect(results.every((r) => r.status === 'resolved')).toBe(true);
    expect(peak).toBe(2);
  });

  it('keeps warm spares that take the next task', async () => {
    const pool = await startPool({ worker: { module: fixture('slow.js') }, spares: 1, concurrency: 2 });
    await until(() => pool.liveProcesses.length === 1, 'the spare to start');
    const spare = pool.liveProcesses[0];
    const result = await pool.run({ params: { ms: 1 } });
    expect((result as { result: { pid: number } }).result.pid).toBe(spare);
  });

  it('returns malformed tasks at once, without a process', async () => {
    const pool = await startPool({ worker: { module: fixture('echo.js') } });
    expect(failed(await pool.run([1, 2]))).toMatchObject({ kind: 'malformed' });
    expect(failed(await pool.run({ id: 42 }))).toMatchObject({ kind: 'malformed' });
    expect(spawned.size).toBe(0);
  });

  it('trips the crash breaker: intake pauses after maxCrashes crashes', async () => {
    const pool = await startPool({
      worker: { module: fixture('exit.js') },
      maxCrashes: 2,
      crashWindow: 10_000,
      breakerCooldown: 60_000,
    });
    const trips: number[] = [];
    pool.on('breaker:tripped', ({ crashes }) => trips.push(crashes));
    await Promise.all([pool.run({}), pool.run({}), pool.run({})]);
    expect(trips).toEqual([3]);
    expect(pool.actor.getSnapshot().value).toBe('paused');
    // Paused: a new task waits instead of spawning.
    const before = spawned.size;
    void pool.run({}).catch(() => {});
    await new Promise((r) => setTimeout(r, 200));
    expect(spawned.size).toBe(before);
  });

  it('drain waits for retries still in backoff', async () => {
    const pool = await startPool({ worker: { module: fixture('throw.js') }, attempts: 2, retryDelay: 200 });
    const run = pool.run({});
    await until(() => pool.source.size.delayed === 1, 'the retry to be scheduled');
    await pool.drain();
    expect(await run).toMatchObject({ status: 'failed', attempts: 2 });
  });

  it('stop kills running workers and rejects unfinished tasks', async () => {
    const pool = await startPool({ worker: { module: fixture('stubborn.js') }, killGrace: 100 });
    const run = pool.run({});
    await until(() => spawned.size === 1, 'the worker to start');
    await pool.stop();
    await expect(run).rejects.toMatchObject({ code: 'TIDEPOOL_ERR_POOL_STOPPED' });
    expect(alive(spawned)).toEqual([]);
  });
});
