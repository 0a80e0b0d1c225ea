import { existsSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { AttemptEvent } from '../src/index.js';
import { failed, trackPools } from './helpers/pools.js';
import { fixture, until } from './helpers/procs.js';

/**
 * Outcomes say what the worker said: errors keep their name, code, stack, cause and own
 * fields; an empty message is never the only clue; a handler that returns nothing resolves
 * with null. Each case runs with single-use workers (started by the spawn host) and reused
 * ones (forked with IPC): one rule for both.
 */

const { spawned, startPool } = trackPools({ concurrency: 2, attempts: 1, killGrace: 300, logLevel: 'silent' });

describe.each([1, 2])('outcomes with maxTasksPerWorker %i', (maxTasksPerWorker) => {
  it('a thrown error keeps its name, message, code, stack, cause and own fields, in the final outcome and the attempt event', async () => {
    const pool = await startPool({ worker: { module: fixture('http-error.js') }, maxTasksPerWorker });
    const attempts: AttemptEvent[] = [];
    pool.on('attempt', (a) => attempts.push(a));
    const error = failed(await pool.run({ id: 'h' }));
    expect(error).toMatchObject({
      kind: 'error',
      name: 'HttpError',
      message: 'upstream unavailable',
      code: 'E_HTTP',
      status: 503,
      stack: expect.stringContaining('upstream unavailable'),
      cause: { name: 'Error', message: 'ECONNRESET', stack: expect.stringContaining('ECONNRESET') },
    });
    await expect.poll(() => attempts.length).toBe(1);
    expect(attempts[0].outcome).toMatchObject({ error: { cause: { message: 'ECONNRESET' }, status: 503 } });
    // What the CLI prints: the same, as JSON.
    expect(JSON.parse(JSON.stringify(error))).toEqual(error);
  });

  it('an error thrown without a message is named in the outcome message', async () => {
    const pool = await startPool({ worker: { module: fixture('bare-error.js') }, maxTasksPerWorker });
    const error = failed(await pool.run({ id: 'd' }));
    expect(error).toMatchObject({ kind: 'error', name: 'DelayedError', message: 'DelayedError (thrown without a message)' });
  });

  it('a handler that returns nothing resolves with null', async () => {
    const pool = await startPool({ worker: { module: fixture('undefined-result.js') }, maxTasksPerWorker });
    const result = await pool.run({ id: 'u' });
    expect(result).toMatchObject({ status: 'resolved', result: null });
    expect('result' in JSON.parse(JSON.stringify(result))).toBe(true);
  });
});

describe.each([1, 2])('one rule for loading and results, with maxTasksPerWorker %i', (maxTasksPerWorker) => {
  const mark = () => join(tmpdir(), `tidepool-load-mark-${process.pid}-${maxTasksPerWorker}-${Math.random()}`);

  it('a handler still loading when --spawn-timeout passes fails with kind spawn, not timeout', async () => {
    const pool = await startPool({
      worker: { module: fixture('slow-load.js') },
      env: [`LOAD_MARK=${mark()}`, 'SLOW_LOAD_MS=5000'],
      spawnTimeout: 1000,
      timeout: 3000,
      maxTasksPerWorker,
    });
    const started = Date.now();
    const error = failed(await pool.run({ id: 'slow' }));
    expect(error.kind).toBe('spawn');
    expect(Date.now() - started).toBeLessThan(2900);
  });

  it('a handler whose loading never finishes fails with kind spawn', async () => {
    const pool = await startPool({
      worker: { module: fixture('slow-load.js') },
      env: [`LOAD_MARK=${mark()}`, 'SLOW_LOAD_MS=never'],
      spawnTimeout: 1000,
      maxTasksPerWorker,
    });
    expect(failed(await pool.run({ id: 'never' })).kind).toBe('spawn');
  });

  it('a result past the reply cap fails, without retry, whatever carries it', async () => {
    const pool = await startPool({ worker: { module: fixture('big-string.js') }, attempts: 3, maxTasksPerWorker });
    const result = await pool.run({ id: 'big', params: { mb: 20 } });
    expect(failed(result)).toMatchObject({ kind: 'error', message: expect.stringContaining('more than the 16777216') });
    expect(result.attempts).toBe(1);
  });

  it('a handler stopped by the pool (not by its deadline) is told so by its abort reason', async () => {
    const pool = await startPool({ worker: { module: fixture('abort-reason.js') }, timeout: 60_000, killGrace: 2_000, maxTasksPerWorker });
    const file = join(tmpdir(), `tidepool-abort-${process.pid}-${maxTasksPerWorker}.txt`);
    rmSync(file, { force: true });
    rmSync(`${file}.started`, { force: true });
    const running = pool.run({ id: 'a', params: { file } }).catch(() => null);
    // Running is reported at the exec: wait until the handler itself says it listens (a fixed
    // sleep here failed on a loaded machine: the SIGTERM came before the handler ran).
    await until(() => existsSync(`${file}.started`), 'the handler to listen for its abort');
    await pool.stop();
    await running;
    expect(readFileSync(file, 'utf8')).toMatch(/the pool is stopping the task/);
  });
});

describe.each([1, 2])('stderr in a failure, with maxTasksPerWorker %i', (maxTasksPerWorker) => {
  it('is decoded as a stream: written a byte at a time, and cut inside a character, it reads right', async () => {
    const pool = await startPool({ worker: { module: fixture('stderr-bytes.js') }, maxTasksPerWorker, stderr: { write: () => {} } });
    const text = 'Fehler: Größe überschritten';
    const short = failed(await pool.run({ id: 's', params: { text } }));
    expect(short.message).toContain(text);
    const cut = failed(await pool.run({ id: 'c', params: { text, pad: 1000 } }));
    expect(cut.message).toContain(text);
    expect(cut.message).not.toContain('\uFFFD');
  });
});

describe('spares of a command that does not wait for its task', () => {
  it('are not crashes: the pool stops keeping spares, trips nothing, and a task runs at once', async () => {
    const pool = await startPool({ worker: { command: ['echo', '{"ok":true}'] }, spares: 2, maxCrashes: 2 });
    const trips: unknown[] = [];
    pool.on('breaker:tripped', (t) => trips.push(t));
    await new Promise((r) => setTimeout(r, 1500));
    // The first spares exit at once; then no more are started.
    const spawnedWhileIdle = spawned.size;
    expect(spawnedWhileIdle).toBeLessThanOrEqual(2);
    await new Promise((r) => setTimeout(r, 500));
    expect(spawned.size).toBe(spawnedWhileIdle);
    const started = Date.now();
    await expect(pool.run({ id: 'now' })).resolves.toMatchObject({ status: 'resolved', result: { ok: true }, attempts: 1 });
    expect(Date.now() - started).toBeLessThan(1500);
    expect(trips).toEqual([]);
  });
});
