import { fromCallback } from 'xstate';
import type { CallbackActorLogic } from 'xstate';
import type { ProcessExit } from '../../machines/types.js';
import type { ProcessCommand, ProcessEvent, ProcessInput } from '../../machines/worker.js';

/**
 * One fake OS process: what its worker machine told it, and a handle to answer as the driver
 * in src/process would (`proc.spawned`, `proc.ready`, `proc.result`, `proc.exit`, ...).
 */
export interface FakeProcess {
  readonly workerId: string;
  /** Every command the worker machine sent, in order. */
  readonly commands: ProcessCommand[];
  /** The callback's cleanup ran: the worker machine stopped its process actor. */
  stopped: boolean;
  /** Send a process event to the worker machine (the callback actor's `sendBack`). */
  send(event: ProcessEvent): void;
  /** `proc.spawned` then `proc.ready`, as a healthy start. */
  start(pid?: number): void;
  result(result?: unknown): void;
  exit(exit?: Partial<ProcessExit>): void;
  /** Types of the commands received, for short assertions. */
  commandTypes(): ProcessCommand['type'][];
}

export interface FakeProcesses {
  /** The `process` actor slot of the worker machine. */
  readonly logic: CallbackActorLogic<ProcessCommand, ProcessInput>;
  /** Every process started so far, by worker id, in start order. */
  readonly all: Map<string, FakeProcess>;
  /** The process of `workerId`; throws when the worker has not started one. */
  get(workerId: string): FakeProcess;
}

export interface FakeOptions {
  /** Make the callback throw when it starts (a driver bug), for these worker ids. */
  throwOnStart?: (workerId: string) => boolean;
}

let nextPid = 1000;

/** A fresh registry of fake processes; one per test so nothing leaks between tests. */
export function createFakeProcesses(options: FakeOptions = {}): FakeProcesses {
  const all = new Map<string, FakeProcess>();
  const logic = fromCallback<ProcessCommand, ProcessInput>(({ input, sendBack, receive }) => {
    if (options.throwOnStart?.(input.workerId)) throw new Error(`fake process for ${input.workerId} failed to start`);
    const proc: FakeProcess = {
      workerId: input.workerId,
      commands: [],
      stopped: false,
      send: (event) => sendBack(event),
      start: (pid = nextPid++) => {
        sendBack({ type: 'proc.spawned', pid });
        sendBack({ type: 'proc.ready' });
      },
      result: (result = null) => sendBack({ type: 'proc.result', result }),
      exit: (exit = {}) => sendBack({ type: 'proc.exit', code: 0, signal: null, ...exit }),
      commandTypes: () => proc.commands.map((c) => c.type),
    };
    all.set(input.workerId, proc);
    receive((command) => {
      proc.commands.push(command);
    });
    return () => {
      proc.stopped = true;
    };
  });
  return {
    logic,
    all,
    get(workerId) {
      const proc = all.get(workerId);
      if (!proc) throw new Error(`no fake process for ${workerId} (started: ${[...all.keys()].join(', ') || 'none'})`);
      return proc;
    },
  };
}

/** The pool machine's slots (src/ fills them; tests record them). */
export const POOL_SLOTS = ['settle', 'release', 'forget', 'pauseIntake', 'resumeIntake', 'closeIntake'] as const;

/** Every pool slot filled with `record(name)`, for `poolMachine.provide({ actions })`. */
export function recordSlots<T>(record: (name: (typeof POOL_SLOTS)[number]) => T): Record<(typeof POOL_SLOTS)[number], T> {
  return Object.fromEntries(POOL_SLOTS.map((name) => [name, record(name)])) as Record<(typeof POOL_SLOTS)[number], T>;
}

/** A promise with its resolve and reject exposed (a startup the test settles by hand). */
export function deferred() {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
