//! Hostile and careless input, checked on the wire bytes (RFC 6455), not through a tolerant
//! client library: close handshakes, close-frame sizes, half-sent handshakes, publish bodies
//! that are large, slow, unauthorized or sent by a web page, unbounded topic lists, and a
//! publication sent the moment a legacy socket opens.

#![allow(clippy::unwrap_used)]

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{raw::*, *};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const V2: &str = "Sec-WebSocket-Protocol: datastream.v2\r\n";

/// RFC 6455 §5.5.1: an endpoint that receives a Close frame sends one back. Browsers otherwise
/// report 1006 (`wasClean: false`) for every page-initiated close.
#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let s = TestServer::start(&[]).await;
    for (path, extra) in [("/dev?site=mrc", ""), ("/dev", V2)] {
        let mut ws = RawWs::open(s.addr, path, extra).await;
        if !extra.is_empty() {
            assert_eq!(ws.next_non_ping().await.unwrap().opcode, 0x1, "v2 hello");
        }
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        ws.send(0x8, &payload).await;
        let reply = ws.next_non_ping().await.unwrap_or_else(|| panic!("{path}: no close frame before EOF"));
        assert_eq!(close_code(&reply), 1000, "{path}: the code is echoed");
        assert!(within(ws.frame()).await.is_none(), "{path}: the connection ends after the close");
    }
}

/// Close frames carry at most 125 bytes; a refused token's close reason is short and says nothing
/// of the verifier's internals.
#[tokio::test]
async fn a_refused_v2_token_closes_with_a_legal_frame() {
    let secret = "0123456789abcdef0123456789abcdef";
    let s = TestServer::start(&["--jwt-secret", secret]).await;
    // alg "none", and a long garbage token: both fail before any signature check.
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", "eyJzaXRlcyI6WyIqIl19");
    let garbage = "x".repeat(2000);
    for token in [none, garbage] {
        let protocols = format!("Sec-WebSocket-Protocol: datastream.v2, datastream.token.{token}\r\n");
        let mut ws = RawWs::open(s.addr, "/dev", &protocols).await;
        let frame = ws.next_non_ping().await.expect("a close frame");
        assert!(frame.payload.len() <= 125, "control frame of {} bytes", frame.payload.len());
        assert_eq!(close_code(&frame), 3501);
        let reason = String::from_utf8(frame.payload[2..].to_vec()).unwrap();
        assert!(reason.len() <= 100 && !reason.contains("Error"), "{reason:?}");
    }
}

/// A publication sent as soon as the client sees a legacy socket open reaches it: the connection
/// is subscribed before the 101 goes out.
#[tokio::test]
async fn a_publication_right_after_the_handshake_reaches_a_legacy_client() {
    let s = TestServer::start(&[]).await;
    for n in 0..40 {
        let site = format!("open{n}");
        let mut ws = RawWs::open(s.addr, &format!("/dev?site={site}"), "").await;
        let (status, _) = s.publish(&json!({"site": site, "topic": "t", "data": n})).await;
        assert_eq!(status, 202);
        let frame = ws.next_non_ping().await.unwrap_or_else(|| panic!("try {n}: closed"));
        let v: Value = serde_json::from_slice(&frame.payload).unwrap();
        assert_eq!(v["data"], n, "try {n}");
    }
}

/// A publish body larger than a connection's budget (14 × 100 KB, 1.4 MB against 1 MiB) reaches
/// subscribers that read, legacy and v2 alike; none is closed.
#[tokio::test]
async fn a_publish_body_larger_than_the_budget_reaches_reading_subscribers() {
    let s = TestServer::start(&[]).await;
    let mut legacy = s.legacy("big").await;
    let mut v2 = connect_v2(&s, "big").await;
    let pad = "x".repeat(100 * 1024);
    let body: Vec<Value> =
        (0..14).map(|n| json!({"site": "big", "topic": "t", "data": {"n": n, "pad": pad}})).collect();
    let (status, answer) = s.publish(&Value::Array(body)).await;
    assert_eq!((status, answer["accepted"].as_u64()), (202, Some(14)));
    for n in 0..14 {
        assert_eq!(next_json(&mut legacy).await["data"]["n"], n, "legacy");
    }
    let mut got = Vec::new();
    while got.len() < 14 {
        for line in next_text(&mut v2).await.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["type"], "pub", "{line:.200}");
            got.push(v["data"]["n"].as_u64().unwrap());
        }
    }
    assert_eq!(got, (0..14).collect::<Vec<_>>(), "v2");
    // Both still open: a small publication still arrives.
    s.publish(&json!({"site": "big", "topic": "t", "data": "after"})).await;
    assert_eq!(next_json(&mut legacy).await["data"], "after");
    assert!(next_text(&mut v2).await.contains("after"));
}

/// Opens a v2 connection and subscribes to `site`; returns once the subscription is confirmed.
async fn connect_v2(s: &TestServer, site: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = s.ws_url("/dev").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().unwrap());
    let (mut ws, _) = within(tokio_tungstenite::connect_async(request)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    send_text(&mut ws, &json!({"type": "subscribe", "id": 1, "site": site}).to_string()).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    ws
}

/// A topic filter is bounded (`DATASTREAM_MAX_TOPICS`), repeats count once, and the connection
/// keeps working after a refusal.
#[tokio::test]
async fn topic_filters_are_bounded_and_repeats_count_once() {
    let s = TestServer::start(&["--max-topics", "8"]).await;
    let mut ws = connect_v2(&s, "mrc").await;
    let many: Vec<String> = (0..6000).map(|n| format!("t{n}")).collect();
    send_text(&mut ws, &json!({"type": "subscribe", "id": 2, "site": "saf", "topics": many}).to_string()).await;
    let refusal = next_json(&mut ws).await;
    assert_eq!((refusal["type"].as_str(), refusal["code"].as_str()), (Some("error"), Some("too_many_topics")));
    assert_eq!(refusal["id"], 2);
    let repeated = vec!["weather"; 50];
    send_text(&mut ws, &json!({"type": "subscribe", "id": 3, "site": "saf", "topics": repeated}).to_string()).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed", "fifty repeats of one topic are one topic");
    s.publish(&json!({"site": "saf", "topic": "weather", "data": 1})).await;
    s.publish(&json!({"site": "saf", "topic": "other", "data": 2})).await;
    s.publish(&json!({"site": "mrc", "topic": "t", "data": 3})).await;
    let first: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!((first["site"].as_str(), first["data"].as_u64()), (Some("saf"), Some(1)));
    let second: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!((second["site"].as_str(), second["data"].as_u64()), (Some("mrc"), Some(3)));
}

/// Connections that stop before they are recognisably HTTP/1 — nothing, `P`, or part of the
/// HTTP/2 preface — are closed after the handshake deadline like one that sends `G`.
#[tokio::test]
async fn half_sent_first_bytes_are_closed_after_the_handshake_deadline() {
    let s = TestServer::start(&["--handshake-timeout", "500ms"]).await;
    let mut clients = Vec::new();
    for start in [&b""[..], b"G", b"P", b"PRI * HTTP/2.0\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        stream.write_all(start).await.unwrap();
        clients.push((String::from_utf8_lossy(start).into_owned(), stream));
    }
    for (start, mut stream) in clients {
        let mut sink = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{start:?} was held open");
    }
    // And the relay still serves.
    let mut ws = s.legacy("mrc").await;
    s.publish(&json!({"site": "mrc", "topic": "t", "data": 1})).await;
    assert_eq!(next_json(&mut ws).await["data"], 1);
}

/// Sends a publish request's headers and `sent` bytes of a body announced as `length`; returns
/// the stream.
async fn partial_publish(addr: SocketAddr, headers: &str, length: usize, sent: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{headers}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream
}

/// Reads the HTTP status line the relay answers with, within `limit`.
async fn status_within(stream: &mut TcpStream, limit: Duration) -> Option<u16> {
    let mut got = Vec::new();
    tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        while !got.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()?;
    String::from_utf8_lossy(&got).split(' ').nth(1)?.parse().ok()
}

/// Without the token, a publish is refused from its headers, before its body is read; a body that
/// stalls is answered 408 once the body deadline passes.
#[tokio::test]
async fn publish_is_authorized_before_the_body_and_the_body_has_a_deadline() {
    let token = "0123456789abcdef";
    let s = TestServer::start(&["--publish-token", token, "--body-timeout", "1s"]).await;
    let mut no_token = partial_publish(s.addr, "", 4_000_000, b"[{\"site\"").await;
    assert_eq!(status_within(&mut no_token, Duration::from_millis(800)).await, Some(401), "401 before the body");
    let auth = format!("Authorization: Bearer {token}\r\n");
    let mut slow = partial_publish(s.addr, &auth, 4_000_000, b"[{\"site\"").await;
    assert_eq!(status_within(&mut slow, Duration::from_secs(5)).await, Some(408));
    let mut huge = partial_publish(s.addr, &auth, 400_000_000, b"").await;
    assert_eq!(status_within(&mut huge, Duration::from_secs(2)).await, Some(413), "refused as announced");
}

/// Without a token, a web page of another origin cannot publish through a browser on the relay's
/// host (a `no-cors` POST is a "simple" request: no preflight); tools and same-origin pages can.
#[tokio::test]
async fn a_cross_site_page_cannot_publish_without_a_token() {
    let s = TestServer::start(&[]).await;
    let client = reqwest::Client::new();
    let body = json!({"site": "mrc", "topic": "t", "data": 1}).to_string();
    let post = |headers: &[(&str, String)]| {
        let mut req = client.post(s.url("/publish")).header("content-type", "text/plain").body(body.clone());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        async move { within(req.send()).await.unwrap().status().as_u16() }
    };
    let evil = ("origin", "https://evil.example".to_owned());
    assert_eq!(post(&[evil.clone(), ("sec-fetch-site", "cross-site".into())]).await, 403);
    assert_eq!(post(&[evil.clone(), ("sec-fetch-site", "same-site".into())]).await, 403);
    assert_eq!(post(&[evil]).await, 403, "an older browser: Origin only");
    let own = format!("http://{}", s.addr);
    assert_eq!(post(&[("origin", own), ("sec-fetch-site", "same-origin".into())]).await, 202);
    assert_eq!(post(&[]).await, 202, "curl, SDKs");
    let mut legacy = s.legacy("mrc").await;
    s.publish(&json!({"site": "mrc", "topic": "t", "data": "still"})).await;
    assert_eq!(next_json(&mut legacy).await["data"], "still");
}

/// Subscribing to thousands of never-published sites leaves no lasting state in the memory broker:
/// a subscriber's read gives a site its epoch, and the sweep removes it once nobody subscribes.
#[tokio::test]
async fn subscribing_to_random_sites_leaves_no_broker_state() {
    let s = TestServer::start(&["--client-frame-rate", "10000", "--client-frame-burst", "10000"]).await;
    let mut ws = connect_v2(&s, "real").await;
    for n in 0..300u32 {
        let site = format!("random{n}");
        send_text(&mut ws, &json!({"type": "subscribe", "site": site}).to_string()).await;
        assert_eq!(next_json(&mut ws).await["type"], "subscribed");
        send_text(&mut ws, &json!({"type": "unsubscribe", "site": site}).to_string()).await;
        assert_eq!(next_json(&mut ws).await["type"], "unsubscribed");
    }
    s.state.broker.sweep().await;
    let datastream::broker::Broker::Memory(memory) = &s.state.broker else { panic!("memory broker") };
    assert_eq!(memory.site_count(), 1, "only the site still subscribed to");
}

/// A chunked body (no `Content-Length`) over the limit is refused with 413 once it passes it.
#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused() {
    let s = TestServer::start(&["--max-publish-body-bytes", "1000", "--max-message-bytes", "1000"]).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = "x".repeat(2000);
    stream.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes()).await.unwrap();
    assert_eq!(status_within(&mut stream, Duration::from_secs(5)).await, Some(413));
}
