//! Deterministic streams of Photon Ranch-shaped `sitestatus` publications, for the relay's tests,
//! the delta benchmark and (through `statusgen.mjs`, its JavaScript twin) the SDK's browser tests.
//!
//! Two streams, each a sequence of `data` texts as the status service publishes them
//! (`{"site", "statusType", "status": {<kind>: {<device>: {<field>: {"val", "timestamp"}}}},
//! "server_timestamp_ms"}`, laid out as Python's `json.dumps` writes it):
//!
//! - [`Kind::Device`]: the full device status of an observatory at night (mount, telescope, three
//!   cameras, filter wheel, two focusers, rotator, selector, screen, sequencer, enclosure,
//!   observing conditions: 292 leaves, about 18 KB), every 3–7 s. The mount tracks a target and
//!   slews to another now and then, the cameras expose and read out, the guider corrects, focusers
//!   follow the temperature: each publication changes about 34 leaves (95th percentile 42, a slew
//!   about 50): an active night, the harder case for a delta.
//! - [`Kind::Weather`]: the weather station's status (22 leaves, about 1.4 KB) every 5–15 s, about
//!   8 readings changing each time.
//!
//! A leaf's `timestamp` moves only when its value changes; [`StatusStream::restamp_all`] makes
//! every leaf's timestamp move on every publication instead (whether the real status service does
//! that is not known here), the worst case for any difference-based encoding.
//!
//! The devices and fields are data (`schema.json`, shared with the JavaScript twin); what changes
//! between publications is code, written the same way in both languages. Both draw from the same
//! 32-bit generator (mulberry32) in the same order and format numbers with integer arithmetic
//! only, so the same seed gives byte-identical streams: `digests.txt` holds a digest of the first
//! publications of both streams, which the tests of both implementations check.
//!
//! # Use
//!
//! From a crate's tests (the relay's: `datastream-statusgen = { path = "../statusgen" }` under
//! `[dev-dependencies]`) or the benchmarks:
//!
//! ```
//! use datastream_statusgen::StatusStream;
//!
//! let mut device = StatusStream::device("mrc", 1);
//! let data = device.next_data(); // the initial state, then a few seconds later each time
//! let body = StatusStream::publication("mrc", &data); // {"site", "topic", "data"} for POST /publish
//! assert!(body.len() > 18_000);
//! let next: Vec<String> = device.take(10).collect(); // or as an iterator
//! assert_eq!(next.len(), 10);
//! ```
//!
//! From JavaScript (Node; in a page through a bundler, or hand it texts made in Node):
//! `import { StatusStream } from '<root>/statusgen/statusgen.mjs'`, the same API in camel case
//! (`StatusStream.device(site, seed).nextData()`, `.take(n)`, `StatusStream.publication(site,
//! data)`); its tests run with `node --test statusgen/`.

use std::collections::HashMap;
use std::fmt::Write as _;

const SCHEMA: &str = include_str!("../schema.json");

/// The topic every status publication is published under.
pub const TOPIC: &str = "sitestatus";

/// Which status stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `statusType: "device"`: the full device status.
    Device,
    /// `statusType: "weather"`: the weather station's status.
    Weather,
}

impl Kind {
    /// The `statusType` value.
    pub fn status_type(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::Weather => "weather",
        }
    }
}

/// mulberry32: small, fast, and easy to reproduce exactly in JavaScript (`Math.imul`).
#[derive(Debug, Clone)]
struct Rng(u32);

impl Rng {
    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_add(0x6D2B_79F5);
        let mut t = self.0;
        t = (t ^ (t >> 15)).wrapping_mul(t | 1);
        t ^= t.wrapping_add((t ^ (t >> 7)).wrapping_mul(t | 61));
        t ^ (t >> 14)
    }
    /// `0..n`.
    fn below(&mut self, n: u32) -> i64 {
        i64::from(self.next_u32() % n)
    }
    /// `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below(u32::try_from(hi - lo + 1).unwrap_or(1))
    }
    fn sign(&mut self) -> i64 {
        if self.below(2) == 0 { -1 } else { 1 }
    }
}

/// A leaf's value. Numbers with decimals are kept as integers of their last decimal, so that
/// both implementations compute and print them exactly alike.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Bool(bool),
    Null,
    Int(i64),
    List(Vec<String>),
    /// `units / 10^decimals`.
    Fixed(i64, u32),
}

#[derive(Debug, Clone)]
struct Leaf {
    name: String,
    val: Val,
    timestamp: i64,
}

/// A device: its name and its leaves' indices, in order.
type Device = (String, Vec<usize>);

/// One camera's exposure cycle.
#[derive(Debug, Clone, Default)]
struct Exposure {
    /// 0 idle, 1 exposing, 2 reading out, 3 downloading.
    phase: u8,
    elapsed_ms: i64,
    image_seq: i64,
}

/// Targets the mount slews between: name, RA (hours × 10⁵), Dec (degrees × 10⁴).
const TARGETS: &[(&str, i64, i64)] = &[
    ("M 31", 1_068_432, 412_692),
    ("M 51", 1_349_798, 471_953),
    ("NGC 7000", 2_098_200, 442_000),
    ("M 42", 558_806, -53_911),
    ("M 13", 1_669_472, 364_611),
    ("NGC 891", 237_183, 423_492),
    ("M 101", 1_405_210, 543_489),
    ("SN 2026abc", 1_122_945, 131_177),
];

/// The science filters camera1 cycles through, with their focus offsets (steps × 10).
const FILTERS: &[(&str, i64, i64)] = &[("rp", 6, -120), ("gp", 4, 85), ("ip", 7, -210), ("Lum", 2, 0)];

/// A stream of status publications. See the crate documentation.
#[derive(Debug, Clone)]
pub struct StatusStream {
    kind: Kind,
    site: String,
    rng: Rng,
    leaves: Vec<Leaf>,
    /// `device.field` → index in `leaves`.
    index: HashMap<String, usize>,
    /// Kinds in order, each with its devices in order.
    layout: Vec<(String, Vec<Device>)>,
    now: i64,
    server_ts: i64,
    tick: u64,
    next_slew: u64,
    cameras: [Exposure; 2],
    filter: usize,
    restamp_all: bool,
    changed: usize,
    /// Whether the initial state was returned (every later call moves on first).
    started: bool,
}

/// Python's `json.dumps` of a string (`ensure_ascii`): `"`, `\` and control characters escaped,
/// anything past ASCII as `\u` and four hex digits per UTF-16 unit.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What Python prints for `round(units / 10^decimals, decimals)`: no trailing zeros, but at least
/// one decimal.
fn push_fixed(out: &mut String, units: i64, decimals: u32) {
    let scale = 10i64.pow(decimals);
    let a = units.unsigned_abs();
    let (int, frac) = (a / scale.unsigned_abs(), a % scale.unsigned_abs());
    let mut digits = format!("{frac:0width$}", width = decimals as usize);
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    if units < 0 {
        out.push('-');
    }
    let _ = write!(out, "{int}.{digits}");
}

fn push_val(out: &mut String, v: &Val) {
    match v {
        Val::Str(s) => push_str(out, s),
        Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Val::Null => out.push_str("null"),
        Val::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Val::List(items) => {
            out.push('[');
            for (i, s) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                push_str(out, s);
            }
            out.push(']');
        }
        Val::Fixed(u, d) => push_fixed(out, *u, *d),
    }
}

/// `"12.345"` with `decimals` 4 → 123450.
fn parse_fixed(s: &str, decimals: u32) -> i64 {
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut digits = String::from(int);
    for i in 0..decimals as usize {
        digits.push(frac.as_bytes().get(i).map_or('0', |&b| b as char));
    }
    let v: i64 = digits.parse().unwrap_or(0);
    if neg { -v } else { v }
}

fn parse_val(ty: &str, init: &serde_json::Value) -> Val {
    match ty {
        "s" => Val::Str(init.as_str().unwrap_or_default().to_owned()),
        "b" => Val::Bool(init.as_bool().unwrap_or_default()),
        "n" => Val::Null,
        "i" => Val::Int(init.as_i64().unwrap_or_default()),
        "l" => Val::List(
            init.as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
        ),
        _ => {
            let decimals = ty.get(1..).and_then(|d| d.parse().ok()).unwrap_or(0);
            Val::Fixed(parse_fixed(init.as_str().unwrap_or("0"), decimals), decimals)
        }
    }
}

/// The first timestamp of every stream: 2026-11-28T00:00:00.123Z.
const T0: i64 = 1_764_288_000_123;

impl StatusStream {
    /// A stream of `kind` status for `site`; the same seed always gives the same stream.
    pub fn new(kind: Kind, site: &str, seed: u32) -> Self {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("schema.json is valid JSON");
        let mut leaves = Vec::new();
        let mut index = HashMap::new();
        let mut layout = Vec::new();
        let empty = Vec::new();
        for kind_entry in schema[kind.status_type()].as_array().unwrap_or(&empty) {
            let mut devices = Vec::new();
            for dev in kind_entry[1].as_array().unwrap_or(&empty) {
                let dev_name = dev[0].as_str().unwrap_or_default().to_owned();
                let mut ids = Vec::new();
                for f in dev[1].as_array().unwrap_or(&empty) {
                    let name = f[0].as_str().unwrap_or_default().to_owned();
                    index.insert(format!("{dev_name}.{name}"), leaves.len());
                    ids.push(leaves.len());
                    leaves.push(Leaf { val: parse_val(f[1].as_str().unwrap_or("s"), &f[2]), name, timestamp: T0 });
                }
                devices.push((dev_name, ids));
            }
            layout.push((kind_entry[0].as_str().unwrap_or_default().to_owned(), devices));
        }
        let mut rng = Rng(seed);
        let next_slew = 40 + rng.below(80) as u64;
        StatusStream {
            kind,
            site: site.to_owned(),
            rng,
            leaves,
            index,
            layout,
            now: T0,
            server_ts: T0 + 333,
            tick: 0,
            next_slew,
            cameras: Default::default(),
            filter: 0,
            restamp_all: false,
            changed: 0,
            started: false,
        }
    }

    /// The device status stream.
    pub fn device(site: &str, seed: u32) -> Self {
        Self::new(Kind::Device, site, seed)
    }

    /// The weather status stream.
    pub fn weather(site: &str, seed: u32) -> Self {
        Self::new(Kind::Weather, site, seed)
    }

    /// Every leaf's timestamp moves on every publication, changed or not (the worst case for a
    /// difference: a status service that stamps each reading with the time it was read).
    #[must_use]
    pub fn restamp_all(mut self, on: bool) -> Self {
        self.restamp_all = on;
        self
    }

    /// How many `{val, timestamp}` leaves each publication holds.
    pub fn leaves(&self) -> usize {
        self.leaves.len()
    }

    /// How many leaves the last [`next_data`](Self::next_data) changed (0 for the first).
    pub fn changed(&self) -> usize {
        self.changed
    }

    /// The next publication's `data` text. The first is the initial state; each later one is a
    /// few seconds later.
    pub fn next_data(&mut self) -> String {
        self.changed = 0;
        if self.started {
            match self.kind {
                Kind::Device => self.tick_device(),
                Kind::Weather => self.tick_weather(),
            }
            if self.restamp_all {
                for leaf in &mut self.leaves {
                    leaf.timestamp = self.now;
                }
            }
            self.server_ts = self.now + self.rng.range(80, 600);
        }
        self.started = true;
        self.render()
    }

    /// `{"site": …, "topic": "sitestatus", "data": …}`: what the status service sends to the
    /// relay (the body of an SQS message or of `POST /publish`).
    pub fn publication(site: &str, data: &str) -> String {
        let mut out = String::with_capacity(data.len() + 64);
        out.push_str("{\"site\": ");
        push_str(&mut out, site);
        out.push_str(", \"topic\": \"sitestatus\", \"data\": ");
        out.push_str(data);
        out.push('}');
        out
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(32 * 1024);
        out.push_str("{\"site\": ");
        push_str(&mut out, &self.site);
        out.push_str(", \"statusType\": ");
        push_str(&mut out, self.kind.status_type());
        out.push_str(", \"status\": {");
        for (k, (kind, devices)) in self.layout.iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            push_str(&mut out, kind);
            out.push_str(": {");
            for (d, (dev, ids)) in devices.iter().enumerate() {
                if d > 0 {
                    out.push_str(", ");
                }
                push_str(&mut out, dev);
                out.push_str(": {");
                for (f, &i) in ids.iter().enumerate() {
                    let leaf = &self.leaves[i];
                    if f > 0 {
                        out.push_str(", ");
                    }
                    push_str(&mut out, &leaf.name);
                    out.push_str(": {\"val\": ");
                    push_val(&mut out, &leaf.val);
                    let _ = write!(out, ", \"timestamp\": {}}}", leaf.timestamp);
                }
                out.push('}');
            }
            out.push('}');
        }
        let _ = write!(out, "}}, \"server_timestamp_ms\": {}}}", self.server_ts);
        out
    }

    // --- leaf access -------------------------------------------------------------------------

    fn ix(&self, path: &str) -> usize {
        *self.index.get(path).unwrap_or_else(|| panic!("no leaf {path} in schema.json"))
    }

    fn set(&mut self, path: &str, val: Val) {
        let i = self.ix(path);
        let now = self.now;
        let leaf = &mut self.leaves[i];
        if leaf.val != val {
            leaf.val = val;
            leaf.timestamp = now;
            self.changed += 1;
        }
    }

    fn units(&self, path: &str) -> i64 {
        match self.leaves[self.ix(path)].val {
            Val::Fixed(u, _) | Val::Int(u) => u,
            _ => 0,
        }
    }

    /// Sets a number leaf, keeping its kind (integer or decimals).
    fn set_units(&mut self, path: &str, units: i64) {
        let val = match self.leaves[self.ix(path)].val {
            Val::Fixed(_, d) => Val::Fixed(units, d),
            _ => Val::Int(units),
        };
        self.set(path, val);
    }

    fn set_str(&mut self, path: &str, s: &str) {
        self.set(path, Val::Str(s.to_owned()));
    }

    fn set_bool(&mut self, path: &str, b: bool) {
        self.set(path, Val::Bool(b));
    }

    /// A random step of `lo..=hi` units up or down, kept within `min..=max`.
    fn walk(&mut self, path: &str, lo: i64, hi: i64, min: i64, max: i64) {
        let sign = self.rng.sign();
        let step = self.rng.range(lo, hi);
        let v = (self.units(path) + sign * step).clamp(min, max);
        self.set_units(path, v);
    }

    // --- the device stream -------------------------------------------------------------------

    fn tick_device(&mut self) {
        let dt = self.rng.range(3000, 7000);
        self.now += dt;
        self.tick += 1;
        if self.tick >= self.next_slew {
            self.slew(dt);
        } else {
            self.track(dt);
        }
        for cam in 0..2 {
            self.camera(cam, dt);
        }
        self.guider(dt);
        self.focuser("focuser1", 3);
        self.focuser("focuser2", 4);
        self.environment();
    }

    /// Sidereal time and hour angle after `dt`.
    fn sky_clock(&mut self, dt: i64) {
        let st = (self.units("mount1.sidereal_time") + dt * 100_274 / 3_600_000).rem_euclid(2_400_000);
        self.set_units("mount1.sidereal_time", st);
        let ha = (st - self.units("mount1.right_ascension") + 1_200_000).rem_euclid(2_400_000) - 1_200_000;
        self.set_units("mount1.hour_angle", ha);
    }

    /// Altitude-derived leaves of the mount, and the telescope's copy of the pointing.
    fn pointing(&mut self, alt: i64, az: i64) {
        self.set_units("mount1.altitude", alt);
        self.set_units("mount1.azimuth", az);
        let z = 900_000 - alt;
        self.set_units("mount1.zenith_distance", z);
        self.set_units("mount1.airmass", 10_000 + z * z / 56_000_000);
        for f in
            ["right_ascension", "declination", "azimuth", "altitude", "airmass", "zenith_distance", "sidereal_time"]
        {
            let v = self.units(&format!("mount1.{f}"));
            self.set_units(&format!("telescope1.{f}"), v);
        }
        let dome_target = az / 100 / 50 * 50;
        if (self.units("enclosure1.dome_azimuth") - dome_target).abs() >= 150 {
            self.set_units("enclosure1.dome_azimuth", dome_target);
        }
    }

    fn track(&mut self, dt: i64) {
        self.set_bool("mount1.is_slewing", false);
        self.set_bool("mount1.is_tracking", true);
        self.set_str("mount1.message", "-");
        self.set_str("camera2.status", "Guiding");
        self.set_bool("camera2.settled", true);
        self.sky_clock(dt);
        let ha = self.units("mount1.hour_angle");
        let az = (self.units("mount1.azimuth") + self.rng.range(150, 450)).rem_euclid(3_600_000);
        let dir = if ha < 0 { 1 } else { -1 };
        let alt = (self.units("mount1.altitude") + dir * self.rng.range(100, 400)).clamp(150_000, 899_000);
        self.pointing(alt, az);
        if self.rng.below(4) == 0 {
            self.walk("mount1.refraction", 1, 20, 100, 9000);
        }
        let flip = (self.units("mount1.meridian_flip_in_min") - dt / 6000).max(0);
        self.set_units("mount1.meridian_flip_in_min", flip);
        let pa = (self.units("rotator1.position_angle") + self.rng.sign() * self.rng.range(3, 40)).rem_euclid(360_000);
        for f in ["rotator1.position_angle", "rotator1.mechanical_position", "rotator1.target_position"] {
            self.set_units(f, pa);
        }
    }

    fn slew(&mut self, dt: i64) {
        let t = self.rng.below(TARGETS.len() as u32) as usize;
        let (name, ra, dec) = TARGETS[t];
        self.set_str("mount1.target_name", name);
        self.set_units("mount1.target_ra", ra);
        self.set_units("mount1.target_dec", dec);
        self.set_units("mount1.right_ascension", ra);
        self.set_units("mount1.declination", dec);
        self.set_bool("mount1.is_slewing", true);
        self.set_bool("mount1.is_tracking", false);
        self.set_units("mount1.last_slew_ms", self.now);
        self.set_str("mount1.message", &format!("Slewing to {name}"));
        let flip = self.rng.range(100, 3000);
        self.set_units("mount1.meridian_flip_in_min", flip);
        self.sky_clock(dt);
        let az = self.rng.range(0, 3_599_999);
        let alt = self.rng.range(300_000, 850_000);
        self.pointing(alt, az);
        let pa = self.rng.range(0, 359_999);
        for f in ["rotator1.position_angle", "rotator1.mechanical_position", "rotator1.target_position"] {
            self.set_units(f, pa);
        }
        self.set_str("camera2.status", "Acquiring");
        self.set_bool("camera2.settled", false);
        self.set_str("sequencer1.block", &format!("{name} field"));
        let remaining = self.rng.range(10, 40);
        self.set_units("sequencer1.exposures_remaining", remaining);
        self.set_str("sequencer1.message", &format!("Slewing to {name}"));
        for cam in 0..2 {
            self.cameras[cam].phase = 0;
            let c = Self::camera_name(cam);
            self.set_str(&format!("{c}.status"), "Idle");
            self.set_bool(&format!("{c}.busy_lock"), false);
        }
        self.next_slew = self.tick + 60 + self.rng.below(100) as u64;
    }

    fn camera_name(cam: usize) -> &'static str {
        if cam == 0 { "camera1" } else { "camera3" }
    }

    fn camera(&mut self, cam: usize, dt: i64) {
        let c = Self::camera_name(cam);
        let exp_ms = if cam == 0 { 300_000 } else { 60_000 };
        match self.cameras[cam].phase {
            1 => {
                self.cameras[cam].elapsed_ms += dt;
                let elapsed = self.cameras[cam].elapsed_ms;
                if elapsed >= exp_ms {
                    self.cameras[cam].phase = 2;
                    self.set_str(&format!("{c}.status"), "Reading out");
                    self.set_units(&format!("{c}.exposure_progress_%"), 1000);
                    self.set_units(&format!("{c}.time_remaining_s"), 0);
                } else {
                    self.set_units(&format!("{c}.exposure_progress_%"), elapsed * 1000 / exp_ms);
                    self.set_units(&format!("{c}.time_remaining_s"), (exp_ms - elapsed) / 100);
                }
            }
            2 => {
                self.cameras[cam].phase = 3;
                self.set_str(&format!("{c}.status"), "Downloading");
                self.set_units(&format!("{c}.downloads_pending"), 1);
            }
            3 => {
                self.image_done(cam);
                self.start_exposure(cam, exp_ms);
            }
            _ => {
                if !matches!(self.leaves[self.ix("mount1.is_slewing")].val, Val::Bool(true)) {
                    self.start_exposure(cam, exp_ms);
                }
            }
        }
        if self.rng.below(2) == 0 {
            let set = self.units(&format!("{c}.ccd_setpoint_C")) * 10;
            let v = set + self.rng.sign() * self.rng.range(0, 5);
            self.set_units(&format!("{c}.ccd_temperature_C"), v);
        }
        self.walk(&format!("{c}.cooler_power_%"), 1, 8, 300, 700);
    }

    fn image_done(&mut self, cam: usize) {
        let c = Self::camera_name(cam);
        self.cameras[cam].image_seq += 1;
        let n = self.units(&format!("{c}.exposure_number")) + 1;
        self.set_units(&format!("{c}.exposure_number"), n);
        let prefix = if cam == 0 { "mrc1-sq005mm-20261127-" } else { "mrc1-ec002cs-20261127-" };
        let base = if cam == 0 { 21_840 } else { 4417 };
        let name = format!("{prefix}{:08}", base + self.cameras[cam].image_seq);
        self.set_str(&format!("{c}.last_image_name"), &name);
        self.set_units(&format!("{c}.last_image_time_ms"), self.now);
        self.set_units(&format!("{c}.downloads_pending"), 0);
        self.walk(&format!("{c}.last_fwhm_arcsec"), 1, 25, 140, 450);
        self.walk(&format!("{c}.last_sky_level"), 1, 60, 2000, 9000);
        let stars = self.rng.range(150, 320);
        self.set_units(&format!("{c}.last_star_count"), stars);
        if cam == 0 {
            let left = self.units("sequencer1.exposures_remaining") - 1;
            let left = if left <= 0 { self.rng.range(10, 40) } else { left };
            self.set_units("sequencer1.exposures_remaining", left);
            let block = match &self.leaves[self.ix("sequencer1.block")].val {
                Val::Str(s) => s.clone(),
                _ => String::new(),
            };
            self.set_str("sequencer1.message", &format!("Exposing {block} (image {n})"));
            if self.cameras[0].image_seq % 3 == 0 {
                self.change_filter();
            }
        }
    }

    fn change_filter(&mut self) {
        let old = FILTERS[self.filter].2;
        self.filter = (self.filter + 1) % FILTERS.len();
        let (name, number, offset) = FILTERS[self.filter];
        self.set_str("filter_wheel1.filter_name", name);
        self.set_units("filter_wheel1.filter_number", number);
        self.set_units("filter_wheel1.filter_offset", offset);
        self.set_units("filter_wheel1.last_move_ms", self.now);
        let moves = self.units("filter_wheel1.moves_tonight") + 1;
        self.set_units("filter_wheel1.moves_tonight", moves);
        self.set_str("camera1.filter_in_beam", name);
        self.set_units("focuser1.filter_offset", offset);
        let pos = self.units("focuser1.focus_position") + offset - old;
        self.set_units("focuser1.focus_position", pos);
    }

    fn start_exposure(&mut self, cam: usize, exp_ms: i64) {
        let c = Self::camera_name(cam);
        self.cameras[cam].phase = 1;
        self.cameras[cam].elapsed_ms = 0;
        self.set_str(&format!("{c}.status"), "Exposing");
        self.set_bool(&format!("{c}.busy_lock"), true);
        self.set_units(&format!("{c}.exposure_time_s"), exp_ms);
        self.set_units(&format!("{c}.exposure_progress_%"), 0);
        self.set_units(&format!("{c}.time_remaining_s"), exp_ms / 100);
        self.set_units(&format!("{c}.exposures_in_sequence"), if cam == 0 { 35 } else { 120 });
    }

    fn guider(&mut self, dt: i64) {
        self.walk("camera2.guide_star_x", 1, 30, 60_000, 62_500);
        self.walk("camera2.guide_star_y", 1, 30, 47_500, 50_000);
        self.walk("camera2.guide_star_snr", 1, 25, 300, 800);
        self.walk("camera2.guide_rms_ra_arcsec", 1, 6, 20, 90);
        self.walk("camera2.guide_rms_dec_arcsec", 1, 6, 20, 90);
        let ra = self.rng.sign() * self.rng.range(0, 400);
        self.set_units("camera2.guide_correction_ra_ms", ra);
        let dec = self.rng.sign() * self.rng.range(0, 400);
        self.set_units("camera2.guide_correction_dec_ms", dec);
        let frames = self.units("camera2.guide_frames") + dt / 2000;
        self.set_units("camera2.guide_frames", frames);
    }

    /// Temperature drifts every `every` publications on average; with compensation on, the
    /// position follows it.
    fn focuser(&mut self, f: &str, every: u32) {
        if self.rng.below(every) != 0 {
            return;
        }
        self.walk(&format!("{f}.focus_temperature"), 1, 6, 200, 1200);
        let d_t = self.units(&format!("{f}.focus_temperature")) - self.units(&format!("{f}.reference_temperature"));
        let comp = self.units(&format!("{f}.comp"));
        let pos = self.units(&format!("{f}.reference_position"))
            + self.units(&format!("{f}.filter_offset"))
            + comp * d_t / 10_000;
        self.set_units(&format!("{f}.focus_position"), pos);
    }

    fn environment(&mut self) {
        if self.rng.below(5) == 0 {
            self.walk("mount1.mount_temperature_C", 1, 4, 500, 1500);
        }
        if self.rng.below(6) == 0 {
            self.walk("telescope1.primary_temperature_C", 1, 3, 500, 1500);
            self.walk("telescope1.secondary_temperature_C", 1, 3, 500, 1500);
        }
        if self.rng.below(4) == 0 {
            self.walk("telescope1.ambient_temperature_C", 1, 5, 500, 1500);
        }
        if self.rng.below(5) == 0 {
            self.walk("enclosure1.enclosure_temperature_C", 1, 4, 500, 1500);
        }
        if self.rng.below(6) == 0 {
            self.walk("enclosure1.enclosure_humidity_%", 1, 5, 300, 700);
        }
        if self.rng.below(3) == 0 {
            for _ in 0..2 {
                let k = self.rng.below(WEATHER_WALKS.len() as u32) as usize;
                self.weather_walk("observing_conditions1", k);
            }
        }
        self.walk("sequencer1.sun_altitude", 1, 3, -9000, -1800);
        self.walk("sequencer1.moon_altitude", 1, 3, -9000, 9000);
    }

    fn weather_walk(&mut self, dev: &str, k: usize) {
        let (field, lo, hi, min, max) = WEATHER_WALKS[k];
        let path = format!("{dev}.{field}");
        if field == "last_sky_update_s" {
            let v = self.rng.range(min, max);
            self.set_units(&path, v);
        } else {
            self.walk(&path, lo, hi, min, max);
        }
    }

    // --- the weather stream ------------------------------------------------------------------

    fn tick_weather(&mut self) {
        let dt = self.rng.range(5000, 15_000);
        self.now += dt;
        self.tick += 1;
        let d = "observing_conditions1";
        // Wind, sky brightness and the sky sensor's age change every time.
        for k in [2, 3, 4, 6, 7] {
            self.weather_walk(d, k);
        }
        if self.rng.below(2) == 0 {
            self.weather_walk(d, 1);
        }
        if self.rng.below(3) == 0 {
            self.weather_walk(d, 0);
            self.walk(&format!("{d}.dewpoint_C"), 1, 2, -100, 100);
        }
        if self.rng.below(2) == 0 {
            self.weather_walk(d, 5);
        }
        if self.rng.below(10) == 0 {
            self.walk(&format!("{d}.pressure_mbar"), 1, 2, 8800, 9000);
        }
        if self.rng.below(2) == 0 {
            self.walk(&format!("{d}.seeing_arcsec"), 1, 10, 100, 400);
        }
        if self.rng.below(4) == 0 {
            self.walk(&format!("{d}.transparency_%"), 1, 20, 700, 1000);
        }
        if self.rng.below(8) == 0 {
            self.walk(&format!("{d}.cloud_cover_%"), 1, 30, 0, 300);
        }
    }
}

/// Weather readings that drift: field, step (least, most) and bounds, in units of the field's
/// last decimal.
const WEATHER_WALKS: &[(&str, i64, i64, i64, i64)] = &[
    ("temperature_C", 1, 2, 0, 200),
    ("humidity_%", 1, 5, 200, 800),
    ("wind_m_s", 1, 6, 0, 150),
    ("wind_gust_m_s", 1, 8, 0, 250),
    ("wind_direction_deg", 1, 15, 0, 359),
    ("sky_temp_C", 1, 4, -400, -200),
    ("meas_sky_mpsas", 1, 5, 1900, 2150),
    ("last_sky_update_s", 0, 0, 100, 900),
];

impl Iterator for StatusStream {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        Some(self.next_data())
    }
}

/// FNV-1a (32 bits) over the texts, each followed by `\n`: the digest `digests.txt` records.
pub fn digest<'a>(texts: impl IntoIterator<Item = &'a str>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for t in texts {
        for &b in t.as_bytes().iter().chain(b"\n") {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

#[cfg(test)]
mod tests;
