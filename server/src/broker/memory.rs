//! The in-process broker: the default, needing nothing outside the relay.
//!
//! Each site has its own lock, held while a publication gets its offset, enters history and is
//! queued to local subscribers, so subscribers see every site's publications in offset order.
//!
//! Beside its history, each site keeps the latest publication of each topic (the same shared
//! [`Publication`], not a copy), by topic (and key, for the topics of
//! [`HistoryOptions::latest_keys`]); past [`HistoryOptions::latest_topics`] the one published
//! least recently (lowest offset) is dropped. Readers get them ordered by offset.
//!
//! What publishers send is bounded here:
//! - **Sites.** A site's state is created by its first publication (or a subscriber's read), with
//!   an epoch of its own, and removed by the sweep once its history and latest values have expired
//!   and no local subscriber is left: the relay then holds only the sites published within the
//!   longer of the history and latest TTLs, or subscribed to. A site published again after that
//!   gets a new epoch, so a client still holding a position of the old one is told that recovery
//!   is impossible instead of being given wrong offsets (a relay restart does the same).
//!   Counted in `datastream_broker_sites` and `datastream_broker_sites_removed_total`.
//! - **Idempotency keys.** At most [`HistoryOptions::dedupe_keys`] are remembered; past it the
//!   oldest is forgotten before its window ends (counted in `datastream_dedupe_evicted_total`), so
//!   a repeat of it arriving later publishes again. `datastream_dedupe_keys` is how many are held.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::{HistoryOptions, Latest, PublishOutcome, Snapshot};
use crate::{
    hub::{Batch, Hub},
    metrics::Metrics,
    publication::{Position, Publication, PublishRequest},
    topics::wants,
};

/// Where a topic's latest publication is kept: its topic, and its key for a topic of
/// [`HistoryOptions::latest_keys`].
type Slot = (Arc<str>, Option<Arc<str>>);

#[derive(Debug)]
struct SiteStream {
    /// Drawn when this state was created: a site whose state was removed and created again gets
    /// another.
    epoch: Arc<str>,
    /// Offset of the last publication; 0 before the first.
    offset: u64,
    /// Newest last; bounded by [`HistoryOptions`].
    history: VecDeque<Arc<Publication>>,
    /// The latest publication of each topic (and key), with its offset at hand for the scan
    /// for the least recent; bounded by [`HistoryOptions`].
    latest: HashMap<Slot, (u64, Arc<Publication>)>,
    /// Set when the sweep removed this state from the broker: whoever took it before looks again.
    retired: bool,
}

impl SiteStream {
    fn new() -> Self {
        SiteStream {
            epoch: new_epoch().into(),
            offset: 0,
            history: VecDeque::new(),
            latest: HashMap::new(),
            retired: false,
        }
    }

    /// Whether nothing is held that a reader could still be served.
    fn holds_nothing(&self) -> bool {
        self.history.is_empty() && self.latest.is_empty()
    }
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Idempotency keys seen within the dedupe window, at most a fixed number, with their arrival
/// kept in order: the oldest expires (or is evicted) first.
#[derive(Debug, Default)]
struct Dedupe {
    keys: HashMap<Arc<str>, Instant>,
    order: VecDeque<(Instant, Arc<str>)>,
}

impl Dedupe {
    /// Records `key`; false if it was already seen within `window`. Returns also how many keys
    /// were forgotten before their window ended to make room (at most `cap` are kept).
    fn insert(&mut self, key: &str, window: Duration, cap: usize, now: Instant) -> (bool, u64) {
        self.expire(window, now);
        if self.keys.contains_key(key) {
            return (false, 0);
        }
        let mut evicted = 0;
        while self.keys.len() >= cap.max(1) {
            let Some((_, oldest)) = self.order.pop_front() else { break };
            self.keys.remove(&oldest);
            evicted += 1;
        }
        let key: Arc<str> = key.into();
        self.keys.insert(key.clone(), now);
        self.order.push_back((now, key));
        (true, evicted)
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
    metrics: Arc<Metrics>,
    options: HistoryOptions,
    sites: Mutex<HashMap<Arc<str>, Arc<Mutex<SiteStream>>>>,
    dedupe: Mutex<Dedupe>,
}

impl MemoryBroker {
    /// Creates a broker delivering to `hub`; every site it creates gets a fresh random epoch.
    pub fn new(hub: Arc<Hub>, metrics: Arc<Metrics>, options: HistoryOptions) -> Self {
        MemoryBroker { hub, metrics, options, sites: Mutex::default(), dedupe: Mutex::default() }
    }

    /// Runs `f` on `site`'s state, created if it has none, under the site's lock.
    fn with_stream<T>(&self, site: &Arc<str>, f: impl FnOnce(&mut SiteStream) -> T) -> T {
        loop {
            let stream = {
                let mut sites = lock(&self.sites);
                let before = sites.len();
                let stream =
                    sites.entry(site.clone()).or_insert_with(|| Arc::new(Mutex::new(SiteStream::new()))).clone();
                if sites.len() != before {
                    self.metrics.broker_sites.set(sites.len() as i64);
                }
                stream
            };
            let mut stream = lock(&stream);
            // Removed by the sweep between the two locks: take the one that replaces it.
            if stream.retired {
                continue;
            }
            return f(&mut stream);
        }
    }

    /// See [`super::Broker::publish_all`]: every request in order, delivered as one batch.
    pub fn publish_all(&self, requests: &[PublishRequest]) -> Vec<PublishOutcome> {
        let mut batch = self.hub.batch();
        let outcomes = requests.iter().map(|req| self.publish_to(req, &mut batch)).collect();
        batch.flush();
        outcomes
    }

    fn publish_to(&self, req: &PublishRequest, batch: &mut Batch) -> PublishOutcome {
        let now = Instant::now();
        if let Some(key) = &req.idempotency_key {
            // Keys are per site, as in Redis: two sites may use the same key. A newline cannot
            // be part of a site name, so the joined key is unambiguous.
            let key = format!("{}\n{key}", req.site);
            let mut dedupe = lock(&self.dedupe);
            let (new, evicted) = dedupe.insert(&key, self.options.dedupe_window, self.options.dedupe_keys, now);
            self.metrics.dedupe_keys.set(dedupe.keys.len() as i64);
            drop(dedupe);
            self.metrics.dedupe_evicted.inc_by(evicted);
            if !new {
                return PublishOutcome::Duplicate;
            }
        }
        let key = self.options.latest_key_of(req);
        self.with_stream(&req.site, |stream| {
            stream.offset += 1;
            let position = Position { epoch: stream.epoch.clone(), offset: stream.offset };
            let publication = Arc::new(Publication::new(req, position.clone()).with_latest_key(key));
            stream.history.push_back(publication.clone());
            trim(&mut stream.history, &self.options, now);
            if self.options.latest_topics > 0 {
                remember_latest(&mut stream.latest, &publication, self.options.latest_topics);
            }
            // Delivering under the site lock keeps every subscriber's view in offset order.
            self.hub.deliver_to(&publication, batch);
            PublishOutcome::Published(position)
        })
    }

    /// See [`super::Broker::snapshot`]. Gives a site never published to its state (its epoch, which
    /// its first publication keeps); the sweep removes it again once no subscriber is left.
    pub fn snapshot(&self, site: &Arc<str>, latest: Latest<'_>) -> Snapshot {
        self.with_stream(site, |stream| self.read(stream, true, latest))
    }

    /// See [`super::Broker::latest`]: creates nothing; a site without state reads as epoch `""`
    /// with nothing held.
    pub fn latest(&self, site: &Arc<str>, topics: Option<&[Arc<str>]>) -> Snapshot {
        let stream = lock(&self.sites).get(site).cloned();
        let stream = stream.as_ref().map(|s| lock(s));
        match stream {
            Some(stream) if !stream.retired => self.read(&stream, false, Latest::Of(topics)),
            _ => Snapshot { epoch: "".into(), top: 0, history: Vec::new(), latest: Vec::new() },
        }
    }

    fn read(&self, stream: &SiteStream, with_history: bool, latest: Latest<'_>) -> Snapshot {
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
        Snapshot { epoch: stream.epoch.clone(), top: stream.offset, history, latest }
    }

    /// Number of sites whose state the broker holds.
    pub fn site_count(&self) -> usize {
        lock(&self.sites).len()
    }

    /// Expires old history, latest values and dedupe keys, and removes the state of sites left
    /// with nothing to serve and no local subscriber.
    pub fn sweep(&self) {
        let now = Instant::now();
        let streams: Vec<_> = lock(&self.sites).iter().map(|(s, st)| (s.clone(), st.clone())).collect();
        let mut idle = Vec::new();
        for (site, stream) in streams {
            let mut stream = lock(&stream);
            trim(&mut stream.history, &self.options, now);
            let ttl = self.options.latest_ttl;
            stream.latest.retain(|_, (_, p)| now.duration_since(p.published_at) <= ttl);
            if stream.holds_nothing() {
                idle.push(site);
            }
        }
        if !idle.is_empty() {
            // Checked again under the broker's lock, which a subscriber's read takes after it
            // registered in the hub: either the subscriber is counted here, or its read comes
            // after the removal and creates a new state.
            let mut sites = lock(&self.sites);
            let mut removed = 0;
            for site in idle {
                let Some(stream) = sites.get(&site) else { continue };
                let mut stream = lock(stream);
                if stream.holds_nothing() && self.hub.subscriber_count(&site) == 0 {
                    stream.retired = true;
                    drop(stream);
                    sites.remove(&site);
                    removed += 1;
                }
            }
            self.metrics.broker_sites.set(sites.len() as i64);
            self.metrics.broker_sites_removed.inc_by(removed);
        }
        let mut dedupe = lock(&self.dedupe);
        dedupe.expire(self.options.dedupe_window, now);
        self.metrics.dedupe_keys.set(dedupe.keys.len() as i64);
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
        publication::Validator,
    };
    use datastream_protocol::NameRules;

    fn request(site: &str, n: u32, key: Option<&str>) -> PublishRequest {
        let v = Validator { names: NameRules::default(), max_message_bytes: 1 << 20 };
        let mut req = v.parse(&format!(r#"{{"site":"{site}","topic":"t","data":{n}}}"#)).unwrap();
        req.idempotency_key = key.map(str::to_owned);
        req
    }

    fn options(size: usize, window: Duration) -> HistoryOptions {
        HistoryOptions {
            size,
            ttl: Duration::from_secs(600),
            dedupe_window: window,
            dedupe_keys: 1000,
            latest_topics: 4,
            latest_ttl: Duration::from_secs(600),
            latest_keys: Default::default(),
        }
    }

    fn broker_with(options: HistoryOptions) -> (MemoryBroker, Arc<Hub>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        (MemoryBroker::new(hub.clone(), metrics.clone(), options), hub, metrics)
    }

    fn broker(size: usize, window: Duration) -> (MemoryBroker, Arc<Hub>) {
        let (b, hub, _) = broker_with(options(size, window));
        (b, hub)
    }

    impl MemoryBroker {
        fn publish(&self, req: PublishRequest) -> PublishOutcome {
            self.publish_all(&[req]).pop().unwrap()
        }
    }

    fn metric(metrics: &Metrics, series: &str) -> f64 {
        let text = metrics.render();
        text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
    }

    #[test]
    fn offsets_count_per_site_each_in_an_epoch_of_its_own() {
        let (b, _) = broker(10, Duration::from_secs(60));
        let pos = |o| match o {
            PublishOutcome::Published(p) => p,
            PublishOutcome::Duplicate => panic!("duplicate"),
        };
        let a1 = pos(b.publish(request("a", 1, None)));
        let a2 = pos(b.publish(request("a", 2, None)));
        let b1 = pos(b.publish(request("b", 1, None)));
        assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, a2.epoch);
        assert_ne!(a1.epoch, b1.epoch, "each site draws its epoch");
        let (other, _) = broker(10, Duration::from_secs(60));
        assert_ne!(pos(other.publish(request("a", 1, None))).epoch, a1.epoch, "a new broker is a new epoch");
    }

    #[test]
    fn repeated_keys_are_published_once_within_the_window() {
        let (b, hub) = broker(10, Duration::from_millis(50));
        let (outbox, mut rx) = Outbox::new(1 << 20, Framing::Legacy);
        hub.subscribe(&"a".into(), 1, Subscriber { outbox, topics: None, delta: false });
        assert!(matches!(b.publish(request("a", 1, Some("k"))), PublishOutcome::Published(_)));
        assert_eq!(b.publish(request("a", 1, Some("k"))), PublishOutcome::Duplicate);
        assert!(matches!(b.publish(request("a", 2, Some("other"))), PublishOutcome::Published(_)));
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok() && rx.try_recv().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(b.publish(request("a", 1, Some("k"))), PublishOutcome::Published(_)), "window over");
    }

    #[test]
    fn past_the_cap_the_oldest_key_is_forgotten_and_counted() {
        let (b, _, metrics) = broker_with(HistoryOptions { dedupe_keys: 3, ..options(10, Duration::from_secs(60)) });
        for k in ["k1", "k2", "k3", "k4"] {
            assert!(matches!(b.publish(request("a", 1, Some(k))), PublishOutcome::Published(_)));
        }
        assert_eq!(metric(&metrics, "datastream_dedupe_keys"), 3.0);
        assert_eq!(metric(&metrics, "datastream_dedupe_evicted_total"), 1.0);
        assert_eq!(b.publish(request("a", 1, Some("k4"))), PublishOutcome::Duplicate, "still held");
        assert!(
            matches!(b.publish(request("a", 1, Some("k1"))), PublishOutcome::Published(_)),
            "the oldest was forgotten early: its repeat publishes again"
        );
        assert_eq!(metric(&metrics, "datastream_dedupe_evicted_total"), 2.0);
        assert_eq!(metric(&metrics, "datastream_dedupe_keys"), 3.0);
    }

    #[test]
    fn history_expires_by_age_and_recovery_then_fails() {
        let (b, _, _) =
            broker_with(HistoryOptions { ttl: Duration::from_millis(30), ..options(100, Duration::from_secs(60)) });
        b.publish(request("a", 1, None));
        b.publish(request("a", 2, None));
        let site: Arc<str> = "a".into();
        let snap = b.snapshot(&site, Latest::No);
        assert_eq!(snap.recover(&snap.epoch, 0, None).map(|v| v.len()), Some(2));
        std::thread::sleep(Duration::from_millis(40));
        b.sweep();
        let snap = b.snapshot(&site, Latest::No);
        assert_eq!((snap.top, snap.history.len()), (2, 0), "offsets survive while the latest values last");
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
    fn reading_a_never_published_site_leaves_nothing_behind_once_swept() {
        let (b, _, metrics) = broker_with(options(10, Duration::from_secs(60)));
        for n in 0..100 {
            let site: Arc<str> = format!("random{n}").into();
            let snap = b.snapshot(&site, Latest::Of(None));
            assert_eq!((snap.top, snap.history.len()), (0, 0));
            assert_eq!(b.latest(&site, None).epoch, snap.epoch, "the epoch a subscriber was told holds");
        }
        assert_eq!(&*b.latest(&"unread".into(), None).epoch, "", "a reader creates nothing");
        b.sweep();
        assert_eq!(b.site_count(), 0);
        assert_eq!(metric(&metrics, "datastream_broker_sites"), 0.0);
        assert_eq!(metric(&metrics, "datastream_broker_sites_removed_total"), 100.0);
        b.publish(request("a", 1, None));
        assert_eq!(b.site_count(), 1);
        assert_eq!(metric(&metrics, "datastream_broker_sites"), 1.0);
    }

    #[test]
    fn a_site_with_a_subscriber_keeps_its_state_and_epoch() {
        let (b, hub, _) = broker_with(HistoryOptions {
            ttl: Duration::from_millis(20),
            latest_ttl: Duration::from_millis(20),
            ..options(10, Duration::from_secs(60))
        });
        let site: Arc<str> = "a".into();
        let (outbox, _rx) = Outbox::new(1 << 20, Framing::Legacy);
        hub.subscribe(&site, 1, Subscriber { outbox, topics: None, delta: false });
        let told = b.snapshot(&site, Latest::No).epoch;
        let PublishOutcome::Published(first) = b.publish(request("a", 1, None)) else { panic!("duplicate") };
        assert_eq!(
            (first.epoch.clone(), first.offset),
            (told.clone(), 1),
            "the first publication keeps the epoch told"
        );
        std::thread::sleep(Duration::from_millis(30));
        b.sweep();
        assert_eq!(b.site_count(), 1, "subscribed: kept though nothing is held");
        let PublishOutcome::Published(next) = b.publish(request("a", 2, None)) else { panic!("duplicate") };
        assert_eq!((next.epoch, next.offset), (told.clone(), 2));
        hub.unsubscribe(&site, 1);
        std::thread::sleep(Duration::from_millis(30));
        b.sweep();
        assert_eq!(b.site_count(), 0, "expired and unsubscribed: removed");
        let PublishOutcome::Published(again) = b.publish(request("a", 3, None)) else { panic!("duplicate") };
        assert_ne!(again.epoch, told, "state created again: a new epoch, never the old offsets");
        assert_eq!(again.offset, 1);
    }

    #[test]
    fn history_is_bounded() {
        let (b, _) = broker(3, Duration::from_secs(60));
        for n in 0..10 {
            b.publish(request("a", n, None));
        }
        let snap = b.snapshot(&"a".into(), Latest::No);
        let offsets: Vec<u64> = snap.history.iter().map(|p| p.position.offset).collect();
        assert_eq!(offsets, vec![8, 9, 10]);
    }

    #[test]
    fn a_batch_is_published_in_order_with_its_repeats_dropped() {
        let (b, hub) = broker(10, Duration::from_secs(60));
        let (outbox, mut rx) = Outbox::new(1 << 20, Framing::Legacy);
        hub.subscribe(&"a".into(), 1, Subscriber { outbox, topics: None, delta: false });
        let outcomes = b.publish_all(&[request("a", 1, Some("k")), request("a", 2, None), request("a", 1, Some("k"))]);
        let offsets: Vec<_> = outcomes
            .iter()
            .map(|o| match o {
                PublishOutcome::Published(p) => Some(p.offset),
                PublishOutcome::Duplicate => None,
            })
            .collect();
        assert_eq!(offsets, vec![Some(1), Some(2), None]);
        let mut got = Vec::new();
        while let Ok(p) = rx.try_recv() {
            got.push(p.position.offset);
        }
        assert_eq!(got, vec![1, 2]);
    }
}
