//! The Redis broker against a real `redis-server`: a node under test and a second broker
//! publishing through the same Lua script, as another node would. Reading sites nobody publishes
//! to leaves no key without a TTL.

#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{WAIT, procs::RedisServer};
use datastream::{
    broker::{Broker, HistoryOptions, PublishOutcome, RedisBroker},
    hub::{Framing, Hub, Inbox, Outbox, Subscriber},
    metrics::Metrics,
    publication::{PublishRequest, Validator},
};
use datastream_protocol::NameRules;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "test";

fn options() -> HistoryOptions {
    HistoryOptions { size: 1000, ttl: Duration::from_secs(600), dedupe_window: Duration::from_secs(60) }
}

/// A node: a Redis broker with its reader running, and its hub.
struct Node {
    broker: Broker,
    hub: Arc<Hub>,
    stop: CancellationToken,
}

impl Node {
    async fn start(url: &str) -> Node {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let redis = RedisBroker::connect(url, PREFIX, hub.clone(), metrics, options()).await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(redis.clone().run_reader(stop.clone()));
        assert!(redis.wait_connected(WAIT).await, "pub/sub connected");
        Node { broker: Broker::Redis(redis), hub, stop }
    }

    /// A local subscriber of `site` (as a session would: hub first, then the broker).
    async fn subscribe(&self, site: &str, conn: u64) -> Inbox {
        let (outbox, inbox) = Outbox::new(1 << 24, Framing::Legacy);
        let site: Arc<str> = site.into();
        self.hub.subscribe(&site, conn, Subscriber { outbox, topics: None });
        self.broker.watch(&site).await.unwrap();
        inbox
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Publishes as another node would: a broker of its own, same Redis, same script.
struct Publisher(Broker);

impl Publisher {
    async fn start(url: &str) -> Publisher {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        Publisher(Broker::Redis(RedisBroker::connect(url, PREFIX, hub, metrics, options()).await.unwrap()))
    }

    async fn publish(&self, site: &str, n: u64) -> u64 {
        let v = Validator { names: NameRules::default(), max_message_bytes: 1 << 20 };
        let req: PublishRequest = v.parse(&format!(r#"{{"site":"{site}","topic":"t","data":{n}}}"#)).unwrap();
        match self.0.publish(req).await.unwrap() {
            PublishOutcome::Published(p) => p.offset,
            PublishOutcome::Duplicate => panic!("unexpected duplicate"),
        }
    }
}

async fn command(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Subscribing to sites nobody publishes to may draw their epochs, but leaves no key that
/// lives for ever.
#[tokio::test]
async fn sites_nobody_publishes_to_leave_no_key_without_a_ttl() {
    let server = RedisServer::start();
    let node = Node::start(&server.url()).await;
    let mut sites = Vec::new();
    for i in 0..50 {
        let site: Arc<str> = format!("ghost{:08x}", rand::random::<u32>() ^ i).into();
        // Half as v2 subscribers do (a snapshot), half as legacy ones (a watch).
        if i % 2 == 0 {
            node.broker.snapshot(&site).await.unwrap();
        } else {
            node.subscribe(&site, i as u64).await;
        }
        sites.push(site);
    }
    node.broker.sweep().await;
    let publisher = Publisher::start(&server.url()).await;
    publisher.publish("real", 1).await;

    let mut conn = command(&server.url()).await;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{PREFIX}:*")).query_async(&mut conn).await.unwrap();
    let mut lasting = Vec::new();
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
        if ttl == -1 && !key.contains("{real}") {
            lasting.push(key.clone());
        }
    }
    assert!(lasting.is_empty(), "keys without a TTL for sites never published to: {lasting:?}");
    // A published site's epoch does last.
    let ttl: i64 = redis::cmd("PTTL").arg(format!("{PREFIX}:{{real}}:meta")).query_async(&mut conn).await.unwrap();
    assert_eq!(ttl, -1);
    // The epoch a subscriber was told holds when the site is first published to.
    let told = node.broker.snapshot(&sites[0]).await.unwrap().epoch;
    let published = match publisher.0.publish(request(&sites[0])).await.unwrap() {
        PublishOutcome::Published(p) => p.epoch,
        PublishOutcome::Duplicate => panic!("unexpected duplicate"),
    };
    assert_eq!(told, published);
    let ttl: i64 =
        redis::cmd("PTTL").arg(format!("{PREFIX}:{{{}}}:meta", sites[0])).query_async(&mut conn).await.unwrap();
    assert_eq!(ttl, -1, "published: the epoch lasts");
}

fn request(site: &str) -> PublishRequest {
    let v = Validator { names: NameRules::default(), max_message_bytes: 1 << 20 };
    v.parse(&format!(r#"{{"site":"{site}","topic":"t","data":1}}"#)).unwrap()
}
