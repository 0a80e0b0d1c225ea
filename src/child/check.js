// @ts-check
// Loads a handler module once, in a worker's environment, and exits: 0 when it exports a
// handler. The pool runs this before it takes any work. A module that fails to load is left
// to throw uncaught, so that Node prints it with its file and line (a SyntaxError's location
// is in that print only, not in the error's stack).
import { pathToFileURL } from 'node:url';
import { EXIT, handlerOf } from './protocol.js';

const path = process.argv[2] ?? '';
const mod = await import(pathToFileURL(path).href);
try {
  handlerOf(mod, path);
} catch (err) {
  process.stderr.write(`${/** @type {Error} */ (err).message}\n`);
  process.exit(EXIT.LOAD_FAILED);
}
