//! Plain HTTP connections hold the relay's memory and sockets too: they are counted and capped
//! (in total and per address), an idle keep-alive connection is closed, a response nobody reads
//! is abandoned after the write deadline, and a large `GET …/latest` answer is streamed rather
//! than built whole per request.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{procs::*, *};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// The status line a fresh connection gets for `GET /healthz`, or what it got instead.
async fn healthz_status(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = within(stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).lines().next().unwrap_or("(closed)").to_owned()
}

#[tokio::test]
async fn plain_http_connections_are_capped_per_address_and_in_total() {
    let s = TestServer::start(&["--max-http-connections-per-ip", "3"]).await;
    // Three connections that say nothing hold the address's places.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(s.addr).await.unwrap());
    }
    eventually("three counted", || s.state.http_connections.open() == 3).await;
    assert_eq!(healthz_status(s.addr).await, "HTTP/1.1 429 Too Many Requests");
    idle.pop();
    eventually("a place given back", || s.state.http_connections.open() == 2).await;
    assert_eq!(healthz_status(s.addr).await, "HTTP/1.1 200 OK");
    // A WebSocket gives its place back once upgraded: its session counts it from then on.
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(s.legacy("mrc").await);
    }
    eventually("upgraded sockets not counted", || s.state.http_connections.open() == 2).await;
    drop(idle);
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, r#"datastream_connections_refused_total{reason="http_per_ip"}"#), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "datastream_http_connections"), 1.0, "the metrics request itself");

    let s = TestServer::start(&["--max-http-connections", "2", "--max-http-connections-per-ip", "0"]).await;
    let _idle: Vec<_> = [TcpStream::connect(s.addr).await.unwrap(), TcpStream::connect(s.addr).await.unwrap()].into();
    eventually("two counted", || s.state.http_connections.open() == 2).await;
    assert_eq!(healthz_status(s.addr).await, "HTTP/1.1 503 Service Unavailable");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_handshake_timeout() {
    let s = TestServer::start(&["--handshake-timeout", "600ms"]).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within(stream.read(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "kept alive after the answer");
    let idle_since = Instant::now();
    let n = within(stream.read(&mut buf)).await.unwrap_or(0);
    let idle = idle_since.elapsed();
    assert_eq!(n, 0, "closed, not answered");
    assert!(idle >= Duration::from_millis(500) && idle < Duration::from_secs(3), "{idle:?}");
    eventually("nothing left open", || s.state.http_connections.open() == 0).await;
}

/// Publishes `topics` latest values of `size` bytes each to `site`.
async fn fill_latest(url: &str, site: &str, topics: usize, size: usize) {
    for t in 0..topics {
        let body = json!({"site": site, "topic": format!("t{t}"), "data": "x".repeat(size)}).to_string();
        let (status, reply) = publish_raw(url, body, None).await;
        assert_eq!(status, 202, "{reply}");
    }
}

/// A client that asks for the latest values and never reads the answer: its small receive
/// window fills at once.
async fn unread_latest_request(addr: std::net::SocketAddr, site: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!("GET /sites/{site}/latest HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn a_response_nobody_reads_is_abandoned_after_the_write_deadline() {
    let s = TestServer::start(&["--client-timeout", "2s", "--ping-interval", "1s"]).await;
    fill_latest(&s.url("/publish"), "mrc", 16, 200_000).await;
    let _reader = unread_latest_request(s.addr, "mrc").await;
    eventually("the reader's connection counted", || s.state.http_connections.open() == 1).await;
    let since = Instant::now();
    tokio::time::timeout(Duration::from_secs(8), async {
        while s.state.http_connections.open() != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the unread response was abandoned");
    assert!(since.elapsed() >= Duration::from_millis(1500), "{:?}: not before the deadline", since.elapsed());
    assert_eq!(healthz_status(s.addr).await, "HTTP/1.1 200 OK");
}

/// 40 readers of a site whose 64 latest values are 200 KB each (12.8 MB per answer) who never
/// read: the relay holds what it is writing to each (a value or two), not whole answers, and lets
/// them go after the write deadline.
#[tokio::test]
async fn slow_readers_of_large_latest_answers_hold_little_memory() {
    let relay = Relay::start(&[("DATASTREAM_CLIENT_TIMEOUT", "3s"), ("DATASTREAM_PING_INTERVAL", "1s")]);
    fill_latest(&relay.url("/publish"), "mrc", 64, 200_000).await;
    // Warm: one answer read in full, so steady-state allocations are in the baseline.
    let (status, body) = get_text(&relay.url("/sites/mrc/latest")).await;
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["latest"].as_array().unwrap().len(), 64, "the streamed answer is whole JSON");
    let before = status_kb(relay.proc.pid(), "VmHWM").unwrap();
    let mut readers = Vec::new();
    for _ in 0..40 {
        readers.push(unread_latest_request(relay.addr, "mrc").await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = status_kb(relay.proc.pid(), "VmHWM").unwrap().saturating_sub(before);
    // Whole answers would be 40 × 12.8 MB = 512 MB.
    assert!(grown < 64 * 1024, "the relay grew by {grown} KiB for 40 unread answers");
    // All let go after the write deadline: their connections end (the metrics request is one).
    within(async {
        loop {
            let (_, metrics) = get_text(&relay.url("/metrics")).await;
            if metric(&metrics, "datastream_http_connections") <= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    drop(readers);
}
