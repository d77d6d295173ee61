//! The pub/sub reader: one task per node holding the pub/sub connection. It connects (with
//! backoff), resubscribes every watched site, delivers what each missed meanwhile
//! ([`super::catch_up`]), then delivers what the channels bring, in batches; and again after a
//! loss. A loss is logged and counted in `datastream_redis_reconnects_total`.

use std::{sync::Arc, time::Duration};

use datastream_protocol::backoff::Backoff;
use futures_util::{FutureExt, StreamExt, stream};
use redis::aio::{PubSubSink, PubSubStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{RedisBroker, watch::Live};

/// Reconnect delays for the pub/sub connection (and catch-up retries).
pub(super) const RETRY: Backoff = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5) };

/// Most channel messages delivered in one batch before it is flushed, so a steady stream still
/// reaches clients promptly.
const MAX_BATCH: usize = 256;

/// Sites resubscribed, or read back, at once after a reconnect: the commands share a connection,
/// so this bounds what is in flight, not how long anyone waits.
pub(super) const RECONNECT_CONCURRENCY: usize = 32;

/// Marks the pub/sub connection gone when the reader ends, however it ends (stopped, or a panic
/// its supervisor restarts it after), so nothing takes a dead connection's subscriptions for live.
struct ReaderGone<'a>(&'a RedisBroker);

impl Drop for ReaderGone<'_> {
    fn drop(&mut self) {
        let mut watch = self.0.state();
        watch.live = None;
        watch.caught_up = false;
    }
}

impl RedisBroker {
    /// Runs the pub/sub reader until `stop`: connects (with backoff), resubscribes to every
    /// watched site, delivers what each missed, then what arrives; and again after a loss.
    pub async fn run_reader(self: Arc<Self>, stop: CancellationToken) {
        let _gone = ReaderGone(&self);
        let mut attempt = 0;
        let mut reconnect = false;
        loop {
            // Connecting may take several round trips (TCP, TLS, HELLO), each within the timeout.
            let pubsub = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(self.timeout * 5, self.client.get_async_pubsub()) => r,
            };
            let failure = match pubsub {
                Ok(Ok(pubsub)) => {
                    let (sink, stream) = pubsub.split();
                    let since = Instant::now();
                    if !self.listen(sink, stream, reconnect, &stop).await {
                        return;
                    }
                    reconnect = true;
                    // A connection that stayed up a while starts the delays over; one that drops
                    // at once (a flapping network, a killed client) keeps them growing.
                    if since.elapsed() > RETRY.max {
                        attempt = 0;
                    }
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".to_owned()),
            };
            if let Some(e) = failure {
                self.failed("pubsub_connect", &e);
                warn!(error = %e, attempt, "cannot connect the Redis pub/sub connection");
            }
            let delay = RETRY.delay(attempt, rand::random());
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Uses one pub/sub connection until it is lost (true) or `stop` (false).
    async fn listen(
        &self,
        sink: PubSubSink,
        mut stream: PubSubStream,
        reconnect: bool,
        stop: &CancellationToken,
    ) -> bool {
        let lost = CancellationToken::new();
        let id = {
            let mut watch = self.state();
            watch.connections += 1;
            let id = watch.connections;
            watch.live = Some(Live { id, sink, lost: lost.clone() });
            id
        };
        if reconnect {
            info!(connection = id, "Redis pub/sub reconnected");
            self.metrics.redis_reconnects.inc();
        }
        // Subscribed first, then read back: what is published after a site's subscription comes
        // through the channel, what came before it is in the stream; the delivered positions drop
        // what both hold.
        let mut batch = self.hub.batch();
        tokio::select! {
            () = stop.cancelled() => return false,
            () = async {
                self.resubscribe_all().await;
                self.catch_up(&mut batch).await;
            } => {}
        }
        batch.flush();
        self.state().caught_up = true;
        // Redis answered this connection: reachable again, without waiting for the next call.
        self.answered.store(true, std::sync::atomic::Ordering::Relaxed);
        // What has arrived already is delivered as one batch (one write per subscriber the
        // fan-out writes to), flushed before waiting for more.
        let mut batched = 0;
        loop {
            let ready = if batched < MAX_BATCH { stream.next().now_or_never() } else { None };
            let msg = match ready {
                Some(msg) => msg,
                None => {
                    batch.flush();
                    batched = 0;
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = lost.cancelled() => None,
                        m = stream.next() => m,
                    }
                }
            };
            let Some(msg) = msg else { break };
            self.on_message(msg.get_channel_name(), msg.get_payload_bytes(), &mut batch).await;
            batched += 1;
        }
        batch.flush();
        {
            let mut watch = self.state();
            if watch.live.as_ref().is_some_and(|l| l.id == id) {
                watch.live = None;
                watch.caught_up = false;
            }
        }
        warn!(connection = id, "Redis pub/sub connection lost; reconnecting");
        self.failed("pubsub", &"connection lost");
        true
    }

    /// Subscribes every watched site on the live connection.
    async fn resubscribe_all(&self) {
        let sites: Vec<Arc<str>> = self.state().sites.keys().cloned().collect();
        stream::iter(sites)
            .for_each_concurrent(RECONNECT_CONCURRENCY, |site| async move {
                if let Err(e) = self.subscribe(&site, false).await {
                    warn!(%site, error = %e, "cannot resubscribe a watched site; retrying at the next sweep");
                }
            })
            .await;
    }
}
