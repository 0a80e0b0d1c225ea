// An example module worker: each task sums `params.numbers`, or fails the way it is asked to.
import { NonRetryableError } from 'tidepool-runtime/worker';

export default async function handler(task, ctx) {
  const { numbers = [], fail } = task.params ?? {};
  if (fail === 'bad-input') throw new NonRetryableError('params.fail asked for a non-retryable error');
  if (fail === 'flaky' && ctx.attempt < 2) throw new Error(`flaky on attempt ${ctx.attempt}`);
  ctx.log.info({ count: numbers.length }, 'summing');
  return { sum: numbers.reduce((a, b) => a + b, 0), attempt: ctx.attempt };
}
