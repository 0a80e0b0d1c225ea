import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import type { AnyStateMachine } from 'xstate';
import { afterAll, describe, expect, it } from 'vitest';
import { describeMachine, namesIn, toMermaid, toXStateCode } from '../machines/describe.js';
import type { MachineShape, StateShape } from '../machines/describe.js';
import { poolMachine } from '../machines/pool.js';
import { workerMachine } from '../machines/worker.js';
import { machinesDoc } from '../src/cli/machines.js';

const run = promisify(execFile);
const BIN = new URL('../bin/tidepool', import.meta.url).pathname;
const MACHINES: [string, AnyStateMachine][] = [
  ['pool', poolMachine],
  ['worker', workerMachine],
];

function statesOf(shape: MachineShape): StateShape[] {
  const all: StateShape[] = [];
  const visit = (s: StateShape) => {
    if (s.path !== '') all.push(s);
    s.states.forEach(visit);
  };
  visit(shape.root);
  return all;
}

const scratch = mkdtempSync(join(tmpdir(), 'tidepool-machines-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe.each(MACHINES)('the %s machine, described', (_name, machine) => {
  const shape = describeMachine(machine);

  it('names every action and guard (no anonymous inline assign in a diagram)', () => {
    const { actions, guards } = namesIn(shape);
    expect([...actions].filter((a) => a.startsWith('inline:'))).toEqual([]);
    expect([...guards].filter((g) => g.startsWith('inline:'))).toEqual([]);
  });

  it('draws every state, every transition with a target, initial and final states', () => {
    const mermaid = toMermaid(shape);
    expect(mermaid.startsWith('stateDiagram-v2\n')).toBe(true);
    for (const state of statesOf(shape)) {
      const id = state.path.replace(/\./g, '_');
      expect(mermaid).toContain(`as ${id}`);
      for (const t of [...state.on, ...state.after, ...state.always]) {
        for (const target of t.targets) {
          const line = mermaid.split('\n').find((l) => l.trim().startsWith(`${id} --> ${target.replace(/\./g, '_')} :`) && (t.guard === null || l.includes(`[${t.guard}]`)));
          expect(line, `${state.path} -> ${target} (${t.event ?? t.delay?.name ?? 'always'})`).toBeDefined();
        }
      }
      if (state.type === 'final') expect(mermaid).toContain(`${id} --> [*]`);
    }
    expect(mermaid).toContain(`[*] --> ${shape.root.initial}`);
  });

  it('shows delays by name with their configured value', () => {
    const names = Object.keys(shape.delays);
    expect(names.length).toBeGreaterThan(0);
    const configured = describeMachine(machine, Object.fromEntries(names.map((n, i) => [n, 1234 + i])));
    const mermaid = toMermaid(configured);
    const used = new Set(statesOf(configured).flatMap((s) => s.after.map((t) => t.delay!.name)));
    for (const [i, name] of names.entries()) {
      if (used.has(name)) expect(mermaid).toContain(`after ${name} (${1234 + i} ms)`);
    }
  });

  it('exports XState code that XState runs and that describes the same statechart', async () => {
    const file = join(scratch, `${shape.id}.mjs`);
    // The generated code imports xstate: resolve it from this project.
    const code = toXStateCode([shape]).replace("from 'xstate'", `from ${JSON.stringify(import.meta.resolve('xstate'))}`);
    writeFileSync(file, code);
    const mod = (await import(pathToFileURL(file).href)) as Record<string, AnyStateMachine>;
    const again = describeMachine(mod[`${shape.id}Machine`]!);
    expect(again).toEqual(shape);
  });
});

describe('docs/machines.md', () => {
  it('is what the machines generate (run `npm run docs:machines` after changing a machine)', () => {
    const onDisk = readFileSync(new URL('../docs/machines.md', import.meta.url), 'utf8');
    expect(onDisk).toBe(machinesDoc());
  });
});

describe('tidepool machines', () => {
  it('prints one machine as JSON with the delays given as flags', async () => {
    const { stdout } = await run(process.execPath, [BIN, 'machines', '--format', 'json', '--machine', 'worker', '--kill-grace', '7']);
    const shape = JSON.parse(stdout) as MachineShape;
    expect(shape.id).toBe('worker');
    expect(shape.delays.killGrace).toBe(7);
    expect(shape.delays.spawnTimeout).toBe(describeMachine(workerMachine).delays.spawnTimeout);
  });

  it('prints both machines as Mermaid by default', async () => {
    const { stdout } = await run(process.execPath, [BIN, 'machines']);
    expect(stdout.match(/^stateDiagram-v2$/gm)).toHaveLength(2);
  });

  it.each([
    [['--format', 'svg'], '--format must be one of mermaid, json, stately'],
    [['--machine', 'manager'], '--machine must be pool or worker'],
    [['--kill-grace', 'soon'], '--kill-grace must be a whole number'],
    [['--colour'], "Unknown option '--colour'"],
  ])('refuses %j with exit 2', async (args, message) => {
    const err = await run(process.execPath, [BIN, 'machines', ...args]).then(
      () => null,
      (e: { code: number; stderr: string }) => e,
    );
    expect(err?.code).toBe(2);
    expect(err?.stderr).toContain(message);
  });
});
