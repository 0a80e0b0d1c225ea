import { createReadStream, statSync } from 'node:fs';
import { TidepoolError } from '../errors.js';

/**
 * What every command shares, kept apart from the pool so that a command that runs none
 * (`enqueue`) does not load it.
 */

/** Exit codes of the CLI. */
export const EXIT_CODES = { OK: 0, FAILED: 1, USAGE: 2 } as const;

/** The input as a stream; a path that cannot be read as a file is TIDEPOOL_ERR_INPUT. */
export async function openInput(input: string): Promise<NodeJS.ReadableStream & { destroy(): void }> {
  if (input === '-') return process.stdin;
  const fail = (why: string) => new TidepoolError('TIDEPOOL_ERR_INPUT', `cannot read ${input}: ${why}`);
  let stats;
  try {
    stats = statSync(input);
  } catch (err) {
    throw fail((err as Error).message);
  }
  if (stats.isDirectory()) throw fail('it is a directory');
  const stream = createReadStream(input);
  await new Promise<void>((resolve, reject) => {
    stream.once('open', () => resolve());
    stream.once('error', (err: Error) => reject(fail(err.message)));
  });
  return stream;
}
