//! The HTTP surface: the WebSocket endpoint at `/<stage>`, `POST /publish`,
//! `GET /sites/<site>/latest`, `/healthz`,
//! `/readyz` and `/metrics`; with `DATASTREAM_STATIC_DIR`, static files (the demo dashboard) at
//! every other path, else 404.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Extension, Json, Router,
    extract::{
        ConnectInfo, Query, State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use datastream_protocol::{
    close::{self, CloseCode},
    v2,
};
use serde_json::json;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tower_http::services::ServeDir;
use tracing::debug;

use crate::{
    AppState, Config,
    auth::Grant,
    broker::Broker,
    client_addr,
    hub::{Framing, Inbox},
    ingest, latest,
    limits::IpPermit,
    session::{self, Registration, Start, legacy::Legacy, v2::V2},
    wire::Wire,
};

/// Builds the router for `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let stage_path = format!("/{}", state.config.stage);
    let static_dir = state.config.static_dir.clone();
    let router = Router::new()
        .route(&stage_path, get(connect))
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

/// Whether a browser request's `Origin` is one of `DATASTREAM_ALLOWED_ORIGINS` (any, when empty);
/// the refused origin otherwise. Requests without one (not from a web page) pass.
pub(crate) fn origin_allowed<'h>(config: &Config, headers: &'h HeaderMap) -> Result<(), &'h str> {
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) if !config.allowed_origins.is_empty() && !config.allowed_origins.iter().any(|o| o == origin) => {
            Err(origin)
        }
        _ => Ok(()),
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text.into()).into_response()
}

/// Subprotocol prefix carrying a token: `datastream.token.<jwt>`. Browsers cannot set headers on a
/// WebSocket, and a token in the URL ends up in access logs and history; a subprotocol entry is
/// the one header a browser lets a page set.
const TOKEN_PROTOCOL_PREFIX: &str = "datastream.token.";

/// Read buffer of each WebSocket. Clients send only small control frames; idle connections are
/// what there are most of, and this buffer was the largest part of each.
const READ_BUFFER_BYTES: usize = 512;

/// The offered subprotocols, split on commas.
fn offered_protocols(upgrade: &WebSocketUpgrade) -> Vec<String> {
    upgrade
        .requested_protocols()
        .filter_map(|p| p.to_str().ok())
        .flat_map(|p| p.split(','))
        .map(|p| p.trim().to_owned())
        .collect()
}

/// `GET /<stage>`: a WebSocket. With the subprotocol `datastream.v2`, a v2 connection subscribed
/// to every `site` in the query (none is fine); otherwise a legacy connection subscribed to its one
/// required `site`. When authentication is on, the token comes from a `datastream.token.<jwt>`
/// subprotocol entry or a `token` query parameter.
async fn connect(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
    wire: Option<Extension<Arc<Wire>>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Served by `serve`, the connection's wire is at hand for the fan-out's direct writes.
    let wire = wire.map(|Extension(wire)| wire);
    let client = client_addr::client_ip(&state.config.trusted_proxies, peer.ip(), &headers);
    let refuse = |status: StatusCode, reason: &'static str, text: String| {
        debug!(%client, reason, "connection refused");
        state.metrics.connection_refused(reason);
        plain(status, text)
    };
    let offered = upgrade.as_ref().map(offered_protocols).unwrap_or_default();
    let v2 = offered.iter().any(|p| p == v2::SUBPROTOCOL);
    let sites: Vec<&str> = query.iter().filter(|(k, _)| k == "site").map(|(_, v)| v.as_str()).collect();
    if !v2 && sites.first().is_none_or(|s| s.is_empty()) {
        return refuse(StatusCode::BAD_REQUEST, "bad_request", "missing query parameter: site\n".into());
    }
    for site in &sites {
        if let Err(e) = state.validator.names.check_site(site) {
            return refuse(StatusCode::BAD_REQUEST, "bad_request", format!("invalid query parameter site: {e}\n"));
        }
    }
    if v2 && sites.len() > state.config.max_subscriptions as usize {
        let text = format!("more than {} sites\n", state.config.max_subscriptions);
        return refuse(StatusCode::BAD_REQUEST, "bad_request", text);
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    if let Err(origin) = origin_allowed(&state.config, &headers) {
        return refuse(StatusCode::FORBIDDEN, "origin", format!("origin {origin} is not allowed\n"));
    }
    if state.is_draining() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "draining", "server shutting down\n".into());
    }
    if state.sessions.len() >= state.config.max_connections {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "max_connections", "too many connections\n".into());
    }
    let Some(permit) = state.ip_limiter.try_acquire(client) else {
        return refuse(StatusCode::TOO_MANY_REQUESTS, "per_ip", "too many connections from this address\n".into());
    };
    let token = offered
        .iter()
        .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
        .or_else(|| query.iter().find(|(k, _)| k == "token").map(|(_, v)| v.as_str()));
    let grant = state.auth.verify(token).await;

    let max_frame = state.config.max_client_frame_bytes;
    // Clients send little (a few small control frames): a small read buffer keeps idle
    // connections cheap; a large frame is simply read in several pieces.
    let upgrade = upgrade.max_message_size(max_frame).max_frame_size(max_frame).read_buffer_size(READ_BUFFER_BYTES);
    // Counted as a session from here, not from when the upgrade completes: a shutdown that begins
    // in between still waits for this connection and closes it properly.
    let session = state.sessions.token();
    if v2 {
        // A browser cannot read a refused handshake's status; v2 clients get the reason as a
        // terminal close code instead.
        let grant = match grant {
            Ok(grant) => grant,
            Err(e) => {
                state.metrics.connection_refused("auth");
                return upgrade.protocols([v2::SUBPROTOCOL]).on_upgrade(move |mut socket| async move {
                    let reason = close::fit_reason(&e.to_string()).to_owned();
                    let frame = CloseFrame { code: CloseCode::Forbidden.code(), reason: reason.into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                });
            }
        };
        let sites: Vec<Arc<str>> = sites.into_iter().map(Arc::from).collect();
        debug!(%client, ?sites, "v2 connection");
        upgrade.protocols([v2::SUBPROTOCOL]).on_upgrade(move |socket| async move {
            let (proto, reg, rx, greeting) = setup_v2(&state, sites, grant, permit, wire.clone()).await;
            spawn_session(session, session::run(socket, state, proto, reg, rx, greeting, wire));
        })
    } else {
        let grant = match grant {
            Ok(grant) => grant,
            Err(e) => return refuse(StatusCode::UNAUTHORIZED, "auth", format!("{e}\n")),
        };
        // Legacy pages give one site; like the original, only the first counts.
        let site: Arc<str> = sites[0].into();
        if !grant.allows(&site) {
            return refuse(StatusCode::FORBIDDEN, "forbidden", format!("not allowed to subscribe to {site}\n"));
        }
        // Subscribed before the 101 goes out: a publication sent as soon as the client sees the
        // socket open is queued for it, not lost.
        let (reg, rx) = setup_legacy(&state, site.clone(), grant, permit, wire.clone()).await;
        debug!(%client, %site, "legacy connection");
        upgrade.on_upgrade(move |socket| async move {
            spawn_session(session, session::run(socket, state, Legacy, reg, rx, Vec::new(), wire));
        })
    }
}

/// Runs a session in a task of its own, counted by the session tracker until it ends.
///
/// The upgrade task axum spawns holds the handshake's state (hyper's upgrade, the request's
/// captures) next to whatever it awaits; the session lives for hours, so it gets a task holding
/// nothing but its own future (awaiting it from an `async` block would store it twice), and the
/// upgrade task ends here. `token` counted the connection until now.
fn spawn_session(token: TaskTrackerToken, session: impl Future<Output = ()> + Send + 'static) {
    token.task_tracker().spawn(session);
    drop(token);
}

async fn setup_legacy(
    state: &AppState,
    site: Arc<str>,
    grant: Grant,
    permit: IpPermit,
    wire: Option<Arc<Wire>>,
) -> (Registration, Inbox) {
    let gauge = state.metrics.connections_legacy.clone();
    let queue_bytes = state.config.client_queue_bytes;
    let (mut reg, rx) =
        Registration::new(state.hub.clone(), queue_bytes, Framing::Legacy, gauge, grant, Some(permit), wire);
    // Live subscriptions cannot fail.
    let _ = reg.subscribe(site, None, &state.broker, Start::Live).await;
    (reg, rx)
}

async fn setup_v2(
    state: &AppState,
    sites: Vec<Arc<str>>,
    grant: Grant,
    permit: IpPermit,
    wire: Option<Arc<Wire>>,
) -> (V2, Registration, Inbox, Vec<Utf8Bytes>) {
    let gauge = state.metrics.connections_v2.clone();
    let queue_bytes = state.config.client_queue_bytes;
    let (mut reg, rx) =
        Registration::new(state.hub.clone(), queue_bytes, Framing::Packed, gauge, grant, Some(permit), wire);
    let mut proto = V2;
    let mut greeting = vec![V2::hello(state)];
    for site in sites {
        let checked = proto.check_subscribe(state, &reg, None, &site, &[], None, None, v2::LatestWanted::No);
        match checked {
            Ok(req) => match proto.subscribe(req, &mut reg, state).await {
                Ok(frames) => greeting.extend(frames),
                Err(refusal) => greeting.push(refusal.to_json().into()),
            },
            Err(refusal) => greeting.push(refusal.to_json().into()),
        }
    }
    (proto, reg, rx, greeting)
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
