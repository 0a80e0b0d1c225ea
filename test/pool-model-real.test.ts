import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { createPool } from '../src/index.js';
import type { FailureKind, Pool, TaskResult } from '../src/index.js';
import { WorkerActorTracker } from './helpers/coverage.js';
import { alive, fixture, until } from './helpers/procs.js';
import { checkWorkerBound, untilNoDescendants } from './helpers/process-table.js';

/**
 * The lifecycle model with real processes: random tasks (some start grandchildren that hang or
 * outlive their task), random SIGKILLs of workers from outside, random waits. After every
 * command the process table shows no more worker processes than the concurrency, counting
 * every descendant of the manager whoever started it (the spawn host starts single-use
 * workers); at the end every task has exactly one final outcome, and the manager has no
 * descendant left (no worker, no grandchild, no spawn host).
 */

const RUNS = Number(process.env.PROPERTY_REAL_RUNS ?? 20);
const dir = mkdtempSync(join(tmpdir(), 'tidepool-model-real-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Kind = 'resolve' | 'throw' | 'exit' | 'hang' | 'orphan';

/**
 * The final outcomes a task may end with, by what it does. An outside SIGKILL adds `crash`
 * (killed during the task) and `spawn` (killed while starting: see the regression below).
 */
const ALLOWED: Record<Kind, Array<'resolved' | FailureKind>> = {
  resolve: ['resolved'],
  orphan: ['resolved'],
  throw: ['error'],
  exit: ['crash'],
  hang: ['timeout'],
};

interface Model {
  tasks: number;
}

interface Real {
  pool: Pool;
  concurrency: number;
  spawned: Set<number>;
  tasks: Array<{ id: string; kind: Kind; run: Promise<TaskResult> }>;
  pidFiles: string[];
  kills: number;
  finals: Map<string, number>;
}

let seq = 0;

/** No more live worker processes than the concurrency, read from the process table. */
function checkBound(real: Real): void {
  checkWorkerBound(real.concurrency);
}

class Submit implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly kind: Kind,
    readonly ms: number,
  ) {}
  check = (m: Readonly<Model>) => m.tasks < 10;
  async run(m: Model, r: Real): Promise<void> {
    m.tasks++;
    const id = `m${++seq}`;
    const pidFile = join(dir, `${id}.pid`);
    if (this.kind === 'hang' || this.kind === 'orphan') r.pidFiles.push(pidFile);
    r.tasks.push({ id, kind: this.kind, run: r.pool.run({ id, params: { kind: this.kind, ms: this.ms, pidFile } }) });
    checkBound(r);
  }
  toString = () => `submit(${this.kind}, ${this.ms}ms)`;
}

class KillWorker implements fc.AsyncCommand<Model, Real> {
  constructor(readonly pick: number) {}
  check = () => true;
  async run(_m: Model, r: Real): Promise<void> {
    const live = r.pool.liveProcesses;
    if (live.length > 0) {
      try {
        process.kill(live[this.pick % live.length], 'SIGKILL');
        r.kills++;
      } catch {
        // It exited on its own in between: nothing to kill.
      }
    }
    checkBound(r);
  }
  toString = () => `sigkill(worker #${this.pick})`;
}

class Wait implements fc.AsyncCommand<Model, Real> {
  constructor(readonly ms: number) {}
  check = () => true;
  async run(_m: Model, r: Real): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, this.ms));
    checkBound(r);
  }
  toString = () => `wait(${this.ms}ms)`;
}

const commands = [
  fc.tuple(fc.constantFrom<Kind>('resolve', 'resolve', 'throw', 'exit', 'hang', 'orphan'), fc.integer({ min: 0, max: 60 })).map(
    ([kind, ms]) => new Submit(kind, ms),
  ),
  fc.nat(5).map((pick) => new KillWorker(pick)),
  fc.integer({ min: 5, max: 120 }).map((ms) => new Wait(ms)),
];

describe('pool model (real processes)', () => {
  it('outside SIGKILLs and grandchildren: bounded, one outcome each, nothing left alive', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 3 }),
        fc.integer({ min: 1, max: 2 }),
        fc.commands(commands, { maxCommands: 14 }),
        async (concurrency, maxTasksPerWorker, cmds) => {
          const workerActors = new WorkerActorTracker();
          const pool = createPool({
            worker: { module: fixture('mixed.js') },
            concurrency,
            maxTasksPerWorker,
            attempts: 2,
            // Room for a single-use worker's Node start-up on a loaded machine: it is inside the timeout.
            timeout: 1_500,
            killGrace: 100,
            retryDelay: 1,
            maxCrashes: 1_000,
            logLevel: 'silent',
            // Workers are actors of their own (roots of their own systems): seen by inspection.
            inspect: workerActors.observe,
          });
          const real: Real = { pool, concurrency, spawned: new Set(), tasks: [], pidFiles: [], kills: 0, finals: new Map() };
          pool.on('worker:spawned', ({ pid }) => real.spawned.add(pid));
          pool.on('outcome', (o) => real.finals.set(o.id, (real.finals.get(o.id) ?? 0) + 1));
          await pool.start();
          try {
            await fc.asyncModelRun(() => ({ model: { tasks: 0 }, real }), cmds);
            const results = await Promise.all(real.tasks.map((t) => t.run));
            await pool.drain();

            real.tasks.forEach((t, i) => {
              expect(real.finals.get(t.id)).toBe(1);
              const r = results[i];
              const got = r.status === 'resolved' ? 'resolved' : r.error.kind;
              const allowed = real.kills > 0 ? [...ALLOWED[t.kind], 'crash', 'spawn'] : ALLOWED[t.kind];
              expect(allowed).toContain(got);
            });
            expect(alive(real.spawned)).toEqual([]);
            expect(pool.liveProcesses).toEqual([]);
            expect(Object.keys(pool.actor.getSnapshot().children)).toEqual([]);
          // Every worker actor ended (the pool's children are only its startup): as many were seen as processes spawned.
          expect([...workerActors.live.keys()]).toEqual([]);
          expect(workerActors.started).toBeGreaterThanOrEqual(real.spawned.size);
            const grandchildren = real.pidFiles
              .filter((f) => existsSync(f) && readFileSync(f, 'utf8').endsWith('\n'))
              .map((f) => Number(readFileSync(f, 'utf8')));
            // Their group was SIGKILLed when their worker exited; give the kernel a moment.
            await until(() => alive(grandchildren).length === 0, `grandchildren ${grandchildren} to die`, 2_000);
            await untilNoDescendants();
          } finally {
            await pool.stop().catch(() => {});
          }
        },
      ),
      { numRuns: RUNS },
    );
  }, 600_000);

  // Shrunk by the property above: [1, 1, submit(throw, 0ms), wait(85ms), sigkill(worker #3)].
  // The kill landed before the worker was ready, so attempt 1 failed as `spawn`, which the
  // model did not allow for. The pool was right; the model now allows it, and this replays
  // the case without its timing: the kill comes the moment the worker is spawned.
  // A forked worker (one that serves several tasks) is starting until its handler is loaded:
  // a kill then is a spawn failure. One the spawn host starts for a single task is running once
  // it has started: a kill is a crash. Either way the attempt fails and the task is retried.
  it.each([
    [2, 'spawn'],
    [1, 'crash'],
  ])('regression: a worker SIGKILLed as it starts (maxTasksPerWorker %i) fails that attempt as %s, and the task is retried', async (maxTasksPerWorker, kind) => {
    const pool = createPool({
      worker: { module: fixture('mixed.js') },
      concurrency: 1,
      attempts: 2,
      retryDelay: 1,
      maxTasksPerWorker,
      logLevel: 'silent',
    });
    const spawned: number[] = [];
    const attempts: string[] = [];
    pool.on('worker:spawned', ({ pid }) => {
      spawned.push(pid);
      if (spawned.length === 1) process.kill(pid, 'SIGKILL');
    });
    pool.on('attempt', (a) => attempts.push(a.outcome.status === 'resolved' ? 'resolved' : a.outcome.kind));
    await pool.start();
    try {
      const result = await pool.run({ params: { kind: 'resolve' } });
      expect(attempts).toEqual([kind, 'resolved']);
      expect(result).toMatchObject({ status: 'resolved', attempts: 2 });
      await pool.drain();
      expect(alive(spawned)).toEqual([]);
      await untilNoDescendants();
    } finally {
      await pool.stop().catch(() => {});
    }
  });
});
