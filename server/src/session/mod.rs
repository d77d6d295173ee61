//! One task per WebSocket connection.
//!
//! A session owns its socket's reading side and runs a single `select!` ([`run`]) over: its token's
//! expiry, the drain deadline once shutdown began, its inbox (bytes a fan-out write left unsent,
//! publications queued for it to write, overflow, and the request to close at shutdown, which
//! arrives the same way), frames from the client, and the heartbeat tick. While it has nothing of
//! its own to send, the fan-out writes publications to the socket itself and the session is not
//! woken for them; it takes the writing back while it answers a client request. A wake takes no lock shared with other
//! sessions and creates no timer. Heartbeats fall on a grid shared by all sessions, so those due
//! together are sent in one wake-up of the runtime.
//! What differs between protocols (frame formats, client requests) sits behind [`Protocol`]:
//! [`legacy`] and [`v2`]. Everything a connection holds is released when the task ends, whatever
//! the reason, by [`Registration`].

pub mod legacy;
pub mod v2;

use std::{
    future::poll_fn,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::Poll,
    time::{Duration, SystemTime},
};

use axum::{
    Error as WsError,
    extract::ws::{CloseFrame, Message, Utf8Bytes},
};
use datastream_protocol::{
    close::{self, CloseCode},
    error::{ErrorCode, ErrorFrame},
};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::{Instant, MissedTickBehavior, Sleep, interval_at, sleep_until};
use tracing::debug;

use crate::{
    auth::Grant,
    broker::{Broker, BrokerError, Latest, Snapshot},
    hub::{ConnId, Event, Framing, Hub, Inbox, Outbox, Queued, Subscriber},
    limits::{FrameRate, IpPermit},
    metrics::Metrics,
    publication::Publication,
    state::AppState,
    topics::TopicFilter,
    wire::Wire,
};

/// Most frames written before one flush; bounds how long a busy connection delays its own
/// reading of client frames.
const MAX_BATCH: usize = 64;

/// Heartbeats fall on multiples of this step (see [`on_heartbeat_grid`]).
const HEARTBEAT_GRID: Duration = Duration::from_millis(100);

/// How long to wait for the client to answer our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Window over which [`Strikes::LIMIT`] bad frames close the connection.
const STRIKE_WINDOW: Duration = Duration::from_secs(60);

/// What a session socket must be: axum's `WebSocket`, or a pair of channels in tests.
pub trait Socket: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send {}
impl<T> Socket for T where T: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send {}

/// The protocol-specific half of a session.
///
/// How publications are framed is the outbox's [`Framing`], shared with the fan-out.
pub trait Protocol: Send {
    /// The heartbeat message.
    fn ping(&self) -> Message;

    /// Handles a client text frame: the frames to send back in order, or the refusal.
    fn on_text(
        &mut self,
        text: &str,
        reg: &mut Registration,
        state: &AppState,
    ) -> impl Future<Output = Result<Vec<Utf8Bytes>, ErrorFrame>> + Send;
}

/// A connection's sites in the hub; unsubscribes from all of them when dropped, so a session that
/// ends for any reason leaves the registry at once.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    conn: ConnId,
    outbox: Arc<Outbox>,
    sites: Vec<Arc<str>>,
    /// The open-connections gauge for this connection's protocol; decremented on drop.
    connections: Gauge,
    /// What the connection's token (or anonymity) allows.
    pub grant: Grant,
    /// The connection's place in its address's count, released with the registration.
    _permit: Option<IpPermit>,
}

/// How a subscription starts ([`Registration::subscribe`]).
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// With what is published from now on (legacy).
    Live,
    /// With the site's stream as it stands, for a replay or a position (v2), and the latest
    /// publications `latest` asks for, read in the same step.
    Snapshot {
        /// Which latest publications to read.
        latest: Latest<'a>,
        /// The subscription asked for deltas.
        delta: bool,
    },
}

impl Registration {
    /// Registers a new connection (no sites yet) and returns the receiver of its publications.
    pub fn new(
        hub: Arc<Hub>,
        queue_bytes: usize,
        framing: Framing,
        connections: Gauge,
        grant: Grant,
        permit: Option<IpPermit>,
        wire: Option<Arc<Wire>>,
    ) -> (Self, Inbox) {
        let (outbox, rx) = Outbox::new(queue_bytes, framing);
        if let Some(wire) = wire {
            outbox.attach(wire);
        }
        let conn = hub.connect(outbox.clone());
        connections.inc();
        (Registration { hub, conn, outbox, sites: Vec::new(), connections, grant, _permit: permit }, rx)
    }

    /// Subscribes to `site` (or replaces the topic filter of an existing subscription) in the one
    /// order that loses and repeats nothing, whichever protocol asks:
    ///
    /// 1. register in the hub: from here on every publication of the site is queued;
    /// 2. make sure this node receives the site's publications (the broker's watch);
    /// 3. with [`Start::Snapshot`], read the site's stream (and, if asked, its topics' latest
    ///    publications) and set the floor at its top: what the snapshot covers (sent as a replay
    ///    or as latest, or predating the subscription) is dropped from the queue and skipped if
    ///    the broker hands it over later.
    ///
    /// A snapshot that cannot be read undoes the subscription. A watch that fails for
    /// [`Start::Live`] leaves the subscription local (the broker's reader subscribes to every
    /// remembered site once it is back), as the original's subscribers never hear of outages.
    pub async fn subscribe(
        &mut self,
        site: Arc<str>,
        topics: Option<TopicFilter>,
        broker: &Broker,
        start: Start<'_>,
    ) -> Result<Option<Snapshot>, BrokerError> {
        let delta = matches!(start, Start::Snapshot { delta: true, .. });
        self.add(site.clone(), topics, delta);
        match start {
            Start::Live => {
                if let Err(e) = broker.watch(&site).await {
                    tracing::warn!(%site, error = %e, "cannot watch site");
                }
                Ok(None)
            }
            Start::Snapshot { latest, .. } => match broker.snapshot_with(&site, latest).await {
                Ok(snapshot) => {
                    self.outbox.set_floor(&site, &snapshot.epoch, snapshot.top + 1);
                    Ok(Some(snapshot))
                }
                Err(e) => {
                    self.remove(&site);
                    Err(e)
                }
            },
        }
    }

    /// Subscribes to `site` in the hub only (step 1 of [`Registration::subscribe`]).
    fn add(&mut self, site: Arc<str>, topics: Option<TopicFilter>, delta: bool) {
        self.hub.subscribe(&site, self.conn, Subscriber { outbox: self.outbox.clone(), topics, delta });
        if !self.sites.contains(&site) {
            self.sites.push(site);
        }
    }

    /// Unsubscribes from `site`; what is still queued for it is dropped.
    pub fn remove(&mut self, site: &str) {
        if let Some(i) = self.sites.iter().position(|s| &**s == site) {
            self.sites.swap_remove(i);
            self.hub.unsubscribe(site, self.conn);
            self.outbox.forget(site);
        }
    }

    /// Starts afresh (or stops) choosing deltas for `site` ([`Outbox::track_deltas`]).
    pub fn track_deltas<'a>(
        &self,
        site: &Arc<str>,
        epoch: &Arc<str>,
        on: bool,
        written: impl IntoIterator<Item = &'a Arc<Publication>>,
    ) {
        self.outbox.track_deltas(site, epoch, on, written);
    }

    /// Sites subscribed to.
    pub fn sites(&self) -> &[Arc<str>] {
        &self.sites
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for site in self.sites.drain(..) {
            self.hub.unsubscribe(&site, self.conn);
        }
        self.hub.disconnect(self.conn);
        self.connections.dec();
    }
}

/// Counts refused client frames and says when a client has refused too many, too fast.
#[derive(Debug)]
struct Strikes {
    count: u32,
    since: Instant,
}

impl Strikes {
    /// Bad frames tolerated per [`STRIKE_WINDOW`].
    const LIMIT: u32 = 10;

    fn new() -> Self {
        Strikes { count: 0, since: Instant::now() }
    }

    /// Records one bad frame; true once the client passed the limit.
    fn strike(&mut self) -> bool {
        if self.since.elapsed() > STRIKE_WINDOW {
            self.count = 0;
            self.since = Instant::now();
        }
        self.count += 1;
        self.count > Self::LIMIT
    }
}

/// Why a session ended.
enum End {
    /// The client vanished, or the socket failed.
    Gone,
    /// The client sent a close frame; the reply is flushed.
    ClosedByClient,
    /// The server closes with this code, reason and metrics label.
    Close(CloseCode, &'static str, &'static str),
}

/// Runs a session until the client leaves, misbehaves, falls behind, or the server shuts down.
/// `greeting` is sent first (v2's hello and URL subscriptions). With the connection's `wire`, the
/// fan-out writes publications to it directly whenever the session has nothing of its own to send
/// first ([`Outbox::give_to_fanout`]); the session then wakes only for client frames, heartbeats, bytes
/// the socket did not take at once, and shutdown.
///
/// Not an `async fn`: its arguments would be stored twice in the future (once as arguments, once
/// as the locals they are moved into), and this future is most of an idle connection's memory.
#[allow(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
pub fn run<S: Socket, P: Protocol>(
    mut socket: S,
    state: Arc<AppState>,
    mut proto: P,
    mut reg: Registration,
    mut rx: Inbox,
    greeting: Vec<Utf8Bytes>,
    wire: Option<Arc<Wire>>,
) -> impl Future<Output = ()> {
    async move {
        if let Some(wire) = &wire {
            wire.set_frames(reg.outbox.max_bytes());
        }
        let mut fanout = false;
        let metrics = state.metrics.clone();
        let outbox = reg.outbox.clone();
        let period = state.config.ping_interval;
        let mut heartbeat = interval_at(on_heartbeat_grid(Instant::now() + period), period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut strikes = Strikes::new();
        let mut drain_at: Option<Instant> = None;
        let mut expiry: Option<(SystemTime, Pin<Box<Sleep>>)> = None;
        let mut rate = FrameRate::new(state.config.client_frame_rate, state.config.client_frame_burst);

        let end = if let Err(end) = Box::pin(within(
            state.config.client_timeout,
            send_all(&mut socket, greeting, wire.as_deref(), outbox.max_bytes()),
        ))
        .await
        {
            end
        } else {
            loop {
                if outbox.is_overflowed() {
                    break End::Close(CloseCode::SlowConsumer, "slow consumer: reconnect", "slow_consumer");
                }
                if !fanout {
                    fanout = outbox.give_to_fanout();
                }
                // One timer for the token's lifetime, replaced only when a refresh changes it: a
                // timer made afresh on every turn would be registered and removed per publication.
                if reg.grant.expires != expiry.as_ref().map(|(at, _)| *at) {
                    expiry = reg.grant.expires.map(|at| (at, Box::pin(sleep_until(deadline(at)))));
                }
                tokio::select! {
                    biased;
                    () = poll_fn(|cx| expiry.as_mut().map_or(Poll::Pending, |(_, timer)| timer.as_mut().poll(cx))) => {
                        break End::Close(CloseCode::TokenExpired, "token expired", "token_expired");
                    }
                    () = sleep_until(drain_at.unwrap_or_else(Instant::now)), if drain_at.is_some() => {
                        // Let what was already queued reach the client before the close frame.
                        outbox.take_from_fanout();
                        while let Ok(p) = rx.try_recv() {
                            if Box::pin(within(state.config.client_timeout, write_batch(&mut socket, p, &mut rx, &outbox, &metrics))).await.is_err() {
                                break;
                            }
                        }
                        break End::Close(CloseCode::GoingAway, "server shutting down", "shutdown");
                    }
                    event = rx.recv() => match event {
                        Event::Publication(p) => {
                            // A client that stops reading fills its TCP window and blocks the write;
                            // it gets as long as a silent client would before it is cut off.
                            if let Err(end) = within(state.config.client_timeout, write_batch(&mut socket, p, &mut rx, &outbox, &metrics)).await {
                                break end;
                            }
                        }
                        Event::Unsent => {
                            let Some(wire) = &wire else { continue };
                            let flush = async { poll_fn(|cx| wire.poll_flush(cx)).await.map_err(WsError::new) };
                            if let Err(end) = Box::pin(within(state.config.client_timeout, flush)).await {
                                break end;
                            }
                        }
                        Event::Overflowed => {
                            break End::Close(CloseCode::SlowConsumer, "slow consumer: reconnect", "slow_consumer");
                        }
                        Event::Closing => {
                            // Spread closes over the drain window so clients do not all come back at once.
                            let window = state.config.drain_window;
                            drain_at = Some(Instant::now() + window.mul_f64(rand::random::<f64>()));
                        }
                    },
                    msg = socket.next() => {
                        last_heard = Instant::now();
                        if fanout && matches!(msg, Some(Ok(Message::Text(_)))) {
                            // A request may change what the client must receive (a subscribe's
                            // replay comes before what is published after it): the session writes
                            // publications until it is answered.
                            outbox.take_from_fanout();
                            fanout = false;
                        }
                        // Every frame a client sends costs the relay a wake, and a ping a pong:
                        // control frames count toward the rate like requests. Past it a request
                        // is refused with an error frame; a control frame gets no reply beyond
                        // the (coalesced) pong, but counts as a bad frame all the same.
                        // (Each frame meets one of the two rate guards, so it takes one token.)
                        // The refusal is boxed: this value's place lives across the request's
                        // await, in every idle connection's task.
                        let reply: Result<Vec<Utf8Bytes>, Box<ErrorFrame>> = match msg {
                            Some(Ok(Message::Text(_))) if !rate.allow() => Err(Box::new(ErrorFrame::new(
                                ErrorCode::RateLimited,
                                "too many frames; slow down",
                            ))),
                            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) if !rate.allow() => {
                                metrics.client_frame_rejected(ErrorCode::RateLimited.as_str());
                                if strikes.strike() {
                                    break End::Close(CloseCode::BadProtocol, "too many invalid frames", "bad_protocol");
                                }
                                continue;
                            }
                            Some(Ok(Message::Text(text))) => {
                                // Boxed: client requests are rare, and their futures (a subscribe reads
                                // history) would otherwise enlarge every idle connection's task.
                                Box::pin(proto.on_text(&text, &mut reg, &state)).await.map_err(Box::new)
                            }
                            Some(Ok(Message::Binary(_))) => Err(Box::new(ErrorFrame::new(
                                ErrorCode::BinaryFrame,
                                "binary frames are not understood; send JSON text",
                            ))),
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(Vec::new()),
                            Some(Err(e)) if is_too_big(&e) => {
                                break End::Close(CloseCode::MessageTooBig, "frame too large", "frame_too_large");
                            }
                            // RFC 6455 §7.1.7: a peer that breaks the framing rules, or sends a text
                            // frame that is not UTF-8, is told why (1002, 1007) before the close.
                            Some(Err(e)) if violation(&e).is_some() => {
                                let (code, reason) = violation(&e).unwrap_or((CloseCode::ProtocolError, "protocol error"));
                                break End::Close(code, reason, "protocol_error");
                            }
                            // tungstenite queued the reply to the client's close frame (RFC 6455
                            // §5.5.1); it goes out with the flush after the loop.
                            Some(Ok(Message::Close(_))) => break End::ClosedByClient,
                            None | Some(Err(_)) => break End::Gone,
                        };
                        let frames = match reply {
                            Ok(frames) => frames,
                            Err(refusal) => {
                                metrics.client_frame_rejected(refusal.code.as_str());
                                debug!(code = refusal.code.as_str(), message = %refusal.message, "refused client frame");
                                if strikes.strike() {
                                    break End::Close(CloseCode::BadProtocol, "too many invalid frames", "bad_protocol");
                                }
                                vec![refusal.to_json().into()]
                            }
                        };
                        // Boxed, like the request's handling: rare, and kept out of every idle
                        // connection's task.
                        if let Err(end) = Box::pin(within(state.config.client_timeout, send_all(&mut socket, frames, wire.as_deref(), outbox.max_bytes()))).await {
                            break end;
                        }
                    }
                    _ = heartbeat.tick() => {
                        if last_heard.elapsed() >= state.config.client_timeout {
                            break End::Close(CloseCode::HeartbeatTimeout, "heartbeat timeout", "heartbeat_timeout");
                        }
                        if let Err(end) = Box::pin(within(state.config.client_timeout, socket.send(proto.ping()))).await {
                            break end;
                        }
                    }
                }
            }
        };
        // No fan-out write after the close frame; leave the hub before the (possibly slow) close
        // handshake.
        outbox.take_from_fanout();
        drop(reg);
        match end {
            End::Close(code, reason, label) => {
                metrics.disconnect(label);
                Box::pin(close(&mut socket, code, reason)).await;
            }
            End::ClosedByClient => {
                let _ = tokio::time::timeout(CLOSE_GRACE, socket.flush()).await;
            }
            End::Gone => {}
        }
    }
}

/// Rounds `due` up to the next step of a grid shared by every session, so that the heartbeats of
/// connections made within one step are sent in one wake-up of the runtime rather than one each.
/// Sessions whose first heartbeats share an instant share all later ones (same interval).
fn on_heartbeat_grid(due: Instant) -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let step = HEARTBEAT_GRID.as_nanos();
    let steps = due.saturating_duration_since(origin).as_nanos().div_ceil(step);
    origin + Duration::from_nanos(u64::try_from(steps * step).unwrap_or(u64::MAX))
}

/// The instant a wall-clock expiry falls at (now, if it has passed).
fn deadline(at: SystemTime) -> Instant {
    Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// Runs one session write with the client's deadline: a client that stops reading gets as long
/// as a silent one before it is cut off (3000), and no write can hold a session for ever.
async fn within(limit: Duration, write: impl Future<Output = Result<(), WsError>>) -> Result<(), End> {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Close(CloseCode::SlowConsumer, "slow consumer: reconnect", "write_timeout")),
    }
}

/// Sends `frames` (a reply, a greeting, a replay) with one flush — or more: whenever what the
/// socket has not taken passes the connection's `budget`, it waits for the socket before adding
/// more, so a large replay never sits whole in memory.
async fn send_all<S: Socket>(
    socket: &mut S,
    frames: Vec<Utf8Bytes>,
    wire: Option<&Wire>,
    budget: usize,
) -> Result<(), WsError> {
    if frames.is_empty() {
        return Ok(());
    }
    for frame in frames {
        socket.feed(Message::Text(frame)).await?;
        if wire.is_some_and(|w| w.unsent() > budget) {
            socket.flush().await?;
        }
    }
    socket.flush().await
}

/// Writes `first` and whatever else is already queued (up to [`MAX_BATCH`]) with one flush, framed
/// as the outbox says ([`Framing::groups`]).
async fn write_batch<S: Socket>(
    socket: &mut S,
    first: Arc<Publication>,
    rx: &mut Inbox,
    outbox: &Outbox,
    metrics: &Metrics,
) -> Result<(), WsError> {
    metrics.delivery_seconds.observe(first.published_at.elapsed().as_secs_f64());
    let mut batch = vec![Queued { publication: first, delta: false }];
    while batch.len() < MAX_BATCH
        && let Ok(publication) = rx.try_recv()
    {
        batch.push(Queued { publication, delta: false });
    }
    // Each as its delta or in full, as the connection's record of what it was sent says.
    outbox.written(&mut batch);
    let framing = outbox.framing();
    for group in framing.groups(&batch) {
        socket.feed(Message::Text(framing.payload(group))).await?;
    }
    socket.flush().await?;
    metrics.messages_out.inc_by(batch.len() as u64);
    Ok(())
}

/// The WebSocket error under a socket read's error.
fn ws_error(err: &WsError) -> Option<&tungstenite::Error> {
    std::error::Error::source(err).and_then(|e| e.downcast_ref::<tungstenite::Error>())
}

/// Whether a socket read failed because the client's frame was over the size limit.
fn is_too_big(err: &WsError) -> bool {
    ws_error(err).is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

/// The close a read error calls for, when the client broke the protocol (rather than vanished).
fn violation(err: &WsError) -> Option<(CloseCode, &'static str)> {
    match ws_error(err)? {
        tungstenite::Error::Utf8(_) => Some((CloseCode::InvalidPayload, "text frame is not valid UTF-8")),
        tungstenite::Error::Protocol(e) => match e {
            // The connection is gone, not misused: nothing to tell.
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake => None,
            _ => Some((CloseCode::ProtocolError, "protocol error")),
        },
        _ => None,
    }
}

/// Sends a close frame and waits briefly for the client's reply, so the close is clean. The whole
/// exchange is bounded: a client that reads nothing cannot hold the session.
async fn close<S: Socket>(socket: &mut S, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame { code: code.code(), reason: Utf8Bytes::from_static(close::fit_reason(reason)) };
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = socket.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_due_within_one_grid_step_share_one_instant() {
        let now = Instant::now();
        let a = on_heartbeat_grid(now + Duration::from_millis(1_000));
        assert!(a >= now + Duration::from_millis(1_000) && a < now + Duration::from_millis(1_000) + HEARTBEAT_GRID);
        // Everything due in (a - step, a] lands on a; just after a, on the next step.
        assert_eq!(on_heartbeat_grid(a - HEARTBEAT_GRID + Duration::from_nanos(1)), a);
        assert_eq!(on_heartbeat_grid(a), a);
        assert_eq!(on_heartbeat_grid(a + Duration::from_nanos(1)), a + HEARTBEAT_GRID);
    }
}
