import dagre from '@dagrejs/dagre';
import type { MachineShape, StateShape, TransitionShape } from '../../machines/describe.js';

/**
 * A machine drawn as SVG for the dashboard: states as boxes (a compound state and each of its
 * children, the children joined to it by a dashed line from its initial one), transitions
 * with a target as arrows labelled with their events and guards (several between the same two
 * states share one arrow), the initial state marked by a dot, final states by a double border.
 * Laid out once with dagre (a layered graph layout) on the server; the page only toggles a
 * class on `<g class="state" data-state="path">` to highlight current states.
 */

const FONT = 12;
/** Width of a character at FONT px in the page's sans-serif, roughly. */
const CHAR = 6.6;
const PAD = 10;

const escape = (text: string): string =>
  text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

function edgeLabel(t: TransitionShape): string {
  let text: string;
  if (t.delay) text = `after ${t.delay.name}`;
  else if (t.event) text = t.event.replace(/^xstate\.done\.actor\.(.+)$/, 'done($1)').replace(/^xstate\.error\.actor\.(.+)$/, 'error($1)');
  else text = 'always';
  return t.guard === null ? text : `${text} [${t.guard}]`;
}

const INITIAL = '__initial__';

/** A path through dagre's points, rounded at each bend (quadratic curves between midpoints). */
function smooth(points: { x: number; y: number }[]): string {
  const f = (n: number) => n.toFixed(1);
  if (points.length < 3) return points.map((p, i) => `${i === 0 ? 'M' : 'L'}${f(p.x)},${f(p.y)}`).join('');
  let d = `M${f(points[0]!.x)},${f(points[0]!.y)}`;
  for (let i = 1; i < points.length - 1; i++) {
    const p = points[i]!;
    const next = points[i + 1]!;
    const end = i === points.length - 2 ? next : { x: (p.x + next.x) / 2, y: (p.y + next.y) / 2 };
    d += `Q${f(p.x)},${f(p.y)} ${f(end.x)},${f(end.y)}`;
  }
  return d;
}

/** The SVG text of `shape`'s statechart, laid out left to right (`LR`) or top to bottom (`TB`). */
export function diagramSvg(shape: MachineShape, rankdir: 'LR' | 'TB' = 'LR'): string {
  const g = new dagre.graphlib.Graph({ multigraph: true });
  g.setGraph({ rankdir, nodesep: 14, ranksep: rankdir === 'LR' ? 40 : 28, edgesep: 6, marginx: 8, marginy: 8 });
  const states: StateShape[] = [];
  const visit = (s: StateShape) => {
    if (s.path !== '') states.push(s);
    s.states.forEach(visit);
  };
  visit(shape.root);
  for (const s of states) {
    const name = s.path.split('.').pop()!;
    g.setNode(s.path, { width: Math.max(60, name.length * CHAR + 2 * PAD), height: 28 });
  }
  g.setNode(INITIAL, { width: 12, height: 12 });
  g.setEdge(INITIAL, shape.root.initial!, { width: 0, height: 0, kind: 'initial' }, 'initial');
  // Several transitions between the same two states share an arrow and a label of lines.
  const labels = new Map<string, string[]>();
  for (const s of states) {
    if (s.initial !== null) g.setEdge(s.path, s.initial, { width: 0, height: 0, kind: 'child' }, `child:${s.path}`);
    for (const t of [...s.on, ...s.after, ...s.always]) {
      for (const target of t.targets) {
        const key = `${s.path}\u0000${target}`;
        const list = labels.get(key) ?? [];
        const text = edgeLabel(t);
        if (!list.includes(text)) list.push(text);
        labels.set(key, list);
      }
    }
  }
  for (const [key, lines] of labels) {
    const [from, to] = key.split('\u0000') as [string, string];
    g.setEdge(from, to, {
      lines,
      width: Math.max(...lines.map((l) => l.length)) * CHAR * 0.85,
      height: lines.length * (FONT - 1),
      labelpos: 'c',
      kind: 'transition',
    }, key);
  }
  dagre.layout(g);
  const { width, height } = g.graph() as { width: number; height: number };
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" class="statechart" data-machine="${escape(shape.id)}" viewBox="0 0 ${Math.ceil(width)} ${Math.ceil(height)}" width="100%" style="max-width:${Math.ceil(width)}px" font-size="${FONT}">`,
    `<defs><marker id="arrow-${escape(shape.id)}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" class="arrowhead"/></marker></defs>`,
  );
  for (const e of g.edges()) {
    const edge = g.edge(e) as { points: { x: number; y: number }[]; kind: string; lines?: string[]; x?: number; y?: number };
    const d = smooth(edge.points);
    const marker = edge.kind === 'child' ? '' : ` marker-end="url(#arrow-${escape(shape.id)})"`;
    out.push(`<path class="edge ${edge.kind}" d="${d}" fill="none"${marker}/>`);
    if (edge.lines && edge.x !== undefined && edge.y !== undefined) {
      const top = edge.y - ((edge.lines.length - 1) * (FONT - 1)) / 2;
      const spans = edge.lines
        .map((line, i) => `<tspan x="${edge.x!.toFixed(1)}" y="${(top + i * (FONT - 1)).toFixed(1)}">${escape(line)}</tspan>`)
        .join('');
      out.push(`<text class="edge-label" text-anchor="middle" dominant-baseline="middle" font-size="${FONT - 2}">${spans}</text>`);
    }
  }
  const initial = g.node(INITIAL) as { x: number; y: number };
  out.push(`<circle class="initial" cx="${initial.x}" cy="${initial.y}" r="5"/>`);
  for (const s of states) {
    const n = g.node(s.path) as { x: number; y: number; width: number; height: number };
    const x = n.x - n.width / 2;
    const y = n.y - n.height / 2;
    const final = s.type === 'final' ? `<rect class="final-ring" x="${(x + 3).toFixed(1)}" y="${(y + 3).toFixed(1)}" width="${(n.width - 6).toFixed(1)}" height="${(n.height - 6).toFixed(1)}" rx="5"/>` : '';
    out.push(
      `<g class="state${s.states.length > 0 ? ' compound' : ''}" data-state="${escape(s.path)}">` +
        `<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${n.width.toFixed(1)}" height="${n.height.toFixed(1)}" rx="7"/>${final}` +
        `<text x="${n.x.toFixed(1)}" y="${n.y.toFixed(1)}" text-anchor="middle" dominant-baseline="central">${escape(s.path.split('.').pop()!)}</text>` +
        `<text class="count" x="${(x + n.width - 4).toFixed(1)}" y="${(y + 9).toFixed(1)}" text-anchor="end" font-size="${FONT - 3}"></text>` +
        `</g>`,
    );
  }
  out.push('</svg>');
  return out.join('\n');
}
