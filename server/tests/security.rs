//! Authentication (HS256 and ES256 via JWKS file and URL), token expiry and refresh, the Origin
//! allowlist, connection limits (total, per address), the handshake deadline, and the client
//! frame rate limit.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use datastream::auth::now_unix;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

fn hs256(sites: &[&str], exp_in: i64) -> String {
    let claims = json!({"sites": sites, "exp": now_unix() as i64 + exp_in});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn hs256_claims(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// `GET /sites/<site>/latest` with an optional bearer token; the status.
async fn latest_status(s: &TestServer, site: &str, token: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().get(s.url(&format!("/sites/{site}/latest")));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    within(req.send()).await.unwrap().status().as_u16()
}

fn es256_key() -> EncodingKey {
    let pem = std::fs::read(repo_root().join("tests/keys/es256-test-private.pem")).unwrap();
    EncodingKey::from_ec_pem(&pem).unwrap()
}

fn es256(kid: &str, sites: &[&str]) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &json!({"sites": sites, "exp": now_unix() + 600}), &es256_key()).unwrap()
}

fn jwks(kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(&es256_key(), Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    json!({"keys": [jwk]})
}

/// Opens a WebSocket with extra subprotocols / headers; returns the socket or the HTTP status.
async fn open(s: &TestServer, path: &str, protocols: &[&str], origin: Option<&str>) -> Result<Ws, u16> {
    let mut req = s.ws_url(path).into_client_request().unwrap();
    if !protocols.is_empty() {
        req.headers_mut().insert("sec-websocket-protocol", protocols.join(", ").parse().unwrap());
    }
    if let Some(origin) = origin {
        req.headers_mut().insert("origin", origin.parse().unwrap());
    }
    match within(tokio_tungstenite::connect_async(req)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{path}: {e}"),
    }
}

async fn v2_with_token(s: &TestServer, token: &str) -> Ws {
    v2_with_token_hello(s, token).await.0
}

/// A v2 connection with `token`, and its hello.
async fn v2_with_token_hello(s: &TestServer, token: &str) -> (Ws, Value) {
    let protocol = format!("datastream.token.{token}");
    let mut ws = open(s, "/dev", &["datastream.v2", &protocol], None).await.unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    (ws, hello)
}

async fn subscribe(ws: &mut Ws, site: &str) -> Value {
    send_text(ws, &json!({"type": "subscribe", "id": 1, "site": site}).to_string()).await;
    next_json(ws).await
}

#[tokio::test]
async fn without_auth_configured_everyone_is_anonymous() {
    let s = TestServer::start(&[]).await;
    assert!(open(&s, "/dev?site=anything", &[], None).await.is_ok());
}

#[tokio::test]
async fn hs256_tokens_grant_sites() {
    let s = TestServer::start(&["--jwt-secret", SECRET]).await;
    // Legacy: token in the query; refused handshakes are HTTP errors.
    assert_eq!(open(&s, "/dev?site=mrc", &[], None).await.err(), Some(401), "no token");
    let mrc = hs256(&["mrc"], 600);
    assert!(open(&s, &format!("/dev?site=mrc&token={mrc}"), &[], None).await.is_ok());
    assert_eq!(open(&s, &format!("/dev?site=saf&token={mrc}"), &[], None).await.err(), Some(403));
    let expired = hs256(&["mrc"], -600);
    assert_eq!(open(&s, &format!("/dev?site=mrc&token={expired}"), &[], None).await.err(), Some(401));
    let forged = hs256(&["*"], 600).replace('.', ".x");
    assert_eq!(open(&s, &format!("/dev?site=mrc&token={forged}"), &[], None).await.err(), Some(401));

    // v2: token in a subprotocol entry; a refused token is a terminal close with the reason.
    let mut ws = open(&s, "/dev", &["datastream.v2"], None).await.unwrap();
    let (code, reason, _) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (3501, "a token is required"));
    // An expired token is the one refusal a fresh token fixes: 3002 (reconnect with a new one).
    let mut ws = open(&s, "/dev", &["datastream.v2", &format!("datastream.token.{expired}")], None).await.unwrap();
    let (code, reason, _) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (3002, "token expired"));

    let mut ws = v2_with_token(&s, &mrc).await;
    assert_eq!(subscribe(&mut ws, "mrc").await["type"], "subscribed");
    let err = subscribe(&mut ws, "saf").await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str(), err["id"].as_u64()),
        (Some("error"), Some("forbidden"), Some(1))
    );
    let mut all = v2_with_token(&s, &hs256(&["*"], 600)).await;
    assert_eq!(subscribe(&mut all, "saf").await["type"], "subscribed");

    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert!(metric(&metrics, r#"datastream_connections_refused_total{reason="auth"}"#) >= 5.0, "{metrics}");
}

/// The hello of a connection made with an expiring token says when it expires (the SDK
/// refreshes it before then); without a token, or with one that does not expire, nothing.
#[tokio::test]
async fn the_hello_says_when_the_token_expires() {
    let s = TestServer::start(&["--jwt-secret", SECRET, "--anonymous-sites", "pub"]).await;
    let (_ws, hello) = v2_with_token_hello(&s, &hs256(&["mrc"], 600)).await;
    let at = hello["expires_at"].as_u64().expect("expires_at");
    assert!((now_unix() + 590..=now_unix() + 610).contains(&at), "{hello}");
    let mut anonymous = open(&s, "/dev", &["datastream.v2"], None).await.unwrap();
    let hello = next_json(&mut anonymous).await;
    assert_eq!((hello["type"].as_str(), hello.get("expires_at")), (Some("hello"), None), "{hello}");
}

#[tokio::test]
async fn an_expiring_token_closes_the_connection_unless_refreshed() {
    let s = TestServer::start(&["--jwt-secret", SECRET]).await;
    let mut short = v2_with_token(&s, &hs256(&["mrc"], 2)).await;
    let mut refreshed = v2_with_token(&s, &hs256(&["mrc", "saf"], 2)).await;
    assert_eq!(subscribe(&mut refreshed, "mrc").await["type"], "subscribed");
    assert_eq!(subscribe(&mut refreshed, "saf").await["type"], "subscribed");
    // Refresh with a longer token that no longer grants saf.
    let token = hs256(&["mrc"], 600);
    send_text(&mut refreshed, &json!({"type": "refresh", "id": 5, "token": token}).to_string()).await;
    let ok = next_json(&mut refreshed).await;
    assert_eq!((ok["type"].as_str(), ok["id"].as_u64()), (Some("refreshed"), Some(5)), "{ok}");
    assert!(ok["expires_at"].as_u64().unwrap() > now_unix() + 500);
    let lost = next_json(&mut refreshed).await;
    assert_eq!(lost["code"], "forbidden", "{lost}");
    // A bad refresh is refused and changes nothing.
    send_text(&mut refreshed, &json!({"type": "refresh", "id": 6, "token": "nope"}).to_string()).await;
    assert_eq!(next_json(&mut refreshed).await["code"], "invalid_token");

    let (code, reason, _) = expect_close(&mut short).await;
    assert_eq!((code, reason.as_str()), (3002, "token expired"));
    s.publish(&json!({"site": "mrc", "topic": "t", "data": 1})).await;
    s.publish(&json!({"site": "saf", "topic": "t", "data": 2})).await;
    let f = next_json(&mut refreshed).await;
    assert_eq!((f["site"].as_str(), f["data"].as_u64()), (Some("mrc"), Some(1)), "still connected, saf dropped");
    expect_silence(&mut refreshed, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn es256_tokens_verified_with_a_jwks_file_and_url() {
    let dir = std::env::temp_dir().join(format!("datastream-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    std::fs::write(&file, jwks("k1").to_string()).unwrap();
    let s = TestServer::start(&["--jwks", file.to_str().unwrap()]).await;
    let mut ws = v2_with_token(&s, &es256("k1", &["mrc"])).await;
    assert_eq!(subscribe(&mut ws, "mrc").await["type"], "subscribed");
    let mut ws = open(&s, "/dev", &["datastream.v2", &format!("datastream.token.{}", es256("k2", &["mrc"]))], None)
        .await
        .unwrap();
    let (code, reason, _) = expect_close(&mut ws).await;
    assert_eq!(code, 3501);
    assert!(reason.contains("unknown key id"), "{reason}");
    // HS256 tokens are not accepted when keys come from a JWKS.
    let mut ws =
        open(&s, "/dev", &["datastream.v2", &format!("datastream.token.{}", hs256(&["*"], 60))], None).await.unwrap();
    assert_eq!(expect_close(&mut ws).await.0, 3501);
    std::fs::remove_dir_all(&dir).unwrap();

    // The same keys served over HTTP.
    let body = jwks("k1").to_string();
    let app = axum::Router::new().route("/jwks.json", axum::routing::get(move || async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let jwks_server = tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/jwks.json");
    let s = TestServer::start(&["--jwks", &url]).await;
    let mut ws = v2_with_token(&s, &es256("k1", &["*"])).await;
    assert_eq!(subscribe(&mut ws, "any").await["type"], "subscribed");
    jwks_server.abort();
}

#[tokio::test]
async fn origins_outside_the_allowlist_are_refused() {
    let s = TestServer::start(&["--allowed-origins", "https://www.photonranch.org,http://localhost:5173"]).await;
    assert!(open(&s, "/dev?site=mrc", &[], Some("https://www.photonranch.org")).await.is_ok());
    assert!(open(&s, "/dev?site=mrc", &[], Some("http://localhost:5173")).await.is_ok());
    assert!(open(&s, "/dev?site=mrc", &[], None).await.is_ok(), "non-browser clients send no Origin");
    assert_eq!(open(&s, "/dev?site=mrc", &[], Some("https://evil.example")).await.err(), Some(403));
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, r#"datastream_connections_refused_total{reason="origin"}"#), 1.0);
}

#[tokio::test]
async fn connection_limits_total_and_per_address() {
    let s = TestServer::start(&["--max-connections", "3", "--max-connections-per-ip", "2"]).await;
    let a = open(&s, "/dev?site=mrc", &[], None).await.unwrap();
    let _b = open(&s, "/dev?site=mrc", &[], None).await.unwrap();
    assert_eq!(open(&s, "/dev?site=mrc", &[], None).await.err(), Some(429), "third from one address");
    drop(a);
    eventually("a's place released", || s.state.ip_limiter.count("127.0.0.1".parse().unwrap()) == 1).await;
    let _c = open(&s, "/dev?site=mrc", &[], None).await.unwrap();
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, r#"datastream_connections_refused_total{reason="per_ip"}"#), 1.0);

    let s = TestServer::start(&["--max-connections", "2", "--max-connections-per-ip", "0"]).await;
    let a = open(&s, "/dev?site=mrc", &[], None).await.unwrap();
    let _b = open(&s, "/dev?site=mrc", &[], None).await.unwrap();
    assert_eq!(open(&s, "/dev?site=mrc", &[], None).await.err(), Some(503));
    drop(a);
    eventually("a's session ended", || s.state.sessions.len() == 1).await;
    assert!(open(&s, "/dev?site=mrc", &[], None).await.is_ok());
}

#[tokio::test]
async fn a_client_that_sends_no_request_is_dropped_at_the_handshake_deadline() {
    let s = TestServer::start(&["--handshake-timeout", "300ms"]).await;
    let mut idle = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 256];
    // The server answers 408 or just closes; either way the socket ends.
    within(async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(3), "{waited:?}");
    // Half a request, then nothing: dropped too.
    let mut slow = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /dev?site=mrc HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let start = std::time::Instant::now();
    within(async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    // Others are served meanwhile.
    assert!(open(&s, "/dev?site=mrc", &[], None).await.is_ok());
}

#[tokio::test]
async fn flooding_control_frames_is_rate_limited() {
    let s = TestServer::start(&["--client-frame-rate", "1", "--client-frame-burst", "5"]).await;
    let mut ws = open(&s, "/dev", &["datastream.v2"], None).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    for _ in 0..8 {
        send_text(&mut ws, r#"{"type":"ping"}"#).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..8 {
        let f = next_json(&mut ws).await;
        match (f["type"].as_str(), f["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("{f}"),
        }
    }
    assert_eq!((pongs, limited), (5, 3));
}

#[tokio::test]
async fn a_configured_audience_and_issuer_are_required_not_only_checked() {
    let s =
        TestServer::start(&["--jwt-secret", SECRET, "--jwt-audience", "ptr", "--jwt-issuer", "https://auth.example"])
            .await;
    let exp = now_unix() + 600;
    let good = hs256_claims(&json!({"sites": ["*"], "exp": exp, "aud": "ptr", "iss": "https://auth.example"}));
    let no_aud = hs256_claims(&json!({"sites": ["*"], "exp": exp, "iss": "https://auth.example"}));
    let no_iss = hs256_claims(&json!({"sites": ["*"], "exp": exp, "aud": "ptr"}));
    let wrong_aud = hs256_claims(&json!({"sites": ["*"], "exp": exp, "aud": "x", "iss": "https://auth.example"}));
    assert!(open(&s, &format!("/dev?site=mrc&token={good}"), &[], None).await.is_ok());
    assert_eq!(latest_status(&s, "mrc", Some(&good)).await, 200);
    let mut ws = v2_with_token(&s, &good).await;
    assert_eq!(subscribe(&mut ws, "mrc").await["type"], "subscribed");
    for (token, reason) in [
        (&no_aud, "token lacks a required claim"),
        (&no_iss, "token lacks a required claim"),
        (&wrong_aud, "wrong audience"),
    ] {
        assert_eq!(open(&s, &format!("/dev?site=mrc&token={token}"), &[], None).await.err(), Some(401), "{reason}");
        assert_eq!(latest_status(&s, "mrc", Some(token)).await, 401, "{reason}");
        let mut ws = open(&s, "/dev", &["datastream.v2", &format!("datastream.token.{token}")], None).await.unwrap();
        let (code, got, _) = expect_close(&mut ws).await;
        assert_eq!((code, got.as_str()), (3501, reason));
    }
}

#[tokio::test]
async fn a_token_already_expired_at_the_handshake_is_refused_at_once() {
    let s = TestServer::start(&["--jwt-secret", SECRET]).await;
    // Expired two seconds ago: within the verifier's clock-skew leeway, which `exp` does not get.
    let just_expired = hs256(&["mrc"], -2);
    assert_eq!(open(&s, &format!("/dev?site=mrc&token={just_expired}"), &[], None).await.err(), Some(401));
    assert_eq!(latest_status(&s, "mrc", Some(&just_expired)).await, 401);
    let mut ws = open(&s, "/dev", &["datastream.v2", &format!("datastream.token.{just_expired}")], None).await.unwrap();
    // No hello first: the connection is refused, not accepted and then cut off.
    let (code, reason, frames) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str(), frames), (3002, "token expired", 0));
    // In-band: refreshing with it is refused and the connection keeps its grant.
    let mut ws = v2_with_token(&s, &hs256(&["mrc"], 600)).await;
    send_text(&mut ws, &json!({"type": "refresh", "id": 2, "token": just_expired}).to_string()).await;
    let refused = next_json(&mut ws).await;
    assert_eq!((refused["code"].as_str(), refused["message"].as_str()), (Some("invalid_token"), Some("token expired")));
    assert_eq!(subscribe(&mut ws, "mrc").await["type"], "subscribed");
}

#[tokio::test]
async fn anonymous_sites_are_open_without_a_token_next_to_token_holders() {
    let s = TestServer::start(&["--jwt-secret", SECRET, "--anonymous-sites", "mrc,sro"]).await;
    let saf_token = hs256(&["saf"], 600);

    // Legacy: an anonymous site without a token; another site needs one (401), and a token
    // for it opens it and keeps the anonymous ones open.
    let mut anon = open(&s, "/dev?site=mrc", &[], None).await.unwrap();
    assert_eq!(open(&s, "/dev?site=saf", &[], None).await.err(), Some(401));
    let mut saf = open(&s, &format!("/dev?site=saf&token={saf_token}"), &[], None).await.unwrap();
    assert!(open(&s, &format!("/dev?site=sro&token={saf_token}"), &[], None).await.is_ok());
    assert_eq!(open(&s, &format!("/dev?site=tst&token={saf_token}"), &[], None).await.err(), Some(403));
    // A token that is present but bad is refused, not taken for anonymity.
    assert_eq!(open(&s, "/dev?site=mrc&token=garbage", &[], None).await.err(), Some(401));

    // v2 without a token: accepted; the anonymous site subscribes, another is refused by name.
    let mut v2 = open(&s, "/dev?site=mrc&site=saf", &["datastream.v2"], None).await.unwrap();
    assert_eq!(next_json(&mut v2).await["type"], "hello");
    let mut greeting = vec![next_json(&mut v2).await, next_json(&mut v2).await];
    greeting.sort_by_key(|f| f["type"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        (greeting[0]["code"].as_str(), greeting[0]["site"].as_str()),
        (Some("forbidden"), Some("saf")),
        "{greeting:?}"
    );
    assert_eq!((greeting[1]["type"].as_str(), greeting[1]["site"].as_str()), (Some("subscribed"), Some("mrc")));
    let refused = subscribe(&mut v2, "tst").await;
    assert_eq!(
        (refused["code"].as_str(), refused["site"].as_str(), refused["id"].as_u64()),
        (Some("forbidden"), Some("tst"), Some(1))
    );
    assert_eq!(subscribe(&mut v2, "sro").await["type"], "subscribed");
    let mut bad = open(&s, "/dev", &["datastream.v2", "datastream.token.garbage"], None).await.unwrap();
    assert_eq!(expect_close(&mut bad).await.0, 3501);

    // Publications reach each as granted.
    s.publish(&json!([{"site": "mrc", "topic": "t", "data": 1}, {"site": "saf", "topic": "t", "data": 2}])).await;
    assert_eq!(next_json(&mut anon).await["data"], 1);
    assert_eq!(next_json(&mut saf).await["data"], 2);
    let f = next_json(&mut v2).await;
    assert_eq!((f["site"].as_str(), f["data"].as_u64()), (Some("mrc"), Some(1)));

    // Latest values over HTTP follow the same rule.
    assert_eq!(latest_status(&s, "mrc", None).await, 200);
    assert_eq!(latest_status(&s, "saf", None).await, 401);
    assert_eq!(latest_status(&s, "saf", Some(&saf_token)).await, 200);
    assert_eq!(latest_status(&s, "mrc", Some(&saf_token)).await, 200);
    assert_eq!(latest_status(&s, "tst", Some(&saf_token)).await, 403);
}
