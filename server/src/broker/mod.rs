//! Brokers give each publication its stream position, keep per-site history and the latest
//! publication of each topic, drop duplicates, and hand publications to the local
//! [`Hub`](crate::hub::Hub) in position order.
//!
//! [`Broker`] is the one type the rest of the relay talks to; each backend sits beside it
//! (`memory`, the single-node default, and `redis`, for several nodes). Every backend passes the
//! same conformance tests (`server/tests/broker_conformance.rs`).

mod memory;
mod redis;

use std::{sync::Arc, time::Duration};

pub use memory::MemoryBroker;
pub use redis::RedisBroker;

use crate::{
    hub::Batch,
    publication::{LatestKeys, Position, Publication, PublishRequest},
    topics::wants,
};

/// What a broker keeps per site: history, idempotency keys, and each topic's latest publication.
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    /// Most publications kept per site.
    pub size: usize,
    /// Oldest publication kept.
    pub ttl: Duration,
    /// Window in which a repeated idempotency key is dropped.
    pub dedupe_window: Duration,
    /// Most topics per site whose latest publication is kept (the least recently published
    /// goes first); 0: none.
    pub latest_topics: usize,
    /// Oldest latest publication kept.
    pub latest_ttl: Duration,
    /// Topics whose latest publication is kept per value of a data field.
    pub latest_keys: LatestKeys,
}

/// What happened to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Published at this position.
    Published(Position),
    /// A repeat of a message seen within the dedupe window; not published again.
    Duplicate,
}

/// A site's stream as it stands: its epoch, latest offset, and the history still held.
#[derive(Debug)]
pub struct Snapshot {
    /// The site's current epoch.
    pub epoch: Arc<str>,
    /// Offset of the latest publication (0: none yet).
    pub top: u64,
    /// Held publications, oldest first, with consecutive offsets ending at `top`.
    pub history: Vec<Arc<Publication>>,
    /// The latest publication of each topic asked for (none unless asked), oldest first: at most
    /// one per topic (per topic and key, for a topic of [`LatestKeys`]), every offset at most
    /// `top`.
    pub latest: Vec<Arc<Publication>>,
}

impl Snapshot {
    /// The publications after `offset` in `epoch`, if every one of them is still held; `None`
    /// if any is missing (trimmed, or another epoch), since a partial replay would hide a gap.
    pub fn recover(&self, epoch: &str, offset: u64, topics: Option<&[Arc<str>]>) -> Option<Vec<Arc<Publication>>> {
        if epoch != &*self.epoch || offset > self.top {
            return None;
        }
        if offset == self.top {
            return Some(Vec::new());
        }
        let oldest = self.history.first()?.position.offset;
        if oldest > offset + 1 {
            return None;
        }
        Some(self.history.iter().filter(|p| p.position.offset > offset && wants(topics, &p.topic)).cloned().collect())
    }

    /// The latest publications a subscriber still needs besides `replay` (what it gets replayed or
    /// rewound, oldest first): those after `seen` (the offset up to which it has everything in
    /// this epoch; 0 if it has nothing) and older than the replay, which carries the newer ones
    /// itself. Oldest first, so the client sees offsets only grow.
    pub fn latest_after(&self, seen: u64, replay: &[Arc<Publication>]) -> Vec<Arc<Publication>> {
        let before = replay.first().map_or(u64::MAX, |p| p.position.offset);
        self.latest.iter().filter(|p| p.position.offset > seen && p.position.offset < before).cloned().collect()
    }

    /// The latest `n` publications matching `topics`, oldest first.
    pub fn rewind(&self, n: usize, topics: Option<&[Arc<str>]>) -> Vec<Arc<Publication>> {
        let mut out: Vec<_> = self.history.iter().rev().filter(|p| wants(topics, &p.topic)).take(n).cloned().collect();
        out.reverse();
        out
    }
}

/// Which latest publications a snapshot carries.
#[derive(Debug, Clone, Copy)]
pub enum Latest<'a> {
    /// None.
    No,
    /// Those of these topics (`None`: every topic).
    Of(Option<&'a [Arc<str>]>),
}

/// A publish that could not be carried out; the caller keeps the message (SQS does not delete it,
/// HTTP answers 503) so nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker's backend is unreachable.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// The broker in use.
#[derive(Debug)]
pub enum Broker {
    /// Single-node, in-process.
    Memory(Box<MemoryBroker>),
    /// Shared by every node through Redis.
    Redis(Arc<RedisBroker>),
}

impl Broker {
    /// Publishes `req`: assigns its position, records it in history and delivers it to local
    /// subscribers, unless it repeats a recent idempotency key.
    pub async fn publish(&self, req: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.publish(req)),
            Broker::Redis(b) => b.publish(req).await,
        }
    }

    /// Like [`Broker::publish`], but connections the fan-out writes to get this node's local
    /// deliveries when `batch` is flushed: publishing several messages in one batch makes one
    /// write per subscriber for all of them. (With Redis, local delivery comes from the
    /// subscription to the site's channel, as for every other node.)
    pub async fn publish_to(&self, req: PublishRequest, batch: &mut Batch) -> Result<PublishOutcome, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.publish_to(req, batch)),
            Broker::Redis(b) => b.publish(req).await,
        }
    }

    /// The site's stream as it stands. Call it after subscribing in the hub: a publication
    /// that lands in between is then both in the snapshot and queued, and the subscription's floor
    /// (`Outbox::set_floor`) drops the queued copy, so nothing is missed or doubled.
    pub async fn snapshot(&self, site: &Arc<str>) -> Result<Snapshot, BrokerError> {
        self.snapshot_with(site, Latest::No).await
    }

    /// [`Broker::snapshot`], with the latest publication of each topic `latest` asks for, read in
    /// the same step as the stream's position (so the floor rule holds for them too).
    pub async fn snapshot_with(&self, site: &Arc<str>, latest: Latest<'_>) -> Result<Snapshot, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.snapshot(site, latest)),
            Broker::Redis(b) => b.snapshot(site, latest).await,
        }
    }

    /// The latest publication of each topic in `topics` (all if `None`), with the site's
    /// position, for a reader that does not subscribe (`GET /sites/<site>/latest`): creates
    /// nothing, watches nothing. The history is left empty; the epoch is `""` if Redis never saw
    /// the site.
    pub async fn latest(&self, site: &Arc<str>, topics: Option<&[Arc<str>]>) -> Result<Snapshot, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.latest(site, topics)),
            Broker::Redis(b) => b.latest(site, topics).await,
        }
    }

    /// Makes sure this node receives `site`'s publications; call after subscribing in the hub.
    /// Returns once they flow.
    pub async fn watch(&self, site: &Arc<str>) -> Result<(), BrokerError> {
        match self {
            Broker::Memory(_) => Ok(()),
            Broker::Redis(b) => b.watch(site).await,
        }
    }

    /// Periodic upkeep: expire history and dedupe keys (memory); stop listening to sites without
    /// local subscribers and check the connection (Redis).
    pub async fn sweep(&self) {
        match self {
            Broker::Memory(b) => b.sweep(),
            Broker::Redis(b) => {
                b.unwatch_idle().await;
                b.ping().await;
            }
        }
    }

    /// Whether the broker's backend is reachable.
    pub fn healthy(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(b) => b.healthy(),
        }
    }
}
