// Carries wasm-opt's renaming of the module's imports and exports (--minify-imports-and-exports-
// and-modules: `__wbg_set_onopen_757be120cc7b1ea6` becomes `A`, every import module `a`) into
// wasm-bindgen's glue, which names each import as a key of its imports object (or takes it from a
// snippet of the crate's own JavaScript) and each export as `wasm.<name>`. wasm-bindgen's names carry a 16-digit hash each and appear in both
// files, where no minifier reaches them: ~1.5 KB gzip of the module and more of the glue.
// Fails (and so fails npm/build.sh) if a name is not found exactly where expected.
//
//   node npm/minify-names.mjs <mapping.json from wasm-opt> <the renamed .wasm> <glue .js to rewrite>

import { readFileSync, writeFileSync } from 'node:fs';
import { parse } from './wasm-sections.mjs';

const [mappingFile, wasmFile, glueFile] = process.argv.slice(2);
const mapping = JSON.parse(readFileSync(mappingFile, 'utf8'));
let glue = readFileSync(glueFile, 'utf8');
const fail = (m) => { console.error(`minify-names: ${m}`); process.exit(1); };
const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

// wasm-opt puts every import into one module of its own name, read from the renamed module. The
// imports come from wasm-bindgen's own (`./datastream_bg.js`, an object literal of the glue whose
// keys are renamed below) and from the crate's JavaScript files it imports whole
// (`import * as import1 from "./snippets/…"`), whose functions are handed over under their new
// names beside the glue's.
const newModules = parse(readFileSync(wasmFile)).modules;
if (newModules.size !== 1) fail(`the renamed module imports from ${newModules.size} modules`);
const [newModule] = newModules;
const entry = (module) => new RegExp(`^(\\s+)"${escape(module)}": (import\\d+),\\n`, 'm');
const own = './datastream_bg.js';
const extra = [];
for (const module of new Set(mapping.imports.map(([m]) => m))) {
  const found = entry(module).exec(glue);
  if (!found) fail(`"${module}" not found in the glue's imports`);
  if (module === own) continue;
  for (const [m, name, short] of mapping.imports) {
    if (m === module) extra.push(`${JSON.stringify(short)}: ${found[2]}[${JSON.stringify(name)}]`);
  }
  glue = glue.replace(entry(module), '');
}
glue = glue.replace(entry(own), (_, indent, id) =>
  `${indent}${JSON.stringify(newModule)}: ${extra.length ? `Object.assign(${id}, { ${extra.join(', ')} })` : id},\n`);

for (const [module, name, short] of mapping.imports) {
  if (module !== own) continue;
  const key = new RegExp(`^(\\s+)${escape(name)}:`, 'gm');
  const found = glue.match(key)?.length ?? 0;
  if (found !== 1) fail(`import ${name}: ${found} keys in the glue`);
  glue = glue.replace(key, `$1${JSON.stringify(short)}:`);
}
for (const [name, short] of mapping.exports) {
  // The JS name of a minified export is a valid identifier (letters, digits, `$`, `_`).
  if (!/^[A-Za-z_$][\w$]*$/.test(short)) fail(`export ${name} renamed to ${short}`);
  glue = glue.replace(new RegExp(`\\bwasm\\.${escape(name)}\\b`, 'g'), `wasm.${short}`);
}
const shorts = new Set(mapping.exports.map(([, short]) => short));
const left = [...glue.matchAll(/\bwasm\.([\w$]+)/g)].map((m) => m[1]).filter((name) => !shorts.has(name));
if (left.length) fail(`exports the mapping does not name: ${[...new Set(left)].join(', ')}`);
writeFileSync(glueFile, glue);

