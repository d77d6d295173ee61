//! Behind trusted proxies (`DATASTREAM_TRUSTED_PROXIES`): the client named in `X-Forwarded-For`
//! is what the per-address connection cap counts and what the loopback check of `POST /publish`
//! sees; without the setting, or from an untrusted peer, the header changes nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
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
