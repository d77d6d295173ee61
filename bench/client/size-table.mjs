// Where the bytes of the SDK's modern build are: prints Markdown tables of
//   - what ships (dist/datastream_bg.wasm and dist/index.js, raw and gzip -9);
//   - the WebAssembly's code by origin (the client's own code, the shared protocol crate, alloc,
//     core's formatting, the rest of core, std, wasm-bindgen, js-sys/web-sys, the allocator),
//     from the function sizes in the name sections of the module before wasm-opt
//     (npm/wasm/datastream_bg.wasm, which wasm-bindgen leaves named) and after it
//     (npm/wasm/optimized.wasm: what ships, before its names are stripped); the module's sections;
//   - its largest functions as shipped (wasm-opt inlines much: a function's size includes what
//     it absorbed);
//   - dist/index.js by source file (esbuild's metafile of that bundle, written by npm/build.sh).
// Run after npm/build.sh:
//
//   node bench/client/size-table.mjs [--top 25] [--npm <dir>] [--list <word of an origin>]

import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { parse } from '../../npm/wasm-sections.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d; };
const npm = path.resolve(opt('--npm', path.join(here, '../../npm')));
const top = Number(opt('--top', '25'));
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
const gz = (b) => gzipSync(b, { level: 9 }).length;


const GROUPS = [
  ['core::fmt: formatting (Debug, Display, write!, pad_integral, float printing)', (n) => /\bcore::fmt\b|as core::fmt::|\bfmt::(Write|Debug|Display)\b|core::num::flt2dec|core::num::fmt/.test(n)],
  ['panics (core::panicking, std::panicking, unwrap/expect failures)', (n) => /panicking|panic_fmt|panic_bounds|unwrap_failed|expect_failed|core::option::expect|core::result::unwrap|rust_begin_unwind|__rust_start_panic|begin_panic/.test(n)],
  ['the client (datastream_client; with its exported methods, into which wasm-opt inlines it)', (n) => owner(n) === 'datastream_client' || /^datastreamcore_/.test(n)],
  ['the protocol crate (datastream_protocol)', (n) => owner(n) === 'datastream_protocol'],
  ['alloc (Vec, String, BTreeMap, … and their growth paths)', (n) => owner(n) === 'alloc' || /^__rust_(alloc|dealloc|realloc)|__rdl_/.test(n)],
  ['allocator (lol_alloc)', (n) => owner(n) === 'lol_alloc'],
  ['wasm-bindgen (runtime, externref table, closures)', (n) => owner(n) === 'wasm_bindgen' || /^__wbindgen|^__externref|^__wbg_|^Closure\(| shim$/.test(n)],
  ['js-sys, web-sys, gloo (imports\' shims)', (n) => /^(js_sys|web_sys|gloo_\w+)$/.test(owner(n))],
  ['std', (n) => owner(n) === 'std'],
  ['core (other: slices, str, memcpy, …)', (n) => owner(n) === 'core' || /^(memcpy|memmove|memset|memcmp|bcmp|fmin|fmax|__multi3|__ashlti3|__lshrti3|__udivti3|__umodti3)$/.test(n)],
  ['serde, serde_json', (n) => /^serde/.test(owner(n))],
  ['other', () => true],
];
/** The crate a function belongs to: the type it is generic over for drop glue, else the first path segment. */
function owner(name) {
  const drop = /^core::ptr::drop_in_place<&?(?:mut )?(?:\(\))?([a-z_][a-z0-9_]*)::/.exec(name);
  if (drop) return drop[1];
  const m = /^<*&?(?:mut )?(?:\[)?([a-z_][a-z0-9_]*)::/.exec(name);
  return m ? m[1] : '';
}

const pre = readFileSync(path.join(npm, 'wasm/datastream_bg.wasm'));
const shipped = readFileSync(path.join(npm, 'dist/datastream_bg.wasm'));
const js = readFileSync(path.join(npm, 'dist/index.js'));
const m = parse(pre);
const after = parse(shipped);

console.log('### What ships (modern build)\n');
console.log('| file | raw | gzip -9 |\n|---|---:|---:|');
console.log(`| \`dist/datastream_bg.wasm\` | ${kb(shipped.length)} | ${kb(gz(shipped))} |`);
console.log(`| \`dist/index.js\` | ${kb(js.length)} | ${kb(gz(js))} |`);
console.log(`| **total** | **${kb(shipped.length + js.length)}** | **${kb(gz(shipped) + gz(js))}** |`);

const sectionName = (s) => s.name ? `custom \`${s.name}\`` : ['custom', 'type', 'import', 'function', 'table', 'memory', 'global', 'export', 'start', 'element', 'code', 'data', 'data count'][s.id];
console.log('\n### The WebAssembly\'s sections, before and after wasm-opt\n');
console.log('| section | before | after |\n|---|---:|---:|');
const byName = (list) => { const r = new Map(); for (const s of list) r.set(sectionName(s), (r.get(sectionName(s)) ?? 0) + s.size); return r; };
const b1 = byName(m.sections);
const b2 = byName(after.sections);
for (const k of new Set([...b1.keys(), ...b2.keys()])) console.log(`| ${k} | ${b1.has(k) ? b1.get(k) : '–'} | ${b2.has(k) ? b2.get(k) : '–'} |`);

// Crate disambiguators (`core[c5930c85a12de822]::`) and symbol hashes are noise here.
const clean = (n) => n.replace(/\[[0-9a-f]{16}\]/g, '').replace(/::h[0-9a-f]{16}$/, '');
const functionsOf = (mod) => mod.bodies.map((size, i) => ({ size, name: clean(mod.names.get(i + mod.imported) ?? `#${i + mod.imported}`) }));
const originOf = (f) => GROUPS.findIndex(([, test]) => test(f.name));
const byOrigin = (fns) => {
  const r = GROUPS.map(() => ({ size: 0, count: 0 }));
  for (const f of fns) { r[originOf(f)].size += f.size; r[originOf(f)].count++; }
  return r;
};
const sum = (fns) => fns.reduce((s, f) => s + f.size, 0);
const functions = functionsOf(m);
// npm/build.sh keeps the names in the module between wasm-opt's passes: the code that ships.
const optimizedFile = path.join(npm, 'wasm/optimized.wasm');
const optimized = existsSync(optimizedFile) ? functionsOf(parse(readFileSync(optimizedFile))) : null;
const g1 = byOrigin(functions);
const g2 = optimized && byOrigin(optimized);
console.log('\n### The WebAssembly\'s code by origin (function bodies; bytes, functions)\n');
console.log(`| origin | before wasm-opt | ${optimized ? 'after (ships) | share |' : ''}\n|---|---:|${optimized ? '---:|---:|' : ''}`);
const order = GROUPS.map((_, i) => i).filter((i) => g1[i].count || g2?.[i].count).sort((a, b) => (g2 ?? g1)[b].size - (g2 ?? g1)[a].size);
for (const i of order) {
  const after = g2 ? ` ${g2[i].size} (${g2[i].count}) | ${(100 * g2[i].size / sum(optimized)).toFixed(1)} % |` : '';
  console.log(`| ${GROUPS[i][0]} | ${g1[i].size} (${g1[i].count}) |${after}`);
}
console.log(`| **all** | **${sum(functions)} (${functions.length})** |${optimized ? ` **${sum(optimized)} (${optimized.length})** | |` : ''}`);

const shown = optimized ?? functions;
console.log(`\n### The ${top} largest functions (${optimized ? 'after wasm-opt, as shipped' : 'before wasm-opt'})\n`);
console.log('| bytes | function |\n|---:|---|');
const short = (n) => n.replace(/\|/g, '\\|');
for (const f of [...shown].sort((a, b) => b.size - a.size).slice(0, top)) console.log(`| ${f.size} | \`${short(f.name)}\` |`);

const metafile = path.join(npm, 'wasm/index.meta.json');
if (existsSync(metafile)) {
  const out = Object.values(JSON.parse(readFileSync(metafile, 'utf8')).outputs).find((o) => o.entryPoint);
  const inputs = Object.entries(out.inputs).map(([file, v]) => ({ file, size: v.bytesInOutput })).filter((x) => x.size);
  const parts = inputs.reduce((s, x) => s + x.size, 0);
  console.log(`\n### \`dist/index.js\` by source (minified bytes; ${out.bytes - parts} more of the bundle's own)\n`);
  console.log('| source | bytes |\n|---|---:|');
  for (const x of inputs.sort((a, b) => b.size - a.size)) {
    const file = x.file.replace(/^npm\/wasm\/snippets\/[^/]+\//, 'client-wasm/').replace(/^npm\/wasm\/datastream\.js$/, 'wasm-bindgen\'s glue (npm/wasm/datastream.js)');
    console.log(`| ${file} | ${x.size} |`);
  }
}

// --list <word>: every function of the origins whose label contains the word, largest first.
const list = opt('--list');
if (list) {
  console.log(`\n### Functions of the origins matching "${list}"\n`);
  console.log('| bytes | function |\n|---:|---|');
  for (const f of [...shown].sort((a, b) => b.size - a.size)) {
    if (GROUPS[originOf(f)][0].includes(list)) console.log(`| ${f.size} | \`${short(f.name)}\` |`);
  }
}
