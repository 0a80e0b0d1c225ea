#!/usr/bin/env node
// `tidepool serve` against the same pool driven directly (`pool.run`), measured in the same
// run: what the HTTP API (fastify, JSON, the recent-task registry) and the metrics (prom-client,
// the inspection observer that times spawns) add per task. Workers are /bin/cat command
// workers (~1 ms per spawn), so the manager's own cost per task is what shows. Each repetition
// is a back-to-back pair (order alternating) so drift on a noisy machine hits both sides; rates
// are medians of BENCH_REPEAT runs, `ratio` the median of per-pair ratios serve / direct, and
// `*CpuMsPerTask` the manager process's own CPU time per task (the HTTP client's excluded).
//
// Scenarios: `metrics` (the service's pool with its metrics, tasks given by pool.run: no HTTP),
// `batch` (POST /tasks?wait=true, JSON Lines of BENCH_BATCH tasks, BENCH_BATCHES requests at a
// time), `single` (POST /tasks?wait=true, one task a request, BENCH_CLIENTS requests at a time).
// The HTTP client is a process of its own (scripts/fixtures/http-load.js); its start-up is not
// timed, its work shares the machine's cores with the service and the workers.
//
// stdout: one JSON object per scenario. stderr: progress. Exit 1 when a task does not
// resolve or a worker outlives its run.
//
// Usage: npm run build && node scripts/bench-serve.js
// Env: BENCH_REPEAT (5), BENCH_TASKS (2000), BENCH_CONCURRENCY (4), BENCH_BATCH (100), BENCH_BATCHES (4),
//      BENCH_CLIENTS (16), BENCH_SCENARIOS (comma list of metrics,batch,single).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { createPool } from '../dist/src/index.js';
import { createService } from '../dist/src/serve/index.js';

const REPEAT = Number(process.env.BENCH_REPEAT ?? 5);
const TASKS = Number(process.env.BENCH_TASKS ?? 2000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 4);
const BATCH = Number(process.env.BENCH_BATCH ?? 100);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 16);
const BATCHES = Number(process.env.BENCH_BATCHES ?? 4);
const LOAD = fileURLToPath(new URL('fixtures/http-load.js', import.meta.url));
const SCENARIOS = (process.env.BENCH_SCENARIOS ?? 'metrics,batch,single').split(',');

const base = { worker: { command: ['/bin/cat'] }, concurrency: CONCURRENCY, logger: pino({ level: 'warn' }) };
const task = (run, i) => JSON.stringify({ id: `r${run}-${i}`, n: i });
let runs = 0;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function checkAll(results) {
  const bad = results.find((r) => r.status !== 'resolved');
  if (bad) throw new Error(`a task did not resolve: ${JSON.stringify(bad)}`);
  if (results.length !== TASKS) throw new Error(`${results.length} outcomes for ${TASKS} tasks`);
}

/** Worker pids still alive (from /proc) among those a pool spawned. */
const alive = (pids) =>
  [...pids].filter((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
      return !/^[ZX]$/.test(stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3));
    } catch {
      return false;
    }
  });

/** CPU time of this process (the manager: the pool, and the service when there is one) since `from`, in ms per task. */
const cpuPerTask = (from) => {
  const { user, system } = process.cpuUsage(from);
  return (user + system) / 1000 / TASKS;
};

async function timed(pool, body) {
  const spawned = new Set();
  pool.on('worker:spawned', ({ pid }) => spawned.add(pid));
  const cpu = process.cpuUsage();
  const t0 = performance.now();
  const results = await body();
  const seconds = (performance.now() - t0) / 1000;
  checkAll(results);
  return { rate: TASKS / seconds, cpu: cpuPerTask(cpu), spawned };
}

async function direct() {
  const pool = createPool({ ...base });
  await pool.start();
  const run = ++runs;
  const { rate, cpu, spawned } = await timed(pool, () => Promise.all(Array.from({ length: TASKS }, (_, i) => pool.run(task(run, i)))));
  await pool.drain();
  return { rate, cpu, spawned };
}

/** Run the HTTP load generator (a process of its own) against `url`; resolves with its report. */
function load(url, scenario, run) {
  const per = scenario === 'batch' ? BATCH : CLIENTS;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [LOAD, url, scenario, String(TASKS), String(per), String(BATCHES), String(run)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`load generator exited ${code}`))));
  });
}

async function viaService(scenario) {
  const { pool, service, app } = createService({ ...base }, { maxQueued: TASKS + BATCH * BATCHES, maxRecent: TASKS });
  const spawned = new Set();
  pool.on('worker:spawned', ({ pid }) => spawned.add(pid));
  await pool.start();
  const url = await app.listen({ port: 0, host: '127.0.0.1' });
  const run = ++runs;
  let rate;
  let cpu;
  if (scenario === 'metrics') {
    ({ rate, cpu } = await timed(pool, () =>
      Promise.all(Array.from({ length: TASKS }, (_, i) => service.submit(`r${run}-${i}`, task(run, i)).then((s) => s.result))),
    ));
  } else {
    const from = process.cpuUsage();
    const report = await load(url, scenario, run);
    cpu = cpuPerTask(from);
    checkAll(report.outcomes.map((status) => ({ status })));
    rate = TASKS / report.seconds;
  }
  await service.drain(60_000);
  await app.close();
  service.close();
  return { rate, cpu, spawned };
}

const failures = [];
for (const scenario of SCENARIOS) {
  const pairs = [];
  for (let r = 0; r < REPEAT; r++) {
    const order = r % 2 === 0 ? ['direct', 'serve'] : ['serve', 'direct'];
    const pair = {};
    for (const side of order) pair[side] = side === 'direct' ? await direct() : await viaService(scenario);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const left = alive([...pair.direct.spawned, ...pair.serve.spawned]);
    if (left.length > 0) failures.push(`${scenario}: workers alive after their run: ${left.join(' ')}`);
    pairs.push({ direct: pair.direct.rate, serve: pair.serve.rate, directCpu: pair.direct.cpu, serveCpu: pair.serve.cpu });
    process.stderr.write(
      `${scenario} ${r + 1}/${REPEAT}: direct ${pair.direct.rate.toFixed(0)}/s ${pair.direct.cpu.toFixed(3)} ms CPU/task, ` +
        `serve ${pair.serve.rate.toFixed(0)}/s ${pair.serve.cpu.toFixed(3)} ms CPU/task\n`,
    );
  }
  process.stdout.write(
    `${JSON.stringify({
      scenario: `serve-${scenario}`,
      tasks: TASKS,
      concurrency: CONCURRENCY,
      ...(scenario === 'batch' ? { batch: BATCH, batches: BATCHES } : scenario === 'single' ? { clients: CLIENTS } : {}),
      repeat: REPEAT,
      directPerSecond: Math.round(median(pairs.map((p) => p.direct))),
      servePerSecond: Math.round(median(pairs.map((p) => p.serve))),
      ratio: Number(median(pairs.map((p) => p.serve / p.direct)).toFixed(3)),
      // The manager's own CPU per task: steadier than rates on a shared machine.
      directCpuMsPerTask: Number(median(pairs.map((p) => p.directCpu)).toFixed(3)),
      serveCpuMsPerTask: Number(median(pairs.map((p) => p.serveCpu)).toFixed(3)),
    })}\n`,
  );
}
if (failures.length > 0) {
  process.stderr.write(`${failures.join('\n')}\n`);
  process.exitCode = 1;
}
