import { readFileSync } from 'node:fs';
import { killGroup } from '../child/protocol.js';

export { killGroup };

/**
 * Every live worker process group, outside XState: if the pool's actor fails (an action that
 * throws leaves children running, xstate#5153) or the manager exits, these are killed anyway.
 */
export class ProcessRegistry {
  readonly #groups = new Set<number>();
  readonly #parent: ProcessRegistry | null;

  /** A pool's registry has the process-wide one as parent: what it holds, the parent holds. */
  constructor(parent: ProcessRegistry | null = null) {
    this.#parent = parent;
  }

  add(pid: number): void {
    this.#groups.add(pid);
    this.#parent?.add(pid);
  }

  delete(pid: number): void {
    this.#groups.delete(pid);
    this.#parent?.delete(pid);
  }

  get size(): number {
    return this.#groups.size;
  }

  pids(): number[] {
    return [...this.#groups];
  }

  /** Signal every registered process group; synchronous so it works in an `exit` handler. */
  killAll(signal: NodeJS.Signals = 'SIGKILL'): void {
    for (const pid of this.#groups) killGroup(pid, signal);
  }
}


/** Resident set size of a process in bytes, or null when it is gone. */
export function residentBytes(pid: number): number | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'latin1');
    const match = /VmRSS:\s+(\d+) kB/.exec(status);
    return match ? Number(match[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** The registry of this manager process; its groups die with it. */
export const registry = new ProcessRegistry();

process.on('exit', () => registry.killAll('SIGKILL'));
