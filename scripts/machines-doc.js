#!/usr/bin/env node
// Writes docs/machines.md from the machines (run after `npm run build`; `npm run docs:machines`
// does both). test/machines.test.ts fails when the file is out of date.
import { writeFileSync } from 'node:fs';
import { machinesDoc } from '../dist/src/cli/machines.js';

writeFileSync(new URL('../docs/machines.md', import.meta.url), machinesDoc());
