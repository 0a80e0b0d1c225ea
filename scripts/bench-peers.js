#!/usr/bin/env node
// tidepool against its peers on the same no-op work at the same concurrency, measured in the
// same run (see docs/benchmark-notes.md, "Peers"). Two scenarios:
//
//   peers-reused      BENCH_PEERS_TASKS (20000) no-op tasks at BENCH_PEERS_CONCURRENCY (4):
//     tidepool   the library: createPool({ worker: { module: test/fixtures/noop.js },
//                concurrency, maxTasksPerWorker: 1000000 }), tasks given by pool.run;
//     ipc        the reference: `concurrency` bare forked children (scripts/fixtures/ipc-echo.js)
//                answering IPC round trips, one in flight each (the physical limit of reuse);
//     bullmq     a BullMQ Worker with a sandboxed processor (the same file, so BullMQ runs it in
//                child processes of its own), `concurrency`, Redis at BENCH_REDIS_URL
//                (redis://127.0.0.1:6379), jobs added with Queue.addBulk (chunks of 1000) while
//                the worker runs, removeOnComplete; a queue of this run's own, obliterated after;
//     piscina    a Piscina pool of worker threads (minThreads = maxThreads = concurrency) running
//                the same file, tasks given by pool.run.
//   peers-single-use  BENCH_PEERS_SINGLE_TASKS (200) tasks, a fresh process per task:
//     tidepool   the library: createPool({ worker: { module: NOOP }, concurrency }) (one task per
//                worker, the default);
//     fork       the reference: a bare child_process.fork loop of NOOP, `concurrency` at a time.
//     BullMQ and piscina have no fresh-process-per-task mode; the line says so.
//
// Each side runs in a process of its own (forked from this script with PATH only and this
// run's marker in its environment): a fresh manager per side, and the bare loops are not slowed
// by the libraries the others load. Each side is set up and warmed up first (unmeasured), then
// each repetition runs every side back to back, in an order that rotates, so a slow spell of
// the machine hits them all. `tasksPerSec` are medians over BENCH_REPEAT (5) repetitions; the
// time of a repetition runs from the first task given to the last outcome. `ratio` is tidepool
// / reference, and each peer's `ratioToTidepool` peer / tidepool (`tidepoolRatio` the other
// way round, the other scripts' convention), all medians of the per-repetition ratios. A peer
// that cannot run (no Redis, a package missing, a failure) is reported as such in its
// `status`, with no figure.
//
// Every process a side starts gets the marker in its environment (the bare children and
// BullMQ's children explicitly, tidepool's workers through `env`, the spawn host by
// inheritance); after both scenarios the script searches /proc for any process that carries it.
// The children of the references and of BullMQ are `detached` (a session of their own), as
// tidepool's workers are: with autogroup scheduling that changes their share of the CPU on a
// shared machine (see "Scenarios" in docs/benchmark-notes.md).
//
// stdout: one JSON object per scenario, then {"scenario":"peers-leftovers",...}.
// stderr: progress. Exit 1 when tidepool or a reference fails, or a process outlives the run.
//
// Usage: npm run build && node scripts/bench-peers.js
// Env: BENCH_PEERS_TASKS (20000), BENCH_PEERS_SINGLE_TASKS (200), BENCH_PEERS_CONCURRENCY (4),
//      BENCH_REPEAT (5), BENCH_PEERS_SCENARIOS (comma list of reused,single),
//      BENCH_PEERS (comma list of the peers to run: ipc,bullmq,piscina,fork; default all),
//      BENCH_REDIS_URL (redis://127.0.0.1:6379).
import { fork } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BenchError, intEnv, median } from './lib/bench.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SELF = fileURLToPath(import.meta.url);
const NOOP = join(ROOT, 'test/fixtures/noop.js');
const IPC_ECHO = join(ROOT, 'scripts/fixtures/ipc-echo.js');
const MARK_NAME = 'TIDEPOOL_BENCH_PEERS';
const REDIS_URL = process.env.BENCH_REDIS_URL || 'redis://127.0.0.1:6379';


const round = (x, digits) => Number(x.toFixed(digits));
const log = (text) => process.stderr.write(`bench-peers: ${text}\n`);

// ---------------------------------------------------------------------------------------
// The sides. Each runs in a process of its own: `setup()` (and a warm-up run), then `run(n)`
// for every repetition, then `close()`.

const SIDES = {
  tidepool: {
    name: (c) => `tidepool, the library: ${c} reused module workers (test/fixtures/noop.js), maxTasksPerWorker 1000000, the embedded queue`,
    async setup(c) {
      const { createPool } = await import('../dist/src/index.js');
      const pool = createPool({
        worker: { module: NOOP },
        concurrency: c,
        maxTasksPerWorker: 1_000_000,
        idleTimeout: 3_600_000,
        logLevel: 'warn',
        env: [MARK_NAME],
      });
      await pool.start();
      return poolSide(pool);
    },
  },
  'tidepool-single': {
    name: (c) => `tidepool, the library: single-use module workers (test/fixtures/noop.js), ${c} at a time, the embedded queue`,
    async setup(c) {
      const { createPool } = await import('../dist/src/index.js');
      const pool = createPool({ worker: { module: NOOP }, concurrency: c, logLevel: 'warn', env: [MARK_NAME] });
      await pool.start();
      return poolSide(pool);
    },
  },
  ipc: {
    name: (c) => `${c} bare forked children (scripts/fixtures/ipc-echo.js) answering IPC round trips, one in flight each; env PATH only, detached`,
    async setup(c) {
      const kids = Array.from({ length: c }, () => fork(IPC_ECHO, [], { ...bareOptions(), stdio: 'ignore', execArgv: [] }));
      let failure = null;
      // A child that dies mid-run fails the run at once (it would never answer).
      let abort = () => {};
      const fail = (err) => {
        failure ??= err;
        abort(failure);
      };
      for (const kid of kids) {
        kid.once('exit', (code, signal) => fail(new BenchError(`a bare IPC child exited with ${signal ?? `code ${code}`}`)));
        kid.once('error', fail);
      }
      return {
        run: (n) =>
          new Promise((resolve, reject) => {
            if (failure) return reject(failure);
            abort = reject;
            let sent = 0;
            let done = 0;
            const next = (kid) => {
              if (sent < n) kid.send({ k: 'run', task: { id: `bare:${sent++}` }, last: false });
            };
            const handlers = kids.map((kid) => {
              const onMessage = () => {
                done++;
                if (failure) reject(failure);
                else if (done === n) {
                  kids.forEach((k, i) => k.off('message', handlers[i]));
                  resolve();
                } else next(kid);
              };
              kid.on('message', onMessage);
              return onMessage;
            });
            kids.forEach(next);
          }),
        close: async () => {
          await Promise.all(kids.map((kid) => (kid.exitCode !== null || kid.signalCode !== null ? null : new Promise((r) => {
            kid.removeAllListeners('exit');
            kid.once('exit', r);
            kid.disconnect();
          }))));
        },
      };
    },
  },
  bullmq: {
    name: (c) =>
      `BullMQ, a Worker with a sandboxed processor (test/fixtures/noop.js in ${c} child processes of BullMQ's, env PATH only, detached), concurrency ${c}, Redis; jobs added with addBulk while it runs`,
    async setup(c) {
      const { Queue, Worker } = await import('bullmq');
      const url = new URL(REDIS_URL);
      const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
      const name = `tidepool-bench-peers-${process.pid}-${Date.now()}`;
      const queue = new Queue(name, { connection });
      queue.on('error', () => {});
      let completed = 0;
      let failure = null;
      let wake = () => {};
      const worker = new Worker(name, NOOP, {
        connection,
        concurrency: c,
        removeOnComplete: { count: 0 },
        removeOnFail: { count: 100 },
        workerForkOptions: { ...bareOptions() },
      });
      worker.on('completed', () => {
        completed++;
        wake();
      });
      worker.on('failed', (job, err) => {
        failure ??= new BenchError(`a BullMQ job failed: ${err?.message ?? err}`);
        wake();
      });
      worker.on('error', (err) => {
        failure ??= err;
        wake();
      });
      await worker.waitUntilReady();
      let added = 0;
      return {
        async run(n) {
          const target = completed + n;
          const finished = new Promise((resolve, reject) => {
            wake = () => {
              if (failure) reject(failure);
              else if (completed >= target) resolve();
            };
          });
          wake(); // a failure before this run fails it at once
          for (let i = 0; i < n; i += 1000) {
            const chunk = Math.min(1000, n - i);
            await queue.addBulk(Array.from({ length: chunk }, () => ({ name: 'noop', data: { n: added++ } })));
          }
          await finished;
        },
        async close() {
          await worker.close();
          await queue.obliterate({ force: true });
          await queue.close();
        },
        info: { queue: name, version: packageVersion('bullmq') },
      };
    },
  },
  piscina: {
    name: (c) => `piscina, ${c} worker threads (minThreads = maxThreads = ${c}) running test/fixtures/noop.js`,
    async setup(c) {
      const { Piscina } = await import('piscina');
      const pool = new Piscina({ filename: NOOP, minThreads: c, maxThreads: c, idleTimeout: 3_600_000 });
      return {
        run: (n) => Promise.all(Array.from({ length: n }, (_, i) => pool.run({ n: i }))),
        close: () => pool.destroy(),
        info: { version: packageVersion('piscina') },
      };
    },
  },
  fork: {
    name: (c) => `bare child_process.fork loop of test/fixtures/noop.js (loads and exits; no IPC message), ${c} at a time, env PATH only, detached, stdio ignore`,
    async setup(c) {
      return { run: (n) => bareForkLoop(n, c), close: async () => {} };
    },
  },
};

/** What the references' and BullMQ's children get: PATH and the marker; a session of their own. */
function bareOptions() {
  return { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', [MARK_NAME]: process.env[MARK_NAME] }, detached: true };
}

function packageVersion(name) {
  try {
    return JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')).version;
  } catch {
    return null;
  }
}

function poolSide(pool) {
  let runs = 0;
  return {
    async run(n) {
      const r = ++runs;
      const results = await Promise.all(Array.from({ length: n }, (_, i) => pool.run({ id: `r${r}-${i}` })));
      const bad = results.find((x) => x.status !== 'resolved');
      if (bad) throw new BenchError(`a task did not resolve: ${JSON.stringify(bad).slice(0, 500)}`);
    },
    close: () => pool.drain(),
  };
}

function bareForkLoop(n, concurrency) {
  return new Promise((resolve, reject) => {
    let started = 0;
    let live = 0;
    let failure = null;
    const next = () => {
      if (failure === null && started < n) {
        started++;
        live++;
        const child = fork(NOOP, [], { ...bareOptions(), stdio: 'ignore', execArgv: [] });
        let ended = false;
        const end = (err) => {
          if (ended) return;
          ended = true;
          live--;
          failure ??= err;
          next();
        };
        child.once('error', (err) => {
          if (child.pid === undefined) end(err);
        });
        child.once('exit', (code, signal) => end(code === 0 ? null : new BenchError(`bare fork exited with ${signal ?? `code ${code}`}`)));
      } else if (live === 0) {
        if (failure) reject(failure);
        else resolve();
      }
    };
    for (let k = 0; k < Math.min(concurrency, n); k++) next();
  });
}

/** The side's process: set up and warm up, then run what the parent asks, one at a time. */
async function sideMain(id, concurrency, warmup) {
  const side = SIDES[id];
  let handle;
  try {
    handle = await side.setup(concurrency);
    await handle.run(warmup);
  } catch (err) {
    process.send({ error: `${err?.message ?? err}` });
    if (handle) await handle.close().catch(() => {});
    process.disconnect();
    return;
  }
  process.send({ ready: true, name: side.name(concurrency), info: handle.info ?? null });
  process.on('message', async (msg) => {
    if (msg.close) {
      try {
        await handle.close();
        process.send({ closed: true });
      } catch (err) {
        process.send({ closed: true, error: `close: ${err?.message ?? err}` });
      }
      process.disconnect();
      return;
    }
    try {
      const t0 = performance.now();
      await handle.run(msg.run);
      process.send({ ms: performance.now() - t0 });
    } catch (err) {
      process.send({ error: `${err?.message ?? err}` });
    }
  });
}

// ---------------------------------------------------------------------------------------
// The parent

const MARK = `${process.pid}-${Date.now()}`;

/** Start side `id` in a process of its own; resolves with a handle once it is warm. */
function startSide(id, concurrency, warmup) {
  const child = fork(SELF, ['--side', id, String(concurrency), String(warmup)], {
    // PATH only (as bench-run.js gives the references), plus the marker every descendant inherits.
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', [MARK_NAME]: MARK, ...(process.env.BENCH_REDIS_URL ? { BENCH_REDIS_URL: process.env.BENCH_REDIS_URL } : {}) },
    stdio: ['ignore', 2, 'inherit', 'ipc'],
    execArgv: [],
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(signal ?? code)));
  const ask = (msg) =>
    new Promise((resolve) => {
      const onExit = (code, signal) => resolve({ error: `the side's process exited with ${signal ?? `code ${code}`}` });
      child.once('exit', onExit);
      child.once('message', (reply) => {
        child.off('exit', onExit);
        resolve(reply);
      });
      if (msg) child.send(msg);
    });
  return ask(null).then((reply) => ({
    id,
    child,
    reply,
    run: (n) => ask({ run: n }),
    close: async () => {
      if (child.connected) await ask({ close: true });
      return exited;
    },
  }));
}

/** Whether Redis answers PING at BENCH_REDIS_URL, within 2 s: null, or why not. */
function redisProblem() {
  return new Promise((resolve) => {
    let url;
    try {
      url = new URL(REDIS_URL);
    } catch {
      return resolve(`BENCH_REDIS_URL is not a URL: ${REDIS_URL}`);
    }
    const socket = createConnection({ host: url.hostname, port: Number(url.port || 6379) });
    const done = (problem) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(problem);
    };
    const timer = setTimeout(() => done(`no answer to PING from Redis at ${url.host} within 2 s`), 2000);
    let got = '';
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (d) => {
      got += d;
      if (got.includes('\r\n')) done(got.startsWith('+PONG') ? null : `Redis at ${url.host} answered PING with ${JSON.stringify(got.trim())}`);
    });
    socket.once('error', (err) => done(`Redis at ${url.host} is not reachable: ${err.code ?? err.message}`));
  });
}

/**
 * Run `tidepool` and `others` (side ids) in rotating back-to-back repetitions. Resolves with
 * per-side { name, samples (tasks/s), status }.
 */
async function compare(ids, cannot, tasks, concurrency, repeat, warmup) {
  const sides = {};
  for (const id of ids) {
    if (cannot[id]) {
      sides[id] = { status: `cannot run: ${cannot[id]}` };
      continue;
    }
    log(`${id}: setting up and warming up (${warmup} tasks)`);
    const handle = await startSide(id, concurrency, warmup);
    if (handle.reply.error) {
      sides[id] = { status: `cannot run: ${handle.reply.error}` };
      await handle.close();
      continue;
    }
    sides[id] = { handle, name: handle.reply.name, info: handle.reply.info, ms: [], status: 'ok' };
  }
  const live = () => ids.filter((id) => sides[id].status === 'ok');
  for (let r = 0; r < repeat; r++) {
    const order = live().map((_, i, all) => all[(i + r) % all.length]);
    const line = [];
    for (const id of order) {
      const reply = await sides[id].handle.run(tasks);
      if (reply.error) {
        sides[id].status = `failed: ${reply.error}`;
        line.push(`${id} failed`);
        continue;
      }
      sides[id].ms.push({ r, ms: reply.ms });
      line.push(`${id} ${((tasks * 1000) / reply.ms).toFixed(1)}/s`);
    }
    log(`${r + 1}/${repeat}: ${line.join(', ')}`);
  }
  for (const id of ids) {
    const side = sides[id];
    if (!side.handle) continue;
    const exit = await side.handle.close();
    if (exit !== 0 && side.status === 'ok') side.status = `failed: its process exited with ${exit}`;
    delete side.handle;
  }
  return sides;
}

/** Rates per repetition, and the median ratio of `side` to `base` over the repetitions both completed. */
function figures(side, base, tasks, digits) {
  const rates = new Map(side.ms.map(({ r, ms }) => [r, (tasks * 1000) / ms]));
  const baseRates = new Map((base?.ms ?? []).map(({ r, ms }) => [r, (tasks * 1000) / ms]));
  const ratios = [...rates].filter(([r]) => baseRates.has(r)).map(([r, x]) => x / baseRates.get(r));
  return {
    tasksPerSec: rates.size ? round(median([...rates.values()]), digits) : null,
    samples: [...rates.values()].map((x) => round(x, digits)),
    ratio: ratios.length ? round(median(ratios), 3) : null,
  };
}

function describe(id, side, base, tasks, digits) {
  if (side.status !== 'ok') return { id, name: side.name ?? null, status: side.status };
  const f = figures(side, base, tasks, digits);
  const back = base?.status === 'ok' ? figures(base, side, tasks, digits).ratio : null;
  return {
    id,
    name: side.name,
    ...(side.info ? side.info : {}),
    status: 'ok',
    tasksPerSec: f.tasksPerSec,
    samples: f.samples,
    // peer / tidepool, and tidepool / peer (the convention of the other scripts' `ratio`).
    ratioToTidepool: base?.status === 'ok' ? f.ratio : null,
    tidepoolRatio: back,
  };
}

const OWN = new Set();
for (let pid = process.pid; pid > 1 && !OWN.has(pid); ) {
  OWN.add(pid);
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    break;
  }
}

/** Live processes carrying this run's marker (zombies aside). */
function marked() {
  const needle = `${MARK_NAME}=${MARK}\0`;
  const found = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || OWN.has(Number(entry))) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
      if (stat[stat.lastIndexOf(')') + 2] === 'Z') continue;
      if (`${readFileSync(`/proc/${entry}/environ`, 'latin1')}\0`.includes(needle)) {
        found.push(`${entry} (${readFileSync(`/proc/${entry}/cmdline`, 'latin1').replace(/\0/g, ' ').trim().slice(0, 120)})`);
      }
    } catch {
      // Gone, or not ours to read.
    }
  }
  return found;
}

async function main() {
  const tasks = intEnv('BENCH_PEERS_TASKS', 20_000);
  const singleTasks = intEnv('BENCH_PEERS_SINGLE_TASKS', 200);
  const concurrency = intEnv('BENCH_PEERS_CONCURRENCY', 4);
  const repeat = intEnv('BENCH_REPEAT', 5);
  const scenarios = (process.env.BENCH_PEERS_SCENARIOS || 'reused,single').split(',').map((s) => s.trim()).filter(Boolean);
  for (const s of scenarios) if (!['reused', 'single'].includes(s)) throw new BenchError(`BENCH_PEERS_SCENARIOS: unknown ${JSON.stringify(s)} (known: reused, single)`);
  const knownPeers = ['ipc', 'bullmq', 'piscina', 'fork'];
  const peers = (process.env.BENCH_PEERS || knownPeers.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
  for (const p of peers) if (!knownPeers.includes(p)) throw new BenchError(`BENCH_PEERS: unknown ${JSON.stringify(p)} (known: ${knownPeers.join(', ')})`);
  if (!existsSync(join(ROOT, 'dist/src/index.js'))) throw new BenchError('dist/ is missing: run `npm run build` first');
  log(`node ${process.version}, ${availableParallelism()} CPUs, concurrency ${concurrency}, repeat ${repeat}, scenarios ${scenarios.join(',')}`);

  const cannot = {};
  if (peers.includes('bullmq')) {
    const problem = await redisProblem();
    if (problem) cannot.bullmq = problem;
  }
  let failed = false;

  if (scenarios.includes('reused')) {
    const ids = ['tidepool', ...['ipc', 'bullmq', 'piscina'].filter((p) => peers.includes(p))];
    const sides = await compare(ids, cannot, tasks, concurrency, repeat, Math.min(tasks, 2000));
    const tide = sides.tidepool;
    const ipc = sides.ipc;
    const tideFig = tide.status === 'ok' ? figures(tide, ipc?.status === 'ok' ? ipc : null, tasks, 1) : null;
    if (tide.status !== 'ok' || (ipc && ipc.status !== 'ok')) failed = true;
    process.stdout.write(
      `${JSON.stringify({
        scenario: 'peers-reused',
        tasks,
        concurrency,
        repeat,
        tidepool: tide.status === 'ok' ? { name: tide.name, tasksPerSec: tideFig.tasksPerSec, samples: tideFig.samples } : { status: tide.status },
        reference: ipc ? describe('ipc', ipc, tide, tasks, 1) : null,
        // tidepool / the bare IPC reference (the convention of bench-run.js's module-reused).
        ratio: tideFig?.ratio ?? null,
        target: null,
        peers: ['bullmq', 'piscina'].filter((p) => sides[p]).map((p) => describe(p, sides[p], tide, tasks, 1)),
      })}\n`,
    );
  }

  if (scenarios.includes('single')) {
    const ids = ['tidepool-single', ...(peers.includes('fork') ? ['fork'] : [])];
    const sides = await compare(ids, cannot, singleTasks, concurrency, repeat, Math.min(singleTasks, concurrency * 2));
    const tide = sides['tidepool-single'];
    const bare = sides.fork;
    const tideFig = tide.status === 'ok' ? figures(tide, bare?.status === 'ok' ? bare : null, singleTasks, 2) : null;
    if (tide.status !== 'ok' || (bare && bare.status !== 'ok')) failed = true;
    process.stdout.write(
      `${JSON.stringify({
        scenario: 'peers-single-use',
        tasks: singleTasks,
        concurrency,
        repeat,
        tidepool: tide.status === 'ok' ? { name: tide.name, tasksPerSec: tideFig.tasksPerSec, samples: tideFig.samples } : { status: tide.status },
        reference: bare ? describe('fork', bare, tide, singleTasks, 2) : null,
        ratio: tideFig?.ratio ?? null,
        target: null,
        peers: [
          {
            id: 'bullmq',
            status:
              'not available: BullMQ has no fresh-process-per-job option (its ChildPool puts every child back in its free list after a job; SandboxedOptions has no jobs-per-child limit)',
          },
          { id: 'piscina', status: 'not available: piscina runs tasks in reused worker threads; it has no process (or thread) per task mode' },
        ],
      })}\n`,
    );
  }

  // Nothing any side started may outlive the run. A child killed at close may take a moment.
  let left = marked();
  for (let i = 0; i < 40 && left.length > 0; i++) {
    await new Promise((r) => setTimeout(r, 50));
    left = marked();
  }
  process.stdout.write(`${JSON.stringify({ scenario: 'peers-leftovers', marker: MARK_NAME, leftovers: left, ok: left.length === 0 })}\n`);
  if (left.length > 0) {
    log(`processes outlived the run: ${left.join(', ')}`);
    failed = true;
  }
  if (failed) process.exitCode = 1;
}

if (process.argv[2] === '--side') {
  const [, , , id, concurrency, warmup] = process.argv;
  await sideMain(id, Number(concurrency), Number(warmup));
} else {
  main().catch((err) => {
    log(`FAILED: ${err instanceof BenchError ? err.message : err?.stack ?? err}`);
    process.exitCode = 1;
  });
}
