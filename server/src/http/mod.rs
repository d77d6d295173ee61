//! The HTTP surface: the WebSocket endpoint at `/<stage>` ([`socket`]), `POST /publish`
//! ([`crate::ingest::http`]), `GET /sites/<site>/latest` ([`latest`]), `/healthz`, `/readyz` and
//! `/metrics`; with `DATASTREAM_STATIC_DIR`, static files (the demo dashboard) at every other path,
//! else 404. Browser origins are checked by one rule ([`origin`]).

pub mod latest;
pub mod origin;
pub mod socket;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use tower_http::services::ServeDir;

use crate::{broker::Broker, ingest, state::AppState};

/// Builds the router for `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let stage_path = format!("/{}", state.config.stage);
    let static_dir = state.config.static_dir.clone();
    let router = Router::new()
        .route(&stage_path, get(socket::connect))
        // The handler reads the body itself, after the token, within the size limit and deadline.
        .route("/publish", post(ingest::http::publish))
        .route("/sites/{site}/latest", get(latest::get).layer(latest::cors(&state.config)))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    let router = match static_dir {
        Some(dir) => router.fallback_service(ServeDir::new(dir)),
        None => router.fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") }),
    };
    router.with_state(state)
}
/// `GET /readyz`: 200 when every configured upstream is healthy, every background task runs and
/// the server is not draining; `tasks_down` names the tasks waiting to be restarted.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let draining = state.is_draining();
    let sqs = state.readiness.sqs();
    let broker = state.broker.healthy();
    let tasks_down = state.readiness.tasks_down();
    let ready = sqs && broker && !draining && tasks_down.is_empty();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let sqs_state = if !state.readiness.sqs_enabled {
        "disabled"
    } else if sqs {
        "ok"
    } else {
        "unreachable"
    };
    let broker_state = match (&state.broker, broker) {
        (Broker::Memory(_), _) => "memory",
        (Broker::Redis(_), true) => "ok",
        (Broker::Redis(_), false) => "unreachable",
    };
    let body = json!({
        "ready": ready,
        "draining": draining,
        "sqs": sqs_state,
        "broker": broker_state,
        "tasks_down": tasks_down,
    });
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
        .into_response()
}
