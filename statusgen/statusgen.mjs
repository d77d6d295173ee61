// The JavaScript twin of the `datastream-statusgen` crate (src/lib.rs, which documents the
// streams): deterministic Photon Ranch-shaped `sitestatus` publications for the SDK's browser tests
// and benchmarks. The same kind, site and seed give byte-identical texts in both languages
// (statusgen.test.mjs and the crate's tests check the digests in digests.txt); any change here
// must be made there too, call for call (every draw from the generator in the same order).
//
//   import { StatusStream } from '<root>/statusgen/statusgen.mjs';
//   const s = StatusStream.device('mrc', 1);     // or StatusStream.weather(site, seed)
//   const data = s.nextData();                    // the data text, as the status service sends it
//   const body = StatusStream.publication('mrc', data);   // {"site", "topic", "data"} for /publish
//
// In a browser, where JSON modules need import attributes, build the streams in Node and hand the
// texts to the page, or load this file through a bundler.
import SCHEMA from './schema.json' with { type: 'json' };

export const TOPIC = 'sitestatus';

/** mulberry32, as the crate's `Rng`. */
class Rng {
  constructor(seed) { this.s = seed >>> 0; }
  nextU32() {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  below(n) { return this.nextU32() % n; }
  range(lo, hi) { return lo + this.below(hi - lo + 1); }
  sign() { return this.below(2) === 0 ? -1 : 1; }
}

// Integer helpers: every value stays far below 2^53, so these are exact.
const remEuclid = (a, b) => ((a % b) + b) % b;
const div = (a, b) => Math.trunc(a / b);
const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);

/** Python's json.dumps of a string (ensure_ascii). */
function str(s) {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const ch = s[i];
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20 || c > 0x7e) out += '\\u' + c.toString(16).padStart(4, '0');
    else out += ch;
  }
  return out + '"';
}

/** What Python prints for round(units / 10^decimals, decimals). */
function fixed(units, decimals) {
  const a = Math.abs(units);
  const scale = 10 ** decimals;
  let digits = String(a % scale).padStart(decimals, '0');
  while (digits.length > 1 && digits.endsWith('0')) digits = digits.slice(0, -1);
  return (units < 0 ? '-' : '') + Math.floor(a / scale) + '.' + digits;
}

function parseFixed(s, decimals) {
  const neg = s.startsWith('-');
  if (neg) s = s.slice(1);
  const [int, frac = ''] = s.split('.');
  let digits = int;
  for (let i = 0; i < decimals; i++) digits += frac[i] ?? '0';
  const v = Number(digits);
  return neg ? -v : v;
}

// A value: {t: 's'|'b'|'n'|'i'|'l'|'f', v, d (decimals, for 'f')}.
function parseVal(ty, init) {
  if (ty === 's' || ty === 'b' || ty === 'i' || ty === 'l') return { t: ty, v: init };
  if (ty === 'n') return { t: 'n', v: null };
  const d = Number(ty.slice(1));
  return { t: 'f', v: parseFixed(init, d), d };
}

function val(x) {
  switch (x.t) {
    case 's': return str(x.v);
    case 'b': return x.v ? 'true' : 'false';
    case 'n': return 'null';
    case 'i': return String(x.v);
    case 'l': return '[' + x.v.map(str).join(', ') + ']';
    default: return fixed(x.v, x.d);
  }
}

function same(a, b) {
  if (a.t !== b.t) return false;
  if (a.t === 'l') return a.v.length === b.v.length && a.v.every((s, i) => s === b.v[i]);
  return a.v === b.v && a.d === b.d;
}

const T0 = 1764288000123;

const TARGETS = [
  ['M 31', 1068432, 412692],
  ['M 51', 1349798, 471953],
  ['NGC 7000', 2098200, 442000],
  ['M 42', 558806, -53911],
  ['M 13', 1669472, 364611],
  ['NGC 891', 237183, 423492],
  ['M 101', 1405210, 543489],
  ['SN 2026abc', 1122945, 131177],
];

const FILTERS = [['rp', 6, -120], ['gp', 4, 85], ['ip', 7, -210], ['Lum', 2, 0]];

const WEATHER_WALKS = [
  ['temperature_C', 1, 2, 0, 200],
  ['humidity_%', 1, 5, 200, 800],
  ['wind_m_s', 1, 6, 0, 150],
  ['wind_gust_m_s', 1, 8, 0, 250],
  ['wind_direction_deg', 1, 15, 0, 359],
  ['sky_temp_C', 1, 4, -400, -200],
  ['meas_sky_mpsas', 1, 5, 1900, 2150],
  ['last_sky_update_s', 0, 0, 100, 900],
];

const POINTING = ['right_ascension', 'declination', 'azimuth', 'altitude', 'airmass', 'zenith_distance', 'sidereal_time'];
const ROTATOR = ['rotator1.position_angle', 'rotator1.mechanical_position', 'rotator1.target_position'];

export class StatusStream {
  /** kind: 'device' or 'weather'. */
  constructor(kind, site, seed) {
    this.kind = kind;
    this.site = site;
    this.rng = new Rng(seed);
    this.leaves = [];
    this.index = new Map();
    this.layout = [];
    for (const [kindName, devices] of SCHEMA[kind]) {
      const devs = [];
      for (const [dev, fields] of devices) {
        const ids = [];
        for (const [name, ty, init] of fields) {
          this.index.set(`${dev}.${name}`, this.leaves.length);
          ids.push(this.leaves.length);
          this.leaves.push({ name, val: parseVal(ty, init), timestamp: T0 });
        }
        devs.push([dev, ids]);
      }
      this.layout.push([kindName, devs]);
    }
    this.now = T0;
    this.serverTs = T0 + 333;
    this.tick = 0;
    this.nextSlew = 40 + this.rng.below(80);
    this.cameras = [{ phase: 0, elapsed: 0, seq: 0 }, { phase: 0, elapsed: 0, seq: 0 }];
    this.filter = 0;
    this.restamp = false;
    this.changedCount = 0;
    this.started = false;
  }

  static device(site, seed) { return new StatusStream('device', site, seed); }
  static weather(site, seed) { return new StatusStream('weather', site, seed); }

  /** Every leaf's timestamp moves on every publication (see the crate). */
  restampAll(on) { this.restamp = on; return this; }

  /** {"site": …, "topic": "sitestatus", "data": …}, as the status service sends it. */
  static publication(site, data) { return `{"site": ${str(site)}, "topic": "sitestatus", "data": ${data}}`; }

  leafCount() { return this.leaves.length; }
  /** Leaves the last nextData() changed. */
  changed() { return this.changedCount; }

  nextData() {
    this.changedCount = 0;
    if (this.started) {
      if (this.kind === 'device') this.tickDevice(); else this.tickWeather();
      if (this.restamp) for (const l of this.leaves) l.timestamp = this.now;
      this.serverTs = this.now + this.rng.range(80, 600);
    }
    this.started = true;
    return this.render();
  }

  /** The next `count` data texts. */
  take(count) {
    const out = [];
    for (let i = 0; i < count; i++) out.push(this.nextData());
    return out;
  }

  render() {
    let out = `{"site": ${str(this.site)}, "statusType": ${str(this.kind)}, "status": {`;
    this.layout.forEach(([kind, devices], k) => {
      if (k > 0) out += ', ';
      out += str(kind) + ': {';
      devices.forEach(([dev, ids], d) => {
        if (d > 0) out += ', ';
        out += str(dev) + ': {';
        ids.forEach((i, f) => {
          const l = this.leaves[i];
          if (f > 0) out += ', ';
          out += `${str(l.name)}: {"val": ${val(l.val)}, "timestamp": ${l.timestamp}}`;
        });
        out += '}';
      });
      out += '}';
    });
    return out + `}, "server_timestamp_ms": ${this.serverTs}}`;
  }

  // --- leaf access ---

  ix(path) {
    const i = this.index.get(path);
    if (i === undefined) throw new Error(`no leaf ${path} in schema.json`);
    return i;
  }
  set(path, v) {
    const l = this.leaves[this.ix(path)];
    if (!same(l.val, v)) {
      l.val = v;
      l.timestamp = this.now;
      this.changedCount++;
    }
  }
  units(path) {
    const v = this.leaves[this.ix(path)].val;
    return v.t === 'f' || v.t === 'i' ? v.v : 0;
  }
  setUnits(path, units) {
    const old = this.leaves[this.ix(path)].val;
    this.set(path, old.t === 'f' ? { t: 'f', v: units, d: old.d } : { t: 'i', v: units });
  }
  setStr(path, s) { this.set(path, { t: 's', v: s }); }
  setBool(path, b) { this.set(path, { t: 'b', v: b }); }
  walk(path, lo, hi, min, max) {
    const sign = this.rng.sign();
    const step = this.rng.range(lo, hi);
    this.setUnits(path, clamp(this.units(path) + sign * step, min, max));
  }

  // --- the device stream ---

  tickDevice() {
    const dt = this.rng.range(3000, 7000);
    this.now += dt;
    this.tick += 1;
    if (this.tick >= this.nextSlew) this.slew(dt); else this.track(dt);
    for (let cam = 0; cam < 2; cam++) this.camera(cam, dt);
    this.guider(dt);
    this.focuser('focuser1', 3);
    this.focuser('focuser2', 4);
    this.environment();
  }

  skyClock(dt) {
    const st = remEuclid(this.units('mount1.sidereal_time') + div(dt * 100274, 3600000), 2400000);
    this.setUnits('mount1.sidereal_time', st);
    const ha = remEuclid(st - this.units('mount1.right_ascension') + 1200000, 2400000) - 1200000;
    this.setUnits('mount1.hour_angle', ha);
  }

  pointing(alt, az) {
    this.setUnits('mount1.altitude', alt);
    this.setUnits('mount1.azimuth', az);
    const z = 900000 - alt;
    this.setUnits('mount1.zenith_distance', z);
    this.setUnits('mount1.airmass', 10000 + div(z * z, 56000000));
    for (const f of POINTING) this.setUnits(`telescope1.${f}`, this.units(`mount1.${f}`));
    const domeTarget = div(div(az, 100), 50) * 50;
    if (Math.abs(this.units('enclosure1.dome_azimuth') - domeTarget) >= 150) {
      this.setUnits('enclosure1.dome_azimuth', domeTarget);
    }
  }

  track(dt) {
    this.setBool('mount1.is_slewing', false);
    this.setBool('mount1.is_tracking', true);
    this.setStr('mount1.message', '-');
    this.setStr('camera2.status', 'Guiding');
    this.setBool('camera2.settled', true);
    this.skyClock(dt);
    const ha = this.units('mount1.hour_angle');
    const az = remEuclid(this.units('mount1.azimuth') + this.rng.range(150, 450), 3600000);
    const dir = ha < 0 ? 1 : -1;
    const alt = clamp(this.units('mount1.altitude') + dir * this.rng.range(100, 400), 150000, 899000);
    this.pointing(alt, az);
    if (this.rng.below(4) === 0) this.walk('mount1.refraction', 1, 20, 100, 9000);
    this.setUnits('mount1.meridian_flip_in_min', Math.max(this.units('mount1.meridian_flip_in_min') - div(dt, 6000), 0));
    const sign = this.rng.sign();
    const pa = remEuclid(this.units('rotator1.position_angle') + sign * this.rng.range(3, 40), 360000);
    for (const f of ROTATOR) this.setUnits(f, pa);
  }

  slew(dt) {
    const [name, ra, dec] = TARGETS[this.rng.below(TARGETS.length)];
    this.setStr('mount1.target_name', name);
    this.setUnits('mount1.target_ra', ra);
    this.setUnits('mount1.target_dec', dec);
    this.setUnits('mount1.right_ascension', ra);
    this.setUnits('mount1.declination', dec);
    this.setBool('mount1.is_slewing', true);
    this.setBool('mount1.is_tracking', false);
    this.setUnits('mount1.last_slew_ms', this.now);
    this.setStr('mount1.message', `Slewing to ${name}`);
    this.setUnits('mount1.meridian_flip_in_min', this.rng.range(100, 3000));
    this.skyClock(dt);
    const az = this.rng.range(0, 3599999);
    const alt = this.rng.range(300000, 850000);
    this.pointing(alt, az);
    const pa = this.rng.range(0, 359999);
    for (const f of ROTATOR) this.setUnits(f, pa);
    this.setStr('camera2.status', 'Acquiring');
    this.setBool('camera2.settled', false);
    this.setStr('sequencer1.block', `${name} field`);
    this.setUnits('sequencer1.exposures_remaining', this.rng.range(10, 40));
    this.setStr('sequencer1.message', `Slewing to ${name}`);
    for (let cam = 0; cam < 2; cam++) {
      this.cameras[cam].phase = 0;
      const c = cameraName(cam);
      this.setStr(`${c}.status`, 'Idle');
      this.setBool(`${c}.busy_lock`, false);
    }
    this.nextSlew = this.tick + 60 + this.rng.below(100);
  }

  camera(cam, dt) {
    const c = cameraName(cam);
    const expMs = cam === 0 ? 300000 : 60000;
    const st = this.cameras[cam];
    if (st.phase === 1) {
      st.elapsed += dt;
      if (st.elapsed >= expMs) {
        st.phase = 2;
        this.setStr(`${c}.status`, 'Reading out');
        this.setUnits(`${c}.exposure_progress_%`, 1000);
        this.setUnits(`${c}.time_remaining_s`, 0);
      } else {
        this.setUnits(`${c}.exposure_progress_%`, div(st.elapsed * 1000, expMs));
        this.setUnits(`${c}.time_remaining_s`, div(expMs - st.elapsed, 100));
      }
    } else if (st.phase === 2) {
      st.phase = 3;
      this.setStr(`${c}.status`, 'Downloading');
      this.setUnits(`${c}.downloads_pending`, 1);
    } else if (st.phase === 3) {
      this.imageDone(cam);
      this.startExposure(cam, expMs);
    } else {
      const slewing = this.leaves[this.ix('mount1.is_slewing')].val;
      if (!(slewing.t === 'b' && slewing.v === true)) this.startExposure(cam, expMs);
    }
    if (this.rng.below(2) === 0) {
      const set = this.units(`${c}.ccd_setpoint_C`) * 10;
      const sign = this.rng.sign();
      this.setUnits(`${c}.ccd_temperature_C`, set + sign * this.rng.range(0, 5));
    }
    this.walk(`${c}.cooler_power_%`, 1, 8, 300, 700);
  }

  imageDone(cam) {
    const c = cameraName(cam);
    const st = this.cameras[cam];
    st.seq += 1;
    const n = this.units(`${c}.exposure_number`) + 1;
    this.setUnits(`${c}.exposure_number`, n);
    const prefix = cam === 0 ? 'mrc1-sq005mm-20261127-' : 'mrc1-ec002cs-20261127-';
    const base = cam === 0 ? 21840 : 4417;
    this.setStr(`${c}.last_image_name`, prefix + String(base + st.seq).padStart(8, '0'));
    this.setUnits(`${c}.last_image_time_ms`, this.now);
    this.setUnits(`${c}.downloads_pending`, 0);
    this.walk(`${c}.last_fwhm_arcsec`, 1, 25, 140, 450);
    this.walk(`${c}.last_sky_level`, 1, 60, 2000, 9000);
    this.setUnits(`${c}.last_star_count`, this.rng.range(150, 320));
    if (cam === 0) {
      let left = this.units('sequencer1.exposures_remaining') - 1;
      if (left <= 0) left = this.rng.range(10, 40);
      this.setUnits('sequencer1.exposures_remaining', left);
      const block = this.leaves[this.ix('sequencer1.block')].val;
      this.setStr('sequencer1.message', `Exposing ${block.t === 's' ? block.v : ''} (image ${n})`);
      if (this.cameras[0].seq % 3 === 0) this.changeFilter();
    }
  }

  changeFilter() {
    const old = FILTERS[this.filter][2];
    this.filter = (this.filter + 1) % FILTERS.length;
    const [name, number, offset] = FILTERS[this.filter];
    this.setStr('filter_wheel1.filter_name', name);
    this.setUnits('filter_wheel1.filter_number', number);
    this.setUnits('filter_wheel1.filter_offset', offset);
    this.setUnits('filter_wheel1.last_move_ms', this.now);
    this.setUnits('filter_wheel1.moves_tonight', this.units('filter_wheel1.moves_tonight') + 1);
    this.setStr('camera1.filter_in_beam', name);
    this.setUnits('focuser1.filter_offset', offset);
    this.setUnits('focuser1.focus_position', this.units('focuser1.focus_position') + offset - old);
  }

  startExposure(cam, expMs) {
    const c = cameraName(cam);
    this.cameras[cam].phase = 1;
    this.cameras[cam].elapsed = 0;
    this.setStr(`${c}.status`, 'Exposing');
    this.setBool(`${c}.busy_lock`, true);
    this.setUnits(`${c}.exposure_time_s`, expMs);
    this.setUnits(`${c}.exposure_progress_%`, 0);
    this.setUnits(`${c}.time_remaining_s`, div(expMs, 100));
    this.setUnits(`${c}.exposures_in_sequence`, cam === 0 ? 35 : 120);
  }

  guider(dt) {
    this.walk('camera2.guide_star_x', 1, 30, 60000, 62500);
    this.walk('camera2.guide_star_y', 1, 30, 47500, 50000);
    this.walk('camera2.guide_star_snr', 1, 25, 300, 800);
    this.walk('camera2.guide_rms_ra_arcsec', 1, 6, 20, 90);
    this.walk('camera2.guide_rms_dec_arcsec', 1, 6, 20, 90);
    let sign = this.rng.sign();
    this.setUnits('camera2.guide_correction_ra_ms', sign * this.rng.range(0, 400));
    sign = this.rng.sign();
    this.setUnits('camera2.guide_correction_dec_ms', sign * this.rng.range(0, 400));
    this.setUnits('camera2.guide_frames', this.units('camera2.guide_frames') + div(dt, 2000));
  }

  focuser(f, every) {
    if (this.rng.below(every) !== 0) return;
    this.walk(`${f}.focus_temperature`, 1, 6, 200, 1200);
    const dT = this.units(`${f}.focus_temperature`) - this.units(`${f}.reference_temperature`);
    const comp = this.units(`${f}.comp`);
    const pos = this.units(`${f}.reference_position`) + this.units(`${f}.filter_offset`) + div(comp * dT, 10000);
    this.setUnits(`${f}.focus_position`, pos);
  }

  environment() {
    if (this.rng.below(5) === 0) this.walk('mount1.mount_temperature_C', 1, 4, 500, 1500);
    if (this.rng.below(6) === 0) {
      this.walk('telescope1.primary_temperature_C', 1, 3, 500, 1500);
      this.walk('telescope1.secondary_temperature_C', 1, 3, 500, 1500);
    }
    if (this.rng.below(4) === 0) this.walk('telescope1.ambient_temperature_C', 1, 5, 500, 1500);
    if (this.rng.below(5) === 0) this.walk('enclosure1.enclosure_temperature_C', 1, 4, 500, 1500);
    if (this.rng.below(6) === 0) this.walk('enclosure1.enclosure_humidity_%', 1, 5, 300, 700);
    if (this.rng.below(3) === 0) {
      for (let i = 0; i < 2; i++) this.weatherWalk('observing_conditions1', this.rng.below(WEATHER_WALKS.length));
    }
    this.walk('sequencer1.sun_altitude', 1, 3, -9000, -1800);
    this.walk('sequencer1.moon_altitude', 1, 3, -9000, 9000);
  }

  weatherWalk(dev, k) {
    const [field, lo, hi, min, max] = WEATHER_WALKS[k];
    const path = `${dev}.${field}`;
    if (field === 'last_sky_update_s') this.setUnits(path, this.rng.range(min, max));
    else this.walk(path, lo, hi, min, max);
  }

  // --- the weather stream ---

  tickWeather() {
    const dt = this.rng.range(5000, 15000);
    this.now += dt;
    this.tick += 1;
    const d = 'observing_conditions1';
    for (const k of [2, 3, 4, 6, 7]) this.weatherWalk(d, k);
    if (this.rng.below(2) === 0) this.weatherWalk(d, 1);
    if (this.rng.below(3) === 0) {
      this.weatherWalk(d, 0);
      this.walk(`${d}.dewpoint_C`, 1, 2, -100, 100);
    }
    if (this.rng.below(2) === 0) this.weatherWalk(d, 5);
    if (this.rng.below(10) === 0) this.walk(`${d}.pressure_mbar`, 1, 2, 8800, 9000);
    if (this.rng.below(2) === 0) this.walk(`${d}.seeing_arcsec`, 1, 10, 100, 400);
    if (this.rng.below(4) === 0) this.walk(`${d}.transparency_%`, 1, 20, 700, 1000);
    if (this.rng.below(8) === 0) this.walk(`${d}.cloud_cover_%`, 1, 30, 0, 300);
  }
}

const cameraName = (cam) => (cam === 0 ? 'camera1' : 'camera3');

/** FNV-1a (32 bits) over the texts' UTF-8 bytes, each followed by a newline (digests.txt). */
export function digest(texts) {
  let h = 0x811c9dc5;
  const enc = new TextEncoder();
  for (const t of texts) {
    for (const b of enc.encode(t + '\n')) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  }
  return h >>> 0;
}
