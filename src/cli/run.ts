import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { TidepoolError } from '../errors.js';
import type { PoolOptions } from '../options.js';
import { createPool } from '../create-pool.js';
import type { TaskResult } from '../pool.js';

/** Exit codes of the CLI. */
export const EXIT_CODES = { OK: 0, FAILED: 1, USAGE: 2 } as const;

/** Redraws of the progress line per second, at most. */
const PROGRESS_HZ = 10;

/**
 * Tasks read ahead of the workers: reading stops while this many more than the workers can
 * run are in flight (`pool.inFlight`: queued, running or waiting for a retry), and goes on
 * once half of them are done, so a large input is streamed, in bounded memory.
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
  const { concurrency } = pool.options;
  let stopping: NodeJS.Signals | null = null;
  // Set while the reader waits for room; called once there is (or the run stops).
  let wakeReader: (() => void) | null = null;
  // Set at the end of the input while results are still to come.
  let wakeEnd: (() => void) | null = null;
  const onOutcome = () => {
    if (wakeReader && (stopping || pool.inFlight <= concurrency + READ_AHEAD / 2)) {
      wakeReader();
      wakeReader = null;
    }
    if (wakeEnd && (stopping || pool.inFlight === 0)) {
      wakeEnd();
      wakeEnd = null;
    }
  };
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = signal;
    onOutcome();
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
  // Each task's promise is let go once it has written its line: nothing per line is kept.
  const settle = (result: TaskResult) => {
    write(result);
    onOutcome();
  };
  const lost = (err: unknown) => {
    if (!stopping) throw err;
  };

  let lineNo = 0;
  const lines = createInterface({ input: stream, crlfDelay: Infinity });
  try {
    for await (const line of lines) {
      if (pool.inFlight >= concurrency + READ_AHEAD) {
        await new Promise<void>((resolve) => (wakeReader = resolve));
        if (stopping) break;
      }
      lineNo++;
      if (line.trim() === '') continue;
      progress?.queued();
      // The line as text: the shared parser decides whether it is a task (else `malformed`).
      pool.run(line, { defaultId: `line:${lineNo}` }).then(settle).catch(lost);
    }
    if (!stopping && pool.inFlight > 0) await new Promise<void>((resolve) => (wakeEnd = resolve));
  } finally {
    flush();
    if (!stopping) await pool.drain();
    progress?.end();
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    process.stdout.off('error', onStdoutError);
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
