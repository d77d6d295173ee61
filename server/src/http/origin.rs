//! The browser origin check (`DATASTREAM_ALLOWED_ORIGINS`), one rule for WebSockets and
//! `GET /sites/<site>/latest`.

use axum::http::{HeaderMap, header};

use crate::config::Config;

/// Whether a browser request's `Origin` is one of `DATASTREAM_ALLOWED_ORIGINS` (any, when empty);
/// the refused origin otherwise. Requests without one (not from a web page) pass.
pub fn origin_allowed<'h>(config: &Config, headers: &'h HeaderMap) -> Result<(), &'h str> {
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) if !config.allowed_origins.is_empty() && !config.allowed_origins.iter().any(|o| o == origin) => {
            Err(origin)
        }
        _ => Ok(()),
    }
}
