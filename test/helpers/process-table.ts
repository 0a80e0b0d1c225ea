import { readFileSync } from 'node:fs';
import { descendantsOf, isAlive, until } from './procs.js';

/**
 * Bounds read from the process table (/proc), not from the pool's own counters or events: what
 * the manager has started, however it started it (forked itself, or through a spawn host).
 */

const cmdline = (pid: number): string[] => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0');
  } catch {
    return [];
  }
};

const parentOf = (pid: number): number | null => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return null;
  }
};

/** Whether `pid` runs a spawn host (either edition). */
export const isSpawnHost = (pid: number): boolean => cmdline(pid).some((arg) => /spawn-host\.(pl|js)$/.test(arg));

/**
 * The worker processes of `manager`: every live descendant that is not a spawn host and whose
 * parent is the manager or a spawn host (a worker's own children are its tree, not workers).
 */
export function workerProcesses(manager = process.pid): number[] {
  const all = descendantsOf(manager).filter(isAlive);
  const hosts = new Set(all.filter(isSpawnHost));
  return all.filter((pid) => {
    if (hosts.has(pid)) return false;
    const parent = parentOf(pid);
    return parent === manager || (parent !== null && hosts.has(parent));
  });
}

/** Throws when the manager has more worker processes than `concurrency`. */
export function checkWorkerBound(concurrency: number, manager = process.pid): void {
  const workers = workerProcesses(manager);
  if (workers.length > concurrency) {
    throw new Error(`${workers.length} worker processes (${workers.join(', ')}) > concurrency ${concurrency}`);
  }
}

/**
 * Waits until `manager` has no live descendant at all (workers, their children, spawn hosts:
 * a pool that has stopped lets its host go, and the host kills what it holds and exits);
 * throws naming what is left after `ms`.
 */
export async function untilNoDescendants(ms = 2_000, manager = process.pid): Promise<void> {
  try {
    await until(() => descendantsOf(manager).filter(isAlive).length === 0, 'the manager to have no descendants', ms);
  } catch {
    const left = descendantsOf(manager).filter(isAlive);
    throw new Error(`descendants still alive: ${left.map((pid) => `${pid} (${cmdline(pid).join(' ').trim()})`).join(', ')}`);
  }
}
