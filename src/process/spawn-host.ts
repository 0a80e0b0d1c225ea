import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { FrameReader, HOST, configurePayload, frame } from '../child/host-protocol.js';
import type { Frame, SpawnSpec } from '../child/host-protocol.js';
import { FLUSH_LIMIT_MS, MAX_OUTPUT, MAX_PROGRESS, PROGRESS_PREFIX, STDERR_TAIL } from '../child/protocol.js';
import type { ErrorInfo } from '../child/protocol.js';
import { Fifo } from '../slices.js';
import { LineReader } from '../child/lines.js';
import type { Ledger } from './ledger.js';

const PERL_HOST = fileURLToPath(new URL('../child/spawn-host.pl', import.meta.url));
const NODE_HOST = fileURLToPath(new URL('../child/spawn-host.js', import.meta.url));

/**
 * The host's frames handled in one callback, at most. A worker that starts or exits costs
 * the manager ~0.2-0.4 ms (its machine, the pool's, the next worker started); when hundreds
 * exit together, one pipe read holds hundreds of frames, and they are handled a slice a turn
 * of the event loop, ~3 ms each here, rather than in one long tick. Small, because on a
 * shared machine a tick's CPU time stretches by the number of processes waiting for a core
 * (docs/benchmark-notes.md, "Event-loop delay under bursts").
 */
export const FRAME_SLICE = 8;

/** A write to a worker's channel failed because the worker's end was closed first. */
const CLOSED_PEER = new Set(['EPIPE', 'ECONNRESET', 'ERR_STREAM_WRITE_AFTER_END', 'ERR_STREAM_DESTROYED']);

/** Which spawn host starts workers: `auto` is Perl when a `perl` is on PATH, else Node. */
export type HostEdition = 'auto' | 'perl' | 'node';

/**
 * How a spawn host holds a worker's tree (docs/containment.md), strongest first:
 * - `subreaper` (Perl edition): every descendant, whether it stayed in the worker's group,
 *   called setsid or double-forked, is killed when the worker ends; no zombie is left.
 * - `proc` (Node edition): descendants seen by polling /proc, and the worker's group; one that
 *   leaves the tree and whose parent exits between two polls escapes.
 * - `group`: the worker's process group only.
 */
export type Containment = 'subreaper' | 'proc' | 'group';

/**
 * What the spawn host starts: a {@link SpawnSpec}, where `channel: true` asks for a reused
 * worker's IPC channel (a socket this side listens on; see `SpawnHandlers.message`).
 */
export type HostSpec = Omit<SpawnSpec, 'channel'> & { channel?: boolean };

export interface HostExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  /** The last STDERR_TAIL bytes of stderr, trimmed. */
  stderr: string;
  /** stdout passed MAX_OUTPUT: the group was killed and the output dropped. */
  overflow: boolean;
  /** The worker's tree passed the memory cap: the host killed it for that. */
  memory?: boolean;
}

export interface SpawnHandlers {
  spawned(pid: number): void;
  /** The process never started; no exit follows. */
  spawnError(error: ErrorInfo): void;
  /** The process exited, everything it started is gone, and its pipes (and channel) drained. */
  exit(exit: HostExit): void;
  /** A message from the worker on its channel (only with `channel: true`). */
  message?(message: unknown): void;
  /** A progress line the worker wrote on stderr: its JSON, not yet parsed. */
  progress?(json: string): void;
}

/** A worker's channel: its socket once it connected, and what it sent so far. */
interface Channel {
  socket: Socket | null;
  closed: boolean;
  /** The exit, held until the channel has closed (every message read) or FLUSH_LIMIT_MS. */
  exit: (() => void) | null;
}

/**
 * The manager's side of the spawn host, which starts workers (commands, and module workers
 * that serve one task) so that the manager never forks its own large heap per task (frames:
 * src/child/host-protocol.js). The host is started on first use; a host that dies fails
 * every process it held (the registry still kills their groups), and the next spawn starts a
 * new one. A Perl host that dies before it is up is not tried again: the Node edition takes
 * over. The edition is `auto` unless given; `auto` follows the `TIDEPOOL_SPAWN_HOST`
 * environment variable (`node`, `perl` or `auto`: Perl when a `perl` is on PATH, else Node).
 */
export class SpawnHost {
  readonly #spec: SpawnSpec;
  readonly #logger: Logger;
  #edition: 'perl' | 'node';
  #containment: Containment | null = null;
  #child: ChildProcess | null = null;
  #seq = 0;
  readonly #pending = new Map<string, SpawnHandlers & { pid: number | null; channel?: Channel }>();
  /** Where reused workers' channels connect (a socket in a directory only this user can enter). */
  readonly #listen: { server: Server; dir: string } | null = null;

  /** Where the workers' stderr goes, when not to the manager's own stderr. */
  readonly #stderr: ((chunk: Buffer) => void) | null;
  /** Where each worker is noted while it lives (pid and start time), if anywhere. */
  readonly #ledger: Ledger | null;
  readonly #frameSlice: number;

  /**
   * `stderr`: where the workers' stderr (which reaches the host's) goes; by default the host
   * shares the manager's stderr. `ledger`: notes every worker from its start until it is
   * reaped; the workers of a host that dies are killed through it (start times checked).
   * `frameSlice`: the host's frames handled per callback (default FRAME_SLICE; tests make
   * bursts with fewer processes by lowering it). Throws a RangeError when it is not a positive
   * integer.
   */
  constructor(
    spec: HostSpec,
    logger: Logger,
    edition: HostEdition = 'auto',
    stderr: ((chunk: Buffer) => void) | null = null,
    ledger: Ledger | null = null,
    frameSlice = FRAME_SLICE,
  ) {
    if (!Number.isInteger(frameSlice) || frameSlice < 1) throw new RangeError(`frameSlice must be a positive integer, got ${frameSlice}`);
    this.#frameSlice = frameSlice;
    this.#stderr = stderr;
    this.#ledger = ledger;
    const { channel, ...rest } = spec;
    this.#spec = rest;
    this.#logger = logger;
    // `auto` defers to TIDEPOOL_SPAWN_HOST (node, perl or auto), as CI forces the Node edition.
    const wanted = edition === 'auto' ? process.env.TIDEPOOL_SPAWN_HOST : edition;
    this.#edition = wanted === 'perl' || wanted === 'node' ? wanted : findPerl() ? 'perl' : 'node';
    if (channel) {
      const dir = mkdtempSync(join(tmpdir(), 'tidepool-'));
      const path = join(dir, 'channel');
      const server = createServer((socket) => this.#accept(socket));
      server.listen(path);
      server.unref();
      this.#listen = { server, dir };
      this.#spec = { ...rest, channel: path };
    }
  }

  /** The edition the next host will be. */
  get edition(): 'perl' | 'node' {
    return this.#edition;
  }

  /** How the running host holds each worker's tree; null until a host has come up. */
  get containment(): Containment | null {
    return this.#containment;
  }

  /** Start a process; `stdin`, when given, is written to it and closed at once. */
  spawn(handlers: SpawnHandlers, stdin?: string): string {
    const id = String(++this.#seq);
    const channel = this.#listen ? { socket: null, closed: false, exit: null } : undefined;
    this.#pending.set(id, { ...handlers, pid: null, channel });
    try {
      this.#send(stdin === undefined ? frame(`${HOST.SPAWN} ${id} -`) : frame(`${HOST.SPAWN} ${id}`, stdin));
    } catch (err) {
      // The host itself could not be started: nothing holds this process, so nothing is pending.
      this.#pending.delete(id);
      throw err;
    }
    return id;
  }

  stdin(id: string, data: string): void {
    if (this.#pending.has(id)) this.#send(frame(`${HOST.INPUT} ${id}`, data));
  }

  /**
   * Signal a worker's process group (`leader`: the worker's own process alone). The host
   * signals it, and only while the worker is not reaped: the manager never signals a pid
   * itself, as it cannot know whether it was reused.
   */
  signal(id: string, signal: NodeJS.Signals, leader = false): void {
    if (this.#pending.has(id)) this.#send(frame(`${HOST.SIGNAL} ${id} ${signal}${leader ? ' leader' : ''}`));
  }

  /**
   * Send a message to a worker over its channel; false when it has none (yet, or any more).
   * `refused` is called if the worker's end was already closed when the message was written
   * (EPIPE, ECONNRESET): the worker is gone and never read it.
   */
  post(id: string, message: unknown, refused?: () => void): boolean {
    const socket = this.#pending.get(id)?.channel?.socket;
    // Ended: the worker closed its end (it is gone), and what is written now is never read.
    if (!socket || socket.destroyed || !socket.writable) return false;
    socket.write(`${JSON.stringify(message)}\n`, (err) => {
      if (err && CLOSED_PEER.has((err as NodeJS.ErrnoException).code ?? '')) refused?.();
    });
    return true;
  }

  /** Let the host go; it kills every worker's tree it still holds, then exits. */
  close(): void {
    const child = this.#child;
    this.#child = null;
    child?.stdin?.end();
    if (this.#listen) {
      this.#listen.server.close();
      rmSync(this.#listen.dir, { recursive: true, force: true });
    }
  }

  /** A worker's channel connected: its first line is its id (written by the host). */
  #accept(socket: Socket): void {
    socket.unref();
    const decoder = new StringDecoder('utf8');
    let channel: (Channel & { to: SpawnHandlers }) | null = null;
    const lines = new LineReader();
    socket.on('data', (chunk: Buffer) => {
      for (const line of lines.read(decoder.write(chunk))) {
        if (channel === null) {
          const handlers = this.#pending.get(line);
          if (!handlers?.channel || handlers.channel.socket) return void socket.destroy();
          handlers.channel.socket = socket;
          channel = Object.assign(handlers.channel, { to: handlers });
          continue;
        }
        let message: unknown;
        try {
          message = JSON.parse(line);
        } catch {
          continue;
        }
        channel.to.message?.(message);
      }
    });
    socket.on('error', () => {});
    socket.once('close', () => {
      if (!channel) return;
      channel.closed = true;
      channel.exit?.();
    });
  }

  #send(bytes: Buffer): void {
    const child = this.#child ?? this.#start();
    // While it holds processes the host keeps the manager alive; idle, it must not.
    hold(child, true);
    child.stdin!.write(bytes);
  }

  #start(): ChildProcess {
    const edition = this.#edition;
    const limits = [String(MAX_OUTPUT), String(STDERR_TAIL), String(FLUSH_LIMIT_MS), String(MAX_PROGRESS), PROGRESS_PREFIX];
    const child = spawn(edition === 'perl' ? 'perl' : process.execPath, [edition === 'perl' ? PERL_HOST : NODE_HOST, ...limits], {
      // The host only forks; the workers get their own environment, from the configure frame.
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
      stdio: ['pipe', 'pipe', this.#stderr ? 'pipe' : 'inherit'],
    });
    this.#child = child;
    if (this.#stderr) child.stderr!.on('data', this.#stderr);
    let up = false;
    const reader = new FrameReader();
    // Frames read and not yet handled, in order: a read's frames are handled `frameSlice` at
    // a time, one slice a turn (frames read meanwhile queue behind them); all at once when the
    // host is gone.
    const frames = new Fifo<Frame>();
    let later = false;
    const handle = (limit: number): void => {
      for (let i = 0; i < limit && frames.length > 0; i++) {
        const f = frames.shift();
        if (f.kind === HOST.UP) {
          up = true;
          this.#containment = (f.fields[1] as Containment | undefined) ?? 'group';
          this.#logger.info(
            { edition, containment: this.#containment, hostPid: Number(f.fields[0]) },
            `spawn host up (${edition}); containment: ${this.#containment}`,
          );
        } else this.#onFrame(f);
      }
    };
    const slice = (): void => {
      later = false;
      handle(this.#frameSlice);
      if (frames.length === 0) return;
      later = true;
      setImmediate(slice);
    };
    child.stdout!.on('data', (chunk: Buffer) => {
      for (const f of reader.push(chunk)) frames.push(f);
      if (!later) slice();
    });
    // A write to a host that died fails with EPIPE; its 'close' fails what it held.
    child.stdin!.on('error', (err) => this.#logger.debug({ err }, 'spawn host did not take a frame'));
    child.on('error', (err) => this.#logger.error({ err }, `spawn host (${edition}) error`));
    child.once('close', (code, signal) => {
      // What it said before it went comes first: a worker whose exit was read has exited.
      handle(Infinity);
      if (this.#child === child) this.#child = null;
      if (!up && edition === 'perl') {
        this.#logger.warn({ code, signal }, 'the Perl spawn host did not start; using the Node one');
        this.#edition = 'node';
      }
      if (this.#pending.size > 0) this.#logger.error({ code, signal }, 'spawn host died; failing the processes it held');
      // Taken whole before any is failed: failing one re-enters the pool at once, which may
      // start a new worker on a new host, and that one is not this host's to fail.
      const held = [...this.#pending];
      this.#pending.clear();
      // No one holds their trees any more (the Node edition's workers outlive their host).
      const orphans = held.flatMap(([, handlers]) => (handlers.pid === null ? [] : [handlers.pid]));
      if (this.#ledger && orphans.length > 0) {
        const killed = this.#ledger.release(orphans);
        if (killed > 0) this.#logger.warn({ killed, workers: orphans.length }, `killed ${killed} process(es) left running by the dead spawn host`);
      }
      for (const [, handlers] of held) {
        const message = `the spawn host died (${signal ? `signal ${signal}` : `exit code ${code}`})`;
        handlers.channel?.socket?.destroy();
        if (handlers.pid === null) handlers.spawnError({ message });
        else handlers.exit({ code: null, signal: null, stdout: '', stderr: message, overflow: false });
      }
    });
    child.stdin!.write(frame(HOST.CONFIGURE, configurePayload(this.#spec)));
    return child;
  }

  #onFrame({ kind, fields, payload }: Frame): void {
    const handlers = this.#pending.get(fields[0]);
    if (!handlers) return;
    if (kind === HOST.SPAWNED) {
      const pid = Number(fields[1]);
      handlers.pid = pid;
      // Fields 2-5: its start time, its keeper's pid and start time (`-`: none, or unread).
      const [, , start, keeper, keeperStart] = fields;
      if (this.#ledger && start !== undefined && start !== '-') {
        this.#ledger.add({ pid, start, pgid: pid, keeper: keeper && keeper !== '-' && keeperStart ? { pid: Number(keeper), start: keeperStart } : null });
      }
      return handlers.spawned(pid);
    }
    if (kind === HOST.PROGRESS) return handlers.progress?.(payload.toString('utf8'));
    this.#pending.delete(fields[0]);
    if (handlers.pid !== null) this.#ledger?.remove(handlers.pid);
    if (this.#pending.size === 0 && this.#child) hold(this.#child, false);
    if (kind === HOST.FAILED) {
      handlers.channel?.socket?.destroy();
      const [code, step, description] = payload.toString('utf8').split('\0');
      handlers.spawnError({ message: `${this.#spec.argv.join(' ')}: ${step} failed: ${description} (${code})`, code });
    } else if (kind === HOST.EXITED) {
      const [, code, signal, overflow, outLength, , memory] = fields;
      const split = Number(outLength);
      const exit = () =>
        handlers.exit({
          code: code === '-' ? null : Number(code),
          signal: signal === '-' ? null : (signal as NodeJS.Signals),
          stdout: payload.toString('utf8', 0, split),
          stderr: tailText(payload.subarray(split)),
          overflow: overflow === '1',
          memory: memory === '1',
        });
      const channel = handlers.channel;
      if (!channel?.socket || channel.closed) return exit();
      // The worker's last messages may still be on their way: the exit waits for the channel
      // to close (the host has killed everything that held it), or FLUSH_LIMIT_MS.
      const timer = setTimeout(() => channel.exit?.(), FLUSH_LIMIT_MS);
      channel.exit = () => {
        channel.exit = null;
        clearTimeout(timer);
        channel.socket?.destroy();
        exit();
      };
    }
  }
}

/** Whether an executable `perl` is on the manager's PATH. */
function findPerl(): boolean {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, 'perl'), constants.X_OK);
      return true;
    } catch {
      // not here
    }
  }
  return false;
}

/** Ref or unref the host's process handle and its stdout (either keeps the loop alive). */
function hold(child: ChildProcess, on: boolean): void {
  type Handle = NodeJS.ReadableStream & { ref(): void; unref(): void };
  const pipes = [child.stdout, child.stderr] as (Handle | null)[];
  if (on) {
    child.ref();
    for (const pipe of pipes) pipe?.ref();
  } else {
    child.unref();
    for (const pipe of pipes) pipe?.unref();
  }
}

/**
 * A stderr tail as text. The host keeps the last bytes it saw, so the tail may begin inside a
 * character: its leading UTF-8 continuation bytes (0b10xxxxxx) are dropped, never decoded into
 * U+FFFD.
 */
export function tailText(tail: Buffer): string {
  let start = 0;
  while (start < tail.length && start < 3 && (tail[start] & 0xc0) === 0x80) start++;
  return tail.toString('utf8', start).trim();
}
