import { lstatSync, closeSync, open, openSync, readFileSync, readdirSync, readlinkSync, rename, renameSync, unlinkSync, write, writeFile, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { childrenOf, statOf } from '../child/proc-table.js';
import { OptionError } from '../errors.js';

/**
 * The ledger of live workers, for the worst case: a manager killed together with its spawn
 * host (and, for the Perl edition, the keepers: a kill of the manager's whole process group, or
 * an OOM kill of their cgroup) leaves its workers running, re-parented to init, and no one
 * left to kill them. So each manager keeps, in a state directory, the pid and start time of
 * every live worker (and of its keeper), and a manager that starts kills what a dead one left
 * (docs/containment.md, "A manager killed with its spawn host").
 *
 * - Each manager (each pool of a process) writes its own file, named by the pid namespace, its
 *   pid, its start time and a counter: `<ns>-<pid>-<start>-<n>.ledger`. A process is named
 *   once and for all by its pid and start time (field 22 of /proc/<pid>/stat, `starttime`,
 *   in clock ticks after boot: proc(5)): a pid alone is reused.
 * - A file is append-only lines: a header (`tidepool ledger 1 boot=<boot id>`), `+ <pid>
 *   <start> <pgid> <keeper> <keeperstart>` when a worker starts, `- <pid>` when it is reaped;
 *   rewritten from the live entries once it would hold more than twice as many lines as live
 *   workers plus COMPACT_SLACK, so its size stays bounded (~40 bytes a line).
 * - At start a manager sweeps only the files of managers that are dead (pid gone, or its start
 *   time differs), of its own pid namespace and boot. It claims a file by renaming it (so two
 *   managers never sweep the same one), kills what is left, and deletes it. A live manager's
 *   file is never touched.
 */

/** Lines a ledger may hold beyond twice its live entries before it is rewritten. */
export const COMPACT_SLACK = 1024;

/**
 * How long a removal may wait for a write, in ms. A worker's entry is written at once; its
 * removal rides with the next one (a stale entry is harmless: its pid is gone, or its start
 * time no longer matches), so a single-use pool costs one write per task, not two.
 */
export const REMOVAL_DELAY = 1_000;

/** One live worker as the ledger records it. */
export interface LedgerEntry {
  pid: number;
  /** Its start time: field 22 of /proc/<pid>/stat (clock ticks after boot), as written there. */
  start: string;
  /** Its process group: every worker leads its own, so this is its pid. */
  pgid: number;
  /** The keeper that holds it (Perl edition), or null (Node edition). */
  keeper: { pid: number; start: string } | null;
}

/** What a sweep did with one dead manager's ledger. */
export interface SweepReport {
  /** The dead manager: its pid and start time. */
  manager: { pid: number; start: string };
  /** The ledger file (deleted once swept). */
  file: string;
  /** Workers the ledger listed as live. */
  entries: number;
  /**
   * Processes killed: listed workers and keepers still running with their recorded start
   * time, the members of those workers' process groups (also of a listed worker that has
   * exited, when no process has its pid), and everything below any of them.
   */
  killed: number;
  /** Written before the machine's last boot: nothing of it can still run, nothing was killed. */
  stale: boolean;
}

/** `<ns>-<pid>-<start>-<n>.ledger`, and what it becomes while swept or rewritten. */
const FILE_NAME = /^(\d+)-(\d+)-(\d+)-(\d+)\.ledger(?:(\.tmp)|\.swept-by-(\d+)-(\d+))?$/;
const HEADER = 'tidepool ledger 1';

/** The process `pid` runs, is not a zombie, and is the one that started at `start`. */
function running(pid: number, start: string): boolean {
  const stat = statOf(pid);
  return stat !== null && stat.start === start && stat.state !== 'Z' && stat.state !== 'X';
}

/** This manager: pid namespace, pid, start time, boot id. */
interface Identity {
  ns: string;
  pid: number;
  start: string;
  boot: string;
}

let self: Identity | null = null;

function identity(): Identity {
  if (self === null) {
    let ns = '0';
    try {
      // `pid:[4026531836]`: the namespace's inode; pids name processes only within it.
      ns = /\d+/.exec(readlinkSync('/proc/self/ns/pid'))?.[0] ?? '0';
    } catch {
      // no namespaces: one space of pids
    }
    let boot = 'unknown';
    try {
      boot = readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim();
    } catch {
      // kept as unknown: a ledger is then never taken for an earlier boot's
    }
    self = { ns, pid: process.pid, start: statOf('self')?.start ?? '0', boot };
  }
  return self;
}

/** Ledgers this process has opened (the last part of a ledger's file name). */
let opened = 0;

/**
 * One manager's ledger of its live workers. Cheap until `open()`. Lines are queued and written
 * without blocking the event loop (a write of the disk's that stalls, as one of ~20 ms did under
 * load here, holds no task): an `add` at the end of the current turn, a `remove` with the next
 * add or after REMOVAL_DELAY; one write at a time, and what comes meanwhile goes in the next.
 * No fsync: the file outlives a killed process in the page cache, and a machine that crashes
 * takes its workers with it.
 */
export class Ledger {
  /** The state directory (absolute). */
  readonly dir: string;
  readonly #logger: Logger;
  #path: string | null = null;
  #fd: number | null = null;
  #header = '';
  /** Live entries by pid. */
  readonly #live = new Map<number, LedgerEntry>();
  #queued = '';
  #queuedLines = 0;
  /** Lines in the file, header excluded. */
  #lines = 0;
  /** A write (or a rewrite) is under way. */
  #busy = false;
  #scheduled = false;
  /** Something queued must be written now (an add, or a flush asked for). */
  #urgent = false;
  /** Writes queued removals if nothing else does first. */
  #timer: NodeJS.Timeout | null = null;
  /** Called once everything queued is written. */
  #waiters: (() => void)[] = [];

  constructor(dir: string, logger: Logger) {
    this.dir = dir;
    this.#logger = logger;
  }

  /** The ledger's file, once open. */
  get path(): string | null {
    return this.#path;
  }

  /** Live workers it holds. */
  get size(): number {
    return this.#live.size;
  }

  /**
   * Create this manager's file in the state directory. Throws `OptionError`
   * (TIDEPOOL_ERR_OPTION_INVALID, option `stateDir`) when it cannot be written.
   */
  open(): void {
    if (this.#fd !== null) return;
    const me = identity();
    const path = join(this.dir, `${me.ns}-${me.pid}-${me.start}-${++opened}.ledger`);
    this.#header = `${HEADER} boot=${me.boot}\n`;
    let fd: number | null = null;
    try {
      fd = openSync(path, 'ax', 0o600);
      writeSync(fd, this.#header);
    } catch (err) {
      if (fd !== null) {
        closeSync(fd);
        unlinkQuietly(path);
      }
      throw new OptionError('stateDir', `cannot be written: ${(err as Error).message}`);
    }
    this.#fd = fd;
    this.#path = path;
  }

  /** A worker started. */
  add(entry: LedgerEntry): void {
    this.#live.set(entry.pid, entry);
    this.#queue(lineOf(entry), true);
  }

  /** A worker was reaped (or is known to be gone). */
  remove(pid: number): void {
    if (this.#live.delete(pid)) this.#queue(`- ${pid}\n`, false);
  }

  /**
   * Kill what still runs of these workers, whose spawn host died (start times checked, as a
   * sweep does), and forget them. Returns how many processes were killed.
   */
  release(pids: number[]): number {
    const killed = killLeft(pids.flatMap((pid) => this.#live.get(pid) ?? []));
    for (const pid of pids) this.remove(pid);
    return killed;
  }

  /** Resolves once everything queued so far is in the file (or the ledger gave up writing). */
  flush(): Promise<void> {
    return new Promise((resolve) => {
      this.#waiters.push(resolve);
      this.#urgent = true;
      this.#schedule();
    });
  }

  /**
   * Write what is queued and stop. The file is deleted when no worker is left in it; otherwise
   * it stays for the next manager's sweep once this process is gone.
   */
  async close(): Promise<void> {
    await this.flush();
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#fd === null) return;
    closeSync(this.#fd);
    this.#fd = null;
    if (this.#live.size === 0 && this.#path) unlinkQuietly(this.#path);
  }

  #queue(line: string, urgent: boolean): void {
    if (this.#fd === null) return;
    this.#queued += line;
    this.#queuedLines++;
    if (urgent) {
      this.#urgent = true;
      this.#schedule();
    } else {
      this.#timer ??= setTimeout(() => {
        this.#timer = null;
        this.#urgent = true;
        this.#schedule();
      }, REMOVAL_DELAY).unref();
    }
  }

  /** Write at the end of this turn: a burst of spawns and reaps goes in one write. */
  #schedule(): void {
    if (this.#busy || this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => this.#next());
  }

  /** Start the next write, or the rewrite, or wake the waiters when there is nothing to do. */
  #next(): void {
    this.#scheduled = false;
    if (this.#busy) return;
    if (this.#fd === null || this.#queued === '') {
      this.#urgent = false;
      for (const wake of this.#waiters.splice(0)) wake();
      return;
    }
    // Only removals are queued: they wait for their timer, or the next add.
    if (!this.#urgent) return;
    this.#urgent = false;
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    this.#busy = true;
    if (this.#lines + this.#queuedLines > 2 * this.#live.size + COMPACT_SLACK) return this.#compact();
    const text = Buffer.from(this.#queued, 'latin1');
    const lines = this.#queuedLines;
    this.#queued = '';
    this.#queuedLines = 0;
    writeAll(this.#fd, text, (err) => {
      this.#busy = false;
      if (err) return this.#fail(err);
      this.#lines += lines;
      this.#next();
    });
  }

  /**
   * Rewrite the file from the live entries, which hold all that was queued: a new file renamed
   * over the old one (a manager killed in between leaves the old one whole). What comes
   * meanwhile is queued for the new file.
   */
  #compact(): void {
    const path = this.#path!;
    const tmp = `${path}.tmp`;
    this.#queued = '';
    this.#queuedLines = 0;
    const live = this.#live.size;
    const done = (err: NodeJS.ErrnoException | null) => {
      this.#busy = false;
      if (err) return this.#fail(err);
      this.#next();
    };
    writeFile(tmp, this.#header + [...this.#live.values()].map(lineOf).join(''), { mode: 0o600 }, (err) => {
      if (err) return done(err);
      rename(tmp, path, (err) => {
        if (err) return done(err);
        open(path, 'a', (err, fd) => {
          if (err) return done(err);
          if (this.#fd !== null) closeSync(this.#fd);
          this.#fd = fd;
          this.#lines = live;
          done(null);
        });
      });
    });
  }

  /** A write failed (a full disk): the pool goes on, without its ledger, and says so once. */
  #fail(err: Error): void {
    this.#logger.error({ err, stateDir: this.dir }, 'cannot write the ledger of live workers; going on without it');
    if (this.#fd !== null) closeSync(this.#fd);
    this.#fd = null;
    for (const wake of this.#waiters.splice(0)) wake();
  }
}

/** Write all of `bytes` at the end of the file (a write may take less than asked). */
function writeAll(fd: number, bytes: Buffer, done: (err: NodeJS.ErrnoException | null) => void): void {
  write(fd, bytes, 0, bytes.length, null, (err, written) => {
    if (err) return done(err);
    if (written < bytes.length) return writeAll(fd, bytes.subarray(written), done);
    done(null);
  });
}

/** An entry as the ledger writes it: `+ <pid> <start> <pgid> <keeper> <keeperstart>`. */
function lineOf(entry: LedgerEntry): string {
  const keeper = entry.keeper ? `${entry.keeper.pid} ${entry.keeper.start}` : '- -';
  return `+ ${entry.pid} ${entry.start} ${entry.pgid} ${keeper}\n`;
}

/** `<pid> <start> <pgid> <keeper> <keeperstart>` as an entry; null when it is not one. */
function parseEntry(text: string): LedgerEntry | null {
  const [pid, start, pgid, keeper, keeperStart] = text.split(' ');
  if (!/^\d+$/.test(pid ?? '') || !/^\d+$/.test(start ?? '') || !/^\d+$/.test(pgid ?? '')) return null;
  return {
    pid: Number(pid),
    start,
    pgid: Number(pgid),
    keeper: /^\d+$/.test(keeper ?? '') && /^\d+$/.test(keeperStart ?? '') ? { pid: Number(keeper), start: keeperStart } : null,
  };
}

/**
 * The live entries of a ledger's text, in order of its lines; `boot` is the boot id its header
 * names, or null when the text is no ledger. A torn last line is ignored.
 */
export function readLedger(text: string): { boot: string | null; entries: LedgerEntry[] } {
  const lines = text.split('\n');
  const header = /^tidepool ledger 1 boot=(\S+)$/.exec(lines[0] ?? '');
  if (!header) return { boot: null, entries: [] };
  const live = new Map<number, LedgerEntry>();
  for (const line of lines.slice(1)) {
    if (line.startsWith('+ ')) {
      const entry = parseEntry(line.slice(2));
      if (entry) live.set(entry.pid, entry);
    } else if (line.startsWith('- ')) {
      live.delete(Number(line.slice(2)));
    }
  }
  return { boot: header[1], entries: [...live.values()] };
}

/**
 * Sweep a state directory: for each ledger of a dead manager of this pid namespace, kill what
 * it left running and delete the file. The ledgers of live managers, and of other pid
 * namespaces, are not touched. Logs what it did for each (how many killed, which manager) and
 * returns it. Throws nothing: a ledger it cannot read or claim is logged and left.
 */
/** Whether `path` belongs to this process's user (a file that cannot be read is not). */
function ownedByMe(path: string): boolean {
  try {
    const uid = process.getuid?.();
    return uid === undefined || lstatSync(path).uid === uid;
  } catch {
    return false;
  }
}

export function sweepStateDir(dir: string, logger: Logger): SweepReport[] {
  const me = identity();
  const reports: SweepReport[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    logger.warn({ err, stateDir: dir }, 'cannot read the state directory; no ledger swept');
    return reports;
  }
  for (const name of names) {
    const m = FILE_NAME.exec(name);
    if (!m) continue;
    const [, ns, pidText, start, , tmp, byPid, byStart] = m;
    // Another pid namespace's pids are not this one's (a container sharing the directory).
    if (ns !== me.ns) continue;
    const pid = Number(pidText);
    if (running(pid, start)) continue;
    const path = join(dir, name);
    // Only this user's own ledgers are obeyed: another user's file could name any process.
    if (!ownedByMe(path)) {
      logger.warn({ file: path }, 'a ledger file not owned by this user; ignored');
      continue;
    }
    if (tmp !== undefined) {
      // A rewrite its manager did not finish: the ledger itself is still there.
      unlinkQuietly(path);
      continue;
    }
    // Claimed by a manager that is sweeping it now: its own.
    if (byPid !== undefined && running(Number(byPid), byStart)) continue;
    const base = name.replace(/\.swept-by-.*$/, '');
    const claimed = join(dir, `${base}.swept-by-${me.pid}-${me.start}`);
    try {
      renameSync(path, claimed);
    } catch {
      continue; // another manager claimed it first
    }
    let text: string;
    try {
      text = readFileSync(claimed, 'latin1');
    } catch (err) {
      logger.warn({ err, file: claimed }, 'cannot read the ledger of a dead manager; left as it is');
      continue;
    }
    const { boot, entries } = readLedger(text);
    const stale = boot !== me.boot;
    const killed = stale ? 0 : killLeft(entries);
    unlinkQuietly(claimed);
    const report: SweepReport = { manager: { pid, start }, file: join(dir, base), entries: entries.length, killed, stale };
    reports.push(report);
    const fields = { stateDir: dir, deadManager: pid, deadManagerStart: start, entries: entries.length, killed };
    if (boot === null) logger.warn(fields, `removed ${base}: not a ledger`);
    else if (stale) logger.info(fields, `removed the ledger of manager pid ${pid} from an earlier boot`);
    else if (killed > 0) {
      logger.warn(fields, `killed ${killed} process(es) left running by manager pid ${pid}, which died with its spawn host`);
    } else logger.info(fields, `swept the ledger of dead manager pid ${pid}: none of its ${entries.length} worker(s) was still running`);
  }
  return reports;
}

/**
 * Kill what still runs of `entries`, each process only while it is the one recorded (same pid
 * and start time). Listed keepers and workers are stopped first (SIGSTOP), then the members of
 * those workers' groups (the group id is theirs while its leader is held), then every child of
 * a stopped process, round after round: a stopped process does not exit, so its children stay
 * its own while they are found (a `setsid` grandchild too). Then all of it gets SIGKILL. The
 * start time is read before each stop: two system calls, so a pid could be reused in between
 * (microseconds, for a pid that had to run through the whole pid space first).
 */
function killLeft(entries: LedgerEntry[]): number {
  const frozen = new Set<number>();
  const stop = (pid: number) => {
    const stat = statOf(pid);
    if (stat === null || stat.state === 'Z' || stat.state === 'X') return;
    if (signal(pid, 'SIGSTOP')) frozen.add(pid);
  };
  const groups = new Set<number>();
  for (const entry of entries) {
    if (entry.keeper && running(entry.keeper.pid, entry.keeper.start)) stop(entry.keeper.pid);
    if (running(entry.pid, entry.start)) {
      stop(entry.pid);
      if (frozen.has(entry.pid)) groups.add(entry.pgid);
    } else if (entry.pgid === entry.pid && statOf(entry.pid) === null) {
      // The worker left (a module worker exits when its pipe to the host closes) but its
      // group may live on: the children it started. Linux gives no new process a pid still
      // in use as a process group's id, so with no process of that pid, whatever is in the
      // group is the worker's.
      groups.add(entry.pgid);
    }
  }
  if (groups.size > 0) {
    for (const group of groups) signal(-group, 'SIGSTOP');
    // Members whose parent left the group's tree were re-parented elsewhere: found by group.
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      const stat = statOf(Number(name));
      if (stat !== null && groups.has(stat.pgrp) && stat.state !== 'Z') frozen.add(Number(name));
    }
  }
  // A Set visits what is added while it is iterated: every generation below is reached.
  for (const pid of frozen) for (const child of childrenOf(pid)) if (!frozen.has(child)) stop(child);
  for (const group of groups) signal(-group, 'SIGKILL');
  let killed = 0;
  for (const pid of frozen) if (signal(pid, 'SIGKILL')) killed++;
  return killed;
}

function signal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // gone already
  }
}
