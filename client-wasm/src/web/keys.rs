//! Property names as JavaScript strings, made once per client.
//!
//! Every frame read and every `meta` object built touches these names; creating each from a Rust
//! `&str` would re-encode it through WebAssembly memory every time.

use wasm_bindgen::JsValue;

/// Interned property names.
pub(crate) struct Keys {
    pub(crate) kind: JsValue,
    pub(crate) site: JsValue,
    pub(crate) topic: JsValue,
    pub(crate) data: JsValue,
    pub(crate) epoch: JsValue,
    pub(crate) offset: JsValue,
    pub(crate) id: JsValue,
    pub(crate) code: JsValue,
    pub(crate) message: JsValue,
    pub(crate) recovered: JsValue,
    pub(crate) replayed: JsValue,
    pub(crate) ping_interval_ms: JsValue,
}

impl Keys {
    pub(crate) fn new() -> Self {
        Keys {
            kind: "type".into(),
            site: "site".into(),
            topic: "topic".into(),
            data: "data".into(),
            epoch: "epoch".into(),
            offset: "offset".into(),
            id: "id".into(),
            code: "code".into(),
            message: "message".into(),
            recovered: "recovered".into(),
            replayed: "replayed".into(),
            ping_interval_ms: "ping_interval_ms".into(),
        }
    }
}
