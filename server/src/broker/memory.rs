//! The in-process broker: the default, needing nothing outside the relay.
//!
//! Each site has its own lock, held while a publication gets its offset, enters history and is
//! queued to local subscribers, so subscribers see every site's publications in offset order. The
//! epoch is drawn at start: a restart loses history, and the new epoch tells clients so.
//!
//! Beside its history, each site keeps the latest publication of each topic (the same shared
//! [`Publication`], not a copy), by topic (and key, for the topics of
//! [`HistoryOptions::latest_keys`]); past [`HistoryOptions::latest_topics`] the one published
//! least recently (lowest offset) is dropped. Readers get them ordered by offset.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{HistoryOptions, Latest, PublishOutcome, Snapshot};
use crate::{
    hub::{Batch, Hub},
    publication::{Position, Publication, PublishRequest},
    topics::wants,
};

/// Where a topic's latest publication is kept: its topic, and its key for a topic of
/// [`HistoryOptions::latest_keys`].
type Slot = (Arc<str>, Option<Arc<str>>);

#[derive(Debug)]
struct SiteStream {
    /// Offset of the last publication; 0 before the first.
    offset: u64,
    /// Newest last; bounded by [`HistoryOptions`].
    history: VecDeque<Arc<Publication>>,
    /// The latest publication of each topic (and key), with its offset at hand for the scan
    /// for the least recent; bounded by [`HistoryOptions`].
    latest: HashMap<Slot, (u64, Arc<Publication>)>,
}

/// Keys seen within the dedupe window, with their expiry kept in arrival order.
#[derive(Debug, Default)]
struct Dedupe {
    keys: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Dedupe {
    /// Records `key`; false if it was already seen within `window`.
    fn insert(&mut self, key: &str, window: Duration, now: Instant) -> bool {
        self.expire(window, now);
        if self.keys.contains_key(key) {
            return false;
        }
        self.keys.insert(key.to_owned(), now);
        self.order.push_back((now, key.to_owned()));
        true
    }

    fn expire(&mut self, window: Duration, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.keys.remove(&key);
            }
        }
    }
}

/// The in-process broker.
#[derive(Debug)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
    epoch: Arc<str>,
    options: HistoryOptions,
    sites: Mutex<HashMap<Arc<str>, Arc<Mutex<SiteStream>>>>,
    dedupe: Mutex<Dedupe>,
}

impl MemoryBroker {
    /// Creates a broker delivering to `hub`, with a fresh random epoch.
    pub fn new(hub: Arc<Hub>, options: HistoryOptions) -> Self {
        let epoch = format!("{:016x}", rand::random::<u64>());
        MemoryBroker { hub, epoch: epoch.into(), options, sites: Mutex::default(), dedupe: Mutex::default() }
    }

    fn stream(&self, site: &Arc<str>) -> Arc<Mutex<SiteStream>> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        sites
            .entry(site.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(SiteStream { offset: 0, history: VecDeque::new(), latest: HashMap::new() }))
            })
            .clone()
    }

    /// See [`super::Broker::publish`].
    pub fn publish(&self, req: PublishRequest) -> PublishOutcome {
        self.publish_to(req, &mut self.hub.batch())
    }

    /// See [`super::Broker::publish_to`].
    pub fn publish_to(&self, req: PublishRequest, batch: &mut Batch) -> PublishOutcome {
        let now = Instant::now();
        if let Some(key) = &req.idempotency_key {
            // Keys are per site, as in Redis: two sites may use the same key. A newline cannot
            // be part of a site name, so the joined key is unambiguous.
            let key = format!("{}\n{key}", req.site);
            let mut dedupe = self.dedupe.lock().unwrap_or_else(|e| e.into_inner());
            if !dedupe.insert(&key, self.options.dedupe_window, now) {
                return PublishOutcome::Duplicate;
            }
        }
        let stream = self.stream(&req.site);
        let mut stream = stream.lock().unwrap_or_else(|e| e.into_inner());
        stream.offset += 1;
        let position = Position { epoch: self.epoch.clone(), offset: stream.offset };
        let keep_latest = self.options.latest_topics > 0;
        let key = if keep_latest { self.options.latest_keys.key_of(&req.topic, &req.data) } else { None };
        let publication = Arc::new(Publication::new(&req, position.clone()).with_latest_key(key));
        stream.history.push_back(publication.clone());
        trim(&mut stream.history, &self.options, now);
        if keep_latest {
            remember_latest(&mut stream.latest, &publication, self.options.latest_topics);
        }
        // Delivering under the site lock keeps every subscriber's view in offset order.
        self.hub.deliver_to(&publication, batch);
        PublishOutcome::Published(position)
    }

    /// See [`super::Broker::snapshot`]. Reading a site that was never published leaves no state
    /// behind: subscribing to random names costs nothing lasting.
    pub fn snapshot(&self, site: &Arc<str>, latest: Latest<'_>) -> Snapshot {
        self.read(site, true, latest)
    }

    /// See [`super::Broker::latest`].
    pub fn latest(&self, site: &Arc<str>, topics: Option<&[Arc<str>]>) -> Snapshot {
        self.read(site, false, Latest::Of(topics))
    }

    fn read(&self, site: &Arc<str>, with_history: bool, latest: Latest<'_>) -> Snapshot {
        let stream = self.sites.lock().unwrap_or_else(|e| e.into_inner()).get(site).cloned();
        let Some(stream) = stream else {
            return Snapshot { epoch: self.epoch.clone(), top: 0, history: Vec::new(), latest: Vec::new() };
        };
        let stream = stream.lock().unwrap_or_else(|e| e.into_inner());
        let history = if with_history { stream.history.iter().cloned().collect() } else { Vec::new() };
        let latest = match latest {
            Latest::No => Vec::new(),
            Latest::Of(topics) => {
                let now = Instant::now();
                let ttl = self.options.latest_ttl;
                let mut latest: Vec<_> = (stream.latest.values().map(|(_, p)| p))
                    .filter(|p| wants(topics, &p.topic) && now.duration_since(p.published_at) <= ttl)
                    .cloned()
                    .collect();
                latest.sort_unstable_by_key(|p| p.position.offset);
                latest
            }
        };
        Snapshot { epoch: self.epoch.clone(), top: stream.offset, history, latest }
    }

    /// Number of sites with a stream (published at least once).
    pub fn site_count(&self) -> usize {
        self.sites.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Expires old history and dedupe keys.
    pub fn sweep(&self) {
        let now = Instant::now();
        let streams: Vec<_> = self.sites.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for stream in streams {
            let mut stream = stream.lock().unwrap_or_else(|e| e.into_inner());
            trim(&mut stream.history, &self.options, now);
            let ttl = self.options.latest_ttl;
            stream.latest.retain(|_, (_, p)| now.duration_since(p.published_at) <= ttl);
        }
        self.dedupe.lock().unwrap_or_else(|e| e.into_inner()).expire(self.options.dedupe_window, now);
    }
}

/// Makes `publication` its topic's latest, and drops the least recently published topic past
/// `limit` (a scan, only when a new topic overflows the set).
fn remember_latest(latest: &mut HashMap<Slot, (u64, Arc<Publication>)>, publication: &Arc<Publication>, limit: usize) {
    let slot = (publication.topic.clone(), publication.latest_key.clone());
    let entry = (publication.position.offset, publication.clone());
    if latest.insert(slot, entry).is_none() && latest.len() > limit {
        let oldest = latest.iter().min_by_key(|(_, (offset, _))| *offset).map(|(slot, _)| slot.clone());
        if let Some(slot) = oldest {
            latest.remove(&slot);
        }
    }
}

fn trim(history: &mut VecDeque<Arc<Publication>>, options: &HistoryOptions, now: Instant) {
    while history.len() > options.size {
        history.pop_front();
    }
    while history.front().is_some_and(|p| now.duration_since(p.published_at) > options.ttl) {
        history.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hub::{Framing, Outbox, Subscriber},
        metrics::Metrics,
        publication::Validator,
    };
    use datastream_protocol::NameRules;

    fn request(site: &str, n: u32, key: Option<&str>) -> PublishRequest {
        let v = Validator { names: NameRules::default(), max_message_bytes: 1 << 20 };
        let mut req = v.parse(&format!(r#"{{"site":"{site}","topic":"t","data":{n}}}"#)).unwrap();
        req.idempotency_key = key.map(str::to_owned);
        req
    }

    fn broker(size: usize, window: Duration) -> (MemoryBroker, Arc<Hub>) {
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
        let options = HistoryOptions {
            size,
            ttl: Duration::from_secs(600),
            dedupe_window: window,
            latest_topics: 4,
            latest_ttl: Duration::from_secs(600),
            latest_keys: Default::default(),
        };
        (MemoryBroker::new(hub.clone(), options), hub)
    }

    #[test]
    fn offsets_count_per_site_in_one_epoch() {
        let (b, _) = broker(10, Duration::from_secs(60));
        let pos = |o| match o {
            PublishOutcome::Published(p) => p,
            PublishOutcome::Duplicate => panic!("duplicate"),
        };
        let a1 = pos(b.publish(request("a", 1, None)));
        let a2 = pos(b.publish(request("a", 2, None)));
        let b1 = pos(b.publish(request("b", 1, None)));
        assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, b1.epoch);
        let (other, _) = broker(10, Duration::from_secs(60));
        assert_ne!(other.epoch, b.epoch, "a new broker is a new epoch");
    }

    #[test]
    fn repeated_keys_are_published_once_within_the_window() {
        let (b, hub) = broker(10, Duration::from_millis(50));
        let (outbox, mut rx) = Outbox::new(1 << 20, Framing::Legacy);
        hub.subscribe(&"a".into(), 1, Subscriber { outbox, topics: None });
        assert!(matches!(b.publish(request("a", 1, Some("k"))), PublishOutcome::Published(_)));
        assert_eq!(b.publish(request("a", 1, Some("k"))), PublishOutcome::Duplicate);
        assert!(matches!(b.publish(request("a", 2, Some("other"))), PublishOutcome::Published(_)));
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok() && rx.try_recv().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(b.publish(request("a", 1, Some("k"))), PublishOutcome::Published(_)), "window over");
    }

    #[test]
    fn history_expires_by_age_and_recovery_then_fails() {
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
        let options = HistoryOptions {
            size: 100,
            ttl: Duration::from_millis(30),
            dedupe_window: Duration::from_secs(60),
            latest_topics: 4,
            latest_ttl: Duration::from_secs(600),
            latest_keys: Default::default(),
        };
        let b = MemoryBroker::new(hub, options);
        b.publish(request("a", 1, None));
        b.publish(request("a", 2, None));
        let site: Arc<str> = "a".into();
        let snap = b.snapshot(&site, Latest::No);
        assert_eq!(snap.recover(&snap.epoch, 0, None).map(|v| v.len()), Some(2));
        std::thread::sleep(Duration::from_millis(40));
        b.sweep();
        let snap = b.snapshot(&site, Latest::No);
        assert_eq!((snap.top, snap.history.len()), (2, 0), "offsets survive, history expired");
        assert!(snap.recover(&snap.epoch, 0, None).is_none(), "a gap that is no longer held is not recovered");
        assert_eq!(snap.recover(&snap.epoch, 2, None).map(|v| v.len()), Some(0), "up to date is fine");
    }

    #[test]
    fn idempotency_keys_are_per_site() {
        let (b, _) = broker(10, Duration::from_secs(60));
        assert!(matches!(b.publish(request("a", 1, Some("k"))), PublishOutcome::Published(_)));
        assert!(matches!(b.publish(request("b", 1, Some("k"))), PublishOutcome::Published(_)), "another site");
        assert_eq!(b.publish(request("b", 2, Some("k"))), PublishOutcome::Duplicate);
    }

    #[test]
    fn reading_a_never_published_site_leaves_nothing_behind() {
        let (b, _) = broker(10, Duration::from_secs(60));
        for n in 0..100 {
            let snap = b.snapshot(&format!("random{n}").into(), Latest::Of(None));
            assert_eq!((snap.top, snap.history.len()), (0, 0));
        }
        assert_eq!(b.site_count(), 0);
        b.publish(request("a", 1, None));
        assert_eq!(b.site_count(), 1);
    }

    #[test]
    fn history_is_bounded() {
        let (b, _) = broker(3, Duration::from_secs(60));
        for n in 0..10 {
            b.publish(request("a", n, None));
        }
        let stream = b.stream(&"a".into());
        let stream = stream.lock().unwrap();
        let offsets: Vec<u64> = stream.history.iter().map(|p| p.position.offset).collect();
        assert_eq!(offsets, vec![8, 9, 10]);
    }
}
