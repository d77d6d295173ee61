//! Server frames other than publications, as `JSON.parse` gave them to the dispatcher
//! ([`super::dispatch`]); only the fields the client acts on are copied into Rust.

#[allow(unused_imports)]
use crate::prelude::*;

use js_sys::Reflect;
use wasm_bindgen::prelude::*;

use crate::inbound::Inbound;

/// Decodes a parsed frame the dispatcher did not take (`undefined`: the text was not JSON). It
/// takes every well-formed publication, so a publication here is malformed: the error says how.
pub(crate) fn decode(obj: &JsValue, legacy: bool) -> Result<Inbound, String> {
    if obj.is_undefined() {
        return Err("not JSON".to_owned());
    }
    if !obj.is_object() {
        return Err("not a JSON object".to_owned());
    }
    let kind = string(obj, "type");
    if legacy {
        // The original service's frames are bare publications; this relay adds error frames.
        return match kind.as_deref() {
            Some("error") => Ok(error(obj)),
            _ => Err(malformed(obj, &["site", "topic"])),
        };
    }
    Ok(match kind.as_deref() {
        Some("pub") => return Err(malformed(obj, &["site", "topic", "epoch"])),
        Some("hello") => Inbound::Hello {
            ping_interval_ms: number(obj, "ping_interval_ms").unwrap_or(25_000),
            fossil: deltas(&get(obj, "deltas")),
            expires_at: number(obj, "expires_at"),
        },
        Some("refreshed") => Inbound::Refreshed { expires_at: number(obj, "expires_at") },
        Some("subscribed") => Inbound::Subscribed {
            id: number(obj, "id"),
            site: required(obj, "site")?,
            epoch: required(obj, "epoch")?,
            offset: number(obj, "offset").ok_or("subscribed without offset")?,
            recovered: get(obj, "recovered").as_bool(),
            replayed: number(obj, "replayed").map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        },
        Some("unsubscribed") => Inbound::Unsubscribed,
        Some("ping") => Inbound::Ping,
        Some("pong") => Inbound::Pong,
        Some("error") => error(obj),
        // A newer server's frame: ignored, but it still shows the connection is alive.
        _ => Inbound::Other,
    })
}

/// Whether a `hello`'s `deltas` offers the encoding the client applies.
fn deltas(offered: &JsValue) -> bool {
    js_sys::Array::is_array(offered) && js_sys::Array::from(offered).includes(&crate::subscriptions::FOSSIL.into(), 0)
}

/// What is wrong with a publication whose fields `strings` must be strings. With those in
/// place, it is the offset (the dispatcher takes a publication whose offset is a non-negative
/// integer).
fn malformed(obj: &JsValue, strings: &[&str]) -> String {
    for key in strings {
        if !get(obj, key).is_string() {
            return missing(key);
        }
    }
    "pub without offset".to_owned()
}

fn missing(key: &str) -> String {
    let mut msg = String::from("missing string field ");
    msg.push_str(key);
    msg
}

fn error(obj: &JsValue) -> Inbound {
    Inbound::Error {
        id: number(obj, "id"),
        code: string(obj, "code").unwrap_or_default(),
        site: string(obj, "site"),
        message: string(obj, "message").unwrap_or_default(),
    }
}

fn get(obj: &JsValue, key: &str) -> JsValue {
    Reflect::get(obj, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

fn string(obj: &JsValue, key: &str) -> Option<String> {
    get(obj, key).as_string()
}

fn required(obj: &JsValue, key: &str) -> Result<String, String> {
    string(obj, key).ok_or_else(|| missing(key))
}

/// A non-negative integer field. Offsets stay far below 2^53, where JSON numbers are exact.
fn number(obj: &JsValue, key: &str) -> Option<u64> {
    let n = get(obj, key).as_f64()?;
    // Whole: unchanged by a round trip through u64 (`f64::fract` is std's).
    ((0.0..=9_007_199_254_740_991.0).contains(&n) && (n as u64) as f64 == n).then_some(n as u64)
}
