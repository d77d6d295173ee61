// Dispatch throughput of the browser SDK (messages/s reaching `on` callbacks) next to a plain
// WebSocket + JSON.parse handler on the same v2 stream, in headless Chromium; and the package's
// bundle size. Prints one JSON line. Each handler gets the same messages (several rounds, each
// measure's best kept); besides the wall-clock rate, the main thread's script and task time and its CPU
// time (Chrome's Performance metrics) give the handler's own cost, whatever the relay and network
// add.
//
//   node bench/client/dispatch.mjs --relay-bin <datastream> [--messages 50000] [--rounds 5] [--warmup 0] [--profile <prefix>] [--npm <dir>]
//
// --npm <dir>: the built package to load and measure (default: npm/), e.g. a copy of an earlier
// build to compare with.
//
// --rounds: rounds per handler (default 5). The handlers take turns, each round on a fresh page
// and site, after a pause that lets the previous page's teardown finish: without it, the second
// of two rounds of the same handler measured up to 30 % slower than the first.
//
// --warmup N: before each measured round, the page's handler first gets N unmeasured publications,
// so the engine has optimised its code: the steady state of a long-lived page rather than a fresh
// one.
//
// Then the browser's time to apply one device-status delta: a page subscribes with
// `"delta":"fossil"` to a statusgen device stream (--deltas publications, default 200) published to
// the relay, which computes the deltas; the SDK's applier (client-wasm/src/web/dispatch.js, the
// function the dispatcher calls, checksum verified) rebuilds each from the previous text, timed over
// --rounds rounds (the best kept), and JSON.parse of the result beside it.
//
// --profile <prefix>: also records a CPU profile (Chrome's sampling profiler) of each handler's
// last round into <prefix>-plain.cpuprofile and <prefix>-sdk.cpuprofile (they open in Chrome
// DevTools) and prints the heaviest functions by self time. Profiling slows both handlers down:
// read the ratios of a run without it.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { chromium } from 'playwright-core';
import { StatusStream } from '../../statusgen/statusgen.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const args = process.argv.slice(2);
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d; };
const relayBin = opt('--relay-bin');
const messages = Number(opt('--messages', '50000'));
const profilePrefix = opt('--profile');
const rounds = Number(opt('--rounds', '5'));
const warmup = Number(opt('--warmup', '0'));
const npmDir = path.resolve(opt('--npm', path.join(root, 'npm')));
const batch = 500;
const deltaCount = Number(opt('--deltas', '200'));

/** The functions with the most self time in a CDP profile, per message, on stderr. */
function printProfile(kind, profile, count) {
  const dt = new Map(profile.nodes.map((n) => [n.id, 0]));
  for (let i = 0; i < profile.samples.length; i++) dt.set(profile.samples[i], dt.get(profile.samples[i]) + (profile.timeDeltas[i] ?? 0));
  const self = new Map();
  for (const n of profile.nodes) {
    const { functionName, url, lineNumber } = n.callFrame;
    const key = `${functionName || '(anonymous)'} ${url ? path.basename(url) : ''}:${lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + dt.get(n.id));
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  process.stderr.write(`profile of ${kind}: ${(total / 1000).toFixed(0)} ms sampled, heaviest by self time (µs per message):\n`);
  for (const [key, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 25)) {
    process.stderr.write(`  ${(us / count).toFixed(2).padStart(7)}  ${(100 * us / total).toFixed(1).padStart(5)} %  ${key}\n`);
  }
}

const freePort = () => new Promise((resolve) => {
  const s = http.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
});
const relayPort = await freePort();
const relay = spawn(relayBin, ['serve'], {
  env: { ...process.env, DATASTREAM_LISTEN: `127.0.0.1:${relayPort}`, DATASTREAM_LOG: 'warn', DATASTREAM_CLIENT_QUEUE_BYTES: String(64 << 20) },
  stdio: 'ignore',
});
const stopAll = [];
stopAll.push(() => relay.kill());
try {
  for (let i = 0; i < 100; i++) {
    const ok = await fetch(`http://127.0.0.1:${relayPort}/healthz`).then((r) => r.ok, () => false);
    if (ok) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };
  const files = http.createServer((req, res) => {
    const p = new URL(req.url, 'http://x').pathname;
    // The package's built dist/ when it has one (the page imports /npm/index.js).
    const base = existsSync(path.join(npmDir, 'dist/index.js')) ? path.join(npmDir, 'dist') : npmDir;
    const file = p === '/' ? path.join(here, 'page.html')
      : p === '/applier.js' ? path.join(root, 'client-wasm/src/web/dispatch.js')
      : p.startsWith('/npm/') ? path.join(base, p.slice('/npm/'.length)) : null;
    try {
      const body = readFileSync(file);
      res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' }).end(body);
    } catch { res.writeHead(404).end(); }
  });
  const webPort = await new Promise((resolve) => files.listen(0, '127.0.0.1', () => resolve(files.address().port)));
  stopAll.push(() => files.close());

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  stopAll.push(() => browser.close());
  const pad = 'x'.repeat(120);
  async function publish(site, n) {
    for (let s = 0; s < n; s += batch) {
      const body = [];
      for (let i = s; i < Math.min(n, s + batch); i++) body.push({ site, topic: 'bench', data: { seq: i, pad } });
      const r = await fetch(`http://127.0.0.1:${relayPort}/publish`, { method: 'POST', body: JSON.stringify(body) });
      if (!r.ok) throw new Error(`publish: ${r.status}`);
    }
  }
  const result = {};
  const runs = [];
  for (let r = 1; r <= rounds; r++) {
    const pair = [['plain', `p${r}`], ['sdk', `w${r}`]];
    runs.push(...(r % 2 ? pair : pair.reverse()));
  }
  for (const [kind, site] of runs) {
    const page = await browser.newPage();
    page.on('console', (m) => process.stderr.write(`[page] ${m.text()}\n`));
    page.on('pageerror', (e) => process.stderr.write(`[page error] ${e}\n`));
    process.stderr.write(`${kind} ${site}\n`);
    await page.goto(`http://127.0.0.1:${webPort}/?relay=ws://127.0.0.1:${relayPort}/dev`);
    await page.waitForFunction(() => window.benchReady === true);
    await page.evaluate(([k, s]) => window.bench[k](s), [kind, site]);
    if (warmup > 0) {
      // Unmeasured: the JavaScript engine optimises each handler's code first.
      await page.evaluate((n) => window.bench.expect(n), warmup);
      await publish(site, warmup);
      await page.evaluate(() => window.bench.wait());
    }
    await page.evaluate((n) => window.bench.expect(n), messages);
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Performance.enable');
    const metric = async () => {
      const { metrics } = await cdp.send('Performance.getMetrics');
      const get = (name) => metrics.find((m) => m.name === name)?.value ?? 0;
      // Script and task durations are wall time spent in them; ThreadTime is the main thread's
      // CPU time, which other processes taking the core do not inflate.
      return { script: get('ScriptDuration'), task: get('TaskDuration'), cpu: get('ThreadTime') };
    };
    const profiling = profilePrefix && site.slice(1) === String(rounds);
    if (profiling) {
      await cdp.send('Profiler.enable');
      await cdp.send('Profiler.setSamplingInterval', { interval: 100 });
      await cdp.send('Profiler.start');
    }
    const before = await metric();
    await publish(site, messages);
    process.stderr.write(`published ${messages}\n`);
    const timeout = setTimeout(async () => {
      process.stderr.write(`stuck at ${await page.evaluate(() => window.bench.progress())}\n`);
    }, 20000);
    const { count, ms } = await page.evaluate(() => window.bench.wait());
    clearTimeout(timeout);
    const after = await metric();
    if (profiling) {
      const { profile } = await cdp.send('Profiler.stop');
      writeFileSync(`${profilePrefix}-${kind}.cpuprofile`, JSON.stringify(profile));
      printProfile(kind, profile, count);
    }
    const rate = Math.round(count / (ms / 1000));
    const script = after.script - before.script;
    const task = after.task - before.task;
    const cpu = after.cpu - before.cpu;
    process.stderr.write(`${kind} ${site}: script ${script.toFixed(3)} s, task ${task.toFixed(3)} s, cpu ${cpu.toFixed(3)} s, wall ${Math.round(ms)} ms\n`);
    // Keep each measure's best round per handler (the first warms the JIT and the wasm).
    const best = result[kind];
    const min = (a, b) => (best ? Math.min(a, b) : b);
    result[kind] = {
      messages: count, ms: Math.round(min(best?.ms, ms)), messages_per_s: Math.max(best?.messages_per_s ?? 0, rate),
      script_s: +min(best?.script_s, script).toFixed(3), task_s: +min(best?.task_s, task).toFixed(3),
      cpu_s: +min(best?.cpu_s, cpu).toFixed(3),
    };
    result[kind].messages_per_script_s = Math.round(count / result[kind].script_s);
    result[kind].messages_per_task_s = Math.round(count / result[kind].task_s);
    await page.evaluate(() => window.bench.close());
    await page.close();
    await new Promise((r) => setTimeout(r, 2000));
  }
  // One device-status delta applied in the browser, as the dispatcher does.
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${webPort}/?relay=ws://127.0.0.1:${relayPort}/dev`);
  await page.evaluate(async (url) => {
    const ws = new WebSocket(url, 'datastream.v2');
    window.deltaLines = [];
    ws.onmessage = (e) => { for (const l of e.data.split('\n')) if (l.trim()) window.deltaLines.push(l); };
    await new Promise((r) => (ws.onopen = r));
    ws.send(JSON.stringify({ type: 'subscribe', id: 1, site: 'deltas', delta: 'fossil' }));
    window.deltaWs = ws;
  }, `ws://127.0.0.1:${relayPort}/dev`);
  await page.waitForFunction(() => window.deltaLines.some((l) => l.includes('"subscribed"')));
  for (const data of StatusStream.device('deltas', 1).take(deltaCount)) {
    const r = await fetch(`http://127.0.0.1:${relayPort}/publish`, { method: 'POST', body: StatusStream.publication('deltas', data) });
    if (!r.ok) throw new Error(`publish: ${r.status}`);
  }
  await page.waitForFunction((n) => window.deltaLines.filter((l) => l.startsWith('{"type":"pub"')).length >= n, deltaCount);
  const delta = await page.evaluate(async (rounds) => {
    const { fossil } = await import('/applier.js');
    const pairs = [];
    let text, full = 0, sent = 0;
    for (const line of window.deltaLines) {
      const f = JSON.parse(line);
      if (f.type !== 'pub') continue;
      if (typeof f.delta === 'string') {
        pairs.push([text, f.delta]);
        text = fossil(text, f.delta);
      } else text = line.slice(line.indexOf(',"data":') + 8, -1);
      full += text.length;
      sent += line.length;
    }
    let apply = Infinity, parse = Infinity;
    for (let r = 0; r < rounds; r++) {
      let t = performance.now();
      for (const [base, d] of pairs) text = fossil(base, d);
      apply = Math.min(apply, (performance.now() - t) / pairs.length);
      t = performance.now();
      for (const [base, d] of pairs) JSON.parse(fossil(base, d));
      parse = Math.min(parse, (performance.now() - t) / pairs.length - apply);
    }
    window.deltaWs.close();
    return { publications: pairs.length + 1, deltas: pairs.length, data_bytes: full, frame_bytes: sent,
      apply_us: +(1000 * apply).toFixed(1), json_parse_us: +(1000 * parse).toFixed(1) };
  }, Math.max(rounds, 5));
  await page.close();

  const size = (f) => { const b = readFileSync(path.join(npmDir, f)); return { raw: b.length, gzip: gzipSync(b, { level: 9 }).length }; };
  const snippetDir = path.join(npmDir, 'wasm/snippets');
  const snippets = existsSync(snippetDir)
    ? readdirSync(snippetDir, { recursive: true }).filter((f) => f.endsWith('.js')).map((f) => path.join('wasm/snippets', f))
    : [];
  const shipped = existsSync(path.join(npmDir, 'dist/index.js'))
    ? ['dist/datastream_bg.wasm', 'dist/index.js']
    : ['wasm/datastream_bg.wasm', 'wasm/datastream.js', ...snippets, 'index.js'];
  const bundle = Object.fromEntries(shipped.map((f) => [f, size(f)]));
  console.log(JSON.stringify({
    kind: 'client', messages, plain: result.plain, sdk: result.sdk,
    // How many times more main-thread time the SDK needs per message than the plain handler.
    sdk_vs_plain_task: +(result.sdk.task_s / result.plain.task_s).toFixed(2),
    sdk_vs_plain_script: +(result.sdk.script_s / result.plain.script_s).toFixed(2),
    sdk_vs_plain_cpu: +(result.sdk.cpu_s / result.plain.cpu_s).toFixed(2),
    sdk_vs_plain_wall: +(result.plain.messages_per_s / result.sdk.messages_per_s).toFixed(2), bundle,
    bundle_gzip_total: Object.values(bundle).reduce((a, b) => a + b.gzip, 0),
    // The browser's time to apply one device-status delta (and to parse the rebuilt text).
    delta,
  }));
} finally {
  for (const stop of stopAll.reverse()) { try { await stop(); } catch {} }
}
