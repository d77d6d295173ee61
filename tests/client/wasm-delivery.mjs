// How a webpack 4 app (Vue CLI 3.12) can get the package's WebAssembly module, measured: the bytes
// it ships and the time until the module is ready on first load. A measurement, not a test: the
// figures chose dist/legacy.js's delivery and are quoted in npm/README.md.
//
//   node tests/client/wasm-delivery.mjs [--runs 9] [--out <dir>]
//
// The ways compared (each a variant of dist/legacy.js built from npm/src/index.js, in the same
// one-page Vue 2.7 app built by vue-cli-service build):
//   public        the module fetched from the app's public path (the file copied into public/ by
//                 the app: an extra step, and the copy can go stale);
//   chunk         base64 in an async chunk of its own (dist/datastream_bg.wasm.js, import()ed);
//   chunk-deflate the same, deflated first (zlib), inflated by the browser's DecompressionStream;
//   inline        base64 in the app's main bundle;
//   webpack4      webpack 4's own handling of a .wasm import (wasm-bindgen --target bundler,
//                 imported from an async chunk): does it build at all?
// Served by a local server with gzip (as any production server would), each page load in a
// fresh browser context (nothing cached), the ways taking turns (so a busy machine weighs on
// each alike), in headless Chromium, under three networks: loopback
// (CPU and parsing only), 4G-like (9 Mbps, 40 ms RTT, CPU 4x slower: a phone), 3G-like
// (1.6 Mbps, 150 ms RTT). "ready" is the time from navigation start until load() resolved
// (module fetched, decoded, compiled and instantiated); "app" until the app's code started.
// Needs npm/dist and npm/wasm (npm/build.sh), the client crate built for wasm32
// (wasm-release), and the tools of scripts/setup-client-deps.sh.

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync, copyFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import os from 'node:os';
import { deflateSync, gzipSync } from 'node:zlib';

const require = createRequire(path.join(process.env.NODE_PATH.split(':')[0], 'x.js'));
const { chromium } = require('playwright-core');
const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const runs = Number(opt('--runs', 9));
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const out = path.resolve(opt('--out', path.join(process.env.TMPDIR ?? '/tmp', 'datastream-wasm-delivery')));
const tools = process.env.NODE_PATH.split(':')[0];
const vuecli3 = path.join(process.env.DATASTREAM_TOOLS, 'vuecli3/node_modules');
const version = JSON.parse(readFileSync(path.join(root, 'npm/package.json'), 'utf8')).version;
const run = (cmd, argv, cwd, env) =>
  execFileSync(cmd, argv, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const wasm = readFileSync(path.join(root, 'npm/dist/datastream_bg.wasm'));
const b64 = (bytes) => JSON.stringify(Buffer.from(bytes).toString('base64'));
const decode = (v) => `const text = atob(${v});
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);`;
const inlined = {
  raw: `export default function () {\n  ${decode(b64(wasm))}\n  return bytes;\n}\n`,
  deflate: `export default function () {\n  ${decode(b64(deflateSync(wasm, { level: 9 })))}
  return new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'))).arrayBuffer();\n}\n`,
};

/** A package directory whose dist/legacy.js is built with `defines` (and `inject`), plus `files`. */
function variantPackage(dir, defines, files, inject) {
  mkdirSync(path.join(dir, 'dist'), { recursive: true });
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: '@photonranch/datastream', version, module: './dist/legacy.js' }));
  const esbuild = [path.join(tools, '.bin/esbuild'), path.join(root, 'npm/src/index.js'), '--bundle', '--minify', '--format=esm',
    '--target=es2017', '--legal-comments=none', '--log-level=warning', `--define:VERSION="${version}"`,
    '--external:./datastream_bg.wasm.js', `--outfile=${path.join(dir, 'dist/legacy.js')}`,
    ...Object.entries(defines).map(([k, v]) => `--define:${k}=${v}`), ...(inject ? [`--inject:${inject}`] : [])];
  run(esbuild[0], esbuild.slice(1), root);
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, 'dist', name), text);
}

// What import.meta.url was in dist/legacy.js before: the app's public path.
const publicPathShim = path.join(out, 'public-path.js');
writeFileSync(
  publicPathShim,
  "export const importMetaUrl = { toString: () => new URL(typeof __webpack_public_path__ === 'string' ? __webpack_public_path__ : '', document.baseURI).href };\n",
);

const main = (importPackage) => `import Vue from 'vue';
window.__app = performance.now();
${importPackage}
new Vue({ render: (h) => h('div', 'app') }).$mount('#app');
`;
const measured = "import { load } from '@photonranch/datastream';\nload().then(() => (window.__ready = performance.now()), (e) => (window.__ready = String(e)));";

const variants = {
  public: {
    pkg: (dir) => variantPackage(dir, { INLINE_WASM: 'false', 'import.meta.url': 'importMetaUrl' }, {}, publicPathShim),
    public: { 'datastream_bg.wasm': wasm },
  },
  chunk: { pkg: (dir) => variantPackage(dir, { INLINE_WASM: 'true', 'import.meta.url': '""' }, { 'datastream_bg.wasm.js': inlined.raw }) },
  'chunk-deflate': {
    pkg: (dir) => variantPackage(dir, { INLINE_WASM: 'true', 'import.meta.url': '""' }, { 'datastream_bg.wasm.js': inlined.deflate }),
  },
  inline: {
    pkg: (dir) => {
      variantPackage(dir, { INLINE_WASM: 'true', 'import.meta.url': '""' }, { 'datastream_bg.wasm.js': inlined.raw });
      // The module imported statically: part of the main bundle.
      const legacy = path.join(dir, 'dist/legacy.js');
      const text = readFileSync(legacy, 'utf8');
      if (!text.includes('import("./datastream_bg.wasm.js")')) throw new Error('no dynamic import to make static');
      writeFileSync(legacy, `import __inlined from "./datastream_bg.wasm.js";\n${text.replace('import("./datastream_bg.wasm.js")', 'Promise.resolve({ default: __inlined })')}`);
    },
  },
  webpack4: {
    pkg: (dir) => {
      // wasm-bindgen's output for bundlers: `import * as wasm from './datastream_bg.wasm'`.
      const target = path.join(process.env.CARGO_TARGET_DIR, 'wasm32-unknown-unknown/wasm-release/datastream_client.wasm');
      run('wasm-bindgen', ['--target', 'bundler', '--out-dir', path.join(dir, 'dist'), '--out-name', 'datastream', target], root);
      writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: '@photonranch/datastream', version, module: './dist/entry.js' }));
      writeFileSync(path.join(dir, 'dist/entry.js'), "export const load = () => import('./datastream.js');\n");
    },
  },
};

/** Builds the app of `name` with vue-cli-service (Vue CLI 3.12, webpack 4); returns its dist or an error. */
function build(name, variant) {
  const dir = path.join(out, name);
  const modules = path.join(dir, 'node_modules');
  mkdirSync(path.join(dir, 'src'), { recursive: true });
  mkdirSync(path.join(dir, 'public'), { recursive: true });
  mkdirSync(modules, { recursive: true });
  for (const entry of readdirSync(vuecli3)) {
    if (entry === '.bin' || entry === '.package-lock.json') continue;
    if (entry.startsWith('@')) {
      mkdirSync(path.join(modules, entry), { recursive: true });
      for (const sub of readdirSync(path.join(vuecli3, entry))) symlinkSync(path.join(vuecli3, entry, sub), path.join(modules, entry, sub));
    } else symlinkSync(path.join(vuecli3, entry), path.join(modules, entry));
  }
  variant.pkg(path.join(modules, '@photonranch/datastream'));
  writeFileSync(
    path.join(dir, 'package.json'),
    JSON.stringify({ name, private: true, browserslist: ['> 1%', 'last 2 versions'], dependencies: { vue: '2', '@photonranch/datastream': '*' } }),
  );
  writeFileSync(path.join(dir, 'babel.config.js'), "module.exports = { presets: ['@vue/app'] };\n");
  writeFileSync(
    path.join(dir, 'public/index.html'),
    '<!DOCTYPE html><html><head><meta charset="utf-8"><title>app</title></head><body><div id="app"></div></body></html>',
  );
  for (const [file, bytes] of Object.entries(variant.public ?? {})) writeFileSync(path.join(dir, 'public', file), bytes);
  writeFileSync(path.join(dir, 'src/main.js'), main(measured));
  try {
    run(process.execPath, [path.join(vuecli3, '@vue/cli-service/bin/vue-cli-service.js'), 'build', '--dest', 'dist'], dir, {
      NODE_PATH: '',
      NODE_OPTIONS: '--openssl-legacy-provider',
    });
  } catch (e) {
    const why = `${e.stdout}\n${e.stderr}`.split('\n');
    return { error: why.filter((l) => /Module parse failed|error {2}in/.test(l)).slice(0, 4).join(' / ').slice(0, 400) };
  }
  return { dist: path.join(dir, 'dist') };
}

const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.css': 'text/css' };
let served = null;
const server = http.createServer((req, res) => {
  const file = path.join(served, decodeURIComponent(new URL(req.url, 'http://x').pathname));
  try {
    const body = readFileSync(statSync(file).isDirectory() ? path.join(file, 'index.html') : file);
    res
      .writeHead(200, { 'content-type': types[path.extname(file)] ?? 'text/html', 'content-encoding': 'gzip', 'cache-control': 'no-store' })
      .end(gzipSync(body, { level: 6 }));
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}/`;

const networks = {
  loopback: null,
  '4G, CPU/4': { net: { latency: 40, downloadThroughput: (9e6 / 8) | 0, uploadThroughput: (3e6 / 8) | 0 }, cpu: 4 },
  '3G': { net: { latency: 150, downloadThroughput: (1.6e6 / 8) | 0, uploadThroughput: (750e3 / 8) | 0 }, cpu: 1 },
};
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
const rows = [];
try {
  const built = [];
  for (const [name, variant] of Object.entries(variants)) {
    const b = build(name, variant);
    if (b.error) {
      rows.push({ name, error: b.error });
      console.log(`${name}: the build failed: ${b.error}`);
      continue;
    }
    // What the page downloads: every file of the build, gzip (the page loads them all).
    let js = 0;
    let main = 0;
    let wasmBytes = 0;
    const walk = (d) => {
      for (const f of readdirSync(d)) {
        const p = path.join(d, f);
        if (statSync(p).isDirectory()) walk(p);
        else if (f.endsWith('.js')) {
          const g = gzipSync(readFileSync(p), { level: 6 }).length;
          js += g;
          if (/^(app|chunk-vendors)\./.test(f)) main += g;
        } else if (f.endsWith('.wasm')) wasmBytes += gzipSync(readFileSync(p), { level: 6 }).length;
      }
    };
    walk(b.dist);
    const row = { name, bytes: js + wasmBytes, initial: main, samples: {}, times: {} };
    rows.push(row);
    built.push([row, b.dist]);
  }
  for (const [network, profile] of Object.entries(networks)) {
    for (let i = 0; i < runs; i++) {
      for (const [row, dist] of built) {
        served = dist;
        const context = await browser.newContext();
        const tab = await context.newPage();
        const cdp = await context.newCDPSession(tab);
        await cdp.send('Network.enable');
        await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
        if (profile) {
          await cdp.send('Network.emulateNetworkConditions', { offline: false, ...profile.net });
          await cdp.send('Emulation.setCPUThrottlingRate', { rate: profile.cpu });
        }
        await tab.goto(base);
        await tab.waitForFunction(() => window.__ready !== undefined, null, { timeout: 60_000 });
        const [r, a] = await tab.evaluate(() => [window.__ready, window.__app]);
        if (typeof r !== 'number') throw new Error(`${row.name}: ${r}`);
        (row.samples[network] ??= { ready: [], app: [] }).ready.push(r);
        row.samples[network].app.push(a);
        await context.close();
      }
    }
    for (const [row] of built) row.times[network] = { ready: median(row.samples[network].ready), app: median(row.samples[network].app) };
  }
} finally {
  await browser.close();
  server.close();
}

const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
const ms = (n) => `${Math.round(n)} ms`;
console.log(`\n| way | shipped (gzip: JS + wasm) | of it in the initial bundles | ${Object.keys(networks).map((n) => `ready, ${n} (app started)`).join(' | ')} |`);
console.log(`|---|---|---|${Object.keys(networks).map(() => '---').join('|')}|`);
for (const r of rows) {
  if (r.error) console.log(`| ${r.name} | the build fails: ${r.error.replace(/\|/g, '/')} | | ${Object.keys(networks).map(() => '').join(' | ')} |`);
  else
    console.log(
      `| ${r.name} | ${kb(r.bytes)} | ${kb(r.initial)} | ${Object.values(r.times).map((t) => `${ms(t.ready)} (${ms(t.app)})`).join(' | ')} |`,
    );
}
console.log(`\nmedian of ${runs} page loads each, headless Chromium, nothing cached; load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
