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

/** Parent pid and process group of `pid`, from /proc/PID/stat (null when it is gone). */
const statOf = (pid: number): { ppid: number; pgrp: number } | null => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(fields[1]), pgrp: Number(fields[2]) };
  } catch {
    return null;
  }
};

/** Whether `pid` runs a spawn host (either edition), or a keeper (a fork of the Perl host). */
export const isSpawnHost = (pid: number): boolean => cmdline(pid).some((arg) => /spawn-host\.(pl|js)$/.test(arg));

/**
 * The worker processes of `manager`, one per worker: among its live descendants, those that
 * are no spawn host (nor a host's keeper) and whose parent is the manager, a host or a keeper
 * (a worker's own children are its tree, not workers). Every worker leads its own process
 * group, so what its tree leaves behind re-parented to a keeper (the keeper is a subreaper
 * and kills it before it reports the worker's end) is still that worker: one per group. A
 * child of a host in the host's own group is a keeper (a fork of the host), even once its
 * command line is gone while it exits. A child of the manager in the manager's group (a leak,
 * not a worker started as one) counts on its own.
 */
export function workerProcesses(manager = process.pid): number[] {
  const all = descendantsOf(manager).filter(isAlive);
  const hosts = new Set(all.filter(isSpawnHost));
  const own = new Set([statOf(manager)?.pgrp, ...[...hosts].map((pid) => statOf(pid)?.pgrp)]);
  const groups = new Map<number, number>();
  const loose: number[] = [];
  for (const pid of all) {
    if (hosts.has(pid)) continue;
    const stat = statOf(pid);
    if (stat === null || (stat.ppid !== manager && !hosts.has(stat.ppid))) continue;
    if (stat.ppid !== manager && own.has(stat.pgrp)) continue;
    if (own.has(stat.pgrp)) loose.push(pid);
    else if (!groups.has(stat.pgrp) || pid === stat.pgrp) groups.set(stat.pgrp, pid);
  }
  return [...groups.values(), ...loose].sort((a, b) => a - b);
}

/** How a process stands in the table, for a failure message. */
const describe = (pid: number): string => {
  const stat = statOf(pid);
  return `${pid} (${cmdline(pid).join(' ').trim()}; parent ${stat?.ppid}, group ${stat?.pgrp})`;
};

/** Throws when the manager has more worker processes than `concurrency`. */
export function checkWorkerBound(concurrency: number, manager = process.pid): void {
  const workers = workerProcesses(manager);
  if (workers.length > concurrency) {
    throw new Error(`${workers.length} worker processes (${workers.map(describe).join(', ')}) > concurrency ${concurrency}`);
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
