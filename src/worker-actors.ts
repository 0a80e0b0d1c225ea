import { createActor } from 'xstate';
import type { Actor, ActorOptions, InspectionEvent, Observer } from 'xstate';
import type { PoolEvent, SpawnParams } from '../machines/pool.js';
import type { WorkerReport } from '../machines/types.js';
import type { workerMachine, WorkerCommand, WorkerContext } from '../machines/worker.js';

type WorkerLogic = typeof workerMachine;

/**
 * The pool machine's workers, each an actor of its own (the `spawnWorker`, `tellWorker` and
 * `killWorkers` slots): every report a worker emits goes to the pool machine, and so does its
 * end (`worker.done`, or `worker.error` when its machine failed) with the phase it last
 * reported and the delivery it still held. Not XState children of the pool: a child spawned
 * or stopped copies the parent's whole `snapshot.children`, and a stopped actor scans every
 * timer of its system, so a pool of thousands of children pays per task for each of them.
 */
export class WorkerActors {
  readonly #logic: WorkerLogic;
  readonly #toPool: (event: PoolEvent) => void;
  readonly #options: Pick<ActorOptions<WorkerLogic>, 'clock'> & { inspect?: Observer<InspectionEvent> };
  readonly #live = new Map<string, Actor<WorkerLogic>>();

  constructor(
    logic: WorkerLogic,
    toPool: (event: PoolEvent) => void,
    options: Pick<ActorOptions<WorkerLogic>, 'clock'> & { inspect?: Observer<InspectionEvent> } = {},
  ) {
    this.#logic = logic;
    this.#toPool = toPool;
    this.#options = options;
  }

  /** Live worker actors, by worker id. */
  get live(): ReadonlyMap<string, Actor<WorkerLogic>> {
    return this.#live;
  }

  spawn(input: SpawnParams): void {
    const { clock, inspect } = this.#options;
    const actor = createActor(this.#logic, { id: input.workerId, input, ...(clock ? { clock } : {}), ...(inspect ? { inspect } : {}) });
    this.#live.set(input.workerId, actor);
    // Reports are queued by the pool machine when it is mid-transition, in order.
    actor.on('*', (report) => this.#toPool(report));
    const ended = (end: { type: 'worker.done'; report: WorkerReport } | { type: 'worker.error'; error: unknown }) => {
      this.#live.delete(input.workerId);
      const { reported, deliveryId } = actor.getSnapshot().context as WorkerContext;
      this.#toPool({ ...end, workerId: input.workerId, phase: reported, held: deliveryId });
    };
    actor.subscribe({
      complete: () => ended({ type: 'worker.done', report: actor.getSnapshot().output! }),
      error: (error) => ended({ type: 'worker.error', error }),
    });
    actor.start();
  }

  /** A command for a live worker; one that has ended gives back what it never saw through its end event. */
  tell(workerId: string, command: WorkerCommand): void {
    const actor = this.#live.get(workerId);
    if (actor?.getSnapshot().status === 'active') actor.send(command);
  }

  /**
   * The live worker holding `deliveryId` (assigned, starting with it, or running it), or null.
   * A scan of the live workers: for a cancel, which is rare, rather than an index kept up on
   * every task.
   */
  holding(deliveryId: string): string | null {
    for (const [workerId, actor] of this.#live) {
      if ((actor.getSnapshot().context as WorkerContext).deliveryId === deliveryId) return workerId;
    }
    return null;
  }

  killAll(): void {
    for (const actor of this.#live.values()) actor.send({ type: 'worker.kill' });
  }

  /** Stop every actor at once (after the pool machine itself failed). */
  stopAll(): void {
    for (const actor of this.#live.values()) actor.stop();
    this.#live.clear();
  }
}
