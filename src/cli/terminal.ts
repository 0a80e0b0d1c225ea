import { StringDecoder } from 'node:string_decoder';
import type { DestinationStream } from 'pino';

/** Redraws of the progress line per second, at most. */
const PROGRESS_HZ = 10;

/**
 * The progress line on a terminal's stderr, and everything else written around it: a log
 * line or a result line (when stdout is the same terminal) clears the progress line first
 * and redraws it after, so that nothing ever shares a line with it.
 */
export class Terminal {
  #line = '';
  #last = 0;
  #shown = false;
  readonly #stdoutToo: boolean;

  constructor() {
    this.#stdoutToo = process.stdout.isTTY === true;
  }

  /** Write text to stdout (results); above the progress line when both are the terminal. */
  out(text: string): boolean {
    if (!this.#stdoutToo) return process.stdout.write(text);
    this.#clear();
    const ok = process.stdout.write(text);
    this.#redraw();
    return ok;
  }

  /** Write text to stderr (a log line), above the progress line. */
  err(text: string): void {
    this.#clear();
    process.stderr.write(text);
    this.#redraw();
  }

  /** Set the progress line; drawn at most PROGRESS_HZ times a second unless `now`. */
  progress(line: string, now = false): void {
    this.#line = line;
    const t = Date.now();
    if (!now && t - this.#last < 1000 / PROGRESS_HZ) return;
    this.#last = t;
    this.#redraw();
  }

  /** Leave the last progress line on the screen, on its own line. */
  end(): void {
    if (this.#line === '') return;
    this.#redraw();
    process.stderr.write('\n');
    this.#shown = false;
    this.#line = '';
  }

  /**
   * A sink for the workers' stderr: whole lines above the progress line (a line cut across
   * chunks, or a character cut across them, waits for its end). A line that is a JSON log
   * line (a worker's `ctx.log`) is shown as `format` shows the manager's own.
   */
  workerOutput(format: (line: string) => string): { write(chunk: Buffer): void } {
    const decoder = new StringDecoder('utf8');
    let partial = '';
    return {
      write: (chunk: Buffer) => {
        const lines = (partial + decoder.write(chunk)).split('\n');
        partial = lines.pop()!;
        for (const line of lines) this.err(`${isLogLine(line) ? format(line).replace(/\n$/, '') : line}\n`);
      },
    };
  }

  /** A pino destination that writes above the progress line. */
  destination(format: (line: string) => string): DestinationStream {
    return { write: (line: string) => this.err(format(line)) };
  }

  #clear(): void {
    if (this.#shown) process.stderr.write('\r\x1b[K');
    this.#shown = false;
  }

  #redraw(): void {
    if (this.#line === '') return;
    process.stderr.write(`\r\x1b[K${this.#line}`);
    this.#shown = true;
  }
}

/** Whether a line is a pino-style JSON log line (`{"level":30,...}`). */
function isLogLine(line: string): boolean {
  if (!line.startsWith('{"level":')) return false;
  try {
    return typeof (JSON.parse(line) as { level?: unknown }).level === 'number';
  } catch {
    return false;
  }
}
