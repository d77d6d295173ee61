// Size budget of the npm package: what a browser downloads (the wasm, wasm-bindgen's JS glue, the
// crate's own JavaScript module under wasm/snippets/ and the wrapper), raw and gzip -9. Fails when
// the gzip total passes the budget.
//
//   node tests/client/size-check.mjs [npm dir]

import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

/** Gzip bytes allowed for wasm + glue + snippets + wrapper together. */
const BUDGET_GZIP = 42 * 1024;

const dir = path.resolve(process.argv[2] ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '../../npm'));
const snippets = readdirSync(path.join(dir, 'wasm/snippets'), { recursive: true })
  .filter((f) => f.endsWith('.js'))
  .map((f) => [path.posix.join('wasm/snippets', f.split(path.sep).join('/')), 'JavaScript module of the crate']);
if (snippets.length === 0) {
  console.error('no module under wasm/snippets: the dispatcher is missing');
  process.exit(1);
}
const files = [
  ['wasm/datastream_bg.wasm', 'WebAssembly'],
  ['wasm/datastream.js', 'wasm-bindgen glue'],
  ...snippets,
  ['index.js', 'wrapper'],
];
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
let raw = 0;
let gz = 0;
console.log('| file | what | raw | gzip |\n|---|---|---|---|');
for (const [file, what] of files) {
  const bytes = readFileSync(path.join(dir, file));
  const g = gzipSync(bytes, { level: 9 }).length;
  raw += bytes.length;
  gz += g;
  console.log(`| \`${file}\` | ${what} | ${kb(bytes.length)} | ${kb(g)} |`);
}
console.log(`| **total** | | **${kb(raw)}** | **${kb(gz)}** |`);
if (gz > BUDGET_GZIP) {
  console.error(`size budget exceeded: ${gz} B gzip > ${BUDGET_GZIP} B`);
  process.exit(1);
}
console.log(`within the budget: ${gz} B gzip <= ${BUDGET_GZIP} B`);
