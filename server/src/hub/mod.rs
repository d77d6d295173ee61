//! The local subscriber registry and fan-out.
//!
//! The hub maps each site to the connections on this node subscribed to it, and knows every open
//! connection, subscribed or not, so that shutdown can tell each one to close
//! ([`Hub::close_all`]) without every session polling a shared signal on each wake. Delivering a
//! publication walks its site's subscribers under a read lock and pushes one shared reference
//! into each connection's [`Outbox`]. Publications are delivered in a [`Batch`]; when it is
//! flushed, the fan-out's writers ([`Hub::run_writer`], one task per core) write each
//! connection's share to its socket with one non-blocking write, or leave it to the connection's
//! session. A write never waits: what the kernel does not take stays unsent on the connection's
//! wire, so a slow client never delays the others. Sites are spread over shards so publishes to
//! different sites do not contend.
//!
//! While a site has a subscriber that asked for deltas, the hub keeps the last publication of each
//! of its slots (topic and latest key) and has each new one computed as a delta from it, once,
//! before it is queued ([`Publication::prepare_delta`]); each outbox then picks the delta or the
//! full frame for its own connection.
//!
//! - [`framing`]: how publications become text frames (one rule for every writer).
//! - [`outbox`]: a connection's queue, its byte budget, and the floors a subscribe sets.
//! - [`inbox`]: the session's end of it: what wakes a session.
//! - [`writers`]: the fan-out's writer tasks and the [`Batch`] that feeds them.

mod framing;
mod inbox;
mod outbox;
mod writers;

#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

pub use framing::{Framing, MAX_PACKED_BYTES};
pub use inbox::{Empty, Event, Inbox};
pub use outbox::{Outbox, Queued};
pub use writers::Batch;

use crate::{
    delta,
    metrics::Metrics,
    publication::Publication,
    topics::{TopicFilter, wants},
};
use writers::Writer;

/// Identifies one WebSocket connection within this process.
pub type ConnId = u64;

const SHARDS: usize = 32;

/// One connection's subscription to one site.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// Where this connection's publications go.
    pub outbox: Arc<Outbox>,
    /// Only these topics; `None`: every topic (evaluated here, so unwanted publications are
    /// never queued).
    pub topics: Option<TopicFilter>,
    /// The subscription asked for deltas: the site's publications get one computed.
    pub delta: bool,
}

impl Subscriber {
    /// Whether this subscription wants `topic`.
    pub fn wants(&self, topic: &str) -> bool {
        wants(self.topics.as_deref(), topic)
    }
}

/// A slot: a topic, and for a topic of [`LatestKeys`](crate::publication::LatestKeys) the key.
type Slot = (Arc<str>, Option<Arc<str>>);

/// One site's local subscribers.
#[derive(Debug, Default)]
struct Site {
    subs: HashMap<ConnId, Subscriber>,
    /// How many of `subs` asked for deltas; `slots` is kept only while there are some.
    deltas: usize,
    /// The last publication delivered of each slot: the base of the next one's delta.
    slots: Mutex<HashMap<Slot, Arc<Publication>>>,
}

impl Site {
    /// Counts `sub` in or out of the delta subscribers; the slots go with the last of them.
    fn count_delta(&mut self, sub: &Subscriber, added: bool) {
        if !sub.delta {
            return;
        }
        if added {
            self.deltas += 1;
        } else {
            self.deltas -= 1;
            if self.deltas == 0 {
                *self.slots.get_mut().unwrap_or_else(|e| e.into_inner()) = HashMap::new();
            }
        }
    }

    /// Makes `p` the last publication of its slot unless a later one of its epoch is known
    /// already; true if it did.
    fn remember(slots: &mut HashMap<Slot, Arc<Publication>>, p: &Arc<Publication>) -> bool {
        let slot = (p.topic.clone(), p.latest_key.clone());
        if let Some(last) = slots.get(&slot).map(|l| &l.position)
            && last.epoch == p.position.epoch
            && last.offset >= p.position.offset
        {
            return false;
        }
        if !slots.contains_key(&slot) {
            Site::make_room(slots);
        }
        slots.insert(slot, p.clone());
        true
    }

    /// Forgets the least recently published slot if `slots` is full ([`delta::MAX_SLOTS`]).
    fn make_room(slots: &mut HashMap<Slot, Arc<Publication>>) {
        if slots.len() >= delta::MAX_SLOTS
            && let Some(oldest) = slots.iter().min_by_key(|(_, p)| p.position.offset).map(|(slot, _)| slot.clone())
        {
            slots.remove(&oldest);
        }
    }

    /// Makes `p` the last publication of its slot and computes it as a delta from the one it
    /// replaces, if that one is of the same epoch and older; true if that gave a delta.
    fn prepare_delta(&self, p: &Arc<Publication>) -> bool {
        use std::collections::hash_map::Entry;

        let base = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (p.topic.clone(), p.latest_key.clone());
            if !slots.contains_key(&slot) {
                Site::make_room(&mut slots);
            }
            match slots.entry(slot) {
                Entry::Vacant(e) => {
                    e.insert(p.clone());
                    return false;
                }
                Entry::Occupied(mut e) => {
                    let last = &e.get().position;
                    if last.epoch == p.position.epoch && last.offset >= p.position.offset {
                        return false;
                    }
                    e.insert(p.clone())
                }
            }
        };
        // Outside the lock: the one costly step (tens of microseconds for a device status).
        p.prepare_delta(&base);
        p.delta().is_some()
    }
}

type Shard = RwLock<HashMap<Arc<str>, Site>>;
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

    /// Runs writer `index` for as long as the process serves (see [`writers`]).
    pub async fn run_writer(self: Arc<Self>, index: usize) {
        self.writers[index].run(&self.metrics).await;
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
        let entry = shard.entry(site.clone()).or_default();
        let first = entry.subs.is_empty();
        entry.count_delta(&subscriber, true);
        match entry.subs.insert(conn, subscriber) {
            Some(old) => entry.count_delta(&old, false),
            None => {
                self.metrics.subscriptions.inc();
                if first {
                    self.metrics.sites.inc();
                }
            }
        }
        first
    }

    /// Removes `conn`'s subscription to `site`. Returns true if `site` has no local subscriber left.
    pub fn unsubscribe(&self, site: &str, conn: ConnId) -> bool {
        let mut shard = self.shard(site).write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = shard.get_mut(site) else { return false };
        let Some(old) = entry.subs.remove(&conn) else { return false };
        entry.count_delta(&old, false);
        self.metrics.subscriptions.dec();
        if entry.subs.is_empty() {
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

    /// Makes `publications` (what a subscription with deltas was just sent in full: latest
    /// values, a replay) the last of their slots, where nothing later is known: the base of the
    /// next publication of each, though the site had no subscriber with deltas when they were
    /// delivered.
    pub fn remember_sent<'a>(&self, site: &str, publications: impl IntoIterator<Item = &'a Arc<Publication>>) {
        let shard = self.shard(site).read().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = shard.get(site).filter(|s| s.deltas > 0) else { return };
        let mut slots = entry.slots.lock().unwrap_or_else(|e| e.into_inner());
        for p in publications {
            Site::remember(&mut slots, p);
        }
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
        let Some(site) = shard.get(&publication.site) else { return 0 };
        if site.deltas > 0 && site.prepare_delta(publication) {
            self.metrics.deltas_computed.inc();
        }
        let mut queued = 0;
        let mut dropped = 0;
        for sub in site.subs.values() {
            if !sub.wants(&publication.topic) {
                continue;
            }
            if sub.outbox.push(publication, batch, &self.metrics) {
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
        shard.get(site).map_or(0, |s| s.subs.len())
    }
}
