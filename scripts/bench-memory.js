#!/usr/bin/env node
// Whether `tidepool run` keeps its memory flat on a long input. It writes a file of N lines of
// `{}` (BENCH_MEMORY_TASKS, default 1,000,000), runs the whole CLI on it:
//
//   node bin/tidepool run FILE --worker test/fixtures/noop.js --max-tasks-per-worker 100000
//        --concurrency 2 --log-level warn --env TIDEPOOL_BENCH_MEMORY=<marker>
//
// (reused no-op module workers: the fastest worker, so a million tasks take minutes; the
// manager's per-task bookkeeping is the same as for any worker), and every ~250 ms samples the
// CLI's resident memory (VmRSS in /proc/PID/status), its open file descriptors (/proc/PID/fd)
// and how many result lines it has printed. It prints one JSON object:
//   rssMiB.atWarmup  RSS when the first BENCH_MEMORY_WARMUP (10 %) of the tasks are done;
//   rssMiB.max / .final  the highest sample / the last sample before exit;
//   rssMiB.growthAfterWarmup  max after warm-up minus atWarmup;
//   rssMiB.slopePer100k  the least-squares slope of RSS against tasks done, after warm-up,
//                        in MiB per 100,000 tasks (flat: about 0);
//   fds.peak / .final, and a profile of RSS at every tenth of the run (`curve`).
// The target is "flat after warm-up": `flat` is true when the growth after warm-up is within
// BENCH_MEMORY_FLAT_MIB (32 MiB; the V8 heap breathes by that much).
//
// It checks that the CLI exits 0 with N lines, each "resolved", and that no worker carrying
// the marker is alive afterwards. Exit 1 when a check fails.
//
// Usage: npm run build && node scripts/bench-memory.js
//        BENCH_MEMORY_TASKS=100000 node scripts/bench-memory.js     (quick, ~30 s)
// Env:   BENCH_MEMORY_TASKS (1000000), BENCH_MEMORY_WARMUP (0.1: a fraction of the tasks),
//        BENCH_MEMORY_CONCURRENCY (2), BENCH_MEMORY_MAX_TASKS (100000: --max-tasks-per-worker),
//        BENCH_MEMORY_COMMAND (unset; e.g. /bin/cat: a command worker instead, much slower),
//        BENCH_MEMORY_FLAT_MIB (32), BENCH_MEMORY_TIMEOUT_S (1200: the CLI is stopped and the
//        run fails), BENCH_CLI_ENV (caller: the CLI gets this script's environment; default
//        PATH only, as in bench-run.js).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'bin/tidepool');
const NOOP = join(ROOT, 'test/fixtures/noop.js');
const MARK_NAME = 'TIDEPOOL_BENCH_MEMORY';
const MARK = `${process.pid}-${Date.now()}`;
const SAMPLE_MS = 250;

class BenchError extends Error {}

const log = (msg) => process.stderr.write(`bench-memory: ${msg}\n`);
const round = (x, digits = 1) => (x === null || Number.isNaN(x) ? null : Number(x.toFixed(digits)));

function intEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw.trim()) || Number(raw) < 1) throw new BenchError(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

function numEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new BenchError(`${name} must be a non-negative number, got ${JSON.stringify(raw)}`);
  return n;
}

const rssMiB = (pid) => {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
};

const countFds = (pid) => {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
};

/** Live processes whose environment carries this run's marker (workers that outlived it). */
function leftovers() {
  const found = [];
  const needle = `${MARK_NAME}=${MARK}\0`;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (`${readFileSync(`/proc/${entry}/environ`, 'latin1')}\0`.includes(needle)) found.push(entry);
    } catch {
      // Gone, or not ours.
    }
  }
  return found;
}

/** Least-squares slope of y against x. */
function slope(points) {
  const n = points.length;
  if (n < 2) return null;
  const mx = points.reduce((s, p) => s + p.x, 0) / n;
  const my = points.reduce((s, p) => s + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.x - mx) * (p.y - my);
    den += (p.x - mx) ** 2;
  }
  return den === 0 ? null : num / den;
}

let child = null;
let interrupted = null;
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    interrupted = signal;
    child?.kill('SIGTERM');
  });
}

async function main() {
  const tasks = intEnv('BENCH_MEMORY_TASKS', 1_000_000);
  const warmFraction = numEnv('BENCH_MEMORY_WARMUP', 0.1);
  const concurrency = intEnv('BENCH_MEMORY_CONCURRENCY', 2);
  const maxTasks = intEnv('BENCH_MEMORY_MAX_TASKS', 100_000);
  const flatMiB = numEnv('BENCH_MEMORY_FLAT_MIB', 32);
  const timeoutS = intEnv('BENCH_MEMORY_TIMEOUT_S', 1200);
  const command = process.env.BENCH_MEMORY_COMMAND || null;
  if (!existsSync(join(ROOT, 'dist/src/cli/main.js'))) throw new BenchError('dist/ is missing: run `npm run build` first');

  const worker = command ? ['--command', command] : ['--worker', NOOP, '--max-tasks-per-worker', String(maxTasks)];
  const args = [...worker, '--concurrency', String(concurrency), '--log-level', 'warn'];
  const shown = `node bin/tidepool run FILE ${args.join(' ').replace(NOOP, 'test/fixtures/noop.js')}`;
  const env =
    process.env.BENCH_CLI_ENV === 'caller'
      ? Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('TIDEPOOL_')))
      : { PATH: process.env.PATH ?? '/usr/bin:/bin' };

  const dir = mkdtempSync(join(tmpdir(), 'tidepool-memory-'));
  try {
    const file = join(dir, 'tasks.jsonl');
    // In chunks: a single 3 MB string per million lines is fine, but keep it bounded.
    writeFileSync(file, '');
    const chunk = '{}\n'.repeat(100_000);
    for (let left = tasks; left > 0; left -= 100_000) writeFileSync(file, left >= 100_000 ? chunk : '{}\n'.repeat(left), { flag: 'a' });
    log(`${shown} (${tasks} lines)`);

    const samples = [];
    let lines = 0;
    let resolved = 0;
    let bad = null;
    let partial = '';
    const t0 = performance.now();
    const exit = await new Promise((resolve, reject) => {
      child = spawn(process.execPath, [CLI, 'run', file, ...args, '--env', `${MARK_NAME}=${MARK}`], {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const pid = child.pid;
      const sample = () => {
        const rss = rssMiB(pid);
        const fds = countFds(pid);
        if (rss !== null) samples.push({ t: (performance.now() - t0) / 1000, done: lines, rss, fds });
      };
      const timer = setInterval(sample, SAMPLE_MS);
      const progress = setInterval(() => log(`${lines}/${tasks} done, RSS ${samples.at(-1)?.rss.toFixed(1)} MiB`), 15_000);
      const deadline = setTimeout(() => {
        bad ??= `still running after ${timeoutS} s`;
        child.kill('SIGTERM');
      }, timeoutS * 1000);
      const err = [];
      child.stderr.on('data', (c) => err.push(c));
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (text) => {
        const parts = (partial + text).split('\n');
        partial = parts.pop();
        for (const line of parts) {
          lines++;
          // Cheap check per line: the CLI prints `"status":"resolved"` for a resolved task.
          if (line.includes('"status":"resolved"')) resolved++;
          else bad ??= `a task did not resolve: ${line.slice(0, 300)}`;
        }
      });
      child.once('error', reject);
      child.once('exit', sample);
      child.once('close', (code, signal) => {
        clearInterval(timer);
        clearInterval(progress);
        clearTimeout(deadline);
        const stderr = Buffer.concat(err).toString('utf8').trim();
        resolve({ code, signal, stderr });
      });
    });
    child = null;
    const seconds = (performance.now() - t0) / 1000;
    if (interrupted) throw new BenchError(`interrupted by ${interrupted}`);

    // A sample taken after the process had exited reads nothing; the last real one is final.
    const warmDone = Math.ceil(tasks * warmFraction);
    const warmIndex = samples.findIndex((s) => s.done >= warmDone);
    const atWarmup = warmIndex >= 0 ? samples[warmIndex] : null;
    const after = warmIndex >= 0 ? samples.slice(warmIndex) : [];
    const maxRss = Math.max(...samples.map((s) => s.rss));
    const maxAfter = after.length ? Math.max(...after.map((s) => s.rss)) : null;
    const final = samples.at(-1);
    const perTask = slope(after.map((s) => ({ x: s.done, y: s.rss })));
    const curve = [];
    for (let tenth = 1; tenth <= 10; tenth++) {
      const s = samples.find((x) => x.done >= (tasks * tenth) / 10);
      if (s) curve.push({ done: s.done, rssMiB: round(s.rss), fds: s.fds });
    }
    if (final && curve.at(-1)?.done !== final.done) curve.push({ done: final.done, rssMiB: round(final.rss), fds: final.fds });
    const growth = atWarmup && maxAfter !== null ? maxAfter - atWarmup.rss : null;
    const leftover = [];
    for (let i = 0; i < 20; i++) {
      leftover.splice(0, leftover.length, ...leftovers());
      if (leftover.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const problems = [];
    if (bad) problems.push(bad);
    if (exit.signal !== null || exit.code !== 0) problems.push(`exited with ${exit.signal ?? `code ${exit.code}`}`);
    if (lines !== tasks || resolved !== tasks) problems.push(`printed ${lines} lines (${resolved} resolved), expected ${tasks}`);
    if (leftover.length > 0) problems.push(`workers left behind: ${leftover.join(', ')}`);
    const result = {
      scenario: 'run-memory',
      command: shown,
      tasks,
      seconds: round(seconds),
      tasksPerSec: round(tasks / seconds, 0),
      samples: samples.length,
      rssMiB: {
        atWarmup: atWarmup ? round(atWarmup.rss) : null,
        warmupTasks: atWarmup ? atWarmup.done : null,
        max: round(maxRss),
        final: final ? round(final.rss) : null,
        growthAfterWarmup: round(growth),
        slopePer100k: perTask === null ? null : round(perTask * 100_000, 2),
      },
      fds: {
        peak: Math.max(...samples.map((s) => s.fds ?? 0)),
        final: final?.fds ?? null,
      },
      curve,
      flat: growth !== null && growth <= flatMiB,
      flatWithinMiB: flatMiB,
      ok: problems.length === 0,
      ...(problems.length ? { problems } : {}),
      ...(exit.stderr ? { stderrTail: exit.stderr.slice(-500) } : {}),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
    if (problems.length) throw new BenchError(problems.join('; '));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  if (interrupted) {
    log(`interrupted by ${interrupted}`);
    process.exitCode = 128 + (interrupted === 'SIGINT' ? 2 : 15);
    return;
  }
  log(`FAILED: ${err instanceof BenchError ? err.message : err?.stack ?? err}`);
  process.exitCode = 1;
});
