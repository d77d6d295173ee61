// Test harness for the browser SDK: runs the real relay, a TCP proxy in front of it that tests can
// cut or freeze, and a small HTTP control endpoint the browser tests call (with CORS) to publish,
// cut connections, or restart the relay. Loopback only.
//
//   node tests/client/harness.mjs --relay <datastream binary> [--pidfile <file>] [--jwt-secret <secret>]
//        [--anonymous-sites <sites>] [--max-subscriptions <n>]
//
// With --jwt-secret (32 bytes or more) the relay requires tokens (DATASTREAM_JWT_SECRET, HS256), and
// /token signs them; --anonymous-sites (comma-separated, or `*`) sets DATASTREAM_ANONYMOUS_SITES,
// the sites a connection without a token may read; --max-subscriptions sets
// DATASTREAM_MAX_SUBSCRIPTIONS.
// Prints one JSON line once ready: {"relay_port", "proxy_port", "control_port", "relay_pid"}.
// The relay's current PID is also kept in --pidfile so a supervisor can stop it if this process
// dies. SIGTERM/SIGINT stop the relay and exit.
//
// Control endpoints (POST):
//   /publish   body forwarded to the relay's POST /publish; answers with its status and body
//   /cut       destroy every proxied connection (as a network drop would)
//   /refuse    close new proxied connections at once, until /accept
//   /accept    proxy new connections again
//   /freeze    stop forwarding on current connections without closing them (a dead network)
//   /restart   stop the relay (SIGTERM) and start it again on the same port: a new epoch
//   /mangle    body {"find": regex, "with": text}: the next chunk the relay sends whose text matches
//              `find` gets its first match replaced by `with`, of the same length (the WebSocket
//              frame stays well-formed; the relay does not compress), once: a frame altered on its way
//   /stats     {"connections", "open", "bytes_to_client", "mangled"} since the last /reset
//   /reset     zero the counters
//   /token     body {"sites": [...], "ttl_ms": n, "bad": bool}: an HS256 JWT granting `sites`, expiring
//              after ttl_ms (whole seconds, rounded up); signed with another secret when `bad`

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const relayBin = opt('--relay');
const pidfile = opt('--pidfile');
const jwtSecret = opt('--jwt-secret');
const maxSubscriptions = opt('--max-subscriptions');
const anonymousSites = opt('--anonymous-sites');
if (!relayBin) {
  console.error('usage: harness.mjs --relay <datastream binary> [--pidfile <file>]');
  process.exit(2);
}

// Fast heartbeats and a small client frame limit, so tests of dead connections and terminal
// closes take seconds.
const relayEnv = {
  ...process.env,
  DATASTREAM_LOG_FORMAT: 'json',
  DATASTREAM_LOG: process.env.DATASTREAM_LOG ?? 'warn,datastream=info',
  DATASTREAM_PING_INTERVAL: '1s',
  DATASTREAM_CLIENT_TIMEOUT: '3s',
  DATASTREAM_MAX_CLIENT_FRAME_BYTES: '1024',
  DATASTREAM_DRAIN_WINDOW: '50ms',
  DATASTREAM_SHUTDOWN_TIMEOUT: '2s',
  ...(jwtSecret ? { DATASTREAM_JWT_SECRET: jwtSecret } : {}),
  ...(maxSubscriptions ? { DATASTREAM_MAX_SUBSCRIPTIONS: maxSubscriptions } : {}),
  ...(anonymousSites ? { DATASTREAM_ANONYMOUS_SITES: anonymousSites } : {}),
};

function sign(claims, secret) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

let relay = null;
let relayPort = 0;

function startRelay(port) {
  return new Promise((resolve, reject) => {
    const child = spawn(relayBin, [], {
      env: { ...relayEnv, DATASTREAM_LISTEN: `127.0.0.1:${port}` },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    relay = child;
    if (pidfile) writeFileSync(pidfile, `${child.pid}\n`);
    const timer = setTimeout(() => reject(new Error('relay did not report listening within 20 s')), 20_000);
    let buffered = '';
    const onData = (chunk) => {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        let entry;
        try {
          entry = JSON.parse(line);
        } catch {
          continue;
        }
        const fields = entry.fields ?? entry;
        if (fields.message === 'listening' && fields.addr) {
          clearTimeout(timer);
          resolve(Number(String(fields.addr).split(':').pop()));
        } else if (entry.level === 'ERROR' || entry.level === 'WARN') {
          process.stderr.write(`relay: ${line}\n`);
        }
      }
    };
    child.stdout.setEncoding('utf8').on('data', onData);
    child.stderr.setEncoding('utf8').on('data', onData);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (relay === child) relay = null;
      reject(new Error(`relay exited before listening (code ${code}, signal ${signal})`));
    });
  });
}

function stopRelay() {
  const child = relay;
  if (!child) return Promise.resolve();
  relay = null;
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 5_000);
    child.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

// ----- the proxy -----

const pairs = new Set();
let refusing = false;
let stats = { connections: 0, bytes_to_client: 0, mangled: 0 };
let mangle = null;

const proxy = net.createServer((client) => {
  stats.connections += 1;
  if (refusing) {
    client.destroy();
    return;
  }
  const upstream = net.connect(relayPort, '127.0.0.1');
  const pair = { client, upstream, frozen: false };
  pairs.add(pair);
  const end = () => {
    pairs.delete(pair);
    client.destroy();
    upstream.destroy();
  };
  client.on('data', (d) => {
    if (!pair.frozen) upstream.write(d);
  });
  upstream.on('data', (d) => {
    if (pair.frozen) return;
    if (mangle) {
      const s = d.toString('latin1');
      const m = mangle.find.exec(s);
      if (m && m[0].length === mangle.with.length) {
        d = Buffer.from(s.slice(0, m.index) + mangle.with + s.slice(m.index + m[0].length), 'latin1');
        mangle = null;
        stats.mangled += 1;
      }
    }
    stats.bytes_to_client += d.length;
    client.write(d);
  });
  for (const s of [client, upstream]) {
    s.on('error', end);
    s.on('close', end);
  }
});

// ----- the control endpoint -----

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

async function publish(body) {
  const res = await fetch(`http://127.0.0.1:${relayPort}/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
  });
  return [res.status, await res.text()];
}

const routes = {
  '/publish': publish,
  '/cut': async () => {
    const n = pairs.size;
    for (const p of [...pairs]) {
      p.client.destroy();
      p.upstream.destroy();
    }
    return [200, JSON.stringify({ cut: n })];
  },
  '/refuse': async () => {
    refusing = true;
    return [200, '{}'];
  },
  '/accept': async () => {
    refusing = false;
    return [200, '{}'];
  },
  '/freeze': async () => {
    for (const p of pairs) p.frozen = true;
    return [200, JSON.stringify({ frozen: pairs.size })];
  },
  '/restart': async () => {
    await stopRelay();
    relayPort = await startRelay(relayPort);
    return [200, JSON.stringify({ relay_pid: relay?.pid })];
  },
  '/token': async (body) => {
    const { sites, ttl_ms: ttl, bad } = JSON.parse(body);
    const exp = Math.ceil((Date.now() + ttl) / 1000);
    return [200, JSON.stringify({ token: sign({ sites, exp }, bad ? `${jwtSecret}-other` : jwtSecret), exp })];
  },
  '/stats': async () => [200, JSON.stringify({ ...stats, open: pairs.size })],
  '/reset': async () => {
    stats = { connections: 0, bytes_to_client: 0, mangled: 0 };
    return [200, '{}'];
  },
  '/mangle': async (body) => {
    const { find, with: text } = JSON.parse(body);
    mangle = { find: new RegExp(find), with: text };
    return [200, '{}'];
  },
};

const control = http.createServer(async (req, res) => {
  const headers = {
    'access-control-allow-origin': '*',
    'access-control-allow-methods': 'POST, GET, OPTIONS',
    'access-control-allow-headers': 'content-type',
    // The wasm-bindgen test page is cross-origin isolated.
    'cross-origin-resource-policy': 'cross-origin',
    'content-type': 'application/json',
  };
  if (req.method === 'OPTIONS') {
    res.writeHead(204, headers).end();
    return;
  }
  const route = routes[new URL(req.url, 'http://x').pathname];
  if (!route) {
    res.writeHead(404, headers).end('{"error":"no such endpoint"}');
    return;
  }
  try {
    const [status, body] = await route(await readBody(req));
    res.writeHead(status, headers).end(body);
  } catch (e) {
    res.writeHead(500, headers).end(JSON.stringify({ error: String(e) }));
  }
});

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

async function shutdown(code) {
  await stopRelay();
  process.exit(code);
}
process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
process.on('exit', () => relay?.kill('SIGKILL'));

try {
  relayPort = await startRelay(0);
  const proxyPort = await listen(proxy);
  const controlPort = await listen(control);
  console.log(
    JSON.stringify({ relay_port: relayPort, proxy_port: proxyPort, control_port: controlPort, relay_pid: relay.pid }),
  );
} catch (e) {
  console.error(`harness: ${e.message}`);
  await shutdown(1);
}
