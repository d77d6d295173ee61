//! One suite, run against every broker: positions, ordered delivery, bounded history, exact
//! recovery, rewind, dedupe, expiry, the latest publication of each topic. The Redis runs use a
//! real `redis-server`.

#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::procs::RedisServer;
use datastream::{
    broker::{Broker, HistoryOptions, Latest, MemoryBroker, PublishOutcome, RedisBroker, RedisSettings, Snapshot},
    hub::{Event, Framing, Hub, Outbox, Subscriber},
    metrics::Metrics,
    publication::{LatestKeys, Position, PublishRequest, Validator},
};
use datastream_protocol::NameRules;
use tokio_util::sync::CancellationToken;

struct Backend {
    broker: Broker,
    hub: Arc<Hub>,
    _redis: Option<RedisServer>,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn options(size: usize, ttl: Duration) -> HistoryOptions {
    HistoryOptions {
        size,
        ttl,
        dedupe_window: Duration::from_secs(60),
        dedupe_keys: 100_000,
        latest_topics: 64,
        latest_ttl: Duration::from_secs(600),
        latest_keys: LatestKeys::new([("sitestatus".to_owned(), "statusType".to_owned())]),
    }
}

fn latest_options(topics: usize, ttl: Duration) -> HistoryOptions {
    HistoryOptions { latest_topics: topics, latest_ttl: ttl, ..options(5, Duration::from_secs(600)) }
}

/// `(topic, offset, data)` of a snapshot's latest publications, in the order given.
fn latest_of(snap: &Snapshot) -> Vec<(String, u64, String)> {
    snap.latest.iter().map(|p| (p.topic.to_string(), p.position.offset, p.data.get().to_owned())).collect()
}

fn entry(topic: &str, offset: u64, n: u64) -> (String, u64, String) {
    (topic.to_owned(), offset, format!(r#"{{"n":{n}}}"#))
}

async fn memory(options: HistoryOptions) -> Backend {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    let broker = Broker::Memory(Box::new(MemoryBroker::new(hub.clone(), metrics, options)));
    Backend { broker, hub, _redis: None, stop: CancellationToken::new() }
}

async fn redis(options: HistoryOptions) -> Backend {
    let server = RedisServer::start();
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    let redis =
        RedisBroker::connect(&RedisSettings::new(&server.url(), "test"), hub.clone(), metrics, options).await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(redis.clone().run_reader(stop.clone()));
    // The reader has connected once `watch` can subscribe.
    let probe: Arc<str> = "probe".into();
    for _ in 0..200 {
        if redis.watch(&probe).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Backend { broker: Broker::Redis(redis), hub, _redis: Some(server), stop }
}

fn request(site: &str, topic: &str, n: u64, key: Option<&str>) -> PublishRequest {
    let v = Validator { names: NameRules::default(), max_message_bytes: 1 << 20 };
    let mut req = v.parse(&format!(r#"{{"site":"{site}","topic":"{topic}","data":{{"n":{n}}}}}"#)).unwrap();
    req.idempotency_key = key.map(str::to_owned);
    req
}

async fn publish(b: &Backend, site: &str, topic: &str, n: u64) -> Position {
    match b.broker.publish(request(site, topic, n, None)).await.unwrap() {
        PublishOutcome::Published(p) => p,
        PublishOutcome::Duplicate => panic!("unexpected duplicate"),
    }
}

async fn positions_count_per_site(b: Backend) {
    let a: Vec<u64> = [publish(&b, "a", "t", 1).await, publish(&b, "a", "t", 2).await, publish(&b, "a", "t", 3).await]
        .iter()
        .map(|p| p.offset)
        .collect();
    assert_eq!(a, vec![1, 2, 3]);
    let b1 = publish(&b, "b", "t", 1).await;
    assert_eq!(b1.offset, 1);
    assert!(!b1.epoch.is_empty());
    let snap = b.broker.snapshot(&"a".into()).await.unwrap();
    assert_eq!(snap.top, 3);
    // A site never published to has a position too, and its first publication keeps that epoch.
    let fresh = b.broker.snapshot(&"fresh".into()).await.unwrap();
    assert_eq!((fresh.top, fresh.history.len()), (0, 0));
    assert_eq!(publish(&b, "fresh", "t", 1).await.epoch, fresh.epoch);
}

async fn delivers_in_order_to_watchers(b: Backend) {
    let (outbox, mut rx) = Outbox::new(1 << 20, Framing::Legacy);
    let site: Arc<str> = "mrc".into();
    b.hub.subscribe(&site, 1, Subscriber { outbox, topics: None, delta: false });
    b.broker.watch(&site).await.unwrap();
    for n in 1..=50 {
        publish(&b, "mrc", "t", n).await;
    }
    publish(&b, "other", "t", 0).await;
    for n in 1..=50 {
        let Event::Publication(p) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap() else {
            panic!("a publication, not a request to close")
        };
        assert_eq!((p.position.offset, p.data.get().to_owned()), (n, format!(r#"{{"n":{n}}}"#)));
        assert_eq!(&*p.site, "mrc");
    }
    assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_err(), "nothing else");
}

async fn history_is_bounded_and_recovery_is_exact_or_refused(b: Backend) {
    for n in 1..=8 {
        publish(&b, "mrc", "t", n).await;
    }
    let snap = b.broker.snapshot(&"mrc".into()).await.unwrap();
    assert_eq!(snap.top, 8);
    let held: Vec<u64> = snap.history.iter().map(|p| p.position.offset).collect();
    assert_eq!(held, vec![4, 5, 6, 7, 8]);
    let replay: Vec<u64> = snap.recover(&snap.epoch, 5, None).unwrap().iter().map(|p| p.position.offset).collect();
    assert_eq!(replay, vec![6, 7, 8]);
    assert!(snap.recover(&snap.epoch, 3, None).is_some(), "4.. is held");
    assert!(snap.recover(&snap.epoch, 2, None).is_none(), "3 is gone: no partial replay");
    assert!(snap.recover("another-epoch", 7, None).is_none());
    assert_eq!(snap.recover(&snap.epoch, 8, None).map(|v| v.len()), Some(0));
    assert_eq!(snap.history[4].data.get(), r#"{"n":8}"#, "data kept verbatim");
}

async fn rewind_and_recovery_respect_topic_filters(b: Backend) {
    for n in 1..=5 {
        publish(&b, "mrc", if n % 2 == 0 { "even" } else { "odd" }, n).await;
    }
    let snap = b.broker.snapshot(&"mrc".into()).await.unwrap();
    let even: Vec<Arc<str>> = vec!["even".into()];
    let rewound: Vec<u64> = snap.rewind(10, Some(&even)).iter().map(|p| p.position.offset).collect();
    assert_eq!(rewound, vec![2, 4]);
    let recovered: Vec<u64> =
        snap.recover(&snap.epoch, 2, Some(&even)).unwrap().iter().map(|p| p.position.offset).collect();
    assert_eq!(recovered, vec![4]);
}

async fn repeated_keys_publish_once(b: Backend) {
    let first = b.broker.publish(request("mrc", "t", 1, Some("k1"))).await.unwrap();
    assert!(matches!(first, PublishOutcome::Published(_)));
    assert_eq!(b.broker.publish(request("mrc", "t", 1, Some("k1"))).await.unwrap(), PublishOutcome::Duplicate);
    assert!(matches!(
        b.broker.publish(request("mrc", "t", 1, Some("k2"))).await.unwrap(),
        PublishOutcome::Published(_)
    ));
    assert_eq!(b.broker.snapshot(&"mrc".into()).await.unwrap().top, 2);
    // Keys are per site: another site's publication with the same key is its own.
    let other = b.broker.publish(request("saf", "t", 1, Some("k1"))).await.unwrap();
    assert!(matches!(other, PublishOutcome::Published(_)), "{other:?}");
    assert_eq!(b.broker.publish(request("saf", "t", 1, Some("k1"))).await.unwrap(), PublishOutcome::Duplicate);
}

async fn history_expires_by_age(b: Backend) {
    publish(&b, "mrc", "t", 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    publish(&b, "mrc", "t", 2).await;
    b.broker.sweep().await;
    let snap = b.broker.snapshot(&"mrc".into()).await.unwrap();
    let held: Vec<u64> = snap.history.iter().map(|p| p.position.offset).collect();
    assert_eq!(held, vec![2]);
    assert!(snap.recover(&snap.epoch, 0, None).is_none());
}

async fn latest_outlives_history_and_drops_the_least_recently_published(b: Backend) {
    let site: Arc<str> = "mrc".into();
    publish(&b, "mrc", "phase", 0).await;
    for n in 1..=20 {
        publish(&b, "mrc", "weather", n).await;
    }
    let snap = b.broker.snapshot_with(&site, Latest::Of(None)).await.unwrap();
    assert_eq!(snap.top, 21);
    assert_eq!(snap.history.len(), 5, "history keeps its own bound");
    assert_eq!(latest_of(&snap), vec![entry("phase", 1, 0), entry("weather", 21, 20)], "oldest first");
    assert!(b.broker.snapshot(&site).await.unwrap().latest.is_empty(), "read only when asked");

    // Limit 3: a fourth topic drops the one published least recently, then a republished topic
    // moves to the back.
    publish(&b, "mrc", "focus", 22).await;
    publish(&b, "mrc", "dome", 23).await;
    let snap = b.broker.snapshot_with(&site, Latest::Of(None)).await.unwrap();
    assert_eq!(latest_of(&snap), vec![entry("weather", 21, 20), entry("focus", 22, 22), entry("dome", 23, 23)]);
    publish(&b, "mrc", "weather", 24).await;
    let snap = b.broker.snapshot_with(&site, Latest::Of(None)).await.unwrap();
    assert_eq!(latest_of(&snap), vec![entry("focus", 22, 22), entry("dome", 23, 23), entry("weather", 24, 24)]);

    // Filtered by topic; the reader's view (no subscription) is the same.
    let topics: Vec<Arc<str>> = vec!["weather".into(), "phase".into(), "nothing".into()];
    let snap = b.broker.snapshot_with(&site, Latest::Of(Some(&topics))).await.unwrap();
    assert_eq!(latest_of(&snap), vec![entry("weather", 24, 24)]);
    let none = b.broker.snapshot_with(&site, Latest::Of(Some(&[]))).await.unwrap();
    assert!(none.latest.is_empty(), "no topic, no value");
    let read = b.broker.latest(&site, None).await.unwrap();
    assert_eq!(
        (read.top, &*read.epoch, latest_of(&read)),
        (24, &*snap.epoch, latest_of(&b.broker.snapshot_with(&site, Latest::Of(None)).await.unwrap()))
    );
    assert!(read.history.is_empty());

    // Other sites are their own.
    publish(&b, "saf", "phase", 7).await;
    let saf = b.broker.latest(&"saf".into(), None).await.unwrap();
    assert_eq!(latest_of(&saf), vec![entry("phase", 1, 7)]);
    let nobody = b.broker.latest(&"nobody".into(), None).await.unwrap();
    assert_eq!((nobody.top, nobody.latest.len()), (0, 0), "a site never published has nothing");
}

/// `sitestatus` (a topic of `latest_keys`) keeps one latest publication per `data.statusType`,
/// and one for those without it; each counts toward the limit.
async fn latest_of_a_keyed_topic_is_kept_per_key(b: Backend) {
    let site: Arc<str> = "mrc".into();
    let status = |kind: &str, n: u64| {
        let v = Validator { names: NameRules::default(), max_message_bytes: 1 << 20 };
        let data =
            if kind.is_empty() { format!(r#"{{"n":{n}}}"#) } else { format!(r#"{{"statusType":"{kind}","n":{n}}}"#) };
        v.parse(&format!(r#"{{"site":"mrc","topic":"sitestatus","data":{data}}}"#)).unwrap()
    };
    for (kind, n) in [("weather", 1), ("enclosure", 2), ("weather", 3), ("", 4), ("device", 5)] {
        assert!(matches!(b.broker.publish(status(kind, n)).await.unwrap(), PublishOutcome::Published(_)));
    }
    let keyed = |snap: &Snapshot| {
        snap.latest
            .iter()
            .map(|p| (p.latest_key.as_deref().unwrap_or("").to_owned(), p.position.offset))
            .collect::<Vec<_>>()
    };
    let topics: Vec<Arc<str>> = vec!["sitestatus".into()];
    let snap = b.broker.snapshot_with(&site, Latest::Of(Some(&topics))).await.unwrap();
    let want: Vec<(String, u64)> =
        vec![("enclosure".into(), 2), ("weather".into(), 3), ("".into(), 4), ("device".into(), 5)];
    assert_eq!(keyed(&snap), want);
    assert!(snap.latest.iter().all(|p| &*p.topic == "sitestatus"));
    assert_eq!(keyed(&b.broker.latest(&site, None).await.unwrap()), want);
    // Limit 4: a fifth slot drops the least recently published (enclosure, offset 2).
    publish(&b, "mrc", "phase", 6).await;
    let snap = b.broker.snapshot_with(&site, Latest::Of(None)).await.unwrap();
    assert_eq!(snap.latest.iter().map(|p| p.position.offset).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
}

async fn latest_expires_by_age(b: Backend) {
    let site: Arc<str> = "mrc".into();
    publish(&b, "mrc", "phase", 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    publish(&b, "mrc", "weather", 2).await;
    b.broker.sweep().await;
    let snap = b.broker.snapshot_with(&site, Latest::Of(None)).await.unwrap();
    assert_eq!(latest_of(&snap), vec![entry("weather", 2, 2)]);
    assert_eq!(latest_of(&b.broker.latest(&site, None).await.unwrap()), vec![entry("weather", 2, 2)]);
}

/// A batch is published in order: outcomes in the order given (a repeat of a key within the batch
/// is a duplicate), offsets per site in that order, delivered in it.
async fn a_batch_is_published_in_order(b: Backend) {
    let (outbox, mut rx) = Outbox::new(1 << 20, Framing::Legacy);
    let site: Arc<str> = "mrc".into();
    b.hub.subscribe(&site, 1, Subscriber { outbox, topics: None, delta: false });
    b.broker.watch(&site).await.unwrap();
    let mut batch = Vec::new();
    for n in 1..=250 {
        // Key "k" on 10 and 30 (first on mrc, on saf), repeated by 20 and 40 (mrc): keys are per site.
        let key = [10, 20, 30, 40].contains(&n).then_some("k");
        batch.push(request(if n % 3 == 0 { "saf" } else { "mrc" }, "t", n, key));
    }
    let outcomes = b.broker.publish_all(&batch).await.unwrap();
    assert_eq!(outcomes.len(), 250);
    let (mut mrc, mut saf) = (0, 0);
    for (n, outcome) in (1..=250u64).zip(&outcomes) {
        if n == 20 || n == 40 {
            assert_eq!(*outcome, PublishOutcome::Duplicate, "message {n}");
            continue;
        }
        let PublishOutcome::Published(p) = outcome else { panic!("message {n}: {outcome:?}") };
        let count = if n % 3 == 0 { &mut saf } else { &mut mrc };
        *count += 1;
        assert_eq!(p.offset, *count, "message {n}");
    }
    for offset in 1..=mrc {
        let Event::Publication(p) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap() else {
            panic!("a publication, not a request to close")
        };
        assert_eq!(p.position.offset, offset);
    }
}

/// A site left alone until its history and latest values expired starts a new epoch when it is
/// published again (memory: its state was removed; Redis: its position expired): a client holding
/// an old position is told recovery is impossible, never given wrong offsets. While anything is
/// still held, the epoch and the offsets go on.
async fn a_site_that_held_nothing_for_its_ttls_starts_a_new_epoch(b: Backend) {
    let first = publish(&b, "mrc", "t", 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.broker.sweep().await;
    let held = publish(&b, "mrc", "t", 2).await;
    assert_eq!((&held.epoch, held.offset), (&first.epoch, 2), "history still held: same epoch");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    b.broker.sweep().await;
    let snap = b.broker.latest(&"mrc".into(), None).await.unwrap();
    assert_eq!((&*snap.epoch, snap.top, snap.latest.len()), ("", 0, 0), "nothing left of the site");
    let again = publish(&b, "mrc", "t", 3).await;
    assert_ne!(again.epoch, first.epoch);
    assert_eq!(again.offset, 1);
    let snap = b.broker.snapshot(&"mrc".into()).await.unwrap();
    assert!(snap.recover(&first.epoch, 2, None).is_none(), "an old position cannot be recovered");
}

async fn latest_can_be_turned_off(b: Backend) {
    publish(&b, "mrc", "phase", 1).await;
    let snap = b.broker.snapshot_with(&"mrc".into(), Latest::Of(None)).await.unwrap();
    assert_eq!((snap.top, snap.latest.len()), (1, 0));
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn positions_count_per_site() {
                super::positions_count_per_site(super::$backend(options(100, Duration::from_secs(600))).await).await;
            }
            #[tokio::test]
            async fn delivers_in_order_to_watchers() {
                super::delivers_in_order_to_watchers(super::$backend(options(100, Duration::from_secs(600))).await)
                    .await;
            }
            #[tokio::test]
            async fn history_is_bounded_and_recovery_is_exact_or_refused() {
                super::history_is_bounded_and_recovery_is_exact_or_refused(
                    super::$backend(options(5, Duration::from_secs(600))).await,
                )
                .await;
            }
            #[tokio::test]
            async fn rewind_and_recovery_respect_topic_filters() {
                super::rewind_and_recovery_respect_topic_filters(
                    super::$backend(options(100, Duration::from_secs(600))).await,
                )
                .await;
            }
            #[tokio::test]
            async fn repeated_keys_publish_once() {
                super::repeated_keys_publish_once(super::$backend(options(100, Duration::from_secs(600))).await).await;
            }
            #[tokio::test]
            async fn latest_outlives_history_and_drops_the_least_recently_published() {
                super::latest_outlives_history_and_drops_the_least_recently_published(
                    super::$backend(latest_options(3, Duration::from_secs(600))).await,
                )
                .await;
            }
            #[tokio::test]
            async fn latest_of_a_keyed_topic_is_kept_per_key() {
                super::latest_of_a_keyed_topic_is_kept_per_key(
                    super::$backend(latest_options(4, Duration::from_secs(600))).await,
                )
                .await;
            }
            #[tokio::test]
            async fn latest_expires_by_age() {
                super::latest_expires_by_age(super::$backend(latest_options(3, Duration::from_millis(300))).await)
                    .await;
            }
            #[tokio::test]
            async fn latest_can_be_turned_off() {
                super::latest_can_be_turned_off(super::$backend(latest_options(0, Duration::from_secs(600))).await)
                    .await;
            }
            #[tokio::test]
            async fn a_batch_is_published_in_order() {
                super::a_batch_is_published_in_order(super::$backend(options(100, Duration::from_secs(600))).await)
                    .await;
            }
            #[tokio::test]
            async fn a_site_that_held_nothing_for_its_ttls_starts_a_new_epoch() {
                let options =
                    HistoryOptions { latest_ttl: Duration::from_secs(1), ..options(100, Duration::from_secs(1)) };
                super::a_site_that_held_nothing_for_its_ttls_starts_a_new_epoch(super::$backend(options).await).await;
            }
            #[tokio::test]
            async fn history_expires_by_age() {
                super::history_expires_by_age(super::$backend(options(100, Duration::from_millis(300))).await).await;
            }
        }
    };
}

conformance!(memory);
conformance!(redis);

/// A site watched while the pub/sub connection is not (yet) up is subscribed once it is.
#[tokio::test]
async fn redis_a_site_watched_before_pubsub_connects_is_subscribed_when_it_does() {
    let server = RedisServer::start();
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    let settings = RedisSettings::new(&server.url(), "test");
    let redis =
        RedisBroker::connect(&settings, hub.clone(), metrics, options(100, Duration::from_secs(60))).await.unwrap();
    let (outbox, mut rx) = Outbox::new(1 << 20, Framing::Legacy);
    let site: Arc<str> = "early".into();
    hub.subscribe(&site, 1, Subscriber { outbox, topics: None, delta: false });
    assert!(redis.watch(&site).await.is_err(), "no pub/sub connection yet");
    let stop = CancellationToken::new();
    tokio::spawn(redis.clone().run_reader(stop.clone()));
    assert!(redis.wait_connected(Duration::from_secs(5)).await);
    let broker = Broker::Redis(redis);
    let published = broker.publish(request("early", "t", 7, None)).await.unwrap();
    assert!(matches!(published, PublishOutcome::Published(_)));
    let Event::Publication(p) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("delivered")
    else {
        panic!("a publication, not a request to close")
    };
    assert_eq!(p.data.get(), r#"{"n":7}"#);
    stop.cancel();
}

/// Latest values of an older epoch never surface in a newer one: a site whose position was lost
/// (its `meta` key gone, say evicted) starts a new epoch with none.
#[tokio::test]
async fn redis_a_new_epoch_starts_without_the_old_latest_values() {
    let b = redis(latest_options(64, Duration::from_secs(600))).await;
    let site: Arc<str> = "mrc".into();
    let old = publish(&b, "mrc", "phase", 1).await;
    publish(&b, "mrc", "weather", 2).await;
    let Some(server) = &b._redis else { unreachable!() };
    let mut conn = ::redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("DEL").arg("test:{mrc}:meta").query_async(&mut conn).await.unwrap();
    let new = publish(&b, "mrc", "weather", 3).await;
    assert_ne!(new.epoch, old.epoch);
    assert_eq!(new.offset, 1);
    let snap = b.broker.snapshot_with(&site, Latest::Of(None)).await.unwrap();
    assert_eq!(latest_of(&snap), vec![entry("weather", 1, 3)]);
    // The same when a reader draws the new epoch first.
    publish(&b, "saf", "phase", 1).await;
    let _: () = ::redis::cmd("DEL").arg("test:{saf}:meta").query_async(&mut conn).await.unwrap();
    let snap = b.broker.snapshot_with(&"saf".into(), Latest::Of(None)).await.unwrap();
    assert_eq!((snap.top, snap.latest.len()), (0, 0));
    // A reader without a subscription creates nothing.
    let read = b.broker.latest(&"nobody".into(), None).await.unwrap();
    assert_eq!((&*read.epoch, read.top, read.latest.len()), ("", 0, 0));
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("test:{nobody}*").query_async(&mut conn).await.unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// A site that stops publishing leaves no history behind in Redis once it is too old to replay:
/// the stream expires after the history TTL; the position (`meta`) stays as long as the latest
/// values may.
#[tokio::test]
async fn redis_a_quiet_sites_history_expires_and_its_position_stays() {
    let b = redis(options(100, Duration::from_millis(300))).await;
    publish(&b, "mrc", "t", 1).await;
    let Some(server) = &b._redis else { unreachable!() };
    let mut conn = ::redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = ::redis::cmd("PTTL").arg("test:{mrc}:stream").query_async(&mut conn).await.unwrap();
    assert!((1..=300).contains(&ttl), "stream TTL {ttl} ms");
    let ttl: i64 = ::redis::cmd("PTTL").arg("test:{mrc}:meta").query_async(&mut conn).await.unwrap();
    assert!((300_000..=600_000).contains(&ttl), "the position is kept as long as the latest values: {ttl} ms");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let exists: i64 = ::redis::cmd("EXISTS").arg("test:{mrc}:stream").query_async(&mut conn).await.unwrap();
    assert_eq!(exists, 0);
    let next = publish(&b, "mrc", "t", 2).await;
    assert_eq!(next.offset, 2, "offsets go on in the same epoch");
}

/// Redis forgetting the scripts (a restart without persistence, `SCRIPT FLUSH`, a failover) costs
/// a batch nothing: the pipeline's calls are sent again once the script is loaded, in order.
#[tokio::test]
async fn redis_a_batch_survives_redis_forgetting_the_script() {
    let b = redis(options(100, Duration::from_secs(600))).await;
    publish(&b, "mrc", "t", 0).await;
    let Some(server) = &b._redis else { unreachable!() };
    let mut conn = ::redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    let batch: Vec<_> = (1..=20).map(|n| request("mrc", "t", n, None)).collect();
    let offsets: Vec<u64> = (b.broker.publish_all(&batch).await.unwrap().iter())
        .map(|o| match o {
            PublishOutcome::Published(p) => p.offset,
            PublishOutcome::Duplicate => 0,
        })
        .collect();
    assert_eq!(offsets, (2..=21).collect::<Vec<u64>>());
    let snap = b.broker.snapshot(&"mrc".into()).await.unwrap();
    let data: Vec<String> = snap.history.iter().skip(1).map(|p| p.data.get().to_owned()).collect();
    assert_eq!(data, (1..=20).map(|n| format!(r#"{{"n":{n}}}"#)).collect::<Vec<_>>(), "in order");
}
