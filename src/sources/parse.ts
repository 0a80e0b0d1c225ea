import type { Task } from './source.js';

/**
 * The one parser every source runs its incoming payloads through: bytes (a broker message, a
 * line of input) or a value already parsed (a library caller's object) become a task, or a
 * reason why they are not one. A payload that is not a task is dead-lettered by its source
 * with kind `malformed` and never reaches a worker.
 */

/** A payload as a source receives it. Text and bytes are JSON; anything else is the value itself. */
export type Payload = unknown;

export type Parsed =
  /** `text`: the task's JSON exactly as it arrived, when it came as text and carries its own id. */
  | { ok: true; task: Task; text?: string }
  | { ok: false; id: string; message: string };

const decoder = new TextDecoder('utf-8', { fatal: true });

/** The JSON text of a payload given as text or bytes, without a UTF-8 byte order mark; else undefined. */
function textOf(payload: Payload): string | undefined {
  let text: string;
  if (typeof payload === 'string') text = payload;
  else if (payload instanceof Uint8Array) text = decoder.decode(payload);
  else return undefined;
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/**
 * The longest task id, in characters: an id travels in URLs (`GET /tasks/:id`), headers
 * (`Location`, AMQP `messageId`) and log lines, which all have limits of their own.
 */
export const MAX_ID_LENGTH = 1024;

/**
 * Turn a payload into a task. A task is a JSON object; its `id`, when given, is a non-empty
 * string; without one it gets `defaultId`. Never throws: invalid UTF-8, bad JSON, a value that
 * is not an object, an object JSON cannot carry (a BigInt, a cycle) and a bad id each come back
 * as `{ ok: false, message }` naming the fault.
 */
export function parseTask(payload: Payload, defaultId: string): Parsed {
  let value: unknown = payload;
  let text: string | undefined;
  try {
    text = textOf(payload);
  } catch {
    return { ok: false, id: defaultId, message: 'the payload is not valid UTF-8' };
  }
  if (text !== undefined) {
    try {
      value = JSON.parse(text);
    } catch (err) {
      return { ok: false, id: defaultId, message: `not JSON: ${(err as Error).message}` };
    }
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const found = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
    return { ok: false, id: defaultId, message: `a task must be a JSON object, got ${found}` };
  }
  const given = (value as { id?: unknown }).id;
  if (text === undefined) {
    // A value given as an object must survive the trip to a worker as JSON.
    try {
      JSON.stringify(value);
    } catch (err) {
      const id = typeof given === 'string' && given !== '' ? given : defaultId;
      return { ok: false, id, message: `the task cannot be sent as JSON: ${(err as Error).message}` };
    }
  }
  if (given === undefined) return { ok: true, task: { ...(value as object), id: defaultId } as Task };
  if (typeof given !== 'string' || given === '') {
    return { ok: false, id: defaultId, message: `a task's id must be a non-empty string, got ${JSON.stringify(given)}` };
  }
  if (given.length > MAX_ID_LENGTH) {
    return { ok: false, id: defaultId, message: `a task's id must be at most ${MAX_ID_LENGTH} characters, got ${given.length}` };
  }
  // A copy: the caller may change or run the same object again.
  return text === undefined ? { ok: true, task: { ...(value as Task) } } : { ok: true, task: value as Task, text };
}

/**
 * The id a payload will have once parsed (its own, else `defaultId`), without keeping the
 * parse: the pool tracks a task by id from the moment it is submitted.
 */
export function taskIdOf(payload: Payload, defaultId: string): string {
  // A value (not text) needs no parse to say its id: the source's parse decides the rest.
  if (typeof payload !== 'string' && !(payload instanceof Uint8Array)) {
    const given = typeof payload === 'object' && payload !== null ? (payload as { id?: unknown }).id : undefined;
    return typeof given === 'string' && given !== '' ? given : defaultId;
  }
  const parsed = parseTask(payload, defaultId);
  return parsed.ok ? parsed.task.id : parsed.id;
}
