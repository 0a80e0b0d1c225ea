import { afterEach, describe, expect, it } from 'vitest';
import { createPool } from '../src/index.js';
import type { AttemptEvent, Pool, PoolOptions, TaskResult } from '../src/index.js';
import { alive, fixture } from './helpers/procs.js';

/**
 * Outcomes say what the worker said: errors keep their name, code, stack, cause and own
 * fields; an empty message is never the only clue; a handler that returns nothing resolves
 * with null. Each case runs with single-use workers (started by the spawn host) and reused
 * ones (forked with IPC): one rule for both.
 */

let pools: Pool[] = [];
const spawned = new Set<number>();

afterEach(async () => {
  for (const pool of pools) await pool.stop().catch(() => {});
  pools = [];
  expect(alive(spawned)).toEqual([]);
  spawned.clear();
});

async function startPool(options: Partial<PoolOptions> & Pick<PoolOptions, 'worker'>): Promise<Pool> {
  const pool = createPool({ concurrency: 2, attempts: 1, killGrace: 300, logLevel: 'silent', ...options });
  pool.on('worker:spawned', ({ pid }) => spawned.add(pid));
  pools.push(pool);
  await pool.start();
  return pool;
}

const failed = (result: TaskResult) => {
  if (result.status !== 'failed') throw new Error(`expected a failure, got ${JSON.stringify(result)}`);
  return result.error;
};

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
