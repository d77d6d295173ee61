//! Server frames, read with the browser's own `JSON.parse`.
//!
//! A frame's `data` comes out as the JavaScript value the callbacks receive, without passing the
//! payload (often tens of KB) through WebAssembly memory or a second parser; only the small
//! routing fields (`type`, `site`, `topic`, `epoch`, `offset`…) are copied into Rust.

use js_sys::{JsString, Reflect};
use wasm_bindgen::prelude::*;

use super::keys::Keys;
use crate::inbound::{Inbound, Publication};

#[wasm_bindgen]
extern "C" {
    /// `JSON.parse` on a JavaScript string, which stays on the JavaScript side.
    #[wasm_bindgen(js_namespace = JSON, js_name = parse, catch)]
    fn json_parse(text: &JsValue) -> Result<JsValue, JsValue>;
}

/// Decodes a text frame. v2 frames may pack several frames separated by `\n`; legacy frames are
/// one object each, and a publisher's pretty-printed data may contain newlines, so they are not
/// split.
pub(crate) fn decode(text: &JsValue, legacy: bool, keys: &Keys) -> Vec<Result<Inbound<JsValue>, String>> {
    if legacy {
        return vec![decode_one(text, true, keys)];
    }
    let parts = JsString::from(text.clone()).split("\n");
    let mut frames = Vec::with_capacity(parts.length() as usize);
    for part in parts.iter() {
        if JsString::from(part.clone()).trim().length() == 0 {
            continue;
        }
        frames.push(decode_one(&part, false, keys));
    }
    frames
}

fn decode_one(text: &JsValue, legacy: bool, keys: &Keys) -> Result<Inbound<JsValue>, String> {
    let obj = json_parse(text).map_err(|_| "not JSON".to_owned())?;
    if !obj.is_object() {
        return Err("not a JSON object".to_owned());
    }
    let kind = string(&obj, &keys.kind);
    if legacy {
        // The original service's frames are bare publications; this relay adds error frames.
        return match kind.as_deref() {
            Some("error") => Ok(error(&obj, keys)),
            _ => Ok(Inbound::Pub(Publication {
                site: required(&obj, &keys.site)?,
                topic: required(&obj, &keys.topic)?,
                position: None,
                data: get(&obj, &keys.data),
            })),
        };
    }
    Ok(match kind.as_deref() {
        Some("pub") => Inbound::Pub(Publication {
            site: required(&obj, &keys.site)?,
            topic: required(&obj, &keys.topic)?,
            position: Some((required(&obj, &keys.epoch)?, number(&obj, &keys.offset).ok_or("pub without offset")?)),
            data: get(&obj, &keys.data),
        }),
        Some("hello") => Inbound::Hello { ping_interval_ms: number(&obj, &keys.ping_interval_ms).unwrap_or(25_000) },
        Some("subscribed") => Inbound::Subscribed {
            id: number(&obj, &keys.id),
            site: required(&obj, &keys.site)?,
            epoch: required(&obj, &keys.epoch)?,
            offset: number(&obj, &keys.offset).ok_or("subscribed without offset")?,
            recovered: get(&obj, &keys.recovered).as_bool(),
            replayed: number(&obj, &keys.replayed).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        },
        Some("unsubscribed") => Inbound::Unsubscribed,
        Some("ping") => Inbound::Ping,
        Some("pong") => Inbound::Pong,
        Some("error") => error(&obj, keys),
        // A newer server's frame: ignored, but it still shows the connection is alive.
        _ => Inbound::Other,
    })
}

fn error(obj: &JsValue, keys: &Keys) -> Inbound<JsValue> {
    Inbound::Error {
        id: number(obj, &keys.id),
        code: string(obj, &keys.code).unwrap_or_default(),
        message: string(obj, &keys.message).unwrap_or_default(),
    }
}

fn get(obj: &JsValue, key: &JsValue) -> JsValue {
    Reflect::get(obj, key).unwrap_or(JsValue::UNDEFINED)
}

fn string(obj: &JsValue, key: &JsValue) -> Option<String> {
    get(obj, key).as_string()
}

fn required(obj: &JsValue, key: &JsValue) -> Result<String, String> {
    string(obj, key).ok_or_else(|| {
        let mut msg = String::from("missing string field ");
        msg.push_str(&key.as_string().unwrap_or_default());
        msg
    })
}

/// A non-negative integer field. Offsets stay far below 2^53, where JSON numbers are exact.
fn number(obj: &JsValue, key: &JsValue) -> Option<u64> {
    let n = get(obj, key).as_f64()?;
    (n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0).then_some(n as u64)
}
