import { createInterface } from 'node:readline';
import type { Interface } from 'node:readline';
import { TidepoolError } from '../errors.js';
import { DEFAULTS } from '../options.js';
import type { PoolOptions } from '../options.js';
import { EXIT_CODES, openInput } from './input.js';
import { Terminal } from './terminal.js';
import { connectInspector, INSPECTOR_BACKLOG, inspectorAddress } from './inspector.js';
import { createPool } from '../create-pool.js';
import { managerLogger } from '../logging.js';
import type { TaskResult } from '../pool.js';

export { EXIT_CODES } from './input.js';

/**
 * Tasks read ahead of the workers: reading stops while this many more than the workers can
 * run are in flight (`pool.inFlight`: queued, running or waiting for a retry), and goes on
 * once half of them are done, so a large input is streamed, in bounded memory.
 */
export const READ_AHEAD = 1000;

/**
 * `tidepool run`: JSON Lines in, one JSON line per task out (completion order). A line that
 * is not a JSON object fails as `malformed` with id `line:<n>`; a task without an id gets
 * `line:<n>` too, so every output line can be matched to its input line. `origins` says where
 * each option came from (logged at debug level).
 */
export async function runCommand(input: string, options: PoolOptions, cli: RunExtras = {}): Promise<number> {
  const inspector = cli.inspect ? await connectInspector(cli.inspect.url, cli.inspect.origin) : null;
  try {
    if (inspector && !inspector.connected) {
      process.stderr.write(
        `tidepool: the inspector at ${inspectorAddress(cli.inspect!.url)} did not answer; the latest ${INSPECTOR_BACKLOG} events are kept for it, and sent if it answers before the run ends\n`,
      );
    }
    return await runTasks(input, inspector ? { ...options, inspect: inspector.inspect } : options, cli.origins ?? {});
  } finally {
    await inspector?.stop();
  }
}

/** What `tidepool run` takes besides pool options. */
export interface RunExtras {
  /** `--inspect`: the inspector's WebSocket URL, and where it was given. */
  inspect?: { url: string; origin: string };
  /** Where each option came from (flag, variable, config file): logged at debug level. */
  origins?: Record<string, string>;
}

async function runTasks(input: string, options: PoolOptions, origins: Record<string, string>): Promise<number> {
  // On a terminal: a progress line, and logs a person can read, never on the same line.
  const terminal = process.stderr.isTTY ? new Terminal() : null;
  const pretty = terminal ? await prettyFormat() : null;
  const pool = createPool(
    terminal && pretty
      ? {
          ...options,
          logger: options.logger ?? managerLogger(options.logLevel ?? DEFAULTS.logLevel, terminal.destination(pretty)),
          stderr: terminal.workerOutput(pretty),
        }
      : options,
  );
  // What the run uses and where each value came from (flag, variable, config file); secrets
  // (`env` values) are redacted by the logger.
  pool.logger.debug({ options, origins }, 'options');
  const stream = await openInput(input);
  if (input === '-' && process.stdin.isTTY) {
    (terminal ?? new Terminal()).err('tidepool: reading tasks from stdin, one JSON object per line; end with Ctrl-D\n');
  }

  let failed = 0;
  let done = 0;
  let read = 0;
  let inputEnded = false;
  const startedAt = Date.now();
  const showProgress = (now = false) => {
    if (!terminal) return;
    const seconds = (Date.now() - startedAt) / 1000;
    const rate = seconds > 0 ? (done / seconds).toFixed(1) : '0.0';
    const total = inputEnded ? `/${read}` : '';
    terminal.progress(`tidepool: ${done}${total} done, ${failed} failed, ${pool.workers.running} running, ${rate}/s`, now);
  };
  // One write per turn of the event loop, not per line: with reused workers, results come
  // faster than a pipe write each.
  let out: string[] = [];
  let stdoutGone = false;
  let writeFailed: Error | null = null;
  const flush = () => {
    if (out.length === 0 || stdoutGone) return;
    const text = out.join('');
    out = [];
    if (terminal) terminal.out(text);
    else process.stdout.write(text);
  };
  const write = (result: TaskResult) => {
    if (stopping) return;
    done++;
    if (result.status === 'failed') failed++;
    if (out.length === 0) setImmediate(flush);
    out.push(`${JSON.stringify(result)}\n`);
    showProgress();
  };

  await pool.start();
  const { concurrency, killGrace } = pool.options;
  let lines: Interface | null = null;
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
    if (signal !== 'SIGPIPE') {
      const running = pool.workers.live;
      pool.logger.warn(
        { signal, workers: running, killGrace },
        `${signal}: stopping; unfinished tasks are not reported. Waiting up to ${killGrace} ms for ${running} worker(s) to exit` +
          (signal === 'SIGINT' ? '; Ctrl-C again to stop at once' : ''),
      );
    }
    // Until runCommand returns it, the exit status is already the signal's: a run stopped
    // while waiting on its input must not end, as its event loop empties, with 0.
    process.exitCode = writeFailed ? EXIT_CODES.FAILED : signalExit(signal);
    lines?.close();
    stream.destroy();
    void pool.stop();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  pool.logger.debug({ input }, 'reading tasks');
  // The reader went away (`| head`): nobody wants the rest. Kept after the run: a write
  // still in flight can fail with EPIPE once the pool has stopped.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    stdoutGone = true;
    out = [];
    if (err.code !== 'EPIPE') {
      // Results cannot be written (a full disk): nothing more is worth running.
      writeFailed = err;
      process.stderr.write(`tidepool: cannot write results to stdout: ${err.message}\n`);
    }
    stop('SIGPIPE');
  });
  // Each task's promise is let go once it has written its line: nothing per line is kept.
  const settle = (result: TaskResult) => {
    write(result);
    onOutcome();
  };
  const lost = (err: unknown) => {
    if (!stopping) throw err;
  };

  let lineNo = 0;
  lines = createInterface({ input: stream, crlfDelay: Infinity });
  try {
    for await (const line of lines) {
      if (pool.inFlight >= concurrency + READ_AHEAD) {
        await new Promise<void>((resolve) => (wakeReader = resolve));
        if (stopping) break;
      }
      lineNo++;
      if (line.trim() === '') continue;
      read++;
      // The line as text: the shared parser decides whether it is a task (else `malformed`).
      pool.run(line, { defaultId: `line:${lineNo}` }).then(settle).catch(lost);
    }
    inputEnded = true;
    showProgress(true);
    if (!stopping && pool.inFlight > 0) await new Promise<void>((resolve) => (wakeEnd = resolve));
  } finally {
    flush();
    if (!stopping) await pool.drain();
    showProgress(true);
    terminal?.end();
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
  if (writeFailed) return EXIT_CODES.FAILED;
  if (stopping) return signalExit(stopping);
  return failed > 0 ? EXIT_CODES.FAILED : EXIT_CODES.OK;
}

/** The exit status of a run stopped by a signal (128 + its number), as a shell reports it. */
const signalExit = (signal: NodeJS.Signals): number => 128 + (signal === 'SIGINT' ? 2 : signal === 'SIGPIPE' ? 13 : 15);

/** Log lines a person can read, one each (pino-pretty, loaded only for a terminal). */
async function prettyFormat(): Promise<(line: string) => string> {
  const { prettyFactory } = await import('pino-pretty');
  return prettyFactory({ colorize: true, singleLine: true, translateTime: 'HH:MM:ss.l', ignore: 'hostname,managerPid' });
}
