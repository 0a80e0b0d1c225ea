import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { TidepoolError } from '../errors.js';
import type { ResolvedOptions } from '../options.js';

const CHECK_ENTRY = fileURLToPath(new URL('../child/check.js', import.meta.url));

/** Bytes of the check's stderr kept for the error message. */
const CHECK_OUTPUT = 8 * 1024;

/**
 * Load a module worker's handler once, in a process like a worker's (same environment,
 * directory, ids and heap cap), before the pool takes any work: a handler that cannot load
 * is one error at start, not every task failing through its attempts and the breaker.
 * Resolves when the module exports a handler. Rejects with `TIDEPOOL_ERR_WORKER_LOAD`,
 * carrying what Node printed (the error, its file and line), or when loading takes longer
 * than `spawnTimeout` ms (the same rule as for a worker: `spawn`).
 */
export function checkHandler(options: ResolvedOptions, signal?: AbortSignal): Promise<void> {
  const { worker, env, cwd, uid, gid, memoryLimit, spawnTimeout } = options;
  if (worker.kind !== 'module') return Promise.resolve();
  const path = worker.path;
  return new Promise((resolve, reject) => {
    const fail = (why: string) => reject(new TidepoolError('TIDEPOOL_ERR_WORKER_LOAD', `handler ${path} cannot be loaded: ${why}`));
    const child = spawn(process.execPath, [...(memoryLimit === null ? [] : [`--max-old-space-size=${memoryLimit}`]), CHECK_ENTRY, path], {
      env,
      cwd,
      uid,
      gid,
      // Its stdin is how it knows the manager is still there: it leaves when that closes.
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let said = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => (said += chunk));
    const abort = () => child.kill('SIGKILL');
    signal?.addEventListener('abort', abort, { once: true });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-CHECK_OUTPUT);
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), spawnTimeout);
    child.once('error', (err) => {
      clearTimeout(timer);
      fail(err.message);
    });
    child.once('close', (code, killedBy) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', abort);
      if (code === 0 && said === 'loaded\n') return resolve();
      if (signal?.aborted) return reject(new TidepoolError('TIDEPOOL_ERR_POOL_STOPPED', 'the pool was stopped while it checked its handler'));
      if (killedBy === 'SIGKILL') return fail(`it did not load within spawnTimeout (${spawnTimeout} ms)`);
      if (code === 0) return fail('the module exited while it was being loaded (exit code 0)');
      fail(`\n${stderr.trim() || `the check exited with ${killedBy ?? `code ${code}`}`}`);
    });
  });
}
