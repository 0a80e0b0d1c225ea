#!/usr/bin/env node
// Builds, runs every benchmark script with settings that fit in about 15 minutes on a 2-core
// machine, collects their JSON lines and writes docs/benchmarks.md (generated: the machine, a
// summary of every figure with its reference, ratio and target, one section per script with
// the command that reruns it alone, and the peer table) and docs/benchmarks.json (the raw
// lines of the run, to diff). The narrative and the history of the figures are in
// docs/benchmark-notes.md, which this script does not touch.
//
// A script that is missing, cannot run (RabbitMQ not reachable), fails or times out is
// recorded as such, never guessed; a figure whose field is missing from a script's JSON shows
// as "—" with the reason. Adding a script is one entry of SCRIPTS below (`rows` is optional: the
// generic reader takes `scenario`, a rate, `reference`, `ratio`, `target` and `met`).
//
// Usage: npm run bench:all            (the same as: node scripts/bench-all.js)
// Env:   BENCH_ALL_ONLY (comma list of script ids: run only those; the others show "not run"),
//        BENCH_ALL_QUICK=1 (smoke settings, a minute or two: for checking the generator, not for
//        figures), BENCH_ALL_OUT (directory for benchmarks.md/.json; default docs),
//        BENCH_ALL_BUILD=0 (no `npm run build` first), AMQP_URL (amqp://guest:guest@127.0.0.1:5672).
//        node scripts/bench-all.js --from-json FILE   rewrites the markdown from a saved run.
//
// A SCRIPTS entry: id, file, title, env (its settings here), quick (its smoke settings),
// timeoutS (its budget: stopped after it, and recorded as timed out), notes (an anchor of
// docs/benchmark-notes.md), needs (optional: resolves with why it cannot run, or null),
// rows (optional: one JSON line to summary rows; default genericRows).
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { availableParallelism, cpus, loadavg, release, totalmem } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BenchError } from './lib/bench.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const AMQP_URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672';
const log = (text) => process.stderr.write(`bench-all: ${text}\n`);

// ---------------------------------------------------------------------------------------
// Reading a script's JSON lines

/** The value at a dotted path, or undefined. */
const get = (obj, path) => path.split('.').reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), obj);

/** A figure: its text, or "—" saying which field is missing. */
function cell(line, path, format = (x) => String(x)) {
  const value = get(line, path);
  if (value === undefined || value === null) return `— (no \`${path}\`)`;
  return format(value, line);
}

const num = (x) => (typeof x === 'number' ? x.toLocaleString('en-US', { maximumFractionDigits: 3 }) : String(x));
const perSec = (x) => `${num(x)} tasks/s`;
const ms = (x) => `${num(x)} ms`;
/** The first clause of a reference's long name: what it is, not how it runs. */
const short = (name) => (typeof name === 'string' ? name.split(/[(;,]/)[0].trim() : String(name));
const verdict = (met) => (met === true ? 'met' : met === false ? '**missed**' : '—');

/** A row of the summary: figure, tidepool, reference, ratio (tidepool ÷ reference), target, verdict. */
const row = (figure, tidepool, reference, ratio, target, met) => ({ figure, tidepool, reference, ratio, target, verdict: verdict(met) });

/** What any script's line probably means: the fields the scripts of this repo share. */
function genericRows(line) {
  const rate = ['tidepool.tasksPerSec', 'tasksPerSec', 'tidepoolPerSec', 'tasksPerSecond', 'servePerSecond'].find((p) => typeof get(line, p) === 'number');
  const ref = get(line, 'reference');
  const target = get(line, 'target');
  const met = get(line, 'met') ?? get(line, 'target.met');
  return [
    row(
      line.scenario ?? '— (no `scenario`)',
      rate ? perSec(get(line, rate)) : '— (no rate in its JSON)',
      ref === undefined || ref === null
        ? typeof get(line, 'referencePerSec') === 'number'
          ? perSec(line.referencePerSec)
          : '— (no `reference`)'
        : typeof ref === 'object'
          ? `${short(ref.name)}${typeof ref.tasksPerSec === 'number' ? `: ${perSec(ref.tasksPerSec)}` : ''}`
          : String(ref),
      cell(line, 'ratio'),
      target === undefined ? '— (no `target`)' : target === null ? 'none' : typeof target === 'object' ? JSON.stringify(target) : `≥ ${target}`,
      met,
    ),
  ];
}

const rateRow = (line) =>
  row(
    line.scenario,
    cell(line, 'tidepool.tasksPerSec', perSec),
    `${short(get(line, 'reference.name') ?? '— (no `reference.name`)')}: ${cell(line, 'reference.tasksPerSec', perSec)}`,
    cell(line, 'ratio'),
    line.target === null ? 'none' : cell(line, 'target', (t) => `≥ ${t}`),
    line.met,
  );

function scaleRows(line) {
  if (line.scenario === 'limits') return [];
  if (line.scenario === 'fake-scale') {
    return [
      row(
        `fake-scale, ${line.workers ?? '?'} live workers`,
        `${cell(line, 'cpuMsPerTask', ms)} CPU per task`,
        `the same at ${cell(line, 'smallest')} live`,
        cell(line, 'ratioToSmallest'),
        line.target ? `≤ ${line.target.ratioAtMost}` : 'none',
        line.target?.met,
      ),
    ];
  }
  if (line.scenario === 'fake-scale-profile') return [];
  if (line.eldMs !== undefined || line.eldTarget !== undefined) {
    const resolved = get(line, 'outcomes.resolved');
    const met = line.eldTarget?.met === undefined ? undefined : line.eldTarget.met && line.ok !== false;
    return [
      row(
        line.scenario,
        `event-loop delay p99 ${cell(line, 'eldMs.p99', ms)} (max ${cell(line, 'eldMs.max', ms)}); ${resolved ?? '?'}/${line.tasks ?? '?'} resolved; ${cell(line, 'seconds', (s) => `${s} s`)}`,
        `idle process p99 ${cell(line, 'idleEldMs.p99', ms)}`,
        '—',
        line.eldTarget ? `p99 < ${line.eldTarget.p99BelowMs} ms, all resolved, nothing left` : '— (no `eldTarget`)',
        met,
      ),
    ];
  }
  return genericRows(line);
}

const SCRIPTS = [
  {
    id: 'run',
    file: 'scripts/bench-run.js',
    notes: 'scenarios',
    title: '`tidepool run` against the physical limits (single-use and reused)',
    env: { BENCH_REPEAT: '3' },
    quick: { BENCH_REPEAT: '1', BENCH_TASKS: '20' },
    timeoutS: 300,
    rows: (line) => {
      const rows = [rateRow(line)];
      if (line.ledger) rows.push(row(`${line.scenario}, ledger cost`, `${cell(line, 'tidepool.tasksPerSec', perSec)} with the ledger`, `without: ${cell(line, 'ledger.withoutTasksPerSec', perSec)}`, cell(line, 'ledger.ratio'), 'none', undefined));
      return rows;
    },
  },
  {
    id: 'scale',
    file: 'scripts/bench-scale.js',
    notes: 'scriptsbench-scalejs',
    title: 'Scale: manager cost per live worker, and thousands of live processes (issue: seams, item 3)',
    env: { BENCH_SCALE_SIZES: '10,100,1000', BENCH_SCALE_PROFILE: '0', BENCH_SCALE_BUDGET_S: '10', BENCH_SCALE_WARMUP_S: '4', BENCH_REAL_TIMEOUT_S: '240' },
    quick: { BENCH_QUICK: '1', BENCH_SCALE_SCENARIOS: 'fake', BENCH_SCALE_SIZES: '10,100' },
    timeoutS: 600,
    rows: scaleRows,
  },
  {
    id: 'memory',
    file: 'scripts/bench-memory.js',
    notes: 'scriptsbench-memoryjs',
    title: 'Memory of a long `tidepool run` (issue: seams, item 6)',
    env: { BENCH_MEMORY_TASKS: '100000' },
    quick: { BENCH_MEMORY_TASKS: '5000' },
    timeoutS: 300,
    rows: (line) => [
      row(
        `${line.scenario}, ${num(line.tasks ?? '?')} tasks`,
        `RSS growth after warm-up ${cell(line, 'rssMiB.growthAfterWarmup', (x) => `${num(x)} MiB`)}, slope ${cell(line, 'rssMiB.slopePer100k', (x) => `${num(x)} MiB`)} per 100,000; ${cell(line, 'tasksPerSec', perSec)}`,
        `RSS at warm-up ${cell(line, 'rssMiB.atWarmup', (x) => `${num(x)} MiB`)}`,
        '—',
        `flat: growth ≤ ${cell(line, 'flatWithinMiB', (x) => `${x} MiB`)}`,
        line.flat === undefined ? undefined : line.flat && line.ok !== false,
      ),
    ],
  },
  {
    id: 'peers',
    file: 'scripts/bench-peers.js',
    notes: 'peers-scriptsbench-peersjs',
    title: 'Peers: BullMQ sandboxed processors and piscina at the same concurrency',
    env: { BENCH_REPEAT: '3' },
    quick: { BENCH_REPEAT: '1', BENCH_PEERS_TASKS: '1000', BENCH_PEERS_SINGLE_TASKS: '12' },
    timeoutS: 480,
    rows: (line) => {
      if (line.scenario === 'peers-leftovers') {
        return [row('peers: processes left after the run', cell(line, 'leftovers', (l) => (l.length ? l.join(', ') : 'none')), '—', '—', 'nothing left', line.ok)];
      }
      const tide = cell(line, 'tidepool.tasksPerSec', perSec);
      const rows = [
        row(line.scenario, line.tidepool?.status && line.tidepool.status !== 'ok' ? line.tidepool.status : tide, line.reference ? peerCell(line.reference) : '— (no reference)', cell(line, 'ratio'), 'none', undefined),
      ];
      for (const peer of line.peers ?? []) {
        rows.push(row(`${line.scenario} vs ${peer.id}`, tide, peerCell(peer), peer.status === 'ok' ? cell(peer, 'tidepoolRatio') : '—', 'none', undefined));
      }
      return rows;
    },
  },
  {
    id: 'cost',
    file: 'scripts/bench-cost.js',
    notes: 'where-the-cpu-goes-scriptsbench-costjs',
    title: 'Where the CPU of a single-use task goes',
    env: { COST_REPEAT: '1' },
    quick: { COST_REPEAT: '1', COST_TASKS: '20' },
    timeoutS: 300,
    rows: (line) => [
      row(
        `${line.scenario}: CPU per task`,
        `${cell(line, 'tidepool.totalMs', ms)} (${cell(line, 'tidepool.tasksPerSec', perSec)})`,
        `bare loop: ${cell(line, 'reference.totalMs', ms)} (${cell(line, 'reference.tasksPerSec', perSec)})`,
        `${cell(line, 'cpuRatio')} (CPU; rates ${cell(line, 'rateRatio')})`,
        'none',
        undefined,
      ),
    ],
  },
  {
    id: 'reuse',
    file: 'scripts/bench-reuse.js',
    notes: 'reused-workers-scriptsbench-reusejs',
    title: 'Reused workers against bare IPC ping-pong, and where the manager\'s time goes per task',
    env: { BENCH_REPEAT: '3' },
    quick: { BENCH_REPEAT: '1', BENCH_REUSE_TASKS: '1000' },
    timeoutS: 600,
    rows: (line) => {
      const us = (x) => `${num(x)} µs`;
      if (line.scenario !== 'reused-profile') {
        return [
          row(
            `${line.scenario}, ${num(line.tasks ?? '?')} tasks, concurrency ${line.concurrency ?? '?'}`,
            `${cell(line, 'tidepool.tasksPerSec', perSec)}${line.tidepool?.cpuUsPerTask === undefined ? '' : `; manager ${us(line.tidepool.cpuUsPerTask)} CPU/task`}`,
            `bare IPC: ${cell(line, 'reference.tasksPerSec', perSec)}; ${cell(line, 'reference.cpuUsPerTask', us)} CPU/task`,
            cell(line, 'ratio'),
            '≥ 0.5',
            typeof line.ratio === 'number' ? line.ratio >= 0.5 : undefined,
          ),
        ];
      }
      return [
        row('manager CPU per task: machines alone (fake worker)', `${cell(line, 'machines.cpuUsPerTask', us)}, of which machine events ${cell(line, 'machines.machineEventsUsPerTask', us)}, GC ${cell(line, 'machines.gcUsPerTask', us)}`, '—', '—', 'none', undefined),
        row('manager CPU per task: the channel alone (no machines)', cell(line, 'channel.cpuUsPerTask', us), '—', '—', 'none', undefined),
        row('logging at the default level (info ÷ silent, tasks/s)', `${cell(line, 'logging.info.tasksPerSec', perSec)}`, `silent: ${cell(line, 'logging.silent.tasksPerSec', perSec)}`, cell(line, 'logging.ratio'), 'not measurable', undefined),
        row('young generation --max-semi-space-size=32 ÷ default', cell(line, 'youngGeneration.semiSpace32MiB.tasksPerSec', perSec), `default: ${cell(line, 'youngGeneration.default.tasksPerSec', perSec)}`, cell(line, 'youngGeneration.ratio'), 'none', undefined),
      ];
    },
  },
  // Scripts added on other branches: run when present, with their own defaults, inside a budget.
  {
    id: 'latency',
    file: 'scripts/bench-latency.js',
    notes: 'latency-scriptsbench-latencyjs',
    title: 'Latency from run() to the handler\'s first line, cold and with a warm spare',
    env: {},
    quick: { BENCH_LATENCY_TASKS: '10' },
    timeoutS: 300,
    rows: (line) => [
      row(
        `${line.scenario}: p50 / p99, ${num(line.tasks ?? '?')} tasks`,
        `${cell(line, 'tidepool.latencyMs.p50', ms)} / ${cell(line, 'tidepool.latencyMs.p99', ms)}`,
        `${short(line.reference?.name)}: ${cell(line, 'reference.latencyMs.p50', ms)} / ${cell(line, 'reference.latencyMs.p99', ms)}`,
        `${cell(line, 'ratio')} (p50 ÷ p50)`,
        line.target ? `p50 ≤ ${line.target.p50Ms} ms` : 'none',
        line.met,
      ),
    ],
  },
  {
    id: 'soak',
    file: 'scripts/bench-soak.js',
    notes: 'soak-scriptsbench-soakjs',
    title: 'Soak: 200,000 tasks on reused workers, 20,000 on single-use ones',
    env: {},
    quick: { BENCH_SOAK_MODULE_TASKS: '2000', BENCH_SOAK_COMMAND_TASKS: '200' },
    timeoutS: 480,
    rows: (line) => [
      row(
        `${line.scenario}, ${num(line.tasks ?? '?')} tasks: RSS after warm-up → end`,
        `${cell(line, 'rssMiB.atWarmup', (x) => `${num(x)} MiB`)} → ${cell(line, 'rssMiB.atEnd', (x) => `${num(x)} MiB`)} (growth ${cell(line, 'rssMiB.growth', (x) => `${num(x)} MiB`)}); ${cell(line, 'tasksPerSec', perSec)}`,
        `fds at warm-up → end: ${cell(line, 'fds.atWarmup')} → ${cell(line, 'fds.atEnd')}; loop delay p99 ${cell(line, 'eldMs.p99', ms)}; left in /proc: ${cell(line, 'leftover', (l) => (l.length ? l.join(', ') : 'none'))}`,
        '—',
        'RSS growth < 10 MB, no fd growth, nothing left',
        line.met === undefined ? undefined : line.met && line.fds?.atEnd <= line.fds?.atWarmup && (line.leftover?.length ?? 0) === 0,
      ),
    ],
  },
  {
    id: 'start',
    file: 'scripts/bench-start.js',
    notes: 'handler-start-up',
    title: 'Handlers that load a dependency tree: single-use workers against a bare fork loop of the same handler',
    env: { BENCH_TASKS: '60', BENCH_REPEAT: '3' },
    quick: { BENCH_TASKS: '8', BENCH_REPEAT: '1' },
    timeoutS: 300,
    rows: (line) => {
      const rows = [
        row(
          `${line.scenario}, Node ${line.node ?? '?'}, ${num(line.tasks ?? '?')} tasks, concurrency ${line.concurrency ?? '?'}${line.compileCache ? ', compile cache' : ', no compile cache (Node < 22.1)'}`,
          cell(line, 'tidepool.tasksPerSec', perSec),
          `bare fork of the same handler: ${cell(line, 'bare.tasksPerSec', perSec)}; ${cell(line, 'bare.cpuMsPerTask', ms)} CPU/child`,
          cell(line, 'ratio'),
          '≥ 1.5',
          typeof line.ratio === 'number' ? line.ratio >= 1.5 : undefined,
        ),
      ];
      if (line.tidepoolNoCache) rows.push(row('handler start-up without the compile cache', cell(line, 'tidepoolNoCache.tasksPerSec', perSec), cell(line, 'bare.tasksPerSec', perSec), cell(line, 'tidepoolNoCache.ratio'), 'none', undefined));
      return rows;
    },
  },
  {
    id: 'inspect',
    file: 'scripts/bench-inspect.js',
    notes: 'inspection-scriptsbench-inspectjs',
    title: 'The cost of inspection (issue: see the machines)',
    env: { BENCH_TASKS: '10000' },
    quick: { BENCH_TASKS: '500', BENCH_REPEAT: '1' },
    timeoutS: 300,
    rows: (line) => [
      row(
        line.scenario,
        cell(line, 'tasksPerSecond', perSec),
        cell(line, 'reference'),
        cell(line, 'ratio'),
        line.scenario === 'inspect-off' ? 'none' : '≥ 0.8',
        line.scenario === 'inspect-off' || typeof line.ratio !== 'number' ? undefined : line.ratio >= 0.8,
      ),
    ],
  },
  {
    id: 'serve',
    file: 'scripts/bench-serve.js',
    notes: 'the-service-tidepool-serve',
    title: 'What `tidepool serve` adds per task',
    env: { BENCH_REPEAT: '3', BENCH_TASKS: '1000' },
    quick: { BENCH_REPEAT: '1', BENCH_TASKS: '100' },
    timeoutS: 300,
    rows: (line) => [
      row(
        line.scenario,
        `${cell(line, 'servePerSecond', perSec)}; manager ${cell(line, 'serveCpuMsPerTask', ms)} CPU/task`,
        `pool.run directly: ${cell(line, 'directPerSecond', perSec)}; ${cell(line, 'directCpuMsPerTask', ms)} CPU/task`,
        cell(line, 'ratio'),
        'none',
        undefined,
      ),
    ],
  },
  {
    id: 'amqp',
    file: 'scripts/bench-amqp.js',
    notes: 'rabbitmq-scriptsbench-amqpjs',
    title: 'Through RabbitMQ',
    env: { BENCH_REPEAT: '3', BENCH_COMMAND_TASKS: '1000', BENCH_REUSE_TASKS: '5000', BENCH_ENQUEUE_TASKS: '10000' },
    quick: { BENCH_REPEAT: '1', BENCH_COMMAND_TASKS: '50', BENCH_REUSE_TASKS: '200', BENCH_ENQUEUE_TASKS: '200' },
    timeoutS: 420,
    needs: () => tcpProblem(AMQP_URL, 5672, 'RabbitMQ'),
    rows: (line) => [
      row(
        line.scenario,
        cell(line, 'tidepoolPerSec', perSec),
        `${line.scenario === 'enqueue' ? 'bare publish loop' : 'bare amqplib loop'}: ${cell(line, 'referencePerSec', perSec)}`,
        cell(line, 'ratio'),
        '≥ 0.8',
        typeof line.ratio === 'number' ? line.ratio >= 0.8 : undefined,
      ),
    ],
  },
];

function peerCell(peer) {
  if (peer.status !== 'ok') return `${peer.id}: ${peer.status}`;
  return `${peer.id}: ${cell(peer, 'tasksPerSec', perSec)}`;
}

// ---------------------------------------------------------------------------------------
// Running

/** Whether something listens at the URL's host and port (default `port`): null, or why not. */
function tcpProblem(urlText, port, what) {
  return new Promise((resolve) => {
    let url;
    try {
      url = new URL(urlText);
    } catch {
      return resolve(`${what}: not a URL`);
    }
    const where = `${url.hostname}:${url.port || port}`;
    const socket = createConnection({ host: url.hostname, port: Number(url.port || port) });
    const done = (problem) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(problem);
    };
    const timer = setTimeout(() => done(`${what} not reachable at ${where} (no connection within 2 s)`), 2000);
    socket.once('connect', () => done(null));
    socket.once('error', (err) => done(`${what} not reachable at ${where} (${err.code ?? err.message})`));
  });
}

const git = (...args) => {
  try {
    return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
};

const local = (text) => text.split(ROOT).join('');

/** The command that reruns one script alone, with the settings bench-all gave it. */
const commandOf = (entry, env) =>
  `${Object.entries(env)
    .map(([k, v]) => `${k}=${v} `)
    .join('')}node ${entry.file}`;

/** Run one script; resolves with its record (status, exit, seconds, lines, stderr tail). */
function runScript(entry, env) {
  return new Promise((resolve) => {
    const started = performance.now();
    // A group of its own, so that a timeout can stop the script and whatever it started.
    const child = spawn(process.execPath, [join(ROOT, entry.file)], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    let errTail = '';
    let partial = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => {
      errTail = (errTail + d).slice(-6000);
      const text = partial + d;
      const lines = text.split('\n');
      partial = lines.pop();
      for (const l of lines) process.stderr.write(`  [${entry.id}] ${l}\n`);
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      log(`${entry.id}: still running after ${entry.timeoutS} s: stopping it (SIGTERM, then SIGKILL)`);
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {}
      setTimeout(() => {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {}
      }, 15_000).unref();
    }, entry.timeoutS * 1000);
    // Ctrl-C (or a SIGTERM) stops the whole run: this script's group, then nothing is written.
    const stop = (signal) => {
      interrupted ??= signal;
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {}
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve({ status: `failed: could not start (${err.message})`, lines: [], stderrTail: '' });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      const lines = [];
      const other = [];
      // Paths of this checkout are written relative to it: the page says nothing of the machine's layout.
      for (const text of local(out).split('\n')) {
        if (text.trim() === '') continue;
        try {
          lines.push(JSON.parse(text));
        } catch {
          other.push(text);
        }
      }
      const seconds = Number(((performance.now() - started) / 1000).toFixed(1));
      const status = timedOut
        ? `failed: timed out after ${entry.timeoutS} s (bench-all's budget for it)`
        : code === 0
          ? 'ok'
          : `failed: exit ${signal ?? code}`;
      resolve({ status, exit: signal ?? code, seconds, lines, nonJsonLines: other.length, stderrTail: local(errTail).split('\n').slice(-25).join('\n') });
    });
  });
}

function machine() {
  const cpu = cpus()[0];
  return {
    cores: availableParallelism(),
    cpu: cpu ? cpu.model : null,
    memoryGiB: Number((totalmem() / 2 ** 30).toFixed(1)),
    kernel: release(),
    node: process.version,
    commit: git('rev-parse', '--short', 'HEAD'),
    branch: git('rev-parse', '--abbrev-ref', 'HEAD'),
    dirty: (git('status', '--porcelain', '--untracked-files=no') ?? '') !== '',
  };
}

const loads = () => loadavg().map((x) => Number(x.toFixed(2)));

/** The signal that interrupted the run, if one did: the page is then left as it was. */
let interrupted = null;
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => (interrupted ??= signal));

/** BENCH_ALL_QUICK: 1/true/yes or 0/false/no (unset: 0); anything else is refused. */
function quickSetting() {
  const raw = (process.env.BENCH_ALL_QUICK ?? '').trim().toLowerCase();
  if (['', '0', 'false', 'no'].includes(raw)) return false;
  if (['1', 'true', 'yes'].includes(raw)) return true;
  throw new BenchError(`BENCH_ALL_QUICK must be 1 (smoke settings) or 0, got ${JSON.stringify(process.env.BENCH_ALL_QUICK)}`);
}

async function runAll() {
  const quick = quickSetting();
  const only = (process.env.BENCH_ALL_ONLY || '').split(',').map((s) => s.trim()).filter(Boolean);
  for (const id of only) if (!SCRIPTS.some((e) => e.id === id)) throw new BenchError(`BENCH_ALL_ONLY: unknown ${JSON.stringify(id)} (known: ${SCRIPTS.map((e) => e.id).join(', ')})`);
  const run = {
    generatedBy: 'scripts/bench-all.js',
    quick,
    only: only.length ? only : null,
    startedAt: new Date().toISOString(),
    machine: machine(),
    loadBefore: loads(),
    scripts: [],
  };
  const began = performance.now();
  if (process.env.BENCH_ALL_BUILD !== '0') {
    log('npm run build');
    execFileSync('npm', ['run', 'build'], { cwd: ROOT, stdio: ['ignore', 2, 2] });
  }
  for (const entry of SCRIPTS) {
    if (interrupted) throw new BenchError(`interrupted by ${interrupted}: nothing written`);
    const env = quick ? entry.quick ?? {} : entry.env ?? {};
    const record = { id: entry.id, file: entry.file, command: commandOf(entry, env), env };
    run.scripts.push(record);
    if (only.length && !only.includes(entry.id)) {
      Object.assign(record, { status: 'not run (BENCH_ALL_ONLY)', lines: [] });
      continue;
    }
    if (!existsSync(join(ROOT, entry.file))) {
      Object.assign(record, { status: 'missing: not on this branch', lines: [] });
      log(`${entry.id}: ${entry.file} is missing`);
      continue;
    }
    const problem = entry.needs ? await entry.needs() : null;
    if (problem) {
      Object.assign(record, { status: `cannot run: ${problem}`, lines: [] });
      log(`${entry.id}: cannot run: ${problem}`);
      continue;
    }
    log(`${entry.id}: ${record.command} (load ${loads().join(' ')})`);
    record.loadBefore = loads();
    Object.assign(record, await runScript(entry, env));
    record.loadAfter = loads();
    log(`${entry.id}: ${record.status} in ${record.seconds} s, ${record.lines.length} JSON lines`);
  }
  if (interrupted) throw new BenchError(`interrupted by ${interrupted}: nothing written`);
  run.loadAfter = loads();
  run.finishedAt = new Date().toISOString();
  run.seconds = Number(((performance.now() - began) / 1000).toFixed(0));
  return run;
}

// ---------------------------------------------------------------------------------------
// Writing

const esc = (text) => String(text).replace(/\|/g, '\\|').replace(/\n/g, ' ');
const table = (head, rows) => [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`)].join('\n');
const anchor = (text) => text.toLowerCase().replace(/[^a-z0-9 -]/g, '').replace(/ /g, '-');

function rowsOf(entry, record) {
  const rows = [];
  for (const line of record.lines ?? []) {
    try {
      rows.push(...(entry.rows ?? genericRows)(line));
    } catch (err) {
      rows.push(row(line?.scenario ?? '?', `— (bench-all could not read this line: ${err.message})`, '—', '—', '—', undefined));
    }
  }
  return rows;
}

/** Sections of docs/benchmark-notes.md that code and docs cite by name. */
const NOTES = [
  ['How `bench-run.js` measures (scenarios, what each side includes, settings)', 'scenarios'],
  ['Run history of `bench-run.js` (runs D–K) and the CPU split', 'figures'],
  ['The ledger of live workers', 'the-ledger-of-live-workers'],
  ['Where the time goes', 'where-the-time-goes'],
  ['RabbitMQ', 'rabbitmq-scriptsbench-amqpjs'],
  ['Scale and memory (issue: seams): baseline, after the refactor', 'scale-and-memory-issue-seams'],
  ['Event-loop delay under bursts', 'event-loop-delay-under-bursts-session-4'],
  ['History (session 1, the slow day)', 'history-session-1-the-slow-day'],
  ['The service (`tidepool serve`)', 'the-service-tidepool-serve'],
  ['Inspection', 'inspection-scriptsbench-inspectjs'],
  ['Peers: how bench-peers.js measures, and why BullMQ and piscina have no single-use figure', 'peers-scriptsbench-peersjs'],
  ['Regenerating this page: what bench-all.js runs, with which settings', 'regenerating-benchmarksmd-scriptsbench-alljs'],
];

function peerTable(record) {
  const lines = (record?.lines ?? []).filter((l) => l.scenario === 'peers-reused' || l.scenario === 'peers-single-use');
  if (lines.length === 0) return `No peer figures in this run (bench-peers: ${record?.status ?? 'not run'}).`;
  const out = [];
  for (const line of lines) {
    const tide = line.tidepool ?? {};
    const rows = [
      ['**tidepool**', tide.name ?? '—', tide.status && tide.status !== 'ok' ? tide.status : cell(line, 'tidepool.tasksPerSec', num), (tide.samples ?? []).map(num).join(', ') || '—', '1', 'ok'],
    ];
    for (const peer of [line.reference, ...(line.peers ?? [])].filter(Boolean)) {
      const ok = peer.status === 'ok';
      rows.push([
        peer === line.reference ? `${peer.id} (reference)` : `${peer.id}${peer.version ? ` ${peer.version}` : ''}`,
        peer.name ?? '—',
        ok ? cell(peer, 'tasksPerSec', num) : '—',
        ok ? (peer.samples ?? []).map(num).join(', ') : '—',
        ok ? cell(peer, 'ratioToTidepool') : '—',
        peer.status ?? '— (no `status`)',
      ]);
    }
    out.push(
      `**${line.scenario}**: ${num(line.tasks ?? '?')} no-op tasks, concurrency ${line.concurrency ?? '?'}, ${line.repeat ?? '?'} repetitions (medians)\n\n` +
        table(['side', 'what runs', 'tasks/s', 'samples', '÷ tidepool', 'status'], rows),
    );
  }
  return out.join('\n\n');
}

function markdown(run) {
  const m = run.machine;
  const byId = Object.fromEntries(run.scripts.map((r) => [r.id, r]));
  const summary = [];
  for (const entry of SCRIPTS) {
    const record = byId[entry.id];
    if (!record) continue;
    const rows = rowsOf(entry, record);
    if (rows.length === 0) summary.push([`[${entry.id}](#${anchor(sectionTitle(entry))})`, `— (${record.status})`, '—', '—', '—', '—', '—']);
    for (const r of rows) summary.push([`[${entry.id}](#${anchor(sectionTitle(entry))})`, r.figure, r.tidepool, r.reference, r.ratio, r.target, r.verdict]);
    if (rows.length > 0 && record.status !== 'ok') summary.push([`[${entry.id}](#${anchor(sectionTitle(entry))})`, `(the script: ${record.status})`, '—', '—', '—', '—', '—']);
  }
  const parts = [];
  parts.push(`# Benchmarks

<!-- Generated by scripts/bench-all.js (npm run bench:all): do not edit by hand; rerun it.
     The narrative and the history of these figures live in benchmark-notes.md. -->

Generated by \`npm run bench:all\` (\`scripts/bench-all.js\`), which builds, runs every benchmark
script below in turn and writes this page and [benchmarks.json](benchmarks.json) (the raw JSON
lines of the run, to diff against the next one). Every script measures its reference **in the
same run**, so the figure that holds up on a noisy machine is the **ratio** (tidepool ÷
reference unless a row says otherwise); the rates only describe this machine on this day. How
each script measures, the history of the figures and what was learnt from them are in
**[benchmark-notes.md](benchmark-notes.md)**.${run.quick ? '\n\n**This is a smoke run (`BENCH_ALL_QUICK=1`): its figures are not measurements.**' : ''}

## Machine

| | |
|---|---|
| cores | ${m.cores}${m.cpu ? ` (${esc(m.cpu)})` : ''} |
| memory | ${m.memoryGiB} GiB |
| kernel | ${m.kernel} |
| Node | ${m.node} |
| date | ${run.startedAt} to ${run.finishedAt} (${Math.round(run.seconds / 60)} min) |
| git commit | ${m.commit ?? '—'}${m.dirty ? ' (with uncommitted changes)' : ''} |
| load average (1, 5, 15 min) | before ${run.loadBefore.join(', ')}; after ${run.loadAfter.join(', ')} |

The load average is the machine's, not this run's: on a shared machine other work runs beside
the benchmarks. Each section gives the load before and after its script.

## Summary

Every figure of the run. *ratio* is tidepool ÷ reference (per-repetition ratios, median), except
where the row names another; *target* is the one the issue set, where it set one.

${table(['script', 'figure', 'tidepool', 'reference', 'ratio', 'target', 'verdict'], summary)}

## Peers

The same no-op work at the same concurrency on this machine, each side started by
\`scripts/bench-peers.js\` in a process of its own and measured in alternating back-to-back
repetitions. *÷ tidepool* is the peer's rate over tidepool's (median of the per-repetition
ratios): above 1 the peer is faster. A peer that cannot run says why; no figure is guessed.

${peerTable(byId.peers)}`);

  for (const entry of SCRIPTS) {
    const record = byId[entry.id];
    if (!record) continue;
    const rows = rowsOf(entry, record);
    const body = [`## ${sectionTitle(entry)}`, ''];
    if (entry.notes) body.push(`How it measures, and the figures recorded before: [benchmark-notes.md](benchmark-notes.md#${entry.notes}).`, '');
    body.push('Rerun alone (after `npm run build`):', '', '```sh', record.command, '```', '');
    const when = record.seconds !== undefined ? `, ${record.seconds} s, load ${record.loadBefore?.join(' ') ?? '?'} → ${record.loadAfter?.join(' ') ?? '?'}` : '';
    body.push(`Status: **${record.status}**${when}.`, '');
    if (rows.length) body.push(table(['figure', 'tidepool', 'reference', 'ratio', 'target', 'verdict'], rows.map((r) => [r.figure, r.tidepool, r.reference, r.ratio, r.target, r.verdict])), '');
    if (record.lines?.length) {
      body.push('<details><summary>JSON lines</summary>', '', '```json', ...record.lines.map((l) => JSON.stringify(l)), '```', '', '</details>', '');
    }
    if (record.status !== 'ok' && record.stderrTail) body.push('Last lines of its stderr:', '', '```text', record.stderrTail.trim(), '```', '');
    parts.push(body.join('\n').trimEnd());
  }

  parts.push(`## Notes

How each script measures and every run recorded by hand so far are in
[benchmark-notes.md](benchmark-notes.md) (what this page held before it was generated,
unchanged):

${NOTES.map(([title, a]) => `- [${title}](benchmark-notes.md#${a})`).join('\n')}`);
  return `${parts.join('\n\n')}\n`;
}

function sectionTitle(entry) {
  return `${entry.file.replace('scripts/', '')}: ${entry.title.replace(/`/g, '')}`;
}

async function main() {
  const outDir = process.env.BENCH_ALL_OUT ? resolve(process.env.BENCH_ALL_OUT) : join(ROOT, 'docs');
  const from = process.argv.indexOf('--from-json');
  let run;
  if (from !== -1) {
    run = JSON.parse(readFileSync(process.argv[from + 1], 'utf8'));
  } else {
    run = await runAll();
    mkdirSync(outDir, { recursive: true });
    writeFileSync(join(outDir, 'benchmarks.json'), `${JSON.stringify(run, null, 1)}\n`);
  }
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'benchmarks.md'), markdown(run));
  log(`wrote ${relative(process.cwd(), join(outDir, 'benchmarks.md')) || 'benchmarks.md'}${from === -1 ? ' and benchmarks.json' : ''} (${run.seconds ?? '?'} s, load ${run.loadBefore?.join(' ')} → ${run.loadAfter?.join(' ')})`);
  const failed = run.scripts.filter((r) => r.status.startsWith('failed'));
  if (failed.length) {
    log(`failed: ${failed.map((r) => `${r.id} (${r.status})`).join(', ')}`);
    process.exitCode = 1;
  }
}

main().catch((err) => {
  log(`FAILED: ${err instanceof BenchError ? err.message : (err?.stack ?? err)}`);
  process.exitCode = interrupted ? 130 : err instanceof BenchError ? 2 : 1;
});
