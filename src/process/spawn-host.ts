import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { HOST } from '../child/protocol.js';
import type { ErrorInfo, HostCommand, HostEvent, SpawnSpec } from '../child/protocol.js';

const HOST_ENTRY = fileURLToPath(new URL('../child/spawn-host.js', import.meta.url));

export type HostExit = Extract<HostEvent, { k: 'exit' }>;

export interface SpawnHandlers {
  spawned(pid: number): void;
  /** The process never started; no exit follows. */
  spawnError(error: ErrorInfo): void;
  /** The process exited, its group was killed and its pipes drained. */
  exit(exit: Omit<HostExit, 'k' | 'id'>): void;
}

/**
 * The manager's side of the spawn host (`src/child/spawn-host.js`), which starts command
 * workers so that the manager never forks its own large heap per task. Started on first use;
 * a host that dies fails every process it held (the registry still kills their groups) and is
 * started again on the next spawn.
 */
export class SpawnHost {
  readonly #logger: Logger;
  #child: ChildProcess | null = null;
  #seq = 0;
  readonly #pending = new Map<number, SpawnHandlers & { pid: number | null }>();

  constructor(logger: Logger) {
    this.#logger = logger;
  }

  /** Start a process; `stdin`, when given, is written to it and closed at once. */
  spawn(spec: SpawnSpec, handlers: SpawnHandlers, stdin?: string): number {
    const id = ++this.#seq;
    this.#pending.set(id, { ...handlers, pid: null });
    this.#send(stdin === undefined ? { k: HOST.SPAWN, id, spec } : { k: HOST.SPAWN, id, spec, stdin });
    return id;
  }

  stdin(id: number, data: string): void {
    if (this.#pending.has(id)) this.#send({ k: HOST.STDIN, id, data });
  }

  signal(id: number, signal: NodeJS.Signals): void {
    if (this.#pending.has(id)) this.#send({ k: HOST.SIGNAL, id, signal });
  }

  /** Let the host go; it kills any group it still holds, then exits. */
  close(): void {
    const child = this.#child;
    this.#child = null;
    if (child?.connected) child.disconnect();
  }

  #send(command: HostCommand): void {
    const child = this.#child ?? this.#start();
    // While it holds processes the host keeps the manager alive; idle, it must not.
    hold(child, true);
    child.send(command, (err: Error | null) => {
      if (err) this.#logger.debug({ err }, 'spawn host did not take a command');
    });
  }

  #start(): ChildProcess {
    const child = fork(HOST_ENTRY, [], {
      // The host only forks; the workers get their own environment per spawn.
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
      execArgv: [],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      serialization: 'json',
    });
    this.#child = child;
    child.on('message', (event: HostEvent) => this.#onEvent(event));
    child.on('error', (err) => this.#logger.error({ err }, 'spawn host error'));
    child.once('exit', (code, signal) => {
      if (this.#child === child) this.#child = null;
      if (this.#pending.size > 0) this.#logger.error({ code, signal }, 'spawn host died; failing the processes it held');
      for (const [id, handlers] of this.#pending) {
        this.#pending.delete(id);
        const message = `the spawn host died (${signal ? `signal ${signal}` : `exit code ${code}`})`;
        if (handlers.pid === null) handlers.spawnError({ message });
        else handlers.exit({ code: null, signal: null, stdout: '', stderr: message, overflow: false });
      }
    });
    return child;
  }

  #onEvent(event: HostEvent): void {
    const handlers = this.#pending.get(event.id);
    if (!handlers) return;
    switch (event.k) {
      case HOST.SPAWNED:
        handlers.pid = event.pid;
        return handlers.spawned(event.pid);
      case HOST.SPAWN_ERROR:
        this.#pending.delete(event.id);
        break;
      case HOST.EXIT:
        this.#pending.delete(event.id);
        break;
    }
    if (this.#pending.size === 0 && this.#child) hold(this.#child, false);
    if (event.k === HOST.SPAWN_ERROR) handlers.spawnError(event.error);
    // The event itself: the handler reads only the exit's fields (no copy per task).
    else if (event.k === HOST.EXIT) handlers.exit(event);
  }
}

/** Ref or unref both the process handle and its IPC channel (either keeps the loop alive). */
function hold(child: ChildProcess, on: boolean): void {
  const channel = child.channel as { ref(): void; unref(): void } | null | undefined;
  if (on) {
    child.ref();
    channel?.ref();
  } else {
    child.unref();
    channel?.unref();
  }
}
