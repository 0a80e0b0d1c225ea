import type { PoolOptions } from './options.js';
import { Pool } from './pool.js';
import type { PoolInternals } from './pool.js';
import { MemorySource } from './sources/memory.js';
import type { Clock } from './sources/memory.js';
import type { Source } from './sources/source.js';

/**
 * Create a pool. Its source is `options.source`, or the embedded queue (`MemorySource`) by
 * default. Validates every option: throws an `OptionError` (TIDEPOOL_ERR_OPTION_INVALID)
 * naming the first bad one.
 *
 * @example
 * const pool = createPool({ worker: { command: ['python3', 'job.py'] }, concurrency: 8 });
 */
export function createPool<S extends Source>(options: PoolOptions & { source: S }, internals?: PoolInternals): Pool<S>;
export function createPool(options: PoolOptions, internals?: PoolInternals): Pool<MemorySource>;
export function createPool(options: PoolOptions, internals: PoolInternals = {}): Pool {
  // Not an object: the pool's own validation names the fault.
  if (typeof options !== 'object' || options === null) return new Pool(options, internals);
  const source = options.source ?? new MemorySource({ clock: internals.clock as Clock | undefined });
  return new Pool({ ...options, source }, internals);
}
