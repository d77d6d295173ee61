//! Several relay nodes on one Redis, as real processes: cross-node delivery (HTTP and SQS, with
//! competing consumers and cluster-wide dedupe), failover with exact recovery after SIGKILL, and
//! a Redis outage and restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::HashSet, time::Duration};

use common::{procs::*, *};
use serde_json::{Value, json};

fn node(redis: &str, extra: &[(&str, &str)]) -> Relay {
    let mut env = vec![("DATASTREAM_REDIS_URL", redis), ("DATASTREAM_DRAIN_WINDOW", "0s")];
    env.extend_from_slice(extra);
    Relay::start(&env)
}

async fn publish(relay: &Relay, body: Value) -> (u16, Value) {
    publish_raw(&relay.url("/publish"), body.to_string(), None).await
}

async fn readyz(relay: &Relay) -> (u16, String) {
    get_text(&relay.url("/readyz")).await
}

async fn wait_readyz(relay: &Relay, status: u16) -> String {
    let mut last = (0, String::new());
    for _ in 0..200 {
        last = readyz(relay).await;
        if last.0 == status {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("readyz never became {status}: {last:?}");
}

#[tokio::test]
async fn a_subscriber_on_one_node_gets_what_is_published_on_another() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), &[]);
    let b = node(&redis.url(), &[]);
    let mut legacy = connect(&a.ws_url("/dev?site=mrc")).await;
    for n in 1..=20 {
        let (status, body) = publish(&b, json!({"site": "mrc", "topic": "t", "data": n})).await;
        assert_eq!(status, 202, "{body}");
    }
    for n in 1..=20 {
        assert_eq!(next_json(&mut legacy).await["data"], n, "in order across nodes");
    }
    let body = wait_readyz(&a, 200).await;
    assert!(body.contains(r#""broker":"ok""#), "{body}");
    // A repeated idempotency key is dropped cluster-wide.
    let msg = json!({"site": "mrc", "topic": "t", "data": "once", "idempotency_key": "k"});
    assert_eq!(publish(&a, msg.clone()).await.1["accepted"], 1);
    assert_eq!(publish(&b, msg).await.1["duplicates"], 1);
    assert_eq!(next_json(&mut legacy).await["data"], "once");
    expect_silence(&mut legacy, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn both_nodes_consume_sqs_and_each_message_is_delivered_once() {
    let redis = RedisServer::start();
    let moto = Moto::start();
    create_queue(&moto.endpoint, "datastreamIncomingQueue-dev");
    let sqs = [
        ("DATASTREAM_SQS_QUEUE", "datastreamIncomingQueue-dev"),
        ("AWS_ENDPOINT_URL_SQS", moto.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("DATASTREAM_SQS_WAIT", "1s"),
    ];
    let a = node(&redis.url(), &sqs);
    let b = node(&redis.url(), &sqs);
    wait_readyz(&a, 200).await;
    wait_readyz(&b, 200).await;
    let mut ws = connect(&a.ws_url("/dev?site=tst")).await;
    // Published off the test's thread: the subscriber keeps reading (and answering the relay's
    // heartbeat) however long the 20 boto3 runs take on a busy machine.
    let endpoint = moto.endpoint.clone();
    let publisher = tokio::task::spawn_blocking(move || {
        for n in 0..20 {
            boto3_publish(
                &endpoint,
                "datastreamIncomingQueue-dev",
                &["--site", "tst", "--topic", "t", "--data", &n.to_string()],
            );
        }
    });
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let got = tokio::time::timeout(Duration::from_secs(30), next_json(&mut ws)).await.expect("delivered");
        assert!(seen.insert(got["data"].as_u64().unwrap()), "duplicate: {got}");
    }
    publisher.await.unwrap();
    expect_silence(&mut ws, Duration::from_millis(500)).await;
    let (_, ma) = get_text(&a.url("/metrics")).await;
    let (_, mb) = get_text(&b.url("/metrics")).await;
    let (na, nb) = (
        metric(&ma, r#"datastream_messages_in_total{source="sqs"}"#),
        metric(&mb, r#"datastream_messages_in_total{source="sqs"}"#),
    );
    assert_eq!(na + nb, 20.0, "each message published once (a: {na}, b: {nb})");
}

#[tokio::test]
async fn after_sigkill_a_client_fails_over_and_recovers_exactly() {
    let redis = RedisServer::start();
    let mut a = node(&redis.url(), &[]);
    let b = node(&redis.url(), &[]);
    let urls = format!("{},{}", a.ws_url("/dev"), b.ws_url("/dev"));
    let (mut tail, mut lines) = spawn_tail(&["--url", &urls, "--site", "mrc", "--count", "10", "--rewind", "10"]);
    // Whenever the tail subscribes (on node A, its first URL), --rewind replays what it missed.
    let mut got = Vec::new();
    for n in 1..=5 {
        publish(&b, json!({"site": "mrc", "topic": "t", "data": n})).await;
        if n == 1 {
            got.push(within(lines.recv()).await.unwrap());
        }
    }
    while got.len() < 5 {
        got.push(within(lines.recv()).await.unwrap());
    }
    let _ = a.proc.child.kill();
    let _ = a.proc.child.wait();
    for n in 6..=10 {
        publish(&b, json!({"site": "mrc", "topic": "t", "data": n})).await;
    }
    while got.len() < 10 {
        got.push(tokio::time::timeout(Duration::from_secs(20), lines.recv()).await.unwrap().expect("tail ended"));
    }
    let offsets: Vec<u64> =
        got.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=10).collect::<Vec<_>>(), "no loss, no duplicate across the failover");
    assert_eq!(tail.wait_exit(WAIT), Some(0));
}

#[tokio::test]
async fn a_redis_outage_keeps_clients_connected_and_a_restart_changes_the_epoch() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), &[]);
    let mut legacy = connect(&a.ws_url("/dev?site=mrc")).await;
    let (_, body) = publish(&a, json!({"site": "mrc", "topic": "t", "data": 1})).await;
    assert_eq!(body["accepted"], 1);
    assert_eq!(next_json(&mut legacy).await["data"], 1);
    let port = redis.kill();

    // Outage: publishes fail with 503 (nothing is lost: the publisher or SQS retries), readiness
    // drops, connected clients stay.
    let (status, body) = publish(&a, json!({"site": "mrc", "topic": "t", "data": 2})).await;
    assert_eq!(status, 503, "{body}");
    let body = wait_readyz(&a, 503).await;
    assert!(body.contains(r#""broker":"unreachable""#), "{body}");
    expect_silence(&mut legacy, Duration::from_millis(500)).await;

    // Redis comes back empty: the node reconnects, publishing works, the old client still gets
    // publications, and the site has a new epoch.
    let _redis = RedisServer::start_on(port).expect("redis restarted");
    wait_readyz(&a, 200).await;
    let mut v2req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(a.ws_url("/dev")).unwrap();
    v2req.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().unwrap());
    let (mut v2, _) = within(tokio_tungstenite::connect_async(v2req)).await.unwrap();
    assert_eq!(next_json(&mut v2).await["type"], "hello");
    send_text(
        &mut v2,
        &json!({"type": "subscribe", "site": "mrc", "recover": {"epoch": "0000000000000000", "offset": 1}}).to_string(),
    )
    .await;
    let ack = next_json(&mut v2).await;
    assert_eq!((ack["recovered"].as_bool(), ack["offset"].as_u64()), (Some(false), Some(0)), "{ack}");
    let (status, _) = publish(&a, json!({"site": "mrc", "topic": "t", "data": 3})).await;
    assert_eq!(status, 202);
    assert_eq!(next_json(&mut legacy).await["data"], 3, "the legacy client survived the outage");
    let p = next_json(&mut v2).await;
    assert_eq!((p["offset"].as_u64(), p["epoch"].as_str()), (Some(1), ack["epoch"].as_str()));
    let (_, metrics) = get_text(&a.url("/metrics")).await;
    assert!(metric(&metrics, r#"datastream_redis_errors_total{op="publish"}"#) >= 1.0, "{metrics}");
}
