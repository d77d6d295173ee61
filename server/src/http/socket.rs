//! `GET /<stage>`: the WebSocket handshake — checks (site names, key, origin, caps, token) and the
//! hand-over to a session of the protocol the client offered.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Extension,
    extract::{
        ConnectInfo, Query, State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use datastream_protocol::{
    close::{self, CloseCode},
    v2,
};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::debug;

use super::origin::origin_allowed;
use crate::{
    auth::{AuthError, Grant},
    client_addr,
    config::Config,
    hub::{Framing, Inbox, MAX_PACKED_BYTES},
    limits::IpPermit,
    session::{self, Registration, Start, legacy::Legacy, v2::V2},
    state::AppState,
    wire::Wire,
};

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

/// What the WebSocket layer gathers before it writes to the connection: a reply's small frames
/// (an ack, latest values, a replay) leave in one write. It holds bytes outside the connection's
/// budget (the wire counts them once written), so it is small.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// The most the WebSocket layer may hold unwritten: its buffer and one frame of the largest kind
/// the session writes (a packed frame, or one publication with its envelope). When the
/// connection is over its budget, pongs past this are not queued: only the latest ping is
/// answered (RFC 6455 §5.5.3).
fn max_write_buffer(config: &Config) -> usize {
    let envelope = 2 * config.max_name_len + 1024;
    WRITE_BUFFER_BYTES + MAX_PACKED_BYTES.max(config.max_message_bytes + envelope)
}

/// Whether the handshake's `Sec-WebSocket-Key` is a base64-encoded 16-byte value, as RFC 6455
/// §4.2.1 requires of the request the server upgrades.
fn nonce_key(headers: &HeaderMap) -> bool {
    use base64::Engine;
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|key| base64::engine::general_purpose::STANDARD.decode(key.as_bytes()).ok())
        .is_some_and(|nonce| nonce.len() == 16)
}

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
pub async fn connect(
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
    if !nonce_key(&headers) {
        let text = "Sec-WebSocket-Key must be a base64-encoded 16-byte value\n".to_owned();
        return refuse(StatusCode::BAD_REQUEST, "bad_request", text);
    }
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
    let upgrade = upgrade
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(max_write_buffer(&state.config));
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
                // An expired token is the one refusal a fresh token fixes: 3002 has the client
                // fetch one and reconnect; every other refusal is terminal (3501).
                let code = if e == AuthError::Expired { CloseCode::TokenExpired } else { CloseCode::Forbidden };
                return upgrade.protocols([v2::SUBPROTOCOL]).on_upgrade(move |mut socket| async move {
                    let reason = close::fit_reason(&e.to_string()).to_owned();
                    let frame = CloseFrame { code: code.code(), reason: reason.into() };
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
        if !grant.allows(&site) && !grant.has_token() {
            let text = format!("a token is required to subscribe to {site}\n");
            return refuse(StatusCode::UNAUTHORIZED, "auth", text);
        }
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
    let hello = V2::hello(state, &grant);
    let (mut reg, rx) =
        Registration::new(state.hub.clone(), queue_bytes, Framing::Packed, gauge, grant, Some(permit), wire);
    let mut proto = V2;
    let mut greeting = vec![hello];
    for site in sites {
        let checked = proto.check_subscribe(state, &reg, None, &site, &[], None, None, v2::LatestWanted::No, None);
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
