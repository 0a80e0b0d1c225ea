// @ts-check
// Lines out of a stream of text: the channel between the manager and a reused worker carries
// one JSON message per line, both ways. Plain JavaScript, shared by the manager and the child
// entry (which must load almost nothing).

/**
 * Cuts text, as it arrives in pieces, into whole lines (without their `\n`). Only the new
 * piece is searched for a line end, and a line that spans many pieces is joined once, when it
 * is whole: a 16 MiB reply arriving 64 KiB at a time is neither rescanned nor copied per piece.
 */
export class LineReader {
  /** @type {string[]} the start of a line not yet whole */
  #parts = [];

  /**
   * The lines that `text` completes, in order.
   * @param {string} text
   * @returns {string[]}
   */
  read(text) {
    let nl = text.indexOf('\n');
    if (nl === -1) {
      if (text !== '') this.#parts.push(text);
      return [];
    }
    /** @type {string[]} */
    const lines = [];
    let start = 0;
    if (this.#parts.length > 0) {
      this.#parts.push(text.slice(0, nl));
      lines.push(this.#parts.join(''));
      this.#parts = [];
      start = nl + 1;
      nl = text.indexOf('\n', start);
    }
    while (nl !== -1) {
      lines.push(text.slice(start, nl));
      start = nl + 1;
      nl = text.indexOf('\n', start);
    }
    if (start < text.length) this.#parts.push(text.slice(start));
    return lines;
  }
}
