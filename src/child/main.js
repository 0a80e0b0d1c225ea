// @ts-check
// The entry of a module worker process. It must import almost nothing: every module loaded
// here is paid again on every task (no pino, no xstate, no validation library).
//
// Two ways in, one handler contract:
// - with a channel to the manager (reused workers; a socket on the fd TIDEPOOL_CHANNEL_FD
//   names, JSON lines): `ready`, then `run` messages and their replies, until a `run` says it
//   is the last;
// - started by the spawn host, without one (single-use workers): the `run` message is the whole
//   of stdin, and the one reply goes to fd 3 as a JSON line. No `ready`: the host reports the
//   start.
import { readFileSync, writeSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { LineReader } from './lines.js';
import {
  CANCEL_SIGNAL,
  EXIT,
  MAX_OUTPUT,
  MAX_PROGRESS,
  MSG,
  PROGRESS_PREFIX,
  handlerOf,
  isNonRetryable,
  killGroup,
  serializeError,
} from './protocol.js';

/** @typedef {import('./protocol.js').RunMessage} RunMessage */
/** @typedef {import('./protocol.js').ChildMessage} ChildMessage */

// Node writes to a full pipe asynchronously, and process.exit() drops what is still queued:
// a handler's last log lines would be lost. Blocking writes keep them (Node does the same for
// its own stdout in some cases); `_handle.setBlocking` is undocumented, hence the guards.
// Made blocking when first used, not here: Node makes `process.stdout` on first access, and
// for a pipe that costs ~3.3 ms here (it loads net and stream), paid by every single-use
// worker whose handler never prints (docs/benchmark-notes.md, "Latency").
for (const name of /** @type {const} */ (['stdout', 'stderr'])) {
  /** @param {unknown} stream */
  const blocking = (stream) => {
    /** @type {{ _handle?: { setBlocking?: (on: boolean) => void } }} */ (stream)._handle?.setBlocking?.(true);
    return stream;
  };
  const made = Object.getOwnPropertyDescriptor(process, name);
  if (!made?.get || !made.configurable) {
    blocking(process[name]);
    continue;
  }
  const get = made.get;
  Object.defineProperty(process, name, {
    ...made,
    get() {
      // Once: the stream is Node's own from then on.
      Object.defineProperty(process, name, made);
      return blocking(get.call(process));
    },
  });
}

const handlerPath = process.argv[2];
/** The task in progress: how to abort it. */
/** @type {{ abort(reason: Error): void, deadline: number } | null} */
let running = null;
let terminating = false;

/**
 * A reused worker's channel to the manager: a socket on the fd TIDEPOOL_CHANNEL_FD names,
 * JSON lines both ways (what Node's own IPC channel would carry, without its per-message work:
 * each reply is serialised once). Null for a single-use worker, which is piped.
 */
const channel = await openChannel(process.env.TIDEPOOL_CHANNEL_FD);
// Not for the handler's own children.
delete process.env.TIDEPOOL_CHANNEL_FD;
const piped = channel === null;

/**
 * @param {string | undefined} fd
 * @returns {Promise<{ write(text: string, then: (err?: Error | null) => void): void, open: boolean, onMessage(listener: (message: unknown) => void): void, onClose(listener: () => void): void } | null>}
 */
async function openChannel(fd) {
  if (fd === undefined) return null;
  const { Socket } = await import('node:net');
  const socket = new Socket({ fd: Number(fd), readable: true, writable: true });
  socket.setEncoding('utf8');
  socket.on('error', () => {});
  /** @type {(message: unknown) => void} */
  let deliver = () => {};
  const lines = new LineReader();
  socket.on('data', (/** @type {string} */ text) => {
    for (const line of lines.read(text)) deliver(JSON.parse(line));
  });
  const ch = {
    open: true,
    /** @param {string} text @param {(err?: Error | null) => void} then */
    write: (text, then) => void socket.write(`${text}\n`, then),
    /** @param {(message: unknown) => void} listener */
    onMessage: (listener) => void (deliver = listener),
    /** @param {() => void} listener */
    onClose: (listener) => void socket.once('close', listener),
  };
  socket.once('close', () => (ch.open = false));
  return ch;
}
/** Where a single-use worker's reply goes. */
const ANSWER_FD = 3;

/**
 * @param {ChildMessage} message
 * @param {() => void} [then]
 */
function send(message, then) {
  try {
    // JSON would drop these silently (the task would resolve as null): they fail instead.
    if (message.k === MSG.RESULT && (typeof message.value === 'function' || typeof message.value === 'symbol')) {
      throw new TypeError(`a ${typeof message.value} is not JSON`);
    }
    const text = JSON.stringify(message);
    // One cap on a reply whatever the channel (fd 3 or the socket): a result past it fails for good.
    if (message.k === MSG.RESULT && text.length > MAX_OUTPUT) {
      throw new RangeError(`it is ${text.length} bytes of JSON, more than the ${MAX_OUTPUT} a reply may carry`);
    }
    if (piped) {
      writeSync(ANSWER_FD, `${text}\n`);
      return then?.();
    }
    if (!channel?.open) return process.exit(EXIT.OK);
    channel.write(text, (err) => {
      if (err) process.exit(EXIT.OK);
      else then?.();
    });
  } catch (err) {
    // A result JSON cannot carry (a BigInt, a cycle) fails the attempt, for good: it would
    // fail the same way again.
    if (message.k !== MSG.RESULT) throw err;
    const why = err instanceof Error ? err.message : String(err);
    const error = serializeError(new TypeError(`the handler's result cannot be sent as JSON: ${why}`));
    send({ k: MSG.ERROR, error, retryable: false }, then);
  }
}

// The manager is gone: leave, whatever the handler is doing, and take the process group
// (grandchildren the handler started) along; nobody else is left to kill it. (A piped worker
// has no channel: the spawn host kills its group when the manager goes.)
if (channel) {
  channel.onClose(() => {
    killGroup(process.pid, 'SIGKILL');
    // Not a group leader (started by hand, not by the pool): just leave.
    process.exit(EXIT.OK);
  });
}

// The deadline passed, or the pool stops the task: fire the task's AbortSignal and leave once
// the handler settles (the manager sends SIGKILL after its grace period if it does not).
/** The task was cancelled (CANCEL_SIGNAL came before the SIGTERM). */
let cancelled = false;
const onTerminate = () => {
  terminating = true;
  if (!running) process.exit(EXIT.TERMINATED);
  // A cancel's CANCEL_SIGNAL is sent just before the SIGTERM, but two signals can land on two
  // threads of this process and be dispatched in either order, in one turn of the event loop
  // or two: the reason is decided a turn later, once both have been seen.
  // On a loaded machine the thread a signal went to can wait for a core longer than that: a
  // CANCEL_SIGNAL still pending for the process (sent first, so pending or seen by now) is
  // waited for too, a turn at a time.
  let turns = 0;
  const decide = () => {
    if (!running) return;
    if (!cancelled && turns++ < 1_000 && cancelPending()) return void setImmediate(decide);
    const reason = cancelled
      ? 'the task was cancelled; the worker is terminating'
      : Date.now() >= running.deadline
        ? 'the task deadline passed; the worker is terminating'
        : 'the pool is stopping the task (shutdown); the worker is terminating';
    running.abort(new Error(reason));
  };
  setImmediate(() => setImmediate(decide));
};

/** SIGUSR2 (CANCEL_SIGNAL) is signal 12: bit 11 of the pending masks in /proc/self/status. */
const CANCEL_BIT = 1n << 11n;

/**
 * Whether CANCEL_SIGNAL has been sent to this process and not yet taken by a thread (pending
 * for the process, or for the main thread), from /proc/self/status; false where that cannot be
 * read.
 */
function cancelPending() {
  try {
    const status = readFileSync('/proc/self/status', 'latin1');
    for (const field of ['ShdPnd', 'SigPnd']) {
      const hex = new RegExp(`^${field}:\\s*([0-9a-f]+)$`, 'm').exec(status)?.[1];
      if (hex !== undefined && (BigInt(`0x${hex}`) & CANCEL_BIT) !== 0n) return true;
    }
  } catch {
    // No /proc: the two turns above are all there is.
  }
  return false;
}
const onCancel = () => {
  cancelled = true;
  onTerminate();
};
if (!piped) {
  process.on('SIGTERM', onTerminate);
  process.on(CANCEL_SIGNAL, onCancel);
}

const LEVELS = /** @type {Record<string, number>} */ ({ trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 });
const threshold = LEVELS[process.env.TIDEPOOL_LOG_LEVEL ?? 'info'] ?? Infinity;

/**
 * A minimal pino-compatible logger on stderr: one JSON line per call, at or above the
 * manager's level. In parentheses, as `run` below: V8 compiles such a function when the
 * module is compiled, not at its first call, i.e. not after the task came.
 */
const createLogger = (function createLogger(/** @type {Record<string, unknown>} */ bindings) {
  /** @param {number} level */
  const at = (level) => (/** @type {unknown} */ objOrMsg, /** @type {string | undefined} */ msg) => {
    if (level < threshold) return;
    const fields = typeof objOrMsg === 'object' && objOrMsg !== null ? objOrMsg : { msg: objOrMsg };
    const line = { level, time: Date.now(), ...bindings, ...fields, ...(msg === undefined ? {} : { msg }) };
    process.stderr.write(`${JSON.stringify(line)}\n`);
  };
  return { debug: at(20), info: at(30), warn: at(40), error: at(50) };
});

// A single-use worker loads its handler after it was started: past the spawn timeout, the
// load is a failure to start (kind spawn), as it is for a reused worker that never says ready.
const loadLimit = Number(process.env.TIDEPOOL_SPAWN_TIMEOUT);
const loadTimer =
  piped && loadLimit > 0
    ? setTimeout(() => {
        const error = serializeError(new Error(`${handlerPath} did not load within the spawn timeout (${loadLimit} ms)`));
        send({ k: MSG.LOAD_ERROR, error }, () => process.exit(EXIT.LOAD_FAILED));
      }, loadLimit)
    : null;

/**
 * `ctx.progress(value)`: one JSON value, at most MAX_PROGRESS bytes. A reused worker sends it
 * over its channel (in order with its reply); a single-use one writes a progress line on
 * stderr, which the spawn host takes out and passes on, as for a command.
 * @param {unknown} value
 */
function progress(value) {
  /** @type {string | undefined} */
  let json;
  try {
    json = JSON.stringify(value);
  } catch (err) {
    throw new TypeError(`ctx.progress: the value cannot be sent as JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (json === undefined) throw new TypeError(`ctx.progress: the value cannot be sent as JSON (got ${typeof value})`);
  const bytes = Buffer.byteLength(json);
  if (bytes > MAX_PROGRESS) {
    throw new RangeError(`ctx.progress: the value is ${bytes} bytes of JSON, more than the ${MAX_PROGRESS} a progress value may carry`);
  }
  if (piped) process.stderr.write(`${PROGRESS_PREFIX}${json}\n`);
  else if (channel?.open) channel.write(JSON.stringify({ k: MSG.PROGRESS, value: JSON.parse(json) }), () => {});
}

/** @type {(task: unknown, ctx: object) => unknown} */
let handler;
try {
  handler = handlerOf(await import(pathToFileURL(handlerPath).href), handlerPath);
  if (loadTimer) clearTimeout(loadTimer);
} catch (err) {
  send({ k: MSG.LOAD_ERROR, error: serializeError(err) }, () => process.exit(EXIT.LOAD_FAILED));
  // Keep the loop alive until the message is written.
  await new Promise(() => {});
}

/**
 * Run one task. Compiled eagerly (the parentheses: V8's hint for a function about to be
 * called), before a warm spare blocks on its stdin: compiling it lazily at its first call cost
 * ~0.1 ms between the task's arrival and the handler's first line here.
 */
const run = (async function run(/** @type {RunMessage} */ message) {
  if (message.k !== MSG.RUN) return;
  // The AbortController is made when the handler first reads ctx.signal (aborted already if
  // the deadline has passed): most handlers never do, and each one costs a worker ~0.2 ms.
  /** @type {AbortController | null} */
  let controller = null;
  /** @type {Error | null} */
  let aborted = null;
  const attempt = (running = {
    deadline: message.deadline ?? Infinity,
    abort(reason) {
      // The first reason stands (a cancel, then the SIGTERM that follows it).
      aborted ??= reason;
      controller?.abort(reason);
    },
  });
  const ctx = {
    attempt: message.attempt,
    workerId: message.workerId,
    taskId: message.taskId,
    get signal() {
      if (!controller) {
        controller = new AbortController();
        if (aborted) controller.abort(aborted);
      }
      return controller.signal;
    },
    // Made when first read, like the signal: most handlers never log.
    get log() {
      const log = createLogger({ pid: process.pid, workerId: message.workerId, taskId: message.taskId });
      Object.defineProperty(this, 'log', { value: log });
      return log;
    },
    // Once the handler has returned, its attempt is over: a late value (a timer the handler
    // left) is dropped, never told as the progress of the worker's next task.
    /** @param {unknown} value */
    progress: (value) => {
      if (running === attempt) progress(value);
    },
  };
  /** @type {ChildMessage} */
  let reply;
  try {
    reply = { k: MSG.RESULT, value: await handler(message.task, ctx) };
  } catch (err) {
    reply = { k: MSG.ERROR, error: serializeError(err), retryable: !isNonRetryable(err) };
  }
  running = null;
  const leave = message.last || terminating || piped;
  send(reply, leave ? () => process.exit(terminating ? EXIT.TERMINATED : EXIT.OK) : undefined);
});

if (piped) {
  // The handler is loaded first, so a warm spare waits for its task ready to run it. What can
  // be done before the task comes is done before the read, off the task's latency (a warm
  // spare's run() to the handler's first line, docs/benchmark-notes.md "Latency"): the first
  // signal listener (~0.09 ms: Node's signal machinery) and the first `beforeExit` one
  // (~0.07 ms) here. CANCEL_SIGNAL only comes with a task, just before the SIGTERM.
  process.on(CANCEL_SIGNAL, onCancel);
  // Nothing else holds the event loop open (no IPC channel): a handler waiting on a promise
  // alone must not let the process exit under it. A timer is made only then (the first one
  // costs ~0.35 ms); the exit after the reply ends it.
  process.once('beforeExit', () => {
    if (running) setInterval(() => {}, 2 ** 30);
  });
  // The read blocks (an asynchronous one costs ~1.5 ms more per worker here); until it
  // returns, SIGTERM keeps its default action, which is what a spare retired while it waits
  // needs (a listener would run only once the read returned).
  const message = JSON.parse(readFileSync(0, 'utf8'));
  process.on('SIGTERM', onTerminate);
  void run(message);
} else {
  channel?.onMessage((message) => void run(/** @type {RunMessage} */ (message)));
  send({ k: MSG.READY });
}
