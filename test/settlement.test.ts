import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { backoff, decideSettlement } from '../src/index.js';
import type { Outcome } from '../src/index.js';

const policy = { attempts: 3, retryDelay: 100, retryMaxDelay: 1_000 };
const fail = (retryable = true): Outcome => ({ status: 'failed', kind: 'crash', message: 'x', retryable });

describe('decideSettlement', () => {
  it('acks a resolved attempt', () => {
    expect(decideSettlement({ status: 'resolved', result: 1 }, 1, policy)).toEqual({ action: 'ack' });
  });

  it('retries while attempts remain, then dead-letters', () => {
    expect(decideSettlement(fail(), 1, policy, () => 0)).toEqual({ action: 'retry', delay: 50, attempt: 2 });
    expect(decideSettlement(fail(), 2, policy, () => 1)).toEqual({ action: 'retry', delay: 200, attempt: 3 });
    expect(decideSettlement(fail(), 3, policy)).toEqual({ action: 'dead-letter', reason: 'crash (attempts exhausted)', kind: 'crash', message: 'x' });
  });

  it('acks a cancelled attempt: a cancel is the user\'s decision, neither retried nor dead-lettered', () => {
    const cancelled: Outcome = { status: 'failed', kind: 'cancelled', message: 'cancelled', retryable: false };
    expect(decideSettlement(cancelled, 1, policy)).toEqual({ action: 'ack' });
    expect(decideSettlement({ ...cancelled, retryable: true }, 3, policy)).toEqual({ action: 'ack' });
  });

  it('dead-letters a failure that is not retryable at once', () => {
    expect(decideSettlement(fail(false), 1, policy)).toEqual({ action: 'dead-letter', reason: 'crash (not retryable)', kind: 'crash', message: 'x' });
  });
});

describe('backoff', () => {
  it('stays between half and all of the capped exponential delay', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 40 }), fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }), (attempt, r) => {
        const ceiling = Math.min(policy.retryMaxDelay, policy.retryDelay * 2 ** (attempt - 1));
        const delay = backoff(policy, attempt, () => r);
        expect(delay).toBeGreaterThanOrEqual(Math.floor(ceiling / 2));
        expect(delay).toBeLessThanOrEqual(ceiling);
      }),
    );
  });
});
