// @ts-check
// The entry of a module worker process. It must import almost nothing: every module loaded
// here is paid again on every task (no pino, no xstate, no validation library).
import { pathToFileURL } from 'node:url';
import { EXIT, MSG, isNonRetryable, killGroup, serializeError } from './protocol.js';

/** @typedef {import('./protocol.js').RunMessage} RunMessage */
/** @typedef {import('./protocol.js').ChildMessage} ChildMessage */

const handlerPath = process.argv[2];
/** @type {AbortController | null} */
let running = null;
let terminating = false;

/**
 * @param {ChildMessage} message
 * @param {() => void} [then]
 */
function send(message, then) {
  if (!process.connected) return process.exit(EXIT.OK);
  try {
    process.send?.(message, undefined, undefined, (err) => {
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
// (grandchildren the handler started) along; nobody else is left to kill it.
process.on('disconnect', () => {
  killGroup(process.pid, 'SIGKILL');
  // Not a group leader (started by hand, not by the pool): just leave.
  process.exit(EXIT.OK);
});

// The deadline passed: fire the task's AbortSignal and leave once the handler settles (the
// manager sends SIGKILL after its grace period if it does not).
process.on('SIGTERM', () => {
  terminating = true;
  if (!running) process.exit(EXIT.TERMINATED);
  running.abort(new Error('the task deadline passed; the worker is terminating'));
});

const LEVELS = /** @type {Record<string, number>} */ ({ trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 });
const threshold = LEVELS[process.env.TIDEPOOL_LOG_LEVEL ?? 'info'] ?? Infinity;

/**
 * A minimal pino-compatible logger on stderr: one JSON line per call, at or above the
 * manager's level.
 * @param {Record<string, unknown>} bindings
 */
function createLogger(bindings) {
  /** @param {number} level */
  const at = (level) => (/** @type {unknown} */ objOrMsg, /** @type {string | undefined} */ msg) => {
    if (level < threshold) return;
    const fields = typeof objOrMsg === 'object' && objOrMsg !== null ? objOrMsg : { msg: objOrMsg };
    const line = { level, time: Date.now(), ...bindings, ...fields, ...(msg === undefined ? {} : { msg }) };
    process.stderr.write(`${JSON.stringify(line)}\n`);
  };
  return { debug: at(20), info: at(30), warn: at(40), error: at(50) };
}

/** @type {(task: unknown, ctx: object) => unknown} */
let handler;
try {
  const mod = await import(pathToFileURL(handlerPath).href);
  handler = typeof mod.default === 'function' ? mod.default : mod.default?.default;
  if (typeof handler !== 'function') {
    throw new TypeError(`${handlerPath} has no default export function (found ${typeof mod.default})`);
  }
} catch (err) {
  send({ k: MSG.LOAD_ERROR, error: serializeError(err) }, () => process.exit(EXIT.LOAD_FAILED));
  // Keep the loop alive until the message is written.
  await new Promise(() => {});
}

process.on('message', async (/** @type {RunMessage} */ message) => {
  if (message.k !== MSG.RUN) return;
  const controller = new AbortController();
  running = controller;
  const ctx = {
    attempt: message.attempt,
    workerId: message.workerId,
    taskId: message.taskId,
    signal: controller.signal,
    log: createLogger({ pid: process.pid, workerId: message.workerId, taskId: message.taskId }),
  };
  /** @type {ChildMessage} */
  let reply;
  try {
    reply = { k: MSG.RESULT, value: await handler(message.task, ctx) };
  } catch (err) {
    reply = { k: MSG.ERROR, error: serializeError(err), retryable: !isNonRetryable(err) };
  }
  running = null;
  const leave = message.last || terminating;
  send(reply, leave ? () => process.exit(terminating ? EXIT.TERMINATED : EXIT.OK) : undefined);
});

send({ k: MSG.READY });
