import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { AttemptStart, TaskResult } from '../src/index.js';
import { failed, trackPools } from './helpers/pools.js';
import { fixture, groupMembers, isAlive, until } from './helpers/procs.js';

/**
 * `pool.cancel(taskId)` with real processes: a task not started never runs (a file it would
 * write stays absent); a running one is stopped with its whole process group (checked in
 * /proc) and ends `cancelled`, never retried.
 */

const dir = mkdtempSync(join(tmpdir(), 'tidepool-cancel-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;
const file = (name: string) => join(dir, `${++files}-${name}`);

const { startPool } = trackPools({ concurrency: 1, attempts: 3, retryDelay: 1, killGrace: 2_000, logLevel: 'silent' });

/** Resolves with the next `attempt:start` of `taskId`. */
const started = (pool: Awaited<ReturnType<typeof startPool>>, taskId: string) =>
  new Promise<AttemptStart>((resolve) => {
    const listener = (start: AttemptStart) => {
      if (start.taskId !== taskId) return;
      pool.off('attempt:start', listener);
      resolve(start);
    };
    pool.on('attempt:start', listener);
  });

describe('cancel of a task not started', () => {
  it('a task waiting behind a running one never runs: queued, cancelled with 0 attempts, acked', async () => {
    const pool = await startPool({ worker: { module: fixture('side-effect.js') } });
    const blocker = file('blocker');
    const release = file('release');
    const proof = file('proof');
    const outcomes: TaskResult[] = [];
    pool.on('outcome', (result) => outcomes.push(result));
    // With concurrency 1 the second task waits while the first runs until released.
    const first = pool.run({ id: 'first', params: { file: blocker, release } });
    await until(() => existsSync(blocker), 'the first task to run');
    const waiting = pool.run({ id: 'waiting', params: { file: proof } });
    expect(pool.queued).toBe(1);
    expect(pool.cancel('waiting')).toBe('queued');
    expect(await waiting).toMatchObject({ id: 'waiting', status: 'failed', attempts: 0, error: { kind: 'cancelled' } });
    expect(pool.queued).toBe(0);
    writeFileSync(release, '');
    expect(await first).toMatchObject({ status: 'resolved' });
    // A later task runs: the pool went past the cancelled one, which never ran.
    expect(await pool.run({ id: 'after', params: { file: file('after') } })).toMatchObject({ status: 'resolved' });
    expect(existsSync(proof)).toBe(false);
    expect(outcomes.filter((o) => o.id === 'waiting')).toHaveLength(1);
    // Acked, not dead-lettered: a cancel is no fault.
    expect(pool.source.deadLetters).toEqual([]);
    expect(pool.cancel('waiting')).toBe('unknown');
  });

  it('a task in the pool source, not yet delivered, is dropped from it (pool.queued counts it until then)', async () => {
    const pool = await startPool({ worker: { module: fixture('hang.js') } });
    const running = pool.run({ id: 'running', params: {} });
    await started(pool, 'running');
    const proof = file('never');
    const waiting = [pool.run({ id: 'w1', params: { pidFile: proof } }), pool.run({ id: 'w2', params: { pidFile: proof } })];
    // Prefetch follows concurrency: one waits in the backlog or the source; both are queued.
    expect(pool.queued).toBe(2);
    expect(pool.cancel('w2')).toBe('queued');
    expect(pool.cancel('w1')).toBe('queued');
    expect(pool.queued).toBe(0);
    for (const result of await Promise.all(waiting)) expect(failed(result)).toMatchObject({ kind: 'cancelled' });
    expect(pool.cancel('running')).toBe('running');
    expect(failed(await running).kind).toBe('cancelled');
    expect(existsSync(proof)).toBe(false);
  });

  it('a task waiting for its retry delay is cancelled with the attempts it made', async () => {
    const pool = await startPool({ worker: { module: fixture('throw.js') }, retryDelay: 60_000 });
    const attempts: number[] = [];
    pool.on('attempt', (a) => attempts.push(a.attempt));
    const result = pool.run({ id: 'retrying', params: {} });
    await until(() => attempts.length === 1 && pool.queued === 1, 'the first attempt to fail and wait for its retry');
    expect(pool.cancel('retrying')).toBe('queued');
    expect(await result).toMatchObject({ status: 'failed', attempts: 1, error: { kind: 'cancelled' } });
    expect(pool.queued).toBe(0);
    expect(pool.source.deadLetters).toEqual([]);
  });
});

describe('cancel of a running task', () => {
  it("a module task's whole process group is stopped (its grandchild too); cancelled with attempts 1 of 3", async () => {
    const pool = await startPool({ worker: { module: fixture('hang.js') } });
    const pidFile = file('grandchild');
    const attemptsSeen: number[] = [];
    pool.on('attempt', (a) => attemptsSeen.push(a.attempt));
    const result = pool.run({ id: 'hung', params: { pidFile } });
    const start = await started(pool, 'hung');
    await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'), 'the grandchild to start');
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    expect(start.pid).not.toBeNull();
    const group = start.pid!;
    expect(groupMembers(group)).toEqual(expect.arrayContaining([group, grandchild]));
    expect(pool.cancel('hung')).toBe('running');
    const final = await result;
    // run() resolves once the worker is reaped: nothing of its group is left by then.
    expect(groupMembers(group)).toEqual([]);
    expect(isAlive(grandchild)).toBe(false);
    expect(final).toMatchObject({ status: 'failed', attempts: 1, error: { kind: 'cancelled' } });
    expect(attemptsSeen).toEqual([1]);
    expect(pool.cancel('hung')).toBe('unknown');
  });

  it('a module handler sees its AbortSignal fire with a reason saying it was cancelled', async () => {
    const pool = await startPool({ worker: { module: fixture('abort-reason.js') } });
    const reasonFile = file('reason');
    const result = pool.run({ id: 'aborted', params: { file: reasonFile } });
    await started(pool, 'aborted');
    // The handler is loaded and waiting on its signal (before that, SIGTERM simply ends it).
    await until(() => existsSync(`${reasonFile}.started`), 'the handler to run');
    expect(pool.cancel('aborted')).toBe('running');
    expect(failed(await result).kind).toBe('cancelled');
    expect(readFileSync(reasonFile, 'utf8')).toMatch(/cancelled/);
  });

  it('a command task and the grandchild it started are stopped; cancelled, not retried', async () => {
    const pidFile = file('command-grandchild');
    const pool = await startPool({ worker: { command: ['sh', fixture('hang.sh'), pidFile] } });
    const result = pool.run({ id: 'command' });
    const start = await started(pool, 'command');
    await until(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').endsWith('\n'), 'the grandchild to start');
    const grandchild = Number(readFileSync(pidFile, 'utf8'));
    expect(pool.cancel('command')).toBe('running');
    expect(await result).toMatchObject({ status: 'failed', attempts: 1, error: { kind: 'cancelled' } });
    expect(groupMembers(start.pid!)).toEqual([]);
    expect(isAlive(grandchild)).toBe(false);
  });

  it('a reused worker that was cancelled is not reused: the next task gets a new process', async () => {
    const pool = await startPool({ worker: { module: fixture('hang.js') }, maxTasksPerWorker: 5 });
    const first = pool.run({ id: 'first', params: {} });
    const a = await started(pool, 'first');
    expect(pool.cancel('first')).toBe('running');
    expect(failed(await first).kind).toBe('cancelled');
    const second = pool.run({ id: 'second', params: {} });
    const b = await started(pool, 'second');
    expect(b.pid).not.toBe(a.pid);
    expect(isAlive(a.pid!)).toBe(false);
    expect(pool.cancel('second')).toBe('running');
    expect(failed(await second).kind).toBe('cancelled');
  });
});

describe('cancel of what is not in flight', () => {
  it('answers unknown for an id never seen and for a finished task, and names a bad argument', async () => {
    const pool = await startPool({ worker: { module: fixture('echo.js') } });
    expect(pool.cancel('never-seen')).toBe('unknown');
    expect(await pool.run({ id: 'done', params: {} })).toMatchObject({ status: 'resolved' });
    expect(pool.cancel('done')).toBe('unknown');
    expect(() => pool.cancel(42 as unknown as string)).toThrow(expect.objectContaining({ code: 'TIDEPOOL_ERR_ARGUMENT', message: expect.stringContaining('taskId') }));
  });
});
