#!/usr/bin/env node
// Handler start-up: single-use module workers whose handler imports a mid-size tree of modules
// (scripts/fixtures/heavy-handler, generated into a temporary directory), `tidepool run`
// against a bare `child_process.fork` loop of the same handler at the same concurrency,
// measured in the same run. Each repetition runs every side back to back, in an order that
// rotates; `ratio` is the median of the per-repetition ratios tidepool / bare.
//
// Sides:
//   - bare: fork(scripts/fixtures/heavy-handler/bare-runner.js HANDLER), env PATH only,
//     detached, stdio ignore (as scripts/bench-run.js does);
//   - tidepool: `node bin/tidepool run FILE --worker HANDLER --concurrency C --state-dir DIR`,
//     with what tidepool does by default (Node's compile cache on Node 22.1+, in DIR);
//   - tidepool-no-cache (Node 22.1+ only): the same with `--env NODE_DISABLE_COMPILE_CACHE=1`.
// The bare loops also report the CPU milliseconds per task of their children (the reaped
// children's CPU, /proc/self/stat cutime + cstime), and the run measures a floor the same way:
// a bare fork loop of test/fixtures/noop.js (Node's own start-up and an empty ES module). The
// CLI's side has no such figure: its spawn host is not always reaped by the CLI before it
// exits, so its workers' CPU does not reliably reach this process (scripts/bench-cost.js
// measures the library's CPU per task in-process).
//
// stdout: one JSON object. stderr: progress. Exit 1 when tidepool's output is not one
// "resolved" line per task, a bare child fails, or a worker outlives its run (/proc).
//
// Usage: npm run build && node scripts/bench-start.js   (run it with another node binary to
//        measure that Node: the CLI and the workers use the same one)
// Env: BENCH_TASKS (100), BENCH_CONCURRENCY (2), BENCH_REPEAT (4), BENCH_MODULES (30).
import { fork, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as nodeModule from 'node:module';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { assertNoLeftovers as noLeftovers, BenchError, intEnv, median } from './lib/bench.js';
import { generateHeavyHandler } from './fixtures/heavy-handler/generate.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'bin/tidepool');
const NOOP = join(ROOT, 'test/fixtures/noop.js');
const RUNNER = join(ROOT, 'scripts/fixtures/heavy-handler/bare-runner.js');
const BARE = { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, detached: true };
const MARK_NAME = 'TIDEPOOL_BENCH_RUN';
const MARK = `${process.pid}-${Date.now()}`;
const HAS_CACHE = typeof nodeModule.enableCompileCache === 'function';
const TICK_MS = 10; // USER_HZ is 100 on Linux


/** Fields of /proc/PID/stat after the command name. */
function statFields(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}
/** CPU ms of this process's reaped descendants (cutime + cstime). */
function childCpuMs() {
  const f = statFields('self');
  return (Number(f[13]) + Number(f[14])) * TICK_MS;
}

/** Keep `concurrency` children in flight until `n` have run; resolves with the elapsed ms. */
function loop(n, concurrency, start) {
  return new Promise((resolve, reject) => {
    let started = 0;
    let live = 0;
    let failure = null;
    const t0 = performance.now();
    const next = () => {
      if (failure === null && started < n) {
        started++;
        live++;
        start((err) => {
          live--;
          if (err && failure === null) failure = err;
          next();
        });
      } else if (live === 0) {
        if (failure) reject(failure);
        else resolve(performance.now() - t0);
      }
    };
    for (let k = 0; k < Math.min(concurrency, n); k++) next();
  });
}

function bareFork(entry, args, n, concurrency) {
  return loop(n, concurrency, (done) => {
    const child = fork(entry, args, { ...BARE, stdio: 'ignore', execArgv: [] });
    child.once('error', (err) => {
      if (child.pid === undefined) done(err);
    });
    child.once('exit', (code, signal) => done(code === 0 ? null : new BenchError(`bare fork of ${entry} exited with ${signal ?? `code ${code}`}`)));
  });
}

function runTidepool(file, args, expected) {
  return new Promise((resolve, reject) => {
    const argv = [CLI, 'run', file, ...args, '--env', `${MARK_NAME}=${MARK}`];
    const t0 = performance.now();
    const child = spawn(process.execPath, argv, { env: { ...BARE.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const out = [];
    const err = [];
    child.stdout.on('data', (c) => out.push(c));
    child.stderr.on('data', (c) => err.push(c));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      const ms = performance.now() - t0;
      const lines = Buffer.concat(out).toString('utf8').split('\n').filter(Boolean);
      const ok = code === 0 && lines.length === expected && lines.every((l) => JSON.parse(l).status === 'resolved');
      if (!ok) {
        return reject(new BenchError(`tidepool ${argv.slice(1).join(' ')}: exit ${signal ?? code}, ${lines.length}/${expected} lines, first: ${lines[0]?.slice(0, 300)}\n${Buffer.concat(err).toString('utf8').slice(-2000)}`));
      }
      resolve(ms);
    });
  });
}

/** Workers of this run still alive (they carry the mark in their environment). */
const assertNoLeftovers = () => noLeftovers(MARK_NAME, MARK, { ms: 1_000, what: 'tidepool left workers behind' });

const round = (x, d) => Number(x.toFixed(d));

async function main() {
  const tasks = intEnv('BENCH_TASKS', 100);
  const concurrency = intEnv('BENCH_CONCURRENCY', 2);
  const repeat = intEnv('BENCH_REPEAT', 4);
  const modules = intEnv('BENCH_MODULES', 30);
  process.stderr.write(`bench-start: node ${process.version}, ${availableParallelism()} CPUs, ${tasks} tasks at ${concurrency}, repeat ${repeat}, ${modules} modules, compile cache ${HAS_CACHE ? 'available' : 'not in this Node'}\n`);
  const dir = mkdtempSync(join(tmpdir(), 'tidepool-bench-start-'));
  // Interrupted, it still removes its fixture and state (the children it runs get the signal
  // too, or end with their pool).
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.once(signal, () => {
      rmSync(dir, { recursive: true, force: true });
      process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
    });
  }
  try {
    const handler = generateHeavyHandler(join(dir, 'handler'), { modules });
    const stateDir = join(dir, 'state');
    mkdirSync(stateDir, { mode: 0o700 });
    const file = join(dir, 'tasks.jsonl');
    writeFileSync(file, '{"params":{"n":2}}\n'.repeat(tasks));
    const base = ['--worker', handler, '--concurrency', String(concurrency), '--log-level', 'warn', '--state-dir', stateDir];
    const tidepool = (args) => async (n, f) => {
      const ms = await runTidepool(f, args, n);
      await assertNoLeftovers();
      return ms;
    };
    const sides = {
      bare: (n) => bareFork(RUNNER, [handler], n, concurrency),
      tidepool: (n, f) => tidepool(base)(n, f),
      ...(HAS_CACHE ? { 'tidepool-no-cache': (n, f) => tidepool([...base, '--env', 'NODE_DISABLE_COMPILE_CACHE=1'])(n, f) } : {}),
      'floor-noop': (n) => bareFork(NOOP, [], n, concurrency),
    };
    // Warm-up (not counted): page cache, and the compile cache's first write.
    const warm = join(dir, 'warm.jsonl');
    writeFileSync(warm, '{}\n'.repeat(concurrency * 2));
    for (const run of Object.values(sides)) await run(concurrency * 2, warm);

    const names = Object.keys(sides);
    const samples = Object.fromEntries(names.map((n) => [n, { ms: [], cpu: [] }]));
    for (let r = 0; r < repeat; r++) {
      const order = names.map((_, k) => names[(k + r) % names.length]);
      if (r % 2 === 1) order.reverse();
      for (const name of order) {
        const cpu0 = childCpuMs();
        samples[name].ms.push(await sides[name](tasks, file));
        samples[name].cpu.push((childCpuMs() - cpu0) / tasks);
      }
      const cpu = (n) => (n.startsWith('tidepool') ? '' : ` (${samples[n].cpu.at(-1).toFixed(1)} ms CPU/task)`);
      process.stderr.write(`bench-start: ${r + 1}/${repeat}: ${names.map((n) => `${n} ${((tasks * 1000) / samples[n].ms.at(-1)).toFixed(1)}/s${cpu(n)}`).join(', ')}\n`);
    }
    const rates = (name) => samples[name].ms.map((ms) => (tasks * 1000) / ms);
    const side = (name) => ({
      tasksPerSec: round(median(rates(name)), 2),
      samples: rates(name).map((x) => round(x, 2)),
      ...(name.startsWith('tidepool') ? {} : { cpuMsPerTask: round(median(samples[name].cpu), 1) }),
    });
    const ratio = (name) => round(median(rates(name).map((t, i) => t / rates('bare')[i])), 3);
    const result = {
      scenario: 'handler-start-up',
      node: process.version,
      tasks,
      concurrency,
      modules,
      compileCache: HAS_CACHE,
      bare: { name: 'bare child_process.fork loop of scripts/fixtures/heavy-handler/bare-runner.js HANDLER, env PATH only, detached, stdio ignore', ...side('bare') },
      tidepool: side('tidepool'),
      ...(HAS_CACHE ? { tidepoolNoCache: { ...side('tidepool-no-cache'), ratio: ratio('tidepool-no-cache') } } : {}),
      floorNoop: { name: 'bare fork loop of test/fixtures/noop.js', ...side('floor-noop') },
      ratio: ratio('tidepool'),
      target: 1.5,
      met: ratio('tidepool') >= 1.5,
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`bench-start: FAILED: ${err instanceof BenchError ? err.message : err?.stack ?? err}\n`);
  process.exitCode = 1;
});
