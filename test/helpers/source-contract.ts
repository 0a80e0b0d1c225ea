import { afterEach, describe, expect, it } from 'vitest';
import type { Delivery, Malformed, Source, Task } from '../../src/index.js';
import { until } from './procs.js';

/** A source under test, with a way to put payloads into it. */
export interface SourceHarness {
  source: Source;
  /** Put a payload (a task, or text or bytes as a broker message carries them) on the queue. */
  publish(payload: unknown): Promise<void>;
  /** What the source dead-lettered, oldest first. */
  deadLettered(): Promise<{ id: string; reason: string }[]>;
  /** Drop the connection and let it come back (a broker restart, a network fault). */
  interrupt(): Promise<void>;
  cleanup(): Promise<void>;
  /**
   * For a source whose retries wait in a broker rather than in the source (RabbitMQ): the
   * next message on the queue, taken from the broker. Such a source does not wait for its
   * retries when it closes: they are safe in the broker, and whichever host consumes next
   * runs them.
   */
  takeFromBroker?(): Promise<{ id: string; attempt: number } | null>;
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
      const malformed: Malformed[] = [];
      const events: string[] = [];
      let drained = 0;
      await harness.source.open(
        {
          deliver: (d) => delivered.push(d),
          malformed: (m) => malformed.push(m),
          drained: () => drained++,
          lost: () => events.push('lost'),
          restored: () => events.push('restored'),
        },
        prefetch,
      );
      return { h: harness, delivered, malformed, events, drainedCount: () => drained };
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
      h.source.settle(delivered[0], { action: 'dead-letter', reason: 'test', kind: 'error', message: 'test' });
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
      const settled = h.source.settle(delivered[0], { action: 'retry', delay: 20, attempt: 2 });
      expect(drainedCount()).toBe(0);
      if (h.takeFromBroker) {
        // The retry is the broker's to keep: drained once it is safe there, and it is there.
        await settled;
        await until(() => drainedCount() === 1, 'drained');
        let next: { id: string; attempt: number } | null = null;
        for (const deadline = Date.now() + 10_000; next === null && Date.now() < deadline; ) {
          next = await h.takeFromBroker();
          if (next === null) await new Promise((r) => setTimeout(r, 20));
        }
        expect(next).toEqual({ id: 'd', attempt: 2 });
        expect(delivered).toHaveLength(1);
        return;
      }
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

    it('dead-letters a payload that is not a task as malformed; no consumer delivery, the rest go on', async () => {
      const { h, delivered, malformed } = await open(5);
      const bad = ['not json', '[1,2]', '{"id":5}', '42', new Uint8Array([0x7b, 0xff, 0x7d])];
      for (const payload of bad) await h.publish(payload);
      await h.publish('{"id":"good"}');
      await until(() => delivered.length === 1 && malformed.length === bad.length, 'the good task and every malformed report');
      expect(delivered.map((d) => d.task.id)).toEqual(['good']);
      expect(malformed.map((m) => m.message)).toEqual([
        expect.stringMatching(/^not JSON/),
        'a task must be a JSON object, got an array',
        "a task's id must be a non-empty string, got 5",
        'a task must be a JSON object, got number',
        'the payload is not valid UTF-8',
      ]);
      const letters = await h.deadLettered();
      expect(letters).toHaveLength(bad.length);
      for (const letter of letters) expect(letter.reason).toMatch(/^malformed: /);
    });

    it('keeps the bytes of a task as they arrived (numbers past 2^53 intact), and drops a UTF-8 BOM', async () => {
      const { h, delivered } = await open(2);
      const line = '{"id":"big","row":1970670598291982290}';
      await h.publish(Buffer.from(line));
      await h.publish('\uFEFF{"id":"bom"}');
      await until(() => delivered.length === 2, 'both deliveries');
      expect(delivered[0].text).toBe(line);
      expect(delivered[1].task.id).toBe('bom');
    });

    it('settlement can be awaited', async () => {
      const { h, delivered } = await open(1);
      await h.publish(task('a'));
      await until(() => delivered.length === 1, 'the delivery');
      await expect(h.source.settle(delivered[0], { action: 'ack' })).resolves.toBeUndefined();
    });

    it('a lost connection voids what was delivered: it comes again as new deliveries, and old settlements change nothing', async () => {
      const { h, delivered, events } = await open(2);
      await h.publish(task('a'));
      await h.publish(task('b'));
      await until(() => delivered.length === 2, 'both deliveries');
      const before = delivered.slice();
      await h.interrupt();
      await until(() => delivered.length === 4, 'both redelivered');
      expect(events).toEqual(['lost', 'restored']);
      expect(delivered.slice(2).map((d) => [d.task.id, d.attempt])).toEqual([['a', 1], ['b', 1]]);
      // Settling a void delivery does nothing: the new ones stay unsettled, and hold the prefetch.
      await h.source.settle(before[0], { action: 'ack' });
      await h.source.settle(before[1], { action: 'retry', delay: 0, attempt: 2 });
      await h.publish(task('c'));
      await new Promise((r) => setTimeout(r, 50));
      expect(delivered.map((d) => d.task.id)).toEqual(['a', 'b', 'a', 'b']);
      await h.source.settle(delivered[2], { action: 'ack' });
      await until(() => delivered.length === 5, 'c, once a slot is free');
      expect(delivered[4].task.id).toBe('c');
    });

    it('prefetch follows the capacity the pool gives it', async () => {
      const { h, delivered } = await open(2);
      for (const id of ['a', 'b', 'c']) await h.publish(task(id));
      await until(() => delivered.length === 2, 'two deliveries');
      h.source.prefetch(1);
      await h.source.settle(delivered[0], { action: 'ack' });
      await new Promise((r) => setTimeout(r, 50));
      expect(delivered).toHaveLength(2);
      h.source.prefetch(2);
      await until(() => delivered.length === 3, 'the third, once capacity is back');
    });
  });
}
