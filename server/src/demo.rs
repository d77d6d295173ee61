//! Demo publisher: plausible live streams for a few sites, so a fresh relay shows moving data at
//! once (`DATASTREAM_DEMO=true`). Shapes follow the real Photon Ranch messages: weather and
//! enclosure status with `{val, timestamp}` leaves, `phase_status`, `userstatus` (with a string
//! timestamp) and `jobs`. Publications go through the broker like any other.
//!
//! Every kind is published once at start, then on its own schedule ([`due`]). The enclosure
//! status changes rarely (every [`ENCLOSURE_EVERY`]), as a real enclosure's does: a page opened in
//! between has only the relay's latest publication of it to show (`latest` in the SDK). Both go
//! out as the real status service sends them, on the topic `sitestatus`, told apart by
//! `statusType` (`"weather"`, `"enclosure"`): the relay keeps the latest of each kind
//! (`DATASTREAM_LATEST_KEYS`, by default `sitestatus=statusType`), so the frequent weather does not
//! replace the enclosure's.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{auth::now_unix, publication::PublishRequest, state::AppState};

/// Sites the demo publishes for.
pub const SITES: &[&str] = &["mrc", "mrc2", "saf", "sro", "tst"];

/// How often weather is published per site: one tick of the schedule.
const WEATHER_EVERY: Duration = Duration::from_secs(2);

/// How often the enclosure status is published per site (besides once at start).
pub const ENCLOSURE_EVERY: Duration = Duration::from_secs(300);

/// What is published at tick `n` (every [`WEATHER_EVERY`]) besides the weather: everything at
/// start, then each kind on its own period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The enclosure status (every [`ENCLOSURE_EVERY`]).
    pub enclosure: bool,
    /// A `userstatus` message (every 3 ticks).
    pub user: bool,
    /// A `phase_status` message (every 8 ticks).
    pub phase: bool,
    /// A `jobs` message (every 10 ticks).
    pub job: bool,
}

/// The schedule at tick `n`.
pub fn due(n: u64) -> Due {
    let enclosure_ticks = ENCLOSURE_EVERY.as_secs() / WEATHER_EVERY.as_secs();
    let start = n == 0;
    Due {
        enclosure: n.is_multiple_of(enclosure_ticks),
        user: start || n % 3 == 1,
        phase: start || n % 8 == 2,
        job: start || n % 10 == 4,
    }
}

/// A slowly wandering value, so charts look like weather rather than noise.
#[derive(Debug, Clone)]
struct Walk {
    value: f64,
    min: f64,
    max: f64,
    step: f64,
}

impl Walk {
    fn next(&mut self) -> f64 {
        let delta = (rand::random::<f64>() - 0.5) * 2.0 * self.step;
        self.value = (self.value + delta).clamp(self.min, self.max);
        (self.value * 100.0).round() / 100.0
    }
}

#[derive(Debug)]
struct SiteState {
    site: &'static str,
    temperature: Walk,
    humidity: Walk,
    wind: Walk,
    sky: Walk,
    azimuth: Walk,
    exposure: u32,
}

fn leaf(val: impl Into<Value>, ms: u64) -> Value {
    json!({ "val": val.into(), "timestamp": ms })
}

impl SiteState {
    fn new(site: &'static str, seed: f64) -> Self {
        SiteState {
            site,
            temperature: Walk { value: 8.0 + seed * 6.0, min: -10.0, max: 35.0, step: 0.15 },
            humidity: Walk { value: 40.0 + seed * 20.0, min: 5.0, max: 100.0, step: 0.8 },
            wind: Walk { value: 3.0 + seed * 3.0, min: 0.0, max: 25.0, step: 0.6 },
            sky: Walk { value: -20.0 - seed * 5.0, min: -40.0, max: 0.0, step: 0.3 },
            azimuth: Walk { value: 180.0, min: 0.0, max: 359.9, step: 4.0 },
            exposure: 0,
        }
    }

    fn weather(&mut self, ms: u64) -> Value {
        let humidity = self.humidity.next();
        let wind = self.wind.next();
        let ok = if humidity < 85.0 && wind < 15.0 { "Yes" } else { "No" };
        json!({
            "site": self.site,
            "statusType": "weather",
            "status": { "observing_conditions": { "observing_conditions1": {
                "wx_ok": leaf(ok, ms),
                "temperature_C": leaf(self.temperature.next(), ms),
                "humidity_%": leaf(humidity, ms),
                "wind_m_s": leaf(wind, ms),
                "sky_temp_C": leaf(self.sky.next(), ms),
                "open_ok": leaf(ok, ms),
            }}},
            "server_timestamp_ms": ms,
        })
    }

    fn enclosure(&mut self, ms: u64) -> Value {
        let open = self.humidity.value < 85.0 && self.wind.value < 15.0;
        json!({
            "site": self.site,
            "statusType": "enclosure",
            "status": { "enclosure": { "enclosure1": {
                "shutter_status": leaf(if open { "Open" } else { "Closed" }, ms),
                "enclosure_mode": leaf("Automatic", ms),
                "dome_azimuth": leaf(self.azimuth.next(), ms),
            }}},
            "server_timestamp_ms": ms,
        })
    }

    fn phase(&self, ms: u64) -> Value {
        let phases = ["Waiting for sunset", "Taking sky flats", "Observing", "Focusing", "Parked for the day"];
        let phase = phases[(ms / 30_000) as usize % phases.len()];
        json!({ "site": self.site, "timestamp": ms as f64 / 1000.0, "message": phase })
    }

    fn user(&mut self, ms: u64) -> Value {
        self.exposure = self.exposure % 10 + 1;
        json!({
            "site": self.site,
            "message": format!("Exposure {} of 10 complete", self.exposure),
            "log_level": "info",
            "timestamp": (ms / 1000).to_string(),
        })
    }

    fn job(&self, ms: u64) -> Value {
        let ulid = format!("01DEMO{:020}", ms);
        json!({
            "site": self.site,
            "ulid": ulid,
            "statusId": format!("RECEIVED#{ulid}"),
            "user_name": "Demo Observer",
            "timestamp_ms": ms,
            "deviceType": "camera",
            "deviceInstance": "camera1",
            "action": "expose",
            "optional_params": { "filter": "Rp", "count": 10 },
            "required_params": { "time": 30, "image_type": "light" },
        })
    }
}

/// Adds a demo message to `batch`.
fn add(state: &AppState, batch: &mut Vec<PublishRequest>, site: &str, topic: &str, data: Value) {
    let text = json!({ "site": site, "topic": topic, "data": data }).to_string();
    match state.validator.parse(&text) {
        Ok(req) => batch.push(req),
        Err(e) => warn!(error = %e, "demo message invalid"),
    }
}

/// Publishes demo streams until `stop`.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    info!(sites = ?SITES, "demo publisher on");
    let mut sites: Vec<SiteState> =
        SITES.iter().enumerate().map(|(i, s)| SiteState::new(s, i as f64 / SITES.len() as f64)).collect();
    let mut tick = tokio::time::interval(WEATHER_EVERY);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ms = now_unix() * 1000 + u64::from(rand::random::<u16>() % 1000);
        let due = due(n);
        // A tick's messages are published as one batch, as a publish body would be.
        let mut batch = Vec::new();
        for s in &mut sites {
            let weather = s.weather(ms);
            add(&state, &mut batch, s.site, "sitestatus", weather);
            if due.enclosure {
                let enclosure = s.enclosure(ms);
                add(&state, &mut batch, s.site, "sitestatus", enclosure);
            }
            if due.user {
                let user = s.user(ms);
                add(&state, &mut batch, s.site, "userstatus", user);
            }
            if due.phase {
                add(&state, &mut batch, s.site, "phase_status", s.phase(ms));
            }
            if due.job {
                add(&state, &mut batch, s.site, "jobs", s.job(ms));
            }
        }
        if let Err(e) = state.broker.publish_all(&batch).await {
            warn!(error = %e, "demo publish failed");
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_messages_have_the_real_shapes() {
        let mut s = SiteState::new("mrc", 0.5);
        let w = s.weather(1_764_288_000_123);
        let leaf = &w["status"]["observing_conditions"]["observing_conditions1"]["temperature_C"];
        assert!(leaf["val"].is_f64() && leaf["timestamp"] == 1_764_288_000_123u64, "{w}");
        assert_eq!(w["statusType"], "weather");
        assert_eq!(s.enclosure(1)["statusType"], "enclosure");
        assert!(s.user(1_764_288_003_000)["timestamp"].is_string(), "userstatus timestamps are strings");
        assert!(s.phase(1_764_288_002_125)["timestamp"].is_f64(), "phase_status timestamps are float seconds");
        for _ in 0..10_000 {
            let t = s.temperature.next();
            assert!((-10.0..=35.0).contains(&t));
        }
    }

    #[test]
    fn everything_at_start_then_the_enclosure_rarely() {
        let all = Due { enclosure: true, user: true, phase: true, job: true };
        assert_eq!(due(0), all, "every kind once at start");
        let ticks = ENCLOSURE_EVERY.as_secs() / WEATHER_EVERY.as_secs();
        assert!(ENCLOSURE_EVERY >= Duration::from_secs(120), "rare: minutes apart");
        let enclosures: Vec<u64> = (0..3 * ticks).filter(|&n| due(n).enclosure).collect();
        assert_eq!(enclosures, vec![0, ticks, 2 * ticks]);
        // The others keep coming every few ticks.
        for n in 1..=10 {
            let d = due(n);
            assert_eq!((d.user, d.phase, d.job), (n % 3 == 1, n % 8 == 2, n % 10 == 4), "tick {n}");
        }
    }
}
