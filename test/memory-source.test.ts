import { describe, expect, it } from 'vitest';
import { MemorySource } from '../src/index.js';
import type { Delivery } from '../src/index.js';
import { DELIVERY_SLICE } from '../src/sources/memory.js';
import { describeSourceContract } from './helpers/source-contract.js';
import { until } from './helpers/procs.js';
import { perTurn, turnCounter } from './helpers/turns.js';

describeSourceContract('memory', async () => {
  const source = new MemorySource();
  let n = 0;
  return {
    source,
    publish: async (payload) => source.publish(payload, { defaultId: `gen-${++n}` }),
    deadLettered: async () => source.deadLetters.map((l) => ({ id: l.task.id, reason: l.reason })),
    interrupt: async () => source.interrupt(),
    cleanup: async () => source.dispose(),
  };
});

const consumer = (delivered: Delivery[]) => ({
  deliver: (d: Delivery) => delivered.push(d),
  malformed: () => {},
  drained: () => {},
  lost: () => {},
  restored: () => {},
});

describe('memory source', () => {
  it('keeps dead letters with their reason and attempts', async () => {
    const source = new MemorySource();
    const delivered: Delivery[] = [];
    await source.open(consumer(delivered), 1);
    source.submit({ id: 'dl' });
    await source.settle(delivered[0], { action: 'dead-letter', reason: 'error (not retryable)', kind: 'error', message: 'no' });
    expect(source.deadLetters).toEqual([{ task: { id: 'dl' }, attempts: 1, reason: 'error (not retryable)' }]);
  });

  it('keeps at most deadLetterLimit dead letters, the newest, and counts the ones it dropped', async () => {
    const source = new MemorySource({ deadLetterLimit: 3 });
    await source.open(consumer([]), 1);
    for (let i = 0; i < 5; i++) source.publish(`not json ${i}`, { defaultId: `m${i}` });
    expect(source.deadLetters.map((l) => l.task.id)).toEqual(['m2', 'm3', 'm4']);
    expect(source.deadLettersDropped).toBe(2);
  });

  it('refuses new tasks once closed', async () => {
    const source = new MemorySource();
    source.close();
    expect(() => source.submit({ id: 'late' })).toThrow(expect.objectContaining({ code: 'TIDEPOOL_ERR_POOL_STATE' }));
  });

  it('delivers a long queue in order, a released delivery first', async () => {
    const source = new MemorySource();
    const delivered: Delivery[] = [];
    await source.open(consumer(delivered), 1);
    for (let i = 0; i < 5000; i++) source.submit({ id: `t${i}` });
    const order: string[] = [];
    for (let i = 0; i < 3000; i++) {
      const d = delivered[delivered.length - 1];
      order.push(d.task.id);
      source.settle(d, { action: 'ack' });
    }
    // Past the point where the consumed prefix is dropped, a release still goes to the front.
    source.release(delivered[delivered.length - 1]);
    const released = delivered[delivered.length - 1];
    expect(released.task.id).toBe('t3000');
    expect(order).toEqual(Array.from({ length: 3000 }, (_, i) => `t${i}`));
    expect(source.size).toEqual({ ready: 1999, delayed: 0, unsettled: 1 });
  });

  it('cancel drops an undelivered task, ready or in its retry delay, and depth counts what waits', async () => {
    const timers = new Map<number, () => void>();
    let seq = 0;
    const clock = { setTimeout: (fn: () => void) => (timers.set(++seq, fn), seq), clearTimeout: (id: unknown) => void timers.delete(id as number) };
    const source = new MemorySource({ clock });
    const delivered: Delivery[] = [];
    await source.open(consumer(delivered), 1);
    source.submit({ id: 'a' });
    source.submit({ id: 'b' });
    source.submit({ id: 'c' });
    expect(source.depth()).toBe(2);
    // A delivered task is not the source's to cancel.
    expect(source.cancel('a')).toBe(false);
    expect(source.cancel('b')).toBe(true);
    expect(source.cancel('b')).toBe(false);
    expect(source.depth()).toBe(1);
    await source.settle(delivered[0], { action: 'retry', delay: 1_000, attempt: 2 });
    expect(delivered.map((d) => d.task.id)).toEqual(['a', 'c']);
    expect(source.depth()).toBe(1);
    expect(source.cancel('a')).toBe(true);
    expect(timers.size).toBe(0);
    expect(source.depth()).toBe(0);
    expect(source.deadLetters).toEqual([]);
    expect(source.cancel('never-seen')).toBe(false);
  });

  it('a closed queue whose last waiting task is cancelled reports itself drained', async () => {
    const source = new MemorySource();
    let drained = 0;
    const delivered: Delivery[] = [];
    await source.open({ ...consumer(delivered), drained: () => drained++ }, 1);
    source.submit({ id: 'a' });
    source.submit({ id: 'b' });
    source.close();
    await source.settle(delivered[0], { action: 'ack' });
    expect(delivered.map((d) => d.task.id)).toEqual(['a', 'b']);
    expect(drained).toBe(0);
    await source.settle(delivered[1], { action: 'retry', delay: 60_000, attempt: 2 });
    expect(drained).toBe(0);
    expect(source.cancel('b')).toBe(true);
    expect(drained).toBe(1);
    await source.dispose();
  });

  it('delivers a burst of publishes in slices: a bounded number per turn of the event loop, in order', async () => {
    const source = new MemorySource();
    const delivered: Delivery[] = [];
    const turns: number[] = [];
    const turn = turnCounter();
    await source.open({ ...consumer(delivered), deliver: (d) => (delivered.push(d), turns.push(turn.now)) }, 1000);
    const n = 3 * DELIVERY_SLICE + 10;
    for (let i = 0; i < n; i++) source.submit({ id: `t${i}` });
    expect(delivered).toHaveLength(DELIVERY_SLICE);
    await until(() => delivered.length === n, 'every task to be delivered');
    turn.stop();
    expect(delivered.map((d) => d.task.id)).toEqual(Array.from({ length: n }, (_, i) => `t${i}`));
    expect(perTurn(turns)).toEqual([DELIVERY_SLICE, DELIVERY_SLICE, DELIVERY_SLICE, 10]);
    expect(source.size).toEqual({ ready: 0, delayed: 0, unsettled: n });
    await source.dispose();
  });

  it('delivers the place a settlement frees at once, even while a burst waits for its turn', async () => {
    const source = new MemorySource();
    const delivered: Delivery[] = [];
    await source.open(consumer(delivered), DELIVERY_SLICE + 1);
    for (let i = 0; i < 2 * DELIVERY_SLICE; i++) source.submit({ id: `t${i}` });
    // The slice is used up: one more fits the prefetch, and waits for the next turn.
    expect(delivered).toHaveLength(DELIVERY_SLICE);
    await source.settle(delivered[0], { action: 'ack' });
    expect(delivered.map((d) => d.task.id).slice(-1)).toEqual([`t${DELIVERY_SLICE}`]);
    await until(() => delivered.length === DELIVERY_SLICE + 2, 'the waiting delivery');
    expect(delivered.map((d) => d.task.id).slice(-2)).toEqual([`t${DELIVERY_SLICE}`, `t${DELIVERY_SLICE + 1}`]);
    await source.dispose();
  });
});
