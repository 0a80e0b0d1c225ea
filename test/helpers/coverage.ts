import type {
  AnyActorRef,
  AnyActorScope,
  AnyEventObject,
  AnyMachineSnapshot,
  AnyStateMachine,
  AnyStateNode,
  AnyTransitionDefinition,
  InspectionEvent,
} from 'xstate';

/**
 * Coverage of a machine's definition: every state node and every TransitionDefinition
 * (`on` handlers per event and per guarded branch, `always` branches, `after` delays, invoke
 * `onDone`/`onError`), in every node including nested ones and the root.
 *
 * Transitions are named by position, not by object identity: `machine.provide()` builds new
 * StateNodes (and new TransitionDefinition objects) from the same config, and both the
 * traversal and each execution use their own provided copy.
 */

/** Every state node of `machine`, the root first. */
export function stateNodes(machine: AnyStateMachine): AnyStateNode[] {
  const out: AnyStateNode[] = [];
  const walk = (node: AnyStateNode) => {
    out.push(node);
    for (const child of Object.values(node.states) as AnyStateNode[]) walk(child);
  };
  walk(machine.root);
  return out;
}

const guardName = (t: AnyTransitionDefinition): string | null => {
  const g = t.guard as unknown;
  if (g === undefined) return null;
  if (typeof g === 'string') return g;
  if (typeof g === 'function') return g.name || 'inline';
  return (g as { type?: string }).type ?? 'guard';
};

/** A stable name for a transition: its source node, its event and its place among that event's branches. */
export function transitionKey(t: AnyTransitionDefinition): string {
  const source = t.source as AnyStateNode;
  const list: readonly AnyTransitionDefinition[] =
    t.eventType === '' ? (source.always ?? []) : (source.transitions.get(t.eventType) ?? []);
  const index = list.indexOf(t);
  if (index < 0) throw new Error(`transition ${t.eventType || 'always'} not found on ${source.id}`);
  return `${source.id} ${t.eventType === '' ? 'always' : `on ${t.eventType}`}[${index}]`;
}

/** The key with what a reader needs to find the transition: guard and targets. */
export function transitionLabel(t: AnyTransitionDefinition): string {
  const guard = guardName(t);
  const targets = t.target?.map((n) => n.id).join(', ') ?? '(no target)';
  return `${transitionKey(t)}${guard ? ` if ${guard}` : ''} → ${targets}`;
}

export interface Definition {
  machineId: string;
  /** State node ids. */
  states: string[];
  /** Transition key → label. */
  transitions: Map<string, string>;
}

/** Every state node and every TransitionDefinition of `machine`, from its definition. */
export function enumerate(machine: AnyStateMachine): Definition {
  const states: string[] = [];
  const transitions = new Map<string, string>();
  for (const node of stateNodes(machine)) {
    states.push(node.id);
    // `transitions` holds `on`, invoke onDone/onError and `after` (as xstate.after.* events).
    for (const list of node.transitions.values()) for (const t of list) transitions.set(transitionKey(t), transitionLabel(t));
    for (const t of node.always ?? []) transitions.set(transitionKey(t), transitionLabel(t));
  }
  return { machineId: machine.id, states, transitions };
}

const machineIdOf = (t: AnyTransitionDefinition): string => (t.source as AnyStateNode).machine.id;

/** Ids of the active state nodes of a machine snapshot (every level, the root included). */
export const activeNodeIds = (snapshot: AnyMachineSnapshot): string[] => snapshot._nodes.map((n) => n.id);

/** What was taken, measured on execution from inspection events. */
export class Coverage {
  readonly states = new Set<string>();
  readonly transitions = new Set<string>();
  constructor(readonly definition: Definition) {}

  /** Feed every inspection event of an actor system here (the `inspect` option of createActor). */
  observe = (event: InspectionEvent): void => {
    if (event.type === '@xstate.microstep') {
      for (const t of event._transitions) if (machineIdOf(t) === this.definition.machineId) this.transitions.add(transitionKey(t));
      this.addSnapshot(event.snapshot);
    } else if (event.type === '@xstate.snapshot') {
      this.addSnapshot(event.snapshot);
    }
  };

  private addSnapshot(snapshot: unknown): void {
    const s = snapshot as Partial<AnyMachineSnapshot>;
    if (!s._nodes || s.machine?.id !== this.definition.machineId) return;
    for (const id of activeNodeIds(s as AnyMachineSnapshot)) this.states.add(id);
  }

  uncoveredStates(): string[] {
    return this.definition.states.filter((id) => !this.states.has(id));
  }

  /** Keys of the transitions never taken. */
  uncoveredTransitions(): string[] {
    return [...this.definition.transitions.keys()].filter((key) => !this.transitions.has(key));
  }

  /** `key if guard → targets` for each transition never taken. */
  uncoveredLabels(): string[] {
    return this.uncoveredTransitions().map((key) => this.definition.transitions.get(key)!);
  }

  summary(name: string): string {
    const { states, transitions } = this.definition;
    const s = states.filter((id) => this.states.has(id)).length;
    const t = [...transitions.keys()].filter((k) => this.transitions.has(k)).length;
    return `${name}: states ${s}/${states.length}, transitions ${t}/${transitions.size}`;
  }
}

/** An action as the pure transition returns it, before any of it runs. */
export interface PlannedAction {
  type: string;
  params: unknown;
}

export interface PureStep<TSnapshot> {
  snapshot: TSnapshot;
  /** Built-in actions to carry out (xstate.sendTo, xstate.spawnChild, ...) and custom actions, in order. */
  actions: PlannedAction[];
  /** Keys of the transitions taken, in microstep order. */
  transitions: string[];
  /** Set when the transition threw: the actor would end in `error` with it. */
  thrown?: { error: unknown };
}

/**
 * An actor scope for a pure macrostep: nothing is executed or deferred; actions are collected,
 * microsteps reported. `self` must be a real actor ref (spawned children take their system
 * from it) and gives `sendParent` its target through `self._parent`.
 */
function collectingScope(self: AnyActorRef, actions: PlannedAction[], transitions: string[]): AnyActorScope {
  const system = {
    _sendInspectionEvent: (event: InspectionEvent) => {
      if (event.type === '@xstate.microstep') for (const t of event._transitions) transitions.push(transitionKey(t));
    },
  };
  return {
    self,
    id: self.id,
    sessionId: self.sessionId,
    logger: () => {},
    defer: () => {},
    emit: () => {},
    stopChild: () => {},
    system: system as unknown as AnyActorScope['system'],
    actionExecutor: (action) => {
      actions.push({ type: action.type, params: action.params });
    },
  };
}

/** One macrostep of `machine` from `snapshot` on `event`, computed purely. */
export function pureTransition<TSnapshot extends AnyMachineSnapshot>(
  machine: AnyStateMachine,
  snapshot: TSnapshot,
  event: AnyEventObject,
  self: AnyActorRef,
): PureStep<TSnapshot> {
  const actions: PlannedAction[] = [];
  const transitions: string[] = [];
  try {
    const next = machine.transition(snapshot, event, collectingScope(self, actions, transitions)) as TSnapshot;
    return { snapshot: next, actions, transitions };
  } catch (error) {
    return { snapshot, actions, transitions, thrown: { error } };
  }
}

/** The initial snapshot of `machine`, computed purely, with its entry actions. */
export function pureInitial<TSnapshot extends AnyMachineSnapshot>(
  machine: AnyStateMachine,
  input: unknown,
  self: AnyActorRef,
): PureStep<TSnapshot> {
  const actions: PlannedAction[] = [];
  const transitions: string[] = [];
  const snapshot = machine.getInitialSnapshot(collectingScope(self, actions, transitions), input) as TSnapshot;
  return { snapshot, actions, transitions };
}

/** Whether `event` enables any transition of `snapshot` (guards evaluated). */
export const enables = (snapshot: AnyMachineSnapshot, event: AnyEventObject): boolean =>
  snapshot.machine.getTransitionData(snapshot, event).length > 0;

/** The `xstate.after.*` events the active state nodes of `snapshot` wait for, with their delay. */
export function pendingDelays(snapshot: AnyMachineSnapshot): { event: AnyEventObject; delay: string | number }[] {
  const out: { event: AnyEventObject; delay: string | number }[] = [];
  const seen = new Set<string>();
  for (const node of snapshot._nodes) {
    for (const t of node.after) {
      if (seen.has(t.eventType)) continue;
      seen.add(t.eventType);
      out.push({ event: { type: t.eventType }, delay: t.delay as string | number });
    }
  }
  return out;
}

/** Keys of the transitions of machine `machineId` a microstep inspection event took. */
export const transitionKeysOf = (event: InspectionEvent, machineId: string): string[] =>
  event.type === '@xstate.microstep'
    ? event._transitions.filter((t) => machineIdOf(t) === machineId).map(transitionKey)
    : [];

/**
 * The pool's worker actors, as an inspector sees them: each worker is an actor of its own, the
 * root of its own XState system (src/worker-actors.ts), so it is found by its root events, not
 * among the pool machine's children. Live from its creation until its snapshot stops being
 * active (it reached `reaped`, or its machine failed).
 */
export class WorkerActorTracker {
  readonly #actors = new Map<string, AnyActorRef>();
  /** Worker actors created so far. */
  started = 0;

  /**
   * The worker actors still active, by worker id. Read from each actor's own snapshot: an actor
   * tells its host it ended (and the pool hears of it) before its own final snapshot reaches
   * the inspector.
   */
  get live(): ReadonlyMap<string, AnyActorRef> {
    for (const [id, ref] of this.#actors) if (ref.getSnapshot().status !== 'active') this.#actors.delete(id);
    return this.#actors;
  }

  /** Feed every inspection event here (the `inspect` option); true when it was a worker's root event. */
  observe = (event: InspectionEvent): boolean => {
    const ref = event.actorRef as AnyActorRef & { logic?: { id?: string } };
    // The worker machine itself (the pool shows it to inspectors as its child; its process
    // actor is a logic of another kind).
    if (ref.logic?.id !== 'worker') return false;
    if (event.type === '@xstate.actor') {
      this.started++;
      this.#actors.set(ref.id, ref);
    }
    return true;
  };
}
