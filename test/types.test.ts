import { describe, expect, it } from 'vitest';
import type { Handler, HandlerContext } from '../src/child/api.js';
import type { PoolOptions } from '../src/index.js';

/**
 * What the type checker (run by `npm test` before vitest) holds the public types to: each
 * `@ts-expect-error` fails the type check if the line below it is accepted.
 */

// @ts-expect-error a worker is a module or a command, not both
const both: PoolOptions = { worker: { module: './a.js', command: ['cat'] } };

const typed: Handler<{ id: string; n: number }, { twice: number }> = async (task, ctx: HandlerContext) => {
  ctx.log.info({ n: task.n }, 'doubling');
  return { twice: task.n * 2 };
};

// @ts-expect-error a handler's result has the declared type
const wrong: Handler<{ id: string }, number> = async () => 'text';

describe('public types', () => {
  it('a typed handler runs as a plain function', async () => {
    const ctx = {
      attempt: 1,
      workerId: 'w',
      taskId: 't',
      signal: new AbortController().signal,
      log: { debug() {}, info() {}, warn() {}, error() {} },
      progress() {},
    };
    await expect(typed({ id: 't', n: 2 }, ctx)).resolves.toEqual({ twice: 4 });
    expect([both, wrong]).toHaveLength(2);
  });
});
