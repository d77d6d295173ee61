// Dispatch throughput of the browser SDK (messages/s reaching `on` callbacks) next to a plain
// WebSocket + JSON.parse handler on the same v2 stream, in headless Chromium; and the package's
// bundle size. Prints one JSON line. Each handler gets the same messages (two rounds, the better
// kept); besides the wall-clock rate, the main thread's script and task time (Chrome's
// Performance metrics) give the handler's own cost, whatever the relay and network add.
//
//   node bench/client/dispatch.mjs --relay-bin <datastream> [--messages 50000]
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const args = process.argv.slice(2);
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d; };
const relayBin = opt('--relay-bin');
const messages = Number(opt('--messages', '50000'));
const batch = 500;

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
    const file = p === '/' ? path.join(here, 'page.html') : p.startsWith('/npm/') ? path.join(root, p) : null;
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
  for (const [kind, site] of [['plain', 'p1'], ['sdk', 'w1'], ['plain', 'p2'], ['sdk', 'w2']]) {
    const page = await browser.newPage();
    page.on('console', (m) => process.stderr.write(`[page] ${m.text()}\n`));
    page.on('pageerror', (e) => process.stderr.write(`[page error] ${e}\n`));
    process.stderr.write(`${kind} ${site}\n`);
    await page.goto(`http://127.0.0.1:${webPort}/?relay=ws://127.0.0.1:${relayPort}/dev`);
    await page.waitForFunction(() => window.benchReady === true);
    await page.evaluate(([k, s]) => window.bench[k](s), [kind, site]);
    await page.evaluate((n) => window.bench.expect(n), messages);
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Performance.enable');
    const metric = async () => {
      const { metrics } = await cdp.send('Performance.getMetrics');
      const get = (name) => metrics.find((m) => m.name === name)?.value ?? 0;
      return { script: get('ScriptDuration'), task: get('TaskDuration') };
    };
    const before = await metric();
    await publish(site, messages);
    process.stderr.write(`published ${messages}\n`);
    const timeout = setTimeout(async () => {
      process.stderr.write(`stuck at ${await page.evaluate(() => window.bench.progress())}\n`);
    }, 20000);
    const { count, ms } = await page.evaluate(() => window.bench.wait());
    clearTimeout(timeout);
    const after = await metric();
    const rate = Math.round(count / (ms / 1000));
    const script = after.script - before.script;
    const task = after.task - before.task;
    // Keep the better of two rounds per handler (the first warms the JIT and the wasm).
    const perScript = Math.round(count / script);
    if (!result[kind] || perScript > result[kind].messages_per_script_s) {
      result[kind] = {
        messages: count, ms: Math.round(ms), messages_per_s: rate,
        script_s: +script.toFixed(3), task_s: +task.toFixed(3),
        messages_per_script_s: perScript, messages_per_task_s: Math.round(count / task),
      };
    }
    await page.evaluate(() => window.bench.close());
    await page.close();
  }
  const size = (f) => { const b = readFileSync(path.join(root, 'npm', f)); return { raw: b.length, gzip: gzipSync(b, { level: 9 }).length }; };
  const bundle = Object.fromEntries(['wasm/datastream_bg.wasm', 'wasm/datastream.js', 'index.js'].map((f) => [f, size(f)]));
  console.log(JSON.stringify({
    kind: 'client', messages, plain: result.plain, sdk: result.sdk,
    // How many times more main-thread time the SDK needs per message than the plain handler.
    sdk_vs_plain_task: +(result.sdk.task_s / result.plain.task_s).toFixed(2),
    sdk_vs_plain_script: +(result.sdk.script_s / result.plain.script_s).toFixed(2),
    sdk_vs_plain_wall: +(result.plain.messages_per_s / result.sdk.messages_per_s).toFixed(2), bundle,
    bundle_gzip_total: Object.values(bundle).reduce((a, b) => a + b.gzip, 0),
  }));
} finally {
  for (const stop of stopAll.reverse()) { try { await stop(); } catch {} }
}
