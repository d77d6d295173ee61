//! The local subscriber registry and fan-out.
//!
//! The hub maps each site to the connections on this node subscribed to it. Delivering a
//! publication walks that site's subscribers under a read lock and pushes one shared reference into
//! each connection's [`Outbox`]. Publications are delivered in a [`Batch`]; when it is flushed, the
//! fan-out's writers ([`Hub::run_writer`], one task per core) write each connection's share of it
//! to the connection's socket with one non-blocking write (or leave it to the connection's session,
//! see [`Outbox`]). A write never waits: what the
//! kernel does not take stays in the connection's backlog, so a slow client never delays the
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

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;

use crate::{
    metrics::Metrics,
    publication::Publication,
    wire::{Wire, text_frame},
};

/// Identifies one WebSocket connection within this process.
pub type ConnId = u64;

const SHARDS: usize = 32;

/// Connections a fan-out writer writes to before it lets other tasks run.
const WRITES_PER_TURN: usize = 256;

/// How a connection's publications are framed when the fan-out writes them itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One publication per text frame, as its legacy frame.
    Legacy,
    /// Consecutive publications share one text frame, their v2 frames separated by `\n`, up to
    /// [`MAX_PACKED_BYTES`].
    Packed,
}

impl Framing {
    /// The text a publication is sent as.
    pub fn text(self, p: &Publication) -> &Utf8Bytes {
        match self {
            Framing::Legacy => p.legacy_frame(),
            Framing::Packed => p.v2_frame(),
        }
    }

    /// Splits consecutive publications into the groups that each go out as one text frame (their
    /// texts joined with `\n`): one each for [`Framing::Legacy`]; for [`Framing::Packed`], as many
    /// as fit in [`MAX_PACKED_BYTES`], a larger one alone.
    pub fn groups(self, items: &[Arc<Publication>]) -> impl Iterator<Item = &[Arc<Publication>]> {
        let mut rest = items;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let n = match self {
                Framing::Legacy => 1,
                Framing::Packed => {
                    let (mut n, mut len) = (0, 0);
                    for p in rest {
                        let added = self.text(p).len() + usize::from(n > 0);
                        if n > 0 && len + added > MAX_PACKED_BYTES {
                            break;
                        }
                        (n, len) = (n + 1, len + added);
                    }
                    n
                }
            };
            let (group, tail) = rest.split_at(n);
            rest = tail;
            Some(group)
        })
    }
}

/// Largest text frame that packing builds; a publication is never split, so a larger one still
/// goes out whole in a frame of its own.
pub const MAX_PACKED_BYTES: usize = 64 * 1024;

/// A connection's send queue: unbounded in count but capped in bytes.
///
/// Publications reach the client one of two ways. While the session lets it ([`Outbox::go_direct`]:
/// nothing of its own to send first), the fan-out writes them to the connection's [`Wire`] itself,
/// once per subscriber per [`Batch`] of publications, and the session is not woken at all. Otherwise
/// (the session is answering a request, catching up after a subscribe, or has no wire) they wait in
/// the queue and the session is woken to write them.
///
/// Passing the cap (queued bytes, or the wire's unsent backlog) sets [`Outbox::is_overflowed`] and
/// drops everything after it; the session, which is woken at that point, then closes the connection
/// with the "slow consumer" code so the client reconnects and recovers from history instead of
/// holding memory on the server.
#[derive(Debug)]
pub struct Outbox {
    /// Allocates nothing until the first publication: most connections are idle most of the
    /// time, and per-connection memory is what limits a node.
    queue: Mutex<Queue>,
    /// Wakes the session when the queue gains an item it must write, the wire has a backlog to
    /// send, or the server asks it to close. One consumer, so a lock-free waker slot rather than
    /// a waiter list behind a mutex.
    waker: AtomicWaker,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    framing: Framing,
    /// Which of the fan-out's writers writes to this connection.
    writer: usize,
    /// A plain flag: checked once per delivery, it must cost no more than an atomic load.
    overflowed: AtomicBool,
    /// Set by [`Hub::close_all`]: the server is shutting down and the session should close.
    closing: AtomicBool,
    /// A fan-out write left part of its bytes in the wire's backlog, for the session to send.
    backlog: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Arc<Publication>>,
    /// Where the fan-out writes, while the session lets it; `None`: the session writes.
    direct: Option<Arc<Wire>>,
    /// Per site, the stream position below which publications were already sent.
    floors: Vec<Floor>,
}

/// Publications of `site` in `epoch` below offset `next` were sent already (in a subscribe's
/// replay, or counted in its snapshot): the broker may still hand them over late (a Redis
/// channel lags behind the stream it is read with), and they are skipped.
#[derive(Debug)]
struct Floor {
    site: Arc<str>,
    epoch: Arc<str>,
    next: u64,
}

impl Floor {
    fn holds(&self, p: &Publication) -> bool {
        p.position.offset < self.next
            && (Arc::ptr_eq(&self.site, &p.site) || self.site == p.site)
            && (Arc::ptr_eq(&self.epoch, &p.position.epoch) || self.epoch == p.position.epoch)
    }
}

impl Outbox {
    /// Creates an outbox capped at `max_bytes` and the receiving end its session reads.
    pub fn new(max_bytes: usize, framing: Framing) -> (Arc<Outbox>, Inbox) {
        static NEXT_WRITER: AtomicUsize = AtomicUsize::new(0);
        let outbox = Arc::new(Outbox {
            writer: NEXT_WRITER.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::default(),
            waker: AtomicWaker::new(),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            framing,
            overflowed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            backlog: AtomicBool::new(false),
        });
        (outbox.clone(), Inbox { outbox, closing_seen: false })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `publication`; false if it was dropped (cap passed). If the fan-out may write to
    /// this connection, the write is left to `batch`; otherwise the session is woken. A
    /// publication below a [floor](Outbox::set_floor) was sent already and is skipped.
    fn push(self: &Arc<Self>, publication: &Arc<Publication>, batch: &mut Batch) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let mut queue = self.queue();
        if queue.floors.iter().any(|f| f.holds(publication)) {
            return true;
        }
        let len = publication.queued_len();
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before + len > self.max_bytes {
            drop(queue);
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.overflowed.store(true, Ordering::Relaxed);
            self.waker.wake();
            return false;
        }
        let first = queue.items.is_empty();
        queue.items.push_back(publication.clone());
        let direct = queue.direct.is_some();
        drop(queue);
        if !direct {
            self.waker.wake();
        } else if first {
            // Later publications join this one in the same write.
            batch.dirty.push(self.clone());
        }
        true
    }

    /// Writes what is queued to the wire, if the session still lets the fan-out write; wakes the
    /// session if it does not, or if part of the write is left in the wire's backlog. Returns how
    /// many publications were written.
    fn write_direct(&self, scratch: &mut Vec<u8>, metrics: &Metrics) -> usize {
        // Held across the write: the session cannot take over (or write the queue itself) in
        // the middle of it, so the client sees every publication once and in order.
        let mut guard = self.queue();
        let queue = &mut *guard;
        let Some(wire) = &queue.direct else {
            drop(guard);
            self.waker.wake();
            return 0;
        };
        let items = queue.items.make_contiguous();
        let Some(first) = items.first() else { return 0 };
        metrics.delivery_seconds.observe(first.published_at.elapsed().as_secs_f64());
        let count = items.len();
        let bytes: usize = items.iter().map(|p| p.queued_len()).sum();
        scratch.clear();
        for group in self.framing.groups(items) {
            text_frame(scratch, group.iter().map(|p| self.framing.text(p).as_bytes()));
        }
        let written = wire.write_whole(scratch);
        queue.items.clear();
        drop(guard);
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        match written {
            Ok(0) => {}
            Ok(backlog) => {
                if backlog > self.max_bytes {
                    self.overflowed.store(true, Ordering::Relaxed);
                }
                self.backlog.store(true, Ordering::Release);
                self.waker.wake();
            }
            // The session sees the failure on its own socket.
            Err(_) => self.waker.wake(),
        }
        count
    }

    /// Lets the fan-out write to `wire` from now on, if nothing is queued for the session to
    /// write first; true if it does.
    pub fn go_direct(&self, wire: &Arc<Wire>) -> bool {
        let mut queue = self.queue();
        if !queue.items.is_empty() {
            return false;
        }
        queue.direct = Some(wire.clone());
        true
    }

    /// Stops the fan-out writing to the wire: once this returns, no fan-out write is under way
    /// and publications wait in the queue for the session.
    pub fn go_session(&self) {
        self.queue().direct = None;
    }

    /// Skips publications of `site` in `epoch` below offset `next` (see [`Floor`]): those queued
    /// already are dropped, later ones are not queued.
    pub fn set_floor(&self, site: &Arc<str>, epoch: &Arc<str>, next: u64) {
        let floor = Floor { site: site.clone(), epoch: epoch.clone(), next };
        let mut queue = self.queue();
        let freed = drain_where(&mut queue.items, |p| floor.holds(p));
        self.queued_bytes.fetch_sub(freed, Ordering::Relaxed);
        queue.floors.retain(|f| f.site != *site);
        // Most connections have one or two: no room for more than needed.
        queue.floors.reserve_exact(1);
        queue.floors.push(floor);
    }

    /// Removes queued publications of `site` and its floor (the connection no longer subscribes
    /// to it).
    pub fn forget(&self, site: &str) {
        let mut queue = self.queue();
        queue.floors.retain(|f| &*f.site != site);
        let freed = drain_where(&mut queue.items, |p| &*p.site == site);
        self.queued_bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// How this connection's publications are framed.
    pub fn framing(&self) -> Framing {
        self.framing
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

/// Removes the publications `drop` picks from `items`; returns their share of the byte cap.
fn drain_where(items: &mut VecDeque<Arc<Publication>>, drop: impl Fn(&Publication) -> bool) -> usize {
    let mut freed = 0;
    items.retain(|p| {
        let dropped = drop(p);
        if dropped {
            freed += p.queued_len();
        }
        !dropped
    });
    freed
}

/// The connections one or more deliveries left publications for, handed to the [fan-out's
/// writers](Hub::run_writer) when flushed (or dropped): each connection gets one write for all of
/// the batch's publications — or more of them, if the writer gets to it later.
#[derive(Debug)]
pub struct Batch {
    dirty: Vec<Arc<Outbox>>,
    writers: Arc<[Writer]>,
}

impl Batch {
    /// Hands what was delivered to the writers.
    pub fn flush(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        if let [writer] = &*self.writers {
            writer.add(self.dirty.drain(..));
            return;
        }
        let n = self.writers.len();
        for (i, writer) in self.writers.iter().enumerate() {
            writer.add(self.dirty.iter().filter(|o| o.writer % n == i).cloned());
        }
        self.dirty.clear();
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One of the fan-out's writers: the connections it has to write to, and its task's waker.
#[derive(Debug, Default)]
struct Writer {
    pending: Mutex<Vec<Arc<Outbox>>>,
    waker: AtomicWaker,
}

impl Writer {
    fn add(&self, outboxes: impl Iterator<Item = Arc<Outbox>>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let before = pending.len();
        pending.extend(outboxes);
        let added = pending.len() > before;
        drop(pending);
        if added {
            self.waker.wake();
        }
    }

    fn has_pending(&self) -> bool {
        !self.pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    fn take(&self, into: &mut Vec<Arc<Outbox>>) {
        std::mem::swap(into, &mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
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
    /// A fan-out write left bytes in the wire's backlog: the session sends them.
    Backlog,
    /// The byte cap was passed ([`Outbox::is_overflowed`]): the session closes the connection.
    Overflowed,
    /// The server asked the connection to close ([`Outbox::close`]); returned once.
    Closing,
}

impl Inbox {
    /// The oldest queued publication, if any is for the session to write (none while the
    /// fan-out writes to the connection: what is queued then is its to write).
    pub fn try_recv(&mut self) -> Result<Arc<Publication>, Empty> {
        let mut queue = self.outbox.queue();
        if queue.direct.is_some() {
            return Err(Empty);
        }
        queue.items.pop_front().ok_or(Empty)
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
        if self.outbox.overflowed.load(Ordering::Relaxed) {
            return Some(Event::Overflowed);
        }
        if self.outbox.backlog.swap(false, Ordering::Acquire) {
            return Some(Event::Backlog);
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
    /// The fan-out's writers, one per core: each writes to its share of the connections.
    writers: Arc<[Writer]>,
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
            writers: (0..std::thread::available_parallelism().map_or(1, |n| n.get()))
                .map(|_| Writer::default())
                .collect(),
            metrics,
        }
    }

    /// Number of the fan-out's writers; run each with [`Hub::run_writer`].
    pub fn writers(&self) -> usize {
        self.writers.len()
    }

    /// Runs writer `index` for as long as the process serves: it writes what batches left for
    /// its connections, one write per connection for everything queued there. Under load,
    /// publications pile up while it writes, and the next write to a connection carries all of
    /// them. It yields every [`WRITES_PER_TURN`] connections, so a large fan-out does not hold up
    /// the rest of the runtime.
    pub async fn run_writer(self: Arc<Self>, index: usize) {
        let mut scratch = Vec::new();
        let mut outboxes = Vec::new();
        loop {
            poll_fn(|cx| {
                let writer = &self.writers[index];
                if writer.has_pending() {
                    return Poll::Ready(());
                }
                writer.waker.register(cx.waker());
                if writer.has_pending() { Poll::Ready(()) } else { Poll::Pending }
            })
            .await;
            self.writers[index].take(&mut outboxes);
            let mut written = 0;
            for (i, outbox) in outboxes.drain(..).enumerate() {
                written += outbox.write_direct(&mut scratch, &self.metrics) as u64;
                if i % WRITES_PER_TURN == WRITES_PER_TURN - 1 {
                    tokio::task::yield_now().await;
                }
            }
            self.metrics.messages_out.inc_by(written);
            if scratch.capacity() > MAX_PACKED_BYTES {
                scratch = Vec::new();
            }
        }
    }

    /// Writes, on the caller's thread, what batches left for every writer (what the writers'
    /// tasks do); returns how many publications were written.
    #[cfg(test)]
    fn write_pending(&self) -> usize {
        let mut scratch = Vec::new();
        let mut outboxes = Vec::new();
        let mut written = 0;
        for writer in self.writers.iter() {
            writer.take(&mut outboxes);
            written += outboxes.drain(..).map(|o| o.write_direct(&mut scratch, &self.metrics)).sum::<usize>();
        }
        written
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

    /// A batch for [`Hub::deliver_to`]: connections it delivers to are written once, when it
    /// is flushed or dropped.
    pub fn batch(&self) -> Batch {
        Batch { dirty: Vec::new(), writers: self.writers.clone() }
    }

    /// Delivers `publication` to every local subscriber of its site in a batch of its own;
    /// returns how many took it.
    #[cfg(test)]
    fn deliver(&self, publication: &Arc<Publication>) -> usize {
        self.deliver_to(publication, &mut self.batch())
    }

    /// Queues `publication` for every local subscriber of its site; those the fan-out writes to
    /// directly are written when `batch` is flushed. Returns how many took it.
    pub fn deliver_to(&self, publication: &Arc<Publication>, batch: &mut Batch) -> usize {
        let shard = self.shard(&publication.site).read().unwrap_or_else(|e| e.into_inner());
        let Some(subs) = shard.get(&publication.site) else { return 0 };
        let mut queued = 0;
        let mut dropped = 0;
        for sub in subs.values() {
            if !sub.wants(&publication.topic) {
                continue;
            }
            if sub.outbox.push(publication, batch) {
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
        let (a, mut rx_a) = Outbox::new(1 << 20, Framing::Legacy);
        let (b, mut rx_b) = Outbox::new(1 << 20, Framing::Legacy);
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
        let (outbox, mut rx) = Outbox::new(100, Framing::Legacy);
        let p = publication("mrc", &format!("\"{}\"", "x".repeat(20)));
        let len = p.queued_len();
        let fits = 100 / len;
        let mut batch = Hub::new(Arc::new(Metrics::new())).batch();
        for _ in 0..fits {
            assert!(outbox.push(&p, &mut batch));
        }
        assert!(!outbox.push(&p, &mut batch), "over the cap is refused");
        assert!(outbox.is_overflowed());
        // Once tripped, nothing more is queued even after the session drained.
        while let Ok(p) = rx.try_recv() {
            outbox.taken(&p);
        }
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(!outbox.push(&p, &mut batch));
    }

    #[tokio::test]
    async fn close_all_reaches_every_connection_once_including_later_ones() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (subscribed, mut rx_subscribed) = Outbox::new(1 << 20, Framing::Legacy);
        let (idle, mut rx_idle) = Outbox::new(1 << 20, Framing::Legacy);
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
        let (late, mut rx_late) = Outbox::new(1 << 20, Framing::Legacy);
        let c = hub.connect(late);
        assert!(matches!(rx_late.recv().await, Event::Closing));
        for conn in [a, b, c] {
            hub.disconnect(conn);
        }
        assert_eq!(hub.close_all(), 0);
    }

    #[tokio::test]
    async fn a_waiting_session_is_woken_by_a_push() {
        let (outbox, mut rx) = Outbox::new(1 << 20, Framing::Legacy);
        let waiter = tokio::spawn(async move { matches!(rx.recv().await, Event::Publication(_)) });
        tokio::task::yield_now().await;
        let mut batch = Hub::new(Arc::new(Metrics::new())).batch();
        assert!(outbox.push(&publication("mrc", "1"), &mut batch));
        assert!(tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap());
    }

    /// A connected pair: the relay's end as a [`Wire`] carrying frames, and the client's end.
    /// `small`: both ends' socket buffers as small as the kernel allows, so a client that does not
    /// read fills them at once.
    async fn wire_pair(small: bool) -> (Arc<Wire>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if small {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        let client = socket.connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        if small {
            socket2::SockRef::from(&server).set_send_buffer_size(4096).unwrap();
        }
        let wire = Arc::new(Wire::new(server));
        wire.set_frames();
        (wire, client)
    }

    /// Reads until `want` text messages have arrived whole; returns them.
    async fn read_messages(client: &mut tokio::net::TcpStream, want: usize) -> Vec<String> {
        use tokio::io::AsyncReadExt;
        let mut bytes = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let got = crate::wire::decode_text_frames(&bytes);
                if got.len() >= want {
                    return got;
                }
                let mut buf = [0u8; 64 * 1024];
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed after {} messages", got.len());
                bytes.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("messages did not arrive")
    }

    fn subscribed(hub: &Hub, framing: Framing, max_bytes: usize) -> (Arc<Outbox>, Inbox) {
        let (outbox, rx) = Outbox::new(max_bytes, framing);
        let conn = hub.connect(outbox.clone());
        hub.subscribe(&Arc::from("mrc"), conn, Subscriber { outbox: outbox.clone(), topics: None });
        (outbox, rx)
    }

    #[tokio::test]
    async fn the_fan_out_writes_a_batch_itself_without_waking_the_session() {
        for framing in [Framing::Legacy, Framing::Packed] {
            let hub = Hub::new(Arc::new(Metrics::new()));
            let (wire, mut client) = wire_pair(false).await;
            let (outbox, mut rx) = subscribed(&hub, framing, 1 << 20);
            assert!(outbox.go_direct(&wire));
            let publications: Vec<_> = (1..=3).map(|n| publication("mrc", &n.to_string())).collect();
            let mut batch = hub.batch();
            for p in &publications {
                assert_eq!(hub.deliver_to(p, &mut batch), 1);
            }
            let mut probe = [0u8; 16];
            let early = client.try_read(&mut probe);
            assert!(early.is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock), "written before the flush");
            batch.flush();
            assert_eq!(hub.write_pending(), 3, "one write for the three");
            let expected: Vec<String> = match framing {
                Framing::Legacy => publications.iter().map(|p| p.legacy_frame().to_string()).collect(),
                Framing::Packed => {
                    vec![publications.iter().map(|p| p.v2_frame().to_string()).collect::<Vec<_>>().join("\n")]
                }
            };
            assert_eq!(read_messages(&mut client, expected.len()).await, expected, "{framing:?}");
            assert!(futures_util::FutureExt::now_or_never(rx.recv()).is_none(), "the session was woken");
            assert_eq!(outbox.queued_bytes(), 0);
        }
    }

    #[tokio::test]
    async fn the_writer_tasks_write_what_batches_leave_them() {
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
        let writers: Vec<_> = (0..hub.writers()).map(|i| tokio::spawn(hub.clone().run_writer(i))).collect();
        let (wire, mut client) = wire_pair(false).await;
        let (outbox, _rx) = subscribed(&hub, Framing::Legacy, 1 << 20);
        assert!(outbox.go_direct(&wire));
        for n in 1..=3 {
            hub.deliver(&publication("mrc", &n.to_string()));
        }
        let got = read_messages(&mut client, 3).await;
        assert_eq!(got, (1..=3).map(|n| format!(r#"{{"site":"mrc","topic":"t","data":{n}}}"#)).collect::<Vec<_>>());
        for writer in writers {
            writer.abort();
        }
    }

    #[tokio::test]
    async fn while_the_session_writes_publications_wait_for_it() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (wire, mut client) = wire_pair(false).await;
        let (outbox, mut rx) = subscribed(&hub, Framing::Legacy, 1 << 20);
        assert!(outbox.go_direct(&wire));
        outbox.go_session();
        hub.deliver(&publication("mrc", "1"));
        assert!(!outbox.go_direct(&wire), "the session has a publication to write first");
        match futures_util::FutureExt::now_or_never(rx.recv()) {
            Some(Event::Publication(p)) => assert_eq!(p.data.get(), "1"),
            other => panic!("the session should have been woken with the publication: {other:?}"),
        }
        assert!(outbox.go_direct(&wire));
        hub.deliver(&publication("mrc", "2"));
        assert_eq!(hub.write_pending(), 1);
        assert_eq!(read_messages(&mut client, 1).await, [r#"{"site":"mrc","topic":"t","data":2}"#]);
        assert!(futures_util::FutureExt::now_or_never(rx.recv()).is_none());
    }

    #[tokio::test]
    async fn a_backlog_is_left_to_the_session_and_the_cap_still_holds() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (wire, mut client) = wire_pair(true).await;
        let (outbox, mut rx) = subscribed(&hub, Framing::Legacy, 256 * 1024);
        assert!(outbox.go_direct(&wire));
        let pad = "x".repeat(16 * 1024);
        // The client reads nothing: the socket fills, then the backlog grows past the cap.
        let mut accepted = 0;
        let mut events = Vec::new();
        for n in 0..1000 {
            if outbox.is_overflowed() {
                break;
            }
            accepted += hub.deliver(&publication("mrc", &format!(r#"{{"n":{n},"pad":"{pad}"}}"#)));
            hub.write_pending();
            if let Some(event) = futures_util::FutureExt::now_or_never(rx.recv()) {
                events.push(format!("{event:?}").split('(').next().unwrap_or_default().to_owned());
            }
        }
        assert!(outbox.is_overflowed(), "the cap never tripped");
        assert_eq!(events.first().map(String::as_str), Some("Backlog"), "{events:?}");
        assert!(matches!(futures_util::FutureExt::now_or_never(rx.recv()), Some(Event::Overflowed)));
        assert_eq!(hub.deliver(&publication("mrc", "0")), 0, "refused once over the cap");
        // Whatever was accepted reaches the client whole and in order once it reads.
        let flush = tokio::spawn({
            let wire = wire.clone();
            async move { poll_fn(|cx| wire.poll_flush(cx)).await }
        });
        let got = read_messages(&mut client, accepted).await;
        flush.await.unwrap().unwrap();
        assert_eq!(got.len(), accepted);
        for (n, text) in got.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(v["data"]["n"], n, "message {n} out of order or broken");
        }
    }

    #[test]
    fn forgetting_a_site_drops_what_is_queued_for_it() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (outbox, mut rx) = subscribed(&hub, Framing::Legacy, 1 << 20);
        hub.subscribe(&Arc::from("saf"), 99, Subscriber { outbox: outbox.clone(), topics: None });
        hub.deliver(&publication("mrc", "1"));
        let kept = publication("saf", "2");
        hub.deliver(&kept);
        hub.deliver(&publication("mrc", "3"));
        outbox.forget("mrc");
        assert_eq!(rx.try_recv().unwrap().data.get(), "2");
        assert!(rx.try_recv().is_err());
        assert_eq!(outbox.queued_bytes(), kept.queued_len());
    }

    #[test]
    fn publications_below_a_floor_are_skipped_until_the_site_is_forgotten() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (outbox, mut rx) = subscribed(&hub, Framing::Packed, 1 << 20);
        let at = |offset: u64, epoch: &str| {
            let data = serde_json::value::RawValue::from_string(offset.to_string()).unwrap();
            let position = Position { epoch: epoch.into(), offset };
            Arc::new(Publication::from_parts("mrc".into(), "t".into(), data, position))
        };
        // Queued before the floor is set (a subscribe's snapshot being read): dropped then.
        hub.deliver(&at(2, "e"));
        hub.deliver(&at(6, "e"));
        outbox.set_floor(&Arc::from("mrc"), &Arc::from("e"), 5);
        assert_eq!(outbox.queued_bytes(), at(6, "e").queued_len(), "the dropped one's share is freed");
        for p in [at(4, "e"), at(5, "e"), at(3, "other")] {
            hub.deliver(&p);
        }
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).map(|p| p.position.offset).collect();
        assert_eq!(got, [6, 5, 3], "below the floor in its epoch is skipped, another epoch is not");
        outbox.forget("mrc");
        hub.deliver(&at(4, "e"));
        assert_eq!(rx.try_recv().map(|p| p.position.offset), Ok(4), "the floor went with the site");
    }
}
