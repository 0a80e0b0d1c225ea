// @ts-check
// The spawn host, Node edition: starts workers for the manager (commands, and module workers
// that serve one task) and reports how they ended, in the frames of host-protocol.js. The
// manager uses it where no `perl` is installed (spawn-host.pl, the Perl edition, forks more
// cheaply). Either way the manager never forks its own large heap per task, and the workers
// die with the manager: when the manager's end of stdin closes, the host kills every group it
// started.
//
// Arguments: MAX_OUTPUT STDERR_TAIL FLUSH_LIMIT_MS.
import { spawn } from 'node:child_process';
import { getSystemErrorMap } from 'node:util';
import { FrameReader, HOST, frame, parseConfigure } from './host-protocol.js';
import { killGroup } from './protocol.js';

const [MAX_OUTPUT, STDERR_TAIL, FLUSH_LIMIT_MS] = process.argv.slice(2).map(Number);

/** @type {import('./host-protocol.js').SpawnSpec | null} */
let spec = null;

/** @type {Map<string, { child: import('node:child_process').ChildProcess, pid: number }>} */
const live = new Map();

/** @param {Buffer} bytes */
function send(bytes) {
  process.stdout.write(bytes);
}

/**
 * @param {string} id
 * @param {Buffer | undefined} stdin undefined: left open for an input frame
 */
function start(id, stdin) {
  if (!spec) throw new Error('spawn host: spawn before configure');
  const child = spawn(spec.argv[0], spec.argv.slice(1), {
    env: spec.env,
    cwd: spec.cwd,
    uid: spec.uid,
    gid: spec.gid,
    detached: true,
    // The answer on stdout, or on fd 3 with stdout going to this host's stderr.
    stdio: spec.answerFd === 3 ? ['pipe', 2, 'pipe', 'pipe'] : ['pipe', 'pipe', 'pipe'],
  });
  const answer = /** @type {import('node:stream').Readable | null} */ (child.stdio[spec.answerFd ?? 1]);
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
  live.set(id, { child, pid });
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
      killGroup(pid, 'SIGKILL');
      return;
    }
    out.push(chunk);
  });
  child.stderr?.on('data', (/** @type {Buffer} */ chunk) => {
    process.stderr.write(chunk);
    tail = Buffer.concat([tail, chunk]);
    if (tail.length > STDERR_TAIL) tail = tail.subarray(tail.length - STDERR_TAIL);
  });
  child.once('exit', (code, signal) => {
    // Whatever the worker left in its group goes with it; that also closes pipes a
    // grandchild inherited, so 'close' cannot wait forever.
    killGroup(pid, 'SIGKILL');
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      live.delete(id);
      const stdout = Buffer.concat(out);
      const header = `${HOST.EXITED} ${id} ${code ?? '-'} ${signal ?? '-'} ${overflow ? 1 : 0} ${stdout.length} ${tail.length}\n`;
      send(Buffer.concat([Buffer.from(header, 'latin1'), stdout, tail]));
    };
    const timer = setTimeout(finish, FLUSH_LIMIT_MS);
    child.once('close', finish);
  });
}

const reader = new FrameReader();
process.stdin.on('data', (/** @type {Buffer} */ chunk) => {
  for (const { kind, fields, payload } of reader.push(chunk)) {
    const entry = live.get(fields[0]);
    switch (kind) {
      case HOST.CONFIGURE:
        spec = parseConfigure(payload);
        break;
      case HOST.SPAWN:
        start(fields[0], fields[1] === '-' ? undefined : payload);
        break;
      case HOST.INPUT:
        if (entry?.child.stdin && !entry.child.stdin.destroyed) entry.child.stdin.end(payload);
        break;
      case HOST.SIGNAL:
        if (entry) killGroup(entry.pid, /** @type {NodeJS.Signals} */ (fields[1]));
        break;
    }
  }
});

// The manager is gone (or done with us): no worker outlives it.
process.stdin.on('end', () => {
  for (const { pid } of live.values()) killGroup(pid, 'SIGKILL');
  process.exit(0);
});

// The manager decides when workers stop; a Ctrl-C reaching the whole terminal group must not
// kill the host under them.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => {});

send(frame(`${HOST.UP} ${process.pid}`));
