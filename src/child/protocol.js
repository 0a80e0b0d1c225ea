// @ts-check
// The parent–child protocols, in one place: module workers (MSG) and the spawn host that
// starts command workers (HOST). Plain JavaScript so that the child entries run without a
// build step and load nothing but this file (and, for a module worker, the handler).

/**
 * Message kinds. Parent → child: `run`. Child → parent: `ready`, `result`, `error`,
 * `load-error`.
 */
export const MSG = /** @type {const} */ ({
  RUN: 'run',
  READY: 'ready',
  RESULT: 'result',
  ERROR: 'error',
  LOAD_ERROR: 'load-error',
});

/**
 * Exit codes of the child entry.
 * - `OK`: served its task(s) and left.
 * - `LOAD_FAILED`: the handler module could not be loaded (EX_CONFIG).
 * - `TERMINATED`: left on SIGTERM (128 + 15).
 */
export const EXIT = /** @type {const} */ ({ OK: 0, LOAD_FAILED: 78, TERMINATED: 143 });

/**
 * Spawn host messages. Manager → host: `spawn` (with the stdin data when it is known),
 * `stdin`, `signal`. Host → manager: `spawned`,
 * `spawn-error` (never started; no exit follows), `exit` (after the group is killed and the
 * pipes are drained, with stdout and the stderr tail).
 */
export const HOST = /** @type {const} */ ({
  SPAWN: 'spawn',
  STDIN: 'stdin',
  SIGNAL: 'signal',
  SPAWNED: 'spawned',
  SPAWN_ERROR: 'spawn-error',
  EXIT: 'exit',
});

/** After a worker exits, how long to wait for its pipes to close before reporting the exit. */
export const FLUSH_LIMIT_MS = 1_000;

/**
 * Signal a worker's process group (its pid is the group id: workers start detached). Shared by
 * the manager and the spawn host.
 * @param {number} pid
 * @param {NodeJS.Signals} signal
 * @returns {boolean} false when the group is already gone (ESRCH)
 */
export function killGroup(pid, signal) {
  try {
    process.kill(-pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Bytes of a worker's stderr kept for its failure message. */
export const STDERR_TAIL = 2048;
/** A command's stdout beyond this fails the attempt (the result would not fit a message anyway). */
export const MAX_OUTPUT = 16 * 1024 * 1024;

/**
 * @typedef {{ name?: string, message: string, code?: string, stack?: string }} ErrorInfo
 * @typedef {{ argv: string[], env: Record<string, string>, cwd?: string, uid?: number, gid?: number }} SpawnSpec
 * @typedef {{ k: 'spawn', id: number, spec: SpawnSpec, stdin?: string }
 *   | { k: 'stdin', id: number, data: string }
 *   | { k: 'signal', id: number, signal: NodeJS.Signals }} HostCommand
 * @typedef {{ k: 'spawned', id: number, pid: number }
 *   | { k: 'spawn-error', id: number, error: ErrorInfo }
 *   | { k: 'exit', id: number, code: number | null, signal: string | null, stdout: string, stderr: string, overflow: boolean }} HostEvent
 * @typedef {{ k: 'run', task: unknown, attempt: number, taskId: string, workerId: string, last: boolean }} RunMessage
 * @typedef {{ k: 'ready' }
 *   | { k: 'result', value: unknown }
 *   | { k: 'error', error: ErrorInfo, retryable: boolean }
 *   | { k: 'load-error', error: ErrorInfo }} ChildMessage
 */

/**
 * An error as plain JSON, whatever was thrown.
 * @param {unknown} err
 * @returns {ErrorInfo}
 */
export function serializeError(err) {
  if (err instanceof Error) {
    /** @type {ErrorInfo} */
    const info = { name: err.name, message: err.message };
    const code = /** @type {{ code?: unknown }} */ (err).code;
    if (typeof code === 'string') info.code = code;
    if (err.stack) info.stack = err.stack;
    return info;
  }
  if (typeof err === 'string') return { message: err };
  try {
    return { message: `non-error thrown: ${JSON.stringify(err)}` };
  } catch {
    return { message: `non-error thrown: ${String(err)}` };
  }
}

/**
 * Whether a thrown value asks not to be retried (see `NonRetryableError`). Checked by shape,
 * not by class identity, so a handler bundling its own copy of the class still works.
 * @param {unknown} err
 */
export function isNonRetryable(err) {
  return typeof err === 'object' && err !== null && /** @type {{ retryable?: unknown }} */ (err).retryable === false;
}
