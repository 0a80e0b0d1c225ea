import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createPool } from '../src/index.js';
import type { Pool, PoolOptions, TaskResult } from '../src/index.js';
import { AmqpSource, HEADERS } from '../src/sources/amqp.js';
import type { AmqpSourceOptions } from '../src/sources/amqp.js';
import { topologyNames } from '../src/sources/amqp/topology.js';
import { AMQP_URL, trackQueues } from './helpers/broker.js';
import type { Broker } from './helpers/broker.js';
import { trackPools } from './helpers/pools.js';
import { alive, descendantsOf, fixture, until } from './helpers/procs.js';

/** A real pool on a real broker: worker crashes, poison messages, a breaker on one of two hosts. */

const run = promisify(execFile);
const queues = trackQueues();
const { track } = trackPools({});
let dir = '';
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});
let broker: Broker;
beforeAll(() => {
  broker = queues.broker();
});

function newQueue(what: string): string {
  dir = mkdtempSync(join(tmpdir(), 'tidepool-amqp-'));
  return queues.newQueue(what);
}

/** A started pool on `queue`, collecting its outcomes. */
async function host(queue: string, options: Partial<PoolOptions> = {}, source: Partial<AmqpSourceOptions> = {}) {
  const outcomes: TaskResult[] = [];
  const pool = track(createPool({ worker: { module: fixture('ledger.js') }, logLevel: 'silent', retryDelay: 10, retryMaxDelay: 50, ...options, source: new AmqpSource({ url: AMQP_URL, queue, reconnectDelay: 50, ...source }) }));
  pool.on('outcome', (r) => outcomes.push(r));
  await pool.start();
  return { pool: pool as Pool<AmqpSource>, outcomes };
}

/** A file's lines, split on spaces (none when it does not exist). */
const readLines = (file: string): string[][] => {
  try {
    return readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => l.split(' '));
  } catch {
    return [];
  }
};

/** Executions noted by the ledger fixture, as [task id, attempt] pairs. */
const executions = (ledger: string): [string, number][] => readLines(ledger).map(([id, attempt]) => [id, Number(attempt)]);

/** The consumers the broker has on `queue` and their prefetch. */
async function consumers(queue: string): Promise<number[]> {
  const { stdout } = await run('rabbitmqctl', ['list_consumers', 'queue_name', 'prefetch_count', '--no-table-headers', '-q']);
  return stdout
    .split('\n')
    .map((line) => line.split('\t'))
    .filter(([name]) => name === queue)
    .map(([, prefetch]) => Number(prefetch));
}

describe('amqp source in a real pool', () => {
  it('the broker prefetch is the concurrency, exactly; a paused pool has no consumer', async () => {
    const queue = newQueue('prefetch');
    const { pool } = await host(queue, { concurrency: 3 });
    expect(await consumers(queue)).toEqual([3]);
    pool.pause();
    await until(() => pool.actor.getSnapshot().matches('paused'), 'paused');
    // The cancel is sent at once; the broker's table follows.
    let left = await consumers(queue);
    for (const deadline = Date.now() + 10_000; left.length > 0 && Date.now() < deadline; left = await consumers(queue));
    expect(left).toEqual([]);
    pool.resume();
    let back = await consumers(queue);
    for (const deadline = Date.now() + 10_000; back.length === 0 && Date.now() < deadline; back = await consumers(queue));
    expect(back).toEqual([3]);
  });

  it('kill -9 of a worker mid-task: the task is retried and resolves', async () => {
    const queue = newQueue('kill9');
    const ledger = join(dir, 'ledger');
    const pidFile = join(dir, 'pid');
    const { outcomes } = await host(queue, { concurrency: 2 });
    await broker.publish(queue, { id: 'k', params: { ledger, pidFile, hangFirst: true } });
    await until(() => executions(ledger).length === 1, 'the first attempt', 15_000);
    let pid = 0;
    await until(() => (pid = Number(readFileSync(pidFile, 'utf8').trim() || 0)) > 0, 'the worker pid', 15_000).catch(() => {});
    await until(() => {
      try {
        pid = Number(readFileSync(pidFile, 'utf8').trim());
      } catch {
        return false;
      }
      return pid > 0;
    }, 'the worker pid', 15_000);
    process.kill(pid, 'SIGKILL');
    await until(() => outcomes.length === 1, 'the outcome', 30_000);
    expect(outcomes[0]).toMatchObject({ id: 'k', status: 'resolved', result: { id: 'k', attempt: 2 }, attempts: 2 });
    expect(executions(ledger)).toEqual([['k', 1], ['k', 2]]);
    // Acked: nothing left on the broker, nothing dead-lettered.
    expect(await broker.count(queue)).toBe(0);
    expect(await broker.count(topologyNames(queue).dead)).toBe(0);
  });

  it('poison messages (not JSON, JSON but not an object, a handler that always crashes) end in <queue>.dead with their reason; the others resolve', async () => {
    const queue = newQueue('poison');
    const ledger = join(dir, 'ledger');
    const { outcomes } = await host(queue, { concurrency: 2, attempts: 2 });
    await broker.publish(queue, 'this is not JSON', { messageId: 'not-json' });
    await broker.publish(queue, '[1,2,3]', { messageId: 'array' });
    await broker.publish(queue, { id: 'crasher', params: { ledger, crash: true } });
    for (const id of ['g1', 'g2', 'g3']) await broker.publish(queue, { id, params: { ledger } });
    await until(() => outcomes.length === 6, 'six outcomes', 60_000);
    const byId = Object.fromEntries(outcomes.map((o) => [o.id, o]));
    for (const id of ['g1', 'g2', 'g3']) expect(byId[id]).toMatchObject({ status: 'resolved', attempts: 1 });
    expect(byId['not-json']).toMatchObject({ status: 'failed', error: { kind: 'malformed' }, attempts: 0 });
    expect(byId.array).toMatchObject({ status: 'failed', error: { kind: 'malformed', message: 'a task must be a JSON object, got an array' }, attempts: 0 });
    expect(byId.crasher).toMatchObject({ status: 'failed', error: { kind: 'crash' }, attempts: 2 });
    // Malformed payloads never reached a worker; the crasher ran twice.
    expect(executions(ledger).filter(([id]) => id === 'crasher')).toEqual([['crasher', 1], ['crasher', 2]]);
    const dead = await broker.takeAll(topologyNames(queue).dead);
    const letters = Object.fromEntries(dead.map((m) => [m.properties.messageId, { body: m.content.toString(), headers: m.properties.headers }]));
    expect(Object.keys(letters).sort()).toEqual(['array', 'crasher', 'not-json']);
    expect(letters['not-json'].body).toBe('this is not JSON');
    expect(letters['not-json'].headers).toMatchObject({ [HEADERS.kind]: 'malformed', [HEADERS.attempts]: 0, [HEADERS.reason]: expect.stringMatching(/^malformed: not JSON/) });
    expect(letters.array.headers).toMatchObject({ [HEADERS.kind]: 'malformed', [HEADERS.reason]: 'malformed: a task must be a JSON object, got an array' });
    expect(letters.crasher.headers).toMatchObject({ [HEADERS.kind]: 'crash', [HEADERS.attempts]: 2, [HEADERS.reason]: 'crash (attempts exhausted)', [HEADERS.message]: expect.any(String) });
    expect(JSON.parse(letters.crasher.body)).toMatchObject({ id: 'crasher' });
    expect(await broker.count(queue)).toBe(0);
  });

  it('a breaker trip on one host moves its deliveries to another host; the tripped host holds nothing', async () => {
    const queue = newQueue('breaker');
    const ledger = join(dir, 'ledger');
    // Host A's workers all crash; its breaker trips at the first crash and stays tripped.
    const a = await host(queue, { concurrency: 2, attempts: 10, maxCrashes: 0, breakerCooldown: 600_000, env: ['TIDEPOOL_TEST_CRASH=1'] });
    const tripped: number[] = [];
    a.pool.on('breaker:tripped', ({ crashes }) => tripped.push(crashes));
    const ids = Array.from({ length: 12 }, (_, i) => `t${i}`);
    for (const id of ids) await broker.publish(queue, { id, params: { ledger, ms: 20 } });
    await until(() => tripped.length > 0, 'the breaker on host A', 30_000);
    const b = await host(queue, { concurrency: 2, attempts: 10 });
    // Everything completes on B while A stays paused: A gave back what it held unstarted.
    await until(() => b.outcomes.length === ids.length, 'every task on host B', 60_000);
    expect(b.outcomes.map((o) => o.id).sort()).toEqual([...ids].sort());
    for (const o of b.outcomes) expect(o.status).toBe('resolved');
    expect(a.pool.actor.getSnapshot().matches('paused')).toBe(true);
    expect(a.outcomes).toEqual([]);
    expect(await consumers(queue)).toEqual([2]);
    expect(await broker.count(queue)).toBe(0);
  });

  it('kill -9 of a whole host (manager and spawn host) mid-batch, another host on the queue: every task completes, duplicates counted', async () => {
    const queue = newQueue('host-kill');
    const ledger = join(dir, 'ledger');
    const done = join(dir, 'done');
    const b = await host(queue, { concurrency: 2, env: ['TIDEPOOL_TEST_HOST=B'] });
    const a = spawn(process.execPath, [fixture('amqp-host.js'), AMQP_URL, queue, '2', 'A'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let aPids: number[] = [];
    try {
      await new Promise<void>((resolve, reject) => {
        a.stdout.on('data', (d) => String(d).includes('started') && resolve());
        a.once('exit', (code) => reject(new Error(`host A exited ${code}`)));
      });
      const ids = Array.from({ length: 30 }, (_, i) => `t${i}`);
      for (const id of ids) await broker.publish(queue, { id, params: { ledger, done, ms: 150 } });
      const onA = () => readLines(ledger).filter((l) => l[3] === 'A');
      await until(() => onA().length >= 3, 'host A running tasks', 30_000);
      aPids = [a.pid!, ...descendantsOf(a.pid!)];
      const exited = new Promise((r) => a.once('exit', r));
      a.kill('SIGKILL');
      await exited;
      const completed = () => new Set(readLines(done).map((l) => l[0]));
      await until(() => completed().size === ids.length, 'every task completed', 60_000);
      const runs = readLines(done).length;
      console.log(`host kill -9: ${ids.length} tasks, ${runs} completed executions, ${runs - ids.length} duplicates, lost ${ids.filter((id) => !completed().has(id)).length}`);
      expect([...completed()].sort()).toEqual([...ids].sort());
      // What B settled is everything A did not: nothing is left on the broker.
      await until(() => b.outcomes.length + readLines(done).filter((l) => l[3] === 'A').length >= ids.length, 'B to settle the rest', 30_000);
      let left = await broker.count(queue);
      for (const deadline = Date.now() + 10_000; left > 0 && Date.now() < deadline; left = await broker.count(queue)) await new Promise((r) => setTimeout(r, 100));
      expect(left).toBe(0);
      // The killed host's spawn host took its workers with it.
      await until(() => alive(aPids).length === 0, "host A's processes gone", 10_000);
    } finally {
      a.kill('SIGKILL');
    }
  });
});
