//! The `fossil-delta` crate's applier behind a string-in, string-out WebAssembly export, as the
//! SDK would call it: what it adds to the module and what a call costs, against the JavaScript
//! applier in `appliers.mjs` (see `bench/delta.sh`). With the `baseline` feature, the export
//! applies nothing, so that the applier's own bytes are the difference of the two builds.

use wasm_bindgen::prelude::*;

/// The target text of Fossil `delta` applied to `base` (the delta's checksum verified).
#[cfg(not(feature = "baseline"))]
#[wasm_bindgen(js_name = fossilApply)]
pub fn fossil_apply(base: &str, delta: &str) -> Result<String, JsError> {
    let out = fossil_delta::apply(base, delta).map_err(|_| JsError::new("bad delta"))?;
    String::from_utf8(out).map_err(|_| JsError::new("not UTF-8"))
}

/// The same signature, no work.
#[cfg(feature = "baseline")]
#[wasm_bindgen(js_name = fossilApply)]
pub fn fossil_apply(base: &str, delta: &str) -> Result<String, JsError> {
    if delta.is_empty() { Err(JsError::new("empty")) } else { Ok(base.to_owned()) }
}
