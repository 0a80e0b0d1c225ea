#!/usr/bin/env node
// tidepool through RabbitMQ against bare amqplib loops doing the same work at the same
// prefetch, measured in the same run (pairs in alternating order; medians of BENCH_REPEAT):
//
//   amqp-command-single-use  a pool with the amqp source and `/bin/cat` command workers,
//                            against a loop that consumes, spawns /bin/cat per message
//                            (task on stdin, result on stdout) and acks on its exit;
//   amqp-module-reused       a pool with reused module workers (test/fixtures/noop.js),
//                            against a loop that hands each message to reused forked children
//                            over IPC and acks on their answer;
//   enqueue                  `node bin/tidepool enqueue FILE` against a bare publish loop
//                            with confirms (a child process too, the same bound of 1000
//                            unconfirmed publishes).
//
// The consuming scenarios pre-fill a fresh quorum queue with N tasks (not timed), then time
// from the start of consuming until the N-th ack. stdout: one JSON object per scenario;
// stderr: progress. Exit 1 when a run does not complete every task exactly as expected.
//
// Usage: npm run build && node scripts/bench-amqp.js
// Env: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672), BENCH_REPEAT (3),
//      BENCH_CONCURRENCY (2), BENCH_COMMAND_TASKS (2000), BENCH_REUSE_TASKS (10000),
//      BENCH_ENQUEUE_TASKS (20000), BENCH_SCENARIOS (comma list of command,reuse,enqueue).
import { fork, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import amqp from 'amqplib';
import { createPool, AmqpSource, topologyNames } from '../dist/src/index.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'bin/tidepool');
const NOOP = join(ROOT, 'test/fixtures/noop.js');
const IPC_ECHO = join(ROOT, 'scripts/fixtures/ipc-echo.js');
const BARE_PUBLISH = join(ROOT, 'scripts/fixtures/bare-publish.js');
const URL_ = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
/** What the reference children get, as in bench-run.js: PATH only, a session of their own. */
const BARE = { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, detached: true };

function intEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw.trim()) || Number(raw) < 1) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

const repeat = intEnv('BENCH_REPEAT', 3);
const concurrency = intEnv('BENCH_CONCURRENCY', 2);
const scenarios = (process.env.BENCH_SCENARIOS ?? 'command,reuse,enqueue').split(',').map((s) => s.trim());
const log = (text) => process.stderr.write(`${text}\n`);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const model = await amqp.connect(URL_);
model.on('error', () => {});
const admin = await model.createConfirmChannel();
admin.on('error', () => {});
let made = 0;

/** A fresh queue with tidepool's topology (declared by a source that is opened and disposed). */
async function freshQueue() {
  const queue = `tidepool-bench-${process.pid}-${++made}`;
  const probe = new AmqpSource({ url: URL_, queue });
  await probe.open({ deliver() {}, malformed() {}, drained() {}, lost() {}, restored() {} }, 1);
  probe.pause();
  await probe.dispose();
  return queue;
}

/** A fresh queue holding `n` tasks `{"id":"t<i>"}`. */
async function filledQueue(n) {
  const queue = await freshQueue();
  for (let i = 0; i < n; i++) {
    if (!admin.sendToQueue(queue, Buffer.from(`{"id":"t${i}"}`), { persistent: true })) await new Promise((r) => admin.once('drain', r));
    if (i % 1000 === 999) await admin.waitForConfirms();
  }
  await admin.waitForConfirms();
  const { messageCount } = await admin.checkQueue(queue);
  if (messageCount !== n) throw new Error(`queue holds ${messageCount} messages, expected ${n}`);
  return queue;
}

async function dropQueue(queue) {
  const names = topologyNames(queue);
  const left = (await admin.checkQueue(queue)).messageCount;
  await admin.deleteQueue(queue);
  await admin.deleteQueue(names.dead);
  await admin.deleteExchange(names.deadExchange);
  if (left !== 0) throw new Error(`${left} messages left in ${queue}`);
}

/** tidepool: a pool on the queue until `n` outcomes, all resolved; ms. */
async function tidepoolRun(queue, n, worker, extra = {}) {
  const pool = createPool({ worker, concurrency, logLevel: 'warn', ...extra, source: new AmqpSource({ url: URL_, queue }) });
  const ids = new Set();
  let bad = null;
  let resolveDone;
  const done = new Promise((r) => (resolveDone = r));
  pool.on('outcome', (r) => {
    if (r.status !== 'resolved') bad ??= r;
    ids.add(r.id);
    if (ids.size === n) resolveDone();
  });
  const started = performance.now();
  await pool.start();
  await done;
  const ms = performance.now() - started;
  await pool.stop();
  if (bad) throw new Error(`a task did not resolve: ${JSON.stringify(bad)}`);
  return ms;
}

/** A bare consumer at `prefetch` calling `work(msg, ack)` per message until `n` acks; ms. */
async function bareConsume(queue, n, work) {
  const channel = await model.createChannel();
  channel.on('error', () => {});
  let acked = 0;
  let resolveDone;
  let rejectDone;
  const done = new Promise((res, rej) => {
    resolveDone = res;
    rejectDone = rej;
  });
  const started = performance.now();
  await channel.prefetch(concurrency);
  await channel.consume(queue, (msg) => {
    if (msg === null) return rejectDone(new Error('consumer cancelled'));
    work(msg, (err) => {
      if (err) return rejectDone(err);
      channel.ack(msg);
      if (++acked === n) resolveDone();
    });
  });
  await done;
  const ms = performance.now() - started;
  await channel.close();
  return ms;
}

/** Reference of command-single-use: spawn /bin/cat per message, the task on stdin. */
const bareCat = (queue, n) =>
  bareConsume(queue, n, (msg, ack) => {
    const child = spawn('/bin/cat', [], { ...BARE, stdio: ['pipe', 'pipe', 'ignore'] });
    const out = [];
    child.stdout.on('data', (c) => out.push(c));
    child.once('error', ack);
    child.once('close', (code) => (code === 0 && Buffer.concat(out).equals(msg.content) ? ack() : ack(new Error(`cat exited ${code}`))));
    child.stdin.end(msg.content);
  });

/** Reference of module-reused: `concurrency` forked children answering over IPC. */
async function bareIpc(queue, n) {
  const children = Array.from({ length: concurrency }, () => fork(IPC_ECHO, [], { ...BARE, stdio: ['ignore', 'ignore', 'ignore', 'ipc'] }));
  await Promise.all(children.map((c) => new Promise((r) => c.once('spawn', r))));
  const idle = [...children];
  const waiting = [];
  const give = (msg, ack) => {
    const child = idle.pop();
    if (!child) return waiting.push([msg, ack]);
    child.once('message', () => {
      idle.push(child);
      ack();
      const next = waiting.shift();
      if (next) give(...next);
    });
    child.send({ k: 'task', task: JSON.parse(msg.content.toString()) });
  };
  try {
    return await bareConsume(queue, n, give);
  } finally {
    for (const c of children) c.disconnect();
  }
}

/** A child process to its end; ms, after checking exit 0. */
function timedChild(argv, what) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, argv, { env: BARE.env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c) => (stderr += c));
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve(performance.now() - started) : reject(new Error(`${what} exited ${code}: ${stderr.slice(-2000)}`))));
  });
}

async function scenario(name, n, tidepoolSide, referenceSide, fill) {
  const pairs = [];
  for (let i = 0; i < repeat; i++) {
    const run = async (side) => {
      const queue = fill ? await filledQueue(n) : await freshQueue();
      try {
        return await side(queue);
      } finally {
        if (fill) await dropQueue(queue);
        else {
          const names = topologyNames(queue);
          const { messageCount } = await admin.checkQueue(queue);
          if (messageCount !== n) throw new Error(`${name}: ${messageCount} messages published, expected ${n}`);
          await admin.deleteQueue(queue);
          await admin.deleteQueue(names.dead);
          await admin.deleteExchange(names.deadExchange);
        }
      }
    };
    const order = i % 2 === 0 ? ['reference', 'tidepool'] : ['tidepool', 'reference'];
    const ms = {};
    for (const side of order) ms[side] = await run(side === 'tidepool' ? tidepoolSide : referenceSide);
    pairs.push(ms);
    log(`${name} ${i + 1}/${repeat}: tidepool ${(n / (ms.tidepool / 1000)).toFixed(0)}/s, reference ${(n / (ms.reference / 1000)).toFixed(0)}/s`);
  }
  const rate = (ms) => n / (ms / 1000);
  const result = {
    scenario: name,
    tasks: n,
    concurrency,
    repeat,
    tidepoolPerSec: Math.round(median(pairs.map((p) => rate(p.tidepool)))),
    referencePerSec: Math.round(median(pairs.map((p) => rate(p.reference)))),
    ratio: Number(median(pairs.map((p) => p.reference / p.tidepool)).toFixed(3)),
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

const dir = mkdtempSync(join(tmpdir(), 'tidepool-bench-amqp-'));
try {
  if (scenarios.includes('command')) {
    const n = intEnv('BENCH_COMMAND_TASKS', 2000);
    await scenario('amqp-command-single-use', n, (q) => tidepoolRun(q, n, { command: ['/bin/cat'] }), (q) => bareCat(q, n), true);
  }
  if (scenarios.includes('reuse')) {
    const n = intEnv('BENCH_REUSE_TASKS', 10000);
    await scenario('amqp-module-reused', n, (q) => tidepoolRun(q, n, { module: NOOP }, { maxTasksPerWorker: 1000 }), (q) => bareIpc(q, n), true);
  }
  if (scenarios.includes('enqueue')) {
    const n = intEnv('BENCH_ENQUEUE_TASKS', 20000);
    const file = join(dir, 'tasks.jsonl');
    writeFileSync(file, Array.from({ length: n }, (_, i) => `{"id":"t${i}","params":{"n":${i}}}\n`).join(''));
    await scenario(
      'enqueue',
      n,
      (q) => timedChild([CLI, 'enqueue', '--amqp', URL_, '--queue', q, file], 'tidepool enqueue'),
      (q) => timedChild([BARE_PUBLISH, URL_, q, file], 'the bare publish loop'),
      false,
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
  await model.close().catch(() => {});
}
