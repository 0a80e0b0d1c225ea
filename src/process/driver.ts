import { fork, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { fromCallback } from 'xstate';
import type { ErrorInfo } from '../../machines/types.js';
import type { ProcessAnswer, ProcessCommand, ProcessEvent, ProcessInput } from '../../machines/worker.js';
import { FLUSH_LIMIT_MS, MAX_OUTPUT, MSG, STDERR_TAIL } from '../child/protocol.js';
import type { ChildMessage, RunMessage } from '../child/protocol.js';
import type { WorkerSpec } from '../options.js';
import type { Task } from '../sources/source.js';
import { killGroup, residentBytes } from './registry.js';
import type { ProcessRegistry } from './registry.js';
import type { HostExit, SpawnHost } from './spawn-host.js';
import type { SpawnSpec } from '../child/host-protocol.js';

/** The child entry of module workers; plain JavaScript, so it runs from src and from dist. */
const CHILD_ENTRY = fileURLToPath(new URL('../child/main.js', import.meta.url));

/** A command exiting with this code (EX_DATAERR) fails without retries, like `NonRetryableError`. */
export const EXIT_NON_RETRYABLE = 65;
const MEMORY_POLL_MS = 100;

export interface DriverOptions {
  worker: WorkerSpec;
  env: Record<string, string>;
  cwd?: string;
  uid?: number;
  gid?: number;
  /** MiB, or null. */
  memoryLimit: number | null;
}

export interface DriverRuntime {
  options: DriverOptions;
  registry: ProcessRegistry;
  logger: Logger;
  /** The task behind a delivery id, if the pool still holds it. */
  taskFor(deliveryId: string): { task: Task; attempt: number } | undefined;
  onSpawned?(workerId: string, pid: number): void;
  /** Starts commands and single-use module workers (required for them); the owner closes it when done. */
  host?: SpawnHost;
}

type SendBack = (event: ProcessEvent) => void;

/**
 * A forked module worker: a detached process (its own group), a stderr tail, a memory
 * watchdog, and an exit reported only once its pipes and IPC channel have drained, after its
 * whole group has been killed (so grandchildren never outlive their worker). The spawn host
 * does the same for the workers it starts (src/child/spawn-host.pl and spawn-host.js).
 */
class WorkerProcess {
  readonly child: ChildProcess;
  readonly #sendBack: SendBack;
  readonly #rt: DriverRuntime;
  readonly #workerId: string;
  #stderr = '';
  #spawned = false;
  #exited = false;
  #overMemory = false;
  #unwatch = () => {};
  #pendingSignal: NodeJS.Signals | null = null;
  /** The exit was reported: the group was swept at the exit already. */
  #reported = false;
  #flushTimer: NodeJS.Timeout | null = null;

  constructor(child: ChildProcess, input: ProcessInput, sendBack: SendBack, rt: DriverRuntime) {
    this.child = child;
    this.#sendBack = sendBack;
    this.#rt = rt;
    this.#workerId = input.workerId;
    child.once('spawn', () => this.#onSpawn());
    child.on('error', (err) => this.#onError(err));
    child.stderr?.on('data', (chunk: Buffer) => this.#onStderr(chunk));
    child.once('exit', (code, signal) => this.#onExit(code, signal));
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get exited(): boolean {
    return this.#exited;
  }

  get stderrTail(): string {
    return this.#stderr.trim();
  }

  send(event: ProcessEvent): void {
    this.#sendBack(event);
  }

  signal(signal: NodeJS.Signals): void {
    if (this.#exited) return;
    if (this.#spawned && this.child.pid !== undefined) killGroup(this.child.pid, signal);
    // Not started yet: the signal waits for the 'spawn' event instead of being lost.
    else if (this.#pendingSignal !== 'SIGKILL') this.#pendingSignal = signal;
  }

  /** The actor is stopping: nothing of this process may survive it. */
  dispose(): void {
    this.#unwatch();
    if (this.#flushTimer) clearTimeout(this.#flushTimer);
    if (!this.#spawned || this.child.pid === undefined) return;
    if (!this.#exited) {
      killGroup(this.child.pid, 'SIGKILL');
    } else if (!this.#reported) {
      // Exited, but stopped before the exit was reported: sweep the group again (a grandchild
      // may have been forked in between) and forget the pid.
      killGroup(this.child.pid, 'SIGKILL');
      this.#rt.registry.delete(this.child.pid);
    }
  }

  #onSpawn(): void {
    const pid = this.child.pid!;
    this.#spawned = true;
    this.#rt.registry.add(pid);
    this.#sendBack({ type: 'proc.spawned', pid });
    this.#rt.onSpawned?.(this.#workerId, pid);
    if (this.#pendingSignal) killGroup(pid, this.#pendingSignal);
    const limit = this.#rt.options.memoryLimit;
    if (limit !== null) {
      this.#unwatch = watchMemory(pid, limit, () => {
        this.#overMemory = true;
        killGroup(pid, 'SIGKILL');
      });
    }
  }

  #onError(err: NodeJS.ErrnoException): void {
    if (!this.#spawned) {
      // The process never started (ENOENT, EACCES, ...): there is no exit to wait for.
      // Node emits no 'exit' then, so the machine is told there is no process to wait for.
      this.#exited = true;
      this.#sendBack({ type: 'proc.spawnError', error: errnoInfo(err, this.#describe()) });
      this.#sendBack({ type: 'proc.exit', code: null, signal: null });
      return;
    }
    // After start, errors are failed sends or kills on a dying process; the exit follows.
    this.#rt.logger.debug({ err, workerId: this.#workerId, pid: this.child.pid }, 'worker process error');
  }

  #onStderr(chunk: Buffer): void {
    // Forward the worker's own diagnostics; keep a tail for the failure message.
    process.stderr.write(chunk);
    this.#stderr = (this.#stderr + chunk.toString('utf8')).slice(-STDERR_TAIL);
  }


  #onExit(code: number | null, signal: NodeJS.Signals | null): void {
    this.#exited = true;
    this.#unwatch();
    const pid = this.child.pid!;
    // The leader is gone; whatever it left in its group goes too, which also closes any pipe
    // a grandchild inherited (else 'close' could wait forever).
    killGroup(pid, 'SIGKILL');
    const finish = () => {
      if (this.#flushTimer) clearTimeout(this.#flushTimer);
      this.#flushTimer = null;
      this.#rt.registry.delete(pid);
      this.#reported = true;
      const memory = this.#overMemory || heapExhausted(signal, this.#stderr);
      const detail = memory ? undefined : this.stderrTail || undefined;
      this.#sendBack({ type: 'proc.exit', code, signal, memory, detail });
    };
    // 'close' comes once stdio and the IPC channel are closed, so every message and every
    // byte of output has been seen.
    if (this.child.stdin?.closed === false) this.child.stdin.destroy();
    this.#flushTimer = setTimeout(finish, FLUSH_LIMIT_MS);
    this.child.once('close', finish);
  }

  #describe(): string {
    return `node ${CHILD_ENTRY}`;
  }
}

function errnoInfo(err: NodeJS.ErrnoException, what: string): ErrorInfo {
  const info: ErrorInfo = { name: err.name, message: `${what}: ${err.message}` };
  if (err.code) info.code = err.code;
  return info;
}

/** The process slot for module workers: fork + IPC, the handler's default export runs in the child. */
function moduleProcess(rt: DriverRuntime, modulePath: string) {
  return fromCallback<ProcessCommand, ProcessInput>(({ input, sendBack, receive }) => {
    const { env, cwd, uid, gid, memoryLimit } = rt.options;
    let child: ChildProcess;
    try {
      child = fork(CHILD_ENTRY, [modulePath], {
        env,
        cwd,
        uid,
        gid,
        detached: true,
        // Never the manager's own flags (a test runner's loaders, inspectors).
        execArgv: memoryLimit === null ? [] : [`--max-old-space-size=${memoryLimit}`],
        // The handler's stdout goes to the manager's stderr: stdout is for results.
        stdio: ['ignore', 2, 'pipe', 'ipc'],
      });
    } catch (err) {
      sendBack({ type: 'proc.spawnError', error: errnoInfo(err as NodeJS.ErrnoException, 'fork') });
      sendBack({ type: 'proc.exit', code: null, signal: null });
      return;
    }
    const proc = new WorkerProcess(child, input, sendBack, rt);
    child.on('message', (message: ChildMessage) => {
      switch (message.k) {
        case MSG.READY:
          return proc.send({ type: 'proc.ready' });
        case MSG.RESULT:
          return proc.send({ type: 'proc.result', result: message.value });
        case MSG.ERROR:
          return proc.send({ type: 'proc.failed', error: message.error, retryable: message.retryable });
        case MSG.LOAD_ERROR:
          return proc.send({
            type: 'proc.spawnError',
            error: { ...message.error, message: `handler ${modulePath} failed to load: ${message.error.message}` },
          });
      }
    });
    receive((command) => {
      switch (command.type) {
        case 'proc.run': {
          const held = rt.taskFor(command.deliveryId);
          if (!held || !child.connected) return;
          const run: RunMessage = {
            k: MSG.RUN,
            task: held.task,
            attempt: held.attempt,
            taskId: held.task.id,
            workerId: input.workerId,
            last: command.last,
          };
          child.send(run, (err: Error | null) => {
            // The task cannot reach the child (it is dying): the exit will fail the attempt.
            if (err) rt.logger.debug({ err, workerId: input.workerId }, 'task not sent');
          });
          return;
        }
        case 'proc.terminate':
          return proc.signal('SIGTERM');
        case 'proc.kill':
          return proc.signal('SIGKILL');
      }
    });
    return () => proc.dispose();
  });
}

/**
 * How a process the spawn host starts is given its task, and how its answer is read: a
 * command (the task on stdin; its exit status and stdout answer) or a single-use module worker
 * (a `run` message on stdin; its reply on fd 3).
 */
interface HostedKind {
  input(held: { task: Task; attempt: number }, workerId: string): string;
  answer(exit: HostExit): ProcessAnswer | undefined;
}

/**
 * The process slot for processes the spawn host starts (see spawn-host.ts for why): commands,
 * and module workers that serve one task. Signals go to the process group directly once its
 * pid is known, through the host before.
 */
function hostedProcess(rt: DriverRuntime, kind: HostedKind) {
  const host = rt.host;
  if (!host) throw new Error('this kind of worker needs a spawn host');
  return fromCallback<ProcessCommand, ProcessInput>(({ input, sendBack, receive }) => {
    const { memoryLimit } = rt.options;
    let pid: number | null = null;
    let exited = false;
    let ran = false;
    let overMemory = false;
    let unwatch = () => {};
    // Spawned for a task (just in time): its input goes with the spawn, one frame fewer.
    const held = input.deliveryId === null ? undefined : rt.taskFor(input.deliveryId);
    const prewritten = held === undefined ? undefined : kind.input(held, input.workerId);
    const id = host.spawn(
      {
        spawned: (spawnedPid) => {
          pid = spawnedPid;
          rt.registry.add(spawnedPid);
          rt.onSpawned?.(input.workerId, spawnedPid);
          if (memoryLimit !== null) {
            unwatch = watchMemory(spawnedPid, memoryLimit, () => {
              overMemory = true;
              killGroup(spawnedPid, 'SIGKILL');
            });
          }
          // Ready as soon as it runs: its task is on its stdin, or goes there on `proc.run`.
          sendBack({ type: 'proc.ready', pid: spawnedPid });
        },
        spawnError: (error) => {
          exited = true;
          sendBack({ type: 'proc.spawnError', error });
          // No process ever ran: the machine has no exit to wait for but this one.
          sendBack({ type: 'proc.exit', code: null, signal: null });
        },
        exit: (exit) => {
          exited = true;
          unwatch();
          if (pid !== null) rt.registry.delete(pid);
          const memory = overMemory || heapExhausted(exit.signal, exit.stderr);
          sendBack({
            type: 'proc.exit',
            code: exit.code,
            signal: exit.signal,
            memory,
            detail: memory ? undefined : exit.stderr || undefined,
            answer: ran && !memory ? kind.answer(exit) : undefined,
          });
        },
      },
      prewritten,
    );
    const signal = (sig: NodeJS.Signals) => {
      if (exited) return;
      if (pid !== null) killGroup(pid, sig);
      else host.signal(id, sig);
    };
    receive((command) => {
      switch (command.type) {
        case 'proc.run': {
          ran = true;
          if (command.deliveryId === input.deliveryId && prewritten !== undefined) return;
          const task = rt.taskFor(command.deliveryId);
          if (task && !exited) host.stdin(id, kind.input(task, input.workerId));
          return;
        }
        case 'proc.terminate':
          return signal('SIGTERM');
        case 'proc.kill':
          return signal('SIGKILL');
      }
    });
    return () => {
      unwatch();
      signal('SIGKILL');
    };
  });
}

/** A command: the task as one JSON line on stdin; its exit status and stdout answer. */
const COMMAND: HostedKind = {
  input: (held) => taskLine(held.task),
  // A signal (or a lost host) is no answer: the machine classifies it.
  answer: ({ code, stdout, stderr, overflow }) => {
    // The host killed the group for it: the output, not the signal, is the cause.
    if (overflow) {
      return { status: 'failed', error: { message: `the command wrote more than ${MAX_OUTPUT} bytes to stdout` }, retryable: false };
    }
    if (code === null) return undefined;
    if (code === 0) return { status: 'resolved', result: parseOutput(stdout) };
    return {
      status: 'failed',
      error: { message: `command exited with code ${code}${stderr ? `: ${stderr}` : ''}` },
      retryable: code !== EXIT_NON_RETRYABLE,
    };
  },
};

/** A single-use module worker: its `run` message on stdin, its one reply on fd 3. */
function singleUseModule(modulePath: string): HostedKind {
  return {
    input: (held, workerId) =>
      JSON.stringify({
        k: MSG.RUN,
        task: held.task,
        attempt: held.attempt,
        taskId: held.task.id,
        workerId,
        last: true,
      } satisfies RunMessage),
    // No reply (it died first, or its reply was cut off) is no answer: the exit tells.
    answer: ({ stdout, overflow }) => {
      if (overflow) {
        return { status: 'failed', error: { message: `the worker's reply passed ${MAX_OUTPUT} bytes` }, retryable: false };
      }
      let reply: ChildMessage;
      try {
        reply = JSON.parse(stdout) as ChildMessage;
      } catch {
        return undefined;
      }
      switch (reply.k) {
        case MSG.RESULT:
          return { status: 'resolved', result: reply.value };
        case MSG.ERROR:
          return { status: 'failed', error: reply.error, retryable: reply.retryable };
        case MSG.LOAD_ERROR:
          return {
            status: 'failed',
            kind: 'spawn',
            error: { ...reply.error, message: `handler ${modulePath} failed to load: ${reply.error.message}` },
            retryable: true,
          };
        default:
          return undefined;
      }
    },
  };
}

/** V8 aborts with this on stderr when a worker reaches its heap limit. */
const heapExhausted = (signal: string | null, stderr: string): boolean =>
  signal === 'SIGABRT' && /heap out of memory|Reached heap limit/.test(stderr);

/**
 * What the spawn host starts, for the workers it starts (else null): commands, and module
 * workers that serve one task each.
 */
export function hostSpec(options: DriverOptions & { maxTasksPerWorker: number }): SpawnSpec | null {
  const { worker, env, cwd, uid, gid, memoryLimit } = options;
  if (worker.kind === 'command') return { argv: worker.argv, env, cwd, uid, gid };
  if (options.maxTasksPerWorker > 1) return null;
  const heap = memoryLimit === null ? [] : [`--max-old-space-size=${memoryLimit}`];
  return { argv: [process.execPath, ...heap, CHILD_ENTRY, worker.path], env, cwd, uid, gid, answerFd: 3 };
}

/** A task as a command reads it: one JSON line. */
const taskLine = (task: Task): string => `${JSON.stringify(task)}\n`;

/** Poll a process's resident memory; call `onExceed` once when it passes `limitMiB`. */
function watchMemory(pid: number, limitMiB: number, onExceed: () => void): () => void {
  const limit = limitMiB * 1024 * 1024;
  const timer = setInterval(() => {
    const rss = residentBytes(pid);
    if (rss !== null && rss > limit) {
      clearInterval(timer);
      onExceed();
    }
  }, MEMORY_POLL_MS);
  timer.unref();
  return () => clearInterval(timer);
}

/** A command's stdout as a result: JSON when it parses, else the text. */
export function parseOutput(text: string): unknown {
  const trimmed = text.trim();
  if (trimmed === '') return '';
  try {
    return JSON.parse(trimmed);
  } catch {
    return text;
  }
}

/**
 * The `process` slot of the worker machine for the configured kind of worker: the spawn host
 * starts commands and single-use module workers; a module worker that serves more than one
 * task is forked by the manager and keeps an IPC channel.
 */
export function processActor(rt: DriverRuntime) {
  const spec = rt.options.worker;
  if (spec.kind === 'command') return hostedProcess(rt, COMMAND);
  return rt.host ? hostedProcess(rt, singleUseModule(spec.path)) : moduleProcess(rt, spec.path);
}

export { MAX_OUTPUT };
