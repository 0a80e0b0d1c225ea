import { killGroup } from '../child/protocol.js';

export { killGroup };

/** How to signal a worker: through whoever reaps it (its spawn host), never by pid from here. */
export type Signaller = (signal: NodeJS.Signals) => void;

/**
 * Every live worker, outside XState: if the pool's actor fails (an action that throws leaves
 * children running, xstate#5153), these are killed anyway. A worker registered with a
 * signaller is signalled through it (a spawn host, which knows whether the pid is still the
 * worker's); one without, by its process group. When the manager exits, a spawn host's stdin
 * closes and the host kills every tree it holds.
 */
export class ProcessRegistry {
  readonly #groups = new Map<number, Signaller | null>();
  readonly #parent: ProcessRegistry | null;

  /** A pool's registry has the process-wide one as parent: what it holds, the parent holds. */
  constructor(parent: ProcessRegistry | null = null) {
    this.#parent = parent;
  }

  add(pid: number, signaller: Signaller | null = null): void {
    this.#groups.set(pid, signaller);
    this.#parent?.add(pid, signaller);
  }

  delete(pid: number): void {
    this.#groups.delete(pid);
    this.#parent?.delete(pid);
  }

  get size(): number {
    return this.#groups.size;
  }

  pids(): number[] {
    return [...this.#groups.keys()];
  }

  /** Signal every registered worker; synchronous for those without a signaller. */
  killAll(signal: NodeJS.Signals = 'SIGKILL'): void {
    for (const [pid, signaller] of this.#groups) {
      if (signaller) signaller(signal);
      else killGroup(pid, signal);
    }
  }
}


/** The registry of this manager process; its groups die with it. */
export const registry = new ProcessRegistry();

process.on('exit', () => registry.killAll('SIGKILL'));
