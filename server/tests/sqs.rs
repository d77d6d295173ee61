//! SQS ingest against a real SQS-protocol server (`moto_server`), with the relay as a real child
//! process configured only through the environment, and messages sent with boto3 exactly as the
//! original README does.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use aws_sdk_sqs::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    types::QueueAttributeName,
};
use common::{procs::*, *};
use serde_json::Value;

const QUEUE: &str = "datastreamIncomingQueue-dev";
const DLQ: &str = "datastreamIncomingDLQ-dev";

fn sqs_client(endpoint: &str) -> Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .build();
    Client::from_conf(config)
}

/// Creates the queue and its DLQ with a redrive policy (as the original deploys them, but with a
/// 1 s visibility timeout and 2 receives so the test is quick). Returns (queue URL, DLQ URL).
async fn create_queues(sqs: &Client) -> (String, String) {
    let dlq = sqs.create_queue().queue_name(DLQ).send().await.expect("create DLQ");
    let dlq_url = dlq.queue_url().expect("DLQ url").to_owned();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("DLQ attributes");
    let arn = attrs.attributes().and_then(|a| a.get(&QueueAttributeName::QueueArn)).expect("DLQ arn").clone();
    let redrive = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": "2"}).to_string();
    let queue = sqs
        .create_queue()
        .queue_name(QUEUE)
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .send()
        .await
        .expect("create queue");
    (queue.queue_url().expect("queue url").to_owned(), dlq_url)
}

async fn visible_and_in_flight(sqs: &Client, url: &str) -> (u64, u64) {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let get =
        |n: &QueueAttributeName| out.attributes().and_then(|a| a.get(n)).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        get(&QueueAttributeName::ApproximateNumberOfMessages),
        get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

fn relay_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATASTREAM_SQS_QUEUE", QUEUE.to_owned()),
        ("AWS_ENDPOINT_URL_SQS", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
    ]
}

fn start_relay(env: &[(&'static str, String)]) -> Relay {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Relay::start(&env)
}

async fn wait_ready(relay: &Relay) {
    let url = relay.url("/readyz");
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            if get_text(&url).await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "relay never became ready");
}

#[tokio::test]
async fn boto3_publications_reach_subscribers_and_malformed_bodies_go_to_the_dlq() {
    let moto = Moto::start();
    let sqs = sqs_client(&moto.endpoint);
    let (queue_url, dlq_url) = create_queues(&sqs).await;
    let relay = start_relay(&relay_env(&moto.endpoint));
    wait_ready(&relay).await;

    // Every real message shape, published with boto3, arrives unchanged.
    let fixtures = fixtures();
    for (name, text) in &fixtures {
        let published: Value = serde_json::from_str(text).unwrap();
        let mut ws = connect(&relay.ws_url(&format!("/dev?site={}", published["site"].as_str().unwrap()))).await;
        let path = repo_root().join("tests/fixtures").join(name);
        boto3_publish(&moto.endpoint, QUEUE, &["--fixture", path.to_str().unwrap()]);
        assert_eq!(next_json(&mut ws).await, published, "{name}");
    }

    // Malformed bodies are not delivered, not deleted, and end up in the DLQ by redrive.
    let mut ws = connect(&relay.ws_url("/dev?site=tst")).await;
    let malformed = [
        "not json",
        "[1, 2]",
        r#"{"topic": "testing", "data": 1}"#,
        r#"{"site": "tst", "topic": "", "data": 1}"#,
        r#"{"site": "tst", "topic": "testing"}"#,
    ];
    for body in malformed {
        boto3_publish(&moto.endpoint, QUEUE, &["--raw", body]);
    }
    // The README's own call, after the bad ones: still served.
    boto3_publish(
        &moto.endpoint,
        QUEUE,
        &["--site", "tst", "--topic", "testing", "--data", r#""{\"text\": \"hello, site tst\"}""#],
    );
    let got = next_json(&mut ws).await;
    assert_eq!(got["data"], Value::String(r#"{"text": "hello, site tst"}"#.into()));

    let moved = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if visible_and_in_flight(&sqs, &dlq_url).await.0 == malformed.len() as u64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(
        moved.is_ok(),
        "malformed messages did not reach the DLQ: {:?}",
        visible_and_in_flight(&sqs, &dlq_url).await
    );
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    assert_eq!(visible_and_in_flight(&sqs, &queue_url).await, (0, 0), "published messages were deleted");
    let dlq_bodies: Vec<String> = sqs
        .receive_message()
        .queue_url(&dlq_url)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("receive DLQ")
        .messages()
        .iter()
        .filter_map(|m| m.body().map(str::to_owned))
        .collect();
    for body in malformed {
        assert!(dlq_bodies.iter().any(|b| b == body), "{body} not in DLQ: {dlq_bodies:?}");
    }
    assert!(relay.logged(
        "malformed SQS message not published; left for the queue's redrive policy",
        Some(("reason", "body is not valid JSON: expected ident at line 1 column 2"))
    ));
    let (_, metrics) = get_text(&relay.url("/metrics")).await;
    assert!(metric(&metrics, r#"datastream_messages_malformed_total{source="sqs",reason="missing_field"}"#) >= 2.0);
    // Each fixture and the README's call, once: the malformed ones are not counted as published.
    let published = fixtures.len() + 1;
    assert_eq!(metric(&metrics, r#"datastream_messages_in_total{source="sqs"}"#), published as f64);
}

#[tokio::test]
async fn an_unreachable_sqs_is_reported_and_everything_else_keeps_working() {
    // A closed loopback port: every SQS call fails fast.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let relay = start_relay(&relay_env(&format!("http://127.0.0.1:{port}")));
    let url = relay.url("/readyz");
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = get_text(&url).await;
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(last.1.contains(r#""sqs":"unreachable""#), "{}", last.1);
    assert_eq!(get_text(&relay.url("/healthz")).await.0, 200);
    let mut ws = connect(&relay.ws_url("/dev?site=mrc")).await;
    let (status, _) = publish_raw(&relay.url("/publish"), r#"{"site":"mrc","topic":"t","data":1}"#.into(), None).await;
    assert_eq!(status, 202);
    assert_eq!(next_json(&mut ws).await["data"], 1);
    // The SDK retries a failed call itself before the relay sees (and counts) the error.
    let mut errors = 0.0;
    for _ in 0..200 {
        let (_, metrics) = get_text(&relay.url("/metrics")).await;
        errors = metric(&metrics, r#"datastream_sqs_errors_total{op="get_queue_url"}"#);
        if errors >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(errors >= 1.0, "SQS errors were not counted");
    assert!(relay.logged("cannot resolve SQS queue", None));
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_cleanly() {
    let mut relay = Relay::start(&[("DATASTREAM_SHUTDOWN_TIMEOUT", "5s")]);
    let mut ws = connect(&relay.ws_url("/dev?site=mrc")).await;
    relay.proc.terminate();
    let (code, reason, _) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    assert_eq!(relay.proc.wait_exit(WAIT), Some(0), "exit status");
    assert!(relay.logged("stopped", None));
}

#[tokio::test]
async fn a_bad_setting_stops_the_binary_with_a_message_naming_it() {
    for (var, value, named) in [
        ("DATASTREAM_STAGE", "healthz", "DATASTREAM_STAGE"),
        ("DATASTREAM_PING_INTERVAL", "soon", "--ping-interval"),
        ("DATASTREAM_DRAIN_WINDOW", "20s", "DATASTREAM_DRAIN_WINDOW"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_datastream"))
            .env_clear()
            .env("DATASTREAM_LISTEN", "127.0.0.1:0")
            .env(var, value)
            .output()
            .expect("run datastream");
        assert!(!out.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{var}={value}: {stderr}");
    }
}
