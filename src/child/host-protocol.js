// @ts-check
// The spawn host protocol: how the manager talks to the process that starts its command
// workers. Two editions of the host speak it, spawn-host.pl (Perl) and spawn-host.js (Node);
// the manager's side is src/process/spawn-host.ts.
//
// The host's stdin carries frames from the manager, its stdout frames to the manager; its
// stderr is the manager's, and receives the workers' stderr as it comes. A frame is a header
// line of space-separated ASCII fields, `KIND field ...\n`, followed by as many payload bytes
// as its header says (payloads are raw bytes: no escaping, no JSON).
//
// Manager → host
//   C <len>\n<payload>       configure, once, first: NUL-separated fields
//                            argc, argv..., envc, NAME=value..., cwd, uid, gid (empty: unset),
//                            answer: empty, the answer is the worker's stdout; `3`, it is what
//                            the worker writes to fd 3, and its stdout goes to the host's stderr
//                            (a module worker's console.log must not be taken for its answer),
//                            memory: a cap in bytes on the resident memory of the worker's
//                            whole tree (empty: none),
//                            channel: the path of a Unix socket the manager listens on (empty:
//                            none); the host connects to it for each worker, writes `<id>\n`,
//                            and gives the connection to the worker as fd 3 (its channel: JSON
//                            lines, named by TIDEPOOL_CHANNEL_FD=3); its stdout goes to
//                            the host's stderr and there is no answer
//   S <id> <len>\n<stdin>    spawn worker <id>; write <stdin> to it, then close its stdin
//   S <id> -\n               spawn worker <id> with its stdin left open (a warm spare)
//   I <id> <len>\n<stdin>    write <stdin> to worker <id>, then close its stdin
//   K <id> <SIGNAL> [leader]\n  signal the process group of worker <id> (e.g. SIGTERM), or with
//                            `leader` the worker's own process alone (the SIGUSR2 that tells a
//                            module worker its task is cancelled, just before the SIGTERM); the host
//                            signals it only while the worker is not reaped
//   end of file              the manager is gone or done: kill every worker's tree, exit
//
// Host → manager
//   R <pid> <containment>\n  the host is up; how it holds a worker's tree (docs/containment.md):
//                            `subreaper` (every descendant, setsid'd or double-forked ones too),
//                            `proc` (descendants seen by polling /proc, and the group), `group`
//                            (the process group only)
//   P <id> <pid> <start> <keeper> <keeperstart>\n
//                            worker <id> started (its exec succeeded) as <pid>, in its own group;
//                            <start> is its start time (field 22 of /proc/<pid>/stat, read
//                            before it could be reaped), <keeper> and <keeperstart> those of the
//                            keeper that holds it (`-` for none: the Node edition)
//   G <id> <len>\n<json>     worker <id> wrote a progress line on stderr (PROGRESS_PREFIX, then
//                            at most MAX_PROGRESS bytes of JSON, then a newline): the JSON. The
//                            line is not forwarded with the worker's stderr, nor kept in its tail
//   F <id> <len>\n<payload>  worker <id> never started (no X follows): NUL-separated
//                            errno code (ENOENT), step (exec, chdir, spawn, ...), description
//   X <id> <code> <signal> <overflow> <outlen> <errlen> <memory>\n<answer><stderr tail>
//                            worker <id> exited: <code> or <signal> is `-`; <answer> is its
//                            stdout or fd 3 (see C); <overflow> is 1 when the answer passed
//                            MAX_OUTPUT (the worker was killed and the answer dropped);
//                            <memory> is 1 when its tree passed the memory cap (it was killed
//                            for it). Sent once everything the worker started is gone and its
//                            pipes have closed, or FLUSH_LIMIT_MS after the exit.
//
// The host is started with the limits as arguments: MAX_OUTPUT STDERR_TAIL FLUSH_LIMIT_MS.

import { MAX_PROGRESS, PROGRESS_PREFIX } from './protocol.js';

/** Frame kinds. */
export const HOST = /** @type {const} */ ({
  CONFIGURE: 'C',
  SPAWN: 'S',
  INPUT: 'I',
  SIGNAL: 'K',
  UP: 'R',
  SPAWNED: 'P',
  PROGRESS: 'G',
  FAILED: 'F',
  EXITED: 'X',
});

/**
 * @typedef {{ argv: string[], env: Record<string, string>, cwd?: string, uid?: number, gid?: number, answerFd?: 3, memoryLimit?: number, channel?: string }} SpawnSpec
 * @typedef {{ kind: string, fields: string[], payload: Buffer }} Frame
 */

/**
 * The payload length a header announces.
 * @param {string} kind
 * @param {string[]} fields the header's fields after the kind
 */
function payloadLength(kind, fields) {
  switch (kind) {
    case HOST.CONFIGURE:
      return Number(fields[0]);
    case HOST.SPAWN:
    case HOST.INPUT:
    case HOST.FAILED:
    case HOST.PROGRESS:
      return fields[1] === '-' ? 0 : Number(fields[1]);
    case HOST.EXITED:
      return Number(fields[4]) + Number(fields[5]);
    default:
      return 0;
  }
}

/** Splits a byte stream into frames. */
export class FrameReader {
  /** @type {Buffer} */
  #buffer = Buffer.alloc(0);

  /**
   * @param {Buffer} chunk
   * @returns {Frame[]} the frames completed by this chunk
   */
  push(chunk) {
    let buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    /** @type {Frame[]} */
    const frames = [];
    for (;;) {
      const nl = buffer.indexOf(10);
      if (nl < 0) break;
      const [kind, ...fields] = buffer.toString('latin1', 0, nl).split(' ');
      const length = payloadLength(kind, fields);
      if (!Number.isSafeInteger(length) || length < 0) throw new Error(`spawn host protocol: bad frame header "${buffer.toString('latin1', 0, nl)}"`);
      if (buffer.length < nl + 1 + length) break;
      frames.push({ kind, fields, payload: buffer.subarray(nl + 1, nl + 1 + length) });
      buffer = buffer.subarray(nl + 1 + length);
    }
    this.#buffer = buffer;
    return frames;
  }
}

const PREFIX = Buffer.from(PROGRESS_PREFIX, 'latin1');

/**
 * Splits a worker's stderr into what is forwarded and its progress lines (PROGRESS_PREFIX,
 * at most MAX_PROGRESS bytes of JSON, a newline). Ordinary text passes at once, whole lines or
 * not; only the start of a line that may still become a progress line is held back, until it
 * is one (taken out) or is not (passed on). The Perl host does the same in its keeper.
 */
export class ProgressLines {
  /** The start of a line, undecided. */
  /** @type {Buffer} */
  #held = Buffer.alloc(0);
  /** Inside an ordinary line: everything up to its newline passes. */
  #inLine = false;

  /**
   * @param {Buffer} chunk
   * @returns {{ text: Buffer[], values: Buffer[] }} what to forward, and the progress JSON
   */
  push(chunk) {
    let buf = this.#held.length === 0 ? chunk : Buffer.concat([this.#held, chunk]);
    this.#held = Buffer.alloc(0);
    /** @type {Buffer[]} */
    const text = [];
    /** @type {Buffer[]} */
    const values = [];
    while (buf.length > 0) {
      if (this.#inLine) {
        const nl = buf.indexOf(10);
        if (nl < 0) {
          text.push(buf);
          break;
        }
        text.push(buf.subarray(0, nl + 1));
        buf = buf.subarray(nl + 1);
        this.#inLine = false;
        continue;
      }
      const n = Math.min(buf.length, PREFIX.length);
      if (buf.compare(PREFIX, 0, n, 0, n) !== 0) {
        this.#inLine = true;
        continue;
      }
      const nl = buf.indexOf(10, n);
      if (nl < 0 && (buf.length < PREFIX.length || buf.length - PREFIX.length <= MAX_PROGRESS)) {
        this.#held = buf;
        break;
      }
      if (nl < 0 || nl - PREFIX.length > MAX_PROGRESS) {
        // Too long for a progress value: an ordinary line.
        this.#inLine = true;
        continue;
      }
      values.push(buf.subarray(PREFIX.length, nl));
      buf = buf.subarray(nl + 1);
    }
    return { text, values };
  }

  /** The stream ended: what was held back is ordinary text. */
  end() {
    const held = this.#held;
    this.#held = Buffer.alloc(0);
    this.#inLine = false;
    return held;
  }
}

/**
 * A frame as bytes.
 * @param {string} header the header line without its newline
 * @param {string | Buffer} [payload]
 */
export function frame(header, payload) {
  if (payload === undefined) return Buffer.from(`${header}\n`, 'latin1');
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  return Buffer.concat([Buffer.from(`${header} ${body.length}\n`, 'latin1'), body]);
}

/**
 * The configure payload for a spec.
 * @param {SpawnSpec} spec
 */
export function configurePayload(spec) {
  const env = Object.entries(spec.env).map(([name, value]) => `${name}=${value}`);
  const optional = (/** @type {string | number | undefined} */ value) => (value === undefined ? '' : String(value));
  return [
    String(spec.argv.length),
    ...spec.argv,
    String(env.length),
    ...env,
    optional(spec.cwd),
    optional(spec.uid),
    optional(spec.gid),
    optional(spec.answerFd),
    optional(spec.memoryLimit),
    optional(spec.channel),
  ].join('\0');
}

/**
 * The spec in a configure payload.
 * @param {Buffer} payload
 * @returns {SpawnSpec}
 */
export function parseConfigure(payload) {
  const fields = payload.toString('utf8').split('\0');
  const argc = Number(fields.shift());
  const argv = fields.splice(0, argc);
  const envc = Number(fields.shift());
  /** @type {Record<string, string>} */
  const env = {};
  for (const entry of fields.splice(0, envc)) {
    const eq = entry.indexOf('=');
    env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  const [cwd, uid, gid, answerFd, memoryLimit, channel] = fields;
  return {
    argv,
    env,
    ...(cwd ? { cwd } : {}),
    ...(uid ? { uid: Number(uid) } : {}),
    ...(gid ? { gid: Number(gid) } : {}),
    ...(answerFd === '3' ? { answerFd: 3 } : {}),
    ...(memoryLimit ? { memoryLimit: Number(memoryLimit) } : {}),
    ...(channel ? { channel } : {}),
  };
}
