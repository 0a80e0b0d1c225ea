import { parseArgs } from 'node:util';
import { describeMachine, toMermaid, toXStateCode } from '../../machines/describe.js';
import type { MachineShape } from '../../machines/describe.js';
import { poolMachine } from '../../machines/pool.js';
import { workerMachine } from '../../machines/worker.js';
import { DELAY_DEFAULTS } from '../../machines/defaults.js';
import { UsageError } from '../errors.js';
import { envName, wholeNumber } from './config.js';

const FORMATS = ['mermaid', 'json', 'stately'] as const;
const MACHINES = { pool: poolMachine, worker: workerMachine } as const;

/** The delay flags `tidepool machines` takes, and the machine delay each sets. */
const DELAY_FLAGS = {
  'spawn-timeout': 'spawnTimeout',
  timeout: 'taskTimeout',
  'kill-grace': 'killGrace',
  'idle-timeout': 'idleTimeout',
  'crash-window': 'crashWindow',
  'breaker-cooldown': 'breakerCooldown',
} as const;

export const MACHINES_USAGE = `Usage: tidepool machines [--format mermaid|json|stately] [--machine pool|worker] [delay flags]

Prints the machine definitions: a Mermaid stateDiagram-v2 (default), their JSON description,
or XState v5 code that Stately Studio imports. Without --machine, both (pool first): as
Mermaid, one fenced mermaid block each (Markdown); as JSON, an array.

Options:
  --format FORMAT    mermaid, json or stately (default: mermaid)
  --machine NAME     pool or worker (default: both)
  ${Object.keys(DELAY_FLAGS).map((f) => `--${f} MS`).join(', ')}
                     show a delay with this value, as \`tidepool run\` would configure it
                     (also TIDEPOOL_<NAME>, e.g. TIDEPOOL_KILL_GRACE)
  -h, --help         this text`;

/** The machines' text in `format` (JSON: one object, or an array for several). */
export function render(shapes: MachineShape[], format: (typeof FORMATS)[number]): string {
  if (format === 'json') return `${JSON.stringify(shapes.length === 1 ? shapes[0] : shapes, null, 2)}\n`;
  if (format === 'stately') return toXStateCode(shapes);
  // One Mermaid document holds one diagram: several are given as Markdown, one fenced block each.
  if (shapes.length === 1) return toMermaid(shapes[0]!);
  return shapes.map((shape) => `\`\`\`mermaid\n${toMermaid(shape)}\`\`\`\n`).join('\n');
}

/**
 * `tidepool machines`: write the definitions to `out`; returns the exit code (0). Throws
 * `UsageError` (TIDEPOOL_ERR_USAGE) for an unknown flag, format, machine or a delay that is
 * not a whole number.
 */
export function machinesCommand(args: string[], out: { write(text: string): unknown }, env: NodeJS.ProcessEnv = process.env): number {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        format: { type: 'string' },
        machine: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        ...Object.fromEntries(Object.keys(DELAY_FLAGS).map((f) => [f, { type: 'string' as const }])),
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  if (values.help) {
    out.write(`${MACHINES_USAGE}\n`);
    return 0;
  }
  const format = (values.format ?? 'mermaid') as string;
  if (!(FORMATS as readonly string[]).includes(format)) {
    throw new UsageError(`--format must be one of ${FORMATS.join(', ')}, got ${JSON.stringify(format)}`);
  }
  const which = values.machine as string | undefined;
  if (which !== undefined && !(which in MACHINES)) {
    throw new UsageError(`--machine must be pool or worker, got ${JSON.stringify(which)}`);
  }
  // Every delay with the value a pool would run it with: the defaults, then the flags.
  const delays: Record<string, number> = { ...DELAY_DEFAULTS };
  for (const [flag, delay] of Object.entries(DELAY_FLAGS)) {
    // As `tidepool run` takes it: the flag, else its TIDEPOOL_* variable; a positive whole
    // number of ms a timer can hold.
    const given = typeof values[flag] === 'string' ? { value: values[flag] as string, origin: `--${flag}` } : env[envName(flag)] !== undefined ? { value: env[envName(flag)]!, origin: envName(flag) } : undefined;
    if (given === undefined) continue;
    const ms = wholeNumber(given);
    if (ms < 1) throw new UsageError(`${given.origin} must be a positive whole number of ms, got ${JSON.stringify(given.value)}`);
    delays[delay] = ms;
  }
  const names = which === undefined ? (['pool', 'worker'] as const) : [which as keyof typeof MACHINES];
  const shapes = names.map((name) => describeMachine(MACHINES[name], delays));
  out.write(render(shapes, format as (typeof FORMATS)[number]));
  return 0;
}

/**
 * `docs/machines.md`: both machines as Mermaid diagrams with their default delays, generated
 * (`npm run docs:machines`); a test fails when the file is out of date with the machines.
 */
export function machinesDoc(): string {
  const section = (name: keyof typeof MACHINES, what: string) => {
    const shape = describeMachine(MACHINES[name], DELAY_DEFAULTS);
    const delays = Object.entries(shape.delays)
      .map(([delay, ms]) => `| \`${delay}\` | ${ms === null ? '' : `${ms} ms`}${shape.computed?.includes(delay) ? ' (the first; computed from the context at run time)' : ''} |`)
      .join('\n');
    return `## The ${name} machine

${what}

\`\`\`mermaid
${toMermaid(shape).trimEnd()}
\`\`\`

| delay | default |
|---|---|
${delays}
`;
  };
  return `# The machines

Generated by \`npm run docs:machines\` from the machines themselves (\`tidepool machines\`
prints the same, with delays as configured; \`--format json\` adds the transitions that stay in
their state, \`--format stately\` gives code that Stately Studio imports). Do not edit by hand:
a test fails when this file is out of date.

Transitions without a target (bookkeeping that stays in the state: counting, settling,
dispatching) are not drawn; guards are in brackets, delays show their default value.

${section('pool', 'One per pool: intake, dispatch of deliveries to workers, the crash breaker, drain and stop.')}
${section('worker', 'One per worker process: spawn, run (one task, or several for a reused worker), resolve or fail, terminate (SIGTERM, then SIGKILL after the grace), reap.')}`;
}
