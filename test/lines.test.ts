import { describe, expect, it } from 'vitest';
import { LineReader } from '../src/child/lines.js';

describe('LineReader (the reused workers\' channel)', () => {
  it('gives whole lines in order, however the text is cut', () => {
    const text = 'a\nbb\n\nccc\nd';
    for (let size = 1; size <= text.length; size++) {
      const reader = new LineReader();
      const lines: string[] = [];
      for (let i = 0; i < text.length; i += size) lines.push(...reader.read(text.slice(i, i + size)));
      expect(lines, `pieces of ${size}`).toEqual(['a', 'bb', '', 'ccc']);
      expect(reader.read('\n')).toEqual(['d']);
    }
  });

  it('joins a long line from many pieces once it is whole', () => {
    const reader = new LineReader();
    const piece = 'x'.repeat(65_536);
    for (let i = 0; i < 64; i++) expect(reader.read(piece)).toEqual([]);
    const [line, next] = reader.read('y\nz\n');
    expect(line).toHaveLength(64 * 65_536 + 1);
    expect(line.endsWith('xy')).toBe(true);
    expect(next).toBe('z');
  });
});
