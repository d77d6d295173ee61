//! Values crossing the JavaScript boundary: the options object in; states and events out, as plain
//! objects shaped like the TypeScript types the package ships.

#[allow(unused_imports)]
use crate::prelude::*;

use core::time::Duration;

use js_sys::{Array, Reflect};
use wasm_bindgen::prelude::*;

use crate::client::{ClientError, Event};
use crate::config::{Config, Protocol};
use crate::state::State;

/// Reads the options object the npm wrapper hands over: `{ url, sites?, protocol?,
/// minReconnectDelay?, maxReconnectDelay?, heartbeatGrace?, connectTimeout?, token?, getToken? }`
/// (delays in milliseconds). The wrapper has checked at once what it can (an object, `url` a
/// string, `sites` valid names, no unknown option: `npm/src/index.js`); checked here is what it
/// leaves to the client — the protocol, the delays, the URL's scheme ([`Config::validate`]) —
/// which the client ends with.
pub(crate) fn config(options: &JsValue) -> Result<Config, JsValue> {
    let mut config = Config::new(get(options, "url").as_string().unwrap_or_default());
    let sites = get(options, "sites");
    if Array::is_array(&sites) {
        for site in Array::from(&sites).iter() {
            config.sites.extend(site.as_string());
        }
    }
    match get(options, "protocol").as_string().as_deref() {
        None | Some("v2") => {}
        Some("legacy") => config.protocol = Protocol::Legacy,
        Some(_) => return Err(type_error("options.protocol must be 'v2' or 'legacy'")),
    }
    for (name, slot) in [
        ("minReconnectDelay", &mut config.backoff.min),
        ("maxReconnectDelay", &mut config.backoff.max),
        ("heartbeatGrace", &mut config.heartbeat_grace),
        ("connectTimeout", &mut config.connect_timeout),
    ] {
        let v = get(options, name);
        if v.is_undefined() {
            continue;
        }
        match v.as_f64() {
            Some(ms) if ms.is_finite() && ms >= 0.0 => *slot = Duration::from_millis(ms as u64),
            _ => {
                let mut msg = String::from("options.");
                msg.push_str(name);
                msg.push_str(" must be a number of milliseconds");
                return Err(type_error(&msg));
            }
        }
    }
    config.token = get(options, "token").as_string();
    config.fetch_tokens = get(options, "getToken").is_function();
    config.delta = get(options, "delta").as_bool() != Some(false);
    config.validate().map_err(|e| js_sys::Error::new(&e.message()))?;
    Ok(config)
}

#[wasm_bindgen(module = "/src/web/browser.js")]
extern "C" {
    /// `{k1: a, k2: b, …}` for the space-separated `keys`, in that order, without the keys whose
    /// value is `undefined` (browser.js): a state's or an event's object built in one call
    /// instead of a call and a key string per field.
    fn shape(keys: &str, a: JsValue, b: JsValue, c: JsValue, d: JsValue, e: JsValue) -> JsValue;
}

const NONE: JsValue = JsValue::UNDEFINED;

/// `{type: 'connecting'}`, `{type: 'reconnecting', attempt, delay, reason}`, `{type: 'closed', code,
/// reason}`…
pub(crate) fn state(state: &State) -> JsValue {
    let name = state.name().into();
    match state {
        State::Reconnecting { attempt, delay_ms, reason } => {
            shape("type attempt delay reason", name, (*attempt).into(), (*delay_ms).into(), (*reason).into(), NONE)
        }
        State::Closed { code, reason } => {
            shape("type code reason", name, (*code).into(), reason.as_str().into(), NONE, NONE)
        }
        State::Idle | State::Connecting | State::Connected => shape("type", name, NONE, NONE, NONE, NONE),
    }
}

/// The argument of an event hook.
pub(crate) fn event(event: Event<JsValue>) -> JsValue {
    match event {
        Event::State(s) => state(&s),
        Event::Ready => JsValue::UNDEFINED,
        Event::Subscribed { site, position, replayed, recovered } => {
            let (epoch, offset) = position.map_or((NONE, NONE), |p| (p.epoch.into(), (p.offset as f64).into()));
            let recovered = recovered.map_or(NONE, JsValue::from);
            shape("site epoch offset replayed recovered", site.into(), epoch, offset, replayed.into(), recovered)
        }
        Event::TokenNeeded { code, reason } => shape("code reason", code.into(), reason.into(), NONE, NONE, NONE),
        Event::RecoveryFailed(f) => shape("site reason", f.site.into(), f.reason.into(), NONE, NONE, NONE),
        Event::Error(e) => {
            let message = e.message().into();
            match e {
                ClientError::Callback { site, topic, error } => {
                    shape("message kind site topic error", message, "callback".into(), site.into(), topic.into(), error)
                }
                ClientError::Hook { error } => {
                    shape("message kind error", message, "listener".into(), error, NONE, NONE)
                }
                ClientError::Server { code, site, .. } => {
                    let site = site.map_or(NONE, JsValue::from);
                    shape("message kind code site", message, "server".into(), code.into(), site, NONE)
                }
                ClientError::Frame(_) => shape("message kind", message, "frame".into(), NONE, NONE, NONE),
            }
        }
    }
}

pub(crate) fn type_error(message: &str) -> JsValue {
    js_sys::TypeError::new(message).into()
}

fn get(o: &JsValue, key: &str) -> JsValue {
    Reflect::get(o, &key.into()).unwrap_or(JsValue::UNDEFINED)
}
