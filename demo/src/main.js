// A live dashboard of Photon Ranch sites, using @photonranch/datastream exactly as an app would.
import { Datastream } from '@photonranch/datastream';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import './style.css';

const params = new URLSearchParams(location.search);
const wsBase = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/${params.get('stage') ?? 'dev'}`;
const KNOWN_SITES = ['mrc', 'mrc2', 'saf', 'sro', 'tst'];
const initial = (params.get('sites') ?? 'mrc,saf').split(',').filter(Boolean);
const LOG_LIMIT = 200;
const CHART_POINTS = 300;

const $ = (id) => document.getElementById(id);
const selected = new Set(initial);
const ds = new Datastream({ url: wsBase, sites: [...selected] });
window.datastream = ds; // for the browser console and end-to-end tests

// ---- connection state -------------------------------------------------------------------
ds.onState((s) => {
  const badge = $('state');
  badge.dataset.state = s.type;
  badge.textContent =
    s.type === 'reconnecting' ? `reconnecting · attempt ${s.attempt} in ${(s.delay / 1000).toFixed(1)} s`
    : s.type === 'closed' ? `closed · ${s.code}${s.reason ? ` ${s.reason}` : ''}`
    : s.type;
});
ds.onError((e) => console.warn('datastream:', e.kind, e.message));
ds.onRecoveryFailed(({ site, reason }) => {
  const note = $('recovery');
  note.hidden = false;
  note.textContent = `${site}: missed messages could not be recovered (${reason}); showing fresh data from now on.`;
  note.dataset.site = site;
  // What an app does here: refetch current state. The dashboard clears what may be stale.
  for (const tile of document.querySelectorAll(`[data-site="${site}"] .value`)) tile.classList.add('stale');
});

// ---- site picker --------------------------------------------------------------------------
function renderPicker() {
  const picker = $('site-picker');
  picker.replaceChildren();
  for (const site of new Set([...KNOWN_SITES, ...selected])) {
    const label = document.createElement('label');
    label.className = 'chip';
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.value = site;
    box.checked = selected.has(site);
    box.addEventListener('change', () => toggleSite(site, box.checked));
    label.append(box, ` ${site}`);
    picker.append(label);
  }
}

function toggleSite(site, on) {
  if (on && !selected.has(site)) {
    selected.add(site);
    ds.subscribe(site, { rewind: 20 });
  } else if (!on && selected.has(site)) {
    selected.delete(site);
    ds.unsubscribe(site);
    for (const el of document.querySelectorAll(`[data-site="${site}"]`)) el.remove();
    chartRemove(site);
  }
  renderPicker();
}

$('add-site').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const name = $('add-site-name').value.trim();
  if (name) toggleSite(name, true);
  $('add-site-name').value = '';
});

// ---- tiles --------------------------------------------------------------------------------
function tile(container, site, key, title) {
  let el = container.querySelector(`[data-site="${site}"][data-key="${key}"]`);
  if (!el) {
    el = document.createElement('div');
    el.className = 'tile';
    el.dataset.site = site;
    el.dataset.key = key;
    el.innerHTML = `<div class="tile-title"></div><div class="value"></div><div class="when"></div>`;
    el.querySelector('.tile-title').textContent = `${site} · ${title}`;
    container.append(el);
    [...container.children]
      .sort((a, b) => (a.dataset.site + a.dataset.key).localeCompare(b.dataset.site + b.dataset.key))
      .forEach((c) => container.append(c));
  }
  return el;
}

// `latest`: the value is the topic's latest publication from before the page listened (the
// relay's or the client's), shown with its own time, not a live one.
function setTile(container, site, key, title, value, ms, latest) {
  const el = tile(container, site, key, title);
  const v = el.querySelector('.value');
  v.textContent = value;
  v.classList.remove('stale');
  el.querySelector('.when').textContent = ms ? `${latest ? 'as of ' : ''}${new Date(ms).toLocaleTimeString()}` : '';
  el.dataset.updated = String(Date.now());
  el.dataset.latest = String(!!latest);
}

const fmt = (leaf, unit = '') =>
  leaf === undefined ? '–' : typeof leaf.val === 'number' ? `${leaf.val.toFixed(1)}${unit}` : String(leaf.val);

// Status messages: weather and enclosure status both come as `sitestatus`, told apart by
// `statusType`. Every card listens with `latest: true`: it is filled at once when the page opens
// with the latest publication of each topic — of each kind for `sitestatus`, which the relay keeps
// per `statusType` — however long ago it was published (the enclosure status changes every few
// minutes, the weather every few seconds), then follows live ones.
function status(data, meta) {
  if (!data || typeof data !== 'object') return;
  const latest = meta.latest;
  if (data.statusType === 'weather') {
    const oc = Object.values(data.status?.observing_conditions ?? {})[0] ?? {};
    const w = $('weather');
    setTile(w, meta.site, 'temp', 'temperature', fmt(oc.temperature_C, ' °C'), oc.temperature_C?.timestamp, latest);
    setTile(w, meta.site, 'hum', 'humidity', fmt(oc['humidity_%'], ' %'), oc['humidity_%']?.timestamp, latest);
    setTile(w, meta.site, 'wind', 'wind', fmt(oc.wind_m_s, ' m/s'), oc.wind_m_s?.timestamp, latest);
    setTile(w, meta.site, 'sky', 'sky temperature', fmt(oc.sky_temp_C, ' °C'), oc.sky_temp_C?.timestamp, latest);
    setTile(w, meta.site, 'wx', 'weather ok', fmt(oc.wx_ok), oc.wx_ok?.timestamp, latest);
    if (typeof oc.temperature_C?.val === 'number') chartAdd(meta.site, oc.temperature_C.timestamp, oc.temperature_C.val);
  } else if (data.statusType === 'enclosure') {
    const enc = Object.values(data.status?.enclosure ?? {})[0] ?? {};
    const s = $('status');
    setTile(s, meta.site, 'shutter', 'shutter', fmt(enc.shutter_status), enc.shutter_status?.timestamp, latest);
    setTile(s, meta.site, 'mode', 'enclosure mode', fmt(enc.enclosure_mode), enc.enclosure_mode?.timestamp, latest);
    setTile(s, meta.site, 'az', 'dome azimuth', fmt(enc.dome_azimuth, '°'), enc.dome_azimuth?.timestamp, latest);
  }
}
ds.on('sitestatus', status, { latest: true });
ds.on('phase_status', (data, meta) =>
  setTile($('status'), meta.site, 'phase', 'phase', data?.message ?? '–', (data?.timestamp ?? 0) * 1000, meta.latest), { latest: true });
ds.on('userstatus', (data, meta) =>
  setTile($('status'), meta.site, 'user', 'user status', data?.message ?? '–', Number(data?.timestamp) * 1000, meta.latest), { latest: true });

// ---- chart --------------------------------------------------------------------------------
const series = new Map(); // site -> [[t], [v]]
let plot = null;
const COLORS = ['#4f9cf9', '#f5a524', '#17c964', '#f31260', '#9353d3', '#06b7db'];

function chartData() {
  const times = [...new Set([...series.values()].flatMap(([t]) => t))].sort((a, b) => a - b);
  const cols = [...series.values()].map(([t, v]) => {
    const at = new Map(t.map((x, i) => [x, v[i]]));
    return times.map((x) => at.get(x) ?? null);
  });
  return [times, ...cols];
}

function chartRebuild() {
  const el = $('chart');
  plot?.destroy();
  const opts = {
    width: el.clientWidth || 600,
    height: 220,
    scales: { x: { time: true } },
    axes: [{ stroke: '#aab' }, { stroke: '#aab', label: '°C' }],
    series: [{}, ...[...series.keys()].map((site, i) => ({ label: site, stroke: COLORS[i % COLORS.length], spanGaps: true, width: 2 }))],
  };
  plot = new uPlot(opts, chartData(), el);
}

function chartAdd(site, ms, value) {
  if (!series.has(site)) {
    series.set(site, [[], []]);
    chartRebuild();
  }
  const [t, v] = series.get(site);
  t.push(ms / 1000);
  v.push(value);
  if (t.length > CHART_POINTS) { t.shift(); v.shift(); }
  plot.setData(chartData());
  $('chart').dataset.points = String(t.length);
}

function chartRemove(site) {
  if (series.delete(site)) chartRebuild();
}
addEventListener('resize', () => plot?.setSize({ width: $('chart').clientWidth, height: 220 }));

// ---- message log --------------------------------------------------------------------------
const topics = new Set();
let logged = 0;
ds.on('*', (data, meta) => {
  if (!topics.has(meta.topic)) {
    topics.add(meta.topic);
    const opt = document.createElement('option');
    opt.value = opt.textContent = meta.topic;
    $('log-topic').append(opt);
  }
  const li = document.createElement('li');
  li.dataset.topic = meta.topic;
  li.dataset.site = meta.site;
  if (meta.offset !== undefined) li.dataset.offset = String(meta.offset);
  const text = typeof data === 'string' ? data : JSON.stringify(data);
  li.innerHTML = `<span class="t"></span><span class="s"></span><span class="k"></span><code></code>`;
  li.querySelector('.t').textContent = new Date().toLocaleTimeString();
  li.querySelector('.s').textContent = meta.site;
  li.querySelector('.k').textContent = `${meta.topic}${meta.offset !== undefined ? ` #${meta.offset}` : ''}`;
  li.querySelector('code').textContent = text.length > 160 ? `${text.slice(0, 160)}…` : text;
  const log = $('log');
  log.prepend(li);
  while (log.children.length > LOG_LIMIT) log.lastElementChild.remove();
  applyLogFilter(li);
  $('log-count').textContent = `${++logged} received`;
});

function applyLogFilter(only) {
  const topic = $('log-topic').value;
  for (const li of only ? [only] : $('log').children) li.hidden = topic !== '*' && li.dataset.topic !== topic;
}
$('log-topic').addEventListener('change', () => applyLogFilter());

// ---- publish form -------------------------------------------------------------------------
$('publish').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const out = $('publish-result');
  let data;
  try {
    data = JSON.parse(form.get('data'));
  } catch (e) {
    out.textContent = `data is not JSON: ${e.message}`;
    out.dataset.ok = 'false';
    return;
  }
  const headers = { 'content-type': 'application/json' };
  if (form.get('token')) headers.authorization = `Bearer ${form.get('token')}`;
  const resp = await fetch('./publish', {
    method: 'POST',
    headers,
    body: JSON.stringify({ site: form.get('site'), topic: form.get('topic'), data }),
  });
  const body = await resp.json().catch(() => ({}));
  out.dataset.ok = String(resp.ok);
  out.textContent = resp.ok ? `published (${body.accepted} accepted)` : `${resp.status}: ${body.error ?? resp.statusText}`;
});

renderPicker();
