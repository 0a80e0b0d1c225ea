/**
 * The machines' definitions as data, a Mermaid diagram, or XState code: what `tidepool
 * machines` prints and `docs/machines.md` holds. Read from the machines themselves (XState's
 * state nodes), so a diagram cannot drift from the code it draws.
 */
import type { AnyStateMachine } from 'xstate';

/** One transition as drawn: the event, where it goes (null: stays), its guard and actions. */
export interface TransitionShape {
  /** The event type; `after <delay>` transitions have `delay` instead, `always` ones neither. */
  event?: string;
  /** A named delay (`after`), with its value in ms. */
  delay?: { name: string; ms: number | null };
  /** Target state paths relative to the machine (`terminating.signalled`); empty: no target. */
  targets: string[];
  guard: string | null;
  actions: string[];
}

/** One state node, its children nested. */
export interface StateShape {
  /** Path relative to the machine (`terminating.awaitingExit`); `''` for the root. */
  path: string;
  type: 'atomic' | 'compound' | 'parallel' | 'final' | 'history';
  /** The initial child's path, for a compound state. */
  initial: string | null;
  entry: string[];
  exit: string[];
  /** Actors invoked while in the state (`src`). */
  invoke: string[];
  on: TransitionShape[];
  after: TransitionShape[];
  always: TransitionShape[];
  states: StateShape[];
}

/** A machine's whole definition: its states and its named delays in ms. */
export interface MachineShape {
  id: string;
  /** Each delay's value in ms (null: computed at run time, and no value was given). */
  delays: Record<string, number | null>;
  /** Delays the machine computes at run time (from its context); a value given is their base. */
  computed?: string[];
  root: StateShape;
}

/** Minimal views of XState's state node objects (they are public but loosely typed). */
interface NodeView {
  id: string;
  path: string[];
  type: StateShape['type'];
  initial?: { target: NodeView[] };
  entry: unknown[];
  exit: unknown[];
  invoke: { src: unknown; id: string }[];
  transitions: Map<string, TransitionView[]>;
  after: { delay: unknown; eventType: string }[];
  always?: TransitionView[];
  states: Record<string, NodeView>;
}
interface TransitionView {
  eventType: string;
  target?: readonly NodeView[];
  guard?: unknown;
  actions: readonly unknown[];
}

/**
 * The actions XState adds for itself to run `after` delays (a delayed raise on entry, its
 * cancel on exit): implementation, not design. The machines raise and cancel nothing else.
 */
const isDelayRaise = (action: unknown): boolean => {
  const type = typeof action === 'function' ? (action as { type?: string }).type : undefined;
  return type === 'xstate.raise' || type === 'xstate.cancel';
};

/**
 * A name for an action or guard: its string, its `type`, or for an inline function the
 * builtin it is (`assign`, `raise`, ...) marked `inline:` (the machines name every one; a test
 * checks that none is inline).
 */
export function nameOf(item: unknown): string {
  if (typeof item === 'string') return item;
  if (typeof item === 'function') {
    const type = (item as { type?: string }).type;
    return `inline:${type ?? (item.name || 'function')}`;
  }
  if (item && typeof item === 'object' && 'type' in item) return String((item as { type: unknown }).type);
  return 'inline:unknown';
}

const relative = (node: NodeView): string => node.path.join('.');

function transition(t: TransitionView, extra: Partial<TransitionShape>): TransitionShape {
  return {
    ...extra,
    targets: (t.target ?? []).map(relative),
    guard: t.guard === undefined ? null : nameOf(t.guard),
    actions: t.actions.filter((a) => !isDelayRaise(a)).map(nameOf),
  };
}

/**
 * Describe `machine`. `delays` overrides its named delays' values (ms), as a pool configured
 * with options would run them; a delay the machine computes at run time is `null`.
 */
export function describeMachine(machine: AnyStateMachine, delays: Record<string, number> = {}): MachineShape {
  const defaults = (machine.implementations.delays ?? {}) as Record<string, unknown>;
  const values: Record<string, number | null> = {};
  const computed: string[] = [];
  for (const [name, value] of Object.entries(defaults)) {
    if (typeof value !== 'number') computed.push(name);
    values[name] = delays[name] ?? (typeof value === 'number' ? value : null);
  }
  const walk = (node: NodeView): StateShape => {
    const afterEvents = new Map(node.after.map((a) => [a.eventType, a.delay]));
    const on: TransitionShape[] = [];
    const after: TransitionShape[] = [];
    for (const [event, list] of node.transitions) {
      for (const t of list) {
        if (afterEvents.has(event)) {
          const delay = afterEvents.get(event);
          const name = typeof delay === 'string' ? delay : String(delay);
          const ms = typeof delay === 'number' ? delay : (values[name] ?? null);
          after.push(transition(t, { delay: { name, ms } }));
        } else {
          on.push(transition(t, { event }));
        }
      }
    }
    return {
      path: relative(node),
      type: node.type,
      initial: node.type === 'compound' && node.initial ? relative(node.initial.target[0]!) : null,
      entry: node.entry.filter((a) => !isDelayRaise(a)).map(nameOf),
      exit: node.exit.filter((a) => !isDelayRaise(a)).map(nameOf),
      invoke: node.invoke.map((i) => (typeof i.src === 'string' ? i.src : i.id)),
      on,
      after,
      always: (node.always ?? []).map((t) => transition(t, {})),
      states: Object.values(node.states).map(walk),
    };
  };
  return { id: machine.id, delays: values, ...(computed.length > 0 ? { computed } : {}), root: walk(machine.root as unknown as NodeView) };
}

/** Every action and guard name the machine's states use, inline ones included (`inline:...`). */
export function namesIn(shape: MachineShape): { actions: Set<string>; guards: Set<string> } {
  const actions = new Set<string>();
  const guards = new Set<string>();
  const visit = (s: StateShape) => {
    for (const a of [...s.entry, ...s.exit]) actions.add(a);
    for (const t of [...s.on, ...s.after, ...s.always]) {
      for (const a of t.actions) actions.add(a);
      if (t.guard !== null) guards.add(t.guard);
    }
    s.states.forEach(visit);
  };
  visit(shape.root);
  return { actions, guards };
}

// ---- Mermaid ----

const mermaidId = (path: string): string => path.replace(/\./g, '_');

/** XState's own event names, shortened for a diagram. */
function eventLabel(event: string): string {
  const done = /^xstate\.done\.actor\.(.+)$/.exec(event);
  if (done) return `done(${done[1]})`;
  const error = /^xstate\.error\.actor\.(.+)$/.exec(event);
  if (error) return `error(${error[1]})`;
  return event;
}

function label(t: TransitionShape): string {
  let text: string;
  if (t.delay) text = `after ${t.delay.name}${t.delay.ms === null ? '' : ` (${t.delay.ms} ms)`}`;
  else if (t.event) text = eventLabel(t.event);
  else text = 'always';
  if (t.guard !== null) text += ` [${t.guard}]`;
  return text;
}

/**
 * A Mermaid `stateDiagram-v2` of the machine: initial states from `[*]`, final ones to
 * `[*]`, every transition with a target labelled with its event (`after <delay> (<ms> ms)`
 * for delays, `always` for eventless ones) and its guard in brackets. Transitions without a
 * target (bookkeeping that stays in the state) are left out: the JSON form has them.
 */
export function toMermaid(shape: MachineShape): string {
  // Each transition is drawn in the block of the deepest compound state holding both its ends:
  // one drawn inside a block would pull its target into it.
  const ancestors = (path: string): string[] => {
    const parts = path.split('.');
    return ['', ...parts.slice(0, -1).map((_, i) => parts.slice(0, i + 1).join('.'))];
  };
  const drawnIn = new Map<string, string[]>();
  const collect = (s: StateShape) => {
    for (const t of [...s.on, ...s.after, ...s.always]) {
      for (const target of t.targets) {
        const mine = ancestors(s.path);
        const theirs = new Set(ancestors(target));
        const block = mine.filter((a) => theirs.has(a)).at(-1)!;
        const list = drawnIn.get(block) ?? [];
        list.push(`${mermaidId(s.path)} --> ${mermaidId(target)} : ${label(t)}`);
        drawnIn.set(block, list);
      }
    }
    s.states.forEach(collect);
  };
  collect(shape.root);
  const lines = ['stateDiagram-v2'];
  const emit = (s: StateShape, indent: string) => {
    const name = s.path.split('.').pop()!;
    const inner = s.path === '' ? indent : `${indent}  `;
    if (s.path !== '') lines.push(`${indent}state "${name}" as ${mermaidId(s.path)} {`);
    for (const c of s.states) {
      if (c.states.length === 0) lines.push(`${inner}state "${c.path.split('.').pop()}" as ${mermaidId(c.path)}`);
    }
    if (s.initial !== null) lines.push(`${inner}[*] --> ${mermaidId(s.initial)}`);
    for (const c of s.states) if (c.states.length > 0) emit(c, inner);
    for (const line of drawnIn.get(s.path) ?? []) lines.push(`${inner}${line}`);
    for (const c of s.states) if (c.type === 'final') lines.push(`${inner}${mermaidId(c.path)} --> [*]`);
    if (s.path !== '') lines.push(`${indent}}`);
  };
  emit(shape.root, '  ');
  return `${lines.join('\n')}\n`;
}

// ---- XState code (Stately Studio imports `setup(...).createMachine(...)`) ----

function configOf(s: StateShape, machineId: string): Record<string, unknown> {
  const config: Record<string, unknown> = {};
  const targetOf = (t: TransitionShape) => {
    if (t.targets.length === 0) return undefined;
    const ids = t.targets.map((p) => `#${machineId}.${p}`);
    return ids.length === 1 ? ids[0] : ids;
  };
  const shapeOf = (t: TransitionShape) => {
    const out: Record<string, unknown> = {};
    const target = targetOf(t);
    if (target !== undefined) out.target = target;
    if (t.guard !== null) out.guard = t.guard;
    if (t.actions.length > 0) out.actions = t.actions;
    return out;
  };
  const group = (list: TransitionShape[], key: (t: TransitionShape) => string) => {
    const out: Record<string, unknown[]> = {};
    for (const t of list) (out[key(t)] ??= []).push(shapeOf(t));
    return out;
  };
  if (s.type !== 'atomic' && s.type !== 'compound') config.type = s.type;
  if (s.initial !== null) config.initial = s.initial.split('.').pop();
  if (s.entry.length > 0) config.entry = s.entry;
  if (s.exit.length > 0) config.exit = s.exit;
  if (s.invoke.length > 0) config.invoke = s.invoke.map((src) => ({ src, id: src }));
  if (s.on.length > 0) config.on = group(s.on, (t) => t.event!);
  if (s.after.length > 0) config.after = group(s.after, (t) => t.delay!.name);
  if (s.always.length > 0) config.always = s.always.map(shapeOf);
  if (s.states.length > 0) {
    config.states = Object.fromEntries(s.states.map((c) => [c.path.split('.').pop()!, configOf(c, machineId)]));
  }
  return config;
}

/**
 * The machines as XState v5 code that Stately Studio imports (and XState runs): for each,
 * `setup()` with every named action, guard, actor and delay (stubs: the implementations live
 * in tidepool), then `createMachine()` with the states, exported as `<id>Machine`.
 */
export function toXStateCode(shapes: MachineShape[]): string {
  const parts = shapes.map((shape) => {
    const { actions, guards } = namesIn(shape);
    const computed = new Set(shape.computed ?? []);
    const actors = new Set<string>();
    const visit = (s: StateShape) => {
      s.invoke.forEach((a) => actors.add(a));
      s.states.forEach(visit);
    };
    visit(shape.root);
    const stubs = (names: Iterable<string>, body: string) =>
      [...names].sort().map((n) => `    ${JSON.stringify(n)}: ${body},`).join('\n');
    const delays = Object.entries(shape.delays)
      // A delay computed at run time becomes a stub function: still computed, still named.
      .map(([n, ms]) => `    ${JSON.stringify(n)}: ${computed.has(n) || ms === null ? `() => ${ms ?? 0}` : ms},`)
      .join('\n');
    const config = { id: shape.id, ...configOf(shape.root, shape.id) };
    return `export const ${shape.id}Machine = setup({
  actions: {
${stubs(actions, '() => {}')}
  },
  guards: {
${stubs(guards, '() => false')}
  },
  actors: {
${stubs(actors, 'fromPromise(async () => {})')}
  },
  delays: {
${delays}
  },
}).createMachine(${JSON.stringify(config, null, 2)});
`;
  });
  return `import { fromPromise, setup } from 'xstate';

// tidepool's machines, generated by \`tidepool machines --format stately\`. The
// implementations are stubs: this is the statechart, for Stately Studio and diagrams.
${parts.join('\n')}`;
}
