// Size budget of the npm package: what a browser downloads with a modern toolchain (Vite,
// webpack 5, <script type="module">): the wasm and dist/index.js (the wrapper, wasm-bindgen's glue
// and the crate's dispatcher, bundled and minified by npm/build.sh), raw and gzip -9. Fails when
// the gzip total passes the budget. What webpack 4 ships (dist/legacy.js and the module in base64
// in dist/datastream_bg.wasm.js, an async chunk) and the CommonJS build (Node) are listed, not
// counted: an app ships one build, and the modern one is where the budget matters.
//
//   node tests/client/size-check.mjs [npm dir]

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

/**
 * Gzip bytes allowed for the wasm and the modern build together: 36.15 KB, what was reached
 * (36,952 B) with 66 B of room, after the SDK's rules each got one home and the module stopped
 * linking std (BENCHMARKS.md, "One home per rule, and a module without std"): two rules moved
 * from the wrapper into the client (+201 B: a legacy site confirmed once its socket is open, a
 * refusal's site read from the relay's frame), token refresh timed by the client from the
 * relay's `expires_at` (+75 B), the module `no_std` with a trap for a panic handler (−671 B).
 *
 * Before, 36.55 KB: 35.6 KB plus what deltas cost, measured (36,343 → 37,338 B, +0.97 KB): the
 * Fossil applier with its checksum and each slot's last data text in the dispatcher (+0.7 KB of
 * dist/index.js), asking for deltas and the gap's resubscribe in the client (+0.2 KB of
 * WebAssembly). Before deltas it was 35.6 KB, what was reached (35.5 KB) with 0.1 KB of room. It
 * was 42.55 KB (42.6 KB shipped) until: the module's imports and exports renamed to one or two
 * letters in the module and the glue (-3.0 KB), the browser's listeners, timers and socket
 * through one call and one closure each instead of gloo and web-sys (-2.2 KB), names and option
 * types checked by the wrapper alone (-1.0 KB), `Backoff::delay` without Duration's panics
 * (-0.6 KB), states' and events' objects built in one call (-0.2 KB), the target_features
 * section stripped (-0.1 KB). `node bench/client/size-table.mjs` shows where the rest is.
 */
const BUDGET_GZIP = 36.15 * 1024;

const dir = path.resolve(process.argv[2] ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '../../npm'));
const counted = [
  ['dist/datastream_bg.wasm', 'WebAssembly'],
  ['dist/index.js', 'wrapper, glue and dispatcher (ES2022 module)'],
];
const listed = [
  ['dist/legacy.js', 'the same, ES2017, for webpack 4'],
  ['dist/datastream_bg.wasm.js', 'the WebAssembly deflated in base64, webpack 4\'s async chunk'],
  ['dist/index.cjs', 'the same, CommonJS'],
  ['dist/vue.js', 'the Vue entry (separate)'],
];
const webpack4 = ['dist/legacy.js', 'dist/datastream_bg.wasm.js'];
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
let raw = 0;
let gz = 0;
let raw4 = 0;
let gz4 = 0;
console.log('| file | what | raw | gzip |\n|---|---|---|---|');
for (const [file, what] of [...counted, ...listed]) {
  const bytes = readFileSync(path.join(dir, file));
  const g = gzipSync(bytes, { level: 9 }).length;
  if (counted.some(([f]) => f === file)) {
    raw += bytes.length;
    gz += g;
  }
  if (webpack4.includes(file)) {
    raw4 += bytes.length;
    gz4 += g;
  }
  console.log(`| \`${file}\` | ${what} | ${kb(bytes.length)} | ${kb(g)} |`);
  if (file === counted.at(-1)[0]) console.log(`| **total shipped** | | **${kb(raw)}** | **${kb(gz)}** |`);
  if (file === webpack4.at(-1)) console.log(`| **total shipped to webpack 4** | | **${kb(raw4)}** | **${kb(gz4)}** |`);
}
if (gz > BUDGET_GZIP) {
  console.error(`size budget exceeded: ${gz} B gzip > ${BUDGET_GZIP} B`);
  process.exit(1);
}
console.log(`within the budget: ${gz} B gzip <= ${BUDGET_GZIP} B`);
