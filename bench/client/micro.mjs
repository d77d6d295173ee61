// The handlers' own script time per publication, without the relay, the network or the browser's
// WebSocket in the measure: each handler (the page of dispatch.mjs: the plain WebSocket +
// JSON.parse handler, and the SDK) connects and subscribes to the relay as usual, then its
// socket's `onmessage` is called directly with packed frames built like the relay's (one
// publication captured from the relay as the template, offsets counting up). Each frame is timed
// alone (the page is cross-origin isolated: performance.now() to 5 µs), and of each block of 16
// frames the median is kept: what another process taking the core adds to some frames is left
// out, the time the engine takes to optimise the handler is kept. Differences of a few percent
// show, which dispatch.mjs's spread hides; what the browser does per frame is left out, so the
// ratios are larger than dispatch.mjs's.
//
//   node bench/client/micro.mjs --relay-bin <datastream> [--messages 50000] [--per-frame 62]
//        [--rounds 5] [--passes 2] [--profile] [--npm <dir>]...
//
// Each round runs every handler (the plain one, then each --npm package's SDK; default npm/) on
// a fresh page, the order turning each round; each page handles --passes passes of --messages
// publications (the first on a fresh page, the later ones warmed). Prints ns per publication for
// each pass and round on stderr and, as one JSON line, each handler's median per pass and its
// ratio to the plain handler's. --profile: Chrome's sampling profiler over the last round's first
// pass, the heaviest functions by self time (ns per publication; the profiler slows everything).
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const args = process.argv.slice(2);
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d; };
const relayBin = opt('--relay-bin');
const messages = Number(opt('--messages', '50000'));
const perFrame = Number(opt('--per-frame', '62'));
const rounds = Number(opt('--rounds', '5'));
const passes = Number(opt('--passes', '2'));
const npmDirs = args.flatMap((a, i) => (a === '--npm' ? [path.resolve(args[i + 1])] : []));
if (npmDirs.length === 0) npmDirs.push(path.join(root, 'npm'));

const freePort = () => new Promise((resolve) => {
  const s = http.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
});
const relayPort = await freePort();
const relay = spawn(relayBin, ['serve'], {
  env: { ...process.env, DATASTREAM_LISTEN: `127.0.0.1:${relayPort}`, DATASTREAM_LOG: 'warn' },
  stdio: 'ignore',
});
const stopAll = [() => relay.kill()];
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
try {
  for (let i = 0; i < 100; i++) {
    if (await fetch(`http://127.0.0.1:${relayPort}/healthz`).then((r) => r.ok, () => false)) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };
  // One static server per package: the page imports /npm/index.js, which is the package's built
  // dist/index.js when it has one (and its .wasm beside it), or its index.js (packages before the
  // bundled builds).
  const webPorts = [];
  for (const dir of npmDirs) {
    const base = existsSync(path.join(dir, 'dist/index.js')) ? path.join(dir, 'dist') : dir;
    const files = http.createServer((req, res) => {
      const p = new URL(req.url, 'http://x').pathname;
      const file = p === '/' ? path.join(here, 'page.html') : p.startsWith('/npm/') ? path.join(base, p.slice(5)) : null;
      let body;
      try { body = readFileSync(file); } catch { res.writeHead(404).end(); return; }
      // Cross-origin isolated: performance.now() to 5 µs rather than 100 µs.
      res.writeHead(200, {
        'content-type': types[path.extname(file)] ?? 'application/octet-stream',
        'cross-origin-opener-policy': 'same-origin',
        'cross-origin-embedder-policy': 'require-corp',
      }).end(body);
    });
    webPorts.push(await new Promise((resolve) => files.listen(0, '127.0.0.1', () => resolve(files.address().port))));
    stopAll.push(() => files.close());
  }
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  stopAll.push(() => browser.close());

  const handlers = [['plain', 0], ...npmDirs.map((_, i) => [`sdk${npmDirs.length > 1 ? i : ''}`, i])];
  const got = Object.fromEntries(handlers.map(([name]) => [name, Array.from({ length: passes }, () => [])]));
  for (let r = 0; r < rounds; r++) {
    const order = handlers.map((_, i) => handlers[(i + r) % handlers.length]);
    for (const [name, pkg] of order) {
      const page = await browser.newPage();
      page.on('pageerror', (e) => process.stderr.write(`[page error] ${e}\n`));
      // A page that never gets there is closed, which fails the run.
      const stuck = setTimeout(() => { process.stderr.write(`${name}: stuck\n`); page.close(); }, 60000);
      // Every socket the page opens, and the last text frame each received.
      await page.addInitScript(() => {
        const Native = WebSocket;
        window.sockets = [];
        window.WebSocket = class extends Native {
          constructor(...a) {
            super(...a);
            window.sockets.push(this);
            this.addEventListener('message', (e) => { this.last = e.data; });
          }
        };
      });
      await page.goto(`http://127.0.0.1:${webPorts[pkg]}/?relay=ws://127.0.0.1:${relayPort}/dev`);
      await page.waitForFunction(() => window.benchReady === true);
      const site = `m${r}${name}`;
      await page.evaluate(([k, s]) => window.bench[k](s), [name === 'plain' ? 'plain' : 'sdk', site]);
      await page.evaluate(() => window.bench.expect(1));
      const r1 = await fetch(`http://127.0.0.1:${relayPort}/publish`, { method: 'POST', body: JSON.stringify([{ site, topic: 'bench', data: { seq: 0, pad: 'x'.repeat(120) } }]) });
      if (!r1.ok) throw new Error(`publish: ${r1.status}`);
      await page.evaluate(() => window.bench.wait());
      const ns = [];
      for (let p = 0; p < passes; p++) {
        // The frames, built first and not measured.
        await page.evaluate(([messages, perFrame]) => {
          const ws = window.sockets.at(-1);
          const template = JSON.parse(ws.last);
          window.offset ??= template.offset;
          const frames = [];
          for (let i = 0; i < messages; i += perFrame) {
            const lines = [];
            for (let j = i; j < Math.min(messages, i + perFrame); j++) {
              lines.push(JSON.stringify({ ...template, offset: ++window.offset, data: { seq: j, pad: template.data.pad } }));
            }
            frames.push({ data: lines.join('\n') });
          }
          window.benchFrames = frames;
          window.bench.expect(messages);
        }, [messages, perFrame]);
        const profiling = args.includes('--profile') && p === 0 && r === rounds - 1;
        let cdp;
        if (profiling) {
          cdp = await page.context().newCDPSession(page);
          await cdp.send('Profiler.enable');
          await cdp.send('Profiler.setSamplingInterval', { interval: 50 });
          await cdp.send('Profiler.start');
        }
        ns.push(await page.evaluate(async (messages) => {
          if (!crossOriginIsolated) throw new Error('not cross-origin isolated');
          const ws = window.sockets.at(-1);
          const frames = window.benchFrames;
          // Each frame timed alone; of each block of 16 frames, the median: what another process
          // taking the core adds to some frames is left out, and the time the engine takes to
          // optimise the handler is kept.
          const block = 16;
          let total = 0;
          const times = [];
          for (let i = 0; i < frames.length; i++) {
            const t = performance.now();
            ws.onmessage.call(ws, frames[i]);
            times.push(performance.now() - t);
            if (times.length === block || i === frames.length - 1) {
              const sorted = times.sort((a, b) => a - b);
              total += sorted[sorted.length >> 1] * sorted.length;
              times.length = 0;
              await new Promise((r) => setTimeout(r, 0));
            }
          }
          const { count } = await window.bench.wait();
          if (count !== messages) throw new Error(`${count} of ${messages} dispatched`);
          return (total * 1e6) / messages;
        }, messages));
        if (profiling) {
          const { profile } = await cdp.send('Profiler.stop');
          const self = new Map();
          const dt = new Map();
          for (let i = 0; i < profile.samples.length; i++) dt.set(profile.samples[i], (dt.get(profile.samples[i]) ?? 0) + (profile.timeDeltas[i] ?? 0));
          for (const n of profile.nodes) {
            const key = `${n.callFrame.functionName || '(anon)'} ${path.basename(n.callFrame.url)}:${n.callFrame.lineNumber}`;
            self.set(key, (self.get(key) ?? 0) + ((dt.get(n.id) ?? 0) * 1000) / messages);
          }
          const all = profile.samples.length;
          process.stderr.write(`${name}: ${all} samples; heaviest functions by self time:\n`);
          for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 30)) process.stderr.write(`  ${v.toFixed(1).padStart(7)} ns ${k}\n`);
        }
      }
      process.stderr.write(`round ${r + 1} ${name}: ${ns.map((x) => x.toFixed(0)).join(' ')} ns per publication\n`);
      ns.forEach((x, p) => got[name][p].push(x));
      await page.evaluate(() => window.bench.close());
      clearTimeout(stuck);
      await page.close();
      await new Promise((res) => setTimeout(res, 500));
    }
  }
  const result = Object.fromEntries(Object.entries(got).map(([k, ps]) => [k, ps.map((xs) => Math.round(median(xs)))]));
  const ratios = Object.fromEntries(Object.keys(result).filter((k) => k !== 'plain').map((k) => [k, result[k].map((x, p) => +(x / result.plain[p]).toFixed(2))]));
  console.log(JSON.stringify({ kind: 'client-micro', messages, per_frame: perFrame, ns_per_publication: result, vs_plain: ratios }));
} finally {
  for (const stop of stopAll.reverse()) { try { await stop(); } catch {} }
}
