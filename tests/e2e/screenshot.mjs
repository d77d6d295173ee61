// Takes the README's screenshot of the demo dashboard: a relay in demo mode, three sites, after
// the chart has filled a little. Run after tests/e2e/run.sh has built the demo:
//   DATASTREAM_BIN=<relay binary> node tests/e2e/screenshot.mjs [seconds]
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const seconds = Number(process.argv[2] ?? 30);
const port = 18000 + Math.floor(Math.random() * 1000);
const relay = spawn(process.env.DATASTREAM_BIN, [], {
  env: { ...process.env, DATASTREAM_LISTEN: `127.0.0.1:${port}`, DATASTREAM_STATIC_DIR: path.join(ROOT, 'demo/dist'), DATASTREAM_DEMO: 'true', DATASTREAM_LOG: 'warn' },
  stdio: 'inherit',
});
try {
  for (let i = 0; i < 100; i++) {
    try { if ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok) break; } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(`http://127.0.0.1:${port}/?sites=mrc,saf,sro`);
  await page.waitForSelector('#state[data-state="connected"]');
  await new Promise((r) => setTimeout(r, seconds * 1000));
  await page.screenshot({ path: path.join(ROOT, 'docs/dashboard.png') });
  await browser.close();
} finally {
  relay.kill('SIGTERM');
}
