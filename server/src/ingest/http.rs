//! `POST /publish`: publish one `{site, topic, data}` object, or an array of them.
//!
//! | outcome | status | body |
//! |---|---|---|
//! | published | 202 | `{"accepted": n, "duplicates": d}` |
//! | invalid JSON or message | 400 | `{"error": "...", "field": "site", "index": 2}` |
//! | body or one message too large | 413 | `{"error": "..."}` |
//! | token configured, missing or wrong | 401 | `{"error": "..."}` |
//! | no token configured, caller not on loopback | 403 | `{"error": "..."}` |
//! | no token configured, sent by a web page of another origin | 403 | `{"error": "..."}` |
//! | body slower than `DATASTREAM_BODY_TIMEOUT` | 408 | `{"error": "..."}` |
//! | shutting down, or the broker is unavailable | 503 | `{"error": "...", "accepted": n, "duplicates": d}` |
//!
//! An array is validated whole before anything is published: one bad element rejects the request
//! and publishes nothing. The caller is authorized from the headers alone, before any of the
//! body is read, and the body must arrive within its deadline: a caller without the token, or
//! one that sends a few bytes and stalls, holds neither a buffer nor the connection.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{ConnectInfo, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{json, value::RawValue};
use subtle::ConstantTimeEq;
use tracing::warn;

use crate::{
    auth,
    broker::PublishOutcome,
    config::Config,
    metrics::Source,
    publication::{InvalidMessage, PublishRequest},
    state::AppState,
};

/// A refused publish request. The body never carries internal details.
#[derive(Debug)]
pub enum PublishError {
    /// Missing or wrong bearer token.
    Unauthorized,
    /// No token configured and the caller is not on loopback.
    NotLoopback,
    /// No token configured and the request comes from a web page of another origin: a page in
    /// any browser on the relay's host could otherwise publish through it.
    CrossSite,
    /// The body did not arrive within the deadline.
    BodyTimeout,
    /// The body is larger than the configured limit.
    BodyTooLarge(usize),
    /// The body is not valid JSON (or not UTF-8), or is an empty array.
    BadBody(String),
    /// A message failed validation; `index` is its position in an array body.
    Invalid { index: Option<usize>, error: InvalidMessage },
    /// Shutting down or broker unavailable; the first `accepted + duplicates` messages were
    /// carried out before it (`duplicates` of them dropped as repeats), the rest not.
    Unavailable { accepted: usize, duplicates: usize },
}

impl IntoResponse for PublishError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            PublishError::Unauthorized => {
                let body = json!({ "error": "missing or invalid bearer token" });
                return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], Json(body)).into_response();
            }
            PublishError::NotLoopback => (
                StatusCode::FORBIDDEN,
                json!({ "error": "publishing without a token is allowed from loopback only; configure DATASTREAM_PUBLISH_TOKEN" }),
            ),
            PublishError::CrossSite => (
                StatusCode::FORBIDDEN,
                json!({ "error": "publishing from a web page of another origin needs DATASTREAM_PUBLISH_TOKEN" }),
            ),
            PublishError::BodyTimeout => {
                let body = json!({ "error": "the body did not arrive in time" });
                return (StatusCode::REQUEST_TIMEOUT, [(header::CONNECTION, "close")], Json(body)).into_response();
            }
            PublishError::BodyTooLarge(max) => {
                (StatusCode::PAYLOAD_TOO_LARGE, json!({ "error": format!("body is larger than {max} bytes") }))
            }
            PublishError::BadBody(msg) => (StatusCode::BAD_REQUEST, json!({ "error": msg })),
            PublishError::Invalid { index, error } => {
                let status = match error {
                    InvalidMessage::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                let mut body = json!({ "error": error.to_string() });
                if let Some(field) = error.field() {
                    body["field"] = field.into();
                }
                if let Some(index) = index {
                    body["index"] = index.into();
                }
                (status, body)
            }
            PublishError::Unavailable { accepted, duplicates } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "temporarily unable to publish; retry", "accepted": accepted, "duplicates": duplicates }),
            ),
        };
        (status, Json(body)).into_response()
    }
}

fn authorize(config: &Config, headers: &HeaderMap, peer: SocketAddr) -> Result<(), PublishError> {
    match &config.publish_token {
        Some(token) => {
            let presented = auth::bearer(headers).unwrap_or("");
            if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
                Ok(())
            } else {
                Err(PublishError::Unauthorized)
            }
        }
        None if is_cross_site(headers) => Err(PublishError::CrossSite),
        // Behind a trusted proxy the caller is the client it forwards for, not the proxy.
        None if config.publish_open
            || crate::client_addr::forwarded(&config.trusted_proxies, peer.ip(), headers).is_loopback(peer.ip()) =>
        {
            Ok(())
        }
        None => Err(PublishError::NotLoopback),
    }
}

/// Whether a browser sent the request on behalf of a page of another origin. Browsers mark every
/// request with `Sec-Fetch-Site` (older ones at least send `Origin` on a POST); tools (curl,
/// SDKs, boto-style publishers) send neither. A same-origin page (the relay's own) may publish.
fn is_cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return false };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map_or("", |(_, rest)| rest);
    origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host)
}

/// Reads the body, within the size limit and the body deadline; a body announced larger than the
/// limit is refused before any of it is read.
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, PublishError> {
    let max = state.config.max_publish_body_bytes;
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(PublishError::BodyTooLarge(max));
    }
    match tokio::time::timeout(state.config.body_timeout, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(PublishError::BodyTimeout),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                PublishError::BodyTooLarge(max)
            } else {
                PublishError::BadBody("cannot read the body".into())
            })
        }
    }
}

/// Splits and validates a publish body into requests.
fn parse_body(state: &AppState, body: &[u8]) -> Result<Vec<PublishRequest>, PublishError> {
    let text = std::str::from_utf8(body).map_err(|_| PublishError::BadBody("body is not UTF-8".into()))?;
    if text.trim_start().starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| PublishError::BadBody(format!("body is not valid JSON: {e}")))?;
        if items.is_empty() {
            return Err(PublishError::BadBody("empty array: nothing to publish".into()));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                state.validator.parse(raw.get()).map_err(|error| PublishError::Invalid { index: Some(i), error })
            })
            .collect()
    } else {
        let req = state.validator.parse(text.trim()).map_err(|error| PublishError::Invalid { index: None, error })?;
        Ok(vec![req])
    }
}

/// The `POST /publish` handler.
pub async fn publish(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PublishError> {
    authorize(&state.config, &headers, peer)?;
    let body = read_body(&state, &headers, body).await?;
    let requests = parse_body(&state, &body).inspect_err(|e| {
        if let PublishError::Invalid { error, .. } = e {
            state.metrics.malformed(Source::Http, error.reason());
        }
    })?;
    if state.is_draining() {
        return Err(PublishError::Unavailable { accepted: 0, duplicates: 0 });
    }
    // The broker publishes the body as one batch: one write per subscriber for all of it.
    let (outcomes, failure) = match state.broker.publish_all(&requests).await {
        Ok(outcomes) => (outcomes, None),
        Err(partial) => (partial.outcomes, Some(partial.cause)),
    };
    let duplicates = outcomes.iter().filter(|o| matches!(o, PublishOutcome::Duplicate)).count();
    let accepted = outcomes.len() - duplicates;
    state.metrics.messages_in(Source::Http, accepted);
    state.metrics.duplicates.inc_by(duplicates as u64);
    if let Some(e) = failure {
        warn!(error = %e, accepted, "publish failed");
        return Err(PublishError::Unavailable { accepted, duplicates });
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": accepted, "duplicates": duplicates }))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_config;
    use axum::http::HeaderValue;

    fn check(args: &[&str], peer: &str, token: Option<&str>) -> Result<(), PublishError> {
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
        }
        authorize(&test_config(args), &headers, peer.parse().unwrap())
    }

    #[test]
    fn without_a_token_only_loopback_may_publish() {
        assert!(check(&[], "127.0.0.1:5000", None).is_ok());
        assert!(check(&[], "[::1]:5000", None).is_ok());
        assert!(matches!(check(&[], "10.1.2.3:5000", None), Err(PublishError::NotLoopback)));
        assert!(check(&["--publish-open"], "10.1.2.3:5000", None).is_ok());
    }

    #[test]
    fn with_a_token_everyone_needs_it() {
        let args = ["--publish-token", "0123456789abcdef"];
        assert!(matches!(check(&args, "127.0.0.1:1", None), Err(PublishError::Unauthorized)));
        assert!(matches!(check(&args, "10.1.2.3:1", Some("0123456789abcdeX")), Err(PublishError::Unauthorized)));
        assert!(matches!(check(&args, "10.1.2.3:1", Some("0123456789abcde")), Err(PublishError::Unauthorized)));
        assert!(check(&args, "10.1.2.3:1", Some("0123456789abcdef")).is_ok());
    }
}
