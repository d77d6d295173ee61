//! The Redis broker when its pub/sub connection fails, against a real `redis-server`: a node
//! under test (reaching Redis directly or through a proxy that can refuse it) and a second broker
//! publishing through the same Lua script, as another node would. Also: reading sites nobody
//! publishes to leaves no key without a TTL.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{
    WAIT,
    procs::{RedisServer, Relay},
};
use datastream::{
    broker::{Broker, HistoryOptions, PublishOutcome, RedisBroker, RedisSettings},
    hub::{Event, Framing, Hub, Inbox, Outbox, Subscriber},
    metrics::Metrics,
    publication::{LatestKeys, PublishRequest, Validator},
};
use datastream_protocol::NameRules;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "test";

fn options() -> HistoryOptions {
    HistoryOptions {
        size: 1000,
        ttl: Duration::from_secs(600),
        dedupe_window: Duration::from_secs(60),
        dedupe_keys: 100_000,
        latest_topics: 64,
        latest_ttl: Duration::from_secs(600),
        latest_keys: LatestKeys::new([("sitestatus".to_owned(), "statusType".to_owned())]),
    }
}

/// A node: a Redis broker with its reader running, and its hub.
struct Node {
    redis: Arc<RedisBroker>,
    broker: Broker,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Node {
    async fn start(url: &str) -> Node {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let redis = RedisBroker::connect(&RedisSettings::new(url, PREFIX), hub.clone(), metrics.clone(), options())
            .await
            .unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(redis.clone().run_reader(stop.clone()));
        assert!(redis.wait_connected(WAIT).await, "pub/sub connected");
        Node { broker: Broker::Redis(redis.clone()), redis, hub, metrics, stop }
    }

    /// A local subscriber of `site` (as a session would: hub first, then the broker).
    async fn subscribe(&self, site: &str, conn: u64) -> Inbox {
        let (outbox, inbox) = Outbox::new(1 << 24, Framing::Legacy);
        let site: Arc<str> = site.into();
        self.hub.subscribe(&site, conn, Subscriber { outbox, topics: None, delta: false });
        self.broker.watch(&site).await.unwrap();
        inbox
    }

    fn metric(&self, series: &str) -> f64 {
        common::metric(&self.metrics.render(), series)
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
        Publisher(Broker::Redis(
            RedisBroker::connect(&RedisSettings::new(url, PREFIX), hub, metrics, options()).await.unwrap(),
        ))
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

/// The next publication's offset, waiting at most [`WAIT`].
async fn next_offset(inbox: &mut Inbox) -> u64 {
    match tokio::time::timeout(WAIT, inbox.recv()).await.expect("a publication in time") {
        Event::Publication(p) => p.position.offset,
        _ => panic!("a publication, not a request to close"),
    }
}

async fn expect_nothing_more(inbox: &mut Inbox) {
    assert!(tokio::time::timeout(Duration::from_millis(300), inbox.recv()).await.is_err(), "nothing else");
}

/// A loopback TCP proxy to Redis that can drop every connection and refuse new ones for a while.
struct Gate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn start(upstream: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (is_open, list) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        Gate { addr, open, conns, accept }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Drops every connection and refuses new ones.
    fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
        self.accept.abort();
    }
}

async fn command(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Publications made while a node's pub/sub connection was down reach its subscribers once it
/// is back, on every site, with nothing published afterwards to reveal the gap.
#[tokio::test]
async fn after_a_reconnect_every_watched_site_gets_what_it_missed_without_a_later_publication() {
    let server = RedisServer::start();
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let gate = Gate::start(upstream).await;
    let node = Node::start(&gate.url()).await;
    let publisher = Publisher::start(&server.url()).await;
    let sites = ["s1", "s2", "s3", "s4"];
    let mut inboxes = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        inboxes.push(node.subscribe(site, i as u64 + 1).await);
    }
    for site in sites {
        for n in 1..=3 {
            publisher.publish(site, n).await;
        }
    }
    for inbox in &mut inboxes {
        for n in 1..=3 {
            assert_eq!(next_offset(inbox).await, n);
        }
    }

    gate.close();
    // While the node cannot reach Redis, the other node keeps publishing; s4 gets nothing new.
    for site in &sites[..3] {
        for n in 4..=6 {
            publisher.publish(site, n).await;
        }
    }
    gate.reopen();

    for inbox in &mut inboxes[..3] {
        for n in 4..=6 {
            assert_eq!(next_offset(inbox).await, n, "missed publications delivered in order");
        }
    }
    for inbox in &mut inboxes {
        expect_nothing_more(inbox).await;
    }
    assert_eq!(node.metric("datastream_redis_reconnects_total"), 1.0);
    assert_eq!(node.metric("datastream_redis_filled_total"), 9.0);

    // The subscriptions are live again.
    for site in sites {
        publisher.publish(site, 7).await;
    }
    for (inbox, top) in inboxes.iter_mut().zip([7, 7, 7, 4]) {
        assert_eq!(next_offset(inbox).await, top);
        expect_nothing_more(inbox).await;
    }
}

/// `CLIENT KILL TYPE pubsub` in the middle of publishing to several sites: every subscriber
/// gets every publication once and in order, including those published just before the last kill.
#[tokio::test]
async fn killing_the_pubsub_connection_while_publishing_loses_and_doubles_nothing() {
    let server = RedisServer::start();
    let node = Node::start(&server.url()).await;
    let publisher = Publisher::start(&server.url()).await;
    let mut admin = command(&server.url()).await;
    let sites = ["k1", "k2", "k3", "k4", "k5"];
    let mut inboxes = HashMap::new();
    for (i, site) in sites.iter().enumerate() {
        // Two subscribers on some sites: each gets everything.
        inboxes.insert((*site, 0), node.subscribe(site, 2 * i as u64 + 1).await);
        if i % 2 == 0 {
            inboxes.insert((*site, 1), node.subscribe(site, 2 * i as u64 + 2).await);
        }
    }
    let rounds: u64 = 60;
    // Sites fall silent one by one, each just after a kill: what they got in between is a gap
    // that no later publication reveals.
    let last = |i: usize| rounds.min(rounds + 1 - 10 * i as u64);
    let mut kills = 0.0;
    for round in 1..=rounds {
        for (i, site) in sites.iter().enumerate() {
            if round <= last(i) {
                publisher.publish(site, round).await;
            }
        }
        if round % 10 == 0 {
            // Kill a connection that is up again, not one still reconnecting.
            wait_subscribed(&mut admin, sites.len()).await;
            let killed: u64 =
                redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut admin).await.unwrap();
            assert_eq!(killed, 1, "the node's pub/sub connection");
            kills += 1.0;
        }
    }
    for (i, site) in sites.iter().enumerate() {
        for copy in 0..2 {
            let Some(inbox) = inboxes.get_mut(&(*site, copy)) else { continue };
            for n in 1..=last(i) {
                assert_eq!(next_offset(inbox).await, n, "{site} (subscriber {copy})");
            }
            expect_nothing_more(inbox).await;
        }
    }
    // The last kill left nothing to fill; its reconnect may still be in its backoff.
    common::eventually("every kill counted as a reconnect", || {
        node.metric("datastream_redis_reconnects_total") == kills
    })
    .await;
}

/// Waits until a pub/sub connection listens to `channels` channels.
async fn wait_subscribed(admin: &mut redis::aio::MultiplexedConnection, channels: usize) {
    let want = format!(" sub={channels} ");
    for _ in 0..500 {
        let clients: String =
            redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub").query_async(admin).await.unwrap();
        if clients.lines().any(|l| l.contains(&want)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no pub/sub connection listens to {channels} channels");
}

/// Subscribing to sites nobody publishes to may draw their epochs, but leaves no key that
/// outlives the history TTL; a published site's keys outlive its last publication by the latest
/// values' TTL at most.
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
        if ttl == -1 {
            lasting.push(key.clone());
        }
    }
    assert!(lasting.is_empty(), "keys without a TTL: {lasting:?}");
    // A published site's epoch lasts as long as what it holds may be served (the latest values'
    // TTL here), and no longer: no key lives for ever.
    let ttl: i64 = redis::cmd("PTTL").arg(format!("{PREFIX}:{{real}}:meta")).query_async(&mut conn).await.unwrap();
    assert!((500_000..=600_000).contains(&ttl), "{ttl} ms");
    // The epoch a subscriber was told holds when the site is first published to.
    let told = node.broker.snapshot(&sites[0]).await.unwrap().epoch;
    let published = match publisher.0.publish(request(&sites[0])).await.unwrap() {
        PublishOutcome::Published(p) => p.epoch,
        PublishOutcome::Duplicate => panic!("unexpected duplicate"),
    };
    assert_eq!(told, published);
    let ttl: i64 =
        redis::cmd("PTTL").arg(format!("{PREFIX}:{{{}}}:meta", sites[0])).query_async(&mut conn).await.unwrap();
    assert!(ttl > 500_000, "published: the epoch lasts as long as the latest values, {ttl} ms");
}

fn request(site: &str) -> PublishRequest {
    let v = Validator { names: NameRules::default(), max_message_bytes: 1 << 20 };
    v.parse(&format!(r#"{{"site":"{site}","topic":"t","data":1}}"#)).unwrap()
}

/// A stalled subscribe holds up its own site only: while Redis holds every command (`CLIENT
/// PAUSE`), a watch on a site the node already listens to returns before the stalled one has.
#[tokio::test]
async fn a_stalled_subscribe_does_not_hold_up_other_sites() {
    let server = RedisServer::start();
    let node = Node::start(&server.url()).await;
    let _ready = node.subscribe("ready", 1).await;
    let mut admin = command(&server.url()).await;
    // Holds every command, SUBSCRIBE included, for 3 s.
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(3000).arg("ALL").query_async(&mut admin).await.unwrap();
    let stalled = {
        let redis = node.redis.clone();
        tokio::spawn(async move {
            let site: Arc<str> = "stalled".into();
            redis.watch(&site).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!stalled.is_finished(), "Redis holds the subscribe");
    let site: Arc<str> = "ready".into();
    common::within(node.redis.watch(&site)).await.unwrap();
    assert!(!stalled.is_finished(), "the watch did not wait for the stalled subscribe");
    // It ends (subscribed, or timed out) once the pause does.
    let _ = common::within(stalled).await.unwrap();
}

/// The same through relay processes: node A's legacy clients on three sites; A loses Redis while
/// node B keeps publishing; once A is back, each client gets what it missed with nothing
/// published afterwards, and A's readiness went 503 and back.
// Several threads: the proxy keeps running while starting a relay blocks this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_lost_redis_delivers_what_its_clients_missed_once_back() {
    let server = RedisServer::start();
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let gate = Gate::start(upstream).await;
    let (gated, direct) = (gate.url(), server.url());
    let a = Relay::start(&[("DATASTREAM_REDIS_URL", gated.as_str()), ("DATASTREAM_DRAIN_WINDOW", "0s")]);
    let b = Relay::start(&[("DATASTREAM_REDIS_URL", direct.as_str()), ("DATASTREAM_DRAIN_WINDOW", "0s")]);
    let sites = ["r1", "r2", "r3"];
    let mut clients = Vec::new();
    for site in sites {
        clients.push(common::connect(&a.ws_url(&format!("/dev?site={site}"))).await);
    }
    let url = b.url("/publish");
    let publish = |site: &str, n: u64| {
        let body = serde_json::json!({"site": site, "topic": "t", "data": n}).to_string();
        common::publish_raw(&url, body, None)
    };
    for site in sites {
        assert_eq!(publish(site, 1).await.0, 202);
    }
    for client in &mut clients {
        assert_eq!(common::next_json(client).await["data"], 1);
    }

    gate.close();
    wait_ready(&a, 503).await;
    for site in sites {
        for n in 2..=3 {
            assert_eq!(publish(site, n).await.0, 202);
        }
    }
    gate.reopen();
    for client in &mut clients {
        for n in 2..=3 {
            assert_eq!(common::next_json(client).await["data"], n, "missed publications delivered in order");
        }
        common::expect_silence(client, Duration::from_millis(300)).await;
    }
    wait_ready(&a, 200).await;
    let (_, metrics) = common::get_text(&a.url("/metrics")).await;
    assert_eq!(common::metric(&metrics, "datastream_redis_reconnects_total"), 1.0, "{metrics}");
    assert_eq!(common::metric(&metrics, "datastream_redis_filled_total"), 6.0, "{metrics}");
}

async fn wait_ready(relay: &Relay, status: u16) {
    let mut last = (0, String::new());
    for _ in 0..200 {
        last = common::get_text(&relay.url("/readyz")).await;
        if last.0 == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("readyz never became {status}: {last:?}");
}

/// A v2 connection to `relay`, its hello read.
async fn v2(relay: &common::TestServer) -> common::Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = relay.ws_url("/dev").into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().unwrap());
    let (mut ws, _) = common::within(tokio_tungstenite::connect_async(req)).await.unwrap();
    assert_eq!(common::next_json(&mut ws).await["type"], "hello");
    ws
}

/// Holds every Redis command for `ms` (`CLIENT PAUSE … ALL`), as a stalled Redis would.
async fn stall(admin: &mut redis::aio::MultiplexedConnection, ms: u64) {
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg("ALL").query_async(admin).await.unwrap();
}

/// One Redis timeout, the documented one: a Redis stall of 1 s (past the Redis client's own
/// default response timeout, 0.5 s, under the relay's 2 s) delays a publish and a subscribe but
/// fails neither; a stall past `DATASTREAM_REDIS_TIMEOUT` fails a publish with 503 at that
/// timeout, not when Redis wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_shorter_than_the_timeout_delays_and_a_longer_one_fails() {
    let server = RedisServer::start();
    let url = server.url();
    let relay = common::TestServer::start(&["--redis-url", &url]).await;
    let mut admin = command(&url).await;
    let body = |n: u64| serde_json::json!({"site": "mrc", "topic": "t", "data": n});
    assert_eq!(relay.publish(&body(1)).await.0, 202, "the script is loaded");

    stall(&mut admin, 1000).await;
    let started = tokio::time::Instant::now();
    let (status, answer) = relay.publish(&body(2)).await;
    assert_eq!(status, 202, "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(700), "the publish waited for Redis: {:?}", started.elapsed());

    let mut ws = v2(&relay).await;
    stall(&mut admin, 1000).await;
    common::send_text(&mut ws, r#"{"type":"subscribe","id":1,"site":"fresh"}"#).await;
    let ack = common::next_json(&mut ws).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");

    let quick = common::TestServer::start(&["--redis-url", &url, "--redis-timeout", "1s"]).await;
    assert_eq!(quick.publish(&body(3)).await.0, 202);
    stall(&mut admin, 2500).await;
    let started = tokio::time::Instant::now();
    let (status, answer) = quick.publish(&body(4)).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{answer}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2200),
        "failed at the timeout: {took:?}"
    );
}
