//! Values crossing the JavaScript boundary: the options object in; states and events out, as plain
//! objects shaped like the TypeScript types the package ships.

use std::time::Duration;

use js_sys::{Array, Object, Reflect};
use wasm_bindgen::prelude::*;

use crate::client::{ClientError, Event};
use crate::config::{Config, Protocol};
use crate::state::State;

/// Reads the options object: `{ url, sites?, protocol?, minReconnectDelay?, maxReconnectDelay?,
/// heartbeatGrace?, connectTimeout? }` (delays in milliseconds).
pub(crate) fn config(options: &JsValue) -> Result<Config, JsValue> {
    if !options.is_object() {
        return Err(type_error("options must be an object with a url"));
    }
    let url = get(options, "url").as_string().ok_or_else(|| type_error("options.url must be a string"))?;
    let mut config = Config::new(url);
    let sites = get(options, "sites");
    if !sites.is_undefined() {
        if !Array::is_array(&sites) {
            return Err(type_error("options.sites must be an array of site codes"));
        }
        for site in Array::from(&sites).iter() {
            config.sites.push(site.as_string().ok_or_else(|| type_error("options.sites must hold strings"))?);
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
    config.validate().map_err(|e| js_sys::Error::new(&e.message()))?;
    Ok(config)
}

/// `{type: 'connecting'}`, `{type: 'reconnecting', attempt, delay}`, `{type: 'closed', code,
/// reason}`…
pub(crate) fn state(state: &State) -> JsValue {
    let o = Object::new();
    set(&o, "type", &state.name().into());
    match state {
        State::Reconnecting { attempt, delay_ms, reason } => {
            set(&o, "attempt", &(*attempt).into());
            set(&o, "delay", &(*delay_ms).into());
            set(&o, "reason", &(*reason).into());
        }
        State::Closed { code, reason } => {
            set(&o, "code", &(*code).into());
            set(&o, "reason", &reason.as_str().into());
        }
        State::Idle | State::Connecting | State::Connected => {}
    }
    o.into()
}

/// The argument of an event hook.
pub(crate) fn event(event: Event<JsValue>) -> JsValue {
    match event {
        Event::State(s) => state(&s),
        Event::Ready => JsValue::UNDEFINED,
        Event::Subscribed { site, epoch, offset, replayed, recovered } => {
            let o = Object::new();
            set(&o, "site", &site.into());
            set(&o, "epoch", &epoch.into());
            set(&o, "offset", &(offset as f64).into());
            set(&o, "replayed", &replayed.into());
            if let Some(recovered) = recovered {
                set(&o, "recovered", &recovered.into());
            }
            o.into()
        }
        Event::TokenNeeded { code, reason } => {
            let o = Object::new();
            set(&o, "code", &code.into());
            set(&o, "reason", &reason.into());
            o.into()
        }
        Event::RecoveryFailed(f) => {
            let o = Object::new();
            set(&o, "site", &f.site.as_str().into());
            set(&o, "reason", &f.reason.into());
            o.into()
        }
        Event::Error(e) => {
            let o = Object::new();
            set(&o, "message", &e.message().into());
            match e {
                ClientError::Callback { site, topic, error } => {
                    set(&o, "kind", &"callback".into());
                    set(&o, "site", &site.into());
                    set(&o, "topic", &topic.into());
                    set(&o, "error", &error);
                }
                ClientError::Hook { error } => {
                    set(&o, "kind", &"listener".into());
                    set(&o, "error", &error);
                }
                ClientError::Server { code, site, .. } => {
                    set(&o, "kind", &"server".into());
                    set(&o, "code", &code.into());
                    if let Some(site) = site {
                        set(&o, "site", &site.into());
                    }
                }
                ClientError::Frame(_) => set(&o, "kind", &"frame".into()),
            }
            o.into()
        }
    }
}

pub(crate) fn type_error(message: &str) -> JsValue {
    js_sys::TypeError::new(message).into()
}

fn get(o: &JsValue, key: &str) -> JsValue {
    Reflect::get(o, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

fn set(o: &Object, key: &str, value: &JsValue) {
    let _ = Reflect::set(o, &key.into(), value);
}
