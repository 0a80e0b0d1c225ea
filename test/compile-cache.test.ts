import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { compileCacheDir, compileCacheSupported } from '../src/process/compile-cache.js';
import { generateHeavyHandler } from '../scripts/fixtures/heavy-handler/generate.js';
import { trackPools } from './helpers/pools.js';
import { until } from './helpers/procs.js';

/**
 * Module workers and Node's compile cache (src/process/compile-cache.ts): a handler and the
 * modules it imports, edited between two tasks, are run as they are now; and on a Node that has
 * the cache (22.1+), the next worker's handler tree comes from it, which the workers' own
 * report (NODE_DEBUG_NATIVE=COMPILE_CACHE, on their stderr) shows.
 */

const root = mkdtempSync(join(tmpdir(), 'tidepool-compile-cache-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const { startPool } = trackPools({ concurrency: 1, attempts: 1, retryDelay: 1, killGrace: 300, logLevel: 'silent' });

let made = 0;
/** A fresh handler tree (a few modules) and a state directory (mode 0700) of this test's own. */
function setup() {
  const dir = join(root, `t${++made}`);
  const handler = generateHeavyHandler(join(dir, 'handler'), { modules: 5 });
  return { dir, handler, stateDir: mkdtempSync(join(dir, 'state-')) };
}

/** Edit a generated file: replace `from` by `to` (which must be there). */
function edit(file: string, from: string, to: string): void {
  const text = readFileSync(file, 'utf8');
  if (!text.includes(from)) throw new Error(`${file} has no ${from}`);
  writeFileSync(file, text.replace(from, to));
}

describe('module workers load the handler as it is now', () => {
  for (const maxTasksPerWorker of [1, 3]) {
    it(`edits of the handler and of a module it imports between two tasks are seen by the next worker (maxTasksPerWorker ${maxTasksPerWorker})`, async () => {
      const { dir, handler, stateDir } = setup();
      const run = async () => {
        const pool = await startPool({ worker: { module: handler }, stateDir, maxTasksPerWorker });
        const result = await pool.run({ params: { n: 2 } });
        await pool.stop();
        return result;
      };
      const first = await run();
      expect(first).toMatchObject({ status: 'resolved', result: { version: 'v1', leaf: 'leaf-1' } });
      edit(handler, `'v1'`, `'v2'`);
      edit(join(dir, 'handler/lib/m0.js'), `'leaf-1'`, `'leaf-2'`);
      const second = await run();
      expect(second).toMatchObject({ status: 'resolved', result: { version: 'v2', leaf: 'leaf-2' } });
    });
  }

  it('single-use workers of one pool: an edit between two tasks is run by the next task', async () => {
    const { dir, handler, stateDir } = setup();
    const pool = await startPool({ worker: { module: handler }, stateDir });
    expect(await pool.run({})).toMatchObject({ status: 'resolved', result: { version: 'v1', leaf: 'leaf-1' } });
    edit(handler, `'v1'`, `'v2'`);
    edit(join(dir, 'handler/lib/m0.js'), `'leaf-1'`, `'leaf-2'`);
    expect(await pool.run({})).toMatchObject({ status: 'resolved', result: { version: 'v2', leaf: 'leaf-2' } });
  });
});

describe.skipIf(!compileCacheSupported())('the compile cache (Node 22.1+)', () => {
  it('the next worker takes the handler tree from the cache, and compiles afresh what was edited', async () => {
    const { dir, handler, stateDir } = setup();
    let stderr = '';
    const pool = await startPool({
      worker: { module: handler },
      stateDir,
      env: ['NODE_DEBUG_NATIVE=COMPILE_CACHE'],
      stderr: { write: (chunk: string | Uint8Array) => void (stderr += String(chunk)) },
    });
    const url = (file: string) => `file://${join(dir, 'handler', file)}`;
    const accepted = (file: string) => `V8 code cache for ESM ${url(file)} was accepted`;
    // The first worker compiles and writes the cache as it exits.
    expect(await pool.run({})).toMatchObject({ status: 'resolved', result: { version: 'v1', leaf: 'leaf-1' } });
    await until(() => stderr.includes(`writing cache for ESM ${url('lib/m0.js')}`), 'the first worker to write the cache');
    expect(stderr).not.toContain(accepted('handler.js'));
    stderr = '';
    expect(await pool.run({})).toMatchObject({ status: 'resolved', result: { version: 'v1', leaf: 'leaf-1' } });
    await until(() => stderr.includes(accepted('lib/m4.js')), 'the second worker to read the cache');
    expect(stderr).toContain(accepted('handler.js'));
    expect(stderr).toContain(accepted('lib/m0.js'));
    stderr = '';
    edit(join(dir, 'handler/lib/m0.js'), `'leaf-1'`, `'leaf-2'`);
    expect(await pool.run({})).toMatchObject({ status: 'resolved', result: { version: 'v1', leaf: 'leaf-2' } });
    await until(() => stderr.includes(accepted('lib/m4.js')), 'the third worker to read the cache');
    // The edited module's entry no longer matches its source: compiled afresh, not run stale.
    expect(stderr).toMatch(new RegExp(`${url('lib/m0.js').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*code hash mismatch`));
    expect(stderr).not.toContain(accepted('lib/m0.js'));
    expect(stderr).toContain(accepted('handler.js'));
  });

  it('lives in the state directory, and no other user can open it', async () => {
    const { handler, stateDir } = setup();
    const pool = await startPool({ worker: { module: handler }, stateDir });
    // A single-use worker's outcome comes after its exit, when Node has written the cache.
    expect(await pool.run({})).toMatchObject({ status: 'resolved' });
    const cache = join(stateDir, 'compile-cache');
    expect(statSync(cache).mode & 0o777).toBe(0o700);
    expect(readdirSync(cache)).not.toEqual([]);
  });

  it('a cache directory another user could write is not used, and the pool says why', () => {
    const { stateDir } = setup();
    const cache = join(stateDir, 'compile-cache');
    mkdirSync(cache, { mode: 0o700 });
    chmodSync(cache, 0o777);
    const said: string[] = [];
    expect(compileCacheDir(stateDir, (why) => said.push(why))).toBeNull();
    expect(said).toEqual([expect.stringMatching(new RegExp(`^module workers run without the compile cache: ${cache}: `))]);
    chmodSync(cache, 0o700);
    expect(compileCacheDir(stateDir, (why) => said.push(why))).toBe(cache);
    expect(said).toHaveLength(1);
  });

  it('an env that names NODE_DISABLE_COMPILE_CACHE turns it off', async () => {
    const { handler, stateDir } = setup();
    const pool = await startPool({ worker: { module: handler }, stateDir, env: ['NODE_DISABLE_COMPILE_CACHE=1'] });
    expect(await pool.run({})).toMatchObject({ status: 'resolved' });
    expect(await pool.run({})).toMatchObject({ status: 'resolved' });
    expect(readdirSync(join(stateDir, 'compile-cache'))).toEqual([]);
  });
});
