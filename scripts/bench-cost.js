#!/usr/bin/env node
// Where the CPU of a single-use task goes: the library (createPool + run, no CLI) against the
// bare loops of scripts/bench-run.js, in the same process, alternating. For each side it
// reports tasks/s and CPU milliseconds per task of:
//   - manager: this process (process.cpuUsage(), every thread: JIT and GC helpers included);
//   - host: the spawn host (command workers only; /proc/PID/stat);
//   - children: the worker processes, from fork to exit (reaped children's CPU, /proc).
// The ratio of CPU per task bounds the throughput ratio on a machine whose cores are busy.
//
// A third side runs the same pool with a ledger of live workers (`stateDir`, in a directory of
// its own): `ledger` compares the two pools' CPU per task (COST_LEDGER=0 leaves it out).
//
// Usage: npm run build && node scripts/bench-cost.js
// Env: COST_TASKS (default 3000 command, 300 module), COST_REPEAT (3), COST_SCENARIOS
//      (command,module), COST_LEDGER.
// Workers get PATH only, like the references' children: the other allowlisted variables are
// removed from this process's environment first.
import { fork, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPool } from '../dist/src/index.js';

for (const name of ['HOME', 'LANG', 'TZ', 'TMPDIR', 'NODE_ENV']) delete process.env[name];

const NOOP = fileURLToPath(new URL('../test/fixtures/noop.js', import.meta.url));
const BARE = { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, detached: true };
const CONCURRENCY = 2;
const WARMUP = 0.1;
const TICK_MS = 1000 / 100; // USER_HZ

/** CPU ms of a process itself and of its reaped children. */
function cpuOf(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { self: (Number(f[11]) + Number(f[12])) * TICK_MS, children: (Number(f[13]) + Number(f[14])) * TICK_MS };
}

const managerMs = (since) => {
  const c = process.cpuUsage(since);
  return (c.user + c.system) / 1000;
};

/**
 * Run `n` tasks through `start(done)` at CONCURRENCY, measuring after a warm-up.
 * @param {number} n
 * @param {(done: () => void) => void} start
 * @param {() => number | null} hostPid
 */
function measure(n, start, hostPid) {
  return new Promise((resolve) => {
    const warm = Math.round(n * WARMUP);
    let started = 0;
    let finished = 0;
    let t0 = 0;
    let c0;
    let self0;
    let host0 = null;
    const next = () => {
      if (started >= n) return;
      started++;
      start(() => {
        finished++;
        if (finished === warm) {
          t0 = performance.now();
          c0 = process.cpuUsage();
          self0 = cpuOf(process.pid);
          const h = hostPid();
          host0 = h === null ? null : { pid: h, ...cpuOf(h) };
        }
        if (finished === n) {
          const m = n - warm;
          const ms = performance.now() - t0;
          const self1 = cpuOf(process.pid);
          const host1 = host0 === null ? null : cpuOf(host0.pid);
          const children = self1.children - self0.children + (host1 ? host1.children - host0.children : 0);
          resolve({
            tasksPerSec: round((m / ms) * 1000),
            managerMs: round(managerMs(c0) / m, 3),
            hostMs: host1 ? round((host1.self - host0.self) / m, 3) : null,
            childrenMs: round(children / m, 3),
          });
        } else next();
      });
    };
    for (let i = 0; i < CONCURRENCY; i++) next();
  });
}

const round = (x, digits = 1) => Number(x.toFixed(digits));

async function poolSide(worker, n, stateDir) {
  const pool = createPool({ worker, concurrency: CONCURRENCY, logLevel: 'warn', ...(stateDir ? { stateDir } : {}) });
  await pool.start();
  const result = await measure(
    n,
    (done) => void pool.run({}).then(done),
    () => {
      // The spawn host (commands, single-use modules) is the oldest child of this process.
      const kids = readFileSync(`/proc/${process.pid}/task/${process.pid}/children`, 'utf8').trim().split(/\s+/);
      return kids[0] ? Math.min(...kids.map(Number)) : null;
    },
  );
  await pool.drain();
  return result;
}

function bareSpawn(n) {
  return measure(
    n,
    (done) => {
      const child = spawn('/bin/cat', [], { ...BARE, stdio: ['pipe', 'pipe', 'ignore'] });
      child.stdout.on('data', () => {});
      child.stdin.end('{"id":"x"}\n');
      child.on('close', done);
    },
    () => null,
  );
}

function bareFork(n) {
  return measure(
    n,
    (done) => fork(NOOP, [], { ...BARE, stdio: 'ignore', execArgv: [] }).on('exit', done),
    () => null,
  );
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const medians = (runs) =>
  Object.fromEntries(Object.keys(runs[0]).map((k) => [k, runs[0][k] === null ? null : median(runs.map((r) => r[k]))]));

const repeat = Number(process.env.COST_REPEAT ?? 3);
const scenarios = (process.env.COST_SCENARIOS ?? 'command,module').split(',');
const stateDir = process.env.COST_LEDGER === '0' ? null : mkdtempSync(join(tmpdir(), 'tidepool-cost-'));
for (const scenario of scenarios) {
  const n = Number(process.env.COST_TASKS ?? (scenario === 'command' ? 3000 : 300));
  const tidepool = [];
  const reference = [];
  const withLedger = [];
  const worker = scenario === 'command' ? { command: ['/bin/cat'] } : { module: NOOP };
  for (let i = 0; i < repeat; i++) {
    reference.push(await (scenario === 'command' ? bareSpawn(n) : bareFork(n)));
    // Which pool goes first alternates.
    const both = [() => poolSide(worker, n).then((x) => tidepool.push(x)), () => poolSide(worker, n, stateDir).then((x) => withLedger.push(x))];
    for (const side of stateDir === null ? [both[0]] : i % 2 ? both.reverse() : both) await side();
    process.stderr.write(`${scenario}: ${i + 1}/${repeat}\n`);
  }
  const t = medians(tidepool);
  const r = medians(reference);
  const l = stateDir === null ? null : medians(withLedger);
  const total = (x) => x.managerMs + (x.hostMs ?? 0) + x.childrenMs;
  console.log(
    JSON.stringify({
      scenario,
      tasks: n,
      tidepool: { ...t, totalMs: round(total(t), 3) },
      reference: { ...r, totalMs: round(total(r), 3) },
      rateRatio: round(t.tasksPerSec / r.tasksPerSec, 3),
      cpuRatio: round(total(r) / total(t), 3),
      // The pool with a ledger, and what it adds to the manager's CPU per task (ms).
      ...(l === null ? {} : { ledger: { ...l, totalMs: round(total(l), 3), managerMsAdded: round(l.managerMs - t.managerMs, 3) } }),
    }),
  );
}
if (stateDir !== null) rmSync(stateDir, { recursive: true, force: true });
