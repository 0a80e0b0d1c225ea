#!/usr/bin/env node
// `tidepool run` against the physical limits of process-per-task on this machine, measured
// in the same run: a bare `fork` loop, a bare `spawn` loop of /bin/cat, and bare reused
// children answering IPC. Each repetition is a back-to-back pair (order alternating:
// reference then tidepool, then tidepool then reference, ...) so drift on a noisy machine hits
// both sides; rates are medians of BENCH_REPEAT runs, `ratio` is the median of the per-pair
// ratios tidepool / reference. See docs/benchmark-notes.md.
//
// stdout: one JSON object per scenario. stderr: progress. Exit 1 when tidepool's output is
// not one "resolved" line per task, a reference run fails, or a worker outlives its run.
//
// The single-use scenarios also run tidepool without its ledger of live workers
// (`--state-dir none`) in each repetition: `ledger.ratio` is the median of the per-repetition
// ratios with / without it (BENCH_LEDGER=0 leaves that side out).
//
// Usage: npm run build && node scripts/bench-run.js
// Env: BENCH_CLI_ENV, BENCH_REPEAT, BENCH_CONCURRENCY, BENCH_TASKS (all scenarios), BENCH_MODULE_TASKS,
//      BENCH_COMMAND_TASKS, BENCH_REUSE_TASKS, BENCH_REUSE_CONCURRENCY,
//      BENCH_REUSE_MAX_TASKS, BENCH_SCENARIOS (comma list of module,command,reuse), BENCH_LEDGER.
import { fork, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'bin/tidepool');
const NOOP = join(ROOT, 'test/fixtures/noop.js');
const IPC_ECHO = join(ROOT, 'scripts/fixtures/ipc-echo.js');
const CAT = '/bin/cat';
/**
 * What the reference children get: the machine's best case (see REFERENCE.md), only PATH.
 * `detached` puts each in its own session, as tidepool does with its workers: with the
 * kernel's autogroup scheduling (sched_autogroup_enabled=1) a new session is a new
 * scheduling group, and on a shared machine that alone changes a child's share of the CPU.
 * Both sides must be scheduled alike; it does not change what a fork or spawn costs.
 */
const BARE = { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, detached: true };
/**
 * Passed to tidepool's workers (`--env`), so that a worker outliving its run can be found in
 * /proc. One short variable: no measurable cost.
 */
const MARK_NAME = 'TIDEPOOL_BENCH_RUN';
const MARK = `${process.pid}-${Date.now()}`;

/**
 * The CLI's environment. By default the same as the references' children get, PATH only, so
 * both sides' workers run in the same environment (tidepool's allowlist finds nothing else to
 * pass on). BENCH_CLI_ENV=caller gives it this script's environment instead, minus TIDEPOOL_*
 * settings, as a shell would: the workers then also get HOME, LANG, ... and the CLI itself
 * NODE_EXTRA_CA_CERTS if set (see docs/benchmark-notes.md for what that costs).
 */
const CLI_ENV =
  process.env.BENCH_CLI_ENV === 'caller'
    ? Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('TIDEPOOL_')))
    : { ...BARE.env };

class BenchError extends Error {}

/** Every child this script has started and not yet seen exit. */
const children = new Set();
let interrupted = null;

function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  child.once('error', () => {
    if (child.pid === undefined) children.delete(child);
  });
  return child;
}

// Ctrl-C / SIGTERM: stop the children (on SIGTERM tidepool stops and kills its own workers),
// let the runs fail, clean up, and exit with 128 + the signal.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    interrupted = signal;
    for (const child of children) child.kill('SIGTERM');
  });
}

function intEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw.trim()) || Number(raw) < 1) throw new BenchError(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

function config() {
  const tasks = intEnv('BENCH_TASKS', null);
  const concurrency = intEnv('BENCH_CONCURRENCY', 2);
  const known = ['module', 'command', 'reuse'];
  const scenarios = (process.env.BENCH_SCENARIOS ?? known.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
  for (const s of scenarios) if (!known.includes(s)) throw new BenchError(`BENCH_SCENARIOS: unknown scenario ${JSON.stringify(s)} (known: ${known.join(', ')})`);
  return {
    repeat: intEnv('BENCH_REPEAT', 5),
    ledger: process.env.BENCH_LEDGER !== '0',
    scenarios,
    module: { tasks: intEnv('BENCH_MODULE_TASKS', tasks ?? 200), concurrency },
    command: { tasks: intEnv('BENCH_COMMAND_TASKS', tasks ?? 2000), concurrency },
    reuse: {
      tasks: intEnv('BENCH_REUSE_TASKS', tasks ?? 10000),
      concurrency: intEnv('BENCH_REUSE_CONCURRENCY', 2),
      maxTasks: intEnv('BENCH_REUSE_MAX_TASKS', 1000),
    },
  };
}

// ---------------------------------------------------------------------------------------
// tidepool, as a whole command

/**
 * Run `node bin/tidepool run FILE ...args` to its end; resolves with the elapsed ms. Checks
 * exit 0 and exactly `expected` lines, each "resolved", with distinct ids.
 */
function runTidepool(file, args, expected) {
  return new Promise((resolve, reject) => {
    if (interrupted) return reject(new BenchError(`interrupted by ${interrupted}`));
    const argv = [CLI, 'run', file, ...args, '--env', `${MARK_NAME}=${MARK}`];
    const started = performance.now();
    // The flags below are the whole configuration (no TIDEPOOL_* variables in CLI_ENV); the
    // CLI's own start-up is part of the figure.
    const child = track(spawn(process.execPath, argv, { env: CLI_ENV, stdio: ['ignore', 'pipe', 'pipe'] }));
    const out = [];
    const err = [];
    child.stdout.on('data', (c) => out.push(c));
    child.stderr.on('data', (c) => err.push(c));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      const ms = performance.now() - started;
      const stderr = Buffer.concat(err).toString('utf8').trim();
      const command = `node bin/tidepool ${argv.slice(1).join(' ')}`;
      const problem = checkOutput(Buffer.concat(out).toString('utf8'), expected, code, signal);
      if (problem) return reject(new BenchError(`${command}: ${problem}${stderr ? `\nstderr:\n${stderr.slice(-4000)}` : ''}`));
      resolve(ms);
    });
  });
}

function checkOutput(stdout, expected, code, signal) {
  const exit = signal !== null || code !== 0 ? `exited with ${signal ?? `code ${code}`} (expected 0)` : null;
  const lines = stdout.split('\n').filter((l) => l !== '');
  if (lines.length !== expected) return `printed ${lines.length} lines, expected ${expected}${exit ? `; ${exit}` : ''}`;
  const ids = new Set();
  for (const line of lines) {
    let result;
    try {
      result = JSON.parse(line);
    } catch {
      return `printed a line that is not JSON: ${line.slice(0, 200)}`;
    }
    if (result.status !== 'resolved') return `a task did not resolve: ${line.slice(0, 500)}${exit ? `; ${exit}` : ''}`;
    ids.add(result.id);
  }
  if (ids.size !== expected) return `printed ${ids.size} distinct ids, expected ${expected}`;
  return exit;
}

/** Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, ...]. */
function statFields(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

const OWN_GROUP = Number(statFields('self')[2]);
/** This script and its ancestors (`npm run bench`, a shell), which share its process group. */
const ANCESTORS = (() => {
  const pids = new Set();
  for (let pid = process.pid; pid > 1 && !pids.has(pid); ) {
    pids.add(pid);
    try {
      pid = Number(statFields(pid)[1]);
    } catch {
      break;
    }
  }
  return pids;
})();
const TIDEPOOL_PATHS = [join(ROOT, 'dist/'), join(ROOT, 'bin/tidepool')];

/**
 * Live processes tidepool left behind: workers carrying this run's mark (they run in their
 * own process groups), and tidepool processes in this script's process group (the CLI and
 * helpers it forks without a group of their own, such as the spawn host).
 */
function leftovers() {
  const found = [];
  const needle = `${MARK_NAME}=${MARK}\0`;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || ANCESTORS.has(Number(entry))) continue;
    try {
      const [state, , pgrp] = statFields(entry);
      if (state === 'Z') continue;
      const marked = `${readFileSync(`/proc/${entry}/environ`, 'latin1')}\0`.includes(needle);
      const cmdline = Number(pgrp) === OWN_GROUP ? readFileSync(`/proc/${entry}/cmdline`, 'latin1') : '';
      if (marked || TIDEPOOL_PATHS.some((path) => cmdline.includes(path))) {
        found.push(`${entry} (${readFileSync(`/proc/${entry}/cmdline`, 'latin1').replace(/\0/g, ' ').trim().slice(0, 120)})`);
      }
    } catch {
      // Gone, or not ours.
    }
  }
  return found;
}

async function assertNoLeftovers() {
  // A worker killed at the CLI's exit may take a moment to die.
  for (let i = 0; i < 20; i++) {
    const pids = leftovers();
    if (pids.length === 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  const pids = leftovers();
  if (pids.length > 0) throw new BenchError(`tidepool left worker processes behind: ${pids.join(', ')}`);
}

// ---------------------------------------------------------------------------------------
// References

/**
 * Keep `concurrency` children in flight until `n` have been started and every one has
 * ended; `start(i, done)` starts child i and calls `done(error?)` once it is over (awaited:
 * nothing outlives the loop). Resolves with the elapsed ms.
 */
function loop(n, concurrency, start) {
  return new Promise((resolve, reject) => {
    let started = 0;
    let live = 0;
    let failure = null;
    const t0 = performance.now();
    const next = () => {
      if (failure === null && interrupted === null && started < n) {
        const i = started++;
        live++;
        let ended = false;
        start(i, (err) => {
          if (ended) return;
          ended = true;
          live--;
          if (err && failure === null) failure = err;
          next();
        });
      } else if (live === 0) {
        if (interrupted) reject(new BenchError(`interrupted by ${interrupted}`));
        else if (failure) reject(failure);
        else resolve(performance.now() - t0);
      }
    };
    for (let k = 0; k < Math.min(concurrency, n); k++) next();
  });
}

/** Single use: fork the no-op module itself, which loads and exits (no message at all). */
function bareFork(n, concurrency) {
  return loop(n, concurrency, (_i, done) => {
    const child = track(fork(NOOP, [], { ...BARE, stdio: 'ignore', execArgv: [] }));
    child.once('error', (err) => {
      if (child.pid === undefined) done(err);
    });
    child.once('exit', (code, signal) => done(code === 0 ? null : new BenchError(`bare fork exited with ${signal ?? `code ${code}`}`)));
  });
}

/** Single use: spawn /bin/cat, write the task to stdin, read stdout until close. */
function bareSpawn(n, concurrency) {
  return loop(n, concurrency, (i, done) => {
    const input = `${JSON.stringify({ id: `bare:${i}` })}\n`;
    const child = track(spawn(CAT, [], { ...BARE, stdio: ['pipe', 'pipe', 'ignore'] }));
    const out = [];
    child.once('error', (err) => {
      if (child.pid === undefined) done(err);
    });
    child.stdin.on('error', () => {});
    child.stdout.on('data', (c) => out.push(c));
    child.once('close', (code, signal) => {
      if (code !== 0) return done(new BenchError(`bare /bin/cat exited with ${signal ?? `code ${code}`}`));
      const got = Buffer.concat(out).toString('utf8');
      done(got === input ? null : new BenchError(`bare /bin/cat echoed ${JSON.stringify(got)}`));
    });
    child.stdin.end(input);
  });
}

/**
 * Reuse: `concurrency` forked children, each answering one IPC round trip at a time and
 * retired (disconnected, exit awaited) after `maxTasks`, like tidepool's reused workers.
 */
function bareIpc(n, concurrency, maxTasks) {
  let sent = 0;
  return loop(Math.ceil(n / maxTasks), concurrency, (_i, done) => {
    const budget = Math.min(maxTasks, n - sent);
    sent += budget;
    const child = track(fork(IPC_ECHO, [], { ...BARE, stdio: 'ignore', execArgv: [] }));
    let served = 0;
    let failure = null;
    const send = () => child.send({ k: 'run', task: { id: `bare:${sent - budget + served}` }, last: false });
    child.on('message', () => {
      served++;
      if (served < budget) send();
      else child.disconnect();
    });
    child.once('error', (err) => {
      if (child.pid === undefined) done(err);
      else failure ??= err;
    });
    child.once('exit', (code, signal) => {
      if (failure === null && (served < budget || code !== 0)) {
        failure = new BenchError(`bare IPC child exited with ${signal ?? `code ${code}`} after ${served}/${budget} round trips`);
      }
      done(failure);
    });
    send();
  });
}

// ---------------------------------------------------------------------------------------
// Scenarios

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const round = (x, digits) => Number(x.toFixed(digits));
const rate = (tasks, ms) => (tasks * 1000) / ms;

function scenarios(cfg, dir) {
  const tasksFile = (n) => {
    const file = join(dir, `tasks-${n}.jsonl`);
    if (!existsSync(file)) writeFileSync(file, '{}\n'.repeat(n));
    return file;
  };
  const all = {
    module: {
      scenario: 'module-single-use',
      ...cfg.module,
      ledger: cfg.ledger,
      target: 0.9,
      args: ['--worker', NOOP, '--concurrency', String(cfg.module.concurrency), '--log-level', 'warn'],
      reference: {
        name: 'bare child_process.fork loop of test/fixtures/noop.js (loads and exits; no IPC message), env PATH only, detached, stdio ignore',
        run: (n) => bareFork(n, cfg.module.concurrency),
      },
    },
    command: {
      scenario: 'command-single-use',
      ...cfg.command,
      ledger: cfg.ledger,
      target: 0.8,
      args: ['--command', CAT, '--concurrency', String(cfg.command.concurrency), '--log-level', 'warn'],
      reference: {
        name: 'bare child_process.spawn loop of /bin/cat (task JSON to stdin, stdout read until close), env PATH only, detached',
        run: (n) => bareSpawn(n, cfg.command.concurrency),
      },
    },
    reuse: {
      scenario: 'module-reused',
      tasks: cfg.reuse.tasks,
      concurrency: cfg.reuse.concurrency,
      target: null,
      maxTasksPerWorker: cfg.reuse.maxTasks,
      args: [
        '--worker', NOOP,
        '--max-tasks-per-worker', String(cfg.reuse.maxTasks),
        '--concurrency', String(cfg.reuse.concurrency),
        '--log-level', 'warn',
      ],
      reference: {
        name: `${cfg.reuse.concurrency} bare forked children (scripts/fixtures/ipc-echo.js) answering IPC round trips, one in flight each, retired after ${cfg.reuse.maxTasks}; env PATH only, detached`,
        run: (n) => bareIpc(n, cfg.reuse.concurrency, cfg.reuse.maxTasks),
      },
    },
  };
  // The ledger in a directory of this run's own (no other manager's ledger to sweep).
  const stateDir = join(dir, 'state');
  mkdirSync(stateDir, { recursive: true });
  return cfg.scenarios.map((name) => ({ ...all[name], args: [...all[name].args, '--state-dir', stateDir], tasksFile }));
}

async function measure(s, repeat) {
  const file = s.tasksFile(s.tasks);
  const empty = s.tasksFile(0);
  const tidepool = async (f, n, args = s.args) => {
    const ms = await runTidepool(f, args, n);
    await assertNoLeftovers();
    return ms;
  };
  // The same run without the ledger: the last --state-dir wins.
  const noLedgerArgs = [...s.args, '--state-dir', 'none'];
  const began = performance.now();
  // Warm-up (not counted): page cache, first-run compilation.
  const warm = Math.min(s.tasks, s.concurrency * 2);
  await s.reference.run(warm);
  await tidepool(s.tasksFile(warm), warm);

  const bare = [];
  const tide = [];
  const noLedger = [];
  const startup = [];
  // Each repetition runs every side back to back, in an order that changes: ABBA for two
  // sides, and for three every one of the six orders in turn (each side as often first,
  // middle and last over six repetitions).
  const orders = s.ledger
    ? [[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1], [2, 0, 1], [1, 0, 2]].map((o) => o.map((i) => ['bare', 'tidepool', 'no-ledger'][i]))
    : [['bare', 'tidepool'], ['tidepool', 'bare']];
  for (let r = 0; r < repeat; r++) {
    const order = orders[r % orders.length];
    for (const side of order) {
      if (side === 'bare') bare.push(await s.reference.run(s.tasks));
      else if (side === 'tidepool') tide.push(await tidepool(file, s.tasks));
      else noLedger.push(await tidepool(file, s.tasks, noLedgerArgs));
    }
    // The CLI's fixed cost (start-up, pool start, drain) on no task at all.
    startup.push(await tidepool(empty, 0));
    process.stderr.write(
      `bench: ${s.scenario} ${r + 1}/${repeat}: reference ${rate(s.tasks, bare.at(-1)).toFixed(1)}/s, ` +
        `tidepool ${rate(s.tasks, tide.at(-1)).toFixed(1)}/s` +
        (s.ledger ? ` (without the ledger ${rate(s.tasks, noLedger.at(-1)).toFixed(1)}/s)` : '') +
        `, empty run ${startup.at(-1).toFixed(0)} ms\n`,
    );
  }
  const digits = s.tasks < 1000 ? 2 : 1;
  const tideRates = tide.map((ms) => rate(s.tasks, ms));
  const bareRates = bare.map((ms) => rate(s.tasks, ms));
  // The median of the per-pair ratios: a pair ran back to back, so a slow spell of the
  // machine hits both of its sides.
  const ratio = median(tideRates.map((t, i) => t / bareRates[i]));
  process.stderr.write(`bench: ${s.scenario} took ${((performance.now() - began) / 1000).toFixed(1)} s\n`);
  return {
    scenario: s.scenario,
    concurrency: s.concurrency,
    tasks: s.tasks,
    ...(s.maxTasksPerWorker ? { maxTasksPerWorker: s.maxTasksPerWorker } : {}),
    tidepool: {
      tasksPerSec: round(median(tideRates), digits),
      samples: tideRates.map((x) => round(x, digits)),
      // What the CLI costs with no task at all, and the rate with that cost taken out.
      emptyRunMs: round(median(startup), 0),
      tasksPerSecWithoutEmptyRun: tide.every((ms, i) => ms > startup[i])
        ? round(median(tide.map((ms, i) => rate(s.tasks, ms - startup[i]))), digits)
        : null,
    },
    reference: {
      name: s.reference.name,
      tasksPerSec: round(median(bareRates), digits),
      samples: bareRates.map((x) => round(x, digits)),
    },
    ratio: round(ratio, 3),
    ...(s.ledger
      ? {
          ledger: {
            withoutTasksPerSec: round(median(noLedger.map((ms) => rate(s.tasks, ms))), digits),
            withoutSamples: noLedger.map((ms) => round(rate(s.tasks, ms), digits)),
            // With / without, per repetition (adjacent runs): below 1 is what the ledger costs.
            ratio: round(median(tideRates.map((t, i) => t / rate(s.tasks, noLedger[i]))), 3),
          },
        }
      : {}),
    target: s.target,
    ...(s.target === null ? {} : { met: ratio >= s.target }),
  };
}

async function main() {
  const cfg = config();
  if (!existsSync(join(ROOT, 'dist/src/cli/main.js'))) throw new BenchError('dist/ is missing: run `npm run build` first');
  process.stderr.write(
    `bench: node ${process.version}, ${availableParallelism()} CPUs, repeat ${cfg.repeat}, scenarios ${cfg.scenarios.join(',')}\n`,
  );
  const dir = mkdtempSync(join(tmpdir(), 'tidepool-bench-'));
  try {
    for (const s of scenarios(cfg, dir)) {
      const result = await measure(s, cfg.repeat);
      process.stdout.write(`${JSON.stringify(result)}\n`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  if (interrupted) {
    process.stderr.write(`bench: interrupted by ${interrupted}\n`);
    process.exitCode = 128 + (interrupted === 'SIGINT' ? 2 : 15);
    return;
  }
  process.stderr.write(`bench: FAILED: ${err instanceof BenchError ? err.message : err?.stack ?? err}\n`);
  process.exitCode = 1;
});
