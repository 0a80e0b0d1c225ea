#!/usr/bin/env node
// How the manager's cost per task grows with the number of live workers, and whether a real
// run with thousands of live processes finishes clean. See docs/benchmark-notes.md ("Scale and
// memory"). Scenarios (BENCH_SCALE_SCENARIOS, comma list; default fake,live,cli,queue):
//
//   fake   The library with fake processes (`PoolInternals.processActor`: an XState
//          `fromCallback` answering as the driver does for a process the spawn host starts:
//          `proc.ready` with a pid, then `proc.exit` with the answer) at each size N of
//          BENCH_SCALE_SIZES, `concurrency: N`, N tasks held running. Tasks are then released
//          a few at a time (BENCH_SCALE_WINDOW); each outcome submits a new task, so N stay
//          live. After a warm-up, it reports the manager's CPU per task (`process.cpuUsage()`)
//          and its ratio to the smallest size, the event-loop delay p99
//          (`monitorEventLoopDelay`) and the live workers seen. Held, not timed: with a fixed
//          task time T, N workers are live only while the manager's CPU per task is below T/N,
//          so a timer would measure the task length instead of the manager.
//          BENCH_SCALE_TASK_MS=T makes every fake task take T ms instead (then `live` says how
//          many were really live). The sizes in BENCH_SCALE_PROFILE (1000) are run again under
//          the V8 sampling profiler (inspector, measuring window only): the top functions by
//          self time and by inclusive time, as a share of the non-idle samples.
//   live   The library, real command workers: BENCH_LIVE_TASKS (1000) tasks of `sleep
//          BENCH_LIVE_SLEEP` (2) at `concurrency` BENCH_LIVE_CONCURRENCY (1000).
//   cli    The same through `node bin/tidepool run FILE --command "sleep 2" --concurrency 1000`,
//          with scripts/fixtures/eld-probe.js preloaded (`--import`) to measure the CLI's loop.
//   queue  The library: BENCH_QUEUE_TASKS (5000) tasks of `sleep BENCH_QUEUE_SLEEP` (1) at
//          BENCH_QUEUE_CONCURRENCY (2000).
//
// The real scenarios check that every task resolved, count live workers (the spawn host's
// children) and file descriptors (manager, host) every 250 ms, report the manager's event-loop
// delay (target: p99 < 100 ms) beside that of an idle Node process running at the same time
// (`idleEldMs`: the machine's own share of the delay) and the manager's CPU time between two
// calls of a 10 ms timer (`cpuPerTurnMs`: its own share), the library's garbage-collector pauses
// (`gcMs`), and afterwards search /proc for leftovers: processes whose
// environment carries this run's marker (passed with `env` / `--env`), and tidepool processes
// (CLI, spawn host) in this script's process group. The first line printed gives the limits
// that bound a run with thousands of processes (open files, processes, pid_max).
//
// Each scenario runs in a child process of this script (a fresh manager per figure; the fake
// children exit without draining the N held workers, which hold no real process).
//
// stdout: one JSON object per line. stderr: progress. Exit 1 when a check fails.
//
// Usage: npm run build && node scripts/bench-scale.js
//        BENCH_QUICK=1 node scripts/bench-scale.js      (smaller sizes, about 1 min)
// Env:   BENCH_QUICK, BENCH_SCALE_SCENARIOS, BENCH_SCALE_SIZES (10,100,1000,5000),
//        BENCH_SCALE_WARMUP (tasks; 2000) and BENCH_SCALE_WARMUP_S (10): the warm-up ends at
//        whichever comes first; BENCH_SCALE_TASKS (tasks measured; max(3000, 2N)) and
//        BENCH_SCALE_BUDGET_S (30): the measurement ends at whichever comes first;
//        BENCH_SCALE_WINDOW (tasks released at once; 16, at most N/4),
//        BENCH_SCALE_TASK_MS (unset: held), BENCH_SCALE_PROFILE (sizes to profile, comma
//        list; 1000; empty or 0: none),
//        BENCH_SCALE_PROFILE_TOP (15), BENCH_LIVE_TASKS, BENCH_LIVE_CONCURRENCY,
//        BENCH_LIVE_SLEEP, BENCH_QUEUE_TASKS, BENCH_QUEUE_CONCURRENCY, BENCH_QUEUE_SLEEP,
//        BENCH_REAL_TIMEOUT_S (600: a real run still going is stopped and fails),
//        BENCH_REAL_PROFILE=1 (the library's real runs under the V8 sampling profiler, every
//        BENCH_REAL_PROFILE_US µs (250): `longTicks` lists the stretches of at least
//        BENCH_REAL_LONG_TICK_MS (30) in which the loop never waited, where they entered and
//        tidepool's functions in them; the profiler slows the run, so its delay is no figure),
//        BENCH_NODE_FLAGS (flags for the managers' node, space-separated, e.g. --trace-gc).
import { fork, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';
import { constants as perfConstants, createHistogram, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SELF = fileURLToPath(import.meta.url);
const CLI = join(ROOT, 'bin/tidepool');
const PROBE = join(ROOT, 'scripts/fixtures/eld-probe.js');
const MARK_NAME = 'TIDEPOOL_BENCH_SCALE';
const MARK = `${process.pid}-${Date.now()}`;
const SAMPLE_MS = 250;
/** Flags for the node of each scenario's manager (BENCH_NODE_FLAGS, space-separated; e.g. `--trace-gc`). */
const NODE_FLAGS = (process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean);

class BenchError extends Error {}

const round = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? null : Number(x.toFixed(digits)));
const log = (msg) => process.stderr.write(`bench-scale: ${msg}\n`);

function intEnv(name, fallback, { min = 1 } = {}) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw.trim()) || Number(raw) < min) throw new BenchError(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

function listEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  return raw.split(',').map((s) => s.trim()).filter(Boolean);
}

function config() {
  const quick = process.env.BENCH_QUICK === '1';
  const sizes = listEnv('BENCH_SCALE_SIZES', quick ? ['10', '100', '500'] : ['10', '100', '1000', '5000']).map((s) => {
    if (!/^\d+$/.test(s) || Number(s) < 1) throw new BenchError(`BENCH_SCALE_SIZES: ${JSON.stringify(s)} is not a positive integer`);
    return Number(s);
  });
  const known = ['fake', 'live', 'cli', 'queue'];
  const scenarios = listEnv('BENCH_SCALE_SCENARIOS', known);
  for (const s of scenarios) if (!known.includes(s)) throw new BenchError(`BENCH_SCALE_SCENARIOS: unknown ${JSON.stringify(s)} (known: ${known.join(', ')})`);
  const liveConcurrency = intEnv('BENCH_LIVE_CONCURRENCY', quick ? 200 : 1000);
  return {
    scenarios,
    sizes,
    warmup: process.env.BENCH_SCALE_WARMUP ? intEnv('BENCH_SCALE_WARMUP', 0, { min: 0 }) : null,
    warmupS: intEnv('BENCH_SCALE_WARMUP_S', quick ? 3 : 10),
    tasks: process.env.BENCH_SCALE_TASKS ? intEnv('BENCH_SCALE_TASKS', 0) : null,
    budgetS: intEnv('BENCH_SCALE_BUDGET_S', quick ? 5 : 30),
    window: intEnv('BENCH_SCALE_WINDOW', 16),
    taskMs: process.env.BENCH_SCALE_TASK_MS ? intEnv('BENCH_SCALE_TASK_MS', 0) : null,
    profile: listEnv('BENCH_SCALE_PROFILE', quick ? [] : ['1000']).map(Number).filter((x) => x > 0),
    profileTop: intEnv('BENCH_SCALE_PROFILE_TOP', 15),
    live: {
      tasks: intEnv('BENCH_LIVE_TASKS', liveConcurrency),
      concurrency: liveConcurrency,
      sleep: intEnv('BENCH_LIVE_SLEEP', 2),
    },
    queue: {
      tasks: intEnv('BENCH_QUEUE_TASKS', quick ? 500 : 5000),
      concurrency: intEnv('BENCH_QUEUE_CONCURRENCY', quick ? 200 : 2000),
      sleep: intEnv('BENCH_QUEUE_SLEEP', 1),
    },
    timeoutS: intEnv('BENCH_REAL_TIMEOUT_S', 600),
    realProfile:
      process.env.BENCH_REAL_PROFILE === '1'
        ? { intervalUs: intEnv('BENCH_REAL_PROFILE_US', 250), longMs: intEnv('BENCH_REAL_LONG_TICK_MS', 30), top: intEnv('BENCH_SCALE_PROFILE_TOP', 15) }
        : null,
  };
}

// ---------------------------------------------------------------------------------------
// /proc

/** Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, ...]. */
function statFields(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

const countFds = (pid) => {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
};

const childrenOf = (pid) => {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'latin1').trim().split(' ').filter(Boolean).map(Number);
  } catch {
    return [];
  }
};

const cmdlineOf = (pid) => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').replace(/\0/g, ' ').trim();
  } catch {
    return '';
  }
};

/** What bounds a run with thousands of processes here. */
function limits() {
  const text = readFileSync('/proc/self/limits', 'latin1');
  const row = (label) => {
    const line = text.split('\n').find((l) => l.startsWith(label));
    if (!line) return null;
    const [soft, hard] = line.slice(label.length).trim().split(/\s+/);
    const n = (v) => (v === 'unlimited' ? v : Number(v));
    return { soft: n(soft), hard: n(hard) };
  };
  const read = (path) => {
    try {
      return readFileSync(path, 'latin1').trim();
    } catch {
      return null;
    }
  };
  // cgroup v2 pids controller of this process, if any.
  const cgroup = (read('/proc/self/cgroup') ?? '').split('\n').find((l) => l.startsWith('0::'))?.slice(3);
  const pidsMax = cgroup ? read(`/sys/fs/cgroup${cgroup}/pids.max`) : null;
  return {
    scenario: 'limits',
    openFiles: row('Max open files'),
    processes: row('Max processes'),
    pidMax: Number(read('/proc/sys/kernel/pid_max')),
    threadsMax: Number(read('/proc/sys/kernel/threads-max')),
    cgroupPidsMax: pidsMax,
    cpus: availableParallelism(),
    node: process.version,
  };
}

const OWN_GROUP = Number(statFields('self')[2]);
/** This script and its ancestors, which share its process group. */
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

/** Live processes left behind: marked workers anywhere, tidepool processes in this group. */
function leftovers() {
  const found = [];
  const needle = `${MARK_NAME}=${MARK}\0`;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || ANCESTORS.has(Number(entry))) continue;
    try {
      const [state, , pgrp] = statFields(entry);
      if (state === 'Z') continue;
      const marked = `${readFileSync(`/proc/${entry}/environ`, 'latin1')}\0`.includes(needle);
      const cmdline = Number(pgrp) === OWN_GROUP ? cmdlineOf(entry) : '';
      if (marked || TIDEPOOL_PATHS.some((path) => cmdline.includes(path))) found.push(`${entry} (${cmdlineOf(entry).slice(0, 120)})`);
    } catch {
      // Gone, or not ours.
    }
  }
  return found;
}

/** Waits up to 5 s for stragglers to die; returns what is still alive. */
async function settleLeftovers() {
  for (let i = 0; i < 50; i++) {
    const pids = leftovers();
    if (pids.length === 0) return [];
    await new Promise((r) => setTimeout(r, 100));
  }
  return leftovers();
}

/**
 * Every SAMPLE_MS while `managerPid` runs: its fds, its spawn host's fds and children (the
 * live workers). The host is the manager's child running the spawn host script.
 */
function sampler(managerPid) {
  const peak = { managerFds: 0, hostFds: 0, liveWorkers: 0, samples: 0 };
  let hostPid = null;
  let host = null;
  const tick = () => {
    peak.samples++;
    peak.managerFds = Math.max(peak.managerFds, countFds(managerPid) ?? 0);
    if (hostPid === null || countFds(hostPid) === null) {
      hostPid = childrenOf(managerPid).find((pid) => /spawn-host/.test(cmdlineOf(pid))) ?? null;
      if (hostPid !== null) host = /perl/.test(cmdlineOf(hostPid)) ? 'perl' : 'node';
    }
    if (hostPid !== null) {
      peak.hostFds = Math.max(peak.hostFds, countFds(hostPid) ?? 0);
      peak.liveWorkers = Math.max(peak.liveWorkers, childrenOf(hostPid).length);
    }
  };
  const timer = setInterval(tick, SAMPLE_MS);
  return {
    stop() {
      clearInterval(timer);
      return { host, peakLiveWorkers: peak.liveWorkers, peakManagerFds: peak.managerFds, peakHostFds: peak.hostFds };
    },
  };
}

/**
 * The reference for the event-loop delay, measured in the same run: an idle Node process (a
 * timer, nothing else) with the CLI's probe preloaded, alongside the scenario. What it reads
 * is the machine's share for any process at that moment (a loaded machine deschedules an
 * idle process too), not tidepool's. `stop()` resolves with its p50/p99/max, or null.
 */
function idleReference(dir) {
  const out = join(dir, `idle-${Date.now()}.json`);
  const proc = spawn(process.execPath, [...NODE_FLAGS, '--import', PROBE, '-e', "setInterval(() => {}, 1000); process.once('SIGTERM', () => process.exit(0));"], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', BENCH_ELD_OUT: out },
    stdio: 'ignore',
  });
  current.add(proc);
  const closed = new Promise((resolve) => proc.once('close', resolve));
  return {
    async stop() {
      proc.kill('SIGTERM');
      await closed;
      current.delete(proc);
      try {
        const { p50, p99, max, cpuPerTurnMs } = JSON.parse(readFileSync(out, 'utf8'));
        return { p50, p99, max, cpuPerTurnMs };
      } catch {
        return null;
      }
    },
  };
}

// ---------------------------------------------------------------------------------------
// Child side: one scenario per process

const ELD_RESOLUTION_MS = 10;
/**
 * The histogram records the time between the monitor's timer callbacks, so an idle loop reads
 * ELD_RESOLUTION_MS: the delay is what exceeds it.
 */
const eldOf = (h) => {
  const delay = (ns) => round(Math.max(0, ns / 1e6 - ELD_RESOLUTION_MS), 2);
  return { p50: delay(h.percentile(50)), p99: delay(h.percentile(99)), max: delay(h.max) };
};
/**
 * An enabled event-loop delay monitor that has already taken its first sample. The histogram
 * records the time between two of its timer callbacks and nothing at the first one, so a stall
 * before that first callback (such as a burst of `run()` calls right after `start()`) would
 * not be counted at all.
 */
async function eldMonitor() {
  const eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
  eld.enable();
  // No reset() after it: that forgets the previous callback too.
  await new Promise((resolve) => setTimeout(resolve, 2 * ELD_RESOLUTION_MS));
  return eld;
}
/**
 * The garbage collector's pauses while it runs, by kind (`minor`: scavenges of the young
 * generation; `major`: mark-compact of the whole heap): count, total and longest, in ms.
 */
function gcWatch() {
  const kinds = {
    [perfConstants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
    [perfConstants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
    [perfConstants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
    [perfConstants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
  };
  const by = {};
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const k = kinds[e.detail?.kind] ?? 'other';
      const b = (by[k] ??= { count: 0, totalMs: 0, maxMs: 0 });
      b.count++;
      b.totalMs += e.duration;
      b.maxMs = Math.max(b.maxMs, e.duration);
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  return () => {
    obs.disconnect();
    for (const b of Object.values(by)) {
      b.totalMs = round(b.totalMs, 0);
      b.maxMs = round(b.maxMs, 1);
    }
    return by;
  };
}
/**
 * The CPU time (all of this process's threads, `process.cpuUsage()`) spent between two calls
 * of a 10 ms timer: the event-loop delay the manager would have with a core of its own. On a
 * shared machine the delay also holds the time spent waiting for a core, which this leaves out.
 * `stop()` gives p50/p99/max in ms.
 */
function cpuPerTurn() {
  const h = createHistogram();
  let last = process.cpuUsage();
  const timer = setInterval(() => {
    const now = process.cpuUsage();
    h.record(Math.max(1, now.user + now.system - last.user - last.system));
    last = now;
  }, ELD_RESOLUTION_MS);
  return () => {
    clearInterval(timer);
    const ms = (us) => round(us / 1000, 2);
    return { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max) };
  };
}
const cpuMs = (since) => {
  const c = process.cpuUsage(since);
  return (c.user + c.system) / 1000;
};

/**
 * Fake processes answering as the driver does for a process the spawn host starts: the pid
 * with `proc.ready` (asynchronously, as a real spawn), then, once the task ends, `proc.exit`
 * with its answer; `proc.terminate` and `proc.kill` end it with that signal. Like the real
 * driver, every answer comes from a later turn of the event loop, never from inside the
 * machine's own transition.
 */
async function fakeProcesses({ taskMs, onRunning }) {
  const { fromCallback } = await import('xstate');
  let nextPid = 100000;
  const counts = { live: 0, running: 0 };
  const logic = fromCallback(({ sendBack, receive }) => {
    let stopped = false;
    let timer = null;
    counts.live++;
    const proc = {
      running: false,
      finish() {
        if (stopped || !proc.running) return;
        proc.running = false;
        counts.running--;
        sendBack({ type: 'proc.exit', code: 0, signal: null, answer: { status: 'resolved', result: null } });
      },
    };
    setImmediate(() => {
      if (!stopped) sendBack({ type: 'proc.ready', pid: nextPid++ });
    });
    receive((command) => {
      if (command.type === 'proc.run') {
        if (proc.running) return;
        proc.running = true;
        counts.running++;
        if (taskMs !== null) timer = setTimeout(() => proc.finish(), taskMs);
        else setImmediate(() => onRunning(proc));
      } else if (command.type === 'proc.terminate' || command.type === 'proc.kill') {
        const signal = command.type === 'proc.kill' ? 'SIGKILL' : 'SIGTERM';
        setImmediate(() => {
          if (stopped) return;
          if (proc.running) {
            proc.running = false;
            counts.running--;
          }
          sendBack({ type: 'proc.exit', code: null, signal });
        });
      }
    });
    return () => {
      stopped = true;
      counts.live--;
      if (proc.running) counts.running--;
      proc.running = false;
      clearTimeout(timer);
    };
  });
  return { logic, counts };
}

/** The V8 sampling profiler of this process, through the inspector. */
async function profiler(intervalUs = 500) {
  const { Session } = await import('node:inspector');
  const session = new Session();
  session.connect();
  const post = (method, params) =>
    new Promise((resolve, reject) => session.post(method, params, (err, result) => (err ? reject(err) : resolve(result))));
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: intervalUs });
  return {
    start: () => post('Profiler.start'),
    async stop() {
      const { profile } = await post('Profiler.stop');
      session.disconnect();
      return profile;
    },
  };
}

/** Where a function lives, short: a package name, a path under the repository, or node's. */
function place(url) {
  if (!url) return '';
  const path = url.startsWith('file://') ? fileURLToPath(url) : url;
  const nm = path.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = path.slice(nm + '/node_modules/'.length).split('/');
    return `${rest[0]}/${rest.slice(-1)[0]}`;
  }
  if (path.startsWith(ROOT)) return relative(ROOT, path);
  return path.startsWith('node:') ? path : basename(path);
}

const sourceLines = new Map();
/** For an anonymous function, the start of the line that defines it (e.g. `dispatch: enqueueActions(`). */
function lineOf(url, line) {
  if (!url.startsWith('file://')) return '';
  let lines = sourceLines.get(url);
  if (lines === undefined) {
    try {
      lines = readFileSync(fileURLToPath(url), 'utf8').split('\n');
    } catch {
      lines = [];
    }
    sourceLines.set(url, lines);
  }
  return (lines[line] ?? '').trim().slice(0, 70);
}

/** Top functions by self and by inclusive samples, as % of the non-idle samples. */
function summarise(profile, top) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const keyOf = (n) => {
    const f = n.callFrame;
    if (!f.url) return f.functionName || '(anonymous)';
    const where = `${place(f.url)}:${f.lineNumber + 1}`;
    return f.functionName ? `${f.functionName} ${where}` : `(anonymous ${where}) ${lineOf(f.url, f.lineNumber)}`;
  };
  const self = new Map();
  const inclusive = new Map();
  const byPlace = new Map();
  let total = 0;
  for (const id of profile.samples) {
    const leaf = byId.get(id);
    if (leaf.callFrame.functionName === '(idle)') continue;
    total++;
    const leafKey = keyOf(leaf);
    self.set(leafKey, (self.get(leafKey) ?? 0) + 1);
    const { url, functionName } = leaf.callFrame;
    const area = url ? place(url).split(/[/:]/)[0] : /^\(/.test(functionName) ? functionName : '(native)';
    const areaKey = area === 'dist' ? place(url).split('/').slice(0, 2).join('/') : area;
    byPlace.set(areaKey, (byPlace.get(areaKey) ?? 0) + 1);
    const seen = new Set();
    for (let n = leaf; n; n = byId.get(parent.get(n.id))) {
      const k = keyOf(n);
      if (seen.has(k)) continue;
      seen.add(k);
      inclusive.set(k, (inclusive.get(k) ?? 0) + 1);
    }
  }
  const pct = (x) => round((100 * x) / total, 1);
  const rank = (m, skip) =>
    [...m]
      .filter(([k]) => !skip(k))
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([fn, n]) => ({ fn, pct: pct(n) }));
  return {
    samples: total,
    self: rank(self, () => false),
    // Inclusive, for tidepool's own functions (the pool machine's actions, the pool, the
    // source) and XState's per-action work (spawn, stop, assign, send, actor creation): not
    // XState's generic event loop, which every sample passes through.
    inclusive: rank(inclusive, (k) => /^resolve(ActionsAndContext|AndExecuteActionsWithContext) /.test(k) || !/ dist\/|^resolve\w+ xstate|^Actor xstate|^_stopProcedure xstate|^cloneMachineSnapshot xstate/.test(k) && !/^\(anonymous dist\//.test(k)),
    byArea: [...byPlace]
      .sort((a, b) => b[1] - a[1])
      .map(([area, n]) => ({ area, pct: pct(n) }))
      .filter((a) => a.pct >= 0.5),
  };
}

/**
 * The long ticks of a profile: runs of consecutive non-idle samples (the loop busy, not
 * waiting in epoll) of at least `thresholdMs`. For each of the `top` longest, where the tick
 * entered (the frames just below the root: a timer, an I/O callback, an immediate, a
 * microtask) and tidepool's own functions by inclusive share; then the same over all of them.
 */
function longTicks(profile, thresholdMs, top) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const name = (n) => {
    const f = n.callFrame;
    return f.url ? `${f.functionName || '(anonymous)'} ${place(f.url)}:${f.lineNumber + 1}` : f.functionName;
  };
  const stackOf = (id) => {
    const s = [];
    for (let n = byId.get(id); n; n = byId.get(parent.get(n.id))) s.push(n);
    return s.reverse();
  };
  const times = [];
  let t = profile.startTime;
  for (const d of profile.timeDeltas) times.push((t += d));
  const ticks = [];
  let cur = null;
  let busyUs = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    if (byId.get(profile.samples[i]).callFrame.functionName === '(idle)') {
      if (cur) {
        cur.ms = (times[i] - cur.start) / 1000;
        busyUs += times[i] - cur.start;
        ticks.push(cur);
        cur = null;
      }
      continue;
    }
    cur ??= { start: times[Math.max(0, i - 1)], samples: [] };
    cur.samples.push(profile.samples[i]);
  }
  const long = ticks.filter((k) => k.ms >= thresholdMs).sort((a, b) => b.ms - a.ms);
  const shares = (samples) => {
    const entry = new Map();
    const own = new Map();
    for (const id of samples) {
      const stack = stackOf(id);
      const e = stack.slice(1, 3).map(name).join(' > ');
      entry.set(e, (entry.get(e) ?? 0) + 1);
      const seen = new Set();
      for (const n of stack) {
        const k = name(n);
        if (seen.has(k) || !/ (dist|scripts)\//.test(k)) continue;
        seen.add(k);
        own.set(k, (own.get(k) ?? 0) + 1);
      }
    }
    const rank = (m, k) =>
      [...m]
        .sort((a, b) => b[1] - a[1])
        .slice(0, k)
        .map(([fn, n]) => ({ fn, pct: round((100 * n) / samples.length, 0) }));
    return { entry: rank(entry, 3), tidepool: rank(own, 8) };
  };
  const t0 = times[0] ?? 0;
  return {
    thresholdMs,
    profiledMs: round(((times.at(-1) ?? 0) - t0) / 1000, 0),
    busyMs: round(busyUs / 1000, 0),
    ticks: ticks.length,
    long: long.length,
    longMs: round(long.reduce((a, k) => a + k.ms, 0), 0),
    overall: long.length ? shares(long.flatMap((k) => k.samples)) : null,
    longest: long.slice(0, top).map((k) => ({ ms: round(k.ms, 1), atMs: round((k.start - t0) / 1000, 0), ...shares(k.samples) })),
  };
}

async function childFake(spec) {
  const { createPool } = await import('../dist/src/index.js');
  const { size: n, taskMs, profile: doProfile, profileTop } = spec;
  const warm = spec.warmup ?? 2000;
  const measured = spec.tasks ?? Math.max(3000, 2 * n);
  const window = Math.max(1, Math.min(spec.window, Math.ceil(n / 4)));
  const held = [];
  let releasing = 0;
  let measuring = false;
  let completed = 0;
  const releaseNext = () => {
    while (measuring !== null && releasing < window && held.length > 0) {
      releasing++;
      const proc = held.shift();
      setImmediate(() => proc.finish());
    }
  };
  let rampDone = null;
  const fakes = await fakeProcesses({
    taskMs,
    onRunning: (proc) => {
      held.push(proc);
      if (rampDone && fakes.counts.running >= n) {
        rampDone();
        rampDone = null;
      } else if (!rampDone) releaseNext();
    },
  });
  const pool = createPool(
    {
      worker: { command: ['true'] },
      concurrency: n,
      logLevel: 'warn',
      spawnTimeout: 3_600_000,
      timeout: 3_600_000,
    },
    { processActor: fakes.logic },
  );
  await pool.start();

  const eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
  const live = { sum: 0, min: Infinity, max: 0, samples: 0 };
  const liveTimer = setInterval(() => {
    if (!measuring) return;
    live.sum += fakes.counts.live;
    live.samples++;
    live.min = Math.min(live.min, fakes.counts.live);
    live.max = Math.max(live.max, fakes.counts.live);
  }, 100);

  let cpu0;
  let t0;
  let prof = null;
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  const failures = [];
  const start = () => {
    warmed = { tasks: total, seconds: round((performance.now() - w0) / 1000, 1) };
    completed = 0;
    measuring = true;
    eld.enable();
    cpu0 = process.cpuUsage();
    t0 = performance.now();
    prof?.start();
  };
  const stop = () => {
    const cpu = cpuMs(cpu0);
    const ms = performance.now() - t0;
    eld.disable();
    measuring = null; // release nothing more
    finished({ cpu, ms, tasks: completed });
  };
  let total = 0;
  let w0 = null;
  let warmed = null;
  const submit = () => {
    pool.run({}).then(
      (result) => {
        if (result.status !== 'resolved') failures.push(result);
        if (taskMs === null) releasing--;
        total++;
        if (measuring === null) return;
        if (measuring) completed++;
        if (!measuring && w0 !== null && (total >= warm || performance.now() - w0 >= spec.warmupS * 1000)) start();
        else if (measuring && (completed >= measured || performance.now() - t0 >= spec.budgetS * 1000)) return stop();
        submit();
        if (taskMs === null) releaseNext();
      },
      (err) => failures.push({ error: String(err) }),
    );
  };

  // Ramp-up: N tasks, held running (or running for taskMs each).
  const r0 = performance.now();
  const rc0 = process.cpuUsage();
  const ramped = new Promise((resolve) => (rampDone = resolve));
  for (let i = 0; i < n; i++) submit();
  if (taskMs === null) await ramped;
  else rampDone = null;
  const ramp = { ms: performance.now() - r0, cpuMs: cpuMs(rc0) };
  if (doProfile) prof = await profiler();
  w0 = performance.now();
  if (warm === 0) start();
  if (taskMs === null) releaseNext();
  const result = await done;
  clearInterval(liveTimer);
  const profile = prof ? summarise(await prof.stop(), profileTop) : null;
  if (failures.length > 0) throw new BenchError(`fake tasks failed: ${JSON.stringify(failures.slice(0, 3))}`);
  return {
    scenario: doProfile ? 'fake-scale-profile' : 'fake-scale',
    workers: n,
    mode: taskMs === null ? 'held' : `timer ${taskMs} ms`,
    window: taskMs === null ? window : null,
    rampMs: Math.round(ramp.ms),
    rampCpuMsPerWorker: round(ramp.cpuMs / n),
    warmup: warmed,
    tasks: result.tasks,
    seconds: round(result.ms / 1000, 1),
    tasksPerSec: round((result.tasks * 1000) / result.ms, 1),
    cpuMsPerTask: round(result.cpu / result.tasks, 4),
    eldMs: eldOf(eld),
    live: { mean: round(live.sum / Math.max(1, live.samples), 0), min: live.samples ? live.min : null, max: live.max },
    heapUsedMiB: round(process.memoryUsage().heapUsed / 2 ** 20, 1),
    ...(profile ? { profile } : {}),
  };
}

/** A real run through the library: `tasks` tasks of `sleep S` at `concurrency`. */
async function childReal(spec) {
  const { createPool } = await import('../dist/src/index.js');
  const { tasks, concurrency, sleep, timeoutS, profile: tickProfile } = spec;
  const pool = createPool({
    worker: { command: ['sleep', String(sleep)] },
    concurrency,
    logLevel: 'warn',
    env: [`${MARK_NAME}=${MARK_VALUE()}`],
  });
  let live = 0;
  let peakLive = 0;
  let spawned = 0;
  let reaped = 0;
  pool.on('worker:spawned', () => {
    spawned++;
    peakLive = Math.max(peakLive, ++live);
  });
  pool.on('worker:reaped', () => {
    reaped++;
    live--;
  });
  // Attempts that failed (and were retried, or not): by kind.
  const failedAttempts = {};
  /** The first message of each kind of failure, and how many attempts had that message. */
  const failureMessages = {};
  let breakerTrips = 0;
  pool.on('attempt', ({ outcome }) => {
    if (outcome.status !== 'failed') return;
    failedAttempts[outcome.kind] = (failedAttempts[outcome.kind] ?? 0) + 1;
    const m = `${outcome.kind}: ${outcome.message}`.slice(0, 160);
    if (Object.keys(failureMessages).length < 5 || m in failureMessages) failureMessages[m] = (failureMessages[m] ?? 0) + 1;
  });
  pool.on('breaker:tripped', () => breakerTrips++);
  const prof = tickProfile ? await profiler(tickProfile.intervalUs) : null;
  await prof?.start();
  const eld = await eldMonitor();
  const cpuTurnStop = cpuPerTurn();
  const gcStop = gcWatch();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await pool.start();
  const statuses = {};
  let settled = 0;
  const runs = [];
  for (let i = 0; i < tasks; i++) {
    runs.push(
      pool.run({ n: i }).then(
        (r) => {
          const key = r.status === 'resolved' ? 'resolved' : `failed:${r.error.kind}`;
          statuses[key] = (statuses[key] ?? 0) + 1;
          settled++;
        },
        (err) => {
          statuses[`rejected:${err.code ?? err.message}`] = (statuses[`rejected:${err.code ?? err.message}`] ?? 0) + 1;
        },
      ),
    );
  }
  const progress = setInterval(() => {
    const failed = Object.entries(failedAttempts).map(([k, v]) => `${k} ${v}`).join(', ') || 'none';
    log(`  ${((performance.now() - t0) / 1000).toFixed(0)} s: ${settled}/${tasks} settled, ${live} live, failed attempts: ${failed}, breaker trips ${breakerTrips}`);
  }, 5000);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    pool.stop();
  }, timeoutS * 1000);
  await Promise.all(runs);
  const runMs = performance.now() - t0;
  await pool.drain();
  clearTimeout(timer);
  clearInterval(progress);
  const ms = performance.now() - t0;
  const cpu = cpuMs(cpu0);
  eld.disable();
  const gc = gcStop();
  const cpuTurn = cpuTurnStop();
  const ticks = prof ? longTicks(await prof.stop(), tickProfile.longMs, tickProfile.top) : null;
  return {
    tasks,
    concurrency,
    command: `sleep ${sleep}`,
    timedOut,
    outcomes: statuses,
    failedAttempts,
    ...(Object.keys(failureMessages).length ? { failureMessages } : {}),
    breakerTrips,
    spawned,
    reaped,
    peakLiveFromEvents: peakLive,
    seconds: round(runMs / 1000, 1),
    secondsWithDrain: round(ms / 1000, 1),
    idealSeconds: Math.ceil(tasks / concurrency) * sleep,
    managerCpuMsPerTask: round(cpu / tasks, 3),
    eldMs: eldOf(eld),
    cpuPerTurnMs: cpuTurn,
    gcMs: gc,
    heapUsedMiB: round(process.memoryUsage().heapUsed / 2 ** 20, 1),
    ...(ticks ? { profiled: true, longTicks: ticks } : {}),
  };
}

// The marker travels from the parent in the child's environment.
const MARK_VALUE = () => process.env.BENCH_SCALE_MARK ?? MARK;

async function child(spec) {
  const result = spec.kind === 'fake' ? await childFake(spec) : await childReal(spec);
  process.send(result, () => process.exit(0));
}

// ---------------------------------------------------------------------------------------
// Parent side

/** Run one scenario in a child process; resolves with what it reports. */
function runChild(spec, { sample = false } = {}) {
  return new Promise((resolve, reject) => {
    const proc = fork(SELF, ['--child', JSON.stringify(spec)], {
      env: { ...process.env, BENCH_SCALE_MARK: MARK },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: NODE_FLAGS,
    });
    current.add(proc);
    const sampling = sample ? sampler(proc.pid) : null;
    let result = null;
    proc.on('message', (m) => (result = m));
    proc.once('error', reject);
    proc.once('exit', (code, signal) => {
      current.delete(proc);
      const peaks = sampling?.stop();
      if (result === null) return reject(new BenchError(`${spec.kind} child exited with ${signal ?? `code ${code}`} and no result`));
      resolve(peaks ? { ...result, ...peaks } : result);
    });
  });
}

const current = new Set();
let interrupted = null;
const IS_CHILD = process.argv[2] === '--child';
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    interrupted = signal;
    // A child leaves at once: the pool's registry kills its workers at exit, and the spawn
    // host kills what it started when its pipe closes.
    if (IS_CHILD) process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
    for (const proc of current) proc.kill('SIGTERM');
  });
}

/** The CLI with the event-loop probe preloaded: `tasks` tasks of `sleep S` at `concurrency`. */
async function runCli({ tasks, concurrency, sleep, timeoutS }, dir) {
  const file = join(dir, `tasks-${tasks}.jsonl`);
  writeFileSync(file, '{}\n'.repeat(tasks));
  const eldFile = join(dir, 'eld.json');
  const args = ['run', file, '--command', `sleep ${sleep}`, '--concurrency', String(concurrency), '--log-level', 'warn', '--env', `${MARK_NAME}=${MARK}`];
  const command = `node --import scripts/fixtures/eld-probe.js bin/tidepool run FILE --command "sleep ${sleep}" --concurrency ${concurrency} --log-level warn --env ${MARK_NAME}=…`;
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const proc = spawn(process.execPath, [...NODE_FLAGS, '--import', PROBE, CLI, ...args], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', BENCH_ELD_OUT: eldFile },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    current.add(proc);
    const sampling = sampler(proc.pid);
    const out = [];
    const err = [];
    proc.stdout.on('data', (c) => out.push(c));
    proc.stderr.on('data', (c) => err.push(c));
    const timer = setTimeout(() => proc.kill('SIGTERM'), timeoutS * 1000);
    proc.once('error', reject);
    proc.once('close', (code, signal) => {
      clearTimeout(timer);
      current.delete(proc);
      const ms = performance.now() - t0;
      const peaks = sampling.stop();
      const outcomes = {};
      const ids = new Set();
      let attempts = 0;
      for (const line of Buffer.concat(out).toString('utf8').split('\n')) {
        if (!line) continue;
        try {
          const r = JSON.parse(line);
          ids.add(r.id);
          attempts += r.attempts ?? 0;
          const key = r.status === 'resolved' ? 'resolved' : `failed:${r.error?.kind}`;
          outcomes[key] = (outcomes[key] ?? 0) + 1;
        } catch {
          outcomes.unparsable = (outcomes.unparsable ?? 0) + 1;
        }
      }
      let eld = null;
      try {
        eld = JSON.parse(readFileSync(eldFile, 'utf8'));
      } catch {
        // The CLI did not exit normally.
      }
      const stderr = Buffer.concat(err).toString('utf8').trim();
      resolve({
        tasks,
        concurrency,
        command,
        exit: signal ?? code,
        outcomes,
        // Attempts beyond one per task (failed attempts that were retried).
        retries: attempts - ids.size,
        breakerTrips: stderr.split('crash breaker tripped').length - 1,
        distinctIds: ids.size,
        seconds: round(ms / 1000, 1),
        idealSeconds: Math.ceil(tasks / concurrency) * sleep,
        managerCpuMsPerTask: eld ? round(eld.cpuMs / tasks, 3) : null,
        eldMs: eld ? { p50: eld.p50, p99: eld.p99, max: eld.max } : null,
        cpuPerTurnMs: eld?.cpuPerTurnMs ?? null,
        ...peaks,
        ...(stderr ? { stderrTail: stderr.slice(-500) } : {}),
      });
    });
  });
}

/** Checks of a real run; returns the problems found. */
function problemsOf(r) {
  const problems = [];
  if (r.timedOut) problems.push('timed out');
  if (r.exit !== undefined && r.exit !== 0) problems.push(`exited with ${r.exit}`);
  const resolved = r.outcomes.resolved ?? 0;
  if (resolved !== r.tasks) problems.push(`${resolved}/${r.tasks} resolved (${JSON.stringify(r.outcomes)})`);
  if (r.distinctIds !== undefined && r.distinctIds !== r.tasks) problems.push(`${r.distinctIds} distinct ids`);
  if (r.spawned !== undefined && r.spawned !== r.reaped) problems.push(`${r.spawned} spawned, ${r.reaped} reaped`);
  if (r.leftovers.length > 0) problems.push(`left behind: ${r.leftovers.slice(0, 5).join(', ')}${r.leftovers.length > 5 ? ` and ${r.leftovers.length - 5} more` : ''}`);
  return problems;
}

async function main() {
  const cfg = config();
  if (!existsSync(join(ROOT, 'dist/src/index.js'))) throw new BenchError('dist/ is missing: run `npm run build` first');
  const print = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
  print(limits());
  const failures = [];
  const check = () => {
    if (interrupted) throw new BenchError(`interrupted by ${interrupted}`);
  };

  if (cfg.scenarios.includes('fake')) {
    let base = null;
    const runs = cfg.sizes.map((size) => ({ size, profile: false }));
    for (const size of cfg.profile) runs.push({ size, profile: true });
    for (const { size, profile } of runs) {
      check();
      log(`fake: ${size} workers${profile ? ' (profiled)' : ''}`);
      const r = await runChild({
        kind: 'fake',
        size,
        profile,
        warmup: cfg.warmup,
        warmupS: cfg.warmupS,
        tasks: cfg.tasks,
        budgetS: cfg.budgetS,
        window: cfg.window,
        taskMs: cfg.taskMs,
        profileTop: cfg.profileTop,
      });
      if (!profile) {
        base ??= r;
        r.ratioToSmallest = round(r.cpuMsPerTask / base.cpuMsPerTask, 2);
        r.smallest = base.workers;
        if (size === 1000 && base.workers === 10) r.target = { ratioAtMost: 2, met: r.ratioToSmallest <= 2 };
      }
      print(r);
    }
  }

  const dir = mkdtempSync(join(tmpdir(), 'tidepool-scale-'));
  try {
    const real = [
      ['live', 'command-live', () => runChild({ kind: 'real', ...cfg.live, timeoutS: cfg.timeoutS, profile: cfg.realProfile }, { sample: true })],
      ['cli', 'command-live-cli', () => runCli({ ...cfg.live, timeoutS: cfg.timeoutS }, dir)],
      ['queue', 'command-queue', () => runChild({ kind: 'real', ...cfg.queue, timeoutS: cfg.timeoutS, profile: cfg.realProfile }, { sample: true })],
    ];
    for (const [key, scenario, run] of real) {
      if (!cfg.scenarios.includes(key)) continue;
      check();
      const c = key === 'queue' ? cfg.queue : cfg.live;
      log(`${scenario}: ${c.tasks} x sleep ${c.sleep} at concurrency ${c.concurrency}`);
      const idle = idleReference(dir);
      const r = { scenario, ...(await run()) };
      r.idleEldMs = await idle.stop();
      r.leftovers = await settleLeftovers();
      const problems = problemsOf(r);
      r.eldTarget = { p99BelowMs: 100, met: r.eldMs !== null && r.eldMs.p99 < 100 };
      r.ok = problems.length === 0;
      if (problems.length > 0) {
        r.problems = problems;
        failures.push(`${scenario}: ${problems.join('; ')}`);
      }
      print(r);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  if (failures.length > 0) throw new BenchError(failures.join('\n'));
}

if (IS_CHILD) {
  child(JSON.parse(process.argv[3])).catch((err) => {
    process.stderr.write(`bench-scale (child): ${err?.stack ?? err}\n`);
    process.exit(1);
  });
} else {
  main().catch((err) => {
    if (interrupted) {
      log(`interrupted by ${interrupted}`);
      process.exitCode = 128 + (interrupted === 'SIGINT' ? 2 : 15);
      return;
    }
    log(`FAILED: ${err instanceof BenchError ? err.message : err?.stack ?? err}`);
    process.exitCode = 1;
  });
}
