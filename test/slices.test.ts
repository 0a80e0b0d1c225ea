import { describe, expect, it } from 'vitest';
import { Slice } from '../src/slices.js';
import { perTurn, turnCounter } from './helpers/turns.js';

describe('Slice', () => {
  it('takes up to its limit in one macrotask and the rest on later turns, in order', async () => {
    const queue = Array.from({ length: 100 }, (_, i) => i);
    const handled: number[] = [];
    const turns: number[] = [];
    const turn = turnCounter();
    const slice = new Slice(16, () => pump());
    const pump = () => {
      while (queue.length > 0 && slice.take()) {
        handled.push(queue.shift()!);
        turns.push(turn.now);
      }
    };
    pump();
    expect(handled).toHaveLength(16);
    await new Promise<void>((resolve) => {
      const wait = () => (queue.length === 0 ? resolve() : setImmediate(wait));
      wait();
    });
    turn.stop();
    expect(handled).toEqual(Array.from({ length: 100 }, (_, i) => i));
    // 100 items at 16 a turn: 6 full turns and 4 items on a seventh.
    expect(perTurn(turns)).toEqual([16, 16, 16, 16, 16, 16, 4]);
  });

  it('renews the budget on the next turn even when it was not used up', async () => {
    let resumed = 0;
    const slice = new Slice(3, () => resumed++);
    expect([slice.take(), slice.take()]).toEqual([true, true]);
    await new Promise((r) => setImmediate(r));
    expect([slice.take(), slice.take(), slice.take(), slice.take()]).toEqual([true, true, true, false]);
    // Refused: `resume` runs once on the next turn, whatever the number of refusals.
    expect(slice.take()).toBe(false);
    expect(resumed).toBe(0);
    await new Promise((r) => setImmediate(r));
    expect(resumed).toBe(1);
    expect(slice.take()).toBe(true);
  });

  it('refuses a limit that is not a positive integer', () => {
    expect(() => new Slice(0, () => {})).toThrow(RangeError);
    expect(() => new Slice(1.5, () => {})).toThrow(/positive integer, got 1.5/);
  });
});
