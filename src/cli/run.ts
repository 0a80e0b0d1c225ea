import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { TidepoolError } from '../errors.js';
import type { PoolOptions } from '../options.js';
import { createPool } from '../pool.js';
import type { TaskResult } from '../pool.js';

/** Exit codes of the CLI. */
export const EXIT_CODES = { OK: 0, FAILED: 1, USAGE: 2 } as const;

/** Redraws of the progress line per second, at most. */
const PROGRESS_HZ = 10;

/**
 * Tasks read ahead of the workers: reading stops while this many wait in the queue, and goes
 * on once half of them have been taken, so a large input is streamed, not held in memory.
 */
export const READ_AHEAD = 1000;

/**
 * `tidepool run`: JSON Lines in, one JSON line per task out (completion order). A line that
 * is not a JSON object fails as `malformed` with id `line:<n>`; a task without an id gets
 * `line:<n>` too, so every output line can be matched to its input line.
 */
export async function runCommand(input: string, options: PoolOptions): Promise<number> {
  const pool = createPool(options);
  const stream = input === '-' ? process.stdin : createReadStream(input);
  const opened = new Promise<void>((resolve, reject) => {
    if (input === '-') return resolve();
    stream.once('open', () => resolve());
    stream.once('error', (err: Error) => reject(new TidepoolError('TIDEPOOL_ERR_INPUT', `cannot read ${input}: ${err.message}`)));
  });
  await opened;

  const progress = process.stderr.isTTY ? new Progress() : null;
  let failed = 0;
  // One write per turn of the event loop, not per line: with reused workers, results come
  // faster than a pipe write each.
  let out: string[] = [];
  const flush = () => {
    if (out.length === 0) return;
    process.stdout.write(out.join(''));
    out = [];
  };
  const write = (result: TaskResult) => {
    if (stopping) return;
    if (result.status === 'failed') failed++;
    if (out.length === 0) setImmediate(flush);
    out.push(`${JSON.stringify(result)}\n`);
    progress?.done(result.status === 'failed');
  };

  await pool.start();
  let stopping: NodeJS.Signals | null = null;
  // Set while the reader waits for room in the queue; called once there is (or the run stops).
  let wakeReader: (() => void) | null = null;
  const checkRoom = () => {
    if (wakeReader && (stopping || pool.source.size.ready <= READ_AHEAD / 2)) {
      wakeReader();
      wakeReader = null;
    }
  };
  pool.on('attempt', checkRoom);
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = signal;
    checkRoom();
    if (signal !== 'SIGPIPE') pool.logger.warn({ signal }, `${signal}: stopping; unfinished tasks are not reported`);
    stream.destroy();
    void pool.stop();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  // The reader went away (`| head`): nobody wants the rest.
  const onStdoutError = (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') stop('SIGPIPE');
    else throw err;
  };
  process.stdout.on('error', onStdoutError);

  const runs: Promise<void>[] = [];
  let lineNo = 0;
  const lines = createInterface({ input: stream, crlfDelay: Infinity });
  try {
    for await (const line of lines) {
      if (pool.source.size.ready >= READ_AHEAD) {
        await new Promise<void>((resolve) => (wakeReader = resolve));
        if (stopping) break;
      }
      lineNo++;
      if (line.trim() === '') continue;
      const id = `line:${lineNo}`;
      progress?.queued();
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch (err) {
        write({
          id,
          status: 'failed',
          error: { kind: 'malformed', message: `line ${lineNo} is not JSON: ${(err as Error).message}` },
          attempts: 0,
          durationMs: 0,
        });
        continue;
      }
      runs.push(
        pool.run(value, { defaultId: id }).then(write, (err: unknown) => {
          if (!stopping) throw err;
        }),
      );
    }
    await Promise.all(runs);
  } finally {
    flush();
    if (!stopping) await pool.drain();
    progress?.end();
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    process.stdout.off('error', onStdoutError);
    pool.off('attempt', checkRoom);
  }
  if (stopping) return 128 + (stopping === 'SIGINT' ? 2 : stopping === 'SIGPIPE' ? 13 : 15);
  return failed > 0 ? EXIT_CODES.FAILED : EXIT_CODES.OK;
}

/** A one-line progress display on a terminal's stderr. */
class Progress {
  #queued = 0;
  #done = 0;
  #failed = 0;
  #last = 0;

  queued(): void {
    this.#queued++;
    this.#draw();
  }

  done(failed: boolean): void {
    this.#done++;
    if (failed) this.#failed++;
    this.#draw();
  }

  end(): void {
    this.#draw(true);
    process.stderr.write('\n');
  }

  #draw(force = false): void {
    const now = Date.now();
    if (!force && now - this.#last < 1000 / PROGRESS_HZ) return;
    this.#last = now;
    process.stderr.write(`\r\x1b[Ktidepool: ${this.#done}/${this.#queued} done, ${this.#failed} failed`);
  }
}
