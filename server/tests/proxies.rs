//! Behind trusted proxies (`DATASTREAM_TRUSTED_PROXIES`): the client named in `X-Forwarded-For`
//! is what the per-address connection cap counts and what the loopback check of `POST /publish`
//! sees; without the setting, or from an untrusted peer, the header changes nothing. Behind a TCP
//! proxy (`DATASTREAM_PROXY_PROTOCOL`): the PROXY v2 header's source address counts the same way.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// Opens a legacy WebSocket as forwarded for `client`; returns the socket or the HTTP status.
async fn open_for(s: &TestServer, client: Option<&str>) -> Result<Ws, u16> {
    let mut req = s.ws_url("/dev?site=mrc").into_client_request().unwrap();
    if let Some(client) = client {
        req.headers_mut().insert("x-forwarded-for", client.parse().unwrap());
    }
    match within(tokio_tungstenite::connect_async(req)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

/// `POST /publish` without a token, as forwarded for `client`; returns the status.
async fn publish_for(s: &TestServer, client: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new()
        .post(s.url("/publish"))
        .header("content-type", "application/json")
        .body(json!({"site": "mrc", "topic": "t", "data": 1}).to_string());
    if let Some(client) = client {
        req = req.header("x-forwarded-for", client);
    }
    within(req.send()).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn forwarded_clients_are_counted_each_behind_a_trusted_proxy() {
    let s = TestServer::start(&["--trusted-proxies", "127.0.0.1/32", "--max-connections-per-ip", "2"]).await;
    let _a1 = open_for(&s, Some("203.0.113.1")).await.unwrap();
    let _a2 = open_for(&s, Some("198.51.100.77, 203.0.113.1")).await.unwrap();
    let _b = open_for(&s, Some("203.0.113.2")).await.unwrap();
    assert_eq!(open_for(&s, Some("203.0.113.1")).await.err(), Some(429), "a third from the same client");
    // The client cannot pick its own address: what it writes left of the proxy's entry is ignored.
    assert_eq!(open_for(&s, Some("192.0.2.200, 203.0.113.1")).await.err(), Some(429));
    assert_eq!(s.state.ip_limiter.count("203.0.113.1".parse().unwrap()), 2);
    assert_eq!(s.state.ip_limiter.count("127.0.0.1".parse().unwrap()), 0, "the proxy itself is not counted");
    // IPv6 clients are counted per /64.
    let _c1 = open_for(&s, Some("2001:db8:1:2::1")).await.unwrap();
    let _c2 = open_for(&s, Some("2001:db8:1:2::2")).await.unwrap();
    assert_eq!(open_for(&s, Some("2001:db8:1:2::3")).await.err(), Some(429));
    assert!(open_for(&s, Some("2001:db8:1:3::1")).await.is_ok());
    // A header that names no client: the proxy's address counts.
    let _m1 = open_for(&s, Some("not-an-address")).await.unwrap();
    let _m2 = open_for(&s, None).await.unwrap();
    assert_eq!(open_for(&s, Some("unknown")).await.err(), Some(429));
}

#[tokio::test]
async fn without_trusted_proxies_the_header_is_ignored() {
    let s = TestServer::start(&["--max-connections-per-ip", "2"]).await;
    let _a = open_for(&s, Some("203.0.113.1")).await.unwrap();
    let _b = open_for(&s, Some("203.0.113.2")).await.unwrap();
    assert_eq!(open_for(&s, Some("203.0.113.3")).await.err(), Some(429), "all three are 127.0.0.1");
    assert_eq!(s.state.ip_limiter.count("127.0.0.1".parse().unwrap()), 2);
    assert_eq!(publish_for(&s, Some("203.0.113.9")).await, 202, "a loopback caller stays loopback");

    // Trusting other addresses than the peer's: the header is spoofed, and ignored.
    let s = TestServer::start(&["--trusted-proxies", "10.0.0.0/8,fd00::/8", "--max-connections-per-ip", "2"]).await;
    let _a = open_for(&s, Some("203.0.113.1")).await.unwrap();
    let _b = open_for(&s, Some("203.0.113.2")).await.unwrap();
    assert_eq!(open_for(&s, Some("203.0.113.3")).await.err(), Some(429));
}

#[tokio::test]
async fn a_publish_forwarded_for_a_remote_client_is_not_loopback() {
    let s = TestServer::start(&["--trusted-proxies", "127.0.0.1/32"]).await;
    assert_eq!(publish_for(&s, Some("203.0.113.9")).await, 403, "forwarded for a remote client");
    assert_eq!(publish_for(&s, Some("127.0.0.1, 203.0.113.9")).await, 403, "a spoofed loopback entry");
    assert_eq!(publish_for(&s, Some("garbage")).await, 403, "an unusable header is not loopback");
    assert_eq!(publish_for(&s, Some("127.0.0.1")).await, 202, "forwarded for a loopback client");
    assert_eq!(publish_for(&s, None).await, 202, "not forwarded: the loopback peer itself");
}

/// A PROXY protocol v2 header: PROXY for `source`, or LOCAL (a health check) for `None`.
fn proxy_header(source: Option<SocketAddr>) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let block = match source {
        None => {
            out.extend_from_slice(&[0x20, 0x00]);
            Vec::new()
        }
        Some(SocketAddr::V4(a)) => {
            out.extend_from_slice(&[0x21, 0x11]);
            [&a.ip().octets()[..], &[127, 0, 0, 1], &a.port().to_be_bytes(), &8080u16.to_be_bytes()].concat()
        }
        Some(SocketAddr::V6(a)) => {
            out.extend_from_slice(&[0x21, 0x21]);
            let dst = std::net::Ipv6Addr::LOCALHOST.octets();
            [&a.ip().octets()[..], &dst, &a.port().to_be_bytes(), &8080u16.to_be_bytes()].concat()
        }
    };
    out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&block);
    out
}

/// Opens a legacy WebSocket after sending `header`; returns the socket or the HTTP status, or
/// `Err(0)` when the relay closed the connection without answering.
async fn open_behind_tcp_proxy(s: &TestServer, header: &[u8]) -> Result<Ws, u16> {
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(header).await.unwrap();
    let req = s.ws_url("/dev?site=mrc").into_client_request().unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    match within(tokio_tungstenite::client_async(req, stream)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(_) => Err(0),
    }
}

#[tokio::test]
async fn the_proxy_protocol_source_is_the_client() {
    let s = TestServer::start(&["--proxy-protocol", "--max-connections-per-ip", "1"]).await;
    let a: SocketAddr = "203.0.113.1:40000".parse().unwrap();
    let _a = open_behind_tcp_proxy(&s, &proxy_header(Some(a))).await.unwrap();
    assert_eq!(open_behind_tcp_proxy(&s, &proxy_header(Some(a))).await.err(), Some(429));
    let _b = open_behind_tcp_proxy(&s, &proxy_header(Some("203.0.113.2:40000".parse().unwrap()))).await.unwrap();
    let _v6 = open_behind_tcp_proxy(&s, &proxy_header(Some("[2001:db8::1]:443".parse().unwrap()))).await.unwrap();
    assert_eq!(s.state.ip_limiter.count(a.ip()), 1);
    assert_eq!(s.state.ip_limiter.count("127.0.0.1".parse().unwrap()), 0);
    // LOCAL (the balancer's health check): the TCP peer counts.
    let _local = open_behind_tcp_proxy(&s, &proxy_header(None)).await.unwrap();
    assert_eq!(s.state.ip_limiter.count(IpAddr::from([127, 0, 0, 1])), 1);
    // A connection without the header is closed unanswered: nothing is guessed.
    assert_eq!(open_behind_tcp_proxy(&s, b"").await.err(), Some(0));

    // A publish relayed for a remote client is not loopback; one for loopback is.
    let publish = |source: SocketAddr| async move {
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        let body = json!({"site": "mrc", "topic": "t", "data": 1}).to_string();
        let request = format!(
            "POST /publish HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(&[proxy_header(Some(source)), request.into_bytes()].concat()).await.unwrap();
        let mut response = String::new();
        within(stream.read_to_string(&mut response)).await.unwrap();
        response.split(' ').nth(1).unwrap_or_default().to_owned()
    };
    assert_eq!(publish("203.0.113.9:5000".parse().unwrap()).await, "403");
    assert_eq!(publish("127.0.0.1:5000".parse().unwrap()).await, "202");
}

/// How long the relay keeps a connection that sends `first` after `after` and then dribbles
/// `dribble` a byte at a time, one every 100 ms, never finishing: until it closes it.
async fn held_for(s: &TestServer, after: std::time::Duration, first: &[u8], dribble: &[u8]) -> std::time::Duration {
    let start = std::time::Instant::now();
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    tokio::time::sleep(after).await;
    stream.write_all(first).await.unwrap();
    let mut buf = [0u8; 256];
    let mut bytes = dribble.iter().cycle();
    within(async {
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                    if let Some(&byte) = bytes.next()
                        && stream.write_all(&[byte]).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    })
    .await;
    start.elapsed()
}

/// One deadline for the whole handshake, from the TCP accept: time spent on the PROXY header (or
/// on the first bytes) is not given again for the HTTP request, nor is the request given a fresh
/// deadline once its first bytes are in.
#[tokio::test]
async fn the_handshake_deadline_runs_from_the_accept_whatever_comes_first() {
    use std::time::Duration;
    let deadline = Duration::from_millis(1200);
    let s = TestServer::start(&["--proxy-protocol", "--handshake-timeout", "1200ms"]).await;
    let header = proxy_header(Some("203.0.113.1:40000".parse().unwrap()));
    // A valid header late in the deadline, then silence.
    let held = held_for(&s, Duration::from_millis(900), &header, b"").await;
    assert!(held >= deadline - Duration::from_millis(50) && held < deadline + Duration::from_millis(600), "{held:?}");
    // A valid header, then a request dribbled byte by byte.
    let request = [header.clone(), b"GET /healthz HTTP/1.1\r\n".to_vec()].concat();
    let held = held_for(&s, Duration::from_millis(900), &request, b"X-Slow: aaaaaaaaaaaaaaa\r\n").await;
    assert!(held < deadline + Duration::from_millis(600), "{held:?}");

    let s = TestServer::start(&["--handshake-timeout", "1200ms"]).await;
    let held = held_for(&s, Duration::from_millis(900), b"GET /healthz HTTP/1.1\r\n", b"X-Slow: aaaaaaaaa\r\n").await;
    assert!(held < deadline + Duration::from_millis(600), "plain HTTP: {held:?}");
    // A request that completes in time is served as before.
    let (status, _) = get_text(&s.url("/healthz")).await;
    assert_eq!(status, 200);
}
