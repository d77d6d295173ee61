//! `GET /sites/<site>/latest[?topic=…]`: the latest publication of each topic of a site, for pages
//! and scripts that hold no socket (the same values a v2 subscribe with `"latest": true` starts
//! with).
//!
//! | outcome | status | body |
//! |---|---|---|
//! | read | 200 | `{"site","epoch","offset","latest":[{"topic","key"?,"offset","data"},…]}` (oldest first) |
//! | invalid site or topic, too many topics | 400 | `{"error": "..."}` |
//! | auth on, token missing or invalid | 401 | `{"error": "..."}` |
//! | the token does not grant the site; a page of an origin not allowed | 403 | `{"error": "..."}` |
//! | the broker is unavailable | 503 | `{"error": "..."}` |
//!
//! A site never published to reads as an empty list (and leaves nothing behind). The token comes
//! as `Authorization: Bearer <jwt>` (or a `token` query parameter), and grants what it grants a
//! subscriber: its `sites` claim. Browsers may call it from the origins in
//! `DATASTREAM_ALLOWED_ORIGINS` (any, when empty): CORS headers and preflights are answered here.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::{json, value::RawValue};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::origin::origin_allowed;
use crate::{
    auth,
    broker::Snapshot,
    config::Config,
    state::AppState,
    topics::{TopicsError, distinct_topics},
};

/// One topic's latest publication.
#[derive(Serialize)]
struct Entry<'a> {
    topic: &'a str,
    /// For a topic kept per value of a data field (`DATASTREAM_LATEST_KEYS`), this one's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    offset: u64,
    data: &'a RawValue,
}

/// The answer's fields before its list.
#[derive(Serialize)]
struct Head<'a> {
    site: &'a str,
    epoch: &'a str,
    offset: u64,
}

/// The answer, `{"site","epoch","offset","latest":[…]}`, as a stream of chunks: the head, then one
/// entry at a time, encoded only when the connection is ready for it. A site's latest values can
/// be megabytes (64 topics of up to the largest message each); encoded whole, every reader would
/// hold a copy of them all until it read the last byte.
fn streamed(site: Arc<str>, snapshot: Snapshot) -> Body {
    let head =
        serde_json::to_vec(&Head { site: &site, epoch: &snapshot.epoch, offset: snapshot.top }).map(|mut head| {
            head.pop(); // the closing brace: the list follows
            head.extend_from_slice(br#","latest":["#);
            Bytes::from(head)
        });
    let entries = snapshot.latest.into_iter().enumerate().map(|(i, p)| {
        let entry = Entry { topic: &p.topic, key: p.latest_key.as_deref(), offset: p.position.offset, data: &p.data };
        let mut chunk = if i == 0 { Vec::new() } else { vec![b','] };
        serde_json::to_writer(&mut chunk, &entry).map(|()| Bytes::from(chunk))
    });
    let tail = std::iter::once(Ok(Bytes::from_static(b"]}")));
    Body::from_stream(futures_util::stream::iter(std::iter::once(head).chain(entries).chain(tail)))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = Json(json!({ "error": message.into() }));
    if status == StatusCode::UNAUTHORIZED {
        return (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
    }
    (status, body).into_response()
}

/// The CORS rules of this endpoint: GET with an `Authorization` header, from the allowed origins.
pub fn cors(config: &Config) -> CorsLayer {
    let origins: Vec<HeaderValue> =
        config.allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    let layer = CorsLayer::new()
        .allow_methods([Method::GET])
        .allow_headers([header::AUTHORIZATION])
        .max_age(Duration::from_secs(600));
    if origins.is_empty() { layer.allow_origin(AllowOrigin::any()) } else { layer.allow_origin(origins) }
}

/// `GET /sites/<site>/latest`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(site): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    if let Err(origin) = origin_allowed(&state.config, &headers) {
        return error(StatusCode::FORBIDDEN, format!("origin {origin} is not allowed"));
    }
    let names = &state.validator.names;
    if let Err(e) = names.check_site(&site) {
        return error(StatusCode::BAD_REQUEST, format!("invalid site: {e}"));
    }
    let asked = query.iter().filter(|(k, _)| k == "topic").map(|(_, v)| v.as_str());
    let topics = match distinct_topics(names, state.config.max_topics as usize, asked) {
        Ok(topics) => topics,
        Err(TopicsError::TooMany(max)) => return error(StatusCode::BAD_REQUEST, format!("at most {max} topics")),
        Err(TopicsError::Invalid(e)) => return error(StatusCode::BAD_REQUEST, format!("invalid topic: {e}")),
    };
    let token = auth::bearer(&headers).or_else(|| query.iter().find(|(k, _)| k == "token").map(|(_, v)| v.as_str()));
    let grant = match state.auth.verify(token).await {
        Ok(grant) => grant,
        Err(e) => return error(StatusCode::UNAUTHORIZED, e.to_string()),
    };
    if !grant.allows(&site) && !grant.has_token() {
        return error(StatusCode::UNAUTHORIZED, format!("a token is required to read {site:?}"));
    }
    if !grant.allows(&site) {
        return error(StatusCode::FORBIDDEN, format!("not allowed to read {site:?}"));
    }
    let site: Arc<str> = site.into();
    let topics: Option<Vec<Arc<str>>> = (!topics.is_empty()).then(|| topics.into_iter().map(Arc::from).collect());
    let snapshot = match state.broker.latest(&site, topics.as_deref()).await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            tracing::warn!(%site, error = %e, "latest read failed");
            return error(StatusCode::SERVICE_UNAVAILABLE, "latest values unavailable; retry");
        }
    };
    state.metrics.latest_sent("http", snapshot.latest.len());
    let headers = [(header::CACHE_CONTROL, "no-store"), (header::CONTENT_TYPE, "application/json")];
    (headers, streamed(site, snapshot)).into_response()
}
