// Tests of the package's JavaScript API in headless Chromium against real relays: subscription
// handles (reference counting, confirmations, refusals, rewinds), no socket and no token before a
// site and the linger after the last, subscription changes of one task in one frame per site,
// errors and logging, the module's version check, and tokens against a relay that requires them
// but lets anonymous visitors read some sites (expiry with and without refresh, a revoked site, a
// token that stops verifying, a failing getToken, no token, legacy `?token=`); and deltas (device
// statuses rebuilt as published for a fraction of the bytes, `delta: false`, a corrupted or
// base-less delta recovered), those also in headless Firefox.
//
//   node tests/client/sdk-test.mjs --control <port> --proxy <port> --jwt-control <port> --jwt-relay <port>
//
// `--control`/`--proxy`: the plain relay's harness; `--jwt-*`: a harness started with
// --jwt-secret, --max-subscriptions 4 and --anonymous-sites open-a,open-b. Serves npm/dist
// (npm/build.sh) to a test page. Uses /usr/bin/chromium, and /usr/bin/firefox-esr with geckodriver. SDK_TEST_ONLY=<text> runs the tests
// whose name contains it.

import http from 'node:http';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { StatusStream } from '../../statusgen/statusgen.mjs';
import { withFirefox } from './firefox.mjs';

const require = createRequire(path.join(process.env.NODE_PATH.split(':')[0], 'x.js'));
const { chromium } = require('playwright-core');

const args = process.argv.slice(2);
const opt = (name) => Number(args[args.indexOf(name) + 1]);
const ports = { control: opt('--control'), proxy: opt('--proxy'), jwtControl: opt('--jwt-control'), jwtRelay: opt('--jwt-relay') };
const dist = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../npm/dist');
const version = JSON.parse(readFileSync(path.join(dist, '../package.json'), 'utf8')).version;

let failures = 0;
function check(cond, what) {
  console.log(`${cond ? 'ok  ' : 'FAIL'} ${what}`);
  if (!cond) failures += 1;
}

// Helpers every test gets in the page: the package as `DS`, the ports, publish, token, until.
const prelude = `
const DS = window.DS;
const P = ${JSON.stringify(ports)};
const post = (port, p, body) => fetch('http://127.0.0.1:' + port + p, { method: 'POST', body: body ?? '' }).then((r) => r.json());
const publish = (port, site, data) => post(port, '/publish', JSON.stringify({ site, topic: 'weather', data }));
const token = (sites, ttl_ms, bad = false) => post(P.jwtControl, '/token', JSON.stringify({ sites, ttl_ms, bad })).then((r) => r.token);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const until = async (what, cond, ms = 15000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await sleep(5);
  }
};
const unique = (name) => name + '-' + Date.now() + '-' + Math.random().toString(36).slice(2, 6);
const VERSION = ${JSON.stringify(version)};
// A WebSocket that records what the client opens and sends.
const recording = () => {
  const log = { sockets: [], sent: [] };
  log.WebSocket = class extends WebSocket {
    constructor(...args) {
      super(...args);
      log.sockets.push(this);
    }
    send(text) {
      log.sent.push(JSON.parse(text));
      super.send(text);
    }
  };
  return log;
};
const loginRequired = () => Object.assign(new Error('Login required'), { error: 'login_required' });
// Photon Ranch-shaped statuses (statusgen): data texts, published byte for byte.
const DEVICE = ${JSON.stringify(StatusStream.device('mrc', 23).take(24))};
const WEATHER = ${JSON.stringify(StatusStream.weather('mrc', 23).take(6))};
const publishStatus = (site, data) => post(P.control, '/publish', '{"site": ' + JSON.stringify(site) + ', "topic": "sitestatus", "data": ' + data + '}');
const stats = () => post(P.control, '/stats');
// Publishes \`texts\` of \`site\` in order; resolves once \`got\` (the data received, as JSON) has them all.
const statuses = async (site, texts, got, from = 0) => {
  for (const t of texts) await publishStatus(site, t);
  await until('the statuses', () => got.length >= from + texts.length);
};
const asPublished = (got, texts) => got.length === texts.length && got.every((g, i) => g === JSON.stringify(JSON.parse(texts[i])));
// Ten device statuses to a new site, the next delta after the first \`before\` altered on its way
// by the proxy (\`mangle\`): the client must see a gap, recover once and deliver each status as
// published, reporting no error.
const deltaGap = async (site, before, mangle) => {
  const log = [];
  const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', logger: (e, d) => log.push([e, d.recovered]) });
  const sub = ds.subscribe(site);
  const got = [];
  sub.on('sitestatus', (d) => got.push(JSON.stringify(d)));
  const errors = [];
  ds.onError((e) => errors.push(e.message));
  await sub.ready;
  await statuses(site, DEVICE.slice(0, before), got);
  await post(P.control, '/reset');
  await post(P.control, '/mangle', JSON.stringify(mangle));
  await statuses(site, DEVICE.slice(before, 10), got, before);
  const { mangled } = await stats();
  ds.close();
  const recoveries = log.filter(([e, r]) => e === 'subscribed' && r === true).length;
  return { mangled, recoveries, n: got.length, errors,
    ok: mangled === 1 && recoveries === 1 && asPublished(got, DEVICE.slice(0, 10)) && errors.length === 0 };
};
`;

const tests = {
  'handles: ready resolves with the position once confirmed, after a rewind replay': `
    const site = unique('h1');
    await publish(P.control, site, { n: 1 });
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev' });
    const sub = ds.subscribe(site, { rewind: 5 });
    const before = sub.state;
    const got = [];
    sub.on('weather', (d) => got.push(d.n));
    const info = await sub.ready;
    await until('the replay', () => got.length === 1);
    ds.close();
    return { before, info, after: sub.state, got,
      ok: before === 'subscribing' && info.offset === 1 && info.replayed === 1 && typeof info.epoch === 'string' && sub.state === 'closed' };`,

  'handles: the site stays subscribed until its last handle is released': `
    const site = unique('h2');
    const log = [];
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', logger: (e, d) => log.push(e + ' ' + (d.site ?? '')) });
    const page = ds.subscribe(site), bar = ds.subscribe(site);
    const got = [];
    page.on('weather', (d) => got.push('page ' + d.n));
    bar.on('weather', (d) => got.push('bar ' + d.n));
    await Promise.all([page.ready, bar.ready]);
    bar.unsubscribe();
    await publish(P.control, site, { n: 1 });
    await until('page to receive', () => got.length === 1);
    const kept = !log.includes('unsubscribe ' + site);
    page.unsubscribe();
    const released = log.filter((l) => l === 'unsubscribe ' + site).length;
    const subscribes = log.filter((l) => l === 'subscribe ' + site).length;
    ds.close();
    return { got, kept, released, subscribes, ok: got[0] === 'page 1' && kept && released === 1 && subscribes === 1 && bar.state === 'unsubscribed' };`,

  'handles: a refused subscription (too_many_subscriptions) rejects its handle and ready() with a typed error': `
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.jwtRelay + '/dev', token: await token(['*'], 60000) });
    const prefix = unique('many');
    // The relay with tokens allows 4 subscriptions per connection.
    const subs = Array.from({ length: 5 }, (_, i) => ds.subscribe(prefix + '-' + i));
    const readyAll = ds.ready().then(() => 'resolved', (e) => e);
    const outcomes = await Promise.all(subs.map((s) => s.ready.then(() => 'ok', (e) => e)));
    const refused = outcomes.filter((o) => o !== 'ok');
    const e = refused[0];
    const r = await readyAll;
    ds.close();
    return { refused: refused.length, kind: e?.kind, code: e?.code, isError: e instanceof Error, typed: e instanceof DS.DatastreamError,
      readyRejected: r instanceof DS.DatastreamError && r.code === 'too_many_subscriptions',
      ok: refused.length === 1 && e.kind === 'server' && e.code === 'too_many_subscriptions' && e instanceof DS.DatastreamError && r instanceof Error };`,

  'latest: a listener added late gets the held value at once, with no subscribe on the wire; latest() reads it': `
    const site = unique('l1');
    await publish(P.control, site, { n: 1 });
    const sent = [];
    class Recording extends WebSocket {
      send(text) { sent.push(JSON.parse(text)); super.send(text); }
    }
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', sites: [site], WebSocket: Recording });
    const first = [];
    ds.on('weather', (d, m) => first.push([d.n, m.latest ?? false]), { site, latest: true });
    await ds.ready();
    await until('the latest value from the relay', () => first.length === 1);
    await publish(P.control, site, { n: 2 });
    await until('a live one', () => first.length === 2);
    const subscribes = () => sent.filter((f) => f.type === 'subscribe').length;
    const before = subscribes();
    const late = [];
    ds.on('weather', (d, m) => late.push([d.n, m.latest ?? false, m.offset]), { site, latest: true });
    const atOnce = JSON.stringify(late);
    const sub = ds.subscribe(site);
    const handle = [];
    sub.on('weather', (d, m) => handle.push([d.n, m.latest ?? false]), { latest: true });
    const handleAtOnce = JSON.stringify(handle);
    const held = ds.latest(site, 'weather')?.n;
    const none = ds.latest(site, 'nothing');
    await sleep(300);
    const after = subscribes();
    await publish(P.control, site, { n: 3 });
    await until('the next live one everywhere', () => first.length === 3 && late.length === 2 && handle.length === 2);
    await sleep(200);
    sub.unsubscribe();
    const keptWhileHeld = ds.latest(site, 'weather')?.n;
    ds.unsubscribe(site);
    const dropped = ds.latest(site, 'weather');
    ds.close();
    const result = { first, late, handle, atOnce, handleAtOnce, held, none, before, after, keptWhileHeld, dropped };
    return { ...result,
      ok: JSON.stringify(first) === '[[1,true],[2,false],[3,false]]' && atOnce === '[[2,true,2]]' && JSON.stringify(late) === '[[2,true,2],[3,false,3]]'
        && handleAtOnce === '[[2,true]]' && JSON.stringify(handle) === '[[2,true],[3,false]]' && held === 2 && none === undefined
        && before === after && before >= 1 && sent[0].latest === true && keptWhileHeld === 3 && dropped === undefined };`,

  'latest: a throwing latest callback is reported and the others still get the held value; legacy keeps only what it received': `
    const site = unique('l2');
    await publish(P.control, site, 'a');
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', sites: [site] });
    const errors = [];
    ds.onError((e) => errors.push(e));
    const got = [];
    ds.on('weather', (d) => got.push(d), { site, latest: true });
    await until('the latest value', () => got.length === 1);
    const boom = new Error('boom');
    ds.on('weather', () => { throw boom; }, { latest: true });
    const other = [];
    ds.on('*', (d, m) => other.push([d, m.topic, m.latest]), { site, latest: true });
    ds.close();
    const e = errors[0];
    const legacy = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', protocol: 'legacy', sites: [site] });
    const lgot = [];
    legacy.on('weather', (d, m) => lgot.push([d, m.latest ?? false]), { site, latest: true });
    await legacy.ready();
    await sleep(300);
    const nothingYet = lgot.length;
    await publish(P.control, site, 'b');
    await until('a live one in legacy mode', () => lgot.length === 1);
    const late = [];
    legacy.on('weather', (d, m) => late.push([d, m.latest, m.epoch]), { site, latest: true });
    const heldLegacy = legacy.latest(site, 'weather');
    legacy.close();
    return { got, other, kind: e?.kind, errors: errors.length, nothingYet, lgot, late, heldLegacy,
      ok: got[0] === 'a' && errors.length === 1 && e instanceof DS.DatastreamError && e.kind === 'callback' && e.cause === boom && e.site === site
        && JSON.stringify(other) === JSON.stringify([['a', 'weather', true]]) && nothingYet === 0
        && JSON.stringify(lgot) === '[["b",false]]' && JSON.stringify(late) === '[["b",true,null]]' && heldLegacy === 'b' };`,

  'latest per kind: each kind of sitestatus held and handed over oldest first, a late listener asks for the kinds it lacks; latest(site, topic, key); latestKeys': `
    const site = unique('l3');
    const status = (statusType, n) => post(P.control, '/publish', JSON.stringify({ site, topic: 'sitestatus', data: { statusType, n } }));
    await status('enclosure', 1);
    for (let n = 2; n <= 21; n++) await status('weather', n);
    const sent = [];
    class Recording extends WebSocket {
      send(text) { sent.push(JSON.parse(text)); super.send(text); }
    }
    const url = 'ws://127.0.0.1:' + P.proxy + '/dev';
    const ds = new DS.Datastream({ url, sites: [site], WebSocket: Recording });
    const mark = (into) => (d, m) => into.push([d.statusType, d.n, m.latest ?? false]);
    const first = [];
    ds.on('sitestatus', mark(first), { site, latest: true });
    await ds.ready();
    await until('both kinds', () => first.length === 2);
    const reads = [ds.latest(site, 'sitestatus', 'enclosure')?.n, ds.latest(site, 'sitestatus', 'weather')?.n,
      ds.latest(site, 'sitestatus')?.n, ds.latest(site, 'sitestatus', 'device')];
    await status('weather', 22);
    await until('a live one', () => first.length === 3);
    const subscribes = () => sent.filter((f) => f.type === 'subscribe').length;
    const before = subscribes();
    const late = [];
    ds.on('sitestatus', mark(late), { site, latest: true });
    const atOnce = JSON.stringify(late);
    await until('the relay asked by name', () => subscribes() === before + 1);
    const asked = sent.filter((f) => f.type === 'subscribe').at(-1).latest;
    await sleep(300);
    ds.close();

    // A page whose first listener did not want latest values holds the weather only: a latest
    // listener added then gets it at once, and the enclosure's from the relay.
    const plain = new DS.Datastream({ url, sites: [site] });
    plain.on('sitestatus', () => {}, { site });
    await plain.ready();
    await status('weather', 23);
    await until('the weather held', () => plain.latest(site, 'sitestatus', 'weather')?.n === 23);
    const third = [];
    plain.on('sitestatus', mark(third), { site, latest: true });
    const thirdAtOnce = JSON.stringify(third);
    await until('the enclosure from the relay', () => third.length === 2);
    await sleep(200);
    // Held in the order received (the weather first); handed over oldest first.
    const fifth = [];
    plain.on('sitestatus', mark(fifth), { site, latest: true });
    const fifthAtOnce = JSON.stringify(fifth);
    plain.close();

    // The app's rule wins over the relay's: no kinds, one slot per topic.
    const own = new DS.Datastream({ url, sites: [site], latestKeys: {} });
    const fourth = [];
    own.on('sitestatus', mark(fourth), { site, latest: true });
    await until('both latest frames', () => fourth.length === 2);
    const ownReads = [own.latest(site, 'sitestatus', 'enclosure'), own.latest(site, 'sitestatus')?.n];
    own.close();
    let thrown = null;
    try { new DS.Datastream({ url, latestKeys: 'sitestatus' }); } catch (e) { thrown = e instanceof TypeError && e.message; }

    const result = { first, reads, late, atOnce, asked, thirdAtOnce, third, fifthAtOnce, fourth, ownReads, thrown };
    return { ...result,
      ok: JSON.stringify(first) === '[["enclosure",1,true],["weather",21,true],["weather",22,false]]'
        && JSON.stringify(reads) === '[1,21,21,null]'
        && atOnce === '[["enclosure",1,true],["weather",22,true]]' && JSON.stringify(asked) === '["sitestatus"]'
        && late.length === 2 && first.length === 3
        && thirdAtOnce === '[["weather",23,true]]' && JSON.stringify(third) === '[["weather",23,true],["enclosure",1,true]]'
        && fifthAtOnce === '[["enclosure",1,true],["weather",23,true]]'
        && JSON.stringify(fourth) === '[["enclosure",1,true],["weather",23,true]]'
        && JSON.stringify(ownReads) === '[null,23]' && typeof thrown === 'string' && thrown.includes('latestKeys') };`,

  'rewind: a handle asking for a rewind gets the replay, even what the client delivered before; the others get nothing twice': `
    const site = unique('rw');
    for (let n = 1; n <= 3; n++) await publish(P.control, site, { n });
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', sites: [site] });
    const first = [];
    ds.on('weather', (d) => first.push(d.n), { site });
    await ds.ready();
    for (let n = 4; n <= 5; n++) await publish(P.control, site, { n });
    await until('the live ones', () => first.length === 2);
    const late = [];
    const sub = ds.subscribe(site, { rewind: 3 });
    sub.on('weather', (d, m) => late.push(d.n));
    const info = await sub.ready;
    await until('the replay', () => late.length === 3);
    await publish(P.control, site, { n: 6 });
    await until('a live one to both', () => late.length === 4 && first.length === 3);
    await sleep(200);
    ds.close();
    return { first, late, info, ok: first.join() === '4,5,6' && late.join() === '3,4,5,6' };`,

  'lazy: no socket and no token before a site; on() with a site holds it; the socket closes 5 s after the last site, a site meanwhile keeps it': `
    const rec = recording();
    let calls = 0;
    const states = [];
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', WebSocket: rec.WebSocket,
      getToken: () => { calls++; return null; } });
    ds.onState((s) => states.push(s.type));
    const everywhere = [];
    ds.on('weather', (d) => everywhere.push(d));
    await sleep(500);
    const before = { sockets: rec.sockets.length, calls, state: ds.state.type, ready: await Promise.race([ds.ready().then(() => true), sleep(100)]) };
    const site = unique('lazy');
    const got = [];
    const off = ds.on('weather', (d) => got.push(d), { site });
    await ds.ready();
    const open = { sockets: rec.sockets.length, calls, state: ds.state.type };
    await publish(P.control, site, 1);
    await until('a publication', () => got.length === 1 && everywhere.length === 1);
    off();
    await sleep(1000);
    const lingering = rec.sockets[0].readyState === WebSocket.OPEN;
    const other = ds.subscribe(unique('lazy2'));
    await other.ready;
    const reused = rec.sockets.length === 1;
    other.unsubscribe();
    const released = Date.now();
    await until('the socket to close', () => rec.sockets[0].readyState === WebSocket.CLOSED, 10000);
    const linger = Date.now() - released;
    const end = ds.state.type;
    const seen = [...states];
    // autoConnect: false waits for connect().
    const rec2 = recording();
    const manual = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', WebSocket: rec2.WebSocket, sites: [site], autoConnect: false });
    await sleep(500);
    const waited = { sockets: rec2.sockets.length, state: manual.state.type };
    manual.connect();
    await manual.ready();
    const connected = rec2.sockets.length;
    manual.close();
    ds.close();
    const result = { before, open, lingering, reused, linger, end, seen, waited, connected };
    return { ...result,
      ok: JSON.stringify(before) === '{"sockets":0,"calls":0,"state":"idle","ready":true}'
        && JSON.stringify(open) === '{"sockets":1,"calls":1,"state":"connected"}' && lingering && reused
        && linger >= 4500 && linger < 8000 && end === 'idle' && seen.join() === 'connecting,connected,idle'
        && JSON.stringify(waited) === '{"sockets":0,"state":"idle"}' && connected === 1 };`,

  'one frame per site: a site switch in one task sends an unsubscribe and a subscribe; the relay sends the latest values once': `
    const [a, b] = [unique('sw-a'), unique('sw-b')];
    await publish(P.control, a, { n: 1 });
    await publish(P.control, b, { n: 2 });
    const rec = recording();
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', WebSocket: rec.WebSocket });
    // A store plugin's listener of every site, and a component's of its site.
    ds.on('sitestatus', () => {}, { latest: true });
    const got = [];
    const take = (site) => {
      const sub = ds.subscribe(site);
      sub.on('weather', (d, m) => got.push([m.site, d.n, m.latest ?? false]), { latest: true });
      return sub;
    };
    let sub = take(a);
    await sub.ready;
    await until('a latest', () => got.length === 1);
    await sleep(200);
    const mark = rec.sent.length;
    sub.unsubscribe();
    sub = take(b);
    await sub.ready;
    await until('b latest', () => got.length === 2);
    await sleep(300);
    const frames = rec.sent.slice(mark);
    ds.close();
    return { frames, got, first: rec.sent.slice(0, mark),
      ok: frames.length === 2 && frames[0].type === 'unsubscribe' && frames[0].site === a && frames[1].type === 'subscribe'
        && frames[1].site === b && frames[1].latest === true && mark === 1
        && JSON.stringify(got) === JSON.stringify([[a, 1, true], [b, 2, true]]) };`,

  'errors: invalid names throw synchronously before the module has loaded, as DatastreamError': `
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev' });
    const caught = [];
    for (const f of [() => ds.subscribe('bad site'), () => ds.on('bad/topic', () => {}), () => ds.on('t', () => {}, { site: ['ok', ''] })]) {
      try { f(); caught.push('no throw'); } catch (e) { caught.push(e instanceof DS.DatastreamError && e.kind + ' ' + e.code); }
    }
    let option;
    try { new DS.Datastream({ url: 'ws://x/dev', minReconectDelay: 1 }); } catch (e) { option = e instanceof TypeError && e.message; }
    ds.close();
    return { caught, option, ok: caught.join() === 'invalid invalid_site,invalid invalid_topic,invalid invalid_site' && /minReconectDelay/.test(option) };`,

  'errors: a throwing callback reaches onError as a DatastreamError with its cause; on() takes an array of sites': `
    const [a, b] = [unique('ea'), unique('eb')];
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', sites: [a, b] });
    const errors = [];
    const got = [];
    ds.onError((e) => errors.push(e));
    ds.on('weather', (d, m) => got.push(m.site), { site: [a, b] });
    const boom = new Error('boom');
    ds.on('weather', () => { throw boom; }, { site: a });
    await ds.ready();
    await publish(P.control, a, 1);
    await publish(P.control, b, 2);
    await until('both', () => got.length === 2 && errors.length === 1);
    ds.close();
    const e = errors[0];
    return { got, kind: e.kind, ok: e instanceof DS.DatastreamError && e instanceof Error && e.kind === 'callback' && e.cause === boom && e.site === a && got.join() === a + ',' + b };`,

  'logging: debug/logger shows connects, subscribes, confirmations and closes': `
    const site = unique('log');
    const log = [];
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', sites: [site], logger: (e, d) => log.push(e + ':' + (d.type ?? d.site ?? '')) });
    await ds.ready();
    ds.close();
    const want = ['connect:', 'state:connected', 'subscribed:' + site, 'state:closed'];
    return { log, ok: want.every((w) => log.includes(w)) };`,

  'tokens: a static token connects; when it expires mid-session without refresh, the client ends with 3002, without reconnecting': `
    const site = unique('t1');
    const t = await token([site], 2000);
    const states = [];
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.jwtRelay + '/dev', sites: [site], token: t, minReconnectDelay: 300, maxReconnectDelay: 1000 });
    ds.onState((s) => states.push(s));
    await ds.ready();
    const got = [];
    ds.on('weather', (d) => got.push(d));
    await publish(P.jwtControl, site, 1);
    await until('a publication', () => got.length === 1);
    await until('the end', () => ds.state.type === 'closed', 20000);
    const end = ds.state;
    return { end, reconnects: states.filter((s) => s.type === 'reconnecting').length,
      ok: end.code === 3002 && end.reason === 'token expired' && !states.some((s) => s.type === 'reconnecting') };`,

  'tokens: getToken refreshes in-band before exp: one connection throughout': `
    const site = unique('t2');
    let calls = 0;
    const issued = [];
    const log = [];
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.jwtRelay + '/dev', sites: [site],
      getToken: async () => { calls++; const t = await token([site], 3000); issued.push(t); return t; },
      logger: (e, d) => log.push(JSON.stringify([e, d])) });
    let connects = 0;
    ds.onState((s) => { if (s.type === 'connected') connects++; });
    const got = [];
    ds.on('weather', (d) => got.push(d));
    await ds.ready();
    for (let i = 1; i <= 7; i++) { await publish(P.jwtControl, site, i); await sleep(1000); }
    await until('every publication', () => got.length === 7);
    const state = ds.state.type;
    ds.close();
    const leaked = issued.some((t) => log.some((l) => l.includes(t)));
    return { calls, connects, got: got.length, state, leaked, ok: calls >= 3 && connects === 1 && state === 'connected' && !leaked };`,

  'tokens: on 3002 (refresh failed) a fresh token reconnects and recovers the gap': `
    const site = unique('t3');
    let calls = 0;
    const errors = [];
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.jwtRelay + '/dev', sites: [site], minReconnectDelay: 5000, maxReconnectDelay: 10000,
      getToken: async () => {
        calls++;
        if (calls === 2) throw new Error('offline');
        // Published while the connection is down (closed at expiry, no token yet): recovered.
        if (calls === 3) await publish(P.jwtControl, site, 2);
        return token([site], 2000);
      } });
    ds.onError((e) => errors.push(e.kind));
    let connects = 0;
    ds.onState((s) => { if (s.type === 'connected') connects++; });
    const got = [];
    ds.on('weather', (d) => got.push(d));
    await ds.ready();
    await publish(P.jwtControl, site, 1);
    await until('the second connection', () => connects === 2, 15000);
    await publish(P.jwtControl, site, 3);
    await until('every publication', () => got.length === 3);
    ds.close();
    return { calls, connects, errors, got, ok: calls === 3 && connects === 2 && errors.includes('token') && got.join() === '1,2,3' };`,

  'tokens: a refresh that no longer grants a site ends that subscription (forbidden), the others go on': `
    const [a, b] = [unique('ra'), unique('rb')];
    let calls = 0;
    const errors = [];
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.jwtRelay + '/dev',
      getToken: async () => (++calls === 1 ? token([a, b], 2000) : token([a], 60000)) });
    ds.onError((e) => errors.push(e));
    const sa = ds.subscribe(a), sb = ds.subscribe(b);
    await Promise.all([sa.ready, sb.ready]);
    await until('the refusal of b', () => sb.state === 'refused', 10000);
    const got = [];
    sa.on('weather', (d) => got.push(d));
    await publish(P.jwtControl, a, 1);
    await until('a publication of a', () => got.length === 1);
    ds.close();
    const e = errors.find((x) => x.code === 'forbidden');
    return { calls, stateA: sa.state, code: e?.code, site: e?.site, ok: e?.site === b && e instanceof DS.DatastreamError && got[0] === 1 };`,

  'tokens: a token that stops verifying: invalid_token on refresh, then 3501 after one more getToken, terminal': `
    const site = unique('t5');
    let calls = 0;
    const issued = [];
    const errors = [];
    const log = [];
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.jwtRelay + '/dev', sites: [site],
      getToken: async () => { const t = await token([site], 2000, ++calls > 1); issued.push(t); return t; },
      logger: (e, d) => log.push(JSON.stringify([e, d])) });
    ds.onError((e) => errors.push(e));
    await ds.ready();
    await until('the end', () => ds.state.type === 'closed', 20000);
    const end = ds.state;
    const texts = [...errors.map((e) => e.message), ...log, end.reason];
    const leaked = issued.some((t) => texts.some((x) => x.includes(t)));
    return { calls, end, errors: errors.map((e) => e.code), leaked,
      ok: end.code === 3501 && calls === 4 && errors.some((e) => e.code === 'invalid_token') && !leaked };`,

  'tokens: a failing getToken (login_required) is reported and retried with the backoff, never fatal; then a token connects and delivers': `
    const site = unique('gt');
    let calls = 0;
    const errors = [];
    const states = [];
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.jwtRelay + '/dev', minReconnectDelay: 200, maxReconnectDelay: 400,
      getToken: async () => (++calls <= 2 ? Promise.reject(loginRequired()) : token([site], 60000)) });
    ds.onError((e) => errors.push(e));
    ds.onState((s) => states.push(s));
    const sub = ds.subscribe(site);
    const got = [];
    sub.on('weather', (d) => got.push(d));
    await sub.ready;
    await publish(P.jwtControl, site, 1);
    await until('a publication', () => got.length === 1);
    const later = [];
    ds.subscribe(unique('gt2')).on('weather', (d) => later.push(d));
    const reasons = states.filter((s) => s.type === 'reconnecting').map((s) => s.reason);
    const state = ds.state.type;
    ds.close();
    return { calls, errors: errors.map((e) => [e.kind, e.message, e.cause?.error]), reasons, state,
      ok: calls === 3 && errors.length === 2 && errors.every((e) => e instanceof DS.DatastreamError && e.kind === 'token' && e.cause.error === 'login_required')
        && errors.every((e) => e.message === 'getToken() failed: Login required')
        && reasons.length === 2 && reasons.every((r) => r === 'getToken() failed') && state === 'connected' };`,

  'tokens: getToken resolving to null connects without a token (a relay without auth)': `
    const site = unique('nt');
    const rec = recording();
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', WebSocket: rec.WebSocket, getToken: async () => null });
    const got = [];
    ds.on('weather', (d) => got.push(d), { site });
    await ds.ready();
    await publish(P.control, site, 1);
    await until('a publication', () => got.length === 1);
    const protocols = rec.sockets[0].protocol;
    ds.close();
    return { got, protocols, ok: got[0] === 1 && protocols === 'datastream.v2' };`,

  'anonymous: without a token an anonymous site is read and another refused (forbidden); a present but invalid token is refused': `
    const hidden = unique('hidden');
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.jwtRelay + '/dev', getToken: async () => null });
    const errors = [];
    ds.onError((e) => errors.push(e));
    const open = ds.subscribe('open-a');
    const refused = ds.subscribe(hidden);
    const got = [];
    open.on('weather', (d, m) => got.push(d));
    await open.ready;
    const e = await refused.ready.then(() => null, (e) => e);
    const value = unique('v');
    await publish(P.jwtControl, 'open-a', value);
    await until('a publication', () => got.includes(value));
    const state = ds.state.type;
    ds.close();
    const bad = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.jwtRelay + '/dev', sites: ['open-a'], token: await token(['*'], 60000, true) });
    await until('the refusal', () => bad.state.type === 'closed');
    const end = bad.state;
    return { code: e?.code, state, end,
      ok: e instanceof DS.DatastreamError && e.code === 'forbidden' && refused.state === 'refused' && state === 'connected' && end.code === 3501 };`,

  'version: a WebAssembly module of another version is refused with an error naming both': `
    const bytes = new Uint8Array(await (await fetch('/dist/datastream_bg.wasm')).arrayBuffer());
    const mine = new TextEncoder().encode(VERSION);
    // The stamp is the module's last bytes.
    const other = '9.9.9'.padEnd(mine.length, '9').slice(0, mine.length);
    bytes.set(new TextEncoder().encode(other), bytes.length - mine.length);
    const e = await DS.load(bytes).then(() => null, (e) => e);
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', sites: [unique('v')] });
    const r = await ds.ready().then(() => null, (e) => e);
    return { message: e?.message, state: ds.state,
      ok: e instanceof DS.DatastreamError && e.kind === 'version' && e.message.includes(VERSION) && e.message.includes(other)
        && r === e && ds.state.type === 'closed' && ds.state.code === 0 };`,

  'names: the SDK refuses at once exactly the site codes and topics the relay refuses': `
    // Its one copy of the name rule (the dispatcher's NAME) against the relay's, name by name:
    // the SDK throws synchronously; the relay's publish API answers 400.
    const names = ['mrc', 'MRC2', 'a_b-c.d:e', 'x'.repeat(64), 'x'.repeat(65), '', ' mrc', 'mrc ', 'm/rc', 'm?rc',
      'm#rc', 'm%20', 'mrç', '日本', 'a\\nb', 'a\\u0000', '..', ':', '-', '_', '*', 'a*', 'a,b', '"q"', 'é'.repeat(10)];
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', autoConnect: false });
    const disagree = [];
    for (const n of names) {
      let site = true, topic = true;
      try { ds.subscribe(n).unsubscribe(); } catch (e) { site = !(e instanceof DS.DatastreamError && e.code === 'invalid_site'); }
      try { ds.on(n, () => {})(); } catch (e) { topic = !(e instanceof DS.DatastreamError && e.code === 'invalid_topic'); }
      const asSite = await fetch('http://127.0.0.1:' + P.control + '/publish', { method: 'POST', body: JSON.stringify({ site: n, topic: 't', data: 1 }) });
      const asTopic = await fetch('http://127.0.0.1:' + P.control + '/publish', { method: 'POST', body: JSON.stringify({ site: 'names', topic: n, data: 1 }) });
      // '*' is the SDK's "every topic", not a topic: only its site verdict is compared.
      if (site !== (asSite.status !== 400) || (n !== '*' && topic !== (asTopic.status !== 400))) disagree.push([n, site, asSite.status, topic, asTopic.status]);
    }
    ds.close();
    return { disagree, ok: disagree.length === 0 };`,

  'tokens: legacy mode sends the token as ?token=': `
    const site = unique('t6');
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.jwtRelay + '/dev', protocol: 'legacy', sites: [site], token: await token([site], 60000) });
    const got = [];
    ds.on('weather', (d) => got.push(d));
    const sub = ds.subscribe(site);
    await sub.ready;
    await ds.ready();
    await publish(P.jwtControl, site, 7);
    await until('a publication', () => got.length === 1);
    ds.close();
    return { got, ok: got[0] === 7 };`,

  'deltas: the callbacks, meta and latest() get the statuses as published, for a fraction of their bytes': `
    const site = unique('d1');
    const log = recording();
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', WebSocket: log.WebSocket });
    const sub = ds.subscribe(site);
    const got = [], metas = [];
    sub.on('sitestatus', (d, m) => { got.push(JSON.stringify(d)); metas.push(m.offset); });
    await sub.ready;
    await post(P.control, '/reset');
    // Device statuses with a weather status now and then: two slots, each its own base.
    const texts = DEVICE.flatMap((t, i) => (i % 4 === 3 ? [t, WEATHER[(i - 3) / 4]] : [t]));
    await statuses(site, texts, got);
    const { bytes_to_client: bytes } = await stats();
    const full = texts.reduce((n, t) => n + t.length, 0);
    const latest = JSON.stringify(ds.latest(site, 'sitestatus', 'device'));
    ds.close();
    const asked = log.sent.find((f) => f.type === 'subscribe')?.delta;
    return { asked, bytes, full, n: got.length, metas: metas.join(), note: bytes + ' bytes received for ' + full + ' of data',
      ok: asked === 'fossil' && asPublished(got, texts) && metas.every((o, i) => o === i + 1)
        && latest === JSON.stringify(JSON.parse(DEVICE[DEVICE.length - 1])) && bytes < full / 5 };`,

  'deltas: delta: false receives every publication in full': `
    const site = unique('d2');
    const log = recording();
    const ds = new DS.Datastream({ url: 'ws://127.0.0.1:' + P.proxy + '/dev', WebSocket: log.WebSocket, delta: false });
    const sub = ds.subscribe(site);
    const got = [];
    sub.on('sitestatus', (d) => got.push(JSON.stringify(d)));
    await sub.ready;
    await post(P.control, '/reset');
    const texts = DEVICE.slice(0, 8);
    await statuses(site, texts, got);
    const { bytes_to_client: bytes } = await stats();
    const full = texts.reduce((n, t) => n + t.length, 0);
    ds.close();
    const asked = log.sent.find((f) => f.type === 'subscribe')?.delta;
    return { asked, bytes, full, ok: asked === undefined && asPublished(got, texts) && bytes >= full };`,

  'deltas: a corrupted delta (bad checksum) is a gap: recovered, never delivered wrong': `
    // The last digit of the checksum of the delta after the third status changed.
    return deltaGap(unique('d3'), 3, { find: '[0-9A-Za-z_];"}', with: '~;"}' });`,

  'deltas: a delta whose base the client does not hold is a gap: recovered, never delivered wrong': `
    // A new site's offsets start at 1: the delta at 5 applies to 4; it is sent as applying to 3.
    return deltaGap(unique('d4'), 4, { find: '"offset":5,"key":"device","base":4,', with: '"offset":5,"key":"device","base":3,' });`,
};

const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/test.html') {
    return res
      .writeHead(200, { 'content-type': 'text/html' })
      .end('<!doctype html><script type="module">import * as DS from "/dist/index.js"; window.DS = DS; window.__loaded = true;</script>');
  }
  const file = path.join(dist, decodeURIComponent(url.pathname.replace(/^\/dist\//, '/')));
  if (!file.startsWith(dist)) return res.writeHead(403).end();
  let body;
  try {
    body = readFileSync(file);
  } catch {
    return res.writeHead(404).end();
  }
  res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' }).end(body);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
try {
  const only = process.env.SDK_TEST_ONLY;
  for (const [name, body] of Object.entries(tests)) {
    if (only && !name.includes(only)) continue;
    const tab = await browser.newPage();
    const errors = [];
    tab.on('pageerror', (e) => errors.push(String(e)));
    await tab.goto(`${base}/test.html`);
    await tab.waitForFunction(() => window.__loaded === true, null, { timeout: 10_000 });
    try {
      const result = await tab.evaluate(`(async () => { ${prelude}\n${body} })()`);
      check(result.ok === true && errors.length === 0, `${name} ${result.ok ? result.note ?? '' : JSON.stringify(result)} ${errors.join('; ')}`);
    } catch (e) {
      check(false, `${name}: ${e.message.split('\n')[0]}`);
    }
    await tab.close();
  }
} finally {
  await browser.close();
}

// The delta tests again in headless Firefox, through geckodriver (started and stopped by PID).
try {
  const only = process.env.SDK_TEST_ONLY;
  const names = Object.keys(tests).filter((n) => n.startsWith('deltas:') && (!only || n.includes(only)));
  if (names.length) await inFirefox(names);
} finally {
  server.close();
}

async function inFirefox(names) {
  await withFirefox(async (page) => {
    for (const name of names) {
      try {
        await page.load(`${base}/test.html`);
        const got = await page.run(`const done = arguments[arguments.length - 1];
          (async () => { ${prelude}\n${tests[name]} })().then((r) => done({ r }), (e) => done({ error: String(e) }));`);
        if (got.error) throw new Error(got.error);
        check(got.r.ok === true, `Firefox, ${name} ${got.r.ok ? got.r.note ?? '' : JSON.stringify(got.r)}`);
      } catch (e) {
        check(false, `Firefox, ${name}: ${e.message.split('\n')[0]}`);
      }
    }
    if (failures) console.error(page.log().slice(-2000));
  });
}

if (failures > 0) {
  console.error(`${failures} SDK check(s) failed`);
  process.exit(1);
}
console.log('SDK checks passed');
