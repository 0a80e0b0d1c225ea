import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Absolute path of a fixture. */
export const fixture = (name: string): string => fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));

/**
 * Whether a pid is a live process, read from /proc (not from the pool's own counters). A
 * zombie counts as dead: it runs nothing, and one whose parent is gone is init's to reap.
 */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The state follows the parenthesised command name, which may itself hold spaces.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** The pids of `pids` that are still alive. */
export const alive = (pids: Iterable<number>): number[] => [...pids].filter(isAlive);

/** Wait until `predicate` holds, polling; throws with `what` after `ms`. */
export async function until(predicate: () => boolean, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Children of `parent` (direct), from /proc. */
export function childrenOf(parent: number): number[] {
  try {
    const tasks = readFileSync(`/proc/${parent}/task/${parent}/children`, 'latin1').trim();
    return tasks === '' ? [] : tasks.split(/\s+/).map(Number);
  } catch {
    return [];
  }
}

/** Every live descendant of `ancestor` (children, their children, ...), from /proc. */
export function descendantsOf(ancestor: number): number[] {
  const found: number[] = [];
  for (let next = childrenOf(ancestor); next.length > 0; next = next.flatMap(childrenOf)) found.push(...next);
  return found;
}

/** A process as /proc names it once and for all: a pid, and its start time (a pid is reused). */
export interface Proc {
  pid: number;
  start: string;
}

/** A process's state letter and start time (field 22 of its stat), or null when it is gone. */
export function statOf(pid: number): { state: string; ppid: number; start: string } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: fields[0], ppid: Number(fields[1]), start: fields[19] };
  } catch {
    return null;
  }
}

/** Whether a process is still running: same pid, same start time, not a zombie. */
export function running(proc: Proc): boolean {
  const stat = statOf(proc.pid);
  return stat !== null && stat.start === proc.start && stat.state !== 'Z' && stat.state !== 'X';
}

/** The processes of `procs` still running. */
export const stillRunning = (procs: Iterable<Proc>): Proc[] => [...procs].filter(running);

/** Processes noted in a file as `pid starttime` lines (by test/fixtures/escape.sh, spin.js). */
export function noted(file: string): Proc[] {
  try {
    return readFileSync(file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        const [pid, start] = line.split(' ');
        return { pid: Number(pid), start };
      });
  } catch {
    return [];
  }
}

/** Kill whatever of `procs` still runs (a test's own cleanup, after its assertions). */
export function killStill(procs: Iterable<Proc>): void {
  for (const proc of stillRunning(procs)) {
    try {
      process.kill(proc.pid, 'SIGKILL');
    } catch {
      // gone in between
    }
  }
}

/** The zombie children of `parent`. */
export const zombieChildrenOf = (parent: number): number[] => childrenOf(parent).filter((pid) => statOf(pid)?.state === 'Z');

/** The live processes (zombies excluded) of process group `pgid`, from every /proc/<pid>/stat. */
export function groupMembers(pgid: number): number[] {
  const members: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pgid && fields[0] !== 'Z' && fields[0] !== 'X') members.push(Number(entry));
    } catch {
      // gone
    }
  }
  return members;
}

