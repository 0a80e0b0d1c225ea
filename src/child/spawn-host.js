// @ts-check
// The spawn host, Node edition: starts workers for the manager (commands, and module workers)
// and reports how they ended, in the frames of host-protocol.js. The manager uses it where no
// `perl` is installed (spawn-host.pl, the Perl edition, forks more cheaply and holds a
// worker's tree more firmly). Either way the manager never forks its own large heap per task,
// and the workers die with the manager: when the manager's end of stdin closes, the host
// kills every tree it holds.
//
// Containment `proc` (docs/containment.md): Node cannot make itself a child subreaper, so the
// host polls /proc for each worker's descendants every TRACK_MS and remembers each by pid and
// start time. When the worker ends, what is still alive of them is stopped, their own children
// (which cannot be reaped while their parent is stopped) are found and stopped too, and all of
// it is killed. A descendant that leaves the tree (setsid, double fork) and whose parent exits
// between two polls is never seen, and escapes.
//
// Arguments: MAX_OUTPUT STDERR_TAIL FLUSH_LIMIT_MS.
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { createConnection } from 'node:net';
import { getSystemErrorMap } from 'node:util';
import { FrameReader, HOST, ProgressLines, frame, parseConfigure } from './host-protocol.js';

const [MAX_OUTPUT, STDERR_TAIL, FLUSH_LIMIT_MS] = process.argv.slice(2).map(Number);
const CONTAINMENT = 'proc';
/** How often each worker's tree is read from /proc. */
const TRACK_MS = 20;
/** The memory of a tree is read every this many polls. */
const MEMORY_EVERY = 5;

/** @type {import('./host-protocol.js').SpawnSpec | null} */
let spec = null;

/**
 * @typedef {{
 *   child: import('node:child_process').ChildProcess,
 *   pid: number,
 *   seen: Map<number, string>,
 *   memory: boolean,
 * }} Job
 */

/** @type {Map<string, Job>} */
const live = new Map();

/** @param {Buffer} bytes */
function send(bytes) {
  process.stdout.write(bytes);
}

/**
 * A process's state letter, parent, group and start time (field 22 of its stat), or null.
 * @param {number} pid
 */
function statOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: f[0], pgrp: Number(f[2]), start: f[19] };
  } catch {
    return null;
  }
}

/**
 * Children of a process, from every one of its threads.
 * @param {number} pid
 * @returns {number[]}
 */
function childrenOf(pid) {
  /** @type {number[]} */
  const kids = [];
  let tasks;
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return kids;
  }
  for (const task of tasks) {
    try {
      const list = readFileSync(`/proc/${pid}/task/${task}/children`, 'latin1').trim();
      if (list) for (const kid of list.split(' ')) kids.push(Number(kid));
    } catch {
      // gone
    }
  }
  return kids;
}

/** @param {number} pid */
function residentBytes(pid) {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return match ? Number(match[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/**
 * @param {number} pid negative: a group
 * @param {NodeJS.Signals | 0} signal
 */
function kill(pid, signal) {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** libuv has not reaped the worker yet: its pid, and so its group id, are still its own. */
const unreaped = (/** @type {Job} */ job) => job.child.exitCode === null && job.child.signalCode === null;

/**
 * Signal a worker's group, only while the worker is unreaped.
 * @param {Job} job
 * @param {NodeJS.Signals} signal
 */
function signalGroup(job, signal) {
  if (unreaped(job)) kill(-job.pid, signal);
}

/**
 * Record the worker's descendants (pid and start time), and read their memory.
 * @param {Job} job
 * @param {boolean} measure
 * @returns {number} resident bytes of the tree, when measured
 */
function track(job, measure) {
  let bytes = 0;
  const todo = unreaped(job) ? [job.pid] : [];
  for (const [pid, start] of job.seen) {
    if (statOf(pid)?.start === start) todo.push(pid);
    else job.seen.delete(pid);
  }
  const visited = new Set();
  while (todo.length > 0) {
    const pid = /** @type {number} */ (todo.pop());
    if (visited.has(pid)) continue;
    visited.add(pid);
    if (measure) bytes += residentBytes(pid);
    for (const kid of childrenOf(pid)) {
      if (!job.seen.has(kid)) {
        const start = statOf(kid)?.start;
        if (start !== undefined) job.seen.set(kid, start);
      }
      todo.push(kid);
    }
  }
  return bytes;
}

let polls = 0;
/** @type {NodeJS.Timeout | null} */
let poller = null;
function poll() {
  const measure = spec?.memoryLimit !== undefined && ++polls % MEMORY_EVERY === 0;
  for (const job of live.values()) {
    const bytes = track(job, measure);
    if (measure && !job.memory && bytes > /** @type {number} */ (spec?.memoryLimit)) {
      job.memory = true;
      signalGroup(job, 'SIGKILL');
    }
  }
  if (live.size === 0 && poller) {
    clearInterval(poller);
    poller = null;
  }
}

/**
 * Kill what is left of a worker's tree. Each process remembered is checked against its start
 * time and stopped; a stopped process cannot reap, so its children are still its own while
 * they are found, stopped in turn, and killed. The group goes too (after the worker is reaped,
 * only while a process still holds its id; the check and the kill are two calls, so this is
 * narrower than the Perl edition's guarantee, not equal to it).
 * @param {Job} job
 */
function sweep(job) {
  /** @type {number[]} */
  const frozen = [];
  const stop = (/** @type {number} */ pid) => {
    if (kill(pid, 'SIGSTOP')) frozen.push(pid);
  };
  if (unreaped(job)) stop(job.pid);
  for (const [pid, start] of job.seen) if (statOf(pid)?.start === start) stop(pid);
  for (let i = 0; i < frozen.length; i++) for (const kid of childrenOf(frozen[i])) if (!frozen.includes(kid)) stop(kid);
  if (unreaped(job) || kill(-job.pid, 0)) kill(-job.pid, 'SIGKILL');
  for (const pid of frozen) kill(pid, 'SIGKILL');
  job.seen.clear();
}

/**
 * @param {string} id
 * @param {Buffer | undefined} stdin undefined: left open for an input frame
 */
function start(id, stdin) {
  if (!spec) throw new Error('spawn host: spawn before configure');
  const channel = spec.channel;
  if (channel === undefined) return launch(id, stdin, null);
  // A reused worker's IPC channel: a connection to the manager's socket, introduced by its id.
  const socket = createConnection(channel);
  socket.once('error', (/** @type {NodeJS.ErrnoException} */ err) => {
    send(frame(`${HOST.FAILED} ${id}`, [err.code ?? 'EUNKNOWN', 'connect', err.message].join('\0')));
  });
  socket.once('connect', () => socket.write(`${id}\n`, () => launch(id, stdin, socket)));
}

/**
 * @param {string} id
 * @param {Buffer | undefined} stdin
 * @param {import('node:net').Socket | null} socket the channel, given to the worker as fd 3
 */
function launch(id, stdin, socket) {
  const s = /** @type {import('./host-protocol.js').SpawnSpec} */ (spec);
  /** @type {import('node:child_process').StdioOptions} */
  const stdio = socket ? ['pipe', 2, 'pipe', socket] : s.answerFd === 3 ? ['pipe', 2, 'pipe', 'pipe'] : ['pipe', 'pipe', 'pipe'];
  const child = spawn(s.argv[0], s.argv.slice(1), { env: s.env, cwd: s.cwd, uid: s.uid, gid: s.gid, detached: true, stdio });
  socket?.destroy();
  // The answer on stdout, or on fd 3 with stdout going to this host's stderr.
  const answer = socket ? null : /** @type {import('node:stream').Readable | null} */ (child.stdio[s.answerFd ?? 1]);
  // libuv forks and execs synchronously: a pid means the command started, and a failure to
  // start comes as an 'error' event without one.
  const pid = child.pid;
  if (pid === undefined) {
    child.once('error', (err) => {
      const { code = 'EUNKNOWN', errno } = /** @type {NodeJS.ErrnoException} */ (err);
      const description = (errno !== undefined && getSystemErrorMap().get(errno)?.[1]) || err.message;
      send(frame(`${HOST.FAILED} ${id}`, [code, 'spawn', description].join('\0')));
    });
    return;
  }
  /** @type {Job} */
  const job = { child, pid, seen: new Map(), memory: false };
  live.set(id, job);
  poller ??= setInterval(poll, TRACK_MS);
  send(frame(`${HOST.SPAWNED} ${id} ${pid}`));
  /** @type {Buffer[]} */
  const out = [];
  let outBytes = 0;
  let overflow = false;
  let tail = Buffer.alloc(0);
  // After start, errors are failed kills or writes on a dying process; the exit follows.
  child.on('error', () => {});
  // A command that exits without reading its input makes the write fail with EPIPE.
  child.stdin?.on('error', () => {});
  if (stdin !== undefined) child.stdin?.end(stdin);
  answer?.on('data', (/** @type {Buffer} */ chunk) => {
    if (overflow) return;
    outBytes += chunk.length;
    if (outBytes > MAX_OUTPUT) {
      overflow = true;
      out.length = 0;
      signalGroup(job, 'SIGKILL');
      return;
    }
    out.push(chunk);
  });
  // Progress lines are taken out of the stderr forwarded (and of its tail) and sent on.
  const lines = new ProgressLines();
  const forward = (/** @type {Buffer} */ text) => {
    if (text.length === 0) return;
    process.stderr.write(text);
    tail = Buffer.concat([tail, text]);
    if (tail.length > STDERR_TAIL) tail = tail.subarray(tail.length - STDERR_TAIL);
  };
  child.stderr?.on('data', (/** @type {Buffer} */ chunk) => {
    const { text, values } = lines.push(chunk);
    for (const part of text) forward(part);
    for (const value of values) send(frame(`${HOST.PROGRESS} ${id}`, value));
  });
  child.stderr?.on('end', () => forward(lines.end()));
  child.once('exit', (code, signal) => {
    // Whatever the worker left goes with it; that also closes pipes a descendant inherited,
    // so 'close' cannot wait forever.
    sweep(job);
    live.delete(id);
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      forward(lines.end());
      const stdout = Buffer.concat(out);
      const header = `${HOST.EXITED} ${id} ${code ?? '-'} ${signal ?? '-'} ${overflow ? 1 : 0} ${stdout.length} ${tail.length} ${job.memory ? 1 : 0}\n`;
      send(Buffer.concat([Buffer.from(header, 'latin1'), stdout, tail]));
    };
    const timer = setTimeout(finish, FLUSH_LIMIT_MS);
    child.once('close', finish);
  });
}

const reader = new FrameReader();
process.stdin.on('data', (/** @type {Buffer} */ chunk) => {
  for (const { kind, fields, payload } of reader.push(chunk)) {
    const job = live.get(fields[0]);
    switch (kind) {
      case HOST.CONFIGURE:
        spec = parseConfigure(payload);
        break;
      case HOST.SPAWN:
        start(fields[0], fields[1] === '-' ? undefined : payload);
        break;
      case HOST.INPUT:
        if (job?.child.stdin && !job.child.stdin.destroyed) job.child.stdin.end(payload);
        break;
      case HOST.SIGNAL:
        if (job) signalGroup(job, /** @type {NodeJS.Signals} */ (fields[1]));
        break;
    }
  }
});

// The manager is gone (or done with us): no worker outlives it.
process.stdin.on('end', () => {
  for (const job of live.values()) sweep(job);
  process.exit(0);
});

// The manager decides when workers stop; a Ctrl-C reaching the whole terminal group must not
// kill the host under them.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => {});

send(frame(`${HOST.UP} ${process.pid} ${CONTAINMENT}`));
