// @ts-check
// The spawn host: a small process that starts command workers for the manager. Forking
// from the manager would copy its large heap's page tables on every task and make each page
// it writes afterwards fault (copy-on-write); a process this small forks at the machine's
// bare cost, on the other core. It also means command workers die with the manager: when
// the IPC channel closes, the host kills every group it started.
import { spawn } from 'node:child_process';
import { FLUSH_LIMIT_MS, HOST, MAX_OUTPUT, STDERR_TAIL, killGroup } from './protocol.js';

/** @typedef {import('./protocol.js').HostCommand} HostCommand */
/** @typedef {import('./protocol.js').HostEvent} HostEvent */


/** @type {Map<number, { child: import('node:child_process').ChildProcess, pid: number | undefined, pending: NodeJS.Signals | null }>} */
const live = new Map();

/** @param {HostEvent} event */
function send(event) {
  if (process.connected) process.send?.(event);
}

/** @param {Extract<HostCommand, { k: 'spawn' }>} command */
function start({ id, spec, stdin }) {
  const child = spawn(spec.argv[0], spec.argv.slice(1), {
    env: spec.env,
    cwd: spec.cwd,
    uid: spec.uid,
    gid: spec.gid,
    detached: true,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  /** @type {{ child: typeof child, pid: number | undefined, pending: NodeJS.Signals | null }} */
  const entry = { child, pid: undefined, pending: null };
  live.set(id, entry);
  /** @type {Buffer[]} */
  const out = [];
  let outBytes = 0;
  let overflow = false;
  let stderr = '';
  child.once('spawn', () => {
    entry.pid = child.pid;
    send({ k: HOST.SPAWNED, id, pid: /** @type {number} */ (child.pid) });
    if (entry.pending) killGroup(/** @type {number} */ (child.pid), entry.pending);
  });
  child.on('error', (err) => {
    if (entry.pid !== undefined) return; // a failed kill or write; the exit follows
    live.delete(id);
    const code = /** @type {NodeJS.ErrnoException} */ (err).code;
    send({ k: HOST.SPAWN_ERROR, id, error: { name: err.name, message: `${spec.argv.join(' ')}: ${err.message}`, ...(code ? { code } : {}) } });
  });
  // A command that exits without reading its input makes the write fail with EPIPE.
  child.stdin?.on('error', () => {});
  if (stdin !== undefined) child.stdin?.end(stdin);
  child.stdout?.on('data', (/** @type {Buffer} */ chunk) => {
    outBytes += chunk.length;
    if (outBytes > MAX_OUTPUT) {
      if (!overflow && entry.pid !== undefined) killGroup(entry.pid, 'SIGKILL');
      overflow = true;
      return;
    }
    out.push(chunk);
  });
  child.stderr?.on('data', (/** @type {Buffer} */ chunk) => {
    process.stderr.write(chunk);
    stderr = (stderr + chunk.toString('utf8')).slice(-STDERR_TAIL);
  });
  child.once('exit', (code, signal) => {
    // Whatever the worker left in its group goes with it; that also closes pipes a
    // grandchild inherited, so 'close' cannot wait forever.
    if (entry.pid !== undefined) killGroup(entry.pid, 'SIGKILL');
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      live.delete(id);
      send({ k: HOST.EXIT, id, code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: stderr.trim(), overflow });
    };
    const timer = setTimeout(finish, FLUSH_LIMIT_MS);
    child.once('close', finish);
  });
}

process.on('message', (/** @type {HostCommand} */ command) => {
  switch (command.k) {
    case HOST.SPAWN:
      return start(command);
    case HOST.STDIN: {
      const entry = live.get(command.id);
      if (entry && entry.child.stdin && !entry.child.stdin.destroyed) entry.child.stdin.end(command.data);
      return;
    }
    case HOST.SIGNAL: {
      const entry = live.get(command.id);
      if (!entry) return;
      if (entry.pid !== undefined) killGroup(entry.pid, command.signal);
      // Not started yet: the signal waits for the 'spawn' event instead of being lost.
      else if (entry.pending !== 'SIGKILL') entry.pending = command.signal;
      return;
    }
  }
});

// The manager decides when workers stop; a Ctrl-C reaching the whole terminal group must not
// kill the host under them.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => {});

// The manager is gone (or done with us): no worker outlives it.
process.on('disconnect', () => {
  for (const { pid } of live.values()) if (pid !== undefined) killGroup(pid, 'SIGKILL');
  process.exit(0);
});
