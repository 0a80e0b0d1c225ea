import { mkdirSync, lstatSync } from 'node:fs';
import * as nodeModule from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { unsafeDirectory } from '../options.js';

/**
 * Node's module compile cache (22.1+): V8 code cache on disk for every CommonJS and ES module
 * a worker loads, its entry and its handler's whole tree, so the next worker that loads the
 * same files skips compiling them. Node checks each entry against a hash of the file's source
 * before it uses it, so a handler (or anything it imports) that changed since the last task is
 * compiled afresh and its entry rewritten: the cache can make a worker start sooner, never run
 * old code. Node 20 has no such cache for ES modules (nor this variable): there, nothing is
 * set. What it saves is measured in docs/benchmark-notes.md ("Handler start-up").
 */
export const COMPILE_CACHE_ENV = 'NODE_COMPILE_CACHE';

/** Variables that say the worker's cache is the user's business (`--env` set them). */
const USER_SETTINGS = [COMPILE_CACHE_ENV, 'NODE_DISABLE_COMPILE_CACHE'];

/** This Node (the workers run the manager's own binary) has the module compile cache. */
export const compileCacheSupported = (): boolean => typeof (nodeModule as { enableCompileCache?: unknown }).enableCompileCache === 'function';

/**
 * The cache's directory: `compile-cache` in the pool's state directory, else in
 * `<tmp>/tidepool-<uid>` (the CLI's default state directory); created mode 0700. Null when the
 * Node has no compile cache, or the directory cannot be made or is not safe (it must belong to
 * this user and be writable by no one else: code cache in it is run by the workers);
 * `refused` then hears why.
 */
export function compileCacheDir(stateDir: string | undefined, refused: (why: string) => void = () => {}): string | null {
  if (!compileCacheSupported()) return null;
  const base = stateDir ?? join(tmpdir(), `tidepool-${process.getuid?.() ?? 0}`);
  const dir = join(base, 'compile-cache');
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const d of stateDir === undefined ? [base, dir] : [dir]) {
      if (!lstatSync(d).isDirectory()) return refuse(refused, `${d} is not a directory`);
      const unsafe = unsafeDirectory(d);
      if (unsafe !== null) return refuse(refused, `${d}: ${unsafe}`);
    }
    return dir;
  } catch (err) {
    return refuse(refused, `${dir}: ${(err as Error).message}`);
  }
}

function refuse(refused: (why: string) => void, why: string): null {
  refused(`module workers run without the compile cache: ${why}`);
  return null;
}

/** The workers' environment with the cache turned on, unless the user's `env` says otherwise. */
export function withCompileCache(env: Record<string, string>, dir: string | null): Record<string, string> {
  if (dir === null || USER_SETTINGS.some((name) => name in env)) return env;
  return { ...env, [COMPILE_CACHE_ENV]: dir };
}
