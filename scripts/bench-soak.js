#!/usr/bin/env node
// A soak of the library in one process: many tasks through one pool, and what the manager
// keeps of them. Two scenarios, each with a pool of its own, one after the other:
//   module-reused       BENCH_SOAK_MODULE_TASKS (200,000) tasks of test/fixtures/noop.js on reused
//                       module workers (maxTasksPerWorker BENCH_SOAK_MAX_TASKS, 10,000: each
//                       worker is replaced a few times), concurrency BENCH_SOAK_CONCURRENCY (4);
//   command-single-use  BENCH_SOAK_COMMAND_TASKS (20,000) tasks of the command /bin/cat, one
//                       process per task (the default), same concurrency.
// Tasks are submitted with `pool.run()`, BENCH_SOAK_IN_FLIGHT (64) at a time.
//
// Figures (one JSON object per scenario on stdout, progress on stderr):
//   rssMiB / heapUsedMiB  the manager's VmRSS (/proc/self/status) and V8 heapUsed, read after
//                         a forced GC (--expose-gc: the script re-runs itself with it) with no
//                         task in flight and the pool still running: `atWarmup` once the first
//                         BENCH_SOAK_WARMUP (10 %) tasks are done, `atEnd` after the last;
//                         `growth` = atEnd - atWarmup (target: < 10 MB, `met`); `curve`: the
//                         same readings (GC forced, tasks in flight) at every tenth of the run;
//   v8MiB                 at the same two readings: V8's committed heap (heapTotal), its young
//                         generation (newSpace) and memory held outside the heap (external);
//   fds                   /proc/self/fd: before start, at warm-up, at the end, after drain, and
//                         200 ms after the last worker and the spawn host are gone;
//   eldMs                 event-loop delay (perf_hooks.monitorEventLoopDelay, resolution 10 ms,
//                         enabled 20 ms before the first run() call, so the first burst counts)
//                         over the run: p50/p99/max of what exceeds the 10 ms resolution;
//   tasksPerSec           after warm-up (the pauses for the readings excluded);
//   leftover              processes carrying this run's marker (the workers' environment), or
//                         children of this process, alive once the pool has drained (waited
//                         for up to 5 s).
// Exit 1 when an outcome is not resolved or a process outlives its pool.
//
// Usage: npm run build && node scripts/bench-soak.js
//        BENCH_SOAK_MODULE_TASKS=20000 BENCH_SOAK_COMMAND_TASKS=2000 node scripts/bench-soak.js   (quick)
// Env:   BENCH_SOAK_SCENARIOS (module-reused,command-single-use), BENCH_SOAK_COMMAND (/bin/cat),
//        and the counts above. Workers get PATH only (and the marker).
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { getHeapSpaceStatistics } from 'node:v8';
import { fileURLToPath } from 'node:url';
import { BenchError, intEnv, leftovers as sharedLeftovers, reportBenchErrors } from './lib/bench.js';

if (typeof globalThis.gc !== 'function') {
  // Each RSS reading follows a forced GC, so that it is retained memory.
  const { status, signal } = spawnSync(process.execPath, ['--expose-gc', ...process.execArgv, fileURLToPath(import.meta.url)], { stdio: 'inherit' });
  process.exit(status ?? (signal ? 1 : 0));
}

const { createPool } = await import('../dist/src/index.js');

for (const name of ['HOME', 'LANG', 'TZ', 'TMPDIR', 'NODE_ENV']) delete process.env[name];

reportBenchErrors('bench-soak');
const NOOP = fileURLToPath(new URL('../test/fixtures/noop.js', import.meta.url));
const env = intEnv;
const CONCURRENCY = env('BENCH_SOAK_CONCURRENCY', 4);
const IN_FLIGHT = env('BENCH_SOAK_IN_FLIGHT', 64);
/** The share of the tasks done before the warm-up reading (0 < x < 1). */
const WARMUP = Number(process.env.BENCH_SOAK_WARMUP || 0.1);
if (!(WARMUP > 0 && WARMUP < 1)) throw new BenchError(`BENCH_SOAK_WARMUP must be a fraction between 0 and 1, got ${JSON.stringify(process.env.BENCH_SOAK_WARMUP)}`);
const GROWTH_TARGET_MB = 10;
const COMMAND = (process.env.BENCH_SOAK_COMMAND ?? '/bin/cat').split(' ');
const SCENARIOS = {
  'module-reused': {
    tasks: env('BENCH_SOAK_MODULE_TASKS', 200_000),
    worker: { module: NOOP },
    maxTasksPerWorker: env('BENCH_SOAK_MAX_TASKS', 10_000),
  },
  'command-single-use': { tasks: env('BENCH_SOAK_COMMAND_TASKS', 20_000), worker: { command: COMMAND }, maxTasksPerWorker: 1 },
};
const WANTED = (process.env.BENCH_SOAK_SCENARIOS ?? Object.keys(SCENARIOS).join(',')).split(',');
const MARK_NAME = 'TIDEPOOL_BENCH_SOAK';
const MARK = `${process.pid}-${Date.now()}`;

const log = (msg) => process.stderr.write(`bench-soak: ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const MiB = 1024 * 1024;
const round = (x, digits = 1) => Number(x.toFixed(digits));
const fds = () => readdirSync('/proc/self/fd').length;
const rssBytes = () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;

/** RSS and heapUsed after a full GC (twice: the first may free what the second can then return). */
function reading() {
  globalThis.gc();
  globalThis.gc();
  const m = process.memoryUsage();
  const newSpace = getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_size ?? 0;
  // What RSS holds besides live objects: V8's committed heap (its young generation grows with
  // the allocation rate, and a GC does not give it back) and memory outside the heap.
  const v8 = { heapTotal: round(m.heapTotal / MiB), newSpace: round(newSpace / MiB), external: round(m.external / MiB) };
  return { rss: rssBytes(), heapUsed: m.heapUsed, fds: fds(), v8 };
}

/** Live processes carrying the marker, and children of this process. */
/** What outlived the run: processes with the marker, and children of this script. */
const leftovers = () => sharedLeftovers(MARK_NAME, MARK, { children: true });

async function scenario(name, { tasks, worker, maxTasksPerWorker }) {
  const fdsBefore = fds();
  const pool = createPool({ worker, concurrency: CONCURRENCY, maxTasksPerWorker, logLevel: 'warn', env: [`${MARK_NAME}=${MARK}`] });
  let spawned = 0;
  let reaped = 0;
  pool.on('worker:spawned', () => spawned++);
  pool.on('worker:reaped', () => reaped++);
  await pool.start();
  const warm = Math.max(1, Math.round(tasks * WARMUP));
  const failures = [];
  let submitted = 0;
  let done = 0;
  let inFlight = 0;
  /** Submit up to `until` tasks, IN_FLIGHT at a time; resolves when all of them are done. */
  const runUntil = (until, onDone) =>
    new Promise((resolve) => {
      const next = () => {
        while (inFlight < IN_FLIGHT && submitted < until) {
          inFlight++;
          void pool.run({ id: `${name}-${submitted++}` }).then((outcome) => {
            inFlight--;
            done++;
            if (outcome.status !== 'resolved' && failures.length < 5) failures.push(`${outcome.id}: ${outcome.status}: ${JSON.stringify(outcome.error)}`);
            onDone?.();
            if (done === until) resolve();
            else next();
          });
        }
      };
      next();
    });

  const eld = monitorEventLoopDelay({ resolution: 10 });
  eld.enable();
  await sleep(20);
  await runUntil(warm);
  const atWarmup = reading();
  log(`${name}: warm after ${warm} tasks: RSS ${round(atWarmup.rss / MiB)} MiB, heapUsed ${round(atWarmup.heapUsed / MiB)} MiB, ${atWarmup.fds} fds`);
  const curve = [];
  const tenth = Math.max(1, Math.floor(tasks / 10));
  const t0 = performance.now();
  await runUntil(tasks, () => {
    if (done % tenth !== 0) return;
    const r = reading();
    curve.push({ done, rssMiB: round(r.rss / MiB), heapUsedMiB: round(r.heapUsed / MiB), fds: r.fds });
    log(`${name}: ${done}/${tasks}: RSS ${round(r.rss / MiB)} MiB, heapUsed ${round(r.heapUsed / MiB)} MiB`);
  });
  const seconds = (performance.now() - t0) / 1000;
  eld.disable();
  const atEnd = reading();
  await pool.drain();
  const fdsAfterDrain = fds();
  let left = leftovers();
  for (let i = 0; i < 50 && left.length > 0; i++) {
    await sleep(100);
    left = leftovers();
  }
  // Once the spawn host has exited too (drain resolves before its pipes close).
  await sleep(200);
  const fdsAfterExit = fds();
  const excess = (q) => round(Math.max(0, eld.percentile(q) / 1e6 - 10));
  const growth = atEnd.rss - atWarmup.rss;
  return {
    result: {
      scenario: name,
      tasks,
      concurrency: CONCURRENCY,
      maxTasksPerWorker,
      worker: worker.module ? 'test/fixtures/noop.js' : worker.command.join(' '),
      tasksPerSec: Math.round((tasks - warm) / seconds),
      rssMiB: { atWarmup: round(atWarmup.rss / MiB), atEnd: round(atEnd.rss / MiB), growth: round(growth / MiB), curve },
      heapUsedMiB: { atWarmup: round(atWarmup.heapUsed / MiB), atEnd: round(atEnd.heapUsed / MiB), growth: round((atEnd.heapUsed - atWarmup.heapUsed) / MiB) },
      v8MiB: { atWarmup: atWarmup.v8, atEnd: atEnd.v8 },
      fds: { beforeStart: fdsBefore, atWarmup: atWarmup.fds, atEnd: atEnd.fds, afterDrain: fdsAfterDrain, afterExit: fdsAfterExit },
      eldMs: { p50: excess(50), p99: excess(99), max: round(Math.max(0, eld.max / 1e6 - 10)) },
      workers: { spawned, reaped },
      leftover: left,
      notResolved: failures,
      target: { rssGrowthMB: GROWTH_TARGET_MB },
      met: growth < GROWTH_TARGET_MB * 1e6,
    },
    ok: failures.length === 0 && done === tasks && left.length === 0,
  };
}

let ok = true;
for (const name of WANTED) {
  const spec = SCENARIOS[name];
  if (!spec) {
    log(`unknown scenario ${name} (known: ${Object.keys(SCENARIOS).join(', ')})`);
    process.exit(2);
  }
  log(`${name}: ${spec.tasks} tasks, concurrency ${CONCURRENCY}`);
  const { result, ok: passed } = await scenario(name, spec);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  if (!passed) {
    ok = false;
    log(`FAILED: ${name}: ${result.notResolved.length} not resolved, ${result.leftover.length} process(es) left: ${[...result.notResolved, ...result.leftover].join('; ')}`);
  }
}
process.exit(ok ? 0 : 1);
