//! The HTTP surface: the WebSocket endpoint at `/<stage>`, `POST /publish`, `/healthz`,
//! `/readyz` and `/metrics`. Any other path is 404.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, Query, State,
        ws::{WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use datastream_protocol::v2;
use serde_json::json;
use tracing::debug;

use crate::{
    AppState, ingest,
    session::{
        self, Registration,
        legacy::Legacy,
        v2::{SubscribeRequest, V2},
    },
};

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

/// `GET /<stage>`: a WebSocket. With the subprotocol `datastream.v2`, a v2 connection subscribed
/// to every `site` in the query (none is fine); otherwise a legacy connection subscribed to its one
/// required `site`.
async fn connect(
    State(state): State<Arc<AppState>>,
    Query(query): Query<Vec<(String, String)>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let v2 = upgrade.as_ref().is_ok_and(|u| {
        u.requested_protocols().any(|p| p.to_str().is_ok_and(|p| p.split(',').any(|p| p.trim() == v2::SUBPROTOCOL)))
    });
    let sites: Vec<&str> = query.iter().filter(|(k, _)| k == "site").map(|(_, v)| v.as_str()).collect();
    if !v2 && sites.first().is_none_or(|s| s.is_empty()) {
        return plain(StatusCode::BAD_REQUEST, "missing query parameter: site\n");
    }
    for site in &sites {
        if let Err(e) = state.validator.names.check_site(site) {
            return plain(StatusCode::BAD_REQUEST, format!("invalid query parameter site: {e}\n"));
        }
    }
    if v2 && sites.len() > state.config.max_subscriptions as usize {
        return plain(StatusCode::BAD_REQUEST, format!("more than {} sites\n", state.config.max_subscriptions));
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    if state.is_draining() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
    }
    let max_frame = state.config.max_client_frame_bytes;
    let upgrade = upgrade.max_message_size(max_frame).max_frame_size(max_frame);
    let sessions = state.sessions.clone();
    if v2 {
        let sites: Vec<Arc<str>> = sites.into_iter().map(Arc::from).collect();
        debug!(?sites, "v2 connection");
        upgrade
            .protocols([v2::SUBPROTOCOL])
            .on_upgrade(move |socket| sessions.track_future(start_v2(socket, state, sites)))
    } else {
        // Legacy pages give one site; like the original, only the first counts.
        let site: Arc<str> = sites[0].into();
        debug!(%site, "legacy connection");
        upgrade.on_upgrade(move |socket| sessions.track_future(start_legacy(socket, state, site)))
    }
}

async fn start_legacy(socket: WebSocket, state: Arc<AppState>, site: Arc<str>) {
    let gauge = state.metrics.connections_legacy.clone();
    let (mut reg, rx) = Registration::new(state.hub.clone(), state.config.client_queue_bytes, gauge);
    reg.add(site, None);
    session::run(socket, state, Legacy, reg, rx, Vec::new()).await;
}

async fn start_v2(socket: WebSocket, state: Arc<AppState>, sites: Vec<Arc<str>>) {
    let gauge = state.metrics.connections_v2.clone();
    let (mut reg, rx) = Registration::new(state.hub.clone(), state.config.client_queue_bytes, gauge);
    let mut proto = V2::default();
    let mut greeting = vec![V2::hello(&state)];
    for site in sites {
        let req = SubscribeRequest { id: None, site, topics: None, recover: None, rewind: 0 };
        match proto.subscribe(req, &mut reg, &state).await {
            Ok(frames) => greeting.extend(frames),
            Err(refusal) => greeting.push(refusal.to_json().into()),
        }
    }
    session::run(socket, state, proto, reg, rx, greeting).await;
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
