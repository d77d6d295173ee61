//! A connection's send queue and its byte budget.
//!
//! Publications reach a client one of two ways. While the session lets it
//! ([`Outbox::give_to_fanout`]: nothing of its own to send first), the fan-out writes them to the
//! connection's [`Wire`] itself, once per subscriber per [`Batch`], and the session is not woken
//! at all. Otherwise (the session is answering a request, catching up after a subscribe, or has no
//! wire) they wait in the queue and the session is woken to write them.
//!
//! **One byte budget per connection** (`DATASTREAM_CLIENT_QUEUE_BYTES`): what is queued plus what
//! the socket has not taken yet ([`Wire::unsent`]), counted under the queue's lock and checked
//! before a publication is appended. Before refusing, the outbox lets the socket take what is
//! queued (a batch larger than the budget — a big publish body — goes out as it arrives rather
//! than being held whole), so only a client that really does not keep up passes it. An empty
//! connection takes any one publication. Passing the budget sets [`Outbox::is_overflowed`] and
//! drops everything after it; the session, woken then, closes the connection with the "slow
//! consumer" code so the client reconnects and recovers from history instead of holding memory.
//!
//! **Deltas** are chosen here, per connection, when a publication is written (under the queue's
//! lock: by the fan-out as it writes, by [`Outbox::written`] for the session's own writes): for a
//! site subscribed with deltas, the outbox remembers the offset of the last publication of each
//! slot written to the connection on this subscription ([`Sent`]), and a publication goes out as
//! its delta only if its base is that very offset. Anything else goes out in full and becomes the
//! slot's base. A subscribe starts that record afresh with what its answer carries
//! ([`Outbox::track_deltas`]); an unsubscribe drops it. A connection without deltas pays one
//! emptiness check per write.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use futures_util::task::AtomicWaker;

use super::{Batch, Framing, inbox::Inbox};
use crate::{delta, metrics::Metrics, publication::Publication, wire::Wire};

/// A connection's send queue: unbounded in count, bounded by its byte budget (module doc).
#[derive(Debug)]
pub struct Outbox {
    /// Allocates nothing until the first publication: most connections are idle most of the
    /// time, and per-connection memory is what limits a node.
    pub(super) queue: Mutex<Queue>,
    /// Wakes the session when the queue gains an item it must write, the wire has unsent bytes,
    /// or the server asks it to close. One consumer, so a lock-free waker slot rather than a
    /// waiter list behind a mutex.
    pub(super) waker: AtomicWaker,
    max_bytes: usize,
    framing: Framing,
    /// Which of the fan-out's writers writes to this connection.
    pub(super) writer: usize,
    /// A plain flag: checked once per delivery, it must cost no more than an atomic load.
    pub(super) overflowed: AtomicBool,
    /// Set by [`Outbox::close`]: the server is shutting down and the session should close.
    pub(super) closing: AtomicBool,
    /// A fan-out write left bytes unsent on the wire, for the session to flush.
    pub(super) unsent: AtomicBool,
}

/// A publication in a connection's queue, and how it goes out.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The publication.
    pub publication: Arc<Publication>,
    /// As its delta frame rather than its full frame: decided when it is written.
    pub delta: bool,
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) items: VecDeque<Queued>,
    /// The items' share of the budget.
    bytes: usize,
    /// The connection's socket: what it has not taken counts in the budget.
    wire: Option<Arc<Wire>>,
    /// The fan-out writes to `wire` (the session lets it); otherwise the session writes.
    pub(super) fanout: bool,
    /// Per site, the stream position below which publications were already sent.
    floors: Vec<Floor>,
    /// Per site subscribed with deltas, what was last written of each slot.
    sent: Vec<Sent>,
}

/// For a site subscribed with deltas: the offset of the last publication of each slot (topic and
/// latest key) written to the connection since the subscribe, in the epoch they belong to. Most
/// connections subscribe one site with a handful of slots: a short list, searched in place.
#[derive(Debug)]
struct Sent {
    site: Arc<str>,
    epoch: Arc<str>,
    slots: Vec<(Arc<str>, Option<Arc<str>>, u64)>,
}

impl Sent {
    /// Records `p` as written; true if it may go as its delta (its base is the slot's last).
    fn write(&mut self, p: &Publication) -> bool {
        if !(Arc::ptr_eq(&self.epoch, &p.position.epoch) || self.epoch == p.position.epoch) {
            // Another epoch: nothing written before belongs to it.
            self.epoch = p.position.epoch.clone();
            self.slots.clear();
        }
        let slot = self.slots.iter_mut().find(|(topic, key, _)| *topic == p.topic && *key == p.latest_key);
        match slot {
            Some((_, _, last)) => {
                let delta = p.delta().is_some_and(|(base, _)| base == *last);
                *last = p.position.offset;
                delta
            }
            None => {
                if self.slots.len() >= delta::MAX_SLOTS
                    && let Some(oldest) = (0..self.slots.len()).min_by_key(|&i| self.slots[i].2)
                {
                    // Its next publication goes in full (module doc of `delta`).
                    self.slots.swap_remove(oldest);
                }
                self.slots.push((p.topic.clone(), p.latest_key.clone(), p.position.offset));
                false
            }
        }
    }
}

/// Decides how `item` goes out, now that it is being written.
fn decide(sent: &mut [Sent], item: &mut Queued) {
    let p = &item.publication;
    if let Some(s) = sent.iter_mut().find(|s| Arc::ptr_eq(&s.site, &p.site) || s.site == p.site) {
        item.delta = s.write(p);
    }
}

/// Publications of `site` in `epoch` below offset `next` were sent already (in a subscribe's
/// replay, or counted in its snapshot): the broker may still hand them over late (a Redis channel
/// lags behind the stream it is read with), and they are skipped.
#[derive(Debug)]
struct Floor {
    site: Arc<str>,
    epoch: Arc<str>,
    next: u64,
}

impl Floor {
    /// Whether `p` was sent already.
    fn covers(&self, p: &Publication) -> bool {
        p.position.offset < self.next
            && (Arc::ptr_eq(&self.site, &p.site) || self.site == p.site)
            && (Arc::ptr_eq(&self.epoch, &p.position.epoch) || self.epoch == p.position.epoch)
    }
}

impl Queue {
    /// What the connection owes its client: queued bytes plus what its socket has not taken.
    fn owed(&self) -> usize {
        self.bytes + self.wire.as_ref().map_or(0, |w| w.unsent())
    }

    /// Takes the oldest item, if the session is the one writing.
    pub(super) fn pop_for_session(&mut self) -> Option<Arc<Publication>> {
        if self.fanout {
            return None;
        }
        let item = self.items.pop_front()?;
        self.bytes -= item.publication.queued_len();
        Some(item.publication)
    }

    /// Removes the items `drop` picks.
    fn drain_where(&mut self, drop: impl Fn(&Publication) -> bool) {
        let mut freed = 0;
        self.items.retain(|item| {
            let dropped = drop(&item.publication);
            if dropped {
                freed += item.publication.queued_len();
            }
            !dropped
        });
        self.bytes -= freed;
    }
}

impl Outbox {
    /// Creates an outbox with a budget of `max_bytes`, and the receiving end its session reads.
    pub fn new(max_bytes: usize, framing: Framing) -> (Arc<Outbox>, Inbox) {
        static NEXT_WRITER: AtomicUsize = AtomicUsize::new(0);
        let outbox = Arc::new(Outbox {
            writer: NEXT_WRITER.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::default(),
            waker: AtomicWaker::new(),
            max_bytes,
            framing,
            overflowed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            unsent: AtomicBool::new(false),
        });
        (outbox.clone(), Inbox::new(outbox))
    }

    pub(super) fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ties the outbox to its connection's socket, so what the socket has not taken counts in
    /// the budget and the fan-out can write to it ([`Outbox::give_to_fanout`]).
    pub fn attach(&self, wire: Arc<Wire>) {
        self.queue().wire = Some(wire);
    }

    /// Queues `publication`; false if it was dropped (budget passed). If the fan-out writes to
    /// this connection, the write is left to `batch`; otherwise the session is woken. A
    /// publication below a [floor](Outbox::set_floor) was sent already and is skipped.
    pub(super) fn push(self: &Arc<Self>, publication: &Arc<Publication>, batch: &mut Batch, metrics: &Metrics) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let mut queue = self.queue();
        if queue.floors.iter().any(|f| f.covers(publication)) {
            return true;
        }
        let len = publication.queued_len();
        let owed = queue.owed();
        if owed > 0 && owed + len > self.max_bytes {
            // Let the socket take what is queued before judging: a batch larger than the budget
            // is not a slow client.
            if queue.fanout && !queue.items.is_empty() {
                let written = self.write_queued(&mut queue, &mut Vec::new(), metrics);
                metrics.messages_out.inc_by(written as u64);
            }
            let owed = queue.owed();
            if owed > 0 && owed + len > self.max_bytes {
                drop(queue);
                self.overflowed.store(true, Ordering::Relaxed);
                self.waker.wake();
                return false;
            }
        }
        let first = queue.items.is_empty();
        queue.items.push_back(Queued { publication: publication.clone(), delta: false });
        queue.bytes += len;
        let fanout = queue.fanout;
        drop(queue);
        if !fanout {
            self.waker.wake();
        } else if first {
            // Later publications join this one in the same write.
            batch.dirty.push(self.clone());
        }
        true
    }

    /// Writes what is queued to the wire, if the session still lets the fan-out write; wakes the
    /// session if it does not, or if part of the write stays unsent. Returns how many
    /// publications were written.
    pub(super) fn write_direct(&self, scratch: &mut Vec<u8>, metrics: &Metrics) -> usize {
        // Held across the write: the session cannot take over (or write the queue itself) in
        // the middle of it, so the client sees every publication once and in order.
        let mut queue = self.queue();
        self.write_queued(&mut queue, scratch, metrics)
    }

    fn write_queued(&self, queue: &mut Queue, scratch: &mut Vec<u8>, metrics: &Metrics) -> usize {
        if !queue.fanout || queue.wire.is_none() {
            self.waker.wake();
            return 0;
        }
        if !queue.sent.is_empty() {
            let Queue { items, sent, .. } = &mut *queue;
            for item in items.iter_mut() {
                decide(sent, item);
            }
        }
        let Some(wire) = queue.wire.as_ref() else { return 0 };
        let items = queue.items.make_contiguous();
        let Some(first) = items.first() else { return 0 };
        metrics.delivery_seconds.observe(first.publication.published_at.elapsed().as_secs_f64());
        let count = items.len();
        scratch.clear();
        for group in self.framing.groups(items) {
            self.framing.append_frame(group, scratch);
        }
        let written = wire.write_whole(scratch);
        queue.items.clear();
        queue.bytes = 0;
        match written {
            Ok(0) => {}
            Ok(_) => {
                self.unsent.store(true, Ordering::Release);
                self.waker.wake();
            }
            // The session sees the failure on its own socket.
            Err(_) => self.waker.wake(),
        }
        count
    }

    /// Lets the fan-out write to the attached wire from now on, if nothing is queued for the
    /// session to write first; true if it does.
    pub fn give_to_fanout(&self) -> bool {
        let mut queue = self.queue();
        if !queue.items.is_empty() || queue.wire.is_none() {
            return false;
        }
        queue.fanout = true;
        true
    }

    /// Stops the fan-out writing to the wire: once this returns, no fan-out write is under way
    /// and publications wait in the queue for the session.
    pub fn take_from_fanout(&self) {
        self.queue().fanout = false;
    }

    /// Skips publications of `site` in `epoch` below offset `next` (see [`Floor`]): those queued
    /// already are dropped, later ones are not queued.
    pub fn set_floor(&self, site: &Arc<str>, epoch: &Arc<str>, next: u64) {
        let floor = Floor { site: site.clone(), epoch: epoch.clone(), next };
        let mut queue = self.queue();
        queue.drain_where(|p| floor.covers(p));
        queue.floors.retain(|f| f.site != *site);
        // Most connections have one or two: no room for more than needed.
        queue.floors.reserve_exact(1);
        queue.floors.push(floor);
    }

    /// Decides how `items`, taken from the queue by the session ([`super::Inbox::try_recv`]) in
    /// this order, go out as they are written: each as its delta or in full (module doc).
    pub fn written(&self, items: &mut [Queued]) {
        let mut queue = self.queue();
        if !queue.sent.is_empty() {
            for item in items {
                decide(&mut queue.sent, item);
            }
        }
    }

    /// Starts afresh (or, `on` false, stops) choosing deltas for `site` on this connection, as a
    /// subscription to it is answered: `written` are the publications the answer carries in
    /// full (latest values, then the replay), in order, which are the first bases. Call before
    /// any publication queued for the site is written.
    pub fn track_deltas<'a>(
        &self,
        site: &Arc<str>,
        epoch: &Arc<str>,
        on: bool,
        written: impl IntoIterator<Item = &'a Arc<Publication>>,
    ) {
        let mut queue = self.queue();
        queue.sent.retain(|s| s.site != *site);
        if on {
            let mut sent = Sent { site: site.clone(), epoch: epoch.clone(), slots: Vec::new() };
            for p in written {
                sent.write(p);
            }
            queue.sent.push(sent);
        }
    }

    /// How many slots of `site` the delta record holds.
    #[cfg(test)]
    pub(super) fn delta_slots(&self, site: &str) -> usize {
        self.queue().sent.iter().find(|s| &*s.site == site).map_or(0, |s| s.slots.len())
    }

    /// Removes queued publications of `site`, its floor and its delta record (the connection no
    /// longer subscribes to it).
    pub fn forget(&self, site: &str) {
        let mut queue = self.queue();
        queue.floors.retain(|f| &*f.site != site);
        queue.sent.retain(|s| &*s.site != site);
        queue.drain_where(|p| &*p.site == site);
    }

    /// How this connection's publications are framed.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The connection's budget in bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Asks the session to close (shutdown); it sees [`super::Event::Closing`] once.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether the budget has been passed.
    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queue().bytes
    }
}
