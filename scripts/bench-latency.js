#!/usr/bin/env node
// Latency from `pool.run(task)` to the first line of the handler, one task at a time, for the
// single-use workers (the default): cold (no spare: the worker is spawned just in time) and
// with a warm spare (`spares: 1`), for module and command workers, each against a bare
// reference measured in the same run, task by task in alternation:
//   cold reference:  a bare `child_process.spawn` of the same fixture started when the task
//                    arrives (the task written to its stdin at once);
//   warm reference:  the same child started beforehand, blocked on its stdin; the task is
//                    written to it when it arrives.
//
// The clock is CLOCK_MONOTONIC, which every process on the machine shares: Node's
// process.hrtime.bigint() here, just before `run()` (or the reference's spawn / write), and in
// the worker:
//   module:  scripts/fixtures/first-line.js, the handler's first line (`first`), and when its
//            module was evaluated (`loaded`); the reference runs it in scripts/fixtures/
//            bare-module.js (load the handler, read stdin, call it), as tidepool's child does.
//   command: `perl scripts/fixtures/first-line.pl`: for a command, the "first line" is the
//            moment it has read the first line of its stdin (the task); `start` is its first
//            statement (its own start-up, Time::HiRes loaded, before the read).
// Between tasks the script waits until the previous worker is reaped and, with a spare, until
// the next spare is warm: its main thread blocked reading its stdin (/proc/PID/wchan
// `pipe_read`), the handler loaded; then BENCH_LATENCY_GAP_MS more. The workers and the
// references' children get PATH only (and the run's marker).
//
// One JSON object per scenario on stdout (module-cold, module-spare, command-cold,
// command-spare): `tidepool` and `reference` latency in ms (p50, p90, p99, max, mean, n),
// `ratio` (tidepool p50 / reference p50), `endToEndMs` (run() to the resolved outcome), and
// for the spare scenarios `target` (p50 <= 2 ms) and `met`. Progress on stderr. Exit 1 when
// an outcome is not resolved, a reference child fails, or a worker carrying the run's marker
// (or a child of this process) is still alive at the end.
//
// Usage: npm run build && node scripts/bench-latency.js
//        BENCH_LATENCY_TASKS=20 node scripts/bench-latency.js        (quick, ~20 s)
// Env:   BENCH_LATENCY_TASKS (200 per side and scenario), BENCH_LATENCY_WARMUP (5: tasks per
//        side not counted), BENCH_LATENCY_GAP_MS (20), BENCH_LATENCY_SCENARIOS
//        (module-cold,module-spare,command-cold,command-spare), BENCH_SPAWN_HOST (perl, node
//        or auto: TIDEPOOL_SPAWN_HOST for the pool).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BenchError, intEnv, leftovers as sharedLeftovers, reportBenchErrors } from './lib/bench.js';
import { createPool } from '../dist/src/index.js';

reportBenchErrors('bench-latency');
for (const name of ['HOME', 'LANG', 'TZ', 'TMPDIR', 'NODE_ENV']) delete process.env[name];
if (process.env.BENCH_SPAWN_HOST) process.env.TIDEPOOL_SPAWN_HOST = process.env.BENCH_SPAWN_HOST;

const HANDLER = fileURLToPath(new URL('fixtures/first-line.js', import.meta.url));
const BARE_MODULE = fileURLToPath(new URL('fixtures/bare-module.js', import.meta.url));
const COMMAND = ['perl', fileURLToPath(new URL('fixtures/first-line.pl', import.meta.url))];
const N = intEnv('BENCH_LATENCY_TASKS', 200);
const WARMUP = intEnv('BENCH_LATENCY_WARMUP', 5, { min: 0 });
const GAP_MS = intEnv('BENCH_LATENCY_GAP_MS', 20, { min: 0 });
const KNOWN = ['module-cold', 'module-spare', 'command-cold', 'command-spare'];
const SCENARIOS = (process.env.BENCH_LATENCY_SCENARIOS || KNOWN.join(',')).split(',').map((s) => s.trim());
for (const name of SCENARIOS) {
  if (!KNOWN.includes(name)) throw new BenchError(`BENCH_LATENCY_SCENARIOS: unknown ${JSON.stringify(name)} (known: ${KNOWN.join(', ')})`);
}
const TARGET_MS = 2;
const MARK_NAME = 'TIDEPOOL_BENCH_LATENCY';
const MARK = `${process.pid}-${Date.now()}`;
const CHILD_ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin', [MARK_NAME]: MARK };

const failures = [];
const log = (msg) => process.stderr.write(`bench-latency: ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => process.hrtime.bigint();
const ms = (from, to) => Number(BigInt(to) - BigInt(from)) / 1e6;

/**
 * Whether the process's main thread is blocked reading its stdin (a warm worker): a pipe for
 * tidepool's workers, a socket for Node's `stdio: 'pipe'`.
 */
function readingStdin(pid) {
  try {
    return /pipe_read$|unix_stream_read/.test(readFileSync(`/proc/${pid}/wchan`, 'utf8'));
  } catch {
    return false;
  }
}

async function until(what, check, timeoutMs = 20_000) {
  const t = Date.now();
  while (!check()) {
    if (Date.now() - t > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

/** The latency figures of one side, in ms. */
function stats(values) {
  const v = values.slice(WARMUP).sort((a, b) => a - b);
  const at = (q) => v[Math.min(v.length - 1, Math.floor(q * v.length))];
  const round = (x) => Number(x.toFixed(3));
  if (v.length === 0) return { n: 0 };
  return {
    n: v.length,
    p50: round(at(0.5)),
    p90: round(at(0.9)),
    p99: round(at(0.99)),
    max: round(v[v.length - 1]),
    mean: round(v.reduce((a, b) => a + b, 0) / v.length),
  };
}

/** A bare child of the fixture: `start()` spawns it, `send(task)` writes its task; resolves its result. */
function bareChild(kind) {
  const [file, args] = kind === 'module' ? [process.execPath, [BARE_MODULE, HANDLER]] : [COMMAND[0], COMMAND.slice(1)];
  const child = spawn(file, args, { env: CHILD_ENV, detached: true, stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (s) => (out += s));
  const result = new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code !== 0) return reject(new Error(`${file} ${args.join(' ')} exited with ${code ?? signal}`));
      try {
        resolve(JSON.parse(out));
      } catch {
        reject(new Error(`${file}: not JSON: ${out.slice(0, 200)}`));
      }
    });
  });
  return { child, result, send: (task) => child.stdin.end(`${JSON.stringify(task)}\n`) };
}

/** One side's task: resolves { latencyMs, endToEndMs, start } (start: the worker's own start, when it says). */
async function referenceTask(kind, warm) {
  let bare;
  let t0;
  if (warm) {
    bare = bareChild(kind);
    try {
      await until('a warm reference child', () => readingStdin(bare.child.pid));
    } catch (err) {
      bare.child.kill('SIGKILL');
      throw err;
    }
    await sleep(GAP_MS);
    t0 = now();
  } else {
    await sleep(GAP_MS);
    t0 = now();
    bare = bareChild(kind);
  }
  bare.send({ id: 'ref' });
  const result = await bare.result;
  return { latencyMs: ms(t0, result.first), endToEndMs: ms(t0, now()), startMs: ms(t0, result.start ?? result.loaded) };
}

async function scenario(name) {
  const [kind, mode] = name.split('-');
  const spare = mode === 'spare';
  const pool = createPool({
    worker: kind === 'module' ? { module: HANDLER } : { command: COMMAND },
    concurrency: 2,
    spares: spare ? 1 : 0,
    logLevel: 'warn',
    env: [`${MARK_NAME}=${MARK}`],
  });
  const spawned = [];
  let reaped = 0;
  pool.on('worker:spawned', ({ pid }) => spawned.push(pid));
  pool.on('worker:reaped', () => reaped++);
  await pool.start();
  const sides = { tidepool: { latency: [], endToEnd: [], start: [] }, reference: { latency: [], endToEnd: [], start: [] } };
  const poolTask = async (i) => {
    // The previous worker gone; with a spare, the next one warm (spawned, handler loaded,
    // blocked on its stdin).
    await until('the previous worker to be reaped', () => reaped >= spawned.length - (spare ? 1 : 0));
    if (spare) await until('a warm spare', () => spawned.length > i && readingStdin(spawned[spawned.length - 1]));
    await sleep(GAP_MS);
    const t0 = now();
    const outcome = await pool.run({ id: `${name}-${i}` });
    const t1 = now();
    if (outcome.status !== 'resolved') throw new Error(`${outcome.id}: ${outcome.status}: ${JSON.stringify(outcome.error)}`);
    return { latencyMs: ms(t0, outcome.result.first), endToEndMs: ms(t0, t1), startMs: ms(t0, outcome.result.start ?? outcome.result.loaded) };
  };
  const total = N + WARMUP;
  try {
    await measure();
  } catch (err) {
    await pool.stop();
    throw err;
  }
  async function measure() {
    for (let i = 0; i < total; i++) {
      // Alternate which side goes first, so a slow spell of the machine hits both.
      const order = i % 2 === 0 ? ['tidepool', 'reference'] : ['reference', 'tidepool'];
      for (const side of order) {
        const r = side === 'tidepool' ? await poolTask(i) : await referenceTask(kind, spare);
        sides[side].latency.push(r.latencyMs);
        sides[side].endToEnd.push(r.endToEndMs);
        sides[side].start.push(r.startMs);
      }
      if ((i + 1) % 50 === 0) log(`${name}: ${i + 1}/${total}`);
    }
  }
  await pool.drain();
  const tidepool = stats(sides.tidepool.latency);
  const reference = stats(sides.reference.latency);
  return {
    scenario: name,
    tasks: N,
    gapMs: GAP_MS,
    tidepool: {
      latencyMs: tidepool,
      endToEndMs: stats(sides.tidepool.endToEnd),
      // Cold: when the worker started (module evaluated / the command's first statement).
      ...(spare ? {} : { startMs: stats(sides.tidepool.start) }),
      spawned: spawned.length,
    },
    reference: {
      name: `bare child_process.spawn of ${kind === 'module' ? 'node scripts/fixtures/bare-module.js (the same handler)' : COMMAND.join(' ').replace(/.*scripts/, 'perl scripts')}, ${spare ? 'started beforehand, task written when it arrives' : 'started when the task arrives'}`,
      latencyMs: reference,
      endToEndMs: stats(sides.reference.endToEnd),
      ...(spare ? {} : { startMs: stats(sides.reference.start) }),
    },
    ratio: Number((tidepool.p50 / reference.p50).toFixed(2)),
    ...(spare ? { target: { p50Ms: TARGET_MS }, met: tidepool.p50 <= TARGET_MS } : {}),
  };
}

/** Live processes carrying the marker, and children of this process. */
/** What outlived the run: processes with the marker, and children of this script. */
const leftovers = () => sharedLeftovers(MARK_NAME, MARK, { children: true });

for (const name of SCENARIOS) {
  log(`${name}: ${N} tasks per side (+${WARMUP} warm-up), gap ${GAP_MS} ms`);
  try {
    process.stdout.write(`${JSON.stringify(await scenario(name))}\n`);
  } catch (err) {
    failures.push(`${name}: ${err.message}`);
  }
}
let left = leftovers();
for (let i = 0; i < 50 && left.length > 0; i++) {
  await sleep(100);
  left = leftovers();
}
if (left.length > 0) failures.push(`processes outlived the run: ${left.join(', ')}`);
for (const f of failures) log(`FAILED: ${f}`);
process.exit(failures.length > 0 ? 1 : 0);
