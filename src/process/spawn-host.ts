import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { FrameReader, HOST, configurePayload, frame } from '../child/host-protocol.js';
import type { Frame, SpawnSpec } from '../child/host-protocol.js';
import { FLUSH_LIMIT_MS, MAX_OUTPUT, STDERR_TAIL } from '../child/protocol.js';
import type { ErrorInfo } from '../child/protocol.js';

const PERL_HOST = fileURLToPath(new URL('../child/spawn-host.pl', import.meta.url));
const NODE_HOST = fileURLToPath(new URL('../child/spawn-host.js', import.meta.url));

/** Which spawn host starts workers: `auto` is Perl when a `perl` is on PATH, else Node. */
export type HostEdition = 'auto' | 'perl' | 'node';

export interface HostExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  /** The last STDERR_TAIL bytes of stderr, trimmed. */
  stderr: string;
  /** stdout passed MAX_OUTPUT: the group was killed and the output dropped. */
  overflow: boolean;
}

export interface SpawnHandlers {
  spawned(pid: number): void;
  /** The process never started; no exit follows. */
  spawnError(error: ErrorInfo): void;
  /** The process exited, its group was killed and its pipes drained. */
  exit(exit: HostExit): void;
}

/**
 * The manager's side of the spawn host, which starts workers (commands, and module workers
 * that serve one task) so that the manager never forks its own large heap per task (frames:
 * src/child/host-protocol.js). The host is started on first use; a host that dies fails
 * every process it held (the registry still kills their groups), and the next spawn starts a
 * new one. A Perl host that dies before it is up is not tried again: the Node edition takes
 * over.
 */
export class SpawnHost {
  readonly #spec: SpawnSpec;
  readonly #logger: Logger;
  #edition: 'perl' | 'node';
  #child: ChildProcess | null = null;
  #seq = 0;
  readonly #pending = new Map<string, SpawnHandlers & { pid: number | null }>();

  constructor(spec: SpawnSpec, logger: Logger, edition: HostEdition = 'auto') {
    this.#spec = spec;
    this.#logger = logger;
    this.#edition = edition === 'auto' ? (findPerl() ? 'perl' : 'node') : edition;
  }

  /** The edition the next host will be. */
  get edition(): 'perl' | 'node' {
    return this.#edition;
  }

  /** Start a process; `stdin`, when given, is written to it and closed at once. */
  spawn(handlers: SpawnHandlers, stdin?: string): string {
    const id = String(++this.#seq);
    this.#pending.set(id, { ...handlers, pid: null });
    this.#send(stdin === undefined ? frame(`${HOST.SPAWN} ${id} -`) : frame(`${HOST.SPAWN} ${id}`, stdin));
    return id;
  }

  stdin(id: string, data: string): void {
    if (this.#pending.has(id)) this.#send(frame(`${HOST.INPUT} ${id}`, data));
  }

  signal(id: string, signal: NodeJS.Signals): void {
    if (this.#pending.has(id)) this.#send(frame(`${HOST.SIGNAL} ${id} ${signal}`));
  }

  /** Let the host go; it kills any group it still holds, then exits. */
  close(): void {
    const child = this.#child;
    this.#child = null;
    child?.stdin?.end();
  }

  #send(bytes: Buffer): void {
    const child = this.#child ?? this.#start();
    // While it holds processes the host keeps the manager alive; idle, it must not.
    hold(child, true);
    child.stdin!.write(bytes);
  }

  #start(): ChildProcess {
    const edition = this.#edition;
    const limits = [String(MAX_OUTPUT), String(STDERR_TAIL), String(FLUSH_LIMIT_MS)];
    const child = spawn(edition === 'perl' ? 'perl' : process.execPath, [edition === 'perl' ? PERL_HOST : NODE_HOST, ...limits], {
      // The host only forks; the workers get their own environment, from the configure frame.
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.#child = child;
    let up = false;
    const reader = new FrameReader();
    child.stdout!.on('data', (chunk: Buffer) => {
      for (const f of reader.push(chunk)) {
        if (f.kind === HOST.UP) up = true;
        else this.#onFrame(f);
      }
    });
    // A write to a host that died fails with EPIPE; its 'close' fails what it held.
    child.stdin!.on('error', (err) => this.#logger.debug({ err }, 'spawn host did not take a frame'));
    child.on('error', (err) => this.#logger.error({ err }, `spawn host (${edition}) error`));
    child.once('close', (code, signal) => {
      if (this.#child === child) this.#child = null;
      if (!up && edition === 'perl') {
        this.#logger.warn({ code, signal }, 'the Perl spawn host did not start; using the Node one');
        this.#edition = 'node';
      }
      if (this.#pending.size > 0) this.#logger.error({ code, signal }, 'spawn host died; failing the processes it held');
      for (const [id, handlers] of this.#pending) {
        this.#pending.delete(id);
        const message = `the spawn host died (${signal ? `signal ${signal}` : `exit code ${code}`})`;
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
      handlers.pid = Number(fields[1]);
      return handlers.spawned(handlers.pid);
    }
    this.#pending.delete(fields[0]);
    if (this.#pending.size === 0 && this.#child) hold(this.#child, false);
    if (kind === HOST.FAILED) {
      const [code, step, description] = payload.toString('utf8').split('\0');
      handlers.spawnError({ message: `${this.#spec.argv.join(' ')}: ${step} failed: ${description} (${code})`, code });
    } else if (kind === HOST.EXITED) {
      const [, code, signal, overflow, outLength] = fields;
      const split = Number(outLength);
      handlers.exit({
        code: code === '-' ? null : Number(code),
        signal: signal === '-' ? null : (signal as NodeJS.Signals),
        stdout: payload.toString('utf8', 0, split),
        stderr: payload.toString('utf8', split).trim(),
        overflow: overflow === '1',
      });
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
  const stdout = child.stdout as (NodeJS.ReadableStream & { ref(): void; unref(): void }) | null;
  if (on) {
    child.ref();
    stdout?.ref();
  } else {
    child.unref();
    stdout?.unref();
  }
}
