import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { fromCallback } from 'xstate';
import type { ErrorInfo } from '../../machines/types.js';
import type { ProcessAnswer, ProcessCommand, ProcessEvent, ProcessInput } from '../../machines/worker.js';
import { CANCEL_SIGNAL, MAX_OUTPUT, MSG, PROGRESS_PREFIX } from '../child/protocol.js';
import type { ChildMessage, RunMessage } from '../child/protocol.js';
import type { WorkerSpec } from '../options.js';
import type { Task } from '../sources/source.js';
import { compileCacheDir, withCompileCache } from './compile-cache.js';
import type { ProcessRegistry } from './registry.js';
import type { HostExit, HostSpec, SpawnHost } from './spawn-host.js';

/** The child entry of module workers; plain JavaScript, so it runs from src and from dist. */
const CHILD_ENTRY = fileURLToPath(new URL('../child/main.js', import.meta.url));

/** A command exiting with this code (EX_DATAERR) fails without retries, like `NonRetryableError`. */
export const EXIT_NON_RETRYABLE = 65;

export interface DriverOptions {
  worker: WorkerSpec;
  env: Record<string, string>;
  cwd?: string;
  uid?: number;
  gid?: number;
  /** MiB, or null: a cap on the resident memory of each worker's whole tree. */
  memoryLimit: number | null;
  /** More than 1: module workers are reused, and talk to the manager over a channel. */
  maxTasksPerWorker?: number;
  /** An attempt's deadline, in ms: a module worker is told it, to say why it is stopped. */
  timeout: number;
  /** The pool's state directory: module workers' compile cache lives there (compile-cache.ts). */
  stateDir?: string | undefined;
}

export interface DriverRuntime {
  options: DriverOptions;
  registry: ProcessRegistry;
  logger: Logger;
  /** The task behind a delivery id, if the pool still holds it. */
  taskFor(deliveryId: string): Held | undefined;
  onSpawned?(workerId: string, pid: number): void;
  /** A progress value from the worker running `deliveryId` (already parsed JSON). */
  onProgress?(workerId: string, deliveryId: string, value: unknown): void;
  /** Starts every worker (required); the owner closes it when done. */
  host?: SpawnHost;
}

/**
 * How a process the spawn host starts is given its task, and how its answer is read: a
 * command (the task on stdin; its exit status and stdout answer) or a single-use module worker
 * (a `run` message on stdin; its reply on fd 3).
 */
interface HostedKind {
  /** A module worker (told of a cancel with CANCEL_SIGNAL); else a command. */
  module: boolean;
  input(held: Held, workerId: string): string;
  answer(exit: HostExit): ProcessAnswer | undefined;
}

/**
 * The process slot for processes the spawn host starts (see spawn-host.ts for why): commands,
 * and module workers that serve one task. Every signal goes through the host, which alone
 * knows whether the worker has been reaped; the host also holds the memory cap, over the
 * worker's whole tree.
 */
function hostedProcess(rt: DriverRuntime, kind: HostedKind) {
  const host = needHost(rt);
  return fromCallback<ProcessCommand, ProcessInput>(({ input, sendBack, receive }) => {
    let pid: number | null = null;
    let exited = false;
    let ran = false;
    /** The delivery it runs: progress lines are its. */
    let current = input.deliveryId;
    // Spawned for a task (just in time): its input goes with the spawn, one frame fewer.
    const held = input.deliveryId === null ? undefined : rt.taskFor(input.deliveryId);
    const prewritten = held === undefined ? undefined : kind.input(held, input.workerId);
    const id = host.spawn(
      {
        spawned: (spawnedPid) => {
          pid = spawnedPid;
          rt.registry.add(spawnedPid, (sig) => host.signal(id, sig));
          rt.onSpawned?.(input.workerId, spawnedPid);
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
          if (pid !== null) rt.registry.delete(pid);
          const memory = exit.memory === true || heapExhausted(exit.signal, exit.stderr);
          sendBack({
            type: 'proc.exit',
            code: exit.code,
            signal: exit.signal,
            memory,
            detail: memory ? undefined : exit.stderr || undefined,
            answer: ran && !memory ? kind.answer(exit) : undefined,
          });
        },
        progress: (json) => {
          if (current !== null) progressOf(rt, input.workerId, current, json);
        },
      },
      prewritten,
    );
    const signal = (sig: NodeJS.Signals) => {
      if (!exited) host.signal(id, sig);
    };
    receive((command) => {
      if (command.type !== 'proc.run') return stop(command, signal, kind.module);
      ran = true;
      current = command.deliveryId;
      if (command.deliveryId === input.deliveryId && prewritten !== undefined) return;
      const task = rt.taskFor(command.deliveryId);
      if (task && !exited) host.stdin(id, kind.input(task, input.workerId));
    });
    return () => signal('SIGKILL');
  });
}

/**
 * The process slot for module workers that serve several tasks. The spawn host starts them
 * too (so they die with the manager even while a handler blocks their event loop, and what
 * they start is held like any worker's tree), and hands each a channel connected to
 * the manager: `ready`, then `run` messages and their replies, as with `fork`.
 */
function channelProcess(rt: DriverRuntime, modulePath: string) {
  const host = needHost(rt);
  return fromCallback<ProcessCommand, ProcessInput>(({ input, sendBack, receive }) => {
    let pid: number | null = null;
    let exited = false;
    /** The delivery of the task it runs now: its progress messages are that attempt's. */
    let current: string | null = null;
    const id = host.spawn(
      {
        spawned: (spawnedPid) => {
          pid = spawnedPid;
          rt.registry.add(spawnedPid, (sig) => host.signal(id, sig));
          sendBack({ type: 'proc.spawned', pid: spawnedPid });
          rt.onSpawned?.(input.workerId, spawnedPid);
        },
        spawnError: (error) => {
          exited = true;
          sendBack({ type: 'proc.spawnError', error });
          sendBack({ type: 'proc.exit', code: null, signal: null });
        },
        message: (message) => {
          const m = message as ChildMessage;
          switch (m.k) {
            case MSG.READY:
              return sendBack({ type: 'proc.ready' });
            case MSG.RESULT:
              return sendBack({ type: 'proc.result', result: m.value });
            case MSG.ERROR:
              return sendBack({ type: 'proc.failed', error: m.error, retryable: m.retryable });
            case MSG.PROGRESS:
              if (current !== null) rt.onProgress?.(input.workerId, current, m.value);
              return;
            case MSG.LOAD_ERROR:
              return sendBack({
                type: 'proc.spawnError',
                error: { ...m.error, message: `handler ${modulePath} failed to load: ${m.error.message}` },
              });
          }
        },
        exit: (exit) => {
          exited = true;
          if (pid !== null) rt.registry.delete(pid);
          const memory = exit.memory === true || heapExhausted(exit.signal, exit.stderr);
          sendBack({ type: 'proc.exit', code: exit.code, signal: exit.signal, memory, detail: memory ? undefined : exit.stderr || undefined });
        },
        // `ctx.progress` comes on the channel; a progress line on stderr counts the same.
        progress: (json) => {
          if (current !== null) progressOf(rt, input.workerId, current, json);
        },
      },
      // Nothing comes on its stdin: its tasks come on the channel.
      '',
    );
    const signal = (sig: NodeJS.Signals, leader?: boolean) => {
      if (!exited) host.signal(id, sig, leader);
    };
    receive((command) => {
      if (command.type !== 'proc.run') return stop(command, signal, true);
      current = command.deliveryId;
      const { deliveryId } = command;
      const held = rt.taskFor(deliveryId);
      if (!held || exited) return;
      // The worker died before it could read its task (killed while idle, say, before the
      // manager heard of it): the task never ran, and goes back rather than fail an attempt.
      // The kernel says so (EPIPE) once it has released the dead worker's end of the channel,
      // which it does a moment after the death: a task written within that moment is lost with
      // the process, and its attempt fails as a crash, as it would have before this check.
      const unsent = () => sendBack({ type: 'proc.unsent', deliveryId });
      if (!host.post(id, runMessage(held, input.workerId, command.last, rt.options.timeout), unsent)) unsent();
    });
    return () => signal('SIGKILL');
  });
}

/**
 * SIGTERM (or SIGKILL) to the worker's group. A module worker whose task is cancelled gets
 * SIGUSR2, to its own process alone, just before: its handler's AbortSignal then says it was
 * cancelled rather than stopped (a SIGTERM alone cannot say which). POSIX leaves the order of
 * pending standard signals unspecified (signal(7)), and the two may reach two threads of the
 * worker, so the worker decides the reason a turn of its event loop after the SIGTERM
 * (src/child/main.js), by when it has seen both.
 */
function stop(
  command: Exclude<ProcessCommand, { type: 'proc.run' }>,
  signal: (sig: NodeJS.Signals, leader?: boolean) => void,
  module: boolean,
): void {
  if (command.type === 'proc.terminate' && command.cancelled && module) signal(CANCEL_SIGNAL, true);
  signal(SIGNAL_OF[command.type]);
}

/** A progress line's JSON, parsed and passed on; one that is not JSON is logged and dropped. */
function progressOf(rt: DriverRuntime, workerId: string, deliveryId: string, json: string): void {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    rt.logger.warn({ workerId, line: json.slice(0, 200) }, `a progress line is not JSON; dropped (expected ${PROGRESS_PREFIX.trim()} <JSON>)`);
    return;
  }
  rt.onProgress?.(workerId, deliveryId, value);
}

function needHost(rt: DriverRuntime): SpawnHost {
  if (!rt.host) throw new Error('workers need a spawn host');
  return rt.host;
}

/** A command: the task as one JSON line on stdin; its exit status and stdout answer. */
const COMMAND: HostedKind = {
  module: false,
  // The bytes as they arrived when there are any: a worker in another language must read the
  // numbers that were sent (JSON.parse would round 1970670598291982290).
  input: (held) => (held.text === undefined ? taskLine(held.task) : `${held.text}\n`),
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
function singleUseModule(modulePath: string, timeout: number): HostedKind {
  return {
    module: true,
    input: (held, workerId) => JSON.stringify(runMessage(held, workerId, true, timeout)),
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
  (signal === 'SIGABRT' || signal === 'SIGTRAP' || signal === 'SIGILL') &&
  /heap out of memory|Reached heap limit|Fatal (javascript|JavaScript) OOM|invalid table size|Allocation failed/.test(stderr);

/**
 * What the spawn host starts: commands, module workers that serve one task each (task on
 * stdin, reply on fd 3), and module workers that serve several (a channel on fd 3: a socket, JSON lines).
 */
export function hostSpec(options: DriverOptions & { maxTasksPerWorker: number }, warn: (message: string) => void = () => {}): HostSpec {
  const { worker, env, cwd, uid, gid, memoryLimit } = options;
  const cap = memoryLimit === null ? {} : { memoryLimit: memoryLimit * 1024 * 1024 };
  if (worker.kind === 'command') return { argv: worker.argv, env, cwd, uid, gid, ...cap };
  const heap = memoryLimit === null ? [] : [`--max-old-space-size=${memoryLimit}`];
  const argv = [process.execPath, ...heap, CHILD_ENTRY, worker.path];
  // Workers of another user could not read a cache only this user may open.
  const ownUser = uid === undefined || uid === process.getuid?.();
  const moduleEnv = withCompileCache(env, ownUser ? compileCacheDir(options.stateDir, warn) : null);
  if (options.maxTasksPerWorker > 1) {
    return { argv, env: { ...moduleEnv, TIDEPOOL_CHANNEL_FD: '3' }, cwd, uid, gid, ...cap, channel: true };
  }
  return { argv, env: moduleEnv, cwd, uid, gid, ...cap, answerFd: 3 };
}

/** A task as a command reads it: one JSON line. */
const taskLine = (task: Task): string => `${JSON.stringify(task)}\n`;

/** The signal each stopping command of the worker machine sends to the worker's tree. */
const SIGNAL_OF = { 'proc.terminate': 'SIGTERM', 'proc.kill': 'SIGKILL' } as const satisfies Record<string, NodeJS.Signals>;

/** The `run` message a module worker is given; its deadline is `timeout` ms from now. */
const runMessage = (held: Held, workerId: string, last: boolean, timeout: number): RunMessage => ({
  k: MSG.RUN,
  task: held.task,
  attempt: held.attempt,
  taskId: held.task.id,
  workerId,
  last,
  deadline: Date.now() + timeout,
});

/** A delivery's task as a worker is given it; `text`: its JSON as it arrived, when it came as text. */
type Held = { task: Task; attempt: number; text?: string };

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
 * The `process` slot of the worker machine for the configured kind of worker; the spawn host
 * starts every worker.
 */
export function processActor(rt: DriverRuntime) {
  const spec = rt.options.worker;
  if (spec.kind === 'command') return hostedProcess(rt, COMMAND);
  if ((rt.options.maxTasksPerWorker ?? 1) > 1) return channelProcess(rt, spec.path);
  return hostedProcess(rt, singleUseModule(spec.path, rt.options.timeout));
}

export { MAX_OUTPUT };
