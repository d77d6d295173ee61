//! Which sites this node listens to: a site's channel is subscribed while the node has local
//! subscribers of it, and each site's SUBSCRIBE / UNSUBSCRIBE is ordered by a lock of its own, so
//! a slow Redis delays the subscribers of one site by at most the Redis timeout, never the whole
//! node. Per watched site the node also keeps the position up to which its local subscribers have
//! everything, which catch-up and gap filling ([`super::catch_up`]) start from.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, MutexGuard},
    time::Duration,
};

use redis::aio::PubSubSink;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::RedisBroker;
use crate::{broker::BrokerError, publication::Position};

/// The watched sites and the pub/sub connection. Never held across a Redis call.
#[derive(Debug, Default)]
pub(super) struct Watch {
    /// Sites with local subscribers (or that had them at the last sweep).
    pub(super) sites: HashMap<Arc<str>, Site>,
    /// The pub/sub connection, while it is up.
    pub(super) live: Option<Live>,
    /// Pub/sub connections made so far; numbers each, so a subscription confirmed on an earlier
    /// connection is not taken for one on the current.
    pub(super) connections: u64,
    /// Whether the current connection has resubscribed every site and delivered what each missed.
    pub(super) caught_up: bool,
}

/// The pub/sub connection in use.
#[derive(Clone)]
pub(super) struct Live {
    /// Its number ([`Watch::connections`] when it was made).
    pub(super) id: u64,
    /// Sends its SUBSCRIBE / UNSUBSCRIBE; cloned to be used outside the lock.
    pub(super) sink: PubSubSink,
    /// Cancelled when the sweep finds it no longer answering, so the reader drops it and
    /// reconnects even though its socket never closed.
    pub(super) lost: CancellationToken,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live").field("id", &self.id).finish_non_exhaustive()
    }
}

/// One watched site.
#[derive(Debug, Default)]
pub(super) struct Site {
    /// Held across this site's SUBSCRIBE or UNSUBSCRIBE, so they reach Redis in the order they
    /// were decided; no other site waits for it.
    op: Arc<tokio::sync::Mutex<()>>,
    /// The connection on which Redis confirmed the subscription.
    subscribed_on: Option<u64>,
    /// Subscribes that failed so far: a watcher that queued behind one that failed fails at once
    /// instead of adding its own timeout to the queue.
    failures: u64,
    /// Set while the sweep drops the site, so a watcher arriving meanwhile subscribes it again.
    leaving: bool,
    /// Position up to which local subscribers have every publication they are owed: the last one
    /// delivered, or the site's position just before the node subscribed. `None` if unknown.
    pub(super) delivered: Option<Position>,
}

impl RedisBroker {
    pub(super) fn state(&self) -> MutexGuard<'_, Watch> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts listening to `site`'s channel if this node does not yet; returns once Redis has
    /// confirmed the subscription, so nothing published after it is missed. If the pub/sub
    /// connection is down, the site is still remembered (and an error returned): the reader
    /// subscribes to every remembered site as soon as it is connected again.
    pub async fn watch(&self, site: &Arc<str>) -> Result<(), BrokerError> {
        {
            let mut watch = self.state();
            let live = watch.live.as_ref().map(|l| l.id);
            let entry = watch.sites.entry(site.clone()).or_default();
            if live.is_some() && entry.subscribed_on == live && !entry.leaving {
                return Ok(());
            }
        }
        self.subscribe(site, true).await
    }

    /// Subscribes `site` on the live connection unless it is already. `remember`: add the site if
    /// it is not watched (a watcher), rather than leave it dropped (the reader resubscribing).
    pub(super) async fn subscribe(&self, site: &Arc<str>, remember: bool) -> Result<(), BrokerError> {
        loop {
            let (op, failures) = {
                let mut watch = self.state();
                let entry = match watch.sites.get_mut(site) {
                    Some(entry) => entry,
                    None if remember => watch.sites.entry(site.clone()).or_default(),
                    None => return Ok(()),
                };
                (entry.op.clone(), entry.failures)
            };
            let _op = op.lock().await;
            let (live, needs_baseline) = {
                let watch = self.state();
                // Dropped by the sweep while this waited: look again.
                let Some(entry) = watch.sites.get(site).filter(|e| Arc::ptr_eq(&e.op, &op)) else { continue };
                let Some(live) = watch.live.clone() else {
                    drop(watch);
                    return Err(self.failed("subscribe", &"pub/sub connection down"));
                };
                if entry.subscribed_on == Some(live.id) {
                    return Ok(());
                }
                if entry.failures != failures {
                    return Err(BrokerError::Unavailable("Redis subscribe failed".into()));
                }
                (live, entry.delivered.is_none())
            };
            if needs_baseline {
                // Read before subscribing: whatever is published after it comes through the
                // channel, or is filled from the stream once a later publication (or a
                // reconnect) shows it missing.
                if let Ok(top) = self.read_top(site).await {
                    let mut watch = self.state();
                    if let Some(entry) = watch.sites.get_mut(site)
                        && entry.delivered.is_none()
                    {
                        entry.delivered = Some(top);
                    }
                }
            }
            let mut sink = live.sink.clone();
            let result = self.call("subscribe", sink.subscribe(self.keys.channel(site))).await;
            if let Some(entry) = self.state().sites.get_mut(site) {
                match result {
                    Ok(()) => entry.subscribed_on = Some(live.id),
                    Err(_) => entry.failures += 1,
                }
            }
            return result;
        }
    }

    /// Records that local subscribers of `site` have everything up to `position`.
    pub(super) fn set_delivered(&self, site: &str, position: Position) {
        if let Some(entry) = self.state().sites.get_mut(site) {
            entry.delivered = Some(position);
        }
    }

    /// Waits (at most `limit`) until the pub/sub connection is up, every watched site
    /// subscribed and caught up; false if it is not.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.state().caught_up {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Brings the subscriptions in line with local subscribers: stops listening to sites that no
    /// longer have any, and retries those whose subscribe failed on the current connection.
    pub async fn unwatch_idle(&self) {
        let (idle, pending) = {
            let watch = self.state();
            let live = watch.live.as_ref().map(|l| l.id);
            let mut idle = Vec::new();
            let mut pending = Vec::new();
            for (site, entry) in &watch.sites {
                if self.hub.subscriber_count(site) == 0 {
                    idle.push((site.clone(), entry.op.clone()));
                } else if live.is_some() && entry.subscribed_on != live {
                    pending.push(site.clone());
                }
            }
            (idle, pending)
        };
        for (site, op) in idle {
            let _op = op.lock().await;
            let live = {
                let mut watch = self.state();
                let live = watch.live.clone();
                let Some(entry) = watch.sites.get_mut(&site).filter(|e| Arc::ptr_eq(&e.op, &op)) else { continue };
                // A subscriber may have come since the list was made; a later one finds
                // `leaving` set and subscribes again once this is done.
                if self.hub.subscriber_count(&site) > 0 {
                    continue;
                }
                entry.leaving = true;
                live
            };
            let done = match live {
                Some(live) => {
                    let mut sink = live.sink.clone();
                    self.call("unsubscribe", sink.unsubscribe(self.keys.channel(&site))).await.is_ok()
                }
                // The next connection subscribes only to the sites still listed.
                None => true,
            };
            let mut watch = self.state();
            if done {
                watch.sites.remove(&site);
            } else if let Some(entry) = watch.sites.get_mut(&site) {
                // Whether Redis still sends it is unknown: the next watcher subscribes again, the
                // next sweep retries.
                entry.leaving = false;
                entry.subscribed_on = None;
            }
        }
        for site in pending {
            if let Err(e) = self.subscribe(&site, false).await {
                warn!(%site, error = %e, "cannot subscribe to a watched site; retrying at the next sweep");
            }
        }
    }
}
