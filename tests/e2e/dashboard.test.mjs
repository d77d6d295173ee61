// End-to-end: the demo dashboard, built from the packed @photonranch/datastream tarball, in
// headless Chromium against real relay processes (with moto_server as SQS and redis-server).
// Everything runs on loopback and is stopped by PID. Screenshots go to tests/e2e/artifacts/.
//
// Needs: DATASTREAM_BIN (relay binary), the built demo in demo/dist, DATASTREAM_TEST_VENV (Python
// venv with moto and boto3). tests/e2e/run.sh prepares all of it.

import { after, afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.DATASTREAM_BIN;
const VENV = process.env.DATASTREAM_TEST_VENV;
const DIST = path.join(ROOT, 'demo/dist');
const ARTIFACTS = path.join(ROOT, 'tests/e2e/artifacts');
const WAIT = 15_000;
const AWS = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_REGION: 'us-east-1', AWS_DEFAULT_REGION: 'us-east-1' };

assert.ok(BIN, 'DATASTREAM_BIN must name the relay binary (tests/e2e/run.sh sets it)');
assert.ok(VENV, 'DATASTREAM_TEST_VENV must name the Python venv with moto (tests/e2e/run.sh sets it)');
mkdirSync(ARTIFACTS, { recursive: true });

const started = new Set();
let browser;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function run(cmd, args, env = {}) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit'] });
  started.add(child);
  child.once('exit', () => started.delete(child));
  return child;
}

async function stop(child, signal = 'SIGTERM') {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  await Promise.race([exited, new Promise((r) => setTimeout(r, WAIT))]);
}

async function until(what, check, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

async function startMoto() {
  const port = await freePort();
  run(path.join(VENV, 'bin/moto_server'), ['-H', '127.0.0.1', '-p', String(port)]);
  const endpoint = `http://127.0.0.1:${port}`;
  await until('moto_server', async () => (await fetch(endpoint)).status < 500);
  return endpoint;
}

async function startRedis() {
  const port = await freePort();
  run('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
  await until('redis-server', () => new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => { s.end(); resolve(true); });
    s.once('error', () => resolve(false));
  }));
  return `redis://127.0.0.1:${port}/`;
}

function python(args, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(VENV, 'bin/python3'), args, { env: { ...process.env, ...AWS, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => { err += d; });
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`python ${args[0]}: ${err}`))));
  });
}

const createQueue = (endpoint, name, attributes = {}) =>
  python(['-c', "import boto3, json, sys; boto3.client('sqs', region_name='us-east-1').create_queue(QueueName=sys.argv[1], Attributes=json.loads(sys.argv[2]))",
    name, JSON.stringify(attributes)], { AWS_ENDPOINT_URL_SQS: endpoint });

/** Publishes to SQS exactly as the original README does (boto3, json.dumps of the payload). */
const sqsPublish = (endpoint, queue, site, topic, data) =>
  python([path.join(ROOT, 'tests/sqs_publish.py'), '--queue', queue, '--site', site, '--topic', topic, '--data', JSON.stringify(data)],
    { AWS_ENDPOINT_URL_SQS: endpoint });

async function startRelay(port, env = {}) {
  const child = run(BIN, [], {
    DATASTREAM_LISTEN: `127.0.0.1:${port}`,
    DATASTREAM_STATIC_DIR: DIST,
    DATASTREAM_LOG: 'warn',
    DATASTREAM_DRAIN_WINDOW: '100ms',
    DATASTREAM_SQS_WAIT: '1s',
    ...AWS,
    ...env,
  });
  await until('relay ready', async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).ok);
  return child;
}

async function publish(port, body) {
  const resp = await fetch(`http://127.0.0.1:${port}/publish`, { method: 'POST', body: JSON.stringify(body) });
  assert.equal(resp.status, 202, await resp.text());
}

const weather = (site, temperature, ms = Date.now()) => ({
  site, topic: 'sitestatus',
  data: { site, statusType: 'weather', server_timestamp_ms: ms, status: { observing_conditions: { observing_conditions1: {
    wx_ok: { val: 'Yes', timestamp: ms }, temperature_C: { val: temperature, timestamp: ms },
    'humidity_%': { val: 48.2, timestamp: ms }, wind_m_s: { val: 3.4, timestamp: ms },
    sky_temp_C: { val: -21.5, timestamp: ms }, open_ok: { val: 'Yes', timestamp: ms } } } } },
});

/** Opens the dashboard; collects console errors and uncaught page errors. */
async function openDashboard(port, sites) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const errors = [];
  page.on('console', (msg) => { if (msg.type() === 'error') errors.push(msg.text()); });
  page.on('pageerror', (err) => errors.push(String(err)));
  await page.goto(`http://127.0.0.1:${port}/?sites=${sites.join(',')}`);
  await page.waitForSelector('#state[data-state="connected"]', { timeout: WAIT });
  // Connected comes before the subscriptions are confirmed: what is published in between is not
  // for this page. `ready()` resolves once every subscription is.
  await page.evaluate(() => window.datastream.ready());
  return { page, errors };
}

const tileText = (page, site, key) =>
  page.locator(`[data-site="${site}"][data-key="${key}"] .value`).textContent({ timeout: WAIT });

/** The (offset, data) of every logged publication on `topic`, oldest first. */
const logged = (page, topic) =>
  page.$$eval(`#log li[data-topic="${topic}"]`, (lis) =>
    lis.map((li) => [Number(li.dataset.offset), li.querySelector('code').textContent]).reverse());

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
});

afterEach(async () => {
  await Promise.all([...started].map((c) => stop(c, 'SIGKILL')));
});

after(async () => {
  await browser?.close();
});

test('publications from HTTP and SQS reach the tiles, the chart and the log', async () => {
  const moto = await startMoto();
  await createQueue(moto, 'datastreamIncomingQueue-dev');
  const port = await freePort();
  await startRelay(port, { DATASTREAM_SQS_QUEUE: 'datastreamIncomingQueue-dev', AWS_ENDPOINT_URL_SQS: moto });
  const { page, errors } = await openDashboard(port, ['mrc']);

  await publish(port, weather('mrc', 11.7));
  assert.equal(await tileText(page, 'mrc', 'temp'), '11.7 °C');
  await until('a chart point', async () => Number(await page.getAttribute('#chart', 'data-points')) >= 1);
  await page.waitForSelector('#log li[data-topic="sitestatus"][data-site="mrc"]', { timeout: WAIT });

  await sqsPublish(moto, 'datastreamIncomingQueue-dev', 'mrc', 'userstatus',
    { site: 'mrc', message: 'Exposure 3 of 10 complete', log_level: 'info', timestamp: '1764288003' });
  await until('the SQS message in its tile', async () => (await tileText(page, 'mrc', 'user')) === 'Exposure 3 of 10 complete');
  await page.waitForSelector('#log li[data-topic="userstatus"]', { timeout: WAIT });

  // The publish form goes through POST /publish too.
  await page.fill('#publish [name=site]', 'mrc');
  await page.fill('#publish [name=topic]', 'phase_status');
  await page.fill('#publish [name=data]', '{"site": "mrc", "timestamp": 1764288002.125, "message": "Taking sky flats"}');
  await page.click('#publish button');
  await until('the form result', async () => (await page.textContent('#publish-result')).startsWith('published'));
  assert.equal(await tileText(page, 'mrc', 'phase'), 'Taking sky flats');

  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard.png'), fullPage: true });
  assert.deepEqual(errors, [], 'no console errors');
});

test('several sites, switching sites, and filtering the log by topic', async () => {
  const port = await freePort();
  await startRelay(port);
  const { page, errors } = await openDashboard(port, ['mrc']);

  await page.check('#site-picker input[value="saf"]');
  await until('saf subscribed', async () => {
    await publish(port, weather('saf', 20.5));
    return (await page.locator('[data-site="saf"][data-key="temp"] .value').count()) > 0;
  });
  await publish(port, weather('mrc', 5.5));
  await until('both sites shown', async () => (await tileText(page, 'mrc', 'temp')) === '5.5 °C');
  assert.equal(await tileText(page, 'saf', 'temp'), '20.5 °C');

  await page.uncheck('#site-picker input[value="mrc"]');
  await until('mrc tiles removed', async () => (await page.locator('[data-site="mrc"]').count()) === 0);
  const before = (await logged(page, 'sitestatus')).length;
  await publish(port, weather('mrc', 6.5));
  await publish(port, { site: 'saf', topic: 'phase_status', data: { site: 'saf', timestamp: 1.5, message: 'Observing' } });
  await until('saf phase shown', async () => (await tileText(page, 'saf', 'phase')) === 'Observing');
  assert.equal((await logged(page, 'sitestatus')).length, before, 'nothing more from mrc after unsubscribing');

  await page.selectOption('#log-topic', 'phase_status');
  const visible = await page.$$eval('#log li', (lis) => lis.filter((li) => !li.hidden).map((li) => li.dataset.topic));
  assert.ok(visible.length >= 1 && visible.every((t) => t === 'phase_status'), JSON.stringify(visible));
  await page.screenshot({ path: path.join(ARTIFACTS, 'sites-and-filter.png'), fullPage: true });
  assert.deepEqual(errors, [], 'no console errors');
});

test('a page opened after the demo published shows every card at once, the rare enclosure status included', async () => {
  const port = await freePort();
  await startRelay(port, { DATASTREAM_DEMO: 'true' });
  const sites = ['mrc', 'saf'];
  // The demo publishes every kind once at start (5 publications per site), the enclosure status
  // next only minutes later, the weather every 2 s, all status on `sitestatus`. Wait for the
  // second round, so the weather is newer than the enclosure's: a relay keeping one latest
  // publication per topic would now hold the weather alone, and the enclosure card stay empty.
  const held = {};
  await until('the start publications, then the weather again', async () => {
    for (const site of sites) {
      const body = await (await fetch(`http://127.0.0.1:${port}/sites/${site}/latest?topic=sitestatus`)).json();
      if (!(body.offset > 5)) return false;
      held[site] = body.latest.find((e) => e.key === 'enclosure')?.data.status.enclosure.enclosure1;
    }
    return true;
  }, 10_000);
  const opened = Date.now();
  const { page, errors } = await openDashboard(port, sites);
  const ready = Date.now();
  const keys = ['temp', 'hum', 'wind', 'sky', 'wx', 'shutter', 'mode', 'az', 'phase', 'user'];
  const filled = () =>
    page.$$eval('.tile', (tiles) => tiles.map((t) => [t.dataset.site, t.dataset.key, t.querySelector('.value').textContent, t.dataset.latest]));
  let tiles;
  await until('every card filled', async () => {
    tiles = await filled();
    return sites.every((site) => keys.every((key) => tiles.some(([s, k, v]) => s === site && k === key && v && v !== '–')));
  }, 2_000);
  const elapsed = Date.now() - ready;
  // Within a round trip of the subscriptions' confirmation: the values came with them, not from a
  // later publication (the enclosure status's next one is minutes away).
  assert.ok(elapsed < 1_000, `every card filled ${elapsed} ms after ready (${ready - opened} ms to ready)`);
  for (const site of sites) {
    const shutter = tiles.find(([s, k]) => s === site && k === 'shutter');
    assert.ok(held[site], `${site}: the relay holds the enclosure status beside the weather`);
    assert.equal(shutter[2], held[site].shutter_status.val, `${site}: the relay's latest enclosure status`);
    assert.equal(shutter[3], 'true', `${site}: marked as a latest value`);
    assert.match(await page.textContent(`[data-site="${site}"][data-key="shutter"] .when`), /^as of /);
  }
  await page.screenshot({ path: path.join(ARTIFACTS, 'latest-at-open.png'), fullPage: true });
  assert.deepEqual(errors, [], 'no console errors');
});

// A relay going away makes the browser log failed WebSocket connections; those are expected here.
const unexpected = (errors) => errors.filter((e) => !/WebSocket connection to .* failed/.test(e));

test('a relay killed mid-stream: the page reconnects and the log has no gap and no duplicate', async () => {
  const redis = await startRedis();
  const moto = await startMoto();
  // A killed relay's pending long-poll receives stay open in SQS and take the messages published
  // after its death; they come back after the visibility timeout (30 s by default), as in AWS.
  await createQueue(moto, 'datastreamIncomingQueue-dev', { VisibilityTimeout: '2' });
  const env = { DATASTREAM_REDIS_URL: redis, DATASTREAM_SQS_QUEUE: 'datastreamIncomingQueue-dev', AWS_ENDPOINT_URL_SQS: moto };
  const port = await freePort();
  let relay = await startRelay(port, env);
  const { page, errors } = await openDashboard(port, ['tst']);

  for (let n = 1; n <= 5; n++) await publish(port, { site: 'tst', topic: 'seq', data: n });
  await until('five logged', async () => (await logged(page, 'seq')).length === 5);

  await stop(relay, 'SIGKILL');
  await page.waitForSelector('#state[data-state="reconnecting"]', { timeout: WAIT });
  // Published while no relay runs: they wait in SQS.
  for (let n = 6; n <= 10; n++) await sqsPublish(moto, 'datastreamIncomingQueue-dev', 'tst', 'seq', n);
  relay = await startRelay(port, env);
  await page.waitForSelector('#state[data-state="connected"]', { timeout: WAIT });
  await until('ten logged', async () => (await logged(page, 'seq')).length >= 10, 30_000);
  await new Promise((r) => setTimeout(r, 500));

  const got = await logged(page, 'seq');
  assert.deepEqual(got.map(([, data]) => Number(data)).sort((a, b) => a - b), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'no gap, no duplicate');
  const offsets = got.map(([offset]) => offset);
  assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b), 'in order');
  assert.equal(await page.isHidden('#recovery'), true, 'recovered: nothing to refetch');
  await page.screenshot({ path: path.join(ARTIFACTS, 'after-restart.png'), fullPage: true });
  assert.deepEqual(unexpected(errors), [], 'no console errors besides the failed reconnects');
});

test('a restart that loses history: the page says so, so the app refetches', async () => {
  const port = await freePort();
  let relay = await startRelay(port);
  const { page, errors } = await openDashboard(port, ['mrc']);
  await publish(port, weather('mrc', 1.5));
  assert.equal(await tileText(page, 'mrc', 'temp'), '1.5 °C');

  await stop(relay, 'SIGTERM');
  relay = await startRelay(port);
  await until('the recovery note', async () => !(await page.isHidden('#recovery')));
  assert.match(await page.textContent('#recovery'), /mrc: missed messages could not be recovered/);
  await publish(port, weather('mrc', 2.5));
  await until('live again', async () => (await tileText(page, 'mrc', 'temp')) === '2.5 °C');
  await page.screenshot({ path: path.join(ARTIFACTS, 'refetch.png'), fullPage: true });
  assert.deepEqual(unexpected(errors), [], 'no console errors besides the failed reconnects');
});
