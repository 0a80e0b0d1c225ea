// @ts-check
// Loads a handler module once, in a worker's environment, and says on stdout that it exports
// a handler. The pool runs this before it takes any work. A module that fails to load is left
// to throw uncaught, so that Node prints it with its file and line (a SyntaxError's location
// is in that print only, not in the error's stack). A module that exits while loading says
// nothing, and fails the check. When the manager goes (stdin closes), so does the check.
import { pathToFileURL } from 'node:url';
import { EXIT, handlerOf } from './protocol.js';

process.stdin.on('end', () => process.exit(EXIT.LOAD_FAILED)).resume();
const path = process.argv[2] ?? '';
const mod = await import(pathToFileURL(path).href);
try {
  handlerOf(mod, path);
} catch (err) {
  process.stderr.write(`${/** @type {Error} */ (err).message}\n`);
  process.exit(EXIT.LOAD_FAILED);
}
process.stdout.write('loaded\n', () => process.exit(EXIT.OK));
