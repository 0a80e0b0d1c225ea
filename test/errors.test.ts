import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../src/index.js';

describe('error codes', () => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const source = readFileSync(new URL('../src/errors.ts', import.meta.url), 'utf8');

  it.each(Object.keys(ERROR_CODES))('%s is documented in the README', (code) => {
    expect(readme).toContain(`\`${code}\``);
  });

  it('every code the README lists exists', () => {
    const listed = [...readme.matchAll(/`(TIDEPOOL_ERR_[A-Z_]+)`/g)].map((m) => m[1]);
    for (const code of listed) expect(Object.keys(ERROR_CODES)).toContain(code);
  });

  it('each code is declared once', () => {
    for (const code of Object.keys(ERROR_CODES)) {
      expect(source.split(`${code}:`).length - 1).toBe(1);
    }
  });
});
