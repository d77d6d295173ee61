//! The local subscriber registry and fan-out.
//!
//! The hub maps each site to the connections on this node subscribed to it. Delivering a
//! publication walks that site's subscribers under a read lock and pushes one shared reference into
//! each connection's [`Outbox`]; no socket I/O happens here, so a slow client never delays the
//! others. Sites are spread over shards so publishes to different sites do not contend. The hub
//! also knows every open connection, subscribed or not, so that shutdown can tell each one to
//! close ([`Hub::close_all`]) without every session polling a shared signal on each wake.

use std::{
    collections::{HashMap, VecDeque},
    future::poll_fn,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::Poll,
};

use futures_util::task::AtomicWaker;

use crate::{metrics::Metrics, publication::Publication};

/// Identifies one WebSocket connection within this process.
pub type ConnId = u64;

const SHARDS: usize = 32;

/// A connection's send queue: unbounded in count but capped in bytes.
///
/// Passing the cap sets [`Outbox::is_overflowed`] and drops everything after it; the session,
/// which always has queued work at that point and so checks the flag on its next turn, then
/// closes the connection with the "slow consumer" code so the client reconnects and recovers
/// from history instead of holding memory on the server.
#[derive(Debug)]
pub struct Outbox {
    /// Allocates nothing until the first publication: most connections are idle most of the
    /// time, and per-connection memory is what limits a node.
    queue: Mutex<VecDeque<Arc<Publication>>>,
    /// Wakes the session when the queue gains an item or the server asks it to close. One
    /// consumer, so a lock-free waker slot rather than a waiter list behind a mutex.
    waker: AtomicWaker,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// A plain flag: checked once per delivery, it must cost no more than an atomic load.
    overflowed: AtomicBool,
    /// Set by [`Hub::close_all`]: the server is shutting down and the session should close.
    closing: AtomicBool,
}

impl Outbox {
    /// Creates an outbox capped at `max_bytes` and the receiving end its session reads.
    pub fn new(max_bytes: usize) -> (Arc<Outbox>, Inbox) {
        let outbox = Arc::new(Outbox {
            queue: Mutex::default(),
            waker: AtomicWaker::new(),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            overflowed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        });
        (outbox.clone(), Inbox { outbox, closing_seen: false })
    }

    /// Queues `publication`; false if it was dropped (cap passed, or the session is gone).
    pub fn push(&self, publication: &Arc<Publication>) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let len = publication.queued_len();
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.overflowed.store(true, Ordering::Relaxed);
            return false;
        }
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push_back(publication.clone());
        self.waker.wake();
        true
    }

    /// Asks the session to close (shutdown); it sees [`Event::Closing`] once.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Records that the session wrote (or discarded) `publication`, freeing its share of the cap.
    pub fn taken(&self, publication: &Publication) {
        self.queued_bytes.fetch_sub(publication.queued_len(), Ordering::Relaxed);
    }

    /// Whether the byte cap has been passed.
    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}

/// The topics a subscription wants; evaluated here so unwanted publications are never queued.
pub type TopicFilter = Arc<[Arc<str>]>;

/// The session's end of an [`Outbox`].
#[derive(Debug)]
pub struct Inbox {
    outbox: Arc<Outbox>,
    /// [`Event::Closing`] was returned already.
    closing_seen: bool,
}

/// [`Inbox::try_recv`] found nothing queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

/// What wakes a session from its [`Inbox`].
#[derive(Debug)]
pub enum Event {
    /// The next queued publication.
    Publication(Arc<Publication>),
    /// The server asked the connection to close ([`Outbox::close`]); returned once.
    Closing,
}

impl Inbox {
    /// The oldest queued publication, if any.
    pub fn try_recv(&mut self) -> Result<Arc<Publication>, Empty> {
        self.outbox.queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front().ok_or(Empty)
    }

    /// Waits for the next publication or the request to close, whichever comes first. Cancel-safe:
    /// an item is only taken in the poll that returns it.
    pub async fn recv(&mut self) -> Event {
        poll_fn(|cx| {
            if let Some(event) = self.ready() {
                return Poll::Ready(event);
            }
            // Register, then look again: a push between the first look and the registration
            // would otherwise go unnoticed.
            self.outbox.waker.register(cx.waker());
            self.ready().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    fn ready(&mut self) -> Option<Event> {
        if !self.closing_seen && self.outbox.closing.load(Ordering::Acquire) {
            self.closing_seen = true;
            return Some(Event::Closing);
        }
        self.try_recv().ok().map(Event::Publication)
    }
}

/// One connection's subscription to one site.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Where this connection's publications go.
    pub outbox: Arc<Outbox>,
    /// Only these topics; `None`: every topic.
    pub topics: Option<TopicFilter>,
}

impl Subscriber {
    /// Whether this subscription wants `topic`.
    pub fn wants(&self, topic: &str) -> bool {
        wants(self.topics.as_deref(), topic)
    }
}

/// Whether a subscription with filter `topics` wants `topic`.
pub fn wants(topics: Option<&[Arc<str>]>, topic: &str) -> bool {
    topics.is_none_or(|t| t.iter().any(|x| &**x == topic))
}

type Shard = RwLock<HashMap<Arc<str>, HashMap<ConnId, Subscriber>>>;
type ConnectionShard = Mutex<HashMap<ConnId, Arc<Outbox>>>;

/// The registry of local subscribers, by site.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Shard]>,
    /// Every open connection's outbox, subscribed or not, sharded by id: what
    /// [`Hub::close_all`] reaches.
    connections: Box<[ConnectionShard]>,
    hasher: RandomState,
    next_conn: AtomicU64,
    /// Set by [`Hub::close_all`]: connections registered afterwards are asked to close at once.
    closing: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// Creates an empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            connections: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            next_conn: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            metrics,
        }
    }

    /// Registers a new connection's outbox; returns its id. Undo with [`Hub::disconnect`].
    pub fn connect(&self, outbox: Arc<Outbox>) -> ConnId {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.connection_shard(conn).insert(conn, outbox.clone());
        // Checked after the insert, under whose lock `close_all` may have passed already.
        if self.closing.load(Ordering::Acquire) {
            outbox.close();
        }
        conn
    }

    /// Forgets a connection registered with [`Hub::connect`].
    pub fn disconnect(&self, conn: ConnId) {
        self.connection_shard(conn).remove(&conn);
    }

    /// Asks every open connection to close ([`Outbox::close`]); returns how many were asked.
    pub fn close_all(&self) -> usize {
        self.closing.store(true, Ordering::Release);
        let mut asked = 0;
        for shard in &self.connections {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for outbox in shard.values() {
                outbox.close();
            }
            asked += shard.len();
        }
        asked
    }

    fn connection_shard(&self, conn: ConnId) -> std::sync::MutexGuard<'_, HashMap<ConnId, Arc<Outbox>>> {
        let i = conn as usize % self.connections.len();
        self.connections[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shard(&self, site: &str) -> &Shard {
        let i = self.hasher.hash_one(site) as usize % self.shards.len();
        &self.shards[i]
    }

    /// Adds (or replaces) `conn`'s subscription to `site`. Returns true if `site` had no local
    /// subscriber before.
    pub fn subscribe(&self, site: &Arc<str>, conn: ConnId, subscriber: Subscriber) -> bool {
        let mut shard = self.shard(site).write().unwrap_or_else(|e| e.into_inner());
        let subs = shard.entry(site.clone()).or_default();
        let first = subs.is_empty();
        if subs.insert(conn, subscriber).is_none() {
            self.metrics.subscriptions.inc();
            if first {
                self.metrics.sites.inc();
            }
        }
        first
    }

    /// Removes `conn`'s subscription to `site`. Returns true if `site` has no local subscriber left.
    pub fn unsubscribe(&self, site: &str, conn: ConnId) -> bool {
        let mut shard = self.shard(site).write().unwrap_or_else(|e| e.into_inner());
        let Some(subs) = shard.get_mut(site) else { return false };
        if subs.remove(&conn).is_none() {
            return false;
        }
        self.metrics.subscriptions.dec();
        if subs.is_empty() {
            shard.remove(site);
            self.metrics.sites.dec();
            return true;
        }
        false
    }

    /// Queues `publication` for every local subscriber of its site; returns how many took it.
    pub fn deliver(&self, publication: &Arc<Publication>) -> usize {
        let shard = self.shard(&publication.site).read().unwrap_or_else(|e| e.into_inner());
        let Some(subs) = shard.get(&publication.site) else { return 0 };
        let mut queued = 0;
        let mut dropped = 0;
        for sub in subs.values() {
            if !sub.wants(&publication.topic) {
                continue;
            }
            if sub.outbox.push(publication) {
                queued += 1;
            } else {
                dropped += 1;
            }
        }
        drop(shard);
        if dropped > 0 {
            self.metrics.dropped("slow_consumer", dropped);
        }
        self.metrics.fanout_seconds.observe(publication.published_at.elapsed().as_secs_f64());
        queued
    }

    /// Number of local subscribers of `site`.
    pub fn subscriber_count(&self, site: &str) -> usize {
        let shard = self.shard(site).read().unwrap_or_else(|e| e.into_inner());
        shard.get(site).map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publication::{Position, Validator};
    use datastream_protocol::NameRules;

    fn publication(site: &str, data: &str) -> Arc<Publication> {
        let v = Validator { names: NameRules::default(), max_message_bytes: 1 << 20 };
        let req = v.parse(&format!(r#"{{"site":"{site}","topic":"t","data":{data}}}"#)).unwrap();
        Arc::new(Publication::new(&req, Position { epoch: "e".into(), offset: 1 }))
    }

    #[test]
    fn delivers_to_the_site_only_and_tracks_first_and_last() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (a, mut rx_a) = Outbox::new(1 << 20);
        let (b, mut rx_b) = Outbox::new(1 << 20);
        let mrc: Arc<str> = "mrc".into();
        let saf: Arc<str> = "saf".into();
        assert!(hub.subscribe(&mrc, 1, Subscriber { outbox: a.clone(), topics: None }));
        assert!(!hub.subscribe(&mrc, 1, Subscriber { outbox: a.clone(), topics: None }), "re-subscribe is not first");
        assert!(hub.subscribe(&saf, 2, Subscriber { outbox: b, topics: None }));
        assert_eq!(hub.deliver(&publication("mrc", "1")), 1);
        assert_eq!(rx_a.try_recv().unwrap().site.as_ref(), "mrc");
        assert!(rx_b.try_recv().is_err());
        assert!(hub.unsubscribe("mrc", 1));
        assert!(!hub.unsubscribe("mrc", 1));
        assert_eq!(hub.deliver(&publication("mrc", "2")), 0);
        assert_eq!(hub.subscriber_count("saf"), 1);
    }

    #[test]
    fn outbox_trips_once_the_byte_cap_is_passed() {
        let (outbox, mut rx) = Outbox::new(100);
        let p = publication("mrc", &format!("\"{}\"", "x".repeat(20)));
        let len = p.queued_len();
        let fits = 100 / len;
        for _ in 0..fits {
            assert!(outbox.push(&p));
        }
        assert!(!outbox.push(&p), "over the cap is refused");
        assert!(outbox.is_overflowed());
        // Once tripped, nothing more is queued even after the session drained.
        while let Ok(p) = rx.try_recv() {
            outbox.taken(&p);
        }
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(!outbox.push(&p));
    }

    #[tokio::test]
    async fn close_all_reaches_every_connection_once_including_later_ones() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (subscribed, mut rx_subscribed) = Outbox::new(1 << 20);
        let (idle, mut rx_idle) = Outbox::new(1 << 20);
        let a = hub.connect(subscribed.clone());
        let b = hub.connect(idle);
        hub.subscribe(&Arc::from("mrc"), a, Subscriber { outbox: subscribed, topics: None });
        assert_eq!(hub.close_all(), 2);
        assert!(matches!(rx_subscribed.recv().await, Event::Closing));
        assert!(matches!(rx_idle.recv().await, Event::Closing));
        // Asked once: what follows is publications, not the request again.
        hub.deliver(&publication("mrc", "1"));
        assert!(matches!(rx_subscribed.recv().await, Event::Publication(_)));
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), rx_idle.recv()).await;
        assert!(again.is_err(), "closing is reported once");

        // A connection that registers while the server is closing is asked at once.
        let (late, mut rx_late) = Outbox::new(1 << 20);
        let c = hub.connect(late);
        assert!(matches!(rx_late.recv().await, Event::Closing));
        for conn in [a, b, c] {
            hub.disconnect(conn);
        }
        assert_eq!(hub.close_all(), 0);
    }

    #[tokio::test]
    async fn a_waiting_session_is_woken_by_a_push() {
        let (outbox, mut rx) = Outbox::new(1 << 20);
        let waiter = tokio::spawn(async move { matches!(rx.recv().await, Event::Publication(_)) });
        tokio::task::yield_now().await;
        assert!(outbox.push(&publication("mrc", "1")));
        assert!(tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap());
    }
}
