// Carries wasm-opt's renaming of the module's imports and exports (--minify-imports-and-exports-
// and-modules: `__wbg_set_onopen_757be120cc7b1ea6` becomes `A`, `./datastream_bg.js` becomes `a`)
// into wasm-bindgen's glue, which names each import as a key of its imports object and each
// export as `wasm.<name>`. wasm-bindgen's names carry a 16-digit hash each and appear in both
// files, where no minifier reaches them: ~1.5 KB gzip of the module and more of the glue.
// Fails (and so fails npm/build.sh) if a name is not found exactly where expected.
//
//   node npm/minify-names.mjs <mapping.json from wasm-opt> <the renamed .wasm> <glue .js to rewrite>

import { readFileSync, writeFileSync } from 'node:fs';

const [mappingFile, wasmFile, glueFile] = process.argv.slice(2);
const mapping = JSON.parse(readFileSync(mappingFile, 'utf8'));
let glue = readFileSync(glueFile, 'utf8');
const fail = (m) => { console.error(`minify-names: ${m}`); process.exit(1); };
const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

// Every import comes from one module, wasm-bindgen's `./datastream_bg.js`; its new name is read
// from the renamed module itself.
const modules = new Set(mapping.imports.map(([module]) => module));
if (modules.size !== 1) fail(`imports from ${[...modules].join(', ')}: expected one module`);
const [oldModule] = modules;
const newModules = importModules(readFileSync(wasmFile));
if (newModules.size !== 1) fail(`the renamed module imports from ${newModules.size} modules`);
const [newModule] = newModules;
const moduleKey = new RegExp(`^(\\s+)"${escape(oldModule)}": import0,$`, 'm');
if (!moduleKey.test(glue)) fail(`"${oldModule}" not found in the glue's imports`);
glue = glue.replace(moduleKey, `$1${JSON.stringify(newModule)}: import0,`);

for (const [, name, short] of mapping.imports) {
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
const left = glue.match(/\bwasm\.(?!(?:[A-Za-z_$][\w$]{0,2})\b)[\w$]+/g);
if (left) fail(`exports the mapping does not name: ${[...new Set(left)].join(', ')}`);
writeFileSync(glueFile, glue);

/** The module names a module's import section uses. */
function importModules(bytes) {
  let p = 8;
  const leb = () => {
    let r = 0;
    let s = 0;
    let x;
    do {
      x = bytes[p++];
      r += (x & 0x7f) * 2 ** s;
      s += 7;
    } while (x & 0x80);
    return r;
  };
  const str = () => { const n = leb(); const v = bytes.toString('utf8', p, p + n); p += n; return v; };
  const limits = () => { const flags = bytes[p++]; leb(); if (flags & 1) leb(); };
  const found = new Set();
  while (p < bytes.length) {
    const id = bytes[p++];
    const end = leb() + p;
    if (id === 2) {
      for (let i = leb(); i > 0; i--) {
        found.add(str());
        str();
        const kind = bytes[p++];
        if (kind === 0) leb(); else if (kind === 1) { p++; limits(); } else if (kind === 2) limits(); else if (kind === 3) p += 2; else leb();
      }
    }
    p = end;
  }
  return found;
}
