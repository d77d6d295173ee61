//! Brokers give each publication its stream position, keep per-site history and the latest
//! publication of each topic, drop duplicates, and hand publications to the local
//! [`Hub`](crate::hub::Hub) in position order.
//!
//! [`Broker`] is the one type the rest of the relay talks to; each backend sits beside it
//! (`memory`, the single-node default, and `redis`, for several nodes). Every backend passes the
//! same conformance tests (`server/tests/broker_conformance.rs`). A broker publishes a batch of
//! requests at once ([`Broker::publish_all`]) and batches its deliveries itself: callers hand it
//! what arrived together (a publish body, an SQS receive).

mod memory;
mod redis;

use serde_json::value::RawValue;
use std::{sync::Arc, time::Duration};

pub use memory::MemoryBroker;
pub use redis::{
    DEFAULT_TIMEOUT as DEFAULT_REDIS_TIMEOUT, RedisBroker, RedisSettings, SettingsError as RedisSettingsError,
};

use crate::{
    config::Config,
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
    /// Most idempotency keys the in-memory broker remembers; past it the oldest is forgotten
    /// before its window ends. (Redis: each key expires after the window.)
    pub dedupe_keys: usize,
    /// Most topics per site whose latest publication is kept (the least recently published
    /// goes first); 0: none.
    pub latest_topics: usize,
    /// Oldest latest publication kept.
    pub latest_ttl: Duration,
    /// Topics whose latest publication is kept per value of a data field.
    pub latest_keys: LatestKeys,
}

impl HistoryOptions {
    /// The limits set by `config`.
    pub fn from_config(config: &Config) -> Self {
        HistoryOptions {
            size: config.history_size,
            ttl: config.history_ttl,
            dedupe_window: config.dedupe_window,
            dedupe_keys: config.dedupe_keys,
            latest_topics: config.latest_topics,
            latest_ttl: config.latest_ttl,
            latest_keys: config.latest_key_map(),
        }
    }

    /// The key a publication's latest value is kept under beside its site and topic (its slot):
    /// for a topic of [`LatestKeys`], the value of its data field; `None` for other topics, or
    /// when no latest value is kept at all. The one place the rule is applied: the memory broker
    /// keys its map by it, the Redis broker hands it to its script.
    pub fn latest_key_of(&self, req: &PublishRequest) -> Option<Arc<str>> {
        self.key_of(&req.topic, &req.data)
    }

    /// [`HistoryOptions::latest_key_of`] for a publication's parts: what a publication read back
    /// from another node (a Redis channel or stream) gets, so that every node puts it in the
    /// same slot.
    pub fn key_of(&self, topic: &str, data: &RawValue) -> Option<Arc<str>> {
        if self.latest_topics == 0 {
            return None;
        }
        self.latest_keys.key_of(topic, data)
    }

    /// How long a site's state (its epoch and offset) outlives its last publication: as long as
    /// anything it holds, history or latest values, may still be served.
    pub fn site_ttl(&self) -> Duration {
        if self.latest_topics > 0 { self.ttl.max(self.latest_ttl) } else { self.ttl }
    }
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
    /// The broker's backend is configured wrongly (a bad URL, an unreadable CA file).
    #[error("{0}")]
    Settings(String),
}

/// A batch publish that stopped at a failure. `outcomes` are those of the first requests of the
/// batch, in order, which were carried out; the rest were not — or, if Redis failed in the middle
/// of a pipeline, may have been, as a publish that timed out may be: a retry with their
/// idempotency keys publishes each once.
#[derive(Debug, thiserror::Error)]
#[error("{cause} (after {} of the batch)", outcomes.len())]
pub struct PartialPublish {
    /// Outcomes of the requests carried out, from the first.
    pub outcomes: Vec<PublishOutcome>,
    /// Why the next one failed.
    #[source]
    pub cause: BrokerError,
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
        let mut outcomes = self.publish_all(std::slice::from_ref(&req)).await.map_err(|e| e.cause)?;
        outcomes.pop().ok_or_else(|| BrokerError::Unavailable("no outcome".into()))
    }

    /// Publishes `requests` in order, as [`Broker::publish`] each, and returns their outcomes in
    /// the same order. They are delivered as one batch: one write per local subscriber for all of
    /// them (in memory; with Redis, local delivery comes from the site's channel, as for every
    /// other node, and the script calls go as pipelines). A failure stops the batch: the error
    /// carries the outcomes of those carried out before it.
    pub async fn publish_all(&self, requests: &[PublishRequest]) -> Result<Vec<PublishOutcome>, PartialPublish> {
        match self {
            Broker::Memory(b) => Ok(b.publish_all(requests)),
            Broker::Redis(b) => b.publish_all(requests).await,
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

    /// Periodic upkeep: expire history, latest values and dedupe keys, and drop the state of
    /// sites left with none of them and no local subscriber (memory); stop listening to sites
    /// without local subscribers and check the connection (Redis).
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
