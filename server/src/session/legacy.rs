//! A session speaking the original service's protocol: one site at a time, moved with
//! `{"action":"updatesubscribersite","site":…}`, publications as bare `{site, topic, data}` frames.
//!
//! The original never answered a client frame; this relay answers only frames it refuses, with an
//! error frame (`{"type":"error",…}`) that pages switching on `topic` ignore.

use std::sync::Arc;

use axum::extract::ws::Message;
use datastream_protocol::{
    close::CloseCode,
    error::{ErrorCode, ErrorFrame},
    legacy::{LegacyClientFrame, LegacyFrameError},
};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tracing::debug;

use super::{Registration, Socket, Strikes, close, is_too_big, write_batch};
use crate::AppState;

/// Why a session ended.
enum End {
    /// The client closed, vanished, or the socket failed.
    Gone,
    /// The server closes with this code.
    Close(CloseCode, &'static str, &'static str),
}

/// Runs a legacy session for a connection that asked for `site`.
pub async fn run<S: Socket>(mut socket: S, state: Arc<AppState>, site: Arc<str>) {
    let metrics = state.metrics.clone();
    let (mut reg, mut rx) = Registration::new(
        state.hub.clone(),
        metrics.clone(),
        state.config.client_queue_bytes,
        metrics.connections_legacy.clone(),
    );
    reg.add(site);
    let outbox = reg.outbox().clone();
    let period = state.config.ping_interval;
    let mut heartbeat = interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut strikes = Strikes::new();

    let end = loop {
        tokio::select! {
            biased;
            () = state.close_sessions.cancelled() => {
                // Let what was already queued reach the client before the close frame.
                while let Ok(p) = rx.try_recv() {
                    if write_batch(&mut socket, p, &mut rx, &outbox, &metrics, |p| Some(p.legacy_frame.clone())).await.is_err() {
                        break;
                    }
                }
                break End::Close(CloseCode::GoingAway, "server shutting down", "shutdown");
            }
            () = outbox.overflowed() => {
                break End::Close(CloseCode::SlowConsumer, "slow consumer: reconnect", "slow_consumer");
            }
            Some(p) = rx.recv() => {
                if write_batch(&mut socket, p, &mut rx, &outbox, &metrics, |p| Some(p.legacy_frame.clone())).await.is_err() {
                    break End::Gone;
                }
            }
            msg = socket.next() => {
                last_heard = Instant::now();
                let refused = match msg {
                    Some(Ok(Message::Text(text))) => match LegacyClientFrame::parse(&text) {
                        Ok(LegacyClientFrame::UpdateSubscriberSite { site }) => {
                            match state.validator.names.check_site(&site) {
                                Ok(()) => {
                                    let site: Arc<str> = site.into();
                                    if reg.sites().first() != Some(&site) {
                                        let old: Vec<_> = reg.sites().to_vec();
                                        reg.add(site);
                                        for s in old {
                                            reg.remove(&s);
                                        }
                                    }
                                    None
                                }
                                Err(e) => Some(ErrorFrame { code: ErrorCode::InvalidSite, message: e.to_string() }),
                            }
                        }
                        Err(e) => Some(refusal(&e)),
                    },
                    Some(Ok(Message::Binary(_))) => Some(ErrorFrame {
                        code: ErrorCode::BinaryFrame,
                        message: "binary frames are not understood; send JSON text".into(),
                    }),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Err(e)) if is_too_big(&e) => {
                        break End::Close(CloseCode::MessageTooBig, "frame too large", "frame_too_large");
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Gone,
                };
                if let Some(frame) = refused {
                    metrics.client_frame_rejected(frame.code.as_str());
                    debug!(code = frame.code.as_str(), message = %frame.message, "refused client frame");
                    if strikes.strike() {
                        break End::Close(CloseCode::BadProtocol, "too many invalid frames", "bad_protocol");
                    }
                    if socket.send(Message::Text(frame.to_json().into())).await.is_err() {
                        break End::Gone;
                    }
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= state.config.client_timeout {
                    break End::Close(CloseCode::HeartbeatTimeout, "heartbeat timeout", "heartbeat_timeout");
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break End::Gone;
                }
            }
        }
    };
    // Leave the hub before the (possibly slow) close handshake.
    drop(reg);
    if let End::Close(code, reason, label) = end {
        metrics.disconnect(label);
        close(&mut socket, code, reason).await;
    }
}

fn refusal(e: &LegacyFrameError) -> ErrorFrame {
    let code = match e {
        LegacyFrameError::NotJson(_) => ErrorCode::InvalidJson,
        LegacyFrameError::MissingAction | LegacyFrameError::UnknownAction(_) => ErrorCode::UnknownType,
        LegacyFrameError::MissingSite => ErrorCode::InvalidFrame,
    };
    ErrorFrame { code, message: e.to_string() }
}
