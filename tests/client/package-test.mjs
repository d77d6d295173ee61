// Tests the npm package as a user gets it: `npm pack`, install the tarball into a scratch project,
// import it from Node, build an app with Vite and with webpack (no bundler configuration), and run
// each build — plus a plain <script type="module"> page — in headless Chromium against the relay.
// The plain page also runs the leak check: after 1100 reconnect cycles, 1000 more must leave the JS
// heap (measured after forced GC) and the WebAssembly memory flat.
//
//   node tests/client/package-test.mjs --control <port> --proxy <port> --out <dir>
//
// Needs the harness (tests/client/harness.mjs) running, npm/wasm built (npm/build.sh), and
// playwright-core, vite, webpack and webpack-cli resolvable through NODE_PATH
// (scripts/client-env.sh). Uses /usr/bin/chromium.

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const require = createRequire(path.join(process.env.NODE_PATH.split(':')[0], 'x.js'));
const { chromium } = require('playwright-core');

const args = process.argv.slice(2);
const opt = (name) => args[args.indexOf(name) + 1];
const controlPort = Number(opt('--control'));
const proxyPort = Number(opt('--proxy'));
const out = path.resolve(opt('--out'));
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const toolsBin = path.join(process.env.NODE_PATH.split(':')[0], '.bin');

let failures = 0;
function check(cond, what) {
  console.log(`${cond ? 'ok  ' : 'FAIL'} ${what}`);
  if (!cond) failures += 1;
}
const run = (cmd, argv, cwd) => execFileSync(cmd, argv, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });

// ----- pack and install -----

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', out], path.join(root, 'npm')));
const tarball = path.join(out, packed[0].filename);
const packedFiles = packed[0].files.map((f) => f.path).sort();
console.log(`packed ${packed[0].filename}: ${packedFiles.join(', ')}`);
check(
  ['index.d.ts', 'index.js', 'package.json', 'wasm/datastream.js', 'wasm/datastream_bg.wasm'].every((f) => packedFiles.includes(f)),
  'the tarball holds the wrapper, its types, the glue and the wasm',
);
// The glue imports the crate's own JavaScript (the dispatcher) from wasm/snippets/.
const glueImports = [...readFileSync(path.join(root, 'npm/wasm/datastream.js'), 'utf8').matchAll(/from '\.\/(snippets\/[^']+)'/g)].map((m) => `wasm/${m[1]}`);
check(
  glueImports.length > 0 && glueImports.every((f) => packedFiles.includes(f)),
  `the tarball holds the modules the glue imports (${glueImports.join(', ')})`,
);

const app = path.join(out, 'app');
mkdirSync(path.join(app, 'src'), { recursive: true });
writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'scratch-app', private: true, type: 'module' }));
run('npm', ['install', '--no-audit', '--no-fund', '--offline', tarball], app);

const nodeCheck = run(
  process.execPath,
  [
    '--input-type=module',
    '-e',
    "const m = await import('@photonranch/datastream'); console.log(typeof m.Datastream, typeof m.load);",
  ],
  app,
).trim();
check(nodeCheck === 'function function', `import from Node resolves the package exports (${nodeCheck})`);
const installed = path.join(app, 'node_modules/@photonranch/datastream');
check(statSync(path.join(installed, 'index.d.ts')).size > 0, 'TypeScript types are installed');

// ----- the app, built three ways -----

// One page script for every variant: connect through the proxy, receive, report; and, with
// ?leak, run the reconnect cycles.
const appSource = (importFrom) => `
import { Datastream, load } from '${importFrom}';
const q = new URLSearchParams(location.search);
const control = 'http://127.0.0.1:' + q.get('control');
const post = (p, body) => fetch(control + p, { method: 'POST', body: body ?? '' }).then((r) => r.json());
const until = async (what, cond, ms = 10000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 5));
  }
};
window.__run = async (site) => {
  const ds = new Datastream({ url: 'ws://127.0.0.1:' + q.get('proxy') + '/dev', sites: [site],
    minReconnectDelay: 1, maxReconnectDelay: 5 });
  const got = [];
  let connects = 0;
  ds.onState((s) => {
    if (s.type === 'connected') connects += 1;
  });
  ds.on('weather', (data, meta) => got.push([data, meta.site, meta.offset]));
  await ds.ready();
  await post('/publish', JSON.stringify({ site, topic: 'weather', data: { t: 11.5 } }));
  await until('a publication', () => got.length === 1);
  const result = { got, connected: ds.state.type };
  if (q.has('leak')) {
    const memory = (await load()).memory;
    const cycle = async () => {
      const before = connects;
      await post('/cut');
      await until('the reconnect', () => connects > before);
      await ds.ready();
    };
    for (let i = 0; i < 100; i++) await cycle();
    await window.__measure('warm');
    result.wasmWarm = memory.buffer.byteLength;
    for (let i = 0; i < 1000; i++) await cycle();
    await window.__measure('mid');
    for (let i = 0; i < 1000; i++) await cycle();
    await window.__measure('end');
    result.wasmEnd = memory.buffer.byteLength;
    result.open = (await post('/stats')).open;
    await post('/publish', JSON.stringify({ site, topic: 'weather', data: { t: 12 } }));
    await until('a publication after the cycles', () => got.length === 2);
  }
  ds.close();
  result.closed = ds.state;
  result.connects = connects;
  return result;
};
window.__loaded = true;
`;

writeFileSync(path.join(app, 'src/main.js'), appSource('@photonranch/datastream'));
writeFileSync(
  path.join(app, 'index.html'),
  '<!doctype html><html><head><script type="module" src="/src/main.js"></script></head><body></body></html>',
);
// The plain page imports the installed package by path, as a page without a bundler would.
writeFileSync(
  path.join(app, 'plain.html'),
  `<!doctype html><html><head><script type="module">${appSource('/node_modules/@photonranch/datastream/index.js')}</script></head><body></body></html>`,
);

// `--base ./` only because the test serves the build from a subdirectory.
run(process.execPath, [path.join(toolsBin, 'vite'), 'build', '--base', './', '--outDir', 'dist-vite', '--logLevel', 'warn'], app);
check(readdirSync(path.join(app, 'dist-vite/assets')).some((f) => f.endsWith('.wasm')), 'Vite emits the .wasm as an asset');
run(
  process.execPath,
  [path.join(toolsBin, 'webpack'), '--mode', 'production', '--entry', './src/main.js', '--output-path', 'dist-webpack'],
  app,
);
writeFileSync(
  path.join(app, 'dist-webpack/index.html'),
  '<!doctype html><html><head><script src="main.js"></script></head><body></body></html>',
);
check(readdirSync(path.join(app, 'dist-webpack')).some((f) => f.endsWith('.wasm')), 'webpack emits the .wasm as an asset');

// What an app ships: the built JS (app code included, a few hundred bytes) and the wasm.
const sizeOf = (dir) => {
  let js = 0;
  let wasm = 0;
  const walk = (d) => {
    for (const f of readdirSync(d)) {
      const p = path.join(d, f);
      if (statSync(p).isDirectory()) walk(p);
      else if (f.endsWith('.js')) js += gzipSync(readFileSync(p), { level: 9 }).length;
      else if (f.endsWith('.wasm')) wasm += gzipSync(readFileSync(p), { level: 9 }).length;
    }
  };
  walk(dir);
  return { js, wasm };
};
for (const d of ['dist-vite', 'dist-webpack']) {
  const s = sizeOf(path.join(app, d));
  console.log(`${d}: js ${s.js} B gzip, wasm ${s.wasm} B gzip, total ${s.js + s.wasm} B gzip`);
}

// ----- run them in Chromium -----

const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const file = path.join(app, decodeURIComponent(url.pathname));
  if (!file.startsWith(app)) return res.writeHead(403).end();
  try {
    const body = readFileSync(file);
    res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' }).end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
try {
  const variants = [
    ['vite', '/dist-vite/index.html'],
    ['webpack', '/dist-webpack/index.html'],
    ['script type=module', '/plain.html'],
  ];
  for (const [name, page] of variants) {
    const leak = name === 'script type=module';
    const tab = await browser.newPage();
    const errors = [];
    tab.on('pageerror', (e) => errors.push(String(e)));
    const cdp = await tab.context().newCDPSession(tab);
    const heap = {};
    await tab.exposeFunction('__measure', async (label) => {
      for (let i = 0; i < 3; i++) await cdp.send('HeapProfiler.collectGarbage');
      heap[label] = (await cdp.send('Runtime.getHeapUsage')).usedSize;
    });
    await tab.goto(`${base}${page}?control=${controlPort}&proxy=${proxyPort}${leak ? '&leak' : ''}`);
    await tab.waitForFunction(() => window.__loaded === true, null, { timeout: 10_000 });
    const site = `pkg-${name.replace(/\W+/g, '-')}-${Date.now()}`;
    let result;
    try {
      result = await tab.evaluate((s) => window.__run(s), site, { timeout: 300_000 });
    } catch (e) {
      check(false, `${name}: ${e.message}`);
      await tab.close();
      continue;
    }
    check(
      JSON.stringify(result.got[0]) === JSON.stringify([{ t: 11.5 }, site, 1]),
      `${name}: connected and received ${JSON.stringify(result.got[0])}`,
    );
    check(result.connected === 'connected' && result.closed.type === 'closed' && result.closed.code === 1000, `${name}: connected, then closed (1000)`);
    check(errors.length === 0, `${name}: no page errors ${errors.join('; ')}`);
    if (leak) {
      // The first thousand cycles include the JIT's warm-up; the second thousand must not grow.
      const growth = heap.end - heap.mid;
      console.log(
        `leak check: JS heap ${heap.warm} B after 100 reconnects, ${heap.mid} B after 1000 more, ${heap.end} B after 1000 more (last 1000: ${growth >= 0 ? '+' : ''}${growth} B); ` +
          `wasm memory ${result.wasmWarm} B -> ${result.wasmEnd} B; proxied connections open at the end: ${result.open}`,
      );
      writeFileSync(path.join(out, 'leak.json'), JSON.stringify({ ...heap, wasmWarm: result.wasmWarm, wasmEnd: result.wasmEnd }));
      check(growth < 64 * 1024, `1000 reconnect cycles leave the JS heap flat (growth ${growth} B < 64 KiB)`);
      check(result.wasmEnd === result.wasmWarm, 'the WebAssembly memory did not grow');
      check(result.open === 1, 'exactly one socket open after the cycles');
      check(result.got.length === 2, 'still receiving after the cycles');
      check(result.connects >= 2101, `reconnected after every cut (${result.connects} connections)`);
    }
    await tab.close();
  }
} finally {
  await browser.close();
  server.close();
}

if (failures > 0) {
  console.error(`${failures} package check(s) failed`);
  process.exit(1);
}
console.log('package checks passed');
