// @ts-check
// The process table as /proc shows it, for the Node spawn host and the manager's ledger of live
// workers: plain JavaScript without dependencies, so that the host loads it cheaply.

/** @typedef {{ state: string, ppid: number, pgrp: number, start: string }} ProcStat */

import { readFileSync, readdirSync } from 'node:fs';

/**
 * A process's state letter (R, S, Z, ...), parent, group and start time (field 22 of
 * /proc/<pid>/stat, clock ticks after boot, as text), or null when it is gone. A pid names a
 * process once and for all only with its start time: pids are reused.
 * @param {number | 'self'} pid
 * @returns {ProcStat | null}
 */
export function statOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The fields after the command name, which is in parentheses and may hold spaces.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: f[0], ppid: Number(f[1]), pgrp: Number(f[2]), start: f[19] };
  } catch {
    return null;
  }
}

/**
 * Children of a process, from every one of its threads.
 * @param {number} pid
 * @returns {number[]}
 */
export function childrenOf(pid) {
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
