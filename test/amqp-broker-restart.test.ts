import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { createPool } from '../src/index.js';
import type { TaskResult } from '../src/index.js';
import { AmqpSource } from '../src/sources/amqp.js';
import { AMQP_URL, Broker, uniqueQueue } from './helpers/broker.js';
import { trackPools } from './helpers/pools.js';
import { fixture, until } from './helpers/procs.js';

/**
 * A broker restart mid-run (`rabbitmqctl stop_app` / `start_app`). It stops the broker every
 * test on this machine uses, so it lives alone in this file, keeps the outage short, and waits
 * for the broker to be back before it ends.
 */

const run = promisify(execFile);
const { track } = trackPools({});

/** Wait for the broker to run again (await_startup fails at once right after a start: retry). */
async function brokerBack(): Promise<void> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      await run('rabbitmqctl', ['await_startup', '--timeout', '60']);
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

describe('a broker restart mid-run', () => {
  it('the source reconnects; every task completes (lost = 0), duplicates are reruns of interrupted attempts', async () => {
    const queue = uniqueQueue('restart');
    const dir = mkdtempSync(join(tmpdir(), 'tidepool-restart-'));
    const ledger = join(dir, 'ledger');
    const outcomes: TaskResult[] = [];
    const events: string[] = [];
    const pool = track(
      createPool({
        worker: { module: fixture('ledger.js') },
        concurrency: 2,
        logLevel: 'silent',
        source: new AmqpSource({ url: AMQP_URL, queue, reconnectDelay: 100, reconnectMaxDelay: 1000 }),
      }),
    );
    pool.on('outcome', (r) => outcomes.push(r));
    pool.on('source:lost', () => events.push('lost'));
    pool.on('source:restored', () => events.push('restored'));
    await pool.start();
    const ids = Array.from({ length: 16 }, (_, i) => `t${i}`);
    let broker = await Broker.connect();
    try {
      for (const id of ids) await broker.publish(queue, { id, params: { ledger, ms: 250 } });
      await broker.close();
      await until(() => outcomes.length >= 3, 'the run under way', 30_000);
      try {
        await run('rabbitmqctl', ['stop_app']);
        await until(() => events.includes('lost'), 'the lost connection', 30_000);
      } finally {
        await run('rabbitmqctl', ['start_app']).catch(() => {});
        await brokerBack();
      }
      await until(() => new Set(outcomes.map((o) => o.id)).size === ids.length, 'every task', 120_000);
      expect(events.slice(0, 2)).toEqual(['lost', 'restored']);
      const done = new Set(outcomes.filter((o) => o.status === 'resolved').map((o) => o.id));
      expect([...ids].filter((id) => !done.has(id))).toEqual([]);
      const runs = readFileSync(ledger, 'utf8').split('\n').filter(Boolean).map((line) => line.split(' ')[0]);
      const duplicates = runs.length - new Set(runs).size;
      // At most the attempts running (2) or handed over but unacked (2) when the broker went away run again.
      expect(duplicates).toBeLessThanOrEqual(4);
      console.log(`broker restart: ${ids.length} tasks, ${runs.length} executions, ${duplicates} duplicates, lost 0`);
      broker = await Broker.connect();
      expect(await broker.count(queue)).toBe(0);
    } finally {
      await pool.stop();
      await broker.deleteTopology(queue).catch(() => {});
      await broker.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});
