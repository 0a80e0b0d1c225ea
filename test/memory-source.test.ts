import { describe, expect, it } from 'vitest';
import { MemorySource } from '../src/index.js';
import { describeSourceContract } from './helpers/source-contract.js';

describeSourceContract('memory', async () => {
  const source = new MemorySource();
  return {
    source,
    publish: async (task) => source.submit(task),
    cleanup: async () => source.dispose(),
  };
});

describe('memory source', () => {
  it('keeps dead letters with their reason and attempts', async () => {
    const source = new MemorySource();
    const delivered: Parameters<MemorySource['settle']>[0][] = [];
    await source.open({ deliver: (d) => delivered.push(d), drained: () => {} }, 1);
    source.submit({ id: 'dl' });
    source.settle(delivered[0], { action: 'dead-letter', reason: 'error (not retryable)' });
    expect(source.deadLetters).toEqual([{ task: { id: 'dl' }, attempts: 1, reason: 'error (not retryable)' }]);
  });

  it('refuses new tasks once closed', async () => {
    const source = new MemorySource();
    source.close();
    expect(() => source.submit({ id: 'late' })).toThrow(expect.objectContaining({ code: 'TIDEPOOL_ERR_POOL_STATE' }));
  });
});
