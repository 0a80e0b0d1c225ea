import { afterEach, expect } from 'vitest';
import { createPool } from '../../src/index.js';
import type { MemorySource, Pool, PoolInternals, PoolOptions, TaskResult } from '../../src/index.js';
import { alive } from './procs.js';

/**
 * Pools for a test file: `startPool` makes one with the file's defaults and notes every worker
 * pid it spawns; after each test every pool is stopped, and each noted worker must be gone
 * from /proc (not from the pool's counters).
 */
export function trackPools(defaults: Partial<PoolOptions>) {
  const pools: Pool[] = [];
  const spawned = new Set<number>();
  afterEach(async () => {
    for (const pool of pools.splice(0)) await pool.stop().catch(() => {});
    expect(alive(spawned)).toEqual([]);
    spawned.clear();
  });
  /** Note a pool made by the test itself, so that it is stopped and its workers checked. */
  const track = <P extends Pool>(pool: P): P => {
    pool.on('worker:spawned', ({ pid }) => spawned.add(pid));
    pools.push(pool);
    return pool;
  };
  async function startPool(options: Partial<PoolOptions> & Pick<PoolOptions, 'worker'>, internals?: PoolInternals): Promise<Pool<MemorySource>> {
    const pool = track(createPool({ ...defaults, ...options } as PoolOptions, internals) as Pool<MemorySource>);
    await pool.start();
    return pool;
  }
  return { pools, spawned, track, startPool };
}

/** The error of a failed result; throws if it resolved. */
export const failed = (result: TaskResult) => {
  if (result.status !== 'failed') throw new Error(`expected a failure, got ${JSON.stringify(result)}`);
  return result.error;
};
