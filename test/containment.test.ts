import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { createPool } from '../src/index.js';
import type { Pool, PoolOptions, TaskResult } from '../src/index.js';
import type { Proc } from './helpers/procs.js';
import { childrenOf, fixture, killStill, noted, statOf, stillRunning, until, zombieChildrenOf } from './helpers/procs.js';

/**
 * Nothing a worker starts outlives its attempt, whatever it does (docs/containment.md): each
 * way out found in issue 8, through real pools and real processes, checked in /proc by pid
 * and start time. Both spawn host editions run what both guarantee; what only the Perl
 * edition's subreaper can hold is in its own block, named for it.
 */

const BIN = fileURLToPath(new URL('../bin/tidepool', import.meta.url));
const MANAGER = fixture('manager.js');
const ESCAPE = fixture('escape.sh');

const dir = mkdtempSync(join(tmpdir(), 'tidepool-containment-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let pools: Pool[] = [];
let children: ChildProcess[] = [];
/** Every process a test noted: whatever of them still runs after it is killed. */
const notes: string[] = [];
afterEach(async () => {
  for (const pool of pools) await pool.stop().catch(() => {});
  pools = [];
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  children = [];
  for (const file of notes.splice(0)) killStill(noted(file));
});

let seq = 0;
function notesFile(name: string): string {
  const file = join(dir, `${name}-${++seq}`);
  notes.push(file);
  return file;
}

type Edition = 'perl' | 'node';

async function startPool(edition: Edition, options: Partial<PoolOptions> & Pick<PoolOptions, 'worker'>): Promise<Pool> {
  const pool = createPool({ concurrency: 2, attempts: 1, retryDelay: 1, killGrace: 300, logLevel: 'silent', ...options }, { spawnHost: edition });
  pools.push(pool);
  await pool.start();
  return pool;
}

/**
 * Run one task on a pool of one worker at a time, and wait for that worker to be reaped: an
 * outcome may come before its worker has been terminated (a timeout is reported at the
 * deadline, then the worker gets SIGTERM, the grace period, SIGKILL), but once it is reaped
 * nothing it started may be left.
 */
async function runToTheEnd(pool: Pool, task: object = {}): Promise<TaskResult> {
  const reaped = new Promise((resolve) => pool.once('worker:reaped', resolve));
  const result = await pool.run(task);
  await reaped;
  return result;
}

const kindOf = (result: TaskResult) => (result.status === 'failed' ? result.error.kind : `resolved: ${JSON.stringify(result.result)}`);

/**
 * The processes are gone. The Perl edition's keeper reaps every one of them before the attempt
 * is reported, so they are gone already; the Node edition's SIGKILLs are sent before, but a
 * process takes a moment to die of one.
 */
async function gone(procs: Proc[], edition: Edition): Promise<void> {
  if (edition === 'node') await until(() => stillRunning(procs).length === 0, 'the processes to die', 1_000).catch(() => {});
  expect(stillRunning(procs)).toEqual([]);
}

/** A manager process (test/fixtures/manager.js, from dist) running `tasks`, to be killed. */
function manager(tasks: unknown[], options: Record<string, unknown>): ChildProcess {
  const child = spawn(process.execPath, [MANAGER, JSON.stringify(tasks), JSON.stringify(options)], { stdio: ['ignore', 'ignore', 'inherit'] });
  children.push(child);
  return child;
}

describe.each(['perl', 'node'] as const)('the %s spawn host', (edition) => {
  it('1. a command that times out: its group and the setsid child it was seen to start die with the attempt', async () => {
    const file = notesFile('setsid');
    const pool = await startPool(edition, { worker: { command: ['sh', ESCAPE, 'setsid', file] }, timeout: 1_000, killGrace: 500 });
    expect(kindOf(await runToTheEnd(pool))).toBe('timeout');
    const procs = noted(file);
    expect(procs).toHaveLength(3);
    await gone(procs, edition);
  });

  it('3. the memory cap covers the whole tree: a shell whose child holds 400 MB fails with kind memory', async () => {
    const file = notesFile('memory');
    // `; true`: the shell stays, and the memory is its child's, not the worker's own.
    const pool = await startPool(edition, {
      worker: { command: ['sh', '-c', `"${process.execPath}" ${fixture('hog.js')} ${file}; true`] },
      memoryLimit: 100,
      timeout: 10_000,
    });
    expect(kindOf(await runToTheEnd(pool))).toBe('memory');
    const procs = noted(file);
    expect(procs).toHaveLength(1);
    await gone(procs, edition);
  });

  it('5. a reused module worker whose handler never yields dies with a manager killed by SIGKILL', async () => {
    const file = notesFile('spin');
    const child = manager([{ params: { file } }], { worker: { module: fixture('spin.js') }, maxTasksPerWorker: 2, concurrency: 1, spawnHost: edition });
    await until(() => noted(file).length === 1, 'the handler to start spinning', 10_000);
    child.kill('SIGKILL');
    await until(() => stillRunning(noted(file)).length === 0, 'the spinning worker to die', 3_000);
  });

  it('after a manager killed by SIGKILL, nothing its command workers started runs, setsid children seen by the host included', async () => {
    const file = notesFile('stay');
    const child = manager([{}], { worker: { command: ['sh', ESCAPE, 'stay', file] }, concurrency: 1, spawnHost: edition });
    await until(() => existsSync(`${file}.ready`), 'the command to start its children', 10_000);
    // What the Node edition holds is what one of its polls has seen (every 20 ms).
    await new Promise((r) => setTimeout(r, 100));
    expect(stillRunning(noted(file))).toHaveLength(2);
    child.kill('SIGKILL');
    await until(() => stillRunning(noted(file)).length === 0, 'the command tree to die', 3_000);
  });

  it('after the pool stops, nothing its workers started runs', async () => {
    const file = notesFile('stop');
    const pool = await startPool(edition, { worker: { command: ['sh', ESCAPE, 'stay', file] } });
    const ending = pool.run({}).catch(() => null);
    await until(() => existsSync(`${file}.ready`), 'the command to start its children');
    await new Promise((r) => setTimeout(r, 100));
    await pool.stop();
    await ending;
    await gone(noted(file), edition);
  });

  it('6. the manager never signals a worker itself: timeouts and kills go through the host, which reaps it', async () => {
    const pids = new Set<number>();
    const kill = vi.spyOn(process, 'kill');
    try {
      const commands = await startPool(edition, { worker: { command: ['sh', '-c', 'trap "" TERM; sleep 30'] }, timeout: 200, killGrace: 200 });
      commands.on('worker:spawned', ({ pid }) => pids.add(pid));
      const reused = await startPool(edition, { worker: { module: fixture('hang.js') }, maxTasksPerWorker: 3, timeout: 200, killGrace: 200 });
      reused.on('worker:spawned', ({ pid }) => pids.add(pid));
      // Spied until both workers are reaped: SIGTERM and SIGKILL come after the outcome.
      const results = await Promise.all([runToTheEnd(commands), runToTheEnd(reused)]);
      expect(results.map(kindOf)).toEqual(['timeout', 'timeout']);
      expect(pids.size).toBe(2);
      const atWorkers = kill.mock.calls.filter(([pid]) => pids.has(Math.abs(Number(pid))));
      expect(atWorkers).toEqual([]);
    } finally {
      kill.mockRestore();
    }
  });
});

describe('the perl spawn host (subreaper): what leaves the tree is held too', () => {
  it('2. a command that resolves after starting a setsid daemon: the daemon dies with the attempt', async () => {
    const file = notesFile('daemon');
    const pool = await startPool('perl', { worker: { command: ['sh', ESCAPE, 'daemon', file] } });
    expect(kindOf(await runToTheEnd(pool))).toBe('resolved: {"started":true}');
    const procs = noted(file);
    expect(procs).toHaveLength(1);
    await gone(procs, 'perl');
  });

  it('2. a double-forked, setsid grandchild whose parent left at once dies with the attempt', async () => {
    const file = notesFile('double');
    const pool = await startPool('perl', { worker: { command: ['sh', ESCAPE, 'double', file] } });
    expect(kindOf(await runToTheEnd(pool))).toBe('resolved: {"started":true}');
    const procs = noted(file);
    expect(procs).toHaveLength(1);
    await gone(procs, 'perl');
  });

  it('1. a command that times out: a setsid child started and left between any two looks dies too', async () => {
    const file = notesFile('setsid-fast');
    // The setsid'd sleep is handed to the keeper the moment its parent leaves.
    const pool = await startPool('perl', {
      worker: { command: ['sh', '-c', `(setsid sleep 308 & echo "$! $(cut -d' ' -f22 /proc/$!/stat)" >> ${file}); sleep 30`] },
      timeout: 500,
    });
    expect(kindOf(await runToTheEnd(pool))).toBe('timeout');
    await gone(noted(file), 'perl');
  });

  const canUnshare = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', 'true'], { stdio: 'ignore' }).status === 0;
  it.skipIf(!canUnshare)('4. as PID 1 of a PID namespace, tidepool leaves no zombie behind (needs unshare, as root)', async () => {
    const cli = spawn(
      'unshare',
      ['--pid', '--fork', '--mount-proc', '--kill-child', process.execPath, BIN, 'run', '-', '--command', 'sh -c "(sleep 0.05 &)"', '--concurrency', '2', '--log-level', 'warn'],
      // A guarantee of the Perl edition (the Node one cannot reap orphans): whatever CI forces.
      { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, TIDEPOOL_SPAWN_HOST: 'perl' } },
    );
    children.push(cli);
    let lines = 0;
    cli.stdout!.on('data', (chunk: Buffer) => (lines += chunk.toString().split('\n').length - 1));
    for (let i = 0; i < 40; i++) cli.stdin!.write(`{"id":"t${i}"}\n`);
    await until(() => lines === 40, '40 outcomes', 20_000);
    // The namespace's PID 1 is the CLI: the child of unshare.
    const [init] = childrenOf(cli.pid!);
    expect(statOf(init)?.ppid).toBe(cli.pid);
    // Every `sleep 0.05` has exited by now; whatever re-parented to PID 1 would be a zombie.
    await new Promise((r) => setTimeout(r, 300));
    expect(zombieChildrenOf(init)).toEqual([]);
    cli.stdin!.end();
    await new Promise((r) => cli.once('exit', r));
  });
});
