// What the package test does in the page (window.__run(name)), as a visitor would: the home
// page, a site, another site, leaving the sites, a relay restart. Each returns what it saw.
import { ds } from './store/datastream';
import store from './store';
import { route } from './route';
import { authCalls } from './auth';
import { control, prefix } from './config';

const post = (path, body) => fetch(control + path, { method: 'POST', body: body || '' }).then((r) => r.json());
const publish = (site, topic, data) => post('/publish', JSON.stringify({ site, topic, data }));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const until = async (what, cond, ms = 15000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await sleep(10);
  }
};
const text = (id) => document.getElementById(id).textContent;
const phase = (site, message) => publish(site, 'phase_status', { site, timestamp: Date.now() / 1000, message });
const status = (site, statusType) => publish(site, 'sitestatus', { site, statusType, status: {}, server_timestamp_ms: Date.now() });
// As ptr_ui moves to a site: the route, and the store's selected site.
const go = (site) => {
  route.params.sitecode = site;
  store.commit('site_config/setActiveSite', site);
};
const sockets = () => window.__ws.sockets;
// What the client sent about subscriptions (not its answers to the relay's pings).
const sent = () => window.__ws.sent.filter((f) => f.type === 'subscribe' || f.type === 'unsubscribe');

const mrc = prefix + 'mrc';
const mrc2 = prefix + 'mrc2';
const mrcw = prefix + 'mrcw';

const errors = [];
const states = [];
ds.onError((e) => errors.push(e.kind + ': ' + e.message));
ds.onState((s) => states.push(s.type + (s.reason ? ': ' + s.reason : '')));

/** The home page, then a site: nothing before it; its data once there. */
async function open(r) {
  await sleep(500);
  r.before = { sockets: sockets().length, tokens: authCalls.count, state: ds.state.type };
  // Published before the visitor opens the site.
  for (const m of ['slewing', 'focusing', 'observing']) await phase(mrc, m);
  await status(mrcw, 'enclosure');
  await status(mrcw, 'weather');
  go(mrc);
  await until(
    'the phase and each kind of status',
    () => text('phase-now') === 'observing' && store.state.sitestatus.weather && store.state.sitestatus.enclosure,
  );
  r.history = text('phase-history');
  r.open = { sockets: sockets().length, tokens: authCalls.count, state: ds.state.type };
  await publish(mrc, 'userstatus', { site: mrc, message: 'Exposure 1 of 3 complete', log_level: 'info', timestamp: String(Date.now() / 1000) });
  await publish(mrc, 'imagedata', { s3_directory: 'data', base_filename: mrc + '-kb001ms-20261127-00010442', site: mrc });
  await until('the log and the image', () => store.state.userstatus.logs.length === 1 && store.state.images.latest);
}

export const scenarios = {
  /** Opens a site and reads it: the state and the errors seen on the way. */
  async brief() {
    const r = {};
    await open(r);
    r.errors = errors;
    r.states = states;
    return r;
  },

  /** The whole visit. */
  async visit() {
    const r = {};
    await open(r);

    // To mrc2, which shares mrc's weather station; its phase was never published.
    await sleep(300);
    let mark = sent().length;
    const renders = window.__renders.length;
    go(mrc2);
    r.switchResetAtOnce = window.__bar.phase === null;
    await sleep(300);
    await phase(mrc, 'late of mrc');
    await sleep(700);
    r.switchFrames = sent().slice(mark).map((f) => f.type + ' ' + f.site);
    r.afterSwitch = text('phase-now');
    r.oldShown = window.__renders.slice(renders).filter(([site, shown]) => shown && shown !== site);
    await phase(mrc2, 'mrc2 phase');
    await until("mrc2's phase", () => text('phase-now') === 'mrc2 phase');

    // Leaving the sites (ptr_ui selects '').
    mark = sent().length;
    const leaving = Date.now();
    go('');
    r.emptyAtOnce = window.__bar.phase === null;
    await sleep(300);
    r.leaveFrames = sent().slice(mark).map((f) => f.type + ' ' + f.site).sort();
    r.empty = text('phase-now');
    await until('the socket to close after the linger', () => sockets().every((s) => s.readyState === WebSocket.CLOSED), 10000);
    r.linger = Date.now() - leaving;
    r.idle = ds.state.type;

    // Back to mrc; then the relay restarts.
    go(mrc);
    await until("mrc's latest phase", () => text('phase-now') === 'late of mrc');
    const connects = states.filter((s) => s === 'connected').length;
    await post('/restart');
    await until('the reconnect', () => states.filter((s) => s === 'connected').length > connects, 30000);
    await phase(mrc, 'after the restart');
    await until('the phase after the restart', () => text('phase-now') === 'after the restart', 15000);
    r.errors = errors;
    r.states = states;
    return r;
  },
};
