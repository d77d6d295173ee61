//! The binary's tools: `publish` (HTTP and SQS), `tail` (with recovery across a lost connection),
//! `healthcheck`, and their exit codes.

#![allow(clippy::unwrap_used)]

mod common;

use std::{process::Command, time::Duration};

use common::{procs::*, *};
use serde_json::{Value, json};

fn datastream(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datastream"));
    cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).args(args);
    cmd
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = datastream(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn publish_over_http_and_its_exit_codes() {
    let s = TestServer::start(&[]).await;
    let mut ws = s.legacy("mrc").await;
    let url = s.url("");
    let (code, out, err) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || run(&["publish", "--url", &url, "--site", "mrc", "--topic", "weather", "--data", r#"{"t": 1.50}"#])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["accepted"], 1);
    assert_eq!(next_text(&mut ws).await, r#"{"site":"mrc","topic":"weather","data":{"t": 1.50}}"#);

    let (code, _, err) = run(&["publish", "--url", &url, "--site", "mrc", "--topic", "t", "--data", "{oops"]);
    assert_eq!(code, 2, "bad data is a usage error: {err}");
    assert!(err.contains("--data is not valid JSON"), "{err}");
    let (code, _, err) = run(&["publish", "--url", &url, "--site", "a b", "--topic", "t", "--data", "1"]);
    assert_eq!(code, 2, "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (code, _, err) =
        run(&["publish", "--url", &format!("http://{closed}"), "--site", "mrc", "--topic", "t", "--data", "1"]);
    assert_eq!(code, 3, "unreachable: {err}");

    let token = "0123456789abcdef-cli";
    let guarded = TestServer::start(&["--publish-token", token]).await;
    let gurl = guarded.url("");
    let (code, _, err) = tokio::task::spawn_blocking({
        let gurl = gurl.clone();
        move || run(&["publish", "--url", &gurl, "--site", "mrc", "--topic", "t", "--data", "1"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "refused: {err}");
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run(&["publish", "--url", &gurl, "--token", token, "--site", "mrc", "--topic", "t", "--data", "1"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn publish_through_sqs() {
    let moto = Moto::start();
    let relay = Relay::start(&[
        ("DATASTREAM_SQS_QUEUE", "tools-queue"),
        ("AWS_ENDPOINT_URL_SQS", &moto.endpoint),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ]);
    let publish = |data: &str| {
        datastream(&["publish", "--sqs-queue", "tools-queue", "--site", "mrc", "--topic", "t", "--data", data])
            .envs(moto_env(&moto.endpoint))
            .output()
            .unwrap()
    };
    // The queue does not exist yet: the relay keeps retrying GetQueueUrl until it does.
    let out = publish("1");
    assert_eq!(out.status.code(), Some(3), "no such queue yet: {}", String::from_utf8_lossy(&out.stderr));
    create_queue(&moto.endpoint, "tools-queue");
    let mut ws = connect(&relay.ws_url("/dev?site=mrc")).await;
    let out = publish("\"hi\"");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("message_id"));
    let got = tokio::time::timeout(Duration::from_secs(30), next_json(&mut ws)).await.expect("delivered via SQS");
    assert_eq!(got, json!({"site": "mrc", "topic": "t", "data": "hi"}));
}

#[tokio::test]
async fn tail_prints_every_publication_once_across_a_lost_connection() {
    let s = TestServer::start(&[]).await;
    let proxy = CutProxy::start(s.addr).await;
    let (proc, mut lines) =
        spawn_tail(&["--url", &format!("ws://{}/dev", proxy.addr), "--site", "mrc", "--count", "10"]);
    eventually("tail subscribed", || s.state.hub.subscriber_count("mrc") == 1).await;
    for n in 1..=5 {
        s.publish(&json!({"site": "mrc", "topic": "t", "data": n})).await;
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(within(lines.recv()).await.unwrap());
    }
    proxy.cut();
    eventually("tail lost its connection", || s.state.hub.subscriber_count("mrc") == 0).await;
    for n in 6..=10 {
        s.publish(&json!({"site": "mrc", "topic": "t", "data": n})).await;
    }
    while got.len() < 10 {
        got.push(within(lines.recv()).await.expect("tail ended early"));
    }
    let offsets: Vec<u64> =
        got.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=10).collect::<Vec<_>>());
    let mut proc = proc;
    assert_eq!(proc.wait_exit(WAIT), Some(0), "--count ends tail");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut proc.child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("\"event\":\"reconnecting\""), "{err}");
}

#[tokio::test]
async fn tail_stops_on_a_terminal_close() {
    let s = TestServer::start(&["--jwt-secret", "0123456789abcdef0123456789abcdef-tail"]).await;
    let url = format!("ws://{}/dev", s.addr);
    let (code, _, err) =
        tokio::task::spawn_blocking(move || run(&["tail", "--url", &url, "--site", "mrc"])).await.unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("3501"), "{err}");
}

#[tokio::test]
async fn healthcheck_exit_codes() {
    let s = TestServer::start(&[]).await;
    let addr = s.addr.to_string();
    let (code, _, err) = tokio::task::spawn_blocking(move || run(&["healthcheck", "--listen", &addr])).await.unwrap();
    assert_eq!(code, 0, "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (code, _, _) = run(&["healthcheck", "--listen", &closed]);
    assert_eq!(code, 3);
    for sub in ["serve", "publish", "tail", "healthcheck"] {
        let (code, out, _) = run(&[sub, "--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("Usage: datastream"), "{sub}: {out}");
    }
}
