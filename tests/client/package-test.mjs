// Tests the npm package as a user gets it (the app shaped like ptr_ui is tests/client/ptrui-test.mjs):
// `npm pack`, install the tarball into a scratch project,
// import it from Node (ESM and CommonJS, touching no browser global) and run it there against the
// relay, check its types with tsc, build an app with Vite and with webpack 5 (no bundler
// configuration), Vue 2.7 and Vue 2.6 + @vue/composition-api apps the way Vue CLI 3 builds them
// (webpack 4, Babel 7, the package not transpiled) and a Vue 3 app with Vite, and run each build — plus a plain <script type="module"> page — in headless
// Chromium against the relay.
// The plain page also runs the leak check: after 1100 reconnect cycles, 1000 more must leave the JS
// heap (measured after forced GC) and the WebAssembly memory flat.
//
//   node tests/client/package-test.mjs --control <port> --proxy <port> --out <dir>
//
// Needs the harness (tests/client/harness.mjs) running, npm/dist built (npm/build.sh),
// playwright-core, vite, webpack, webpack-cli and typescript resolvable through NODE_PATH
// (scripts/client-env.sh), and the Vue CLI 3 toolchain in $DATASTREAM_TOOLS/vuecli3
// (scripts/setup-client-deps.sh). Uses /usr/bin/chromium.

import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
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
const shipped = ['index.d.ts', 'vue.d.ts', 'vue/package.json', 'vue/composition-api/package.json', 'package.json', 'dist/index.js',
  'dist/legacy.js', 'dist/index.cjs', 'dist/vue.js', 'dist/vue.cjs', 'dist/vue-composition-api.js', 'dist/vue-composition-api.cjs',
  'dist/datastream_bg.wasm'];
check(
  shipped.every((f) => packedFiles.includes(f)),
  'the tarball holds the three builds, the Vue entries, the types and the wasm',
);

const app = path.join(out, 'app');
mkdirSync(path.join(app, 'src'), { recursive: true });
writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'scratch-app', private: true, type: 'module' }));
run('npm', ['install', '--no-audit', '--no-fund', '--offline', tarball], app);

// Importing (or requiring) the package must touch no browser global: SSR and test runners import
// it where there is none, or a fake one.
const trap = `const touched = [];
for (const name of ['window', 'document', 'location', 'self', 'navigator', 'WebSocket', 'fetch', 'addEventListener']) {
  Object.defineProperty(globalThis, name, { configurable: true, get() { touched.push(name); return undefined; } });
}`;
const nodeCheck = run(
  process.execPath,
  [
    '--input-type=module',
    '-e',
    `${trap}
const m = await import('@photonranch/datastream');
const v = await import('@photonranch/datastream/vue').catch((e) => ({ error: e.code }));
console.log(typeof m.Datastream, typeof m.load, typeof m.DatastreamError, touched.join(',') || 'none');`,
  ],
  app,
).trim();
check(nodeCheck === 'function function function none', `import from Node resolves the exports and touches no browser global (${nodeCheck})`);
const cjsCheck = run(
  process.execPath,
  [
    '--input-type=commonjs',
    '-e',
    `${trap}
const m = require('@photonranch/datastream');
console.log(typeof m.Datastream, typeof m.load, typeof m.Subscription, touched.join(',') || 'none');`,
  ],
  app,
).trim();
check(cjsCheck === 'function function function none', `require from CommonJS works and touches no browser global (${cjsCheck})`);

// Running in Node: the .wasm is read from the package, the WebSocket constructor given as an
// option (Node 20's, behind --experimental-websocket; Node 22 has it by default).
const nodeRun = (mod) => `
const { Datastream } = ${mod};
const site = 'node-' + Date.now() + '-' + Math.random().toString(36).slice(2, 6);
const ds = new Datastream({ url: 'ws://127.0.0.1:${proxyPort}/dev', sites: [site], WebSocket: globalThis.WebSocket });
const got = [];
ds.on('weather', (data, meta) => got.push([data, meta.site, meta.offset]));
const timer = setTimeout(() => { console.log('timeout ' + JSON.stringify(ds.state)); process.exit(1); }, 15000);
ds.ready().then(async () => {
  await fetch('http://127.0.0.1:${controlPort}/publish', { method: 'POST', body: JSON.stringify({ site, topic: 'weather', data: { t: 1 } }) });
  for (let i = 0; i < 500 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  ds.close();
  clearTimeout(timer);
  console.log(JSON.stringify(got[0]?.[0]) + ' ' + (got[0]?.[1] === site) + ' ' + ds.state.code);
});`;
for (const [name, flag, mod] of [
  ['ESM', '--input-type=module', "await import('@photonranch/datastream')"],
  ['CommonJS', '--input-type=commonjs', "require('@photonranch/datastream')"],
]) {
  let out;
  try {
    out = run(process.execPath, ['--experimental-websocket', '--no-warnings', flag, '-e', nodeRun(mod)], app).trim();
  } catch (e) {
    out = String(e.stdout ?? e.message).trim();
  }
  check(out === '{"t":1} true 1000', `runs in Node (${name}) with a WebSocket option: connected, received, closed (${out})`);
}
const installed = path.join(app, 'node_modules/@photonranch/datastream');

// The types: right uses compile, typos in options, states and kinds do not.
writeFileSync(
  path.join(app, 'types-test.ts'),
  `import { Datastream, DatastreamError, type State, type Subscription } from '@photonranch/datastream';
import { stopDatastream, useDatastream } from '@photonranch/datastream/vue';
const ds = new Datastream({ url: 'ws://x/dev', sites: ['mrc'], getToken: async () => 't', debug: true,
  logger: (event, detail) => console.log(event, detail) });
// @ts-expect-error a typo in an option
new Datastream({ url: 'ws://x/dev', minReconectDelay: 5 });
// @ts-expect-error not a protocol
new Datastream({ url: 'ws://x/dev', protocol: 'v3' });
// @ts-expect-error getToken must give a string (or null: no token)
new Datastream({ url: 'ws://x/dev', getToken: async () => 5 });
new Datastream({ url: 'ws://x/dev', getToken: async () => null, autoConnect: false }).connect();
// @ts-expect-error autoConnect is a boolean
new Datastream({ url: 'ws://x/dev', autoConnect: 'no' });
ds.onState((s: State) => {
  // @ts-expect-error a typo in a state type
  if (s.type === 'conected') return;
  if (s.type === 'reconnecting') console.log(s.attempt + s.delay, s.reason.length);
  if (s.type === 'idle') console.log('no site');
  // @ts-expect-error only a reconnecting state has an attempt
  if (s.type === 'connected') console.log(s.attempt);
  if (s.type === 'closed') console.log(s.code, s.reason);
});
const sub: Subscription = ds.subscribe('mrc', { rewind: 5 });
sub.ready.then(({ epoch, offset, replayed, recovered }) => console.log(epoch, offset, replayed, recovered));
// @ts-expect-error a typo in a subscription state
if (sub.state === 'subscibed') console.log();
sub.on('weather', (data, meta) => console.log(data, meta.site, meta.offset));
ds.on('weather', () => {}, { site: ['mrc', 'saf'] });
ds.onError((e: DatastreamError) => {
  // @ts-expect-error a typo in an error kind
  if (e.kind === 'sever') return;
  if (e.kind === 'server') console.log(e.code, e.site);
  if (e.kind === 'version' || e.kind === 'token') console.log(e.message);
});
// @ts-expect-error subscribe's options are checked too
ds.subscribe('mrc', { rewnd: 5 });
// Latest values: on() and handles take the option, meta says which, latest() reads the cache.
ds.on('weather', (data, meta) => { const snapshot: boolean = meta.latest === true; console.log(data, snapshot); }, { site: 'mrc', latest: true });
sub.on('weather', () => {}, { latest: true });
const held: { t: number } | undefined = ds.latest<{ t: number }>('mrc', 'weather');
console.log(held);
// Per kind of state: latest() takes the kind; the option names the topics kept per kind.
const enclosure: { statusType: string } | undefined = ds.latest<{ statusType: string }>('mrc', 'sitestatus', 'enclosure');
console.log(enclosure, new Datastream({ url: 'ws://x', protocol: 'legacy', latestKeys: { sitestatus: 'statusType' } }));
// @ts-expect-error a kind is a string
ds.latest('mrc', 'sitestatus', 1);
// @ts-expect-error latestKeys maps topics to field names
new Datastream({ url: 'ws://x', latestKeys: { sitestatus: true } });
// @ts-expect-error a typo in on()'s options
ds.on('weather', () => {}, { lastest: true });
// @ts-expect-error latest is a boolean
ds.on('weather', () => {}, { latest: 'yes' });
useDatastream('weather', { site: 'mrc', client: ds, latest: true });
// @ts-expect-error a typo in the composable's options
useDatastream('weather', { site: 'mrc', client: ds, lates: true });
const latest = useDatastream<{ t: number }>('weather', { site: 'mrc', client: ds });
const t: number | undefined = latest.value?.t;
useDatastream('weather', (data, meta) => console.log(data, meta.offset, t), { site: () => 'mrc' });
useDatastream('phase_status', { site: () => '', rewind: 10, latest: true, client: ds });
// @ts-expect-error rewind is a number
useDatastream('phase_status', { site: 'mrc', rewind: true, client: ds });
stopDatastream(latest);
// @ts-expect-error the latest value is read-only
latest.value = { t: 1 };
`,
);
let tscOut = '';
try {
  run(process.execPath, [path.join(toolsBin, 'tsc'), '--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext',
    '--target', 'es2022', '--lib', 'es2022,dom', 'types-test.ts'], app);
} catch (e) {
  tscOut = String(e.stdout);
}
check(tscOut === '', `tsc --strict accepts the right uses and refuses every typo ${tscOut}`);

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
    // load() resolves to the module's exports, whose names the build shortens: find the memory.
    const memory = Object.values(await load()).find((v) => v instanceof WebAssembly.Memory);
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
// Vite's dev server (dependency pre-bundling moves the JavaScript away from its .wasm).
writeFileSync(
  path.join(app, 'dev.html'),
  `<!doctype html><html><head><script type="module">
import { Datastream } from '@photonranch/datastream';
const q = new URLSearchParams(location.search);
const site = 'pkg-vite-dev-' + Date.now();
const ds = new Datastream({ url: 'ws://127.0.0.1:' + q.get('proxy') + '/dev', sites: [site] });
ds.on('weather', (data) => { window.__got = data; ds.close(); });
ds.ready().then(() => fetch('http://127.0.0.1:' + q.get('control') + '/publish',
  { method: 'POST', body: JSON.stringify({ site, topic: 'weather', data: { dev: true } }) }), (e) => (window.__got = String(e)));
</script></head><body></body></html>`,
);
// The plain page imports the installed package by path, as a page without a bundler would.
writeFileSync(
  path.join(app, 'plain.html'),
  `<!doctype html><html><head><script type="module">${appSource('/app/node_modules/@photonranch/datastream/dist/index.js')}</script></head><body></body></html>`,
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

// ----- Vue 2 apps built the way Vue CLI 3 builds them (ptr_ui's toolchain) -----

// webpack 4.46 and Babel 7 through @vue/cli-service 3.12 and @vue/cli-plugin-babel 3, with their
// defaults: dependencies are not transpiled, nothing is configured for the package, no file is
// copied (the module comes in an async chunk of the build). Two apps: Vue 2.7, and Vue 2.6 with
// @vue/composition-api (what ptr_ui ran before 2.7).
const vuecli3 = path.join(process.env.DATASTREAM_TOOLS, 'vuecli3/node_modules');
const vue26 = path.join(process.env.DATASTREAM_TOOLS, 'vue26/node_modules');

/** Creates a Vue CLI 3 app in `dir` whose node_modules are the toolchain's (with `overrides`:
 * name → directory) and the installed package, and `main` as its src/main.js; returns the
 * build's output, starting with FAILED if it failed. */
function vueCliApp(dir, overrides, main) {
  mkdirSync(path.join(dir, 'src'), { recursive: true });
  mkdirSync(path.join(dir, 'public'), { recursive: true });
  const modules = path.join(dir, 'node_modules');
  mkdirSync(modules, { recursive: true });
  const link = (name, target) => {
    rmSync(path.join(modules, name), { recursive: true, force: true });
    mkdirSync(path.dirname(path.join(modules, name)), { recursive: true });
    symlinkSync(target, path.join(modules, name));
  };
  for (const name of readdirSync(vuecli3)) {
    if (name === '.bin' || name === '.package-lock.json') continue;
    // Scopes are linked entry by entry, so an override can join one.
    if (name.startsWith('@')) for (const sub of readdirSync(path.join(vuecli3, name))) link(`${name}/${sub}`, path.join(vuecli3, name, sub));
    else link(name, path.join(vuecli3, name));
  }
  for (const [name, target] of Object.entries(overrides)) link(name, target);
  mkdirSync(path.join(modules, '@photonranch/datastream'), { recursive: true });
  run('tar', ['-xzf', tarball, '-C', path.join(modules, '@photonranch/datastream'), '--strip-components=1'], dir);
  writeFileSync(
    path.join(dir, 'package.json'),
    JSON.stringify({
      name: path.basename(dir),
      private: true,
      dependencies: { vue: '2', 'core-js': '2.6.12', 'regenerator-runtime': '0.13', '@photonranch/datastream': '*' },
      devDependencies: { '@vue/cli-service': '3.12.1', '@vue/cli-plugin-babel': '3.12.1', 'vue-template-compiler': '2' },
      browserslist: ['> 1%', 'last 2 versions'],
    }),
  );
  writeFileSync(path.join(dir, 'babel.config.js'), "module.exports = { presets: ['@vue/app'] };\n");
  // Only because the test serves the build from a subdirectory.
  writeFileSync(path.join(dir, 'vue.config.js'), "module.exports = { publicPath: './' };\n");
  writeFileSync(
    path.join(dir, 'public/index.html'),
    '<!DOCTYPE html><html><head><meta charset="utf-8"><title>app</title></head><body><div id="app"></div></body></html>',
  );
  writeFileSync(path.join(dir, 'src/main.js'), main);
  try {
    return execFileSync(process.execPath, [path.join(vuecli3, '@vue/cli-service/bin/vue-cli-service.js'), 'build', '--dest', 'dist'], {
      cwd: dir,
      env: { ...process.env, NODE_PATH: '', NODE_OPTIONS: '--openssl-legacy-provider' },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (e) {
    return `FAILED\n${e.stdout}\n${e.stderr}`;
  }
}

// ptr_ui's pattern: one shared client; the site follows the route; two components want the same
// site's topics and one of them goes away; the route moves to another site (the value shown goes
// at once, the old site's never comes back), then to none (''). The same app for Vue 2.7 and Vue
// 2.6 (Vue CLI 3) and Vue 3 (Vite).
const vueApp = (flavour) => {
  const v3 = flavour === 'vue3';
  const imports = {
    vue3: "import { createApp, ref, h } from 'vue';\nimport { setDatastream, useDatastream } from '@photonranch/datastream/vue';",
    'vue2.7': "import Vue, { ref, h } from 'vue';\nimport { setDatastream, useDatastream } from '@photonranch/datastream/vue';",
    'vue2.6': "import Vue from 'vue';\nimport VueCompositionAPI, { ref, h } from '@vue/composition-api';\n" +
      "import { setDatastream, useDatastream } from '@photonranch/datastream/vue/composition-api';\nVue.use(VueCompositionAPI);",
  }[flavour];
  return `${imports}
import { Datastream } from '@photonranch/datastream';

const q = new URLSearchParams(location.search);
const control = 'http://127.0.0.1:' + q.get('control');
const publish = (site, data) =>
  fetch(control + '/publish', { method: 'POST', body: JSON.stringify({ site, topic: 'weather', data }) });
const until = async (what, cond, ms = 10000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 5));
  }
};
const text = (id) => (document.getElementById(id) || {}).textContent;

window.__run = async (prefix) => {
  const log = [];
  const ds = new Datastream({ url: 'ws://127.0.0.1:' + q.get('proxy') + '/dev', minReconnectDelay: 1, maxReconnectDelay: 5,
    logger: (event, detail) => log.push(event + ' ' + (detail.site || '')) });
  setDatastream(ds);
  const [a, b] = [prefix + '-a', prefix + '-b'];
  const route = ref(a);
  const refs = {};
  const errors = [];
  const Status = {
    props: ['id'],
    setup(props) {
      const weather = useDatastream('weather', { site: () => route.value });
      refs[props.id] = weather;
      return () => h('span', ${v3 ? '{ id: props.id }' : '{ attrs: { id: props.id } }'}, weather.value ? String(weather.value.t) : '-');
    },
  };
  const showBar = ref(true);
  // Vue 2: the root's render gets its createElement (a composable's h needs a component instance).
  const render = (${v3 ? '' : 'h'}) => h('div', [h(Status, ${v3 ? "{ id: 'page' }" : "{ props: { id: 'page' } }"}), showBar.value ? h(Status, ${v3 ? "{ id: 'bar' }" : "{ props: { id: 'bar' } }"}) : null]);
  ${v3 ? "const app = createApp({ render }); app.config.errorHandler = (e) => errors.push(String(e)); app.mount('#app'); const unmount = () => app.unmount();" : "Vue.config.errorHandler = (e) => errors.push(String(e)); const vm = new Vue({ render }).$mount('#app'); const unmount = () => vm.$destroy();"}
  const result = {};
  await ds.ready();
  await publish(a, { t: 1 });
  await until('both components to show a', () => text('page') === '1' && text('bar') === '1');
  showBar.value = false;
  await until('the bar to go', () => text('bar') === undefined);
  await publish(a, { t: 2 });
  await until('the page to still receive a', () => text('page') === '2');
  result.heldBySecond = !log.includes('unsubscribe ' + a);
  route.value = b;
  result.resetAtOnce = refs.page.value === undefined;
  await until('the move to b', () => log.includes('unsubscribe ' + a) && log.includes('subscribed ' + b));
  await publish(a, { t: 3 });
  await new Promise((r) => setTimeout(r, 300));
  result.shownAfterMove = text('page');
  await publish(b, { t: 4 });
  await until('the page to show b', () => text('page') === '4');
  // No site: nothing subscribed, nothing shown, nothing thrown.
  const subscribes = log.filter((l) => l.startsWith('subscribe ')).length;
  route.value = '';
  result.emptyAtOnce = refs.page.value === undefined;
  await until('b released', () => log.includes('unsubscribe ' + b));
  await publish(b, { t: 5 });
  await new Promise((r) => setTimeout(r, 300));
  result.shownWithoutSite = text('page');
  result.subscribedWithoutSite = log.filter((l) => l.startsWith('subscribe ')).length - subscribes;
  const confirmed = log.filter((l) => l === 'subscribed ' + b).length;
  route.value = b;
  await until('b subscribed again', () => log.filter((l) => l === 'subscribed ' + b).length > confirmed);
  await publish(b, { t: 6 });
  await until('the page to show b again', () => text('page') === '6');
  result.errors = errors;
  unmount();
  await until('the release on unmount', () => log.includes('unsubscribe ' + b));
  ds.close();
  result.closed = ds.state.code;
  return result;
};
window.__loaded = true;
`;
};

// Vue 3, built by Vite: the app's `vue` is the tools' Vue 3.
symlinkSync(path.join(process.env.NODE_PATH.split(':')[0], 'vue'), path.join(app, 'node_modules/vue'));
mkdirSync(path.join(app, 'vue3'));
writeFileSync(path.join(app, 'vue3/main.js'), vueApp('vue3'));
writeFileSync(
  path.join(app, 'vue3/index.html'),
  '<!doctype html><html><head><script type="module" src="./main.js"></script></head><body><div id="app"></div></body></html>',
);
run(process.execPath, [path.join(toolsBin, 'vite'), 'build', 'vue3', '--base', './', '--outDir', '../dist-vue3', '--emptyOutDir', '--logLevel', 'warn'], app);
for (const [name, dir, overrides, flavour] of [
  ['Vue 2.7', 'vue2app', {}, 'vue2.7'],
  ['Vue 2.6 with @vue/composition-api', 'vue26app', { vue: path.join(vue26, 'vue'), '@vue/composition-api': path.join(vue26, '@vue/composition-api') }, 'vue2.6'],
]) {
  const build = vueCliApp(path.join(out, dir), overrides, vueApp(flavour));
  check(!build.startsWith('FAILED') && /Build complete/.test(build), `Vue CLI 3 (webpack 4, Babel 7) builds the ${name} app ${build.startsWith('FAILED') ? build.slice(-3000) : ''}`);
}

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
for (const d of ['app/dist-vite', 'app/dist-webpack']) {
  const s = sizeOf(path.join(out, d));
  console.log(`${d}: js ${s.js} B gzip, wasm ${s.wasm} B gzip, total ${s.js + s.wasm} B gzip`);
}

// ----- run them in Chromium -----

const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const file = path.join(out, decodeURIComponent(url.pathname));
  if (!file.startsWith(out)) return res.writeHead(403).end();
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
    ['vite', '/app/dist-vite/index.html'],
    ['webpack', '/app/dist-webpack/index.html'],
    ['script type=module', '/app/plain.html'],
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

  {
    // A free port for the dev server.
    const probe = http.createServer();
    await new Promise((r) => probe.listen(0, '127.0.0.1', r));
    const devPort = probe.address().port;
    await new Promise((r) => probe.close(r));
    const dev = spawn(process.execPath, [path.join(toolsBin, 'vite'), '--port', String(devPort), '--strictPort', '--host', '127.0.0.1'], {
      cwd: app,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let devOut = '';
    dev.stdout.on('data', (d) => (devOut += d));
    dev.stderr.on('data', (d) => (devOut += d));
    const tab = await browser.newPage();
    let got;
    try {
      for (let i = 0; i < 100 && !devOut.includes('ready in'); i++) await new Promise((r) => setTimeout(r, 100));
      await tab.goto(`http://127.0.0.1:${devPort}/dev.html?control=${controlPort}&proxy=${proxyPort}`);
      await tab.waitForFunction(() => window.__got !== undefined, null, { timeout: 30_000 });
      got = await tab.evaluate(() => window.__got);
    } catch (e) {
      got = e.message;
    } finally {
      await tab.close();
      dev.kill('SIGTERM');
    }
    check(JSON.stringify(got) === '{"dev":true}', `Vite dev server, no configuration: loaded, connected and received (${JSON.stringify(got)})`);
  }

  for (const [name, page] of [
    ['Vue 2.7 app built by Vue CLI 3 (webpack 4)', '/vue2app/dist/index.html'],
    ['Vue 2.6 + @vue/composition-api app built by Vue CLI 3 (webpack 4)', '/vue26app/dist/index.html'],
    ['Vue 3 app built by Vite', '/app/dist-vue3/index.html'],
  ]) {
    const tab = await browser.newPage();
    const errors = [];
    tab.on('pageerror', (e) => errors.push(String(e)));
    let result;
    try {
      await tab.goto(`${base}${page}?control=${controlPort}&proxy=${proxyPort}`);
      await tab.waitForFunction(() => window.__loaded === true, null, { timeout: 10_000 });
      result = await tab.evaluate((p) => window.__run(p), `vue-${Date.now()}`, { timeout: 60_000 });
    } catch (e) {
      check(false, `${name}: ${e.message}`);
    }
    if (result) {
      check(result.heldBySecond, `${name}: a component unmounting leaves the site to the component still using it`);
      check(
        result.resetAtOnce && result.shownAfterMove === '-',
        `${name}: the route's new site: the ref back to its initial value at once, the old site's publications not shown (${result.resetAtOnce}, ${result.shownAfterMove})`,
      );
      check(
        result.emptyAtOnce && result.shownWithoutSite === '-' && result.subscribedWithoutSite === 0 && result.errors.length === 0,
        `${name}: the route's site '': nothing subscribed or shown, no error (${JSON.stringify(result)})`,
      );
      check(result.closed === 1000, `${name}: useDatastream followed the route and released on unmount; closed (1000)`);
    }
    check(errors.length === 0, `${name}: no page errors ${errors.join('; ')}`);
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
