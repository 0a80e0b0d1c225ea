import { parseArgs } from 'node:util';
import { describeMachine, toMermaid, toXStateCode } from '../../machines/describe.js';
import type { MachineShape } from '../../machines/describe.js';
import { poolMachine } from '../../machines/pool.js';
import { workerMachine } from '../../machines/worker.js';
import { UsageError } from '../errors.js';

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
or XState v5 code that Stately Studio imports. Without --machine, both (pool first).

Options:
  --format FORMAT    mermaid, json or stately (default: mermaid)
  --machine NAME     pool or worker (default: both)
  ${Object.keys(DELAY_FLAGS).map((f) => `--${f} MS`).join(', ')}
                     show a delay with this value, as \`tidepool run\` would configure it
  -h, --help         this text`;

/** The machines' text in `format` (JSON: one object, or an array for several). */
export function render(shapes: MachineShape[], format: (typeof FORMATS)[number]): string {
  if (format === 'json') return `${JSON.stringify(shapes.length === 1 ? shapes[0] : shapes, null, 2)}\n`;
  if (format === 'stately') return toXStateCode(shapes);
  return shapes.map(toMermaid).join('\n');
}

/**
 * `tidepool machines`: write the definitions to `out`; returns the exit code (0). Throws
 * `UsageError` (TIDEPOOL_ERR_USAGE) for an unknown flag, format, machine or a delay that is
 * not a whole number.
 */
export function machinesCommand(args: string[], out: { write(text: string): unknown }): number {
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
  const delays: Record<string, number> = {};
  for (const [flag, delay] of Object.entries(DELAY_FLAGS)) {
    const raw = values[flag];
    if (typeof raw !== 'string') continue;
    if (!/^\d+$/.test(raw.trim())) throw new UsageError(`--${flag} must be a whole number of ms, got ${JSON.stringify(raw)}`);
    delays[delay] = Number(raw.trim());
  }
  const names = which === undefined ? (['pool', 'worker'] as const) : [which as keyof typeof MACHINES];
  const shapes = names.map((name) => describeMachine(MACHINES[name], delays));
  out.write(render(shapes, format as (typeof FORMATS)[number]));
  return 0;
}
