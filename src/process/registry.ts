/** How to signal a worker: through whoever reaps it (its spawn host), never by pid from here. */
export type Signaller = (signal: NodeJS.Signals) => void;

/**
 * Every live worker, outside XState: if the pool's actor fails (an action that throws leaves
 * children running, xstate#5153), these are killed anyway, each through its signaller (its
 * spawn host, which knows whether the pid is still the worker's). When the manager exits, a
 * spawn host's stdin closes and the host kills every tree it holds.
 */
export class ProcessRegistry {
  readonly #groups = new Map<number, Signaller>();
  readonly #parent: ProcessRegistry | null;

  /** A pool's registry has the process-wide one as parent: what it holds, the parent holds. */
  constructor(parent: ProcessRegistry | null = null) {
    this.#parent = parent;
  }

  add(pid: number, signaller: Signaller): void {
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

  /** Signal every registered worker through its signaller. */
  killAll(signal: NodeJS.Signals = 'SIGKILL'): void {
    for (const signaller of this.#groups.values()) signaller(signal);
  }
}


/** The registry of this manager process; its groups die with it. */
export const registry = new ProcessRegistry();

process.on('exit', () => registry.killAll('SIGKILL'));
