#!/usr/bin/env node
// The cost of inspection: reused module workers (no-op handler) through the library with
// inspection off, with the dashboard's live view (what `tidepool serve` always runs), and
// with `--inspect`'s WebSocket stream to a local server that reads and drops every message.
// Each repetition runs the modes back to back in a rotating order; `ratio` is the median of
// the per-repetition ratios mode / off. Target (issue: see the machines) >= 0.8.
//
// stdout: one JSON object per mode. stderr: progress.
// Usage: npm run build && node scripts/bench-inspect.js
// Env: BENCH_TASKS (default 20000), BENCH_CONCURRENCY (default 2), BENCH_REPEAT (default 3),
//      BENCH_MODES (comma list of off,live,ws,both).
import { fileURLToPath } from 'node:url';
import { fork } from 'node:child_process';
import { WebSocketServer } from 'ws';

if (process.argv[2] === '--server') {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => wss.once('listening', resolve));
  let count = 0;
  wss.on('connection', (socket) => socket.on('message', () => count++));
  process.on('message', () => process.send(count));
  process.on('disconnect', () => process.exit(0));
  process.send(wss.address().port);
  await new Promise(() => {});
}
import { createPool } from '../dist/src/index.js';
import { LiveView } from '../dist/src/serve/live.js';
import { connectInspector } from '../dist/src/cli/inspector.js';

const NOOP = fileURLToPath(new URL('../test/fixtures/noop.js', import.meta.url));
const TASKS = Number(process.env.BENCH_TASKS ?? 20_000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 2);
const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
const MODES = (process.env.BENCH_MODES ?? 'off,live,ws,both').split(',');

// The inspector stand-in runs in a process of its own, as an inspector would: reading its
// messages is not the manager's work. It reports how many it has read when asked.
const server = fork(fileURLToPath(import.meta.url), ['--server'], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
const port = await new Promise((resolve) => server.once('message', resolve));
const url = `ws://127.0.0.1:${port}`;
const received = () =>
  new Promise((resolve) => {
    server.once('message', resolve);
    server.send('count');
  });

async function once(mode) {
  const observers = [];
  let inspector = null;
  let live = null;
  if (mode === 'live' || mode === 'both') {
    live = new LiveView();
    observers.push(live.observer);
  }
  if (mode === 'ws' || mode === 'both') {
    inspector = await connectInspector(url, 'bench');
    observers.push(inspector.inspect);
  }
  const inspect = observers.length === 0 ? undefined : observers.length === 1 ? observers[0] : { next: (e) => observers.forEach((o) => o.next(e)) };
  const pool = createPool({
    worker: { module: NOOP },
    concurrency: CONCURRENCY,
    maxTasksPerWorker: 1_000_000,
    logLevel: 'warn',
    ...(inspect ? { inspect } : {}),
  });
  live?.attach(pool);
  let updates = 0;
  live?.subscribe(() => updates++);
  await pool.start();
  const before = inspector ? await received() : 0;
  const started = performance.now();
  const results = await Promise.all(Array.from({ length: TASKS }, (_, i) => pool.run({ id: `t${i}` })));
  const seconds = (performance.now() - started) / 1000;
  await pool.drain();
  await inspector?.stop(10_000);
  live?.close();
  const resolved = results.filter((r) => r.status === 'resolved').length;
  if (resolved !== TASKS) throw new Error(`${mode}: ${resolved}/${TASKS} resolved`);
  return { rate: TASKS / seconds, messages: inspector ? (await received()) - before : 0, updates };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const runs = Object.fromEntries(MODES.map((m) => [m, []]));
for (let r = 0; r < REPEAT; r++) {
  const order = MODES.map((_, i) => MODES[(i + r) % MODES.length]);
  for (const mode of order) {
    const result = await once(mode);
    runs[mode].push(result);
    process.stderr.write(`repeat ${r + 1}/${REPEAT} ${mode}: ${result.rate.toFixed(0)} tasks/s\n`);
  }
}
for (const mode of MODES) {
  const ratios = runs[mode].map((x, i) => x.rate / runs.off[i].rate);
  process.stdout.write(
    `${JSON.stringify({
      scenario: `inspect-${mode}`,
      tasks: TASKS,
      concurrency: CONCURRENCY,
      tasksPerSecond: Math.round(median(runs[mode].map((x) => x.rate))),
      reference: 'inspection off',
      ratio: Number(median(ratios).toFixed(3)),
      wsMessagesPerTask: mode === 'ws' || mode === 'both' ? Number((median(runs[mode].map((x) => x.messages)) / TASKS).toFixed(1)) : null,
    })}\n`,
  );
}
server.disconnect();
