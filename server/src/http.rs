//! The HTTP surface: the WebSocket endpoint at `/<stage>`, `POST /publish`, `/healthz`,
//! `/readyz` and `/metrics`. Any other path is 404.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, Query, State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use tracing::debug;

use crate::{AppState, ingest, session};

/// Builds the router for `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let stage_path = format!("/{}", state.config.stage);
    let body_limit = state.config.max_publish_body_bytes;
    Router::new()
        .route(&stage_path, get(connect))
        .route("/publish", post(ingest::http::publish).layer(DefaultBodyLimit::max(body_limit)))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text.into()).into_response()
}

/// `GET /<stage>?site=<site>`: a legacy connection subscribed to `site`.
async fn connect(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let site = match query.get("site").map(String::as_str) {
        None | Some("") => return plain(StatusCode::BAD_REQUEST, "missing query parameter: site\n"),
        Some(site) => site,
    };
    if let Err(e) = state.validator.names.check_site(site) {
        return plain(StatusCode::BAD_REQUEST, format!("invalid query parameter site: {e}\n"));
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    if state.is_draining() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
    }
    let site: Arc<str> = site.into();
    debug!(%site, "legacy connection");
    let max_frame = state.config.max_client_frame_bytes;
    upgrade.max_message_size(max_frame).max_frame_size(max_frame).on_upgrade(move |socket| {
        let sessions = state.sessions.clone();
        sessions.track_future(session::legacy::run(socket, state, site))
    })
}

/// `GET /readyz`: 200 when every configured upstream is healthy and the server is not draining.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let draining = state.is_draining();
    let sqs = state.readiness.sqs();
    let ready = sqs && !draining;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let sqs_state = if !state.readiness.sqs_enabled {
        "disabled"
    } else if sqs {
        "ok"
    } else {
        "unreachable"
    };
    (status, Json(json!({ "ready": ready, "draining": draining, "sqs": sqs_state }))).into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
        .into_response()
}
