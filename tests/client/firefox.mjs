// Headless Firefox through geckodriver (started and stopped by PID), for the suites that run
// their scenarios in it besides Chromium (sdk-test.mjs, ptrui-test.mjs).

import http from 'node:http';
import { spawn } from 'node:child_process';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `use(page)` in a WebDriver session of headless Firefox and returns what it returns.
 * `page.load(url)` opens `url` and waits until the page sets `window.__loaded`;
 * `page.run(script, args)` runs `script` asynchronously (its last argument is the callback to
 * call with the result) and returns what it passed; `page.log()` is geckodriver's log so far.
 * The log is printed when `use` throws.
 */
export async function withFirefox(use) {
  const probe = http.createServer();
  await new Promise((r) => probe.listen(0, '127.0.0.1', r));
  const port = probe.address().port;
  await new Promise((r) => probe.close(r));
  const driver = spawn('geckodriver', ['--host', '127.0.0.1', '--port', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  driver.stderr.on('data', (d) => (log += d));
  const wd = async (method, p, body) => {
    const res = await fetch(`http://127.0.0.1:${port}${p}`, {
      method,
      headers: body ? { 'content-type': 'application/json' } : {},
      body: body && JSON.stringify(body),
    });
    const json = await res.json();
    if (!res.ok) throw new Error(`WebDriver ${p}: ${JSON.stringify(json.value).slice(0, 500)}`);
    return json.value;
  };
  let session = null;
  try {
    for (let i = 0; i < 100; i++) {
      if (await wd('GET', '/status').then((v) => v.ready, () => false)) break;
      await sleep(100);
    }
    ({ sessionId: session } = await wd('POST', '/session', {
      capabilities: { alwaysMatch: { browserName: 'firefox', 'moz:firefoxOptions': { binary: '/usr/bin/firefox-esr', args: ['-headless'] } } },
    }));
    await wd('POST', `/session/${session}/timeouts`, { script: 120_000, pageLoad: 30_000 });
    const page = {
      async load(url) {
        await wd('POST', `/session/${session}/url`, { url });
        const end = Date.now() + 20_000;
        while (!(await wd('POST', `/session/${session}/execute/sync`, { script: 'return window.__loaded === true', args: [] }))) {
          if (Date.now() > end) throw new Error('the page did not load');
          await sleep(100);
        }
      },
      run: (script, args = []) => wd('POST', `/session/${session}/execute/async`, { script, args }),
      log: () => log,
    };
    return await use(page);
  } catch (e) {
    console.error(log.slice(-2000));
    throw e;
  } finally {
    if (session) await wd('DELETE', `/session/${session}`).catch(() => {});
    driver.kill('SIGTERM');
    await new Promise((r) => (driver.exitCode !== null ? r() : driver.once('exit', r)));
  }
}
