import { afterEach, describe, expect, it } from 'vitest';
import type { Delivery, Source, Task } from '../../src/index.js';
import { until } from './procs.js';

/** A source under test, with a way to put tasks into it. */
export interface SourceHarness {
  source: Source;
  publish(task: Task): Promise<void>;
  cleanup(): Promise<void>;
}

/**
 * The contract every source meets: the memory queue now, RabbitMQ next. Settlement semantics
 * are the same whatever is behind them.
 */
export function describeSourceContract(name: string, make: () => Promise<SourceHarness>): void {
  describe(`source contract: ${name}`, () => {
    let harness: SourceHarness | null = null;
    afterEach(async () => {
      await harness?.cleanup();
      harness = null;
    });

    async function open(prefetch: number) {
      harness = await make();
      const delivered: Delivery[] = [];
      let drained = 0;
      await harness.source.open({ deliver: (d) => delivered.push(d), drained: () => drained++ }, prefetch);
      return { h: harness, delivered, drainedCount: () => drained };
    }

    const task = (id: string): Task => ({ id, type: 'contract' });

    it('delivers in order, never more than prefetch unsettled', async () => {
      const { h, delivered } = await open(2);
      for (const id of ['a', 'b', 'c']) await h.publish(task(id));
      await until(() => delivered.length === 2, 'two deliveries');
      expect(delivered.map((d) => [d.task.id, d.attempt])).toEqual([['a', 1], ['b', 1]]);
      h.source.settle(delivered[0], { action: 'ack' });
      await until(() => delivered.length === 3, 'the third delivery');
      expect(delivered[2].task.id).toBe('c');
      expect(new Set(delivered.map((d) => d.id)).size).toBe(3);
    });

    it('redelivers a retry with the next attempt, not before its delay', async () => {
      const { h, delivered } = await open(1);
      await h.publish(task('r'));
      await until(() => delivered.length === 1, 'the delivery');
      const started = Date.now();
      h.source.settle(delivered[0], { action: 'retry', delay: 100, attempt: 2 });
      await until(() => delivered.length === 2, 'the retry');
      expect(Date.now() - started).toBeGreaterThanOrEqual(90);
      expect(delivered[1]).toMatchObject({ task: { id: 'r' }, attempt: 2 });
    });

    it('does not redeliver a dead-lettered or acked delivery', async () => {
      const { h, delivered } = await open(2);
      await h.publish(task('x'));
      await h.publish(task('y'));
      await until(() => delivered.length === 2, 'both deliveries');
      h.source.settle(delivered[0], { action: 'dead-letter', reason: 'test' });
      h.source.settle(delivered[1], { action: 'ack' });
      await new Promise((r) => setTimeout(r, 50));
      expect(delivered).toHaveLength(2);
    });

    it('redelivers a released delivery with the same attempt', async () => {
      const { h, delivered } = await open(1);
      await h.publish(task('z'));
      await until(() => delivered.length === 1, 'the delivery');
      h.source.release(delivered[0]);
      await until(() => delivered.length === 2, 'the redelivery');
      expect(delivered[1]).toMatchObject({ task: { id: 'z' }, attempt: 1 });
      expect(delivered[1].id).not.toBe(delivered[0].id);
    });

    it('holds deliveries while paused', async () => {
      const { h, delivered } = await open(2);
      h.source.pause();
      await h.publish(task('p'));
      await new Promise((r) => setTimeout(r, 50));
      expect(delivered).toHaveLength(0);
      h.source.resume();
      await until(() => delivered.length === 1, 'the delivery after resume');
    });

    it('drains once everything is settled, retries included', async () => {
      const { h, delivered, drainedCount } = await open(2);
      await h.publish(task('d'));
      await until(() => delivered.length === 1, 'the delivery');
      h.source.close();
      h.source.settle(delivered[0], { action: 'retry', delay: 20, attempt: 2 });
      expect(drainedCount()).toBe(0);
      await until(() => delivered.length === 2, 'the retry');
      expect(drainedCount()).toBe(0);
      h.source.settle(delivered[1], { action: 'ack' });
      await until(() => drainedCount() === 1, 'drained');
    });

    it('settling a delivery twice changes nothing', async () => {
      const { h, delivered } = await open(1);
      await h.publish(task('once'));
      await h.publish(task('twice'));
      await until(() => delivered.length === 1, 'the delivery');
      h.source.settle(delivered[0], { action: 'ack' });
      h.source.settle(delivered[0], { action: 'retry', delay: 0, attempt: 2 });
      await until(() => delivered.length === 2, 'the next task');
      await new Promise((r) => setTimeout(r, 30));
      expect(delivered.map((d) => d.task.id)).toEqual(['once', 'twice']);
    });
  });
}
