//! One task per WebSocket connection.
//!
//! A session owns its socket and runs a single `select!` over: shutdown, its outbox overflowing,
//! publications queued by the hub, frames from the client, and the heartbeat tick. Everything a
//! connection holds is released when the task ends, whatever the reason, by [`Registration`].

pub mod legacy;

use std::{sync::Arc, time::Duration};

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use axum::{
    Error as WsError,
    extract::ws::{CloseFrame, Message, Utf8Bytes},
};
use datastream_protocol::close::CloseCode;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;

use crate::{
    hub::{ConnId, Hub, Outbox, Subscriber},
    metrics::Metrics,
    publication::Publication,
};

/// Most frames written before one flush; bounds how long a busy connection delays its own
/// reading of client frames.
const MAX_BATCH: usize = 64;

/// How long to wait for the client to answer our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Window over which [`Strikes::LIMIT`] bad frames close the connection.
const STRIKE_WINDOW: Duration = Duration::from_secs(60);

/// What a session socket must be: axum's `WebSocket`, or a pair of channels in tests.
pub trait Socket: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send {}
impl<T> Socket for T where T: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send {}

/// A connection's sites in the hub; unsubscribes from all of them when dropped, so a session that
/// ends for any reason leaves the registry at once.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    conn: ConnId,
    outbox: Arc<Outbox>,
    sites: Vec<Arc<str>>,
    /// The open-connections gauge for this connection's protocol; decremented on drop.
    connections: Gauge,
}

impl Registration {
    /// Registers a new connection (no sites yet) and returns the receiver of its publications.
    pub fn new(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        queue_bytes: usize,
        connections: Gauge,
    ) -> (Self, mpsc::UnboundedReceiver<Arc<Publication>>) {
        let (outbox, rx) = Outbox::new(queue_bytes);
        let conn = hub.next_conn_id();
        connections.inc();
        (Registration { hub, metrics, conn, outbox, sites: Vec::new(), connections }, rx)
    }

    /// The connection's outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Subscribes to `site` (no-op if already subscribed).
    pub fn add(&mut self, site: Arc<str>) {
        if self.sites.contains(&site) {
            return;
        }
        self.hub.subscribe(&site, self.conn, Subscriber { outbox: self.outbox.clone() });
        self.sites.push(site);
    }

    /// Unsubscribes from `site`.
    pub fn remove(&mut self, site: &str) {
        if let Some(i) = self.sites.iter().position(|s| &**s == site) {
            self.sites.swap_remove(i);
            self.hub.unsubscribe(site, self.conn);
        }
    }

    /// Sites subscribed to.
    pub fn sites(&self) -> &[Arc<str>] {
        &self.sites
    }

    /// Metrics handle.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for site in self.sites.drain(..) {
            self.hub.unsubscribe(&site, self.conn);
        }
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

/// Writes `first` and whatever else is already queued (up to [`MAX_BATCH`]) with one flush.
/// `frame` picks the bytes to send for each publication.
async fn write_batch<S: Socket>(
    socket: &mut S,
    first: Arc<Publication>,
    rx: &mut mpsc::UnboundedReceiver<Arc<Publication>>,
    outbox: &Outbox,
    metrics: &Metrics,
    frame: impl Fn(&Publication) -> Option<Utf8Bytes>,
) -> Result<(), WsError> {
    metrics.delivery_seconds.observe(first.published_at.elapsed().as_secs_f64());
    let mut next = Some(first);
    let mut written = 0u64;
    let mut taken = 0;
    while let Some(publication) = next.take() {
        outbox.taken(&publication);
        taken += 1;
        if let Some(bytes) = frame(&publication) {
            socket.feed(Message::Text(bytes)).await?;
            written += 1;
        }
        if taken < MAX_BATCH {
            next = rx.try_recv().ok();
        }
    }
    socket.flush().await?;
    metrics.messages_out.inc_by(written);
    Ok(())
}

/// Whether a socket read failed because the client's frame was over the size limit.
fn is_too_big(err: &WsError) -> bool {
    std::error::Error::source(err)
        .and_then(|e| e.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

/// Sends a close frame and waits briefly for the client's reply, so the close is clean.
async fn close<S: Socket>(socket: &mut S, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame { code: code.code(), reason: Utf8Bytes::from_static(reason) };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(msg)) = socket.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
