// The package in an app shaped like ptr_ui (tests/client/ptrui/: Vue 2.7, Vuex 3, @vue/cli-service
// 3.12, i.e. webpack 4; a store with a site_config module and a plugin following the selected site
// and its weather station; an Options-API PhaseStatusBar using the composable with the route's
// site): `npm pack`, the app's own dependencies (installed once in $DATASTREAM_TOOLS/ptrui by
// scripts/setup-client-deps.sh) plus nothing but `npm install <tarball>`, built by
// `vue-cli-service build` with no configuration, then run in headless Chromium and Firefox:
//   - against the relay without auth, an anonymous visitor's whole visit (src/scenarios.js: no
//     token and no socket before a site; the site's data; a switch to another site in at most 2
//     frames, the old site's value never shown; '' → nothing, the socket closed after the linger;
//     a relay restart recovered);
//   - against the relay with tokens and anonymous sites: an anonymous visitor reads the public
//     sites; a visitor whose getToken fails twice (then gives a token) connects and reads, the
//     failures seen by onError and onState.
//
//   node tests/client/ptrui-test.mjs --control <port> --jwt-relay <port> --jwt-control <port> --relay <port> --out <dir>
//
// The relay with tokens must let the anonymous visitors' sites (cr-a-mrc, cr-a-mrc2, cr-a-mrcw and
// the same with ff-a-) be read without one (--anonymous-sites). Uses /usr/bin/chromium (playwright-core) and /usr/bin/firefox-esr
// (geckodriver).

import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { withFirefox } from './firefox.mjs';

const require = createRequire(path.join(process.env.NODE_PATH.split(':')[0], 'x.js'));
const { chromium } = require('playwright-core');

const args = process.argv.slice(2);
const opt = (name) => args[args.indexOf(name) + 1];
const ports = { relay: opt('--relay'), control: opt('--control'), jwtRelay: opt('--jwt-relay'), jwtControl: opt('--jwt-control') };
const out = path.resolve(opt('--out'));
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const template = path.join(process.env.DATASTREAM_TOOLS, 'ptrui');

let failures = 0;
function check(cond, what) {
  console.log(`${cond ? 'ok  ' : 'FAIL'} ${what}`);
  if (!cond) failures += 1;
}
const run = (cmd, argv, cwd, env) =>
  execFileSync(cmd, argv, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });

// ----- the app, as its developer gets it -----

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', out], path.join(root, 'npm')));
const tarball = path.join(out, packed[0].filename);
const app = path.join(out, 'ptrui');
cpSync(path.join(root, 'tests/client/ptrui'), app, { recursive: true });
// The app's dependencies as its developer already has them installed.
cpSync(path.join(template, 'node_modules'), path.join(app, 'node_modules'), { recursive: true, verbatimSymlinks: true });
cpSync(path.join(template, 'package-lock.json'), path.join(app, 'package-lock.json'));
run('npm', ['install', '--no-audit', '--no-fund', '--offline', tarball], app);
const manifest = JSON.parse(readFileSync(path.join(app, 'package.json'), 'utf8'));
check(
  manifest.dependencies['@photonranch/datastream'] && readdirSync(path.join(app, 'public')).join() === 'index.html',
  'npm install <tarball> added the package; nothing was copied into public/',
);
let build;
try {
  // NODE_OPTIONS: webpack 4's hashing on Node >= 17, as for any Vue CLI 3 app.
  build = run('npm', ['run', 'build'], app, { NODE_PATH: '', NODE_OPTIONS: '--openssl-legacy-provider' });
} catch (e) {
  build = `FAILED\n${e.stdout}`;
}
check(/Build complete/.test(build), `vue-cli-service build, no configuration ${/Build complete/.test(build) ? '' : build.slice(-3000)}`);
const dist = path.join(app, 'dist');
const shipped = { js: 0, chunks: 0, wasm: 0 };
const walk = (d) => {
  for (const f of readdirSync(d)) {
    const p = path.join(d, f);
    if (statSync(p).isDirectory()) walk(p);
    else if (f.endsWith('.js')) {
      shipped.js += gzipSync(readFileSync(p), { level: 9 }).length;
      shipped.chunks += 1;
    } else if (f.endsWith('.wasm')) shipped.wasm += 1;
  }
};
walk(dist);
console.log(`ptr_ui-shaped build: ${shipped.chunks} JavaScript files, ${shipped.js} B gzip in all (the app, Vue, Vuex and the package)`);
check(shipped.wasm === 0, 'the build needs no .wasm file beside it');

// ----- served as built, at the root of its own origin -----

const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };
const server = http.createServer((req, res) => {
  const file = path.join(dist, decodeURIComponent(new URL(req.url, 'http://x').pathname));
  if (!file.startsWith(dist)) return res.writeHead(403).end();
  try {
    const body = readFileSync(statSync(file).isDirectory() ? path.join(file, 'index.html') : file);
    res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'text/html' }).end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}/`;

/** The page for one visitor: relay, control endpoint, how getTokenSilently behaves, site prefix. */
const page = (relayPort, controlPort, auth, prefix) =>
  `${base}?relay=${encodeURIComponent(`ws://127.0.0.1:${relayPort}/dev`)}&control=${controlPort}&auth=${auth}&prefix=${prefix}`;

// ----- the browsers -----

async function inChromium(url, scenario) {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run'],
  });
  try {
    const tab = await browser.newPage();
    const errors = [];
    tab.on('pageerror', (e) => errors.push(String(e)));
    await tab.goto(url);
    await tab.waitForFunction(() => window.__loaded === true, null, { timeout: 20_000 });
    const result = await tab.evaluate((name) => window.__run(name), scenario);
    return { ...result, pageErrors: errors };
  } finally {
    await browser.close();
  }
}

/** Runs `scenario` in the app at `url` in headless Firefox (tests/client/firefox.mjs). */
function inFirefox(url, scenario) {
  return withFirefox(async (page) => {
    await page.load(url);
    const got = await page.run(
      `const done = arguments[arguments.length - 1];
        window.__run(arguments[0]).then((r) => done({ r }), (e) => done({ error: String(e) + ' ' + (e && e.stack) }));`,
      [scenario],
    );
    if (got.error) throw new Error(got.error);
    return { ...got.r, pageErrors: [] };
  });
}

// Equal as JSON, whatever the order of the keys (WebDriver sorts them).
const sorted = (v) =>
  Array.isArray(v) ? v.map(sorted) : v && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])])) : v;
const same = (a, b) => JSON.stringify(sorted(a)) === JSON.stringify(sorted(b));

try {
  for (const [browser, visit, prefix] of [
    ['Chromium', inChromium, 'cr-'],
    ['Firefox', inFirefox, 'ff-'],
  ]) {
    const [mrc, mrc2, mrcw] = ['mrc', 'mrc2', 'mrcw'].map((s) => prefix + s);
    const attempt = async (what, url, scenario) => {
      try {
        return await visit(url, scenario);
      } catch (e) {
        check(false, `${browser}, ${what}: ${e.message}`);
        return null;
      }
    };
    const nothingBefore = (r) => same(r.before, { sockets: 0, tokens: 0, state: 'idle' });
    const opened = (r) => same(r.open, { sockets: 1, tokens: 1, state: 'connected' }) && r.history === 'slewing,focusing,observing';

    let r = await attempt('anonymous visitor, relay without auth', page(ports.relay, ports.control, 'anonymous', prefix), 'visit');
    if (r) {
      const what = `${browser}, relay without auth, anonymous visitor`;
      check(nothingBefore(r), `${what}: no token asked for and no socket before a site (${JSON.stringify(r.before)})`);
      check(opened(r), `${what}: one socket; the status, the recent phases (rewind) and the latest, the log and the image reach the store (${JSON.stringify(r.open)}, ${r.history})`);
      check(
        r.switchResetAtOnce && r.afterSwitch === '-' && r.oldShown.length === 0 && same(r.switchFrames.sort(), [`subscribe ${mrc2}`, `unsubscribe ${mrc}`]),
        `${what}: to another site: 2 frames, the bar reset at once, the old site's phase never shown (${JSON.stringify([r.switchFrames, r.afterSwitch, r.oldShown])})`,
      );
      check(
        r.emptyAtOnce && r.empty === '-' && same(r.leaveFrames, [`unsubscribe ${mrc2}`, `unsubscribe ${mrcw}`]) && r.linger >= 4500 && r.idle === 'idle',
        `${what}: site '': nothing subscribed or shown, the socket closed after the linger (${JSON.stringify([r.leaveFrames, r.linger, r.idle])})`,
      );
      check(r.errors.length === 0 && r.pageErrors.length === 0, `${what}: a relay restart recovered; no error (${JSON.stringify([r.errors, r.pageErrors])})`);
    }

    r = await attempt('anonymous visitor, relay with tokens', page(ports.jwtRelay, ports.jwtControl, 'anonymous', `${prefix}a-`), 'brief');
    if (r) {
      check(
        nothingBefore(r) && same(r.open, { sockets: 1, tokens: 1, state: 'connected' }) && r.errors.length === 0 && r.pageErrors.length === 0,
        `${browser}, relay with tokens and anonymous sites, anonymous visitor: the public site's data (${JSON.stringify(r)})`,
      );
    }

    r = await attempt('getToken failing twice, relay with tokens', page(ports.jwtRelay, ports.jwtControl, 'flaky', `${prefix}t-`), 'brief');
    if (r) {
      const failed = r.errors.filter((e) => e === 'token: getToken() failed: Timeout').length;
      const retried = r.states.filter((s) => s === 'reconnecting: getToken() failed').length;
      check(
        nothingBefore(r) && r.open.sockets === 1 && r.open.tokens === 3 && failed === 2 && retried === 2 && r.pageErrors.length === 0,
        `${browser}, relay with tokens, getToken failing twice then a token: connected and delivered, onError and onState saw both (${JSON.stringify([r.open, r.errors, r.states])})`,
      );
    }
  }
} finally {
  server.close();
}

if (failures > 0) {
  console.error(`${failures} ptr_ui-shaped app check(s) failed`);
  process.exit(1);
}
console.log('ptr_ui-shaped app checks passed');
