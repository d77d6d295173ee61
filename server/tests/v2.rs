//! Protocol v2: negotiation, many sites, topic filters, positions, exact recovery, rewind,
//! typed errors, slow-consumer eviction and recovery, heartbeats (in paused time) and drain.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::extract::ws::{Message as AxMessage, Utf8Bytes, WebSocket};
use common::*;
use datastream::{
    AppState,
    auth::Grant,
    hub::{Framing, Inbox},
    session::{self, Registration, Start, v2::V2},
    wire::Wire,
};
use futures_util::{Sink, Stream};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn connect_v2(s: &TestServer, query: &str) -> Ws {
    let mut req = s.ws_url(&format!("/dev{query}")).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().unwrap());
    let (ws, resp) = within(tokio_tungstenite::connect_async(req)).await.unwrap();
    assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "datastream.v2");
    ws
}

/// Connects and consumes the hello frame.
async fn v2(s: &TestServer) -> Ws {
    let mut ws = connect_v2(s, "").await;
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    send_text(ws, &v.to_string()).await;
}

async fn subscribe(ws: &mut Ws, v: Value) -> Value {
    let mut req = json!({"type": "subscribe"});
    req.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
    send(ws, req).await;
    let ack = next_json(ws).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    ack
}

async fn publish_n(
    s: &TestServer,
    site: &str,
    range: std::ops::RangeInclusive<u64>,
    topic: impl Fn(u64) -> &'static str,
) {
    for n in range {
        let (status, body) = s.publish(&json!({"site": site, "topic": topic(n), "data": {"n": n}})).await;
        assert_eq!(status, 202, "{body}");
    }
}

/// Reads `count` publications; returns (offset, data.n) pairs.
async fn pubs(ws: &mut Ws, count: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    while out.len() < count {
        let f = next_json(ws).await;
        if f["type"] == "ping" {
            continue;
        }
        assert_eq!(f["type"], "pub", "{f}");
        out.push((f["offset"].as_u64().unwrap(), f["data"]["n"].as_u64().unwrap()));
    }
    out
}

#[tokio::test]
async fn negotiation_hello_and_sites_in_the_url() {
    let s = TestServer::start(&["--max-subscriptions", "7"]).await;
    let mut ws = connect_v2(&s, "?site=mrc&site=saf").await;
    let hello = next_json(&mut ws).await;
    assert_eq!(
        hello,
        json!({"type": "hello", "version": 2, "ping_interval_ms": 25000, "max_subscriptions": 7,
               "latest_keys": {"sitestatus": "statusType"}, "deltas": ["fossil"]})
    );
    for site in ["mrc", "saf"] {
        let ack = next_json(&mut ws).await;
        assert_eq!(
            (ack["type"].as_str(), ack["site"].as_str(), ack["offset"].as_u64()),
            (Some("subscribed"), Some(site), Some(0))
        );
        assert!(ack["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    }
    s.publish(&json!({"site": "saf", "topic": "t", "data": {"n": 1}})).await;
    let f = next_json(&mut ws).await;
    assert_eq!((f["type"].as_str(), f["site"].as_str(), f["offset"].as_u64()), (Some("pub"), Some("saf"), Some(1)));
    // Legacy clients on the same URL are unaffected.
    let mut legacy = s.legacy("saf").await;
    s.publish(&json!({"site": "saf", "topic": "t", "data": 2})).await;
    assert_eq!(next_json(&mut legacy).await, json!({"site": "saf", "topic": "t", "data": 2}));
    // A v2 client may connect without any site; too many sites in the URL is refused.
    let _empty = v2(&s).await;
    let many: String = (0..8).map(|i| format!("site=s{i}&")).collect();
    let mut req = s.ws_url(&format!("/dev?{many}")).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}

#[tokio::test]
async fn many_sites_topic_filters_and_unsubscribe() {
    let s = TestServer::start(&[]).await;
    let mut ws = v2(&s).await;
    subscribe(&mut ws, json!({"id": 1, "site": "mrc"})).await;
    let ack = subscribe(&mut ws, json!({"id": 2, "site": "wema", "topics": ["sitestatus"]})).await;
    assert_eq!(ack["id"], 2);
    s.publish(&json!({"site": "wema", "topic": "imagedata", "data": {"n": 1}})).await;
    s.publish(&json!({"site": "wema", "topic": "sitestatus", "data": {"n": 2}})).await;
    s.publish(&json!({"site": "mrc", "topic": "imagedata", "data": {"n": 3}})).await;
    let a = next_json(&mut ws).await;
    let b = next_json(&mut ws).await;
    assert_eq!((a["site"].as_str(), a["data"]["n"].as_u64(), a["offset"].as_u64()), (Some("wema"), Some(2), Some(2)));
    assert_eq!((b["site"].as_str(), b["data"]["n"].as_u64()), (Some("mrc"), Some(3)));
    send(&mut ws, json!({"type": "unsubscribe", "id": 3, "site": "mrc"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"type": "unsubscribed", "id": 3, "site": "mrc"}));
    s.publish(&json!({"site": "mrc", "topic": "t", "data": {"n": 4}})).await;
    expect_silence(&mut ws, Duration::from_millis(200)).await;
    assert_eq!(s.state.hub.subscriber_count("mrc"), 0);
    // Client ping, server pong.
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn recovery_replays_exactly_the_missed_publications() {
    let s = TestServer::start(&[]).await;
    let mut ws = v2(&s).await;
    let ack = subscribe(&mut ws, json!({"site": "mrc"})).await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    publish_n(&s, "mrc", 1..=5, |_| "t").await;
    assert_eq!(pubs(&mut ws, 5).await.last(), Some(&(5, 5)));
    drop(ws);
    publish_n(&s, "mrc", 6..=12, |_| "t").await;
    let mut ws = v2(&s).await;
    let ack = subscribe(&mut ws, json!({"site": "mrc", "recover": {"epoch": epoch, "offset": 5}})).await;
    assert_eq!(
        (ack["recovered"].as_bool(), ack["replayed"].as_u64(), ack["offset"].as_u64()),
        (Some(true), Some(7), Some(12))
    );
    let got = pubs(&mut ws, 7).await;
    assert_eq!(got, (6..=12).map(|n| (n, n)).collect::<Vec<_>>());
    publish_n(&s, "mrc", 13..=13, |_| "t").await;
    assert_eq!(pubs(&mut ws, 1).await, vec![(13, 13)], "no duplicate after the replay");
    // Already up to date: recovered, nothing replayed.
    let mut ws = v2(&s).await;
    let ack = subscribe(&mut ws, json!({"site": "mrc", "recover": {"epoch": epoch, "offset": 13}})).await;
    assert_eq!((ack["recovered"].as_bool(), ack["replayed"].as_u64()), (Some(true), Some(0)));
}

#[tokio::test]
async fn recovery_while_publishing_has_no_gap_and_no_duplicate() {
    let s = Arc::new(TestServer::start(&["--history-size", "10000"]).await);
    let mut ws = v2(&s).await;
    let ack = subscribe(&mut ws, json!({"site": "mrc"})).await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    let publisher = {
        let s = s.clone();
        tokio::spawn(async move { publish_n(&s, "mrc", 1..=400, |_| "t").await })
    };
    let mut last = 0;
    for round in 0..4 {
        // Read a few, drop the connection, resubscribe from the last offset seen.
        for (offset, _) in pubs(&mut ws, 20).await {
            assert_eq!(offset, last + 1, "round {round}");
            last = offset;
        }
        drop(ws);
        ws = v2(&s).await;
        let ack = subscribe(&mut ws, json!({"site": "mrc", "recover": {"epoch": epoch, "offset": last}})).await;
        assert_eq!(ack["recovered"], true, "{ack}");
    }
    within(publisher).await.unwrap();
    while last < 400 {
        for (offset, _) in pubs(&mut ws, 1).await {
            assert_eq!(offset, last + 1);
            last = offset;
        }
    }
}

/// A connection already receiving one site subscribes to another, then again and again
/// unsubscribes and resubscribes with recovery, while both sites stream in batches: neither site
/// loses or repeats anything, and nothing of a site arrives between its `unsubscribed` and the
/// next `subscribed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_another_site_streams_loses_and_repeats_nothing() {
    resubscribing_under_load(&[]).await;
}

/// The same across Redis, where reading a site's history takes a round trip: publications that
/// arrive meanwhile must not reach the client before its replay, nor twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_another_site_streams_loses_and_repeats_nothing_with_redis() {
    let redis = common::procs::RedisServer::start();
    resubscribing_under_load(&["--redis-url", &redis.url()]).await;
}

async fn resubscribing_under_load(extra: &[&str]) {
    const REQUESTS: u64 = 100;
    const PER_SITE: u64 = 10;
    let mut args = vec!["--history-size", "10000", "--client-frame-rate", "1000", "--client-frame-burst", "1000"];
    args.extend_from_slice(extra);
    let s = Arc::new(TestServer::start(&args).await);
    let mut ws = v2(&s).await;
    subscribe(&mut ws, json!({"site": "flow"})).await;
    let publisher = {
        let s = s.clone();
        tokio::spawn(async move {
            for r in 0..REQUESTS {
                let body: Vec<Value> = (0..PER_SITE)
                    .flat_map(|i| {
                        ["flow", "late"].map(|site| json!({"site": site, "topic": "t", "data": r * PER_SITE + i}))
                    })
                    .collect();
                let (status, answer) = s.publish(&json!(body)).await;
                assert_eq!(status, 202, "{answer}");
            }
        })
    };
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Late {
        Off,
        Subscribing,
        On { since: u64 },
        Unsubscribing,
        Resubscribing,
    }
    let total = REQUESTS * PER_SITE;
    let (mut flow, mut late, mut recover_from, mut cycles) = (0u64, 0u64, 0u64, 0);
    let mut state = Late::Off;
    let mut epoch = String::new();
    // What `late` brought, to show on a failure.
    let mut log = Vec::new();
    within(async {
        while flow < total || late < total {
            match state {
                Late::Off if flow >= 30 => {
                    send(&mut ws, json!({"type": "subscribe", "site": "late"})).await;
                    state = Late::Subscribing;
                }
                Late::On { since } if late >= since + 20 && late < total - 50 => {
                    send(&mut ws, json!({"type": "unsubscribe", "site": "late"})).await;
                    recover_from = late;
                    let recover = json!({"epoch": epoch, "offset": late});
                    send(&mut ws, json!({"type": "subscribe", "site": "late", "recover": recover})).await;
                    state = Late::Unsubscribing;
                    cycles += 1;
                }
                _ => {}
            }
            // A v2 text frame carries one or more frames, one per line.
            for line in next_text(&mut ws).await.lines() {
                let f: Value = serde_json::from_str(line).unwrap();
                if f["site"] == "late" {
                    log.push(format!("{state:?} {line}"));
                }
                match (f["type"].as_str().unwrap(), f["site"].as_str(), state) {
                    ("pub", Some("flow"), _) => {
                        assert_eq!(f["offset"], flow + 1, "flow: gap or repeat");
                        flow += 1;
                    }
                    // Until the server reads the unsubscribe, publications still come.
                    ("pub", Some("late"), Late::On { .. } | Late::Unsubscribing) => {
                        assert_eq!(f["offset"], late + 1, "late: gap or repeat in {state:?}: {log:#?}");
                        late += 1;
                    }
                    ("subscribed", Some("late"), Late::Subscribing) => {
                        late = f["offset"].as_u64().unwrap();
                        epoch = f["epoch"].as_str().unwrap().to_owned();
                        state = Late::On { since: late };
                    }
                    ("unsubscribed", Some("late"), Late::Unsubscribing) => state = Late::Resubscribing,
                    ("subscribed", Some("late"), Late::Resubscribing) => {
                        assert_eq!(f["recovered"], true, "{f}");
                        // The replay starts after the position asked for.
                        late = recover_from;
                        state = Late::On { since: late };
                    }
                    ("ping", None, _) => {}
                    _ => panic!("unexpected in {state:?}: {f}\n{log:#?}"),
                }
            }
        }
    })
    .await;
    assert!(cycles >= 10, "only {cycles} resubscriptions");
    within(publisher).await.unwrap();
}

#[tokio::test]
async fn recovery_refuses_a_partial_replay() {
    let s = TestServer::start(&["--history-size", "5"]).await;
    publish_n(&s, "mrc", 1..=20, |_| "t").await;
    let mut ws = v2(&s).await;
    let ack = subscribe(&mut ws, json!({"site": "mrc"})).await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    // Offsets 16..20 are held; recovering from 10 would need 11..15 too.
    let ack = subscribe(&mut ws, json!({"site": "mrc", "recover": {"epoch": epoch, "offset": 10}})).await;
    assert_eq!(
        (ack["recovered"].as_bool(), ack["replayed"].as_u64(), ack["offset"].as_u64()),
        (Some(false), Some(0), Some(20))
    );
    // From 15 the whole gap is held.
    let ack = subscribe(&mut ws, json!({"site": "mrc", "recover": {"epoch": epoch, "offset": 15}})).await;
    assert_eq!((ack["recovered"].as_bool(), ack["replayed"].as_u64()), (Some(true), Some(5)));
    assert_eq!(pubs(&mut ws, 5).await.first(), Some(&(16, 16)));
    // Another epoch (e.g. the relay restarted): nothing replayed.
    let ack = subscribe(&mut ws, json!({"site": "mrc", "recover": {"epoch": "0000", "offset": 19}})).await;
    assert_eq!(
        (ack["recovered"].as_bool(), ack["replayed"].as_u64(), ack["epoch"].as_str()),
        (Some(false), Some(0), Some(epoch.as_str()))
    );
    expect_silence(&mut ws, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn rewind_and_filtered_recovery() {
    let s = TestServer::start(&[]).await;
    let topic = |n: u64| if n.is_multiple_of(2) { "even" } else { "odd" };
    publish_n(&s, "mrc", 1..=10, topic).await;
    let mut ws = v2(&s).await;
    let ack = subscribe(&mut ws, json!({"site": "mrc", "topics": ["even"], "rewind": 3})).await;
    assert_eq!(
        (ack["replayed"].as_u64(), ack["recovered"].as_bool(), ack["offset"].as_u64()),
        (Some(3), None, Some(10))
    );
    assert_eq!(pubs(&mut ws, 3).await, vec![(6, 6), (8, 8), (10, 10)]);
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    drop(ws);
    publish_n(&s, "mrc", 11..=15, topic).await;
    let mut ws = v2(&s).await;
    let ack =
        subscribe(&mut ws, json!({"site": "mrc", "topics": ["even"], "recover": {"epoch": epoch, "offset": 10}})).await;
    assert_eq!(
        (ack["recovered"].as_bool(), ack["replayed"].as_u64(), ack["offset"].as_u64()),
        (Some(true), Some(2), Some(15))
    );
    assert_eq!(pubs(&mut ws, 2).await, vec![(12, 12), (14, 14)]);
}

#[tokio::test]
async fn bad_requests_get_typed_errors_and_the_connection_stays() {
    let s = TestServer::start(&["--max-subscriptions", "2"]).await;
    let mut ws = v2(&s).await;
    for (frame, code, id) in [
        ("{", "invalid_json", None),
        (r#"{"type":"publish","id":5}"#, "unknown_type", Some(5)),
        (r#"{"type":"subscribe","id":6}"#, "invalid_frame", Some(6)),
        (r#"{"type":"subscribe","id":7,"site":"a b"}"#, "invalid_site", Some(7)),
        (r#"{"type":"subscribe","id":8,"site":"mrc","topics":["x/y"]}"#, "invalid_topic", Some(8)),
    ] {
        send_text(&mut ws, frame).await;
        let err = next_json(&mut ws).await;
        assert_eq!(
            (err["type"].as_str(), err["code"].as_str(), err["id"].as_u64()),
            (Some("error"), Some(code), id),
            "{frame}: {err}"
        );
    }
    subscribe(&mut ws, json!({"site": "a"})).await;
    subscribe(&mut ws, json!({"site": "b"})).await;
    subscribe(&mut ws, json!({"site": "b", "topics": ["t"]})).await; // changing a subscription is fine
    send(&mut ws, json!({"type": "subscribe", "id": 9, "site": "c"})).await;
    let err = next_json(&mut ws).await;
    assert_eq!((err["code"].as_str(), err["id"].as_u64()), (Some("too_many_subscriptions"), Some(9)));
    s.publish(&json!({"site": "b", "topic": "t", "data": {"n": 1}})).await;
    assert_eq!(pubs(&mut ws, 1).await, vec![(1, 1)]);
}

#[tokio::test]
async fn an_evicted_slow_consumer_recovers_from_history() {
    let s =
        TestServer::start(&["--client-queue-bytes", "65536", "--max-message-bytes", "65536", "--history-size", "1000"])
            .await;
    let mut ws = v2(&s).await;
    let ack = subscribe(&mut ws, json!({"site": "mrc"})).await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    let blob = "x".repeat(60_000);
    for n in 1..=200u64 {
        s.publish(&json!({"site": "mrc", "topic": "t", "data": {"n": n, "blob": blob}})).await;
    }
    // Read what arrived before the eviction, then the close.
    let mut last = 0;
    let code = within(async {
        loop {
            match futures_util::StreamExt::next(&mut ws).await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                    let f: Value = serde_json::from_str(&t).unwrap();
                    if f["type"] == "pub" {
                        let offset = f["offset"].as_u64().unwrap();
                        assert_eq!(offset, last + 1);
                        last = offset;
                    }
                }
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(c)))) => return u16::from(c.code),
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert_eq!(code, 3000);
    assert!(last < 200);
    let mut ws = v2(&s).await;
    let ack = subscribe(&mut ws, json!({"site": "mrc", "recover": {"epoch": epoch, "offset": last}})).await;
    assert_eq!(ack["recovered"], true);
    let rest = pubs(&mut ws, (200 - last) as usize).await;
    assert_eq!(rest.first().map(|p| p.0), Some(last + 1));
    assert_eq!(rest.last().map(|p| p.0), Some(200));
}

#[tokio::test]
async fn shutdown_drains_v2_connections_with_1001_spread_over_the_window() {
    let s = TestServer::start(&["--drain-window", "1s"]).await;
    let mut clients = Vec::new();
    // With 8 closes drawn uniformly over 1 s, all landing within 100 ms has odds below 1e-7.
    for _ in 0..8 {
        clients.push(v2(&s).await);
    }
    let start = tokio::time::Instant::now();
    let done = tokio::spawn(s.shutdown());
    // Each client watches for its own close, so every arrival time is its own.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let (code, reason, _) = expect_close(&mut ws).await;
                assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
                start.elapsed()
            })
        })
        .collect();
    let mut times = Vec::new();
    for reader in readers {
        times.push(within(reader).await.unwrap());
    }
    within(done).await.unwrap().unwrap();
    let spread = times.iter().max().unwrap().saturating_sub(*times.iter().min().unwrap());
    assert!(spread > Duration::from_millis(100), "closes not spread: {times:?}");
    assert!(*times.iter().max().unwrap() < Duration::from_secs(3), "{times:?}");
}

/// An in-memory socket for driving a session directly, under paused time.
struct ChanSocket {
    from_client: mpsc::UnboundedReceiver<Result<AxMessage, axum::Error>>,
    to_client: mpsc::UnboundedSender<AxMessage>,
}

impl Stream for ChanSocket {
    type Item = Result<AxMessage, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.from_client.poll_recv(cx)
    }
}

impl Sink<AxMessage> for ChanSocket {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: AxMessage) -> Result<(), Self::Error> {
        self.to_client.send(item).map_err(axum::Error::new)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// Starts a v2 session on a channel socket; returns (server → client receiver, the session task,
/// client → server sender).
async fn channel_session() -> (
    mpsc::UnboundedReceiver<AxMessage>,
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedSender<Result<AxMessage, axum::Error>>,
) {
    let server = datastream::Server::bind(config(&[])).await.unwrap();
    let state = server.state().clone();
    let (to_server, from_client) = mpsc::unbounded_channel();
    let (to_client, from_server) = mpsc::unbounded_channel();
    let socket = ChanSocket { from_client, to_client };
    let (reg, rx) = Registration::new(
        state.hub.clone(),
        1 << 20,
        Framing::Packed,
        state.metrics.connections_v2.clone(),
        Grant::anonymous(),
        None,
        None,
    );
    let hello = V2::hello(&state, &Grant::anonymous());
    let task = tokio::spawn(session::run(socket, state, V2, reg, rx, vec![hello], None));
    (from_server, task, to_server)
}

fn text(msg: &AxMessage) -> Value {
    match msg {
        AxMessage::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_after_the_timeout() {
    let start = tokio::time::Instant::now();
    let (mut from_server, task, _to_server) = channel_session().await;
    assert_eq!(text(&from_server.recv().await.unwrap())["type"], "hello");
    // Pings at 25 s; at 50 s nothing was heard for longer than 35 s: close 3001.
    assert_eq!(text(&from_server.recv().await.unwrap())["type"], "ping");
    assert!((start.elapsed().as_secs_f64() - 25.0).abs() < 1.0, "{:?}", start.elapsed());
    match from_server.recv().await.unwrap() {
        AxMessage::Close(Some(c)) => assert_eq!(c.code, 3001),
        other => panic!("expected close, got {other:?}"),
    }
    assert!((start.elapsed().as_secs_f64() - 50.0).abs() < 1.0, "{:?}", start.elapsed());
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_client_answering_pings_stays_connected() {
    let start = tokio::time::Instant::now();
    let (mut from_server, task, to_server) = channel_session().await;
    assert_eq!(text(&from_server.recv().await.unwrap())["type"], "hello");
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(300) {
        let msg = from_server.recv().await.unwrap();
        assert_eq!(text(&msg)["type"], "ping", "only pings while idle");
        pings += 1;
        to_server.send(Ok(AxMessage::Text(r#"{"type":"pong"}"#.into()))).unwrap();
    }
    assert!(pings >= 11, "{pings}");
    drop(to_server);
    task.await.unwrap();
}

/// Every connection holds one session task: its size is most of a connection's memory, so it is
/// pinned here, with the socket type the server really uses (rarely used paths are boxed, and the
/// arguments are not stored twice).
#[test]
fn the_session_task_stays_small() {
    type Run<P, F> = fn(WebSocket, Arc<AppState>, P, Registration, Inbox, Vec<Utf8Bytes>, Option<Arc<Wire>>) -> F;
    fn future_size<P, F: Future>(_: Run<P, F>) -> usize {
        std::mem::size_of::<F>()
    }
    let sizes = [
        future_size(session::run::<WebSocket, V2>),
        future_size(session::run::<WebSocket, datastream::session::legacy::Legacy>),
    ];
    assert!(sizes.iter().all(|&s| s <= 1408), "session futures (v2, legacy): {sizes:?} bytes");
}

/// Publications that are queued together reach a v2 client packed into one text frame (split on
/// `\n`), in order; a legacy client still gets exactly one publication per frame.
#[tokio::test]
async fn queued_publications_are_packed_for_v2_clients_only() {
    let server = datastream::Server::bind(config(&[])).await.unwrap();
    let state = server.state().clone();
    for legacy in [false, true] {
        let site = if legacy { "packed-legacy" } else { "packed-v2" };
        let (to_server, from_client) = mpsc::unbounded_channel();
        let (to_client, mut from_server) = mpsc::unbounded_channel();
        let socket = ChanSocket { from_client, to_client };
        let gauge = state.metrics.connections_v2.clone();
        let framing = if legacy { Framing::Legacy } else { Framing::Packed };
        let (mut reg, rx) =
            Registration::new(state.hub.clone(), 1 << 20, framing, gauge, Grant::anonymous(), None, None);
        let mut proto = V2;
        if legacy {
            reg.subscribe(site.into(), None, &state.broker, Start::Live).await.unwrap();
        } else {
            let req =
                proto.check_subscribe(&state, &reg, None, site, &[], None, None, Default::default(), None).unwrap();
            proto.subscribe(req, &mut reg, &state).await.unwrap();
        }
        // Queued before the session runs, so its first write finds all five.
        for n in 0..5 {
            let text = format!(r#"{{"site":"{site}","topic":"t","data":{n}}}"#);
            state.broker.publish(state.validator.parse(&text).unwrap()).await.unwrap();
        }
        let task = if legacy {
            tokio::spawn(session::run(
                socket,
                state.clone(),
                datastream::session::legacy::Legacy,
                reg,
                rx,
                vec![],
                None,
            ))
        } else {
            tokio::spawn(session::run(socket, state.clone(), proto, reg, rx, vec![], None))
        };
        let mut frames: Vec<String> = Vec::new();
        while frames.iter().map(|f| f.split('\n').count()).sum::<usize>() < 5 {
            match within(from_server.recv()).await.unwrap() {
                AxMessage::Text(t) => frames.push(t.to_string()),
                other => panic!("expected text, got {other:?}"),
            }
        }
        let data: Vec<Value> = frames
            .iter()
            .flat_map(|f| f.split('\n'))
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["data"].clone())
            .collect();
        assert_eq!(data, (0..5).map(|n| json!(n)).collect::<Vec<_>>(), "in order: {frames:?}");
        if legacy {
            assert_eq!(frames.len(), 5, "one publication per legacy frame: {frames:?}");
        } else {
            assert_eq!(frames.len(), 1, "one packed v2 frame: {frames:?}");
            let offsets: Vec<Value> =
                frames[0].split('\n').map(|l| serde_json::from_str::<Value>(l).unwrap()["offset"].clone()).collect();
            assert_eq!(offsets, (1..=5).map(|n| json!(n)).collect::<Vec<_>>());
        }
        drop(to_server);
        within(task).await.unwrap();
    }
}
