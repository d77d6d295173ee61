// Stamps the package's version into the WebAssembly module, as a custom section named
// `datastream_version` (which load() compares with the JavaScript's own version before using the
// module), and writes an ES module whose default export returns the module's bytes, carried
// deflated (zlib) in base64 and inflated by the browser's DecompressionStream, for
// dist/legacy.js: webpack 4 cannot emit a .wasm file, so it makes this module an async chunk.
// Deflated, the chunk ships about as many bytes as the .wasm itself (base64 of the raw module
// compresses ~25 % worse); tests/client/wasm-delivery.mjs measures the ways.
//
//   node npm/stamp.mjs <module.wasm> <version> <inlined.js>

import { readFileSync, writeFileSync } from 'node:fs';
import { deflateSync } from 'node:zlib';

const [wasmPath, version, inlinePath] = process.argv.slice(2);
const leb = (n) => {
  const out = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n) byte |= 0x80;
    out.push(byte);
  } while (n);
  return out;
};
const name = Buffer.from('datastream_version');
const payload = [...leb(name.length), ...name, ...Buffer.from(version)];
const wasm = Buffer.concat([readFileSync(wasmPath), Buffer.from([0, ...leb(payload.length), ...payload])]);
writeFileSync(wasmPath, wasm);
// The module's bytes when asked for: base64 decoded (a loop: faster than Uint8Array.from), then
// inflated.
writeFileSync(
  inlinePath,
  `export default function () {
  const text = atob(${JSON.stringify(deflateSync(wasm, { level: 9 }).toString('base64'))});
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'))).arrayBuffer();
}
`,
);
