#!/usr/bin/env node
// Reused module workers against bare IPC ping-pong, and where the manager's time goes per task
// (issue: performance, item 1). See docs/benchmark-notes.md, "Reused workers".
//
// Scenarios, each paired with its reference in the same run (back-to-back, order alternating,
// ratio = median of the per-pair ratios):
// - `library`: `createPool({ worker: { module: noop }, concurrency, maxTasksPerWorker: 1e9 })`,
//   tasks fed by 64 callers each awaiting its `run()` (a steady stream, nothing piles up);
// - `cli`: `tidepool run FILE --worker noop --max-tasks-per-worker 1000000`, the whole command
//   (its start-up is counted; `startupMs` says how much an empty run takes);
// - reference: `concurrency` bare forked children (scripts/fixtures/ipc-echo.js) answering IPC
//   round trips, one in flight each, env PATH only, detached.
// Every side runs in a fresh Node process, so the manager's CPU per task (`cpuUsPerTask`,
// user + system, from process.cpuUsage) and its GC pauses (`gcUsPerTask`) are its own.
//
// The profile (BENCH_REUSE_PROFILE=1, also on by default) splits the manager's CPU per task:
// - `machines`: the pool with an in-process fake worker (no process, no I/O): XState and the
//   pool's own bookkeeping, the source and settlement; with the time of each machine event;
// - `channel`: the spawn host's channel to real reused workers, driven without any machine:
//   serialisation, the socket, the child;
// - `logging`: the library at log level info (the default) against silent;
// - `youngGeneration`: the library with Node's default young generation against
//   --max-semi-space-size=32 (MiB).
//
// stdout: one JSON object per scenario. stderr: progress. Exit 1 when an outcome is not
// resolved or a worker outlives its run (searched in /proc by its marker).
//
// Usage: npm run build && node scripts/bench-reuse.js
// Env: BENCH_REUSE_TASKS (20000), BENCH_REUSE_CONCURRENCY (4), BENCH_REPEAT (3),
//      BENCH_REUSE_SCENARIOS (library,cli), BENCH_REUSE_PROFILE (1; 0 leaves it out).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { assertNoLeftovers as noLeftovers, intEnv, median } from './lib/bench.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SELF = fileURLToPath(import.meta.url);
const NOOP = join(ROOT, 'test/fixtures/noop.js');
const IPC_ECHO = join(ROOT, 'scripts/fixtures/ipc-echo.js');
const MARK_NAME = 'TIDEPOOL_BENCH_RUN';
const MARK = `${process.pid}-${Date.now()}`;
/** Callers feeding the library, each awaiting its task before the next. */
const CALLERS = 64;


// ---------------------------------------------------------------------------------------
// The measured sides, each run in a child process: `node bench-reuse.js --side NAME N C`.

/** CPU and GC of this process from now on; `end(n)` gives them per task, and the rate. */
async function meter() {
  const { PerformanceObserver } = await import('node:perf_hooks');
  let gcMs = 0;
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) gcMs += entry.duration;
  });
  observer.observe({ entryTypes: ['gc'] });
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  return (n) => {
    const ms = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    observer.disconnect();
    return {
      tasksPerSec: Math.round((n / ms) * 1000),
      cpuUsPerTask: round((cpu.user + cpu.system) / n),
      gcUsPerTask: round((gcMs * 1000) / n),
    };
  };
}

const round = (x, digits = 1) => Number(x.toFixed(digits));

/** Feed `n` tasks to `pool` from CALLERS callers; throws on an outcome that is not resolved. */
async function feed(pool, n, prefix) {
  let left = n;
  let seq = 0;
  await Promise.all(
    Array.from({ length: CALLERS }, async () => {
      while (left-- > 0) {
        const outcome = await pool.run({ id: `${prefix}${seq++}`, payload: {} });
        if (outcome.status !== 'resolved') throw new Error(`task ${outcome.id}: ${JSON.stringify(outcome)}`);
      }
    }),
  );
}

async function sideLibrary(n, concurrency, logLevel = 'info') {
  const { createPool } = await import('../dist/src/index.js');
  const pool = createPool({
    worker: { module: NOOP },
    concurrency,
    maxTasksPerWorker: 1e9,
    logLevel,
    env: [`${MARK_NAME}=${MARK}`],
  });
  await pool.start();
  await feed(pool, concurrency * 50, 'warm-');
  const end = await meter();
  await feed(pool, n, 't');
  const figures = end(n);
  await pool.stop();
  return figures;
}

async function sideBare(n, concurrency) {
  const { fork } = await import('node:child_process');
  const children = Array.from({ length: concurrency }, () =>
    fork(IPC_ECHO, [], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', [MARK_NAME]: MARK }, detached: true, execArgv: [] }),
  );
  const roundTrips = (count) =>
    new Promise((resolve) => {
      let sent = 0;
      let done = 0;
      const next = (child) => {
        sent++;
        child.send({ k: 'run', task: { id: `t${sent}`, payload: {} }, attempt: 1 });
      };
      for (const child of children) {
        child.removeAllListeners('message');
        child.on('message', () => {
          if (++done === count) resolve();
          else if (sent < count) next(child);
        });
        if (sent < count) next(child);
      }
    });
  await roundTrips(concurrency * 50);
  const end = await meter();
  await roundTrips(n);
  const figures = end(n);
  await Promise.all(children.map((child) => new Promise((resolve) => (child.once('exit', resolve), child.disconnect()))));
  return figures;
}

/** The pool with an in-process fake worker: the manager's machines, source and settlement alone. */
async function sideMachines(n, concurrency) {
  const { createPool } = await import('../dist/src/index.js');
  const { createRequire } = await import('node:module');
  const require = createRequire(join(ROOT, 'package.json'));
  const { createActor, fromCallback } = require('xstate');
  // Time each machine event takes, its nested events excluded (an Actor's `_process` is where
  // XState handles one event; wrapped here for the measurement only).
  const Actor = Object.getPrototypeOf(createActor(fromCallback(() => {}))).constructor;
  const process_ = Actor.prototype._process;
  const spent = new Map();
  const stack = [];
  let on = false;
  Actor.prototype._process = function timed(event) {
    if (!on) return process_.call(this, event);
    const t = performance.now();
    stack.push(0);
    try {
      return process_.call(this, event);
    } finally {
      const elapsed = performance.now() - t;
      const nested = stack.pop();
      const key = `${this.logic.id ?? 'process'}: ${event.type}`;
      const entry = spent.get(key) ?? { ms: 0, count: 0 };
      entry.ms += elapsed - nested;
      entry.count++;
      spent.set(key, entry);
      if (stack.length > 0) stack[stack.length - 1] += elapsed;
    }
  };
  const fake = fromCallback(({ sendBack, receive }) => {
    setImmediate(() => {
      sendBack({ type: 'proc.spawned', pid: 1 });
      sendBack({ type: 'proc.ready' });
    });
    receive((command) => {
      if (command.type === 'proc.run') setImmediate(() => sendBack({ type: 'proc.result', result: null }));
      else setImmediate(() => sendBack({ type: 'proc.exit', code: 0, signal: null }));
    });
    return () => {};
  });
  const pool = createPool({ worker: { module: NOOP }, concurrency, maxTasksPerWorker: 1e9 }, { processActor: fake });
  await pool.start();
  await feed(pool, 20_000, 'warm-');
  // Without the timing first (it costs), then once more with it for the split.
  const end = await meter();
  await feed(pool, n, 't');
  const figures = end(n);
  on = true;
  await feed(pool, n, 'timed-');
  on = false;
  await pool.stop();
  const events = Object.fromEntries(
    [...spent].sort((a, b) => b[1].ms - a[1].ms).map(([key, { ms, count }]) => [key, { usPerTask: round((ms * 1000) / n), perTask: round(count / n, 2) }]),
  );
  const machineUs = round([...spent.values()].reduce((sum, { ms }) => sum + ms, 0) * 1000 / n);
  return { ...figures, machineEventsUsPerTask: machineUs, events };
}

/** The spawn host's channel to real reused workers, driven without any machine. */
async function sideChannel(n, concurrency) {
  const { SpawnHost } = await import('../dist/src/process/spawn-host.js');
  const { hostSpec } = await import('../dist/src/process/driver.js');
  const { default: pino } = await import('pino');
  const spec = hostSpec({
    worker: { kind: 'module', path: NOOP },
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', [MARK_NAME]: MARK },
    memoryLimit: null,
    maxTasksPerWorker: 1e9,
    timeout: 1e9,
  });
  const host = new SpawnHost(spec, pino({ level: 'warn' }));
  const message = (i) => ({ k: 'run', task: { id: `t${i}`, payload: {} }, attempt: 1, taskId: `t${i}`, workerId: 'w', last: false, deadline: Date.now() + 1e9 });
  const ids = [];
  let readyCount = 0;
  let onReady;
  const ready = new Promise((resolve) => (onReady = resolve));
  let onReply = () => {};
  const exited = [];
  for (let w = 0; w < concurrency; w++) {
    let exit;
    exited.push(new Promise((resolve) => (exit = resolve)));
    const id = host.spawn(
      {
        spawned() {},
        spawnError(error) {
          throw new Error(error.message);
        },
        exit,
        progress() {},
        message: (m) => (m.k === 'ready' ? ++readyCount === concurrency && onReady() : onReply(id)),
      },
      '',
    );
    ids.push(id);
  }
  await ready;
  const roundTrips = (count) =>
    new Promise((resolve) => {
      let sent = 0;
      let done = 0;
      onReply = (id) => {
        if (++done === count) resolve();
        else if (sent < count) host.post(id, message(++sent));
      };
      for (const id of ids) if (sent < count) host.post(id, message(++sent));
    });
  await roundTrips(concurrency * 50);
  const end = await meter();
  await roundTrips(n);
  const figures = end(n);
  for (const id of ids) host.signal(id, 'SIGTERM');
  await Promise.all(exited);
  host.close();
  return figures;
}

const SIDES = {
  library: (n, c) => sideLibrary(n, c),
  'library-silent': (n, c) => sideLibrary(n, c, 'silent'),
  bare: sideBare,
  machines: sideMachines,
  channel: sideChannel,
};

// ---------------------------------------------------------------------------------------
// The driver.

/** Run `node ...args` to its end: its exit code, stdout and stderr, and the elapsed ms. */
function runNode(args, env) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => (out += c));
    child.stderr.on('data', (c) => (err += c));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, out, err, ms: performance.now() - started }));
  });
}

/** Run `node [execArgv] bench-reuse.js --side NAME N C` and parse its JSON. */
async function runSide(name, n, concurrency, execArgv = []) {
  const { code, out, err } = await runNode([...execArgv, SELF, '--side', name, String(n), String(concurrency)], { ...process.env, NODE_OPTIONS: '' });
  if (code !== 0) throw new Error(`side ${name} exited ${code}: ${err.trim().split('\n').slice(-5).join(' | ')}`);
  return JSON.parse(out.trim().split('\n').at(-1));
}

/** `tidepool run FILE ...` to its end: elapsed ms. Checks one resolved line per task. */
async function runCli(file, n, concurrency) {
  const argv = [join(ROOT, 'bin/tidepool'), 'run', file, '--worker', NOOP, '--concurrency', String(concurrency), '--max-tasks-per-worker', '1000000', '--env', `${MARK_NAME}=${MARK}`];
  const { code, out, err, ms } = await runNode(argv, { PATH: process.env.PATH ?? '/usr/bin:/bin' });
  const resolved = out.split('\n').filter(Boolean).filter((line) => JSON.parse(line).status === 'resolved').length;
  if (code !== 0 || resolved !== n) throw new Error(`tidepool run: exit ${code}, ${resolved}/${n} resolved: ${err.slice(-300)}`);
  return ms;
}

/** Every process this run started carries the marker: none may outlive its side. */
const assertNoLeftovers = () => noLeftovers(MARK_NAME, MARK);

/** Alternating pairs of `a` (tidepool) and `b` (reference); the median of per-pair ratios of tasks/s. */
async function pairs(repeat, a, b, label) {
  const as = [];
  const bs = [];
  const ratios = [];
  for (let i = 0; i < repeat; i++) {
    const [x, y] = i % 2 === 0 ? [await b(), await a()].reverse() : [await a(), await b()];
    as.push(x);
    bs.push(y);
    ratios.push(x.tasksPerSec / y.tasksPerSec);
    process.stderr.write(`${label} ${i + 1}/${repeat}: ${x.tasksPerSec} vs ${y.tasksPerSec} tasks/s\n`);
    await assertNoLeftovers();
  }
  return { as, bs, ratio: round(median(ratios), 3), ratios: ratios.map((r) => round(r, 3)) };
}

const summary = (runs) => ({
  tasksPerSec: median(runs.map((r) => r.tasksPerSec)),
  cpuUsPerTask: median(runs.map((r) => r.cpuUsPerTask)),
  gcUsPerTask: median(runs.map((r) => r.gcUsPerTask)),
  samples: runs.map((r) => r.tasksPerSec),
});

async function main() {
  const n = intEnv('BENCH_REUSE_TASKS', 20_000);
  const concurrency = intEnv('BENCH_REUSE_CONCURRENCY', 4);
  const repeat = intEnv('BENCH_REPEAT', 3);
  const scenarios = (process.env.BENCH_REUSE_SCENARIOS ?? 'library,cli').split(',').map((s) => s.trim()).filter(Boolean);
  const reference = {
    name: `${concurrency} bare forked children (scripts/fixtures/ipc-echo.js) answering IPC round trips, one in flight each; env PATH only, detached`,
  };
  const bare = () => runSide('bare', n, concurrency);

  if (scenarios.includes('library')) {
    const { as, bs, ratio, ratios } = await pairs(repeat, () => runSide('library', n, concurrency), bare, 'library');
    console.log(JSON.stringify({ scenario: 'reused-library', tasks: n, concurrency, tidepool: summary(as), reference: { ...reference, ...summary(bs) }, ratio, ratios, target: 0.5 }));
  }
  if (scenarios.includes('cli')) {
    const dir = mkdtempSync(join(tmpdir(), 'tidepool-bench-reuse-'));
    try {
      const file = join(dir, 'tasks.jsonl');
      const empty = join(dir, 'empty.jsonl');
      writeFileSync(file, '{}\n'.repeat(n));
      writeFileSync(empty, '');
      const startupMs = median(await Promise.all([0, 1, 2].map(() => runCli(empty, 0, concurrency))));
      const cli = async () => ({ tasksPerSec: Math.round((n / (await runCli(file, n, concurrency))) * 1000) });
      const { as, bs, ratio, ratios } = await pairs(repeat, cli, bare, 'cli');
      console.log(
        JSON.stringify({
          scenario: 'reused-cli',
          tasks: n,
          concurrency,
          tidepool: { tasksPerSec: median(as.map((r) => r.tasksPerSec)), samples: as.map((r) => r.tasksPerSec), startupMs: Math.round(startupMs) },
          reference: { ...reference, ...summary(bs) },
          ratio,
          ratios,
          target: 0.5,
        }),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  if (process.env.BENCH_REUSE_PROFILE !== '0') {
    const machines = await runSide('machines', n, concurrency);
    const channel = await runSide('channel', n, concurrency);
    const logging = await pairs(repeat, () => runSide('library', n, concurrency), () => runSide('library-silent', n, concurrency), 'logging');
    const young = await pairs(repeat, () => runSide('library', n, concurrency, ['--max-semi-space-size=32']), () => runSide('library', n, concurrency), 'young generation');
    await assertNoLeftovers();
    console.log(
      JSON.stringify({
        scenario: 'reused-profile',
        tasks: n,
        concurrency,
        machines,
        channel,
        logging: { info: summary(logging.as), silent: summary(logging.bs), ratio: logging.ratio },
        youngGeneration: { semiSpace32MiB: summary(young.as), default: summary(young.bs), ratio: young.ratio },
      }),
    );
  }
}

if (process.argv[2] === '--side') {
  const [, , , name, n, c] = process.argv;
  SIDES[name](Number(n), Number(c)).then(
    (figures) => {
      console.log(JSON.stringify(figures));
      process.exit(0);
    },
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
} else {
  main().catch((err) => {
    console.error(`bench-reuse: ${err.message}`);
    process.exit(1);
  });
}
