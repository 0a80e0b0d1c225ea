import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createPool } from '../src/index.js';
import { AmqpSource } from '../src/sources/amqp.js';
import { AMQP_URL, trackQueues } from './helpers/broker.js';
import type { Broker } from './helpers/broker.js';
import { trackPools } from './helpers/pools.js';
import { fixture } from './helpers/procs.js';

/** `tidepool enqueue` against the real broker, with real pools consuming. */

const BIN = fileURLToPath(new URL('../bin/tidepool', import.meta.url));
const queues = trackQueues();
const { track } = trackPools({});
const running = new Set<ChildProcess>();
let broker: Broker;
beforeAll(() => {
  broker = queues.broker();
});
afterEach(async () => {
  const left = [...running];
  for (const child of left) child.kill('SIGKILL');
  expect(left.map((c) => c.pid), 'CLIs still running after the test').toEqual([]);
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  lines: Record<string, unknown>[];
}

function tidepool(args: string[], input: string, env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      running.delete(child);
      resolve({ code, stdout, stderr, lines: stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) });
    });
    child.stdin.end(input);
  });
}

const newQueue = queues.newQueue;

describe('tidepool enqueue', () => {
  it('publishes each task line as it is, persistent, with its id; a line that is not a task is reported, not published', async () => {
    const queue = newQueue('enqueue');
    const input = '{"id":"a","n":1970670598291982290}\nnot json\n\n{"n":2}\n[1]\n';
    const run = await tidepool(['enqueue', '--queue', queue, '-'], input, { AMQP_URL });
    expect(run.code).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr).toMatch(/line 2 not published: not JSON/);
    expect(run.stderr).toMatch(/line 5 not published: a task must be a JSON object, got an array/);
    const messages = await broker.takeAll(queue);
    expect(messages.map((m) => [m.content.toString(), m.properties.messageId, m.properties.deliveryMode])).toEqual([
      ['{"id":"a","n":1970670598291982290}', 'a', 2],
      ['{"n":2}', 'line:4', 2],
    ]);
  });

  it('publishes a large input in full, under flow control and a bound on unconfirmed publishes', async () => {
    const queue = newQueue('enqueue-many');
    const n = 5000;
    const input = Array.from({ length: n }, (_, i) => JSON.stringify({ id: `t${i}`, pad: 'x'.repeat(200) })).join('\n');
    const run = await tidepool(['enqueue', '--amqp', AMQP_URL, '--queue', queue], input);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(await broker.count(queue)).toBe(n);
  });

  it('--wait prints each outcome as run does, from the pools that ran them; exit 1 when some failed', async () => {
    const queue = newQueue('enqueue-wait');
    // Two hosts share the queue.
    for (let i = 0; i < 2; i++) {
      const pool = track(createPool({ worker: { module: fixture('flaky.js') }, concurrency: 2, attempts: 2, retryDelay: 10, logLevel: 'silent', source: new AmqpSource({ url: AMQP_URL, queue }) }));
      await pool.start();
    }
    const input = ['{"id":"ok1"}', '{"id":"ok2"}', '{"id":"bad","params":{"always":true}}', '{broken', '{"params":{}}'].join('\n');
    const run = await tidepool(['enqueue', '--amqp', AMQP_URL, '--queue', queue, '--wait'], input);
    expect(run.code).toBe(1);
    const byId = Object.fromEntries(run.lines.map((l) => [l.id, l]));
    expect(Object.keys(byId).sort()).toEqual(['bad', 'line:4', 'line:5', 'ok1', 'ok2']);
    expect(byId.ok1).toEqual({ id: 'ok1', status: 'resolved', result: { attempt: 2 }, attempts: 2, durationMs: expect.any(Number) });
    expect(byId['line:5']).toMatchObject({ status: 'resolved', attempts: 2 });
    expect(byId.bad).toMatchObject({ status: 'failed', error: { kind: 'error', message: 'failed attempt 2' }, attempts: 2 });
    expect(byId['line:4']).toMatchObject({ status: 'failed', error: { kind: 'malformed' }, attempts: 0 });
    for (const line of run.lines) expect(Object.keys(line)[0]).toBe('id');
  });

  it('--wait exits 0 when every task resolved', async () => {
    const queue = newQueue('enqueue-ok');
    const pool = track(createPool({ worker: { module: fixture('echo.js') }, concurrency: 2, logLevel: 'silent', source: new AmqpSource({ url: AMQP_URL, queue }) }));
    await pool.start();
    const run = await tidepool(['enqueue', '--amqp', AMQP_URL, '--queue', queue, '--wait'], '{"id":"x","params":1}\n{"id":"y","params":2}\n');
    expect(run.code).toBe(0);
    expect(run.lines.map((l) => [l.id, l.status, (l.result as { params: number }).params]).sort()).toEqual([['x', 'resolved', 1], ['y', 'resolved', 2]]);
  });

  it('an unreachable broker exits 2 naming the URL without its password; bad usage exits 2', async () => {
    const down = await tidepool(['enqueue', '--amqp', 'amqp://guest:hunter2@127.0.0.1:1/', '--queue', 'q'], '{"id":"a"}\n');
    expect(down.code).toBe(2);
    expect(down.stderr).toContain('cannot connect to RabbitMQ at amqp://guest@127.0.0.1:1/');
    expect(down.stderr).not.toContain('hunter2');
    const noQueue = await tidepool(['enqueue', '--amqp', AMQP_URL], '', { TIDEPOOL_QUEUE: '' });
    expect(noQueue.code).toBe(2);
    expect(noQueue.stderr).toContain('--queue NAME (or TIDEPOOL_QUEUE) is required');
    const badUrl = await tidepool(['enqueue', '--queue', 'q'], '', { AMQP_URL: 'http://user:pw@x' });
    expect(badUrl.code).toBe(2);
    expect(badUrl.stderr).toContain('AMQP_URL must be an amqp:// or amqps:// URL');
    expect(badUrl.stderr).not.toContain(':pw@');
    // A name serve would refuse is refused here too, before anything is declared or published.
    const long = `enqueue-long-${'y'.repeat(200)}`;
    const tooLong = await tidepool(['enqueue', '--amqp', AMQP_URL, '--queue', long], '{"id":"a"}\n');
    expect(tooLong.code).toBe(2);
    expect(tooLong.stderr).toContain('--queue must be at most 200 bytes');
    expect(spawnSync('rabbitmqctl', ['-q', 'list_queues', 'name'], { encoding: 'utf8' }).stdout).not.toContain(long);
  });

  it('on a terminal: a progress line on its own line, never sharing one with an outcome', async () => {
    const queue = newQueue('enqueue-tty');
    const pool = track(createPool({ worker: { module: fixture('echo.js') }, concurrency: 2, logLevel: 'silent', source: new AmqpSource({ url: AMQP_URL, queue }) }));
    await pool.start();
    const dir = mkdtempSync(join(tmpdir(), 'tidepool-enqueue-'));
    try {
      const file = join(dir, 'tasks.jsonl');
      writeFileSync(file, '{"id":"a"}\n{"id":"b"}\nnot json\n');
      const screenText = await new Promise<string>((resolve, reject) => {
        const c = spawn('script', ['-qc', `node ${BIN} enqueue --amqp ${AMQP_URL} --queue ${queue} --wait ${file}`, '/dev/null'], { stdio: ['ignore', 'pipe', 'inherit'] });
        running.add(c);
        let out = '';
        c.stdout.on('data', (d) => (out += d));
        c.on('error', reject);
        c.on('close', () => {
          running.delete(c);
          resolve(out);
        });
      });
      const screen = screenText.split(/\r?\n/).map((line) => line.split('\r\x1b[K').pop()!);
      const progress = /^tidepool: \d+\/\d+\+? confirmed, \d+ done, \d+ failed, [\d.]+\/s$/;
      for (const line of screen) {
        if (line.startsWith('tidepool:')) expect(line).toMatch(progress);
        else expect(line).not.toMatch(/confirmed, /);
      }
      expect(screen.filter((l) => l.startsWith('{"id":'))).toHaveLength(3);
      expect(screen).toContainEqual(expect.stringMatching(/^tidepool: 2\/2 confirmed, 2 done, 1 failed, [\d.]+\/s$/));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
