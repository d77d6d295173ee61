// The browser half of the delta benchmark: what each applier costs a page in headless Chromium
// (time per publication, applying each delta to the previous result as the SDK would) and what it
// adds to the SDK's bundle (minified, gzip -9). Reads the streams and encodings `deltabench --out
// DIR` wrote; checks every result (Fossil and VCDIFF: the published text; merge patch: equal
// values) before timing. Prints Markdown tables.
//
//   node bench/delta/apply.mjs --data DIR [--rounds 7] [--wasm DIR]
//
// --wasm DIR: the wasm-bindgen output (--target web, wasm-opt'd to applier.wasm) of
// bench/delta/wasm, and baseline.wasm, the same module applying nothing (bench/delta.sh builds
// both): the applier's own bytes are their difference, and its calls are timed too.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { ENTRIES } from './entries.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d; };
const dataDir = opt('--data');
const rounds = Number(opt('--rounds', '7'));
const wasmDir = opt('--wasm');
if (!dataDir) throw new Error('--data DIR (written by deltabench --out DIR) is required');

// esbuild and playwright-core: the copies the project's tools directory already has
// (scripts/setup-client-deps.sh), else this directory's own.
const tools = process.env.DATASTREAM_TOOLS ?? path.join(process.env.HOME, '.cache/datastream');
const load = (name) => {
  for (const base of [path.join(tools, 'node', 'x.js'), path.join(here, 'x.js')]) {
    try { return createRequire(base)(name); } catch { /* next */ }
  }
  throw new Error(`${name} not found: run scripts/setup-client-deps.sh`);
};
const esbuild = load('esbuild');
const { chromium } = load('playwright-core');

// --- sizes --------------------------------------------------------------------------------------
const bundle = async (contents, extra = {}) => {
  const r = await esbuild.build({
    stdin: { contents, resolveDir: here, sourcefile: 'entry.mjs' },
    bundle: true, minify: true, write: false, format: 'esm', target: 'es2020', logLevel: 'silent', ...extra,
  });
  return r.outputFiles[0].text;
};
const sizes = [];
for (const [name, entry] of Object.entries(ENTRIES)) {
  const code = await bundle(entry);
  sizes.push([name, Buffer.byteLength(code), gzipSync(code, { level: 9 }).length]);
}
let wasm = null;
if (wasmDir) {
  const gz = (f) => gzipSync(readFileSync(path.join(wasmDir, f)), { level: 9 }).length;
  const [a, b] = [gz('applier.wasm'), gz('baseline.wasm')];
  sizes.push([`Fossil, fossil-delta crate in WebAssembly (applier ${a} B gzip − same module applying nothing ${b} B)`, '–', a - b]);
  wasm = {
    glue: readFileSync(path.join(wasmDir, 'datastream_delta_wasm.js'), 'utf8'),
    bytes: readFileSync(path.join(wasmDir, 'applier.wasm')).toString('base64'),
  };
}
console.log('\n### What each applier adds to the SDK bundle\n');
console.log('| applier | minified bytes | gzip -9 bytes |\n|---|---:|---:|');
for (const [n, raw, gz] of sizes) console.log(`| ${n} | ${raw} | ${gz} |`);

// --- apply time in Chromium -------------------------------------------------------------------------
const pageCode = await bundle(
  "export { fossilApply, mergePatch } from './appliers.mjs'; export { applyDelta } from 'fossil-delta'; export { decode as vcdiffDecode } from '@ably/vcdiff-decoder';",
  { format: 'iife', globalName: 'A' },
);

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  for (const file of ['device', 'weather']) {
    const data = JSON.parse(readFileSync(path.join(dataDir, `${file}.json`), 'utf8'));
    const page = await browser.newPage();
    await page.setContent('<!doctype html><meta charset="utf-8"><title>delta apply</title>');
    await page.addScriptTag({ content: pageCode });
    const result = await page.evaluate(async ({ texts, fossil, patches, vcdiff, rounds, wasm }) => {
      const enc = new TextEncoder();
      const dec = new TextDecoder();
      const n = fossil.length;
      const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
      let W = null;
      if (wasm) {
        W = await import(URL.createObjectURL(new Blob([wasm.glue], { type: 'text/javascript' })));
        W.initSync({ module: b64(wasm.bytes) });
      }
      // Each run goes through the whole stream, each delta applied to the previous result.
      const runs = {
        'JSON.parse of the full data (what every publication costs today)': () => {
          let x;
          for (let i = 1; i <= n; i++) x = JSON.parse(texts[i]);
          return [x];
        },
        'Fossil, string applier: apply': () => {
          const out = [];
          let t = texts[0];
          for (let i = 0; i < n; i++) out.push(t = A.fossilApply(t, fossil[i]));
          return out;
        },
        'Fossil, string applier: apply + JSON.parse': () => {
          let t = texts[0], x;
          for (let i = 0; i < n; i++) x = JSON.parse(t = A.fossilApply(t, fossil[i]));
          return [x];
        },
        ...(W ? {
          'Fossil, fossil-delta crate in WebAssembly: apply (strings in and out)': () => {
            const out = [];
            let t = texts[0];
            for (let i = 0; i < n; i++) out.push(t = W.fossilApply(t, fossil[i]));
            return out;
          },
        } : {}),
        'Fossil, fossil-delta applyDelta on UTF-8 bytes: apply + decode': () => {
          const out = [];
          let b = enc.encode(texts[0]);
          for (let i = 0; i < n; i++) {
            b = A.applyDelta(b, enc.encode(fossil[i]));
            out.push(dec.decode(b));
          }
          return out;
        },
        'JSON merge patch: parse the patch + copy-on-write apply': () => {
          const out = [];
          let o = JSON.parse(texts[0]);
          for (let i = 0; i < n; i++) out.push(o = A.mergePatch(o, JSON.parse(patches[i])));
          return out;
        },
        ...(vcdiff ? {
          'VCDIFF, @ably/vcdiff-decoder: base64 + apply + decode': () => {
            const out = [];
            let b = enc.encode(texts[0]);
            for (let i = 0; i < n; i++) {
              b = A.vcdiffDecode(b64(vcdiff[i]), b);
              out.push(dec.decode(b));
            }
            return out;
          },
        } : {}),
      };
      // Correctness first.
      const checks = {};
      for (const [name, run] of Object.entries(runs)) {
        if (name.startsWith('JSON.parse') || name.endsWith('JSON.parse')) continue;
        const out = run();
        let ok = out.length === n;
        for (let i = 0; ok && i < n; i++) {
          ok = typeof out[i] === 'string'
            ? out[i] === texts[i + 1]
            : JSON.stringify(out[i]) === JSON.stringify(JSON.parse(texts[i + 1]));
        }
        checks[name] = ok;
      }
      // Then the best of `rounds` passes (after one warm-up pass), per publication. The candidates
      // take turns within each round, so that whatever else the machine does weighs on all alike.
      const best = {};
      for (const [name, run] of Object.entries(runs)) { run(); best[name] = Infinity; }
      for (let r = 0; r < rounds; r++) {
        for (const [name, run] of Object.entries(runs)) {
          const t = performance.now();
          run();
          best[name] = Math.min(best[name], performance.now() - t);
        }
      }
      const times = {};
      for (const name of Object.keys(runs)) times[name] = (best[name] / n) * 1000;
      return { checks, times };
    }, { texts: data.texts, fossil: data.fossil, patches: data.patches, vcdiff: data.vcdiff, rounds, wasm });
    await page.close();
    console.log(`\n### Applying in headless Chromium: ${data.stream} (${data.fossil.length} publications, µs per publication, best of ${rounds})\n`);
    console.log('| what | µs per publication | result checked |\n|---|---:|---|');
    for (const [name, us] of Object.entries(result.times)) {
      const c = result.checks[name];
      console.log(`| ${name} | ${us.toFixed(1)} | ${c === undefined ? '–' : c ? 'yes' : '**MISMATCH**'} |`);
    }
    if (Object.values(result.checks).some((c) => !c)) process.exitCode = 1;
  }
} finally {
  await browser.close();
}
