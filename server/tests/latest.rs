//! The latest publication of each topic: v2 `subscribe` with `latest` (marking, order, topic
//! filters, with `recover` and `rewind`, under concurrent publishing, bad values),
//! `GET /sites/<site>/latest` (filters, errors, auth, CORS), nodes on one Redis (one started
//! after the publication), and `datastream tail --latest`.

#![allow(clippy::unwrap_used)]

mod common;

use std::{collections::VecDeque, sync::Arc, time::Duration};

use common::{procs::*, *};
use datastream::auth::now_unix;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "0123456789abcdef0123456789abcdef-latest";

/// A v2 connection, read frame by frame (the relay packs several in one text frame under load).
struct Conn {
    ws: Ws,
    pending: VecDeque<Value>,
}

impl Conn {
    /// The next frame other than a ping.
    async fn next(&mut self) -> Value {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return f;
            }
            let text = next_text(&mut self.ws).await;
            let frames = text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap());
            self.pending.extend(frames.filter(|f| f["type"] != "ping"));
        }
    }

    async fn send(&mut self, v: Value) {
        send_text(&mut self.ws, &v.to_string()).await;
    }

    async fn silence(&mut self, dur: Duration) {
        assert!(self.pending.is_empty(), "{:?}", self.pending);
        expect_silence(&mut self.ws, dur).await;
    }
}

async fn v2_at(ws_url: &str) -> Conn {
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().unwrap());
    let (ws, _) = within(tokio_tungstenite::connect_async(req)).await.unwrap();
    let mut conn = Conn { ws, pending: VecDeque::new() };
    assert_eq!(conn.next().await["type"], "hello");
    conn
}

async fn v2(s: &TestServer) -> Conn {
    v2_at(&s.ws_url("/dev")).await
}

/// Sends a subscribe with `fields`; returns the ack and the frames it announces (latest, then
/// replayed), as JSON.
async fn subscribe(ws: &mut Conn, fields: Value) -> (Value, Vec<Value>) {
    let mut req = json!({"type": "subscribe"});
    req.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    ws.send(req).await;
    let ack = ws.next().await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    let count = ack["latest"].as_u64().unwrap_or(0) + ack["replayed"].as_u64().unwrap();
    let mut frames = Vec::new();
    while (frames.len() as u64) < count {
        let f = ws.next().await;
        assert_eq!(f["type"], "pub", "{f}");
        frames.push(f);
    }
    (ack, frames)
}

/// `(topic, offset, latest?)` of each frame.
fn summary(frames: &[Value]) -> Vec<(String, u64, bool)> {
    frames
        .iter()
        .map(|f| (f["topic"].as_str().unwrap().to_owned(), f["offset"].as_u64().unwrap(), f["latest"] == true))
        .collect()
}

fn row(topic: &str, offset: u64, latest: bool) -> (String, u64, bool) {
    (topic.to_owned(), offset, latest)
}

async fn publish(s: &TestServer, site: &str, topic: &str, data: Value) {
    let (status, body) = s.publish(&json!({"site": site, "topic": topic, "data": data})).await;
    assert_eq!(status, 202, "{body}");
}

/// A quiet topic published once, a busy one 500 times after it (far past the history's 100):
/// a subscriber arriving afterwards gets both at once, marked, oldest first, then live.
#[tokio::test]
async fn a_latest_subscribe_gets_every_topics_latest_first_then_live() {
    let s = TestServer::start(&[]).await;
    publish(&s, "mrc", "phase", json!({"phase": "open"})).await;
    let batch: Vec<Value> = (1..=500).map(|n| json!({"site": "mrc", "topic": "weather", "data": {"n": n}})).collect();
    assert_eq!(s.publish(&json!(batch)).await.0, 202);
    publish(&s, "saf", "phase", json!("other site")).await;

    let mut ws = v2(&s).await;
    let (ack, frames) = subscribe(&mut ws, json!({"id": 1, "site": "mrc", "latest": true})).await;
    assert_eq!(
        (ack["offset"].as_u64(), ack["latest"].as_u64(), ack["replayed"].as_u64()),
        (Some(501), Some(2), Some(0))
    );
    assert_eq!(summary(&frames), vec![row("phase", 1, true), row("weather", 501, true)]);
    assert_eq!(frames[0]["data"], json!({"phase": "open"}));
    assert_eq!(frames[1]["data"], json!({"n": 500}));
    assert_eq!(frames[0]["epoch"], ack["epoch"]);

    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, r#"datastream_latest_sent_total{via="subscribe"}"#), 2.0, "{metrics}");
    publish(&s, "mrc", "weather", json!({"n": 501})).await;
    let live = ws.next().await;
    assert_eq!((live["offset"].as_u64(), live.get("latest")), (Some(502), None), "live, unmarked: {live}");
    ws.silence(Duration::from_millis(200)).await;

    // Without `latest`, nothing of the kind (and no `latest` count in the ack).
    let mut plain = v2(&s).await;
    let (ack, frames) = subscribe(&mut plain, json!({"site": "mrc"})).await;
    assert!(ack.get("latest").is_none() && frames.is_empty(), "{ack}");
    // A topic filter narrows it.
    let (ack, frames) = subscribe(&mut plain, json!({"site": "mrc", "topics": ["phase"], "latest": true})).await;
    assert_eq!(ack["latest"], 1);
    assert_eq!(summary(&frames), vec![row("phase", 1, true)]);
    // A site never published: an empty answer.
    let (ack, frames) = subscribe(&mut plain, json!({"site": "nobody", "latest": true})).await;
    assert_eq!((ack["latest"].as_u64(), frames.len()), (Some(0), 0));
}

/// With `recover`, `true` sends only what the client has not seen; a list names topics the client
/// lacks whatever its position; what the replay carries is not sent twice.
#[tokio::test]
async fn latest_with_recover_sends_what_the_client_has_not_seen() {
    let s = TestServer::start(&["--history-size", "5"]).await;
    publish(&s, "mrc", "phase", json!(1)).await;
    publish(&s, "mrc", "weather", json!(2)).await;
    publish(&s, "mrc", "weather", json!(3)).await;
    let mut ws = v2(&s).await;
    let (ack, frames) = subscribe(&mut ws, json!({"site": "mrc", "latest": true})).await;
    assert_eq!(summary(&frames), vec![row("phase", 1, true), row("weather", 3, true)]);
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    drop(ws);

    // Away for longer than the history holds: no replay, so the latest values after the
    // position come instead; phase (offset 1) was seen.
    for n in 4..=20 {
        publish(&s, "mrc", "weather", json!(n)).await;
    }
    publish(&s, "mrc", "dome", json!(21)).await;
    let mut ws = v2(&s).await;
    let recover = json!({"epoch": epoch, "offset": 3});
    let (ack, frames) = subscribe(&mut ws, json!({"site": "mrc", "recover": recover, "latest": true})).await;
    assert_eq!((ack["recovered"].as_bool(), ack["latest"].as_u64()), (Some(false), Some(2)));
    assert_eq!(summary(&frames), vec![row("weather", 20, true), row("dome", 21, true)]);

    // A gap the history holds is replayed, and nothing more is sent as latest.
    publish(&s, "mrc", "focus", json!(22)).await;
    assert_eq!(ws.next().await["offset"], 22);
    drop(ws);
    publish(&s, "mrc", "weather", json!(23)).await;
    let mut ws = v2(&s).await;
    let recover = json!({"epoch": epoch, "offset": 21});
    let (ack, frames) = subscribe(&mut ws, json!({"site": "mrc", "recover": recover, "latest": true})).await;
    assert_eq!(
        (ack["recovered"].as_bool(), ack["latest"].as_u64(), ack["replayed"].as_u64()),
        (Some(true), Some(0), Some(2))
    );
    assert_eq!(summary(&frames), vec![row("focus", 22, false), row("weather", 23, false)]);

    // A topic the client lacks (it just added it), whatever its position.
    let recover = json!({"epoch": epoch, "offset": 23});
    let fields =
        json!({"site": "mrc", "topics": ["weather", "phase"], "recover": recover, "latest": ["phase", "dome"]});
    let (ack, frames) = subscribe(&mut ws, fields).await;
    assert_eq!((ack["recovered"].as_bool(), ack["latest"].as_u64()), (Some(true), Some(1)), "dome is not subscribed");
    assert_eq!(summary(&frames), vec![row("phase", 1, true)]);
    let fields = json!({"site": "mrc", "topics": ["weather"], "recover": recover, "latest": ["dome"]});
    let (ack, frames) = subscribe(&mut ws, fields).await;
    assert_eq!((ack["latest"].as_u64(), frames.len()), (Some(0), 0), "asked, none subscribed: {ack}");

    // Another epoch: everything is unseen.
    let recover = json!({"epoch": "0000", "offset": 23});
    let (ack, frames) = subscribe(&mut ws, json!({"site": "mrc", "recover": recover, "latest": true})).await;
    assert_eq!(ack["recovered"], false);
    let topics: Vec<_> = summary(&frames).into_iter().map(|(t, o, _)| (t, o)).collect();
    assert_eq!(topics, vec![("phase".into(), 1), ("dome".into(), 21), ("focus".into(), 22), ("weather".into(), 23)]);
}

/// With `rewind`, a topic whose latest is rewound comes once, as a rewound publication; the
/// latest of the others come first, so offsets only grow.
#[tokio::test]
async fn latest_with_rewind_sends_nothing_twice() {
    let s = TestServer::start(&[]).await;
    for (topic, n) in [("a", 1), ("b", 2), ("c", 3), ("b", 4)] {
        publish(&s, "mrc", topic, json!(n)).await;
    }
    let mut ws = v2(&s).await;
    let (ack, frames) = subscribe(&mut ws, json!({"site": "mrc", "rewind": 2, "latest": true})).await;
    assert_eq!((ack["latest"].as_u64(), ack["replayed"].as_u64()), (Some(1), Some(2)));
    assert_eq!(summary(&frames), vec![row("a", 1, true), row("c", 3, false), row("b", 4, false)]);
}

/// Subscribing with `latest` while the site is being published to: every latest value predates
/// the ack's position, and live publications follow it with no gap and no repeat (memory and
/// Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_while_publishing_loses_and_repeats_nothing() {
    latest_while_publishing(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_while_publishing_loses_and_repeats_nothing_with_redis() {
    let redis = RedisServer::start();
    latest_while_publishing(&["--redis-url", &redis.url()]).await;
}

async fn latest_while_publishing(extra: &[&str]) {
    const TOTAL: u64 = 600;
    let mut args = vec!["--client-frame-rate", "1000", "--client-frame-burst", "1000"];
    args.extend_from_slice(extra);
    let s = Arc::new(TestServer::start(&args).await);
    publish(&s, "mrc", "phase", json!(0)).await;
    let publisher = {
        let s = s.clone();
        tokio::spawn(async move {
            for r in 0..TOTAL / 10 {
                let body: Vec<Value> = (0..10)
                    .map(|i| json!({"site": "mrc", "topic": format!("t{}", i % 3), "data": r * 10 + i}))
                    .collect();
                assert_eq!(s.publish(&json!(body)).await.0, 202);
            }
        })
    };
    let mut subscribers = 0;
    while !publisher.is_finished() || subscribers == 0 {
        subscribers += 1;
        let mut ws = v2(&s).await;
        let (ack, frames) = subscribe(&mut ws, json!({"site": "mrc", "latest": true})).await;
        let top = ack["offset"].as_u64().unwrap();
        let offsets: Vec<u64> = frames.iter().map(|f| f["offset"].as_u64().unwrap()).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "oldest first: {offsets:?}");
        assert!(offsets.iter().all(|&o| o <= top), "latest predates the position: {offsets:?} > {top}");
        assert_eq!(offsets.first(), Some(&1), "phase, published first, is there: {offsets:?}");
        assert!(frames.iter().all(|f| f["latest"] == true));
        if top > 1 {
            assert_eq!(offsets.last(), Some(&top), "the newest publication is some topic's latest");
        }
        // Live from top + 1 on, consecutive, until the publisher is done.
        let mut next = top + 1;
        while next <= TOTAL + 1 && next < top + 40 {
            let f = ws.next().await;
            assert_eq!((f["offset"].as_u64(), f.get("latest")), (Some(next), None), "{f}");
            next += 1;
        }
    }
    within(publisher).await.unwrap();
    assert!(subscribers >= 2, "subscribed {subscribers} times while publishing");
}

/// A bad `latest` is a typed error; the connection carries on.
#[tokio::test]
async fn a_bad_latest_is_refused_and_the_connection_stays() {
    let s = TestServer::start(&["--max-topics", "2"]).await;
    let mut ws = v2(&s).await;
    for (latest, code) in [
        (json!("yes"), "invalid_frame"),
        (json!(null), "invalid_frame"),
        (json!([1]), "invalid_frame"),
        (json!(["a b"]), "invalid_topic"),
        (json!(["a", "b", "c"]), "too_many_topics"),
    ] {
        let req = json!({"type": "subscribe", "id": 5, "site": "mrc", "latest": latest});
        ws.send(req).await;
        let e = ws.next().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["id"].as_u64()),
            (Some("error"), Some(code), Some(5)),
            "{latest}: {e}"
        );
    }
    let (ack, _) = subscribe(&mut ws, json!({"site": "mrc", "latest": ["a", "a", "b"]})).await;
    assert_eq!(ack["latest"], 0);
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = within(req.send()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn get_latest_answers_json_with_filters_and_clear_errors() {
    let s = TestServer::start(&["--max-topics", "3"]).await;
    let phase = r#"{"site": "mrc", "topic": "phase", "data": {"phase": "open", "x": 1.50}}"#;
    assert_eq!(publish_raw(&s.url("/publish"), phase.into(), None).await.0, 202);
    for n in 1..=3 {
        publish(&s, "mrc", "weather", json!(n)).await;
    }
    let (status, headers, body) = get(&s.url("/sites/mrc/latest"), &[]).await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, r#"datastream_latest_sent_total{via="http"}"#), 2.0);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");
    let epoch = body["epoch"].as_str().unwrap();
    assert!(!epoch.is_empty());
    assert_eq!(
        body,
        json!({"site": "mrc", "epoch": epoch, "offset": 4, "latest": [
            {"topic": "phase", "offset": 1, "data": {"phase": "open", "x": 1.50}},
            {"topic": "weather", "offset": 4, "data": 3},
        ]})
    );
    let (_, _, raw) = get(&s.url("/sites/mrc/latest?topic=phase"), &[]).await;
    assert_eq!(raw["latest"], json!([{"topic": "phase", "offset": 1, "data": {"phase": "open", "x": 1.50}}]));
    let (_, _, both) = get(&s.url("/sites/mrc/latest?topic=weather&topic=phase&topic=nothing"), &[]).await;
    assert_eq!(both["latest"].as_array().unwrap().len(), 2);
    // The data is passed through verbatim.
    let (_, text) = get_text(&s.url("/sites/mrc/latest?topic=phase")).await;
    assert!(text.contains(r#""data":{"phase": "open", "x": 1.50}"#), "{text}");

    let (status, _, body) = get(&s.url("/sites/nobody/latest"), &[]).await;
    assert_eq!((status, body["offset"].as_u64(), body["latest"].clone()), (200, Some(0), json!([])));
    let (status, _, body) = get(&s.url("/sites/a%20b/latest"), &[]).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().starts_with("invalid site"), "{body}");
    let (status, _, body) = get(&s.url("/sites/mrc/latest?topic=a%20b"), &[]).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().starts_with("invalid topic"), "{body}");
    let (status, _, body) = get(&s.url("/sites/mrc/latest?topic=a&topic=b&topic=c&topic=d"), &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("at most 3 topics")));
    let (status, _, _) = get(&s.url("/sites/mrc/latest/more"), &[]).await;
    assert_eq!(status, 404);
    let resp = within(reqwest::Client::new().post(s.url("/sites/mrc/latest")).send()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    // Reading random sites leaves nothing behind.
    for n in 0..50 {
        get(&s.url(&format!("/sites/random{n}/latest")), &[]).await;
    }
    let datastream::broker::Broker::Memory(m) = &s.state.broker else { unreachable!() };
    assert_eq!(m.site_count(), 1);
}

fn token(sites: &[&str]) -> String {
    let claims = json!({"sites": sites, "exp": now_unix() as i64 + 600});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

#[tokio::test]
async fn get_latest_needs_a_token_granting_the_site_when_auth_is_on() {
    let s = TestServer::start(&["--jwt-secret", SECRET]).await;
    publish(&s, "mrc", "phase", json!("open")).await;
    let url = s.url("/sites/mrc/latest");
    let (status, headers, body) = get(&url, &[]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("a token is required")));
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = get(&url, &[("authorization", "Bearer nonsense")]).await;
    assert_eq!(status, 401);
    let other = token(&["saf"]);
    let (status, _, body) = get(&url, &[("authorization", &format!("Bearer {other}"))]).await;
    assert_eq!(status, 403, "{body}");
    let mine = token(&["mrc"]);
    let (status, _, body) = get(&url, &[("authorization", &format!("Bearer {mine}"))]).await;
    assert_eq!((status, body["latest"][0]["data"].as_str()), (200, Some("open")));
    let (status, _, _) = get(&format!("{url}?token={mine}"), &[]).await;
    assert_eq!(status, 200, "or in the query, as for sockets");
}

#[tokio::test]
async fn get_latest_answers_cors_for_the_allowed_origins() {
    let open = TestServer::start(&[]).await;
    let url = open.url("/sites/mrc/latest");
    let (status, headers, _) = get(&url, &[("origin", "https://anywhere.example")]).await;
    assert_eq!((status, headers["access-control-allow-origin"].to_str().unwrap()), (200, "*"));

    let s = TestServer::start(&["--allowed-origins", "https://www.photonranch.org"]).await;
    let url = s.url("/sites/mrc/latest");
    let allowed = ("origin", "https://www.photonranch.org");
    let (status, headers, _) = get(&url, &[allowed]).await;
    assert_eq!(
        (status, headers["access-control-allow-origin"].to_str().unwrap()),
        (200, "https://www.photonranch.org")
    );
    assert!(headers["vary"].to_str().unwrap().contains("origin"), "{headers:?}");
    let (status, headers, body) = get(&url, &[("origin", "https://evil.example")]).await;
    assert_eq!(status, 403, "{body}");
    assert!(headers.get("access-control-allow-origin").is_none());
    let (status, _, _) = get(&url, &[]).await;
    assert_eq!(status, 200, "scripts send no Origin");

    // The preflight of a GET carrying a token.
    let resp = within(
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", "https://www.photonranch.org")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://www.photonranch.org");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("GET"));
    assert!(h["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
}

/// Two relay processes on one Redis: the second starts after the publications and serves them
/// (socket and HTTP), as does the first after a restart.
#[tokio::test]
async fn a_node_started_after_the_publication_serves_it() {
    let redis = RedisServer::start();
    let env = [("DATASTREAM_REDIS_URL", redis.url()), ("DATASTREAM_DRAIN_WINDOW", "0s".into())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Relay::start(&env);
    let phase = json!({"site": "mrc", "topic": "phase", "data": {"phase": "open"}});
    assert_eq!(publish_raw(&a.url("/publish"), phase.to_string(), None).await.0, 202);
    let weather: Vec<Value> = (1..=200).map(|n| json!({"site": "mrc", "topic": "weather", "data": n})).collect();
    assert_eq!(publish_raw(&a.url("/publish"), json!(weather).to_string(), None).await.0, 202);
    drop(a);

    let b = Relay::start(&env);
    let mut ws = v2_at(&b.ws_url("/dev")).await;
    let (ack, frames) = subscribe(&mut ws, json!({"site": "mrc", "latest": true})).await;
    assert_eq!(ack["offset"], 201);
    assert_eq!(summary(&frames), vec![row("phase", 1, true), row("weather", 201, true)]);
    assert_eq!(frames[0]["data"], json!({"phase": "open"}));
    let (status, _, body) = get(&b.url("/sites/mrc/latest"), &[]).await;
    assert_eq!(
        (status, body["epoch"].clone(), body["latest"][1]["data"].clone()),
        (200, ack["epoch"].clone(), json!(200))
    );
}

#[tokio::test]
async fn tail_latest_prints_the_latest_values_first() {
    let s = TestServer::start(&[]).await;
    publish(&s, "mrc", "phase", json!("open")).await;
    for n in 1..=5 {
        publish(&s, "mrc", "weather", json!(n)).await;
    }
    let (mut tail, mut lines) = spawn_tail(&["--url", &s.ws_url("/dev"), "--site", "mrc", "--latest", "--count", "3"]);
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(serde_json::from_str::<Value>(&within(lines.recv()).await.unwrap()).unwrap());
    }
    assert_eq!(summary(&got), vec![row("phase", 1, true), row("weather", 6, true)]);
    publish(&s, "mrc", "weather", json!(6)).await;
    let live: Value = serde_json::from_str(&within(lines.recv()).await.unwrap()).unwrap();
    assert_eq!((live["offset"].as_u64(), live.get("latest")), (Some(7), None));
    assert_eq!(tail.wait_exit(Duration::from_secs(10)), Some(0));
}

fn fixture(name: &str) -> String {
    fixtures().into_iter().find(|(n, _)| n == name).unwrap().1.trim().to_owned()
}

/// The status service's real shape: weather, enclosure and device status are all `sitestatus`,
/// told apart by `data.statusType`. By default the relay keeps the latest of each, says so in its
/// hello, and a page opened after an enclosure change and 500 weather updates gets both.
#[tokio::test]
async fn sitestatus_keeps_the_latest_of_each_status_type() {
    let s = TestServer::start(&[]).await;
    let (enclosure, weather) = (fixture("sitestatus-enclosure.json"), fixture("sitestatus-weather.json"));
    let enclosure = enclosure.replace(r#""site": "mrc2""#, r#""site": "mrc""#);
    assert_eq!(publish_raw(&s.url("/publish"), enclosure.clone(), None).await.0, 202);
    let many = format!("[{}]", vec![weather.as_str(); 500].join(","));
    assert_eq!(publish_raw(&s.url("/publish"), many, None).await.0, 202);

    let mut req = s.ws_url("/dev").into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().unwrap());
    let (ws, _) = within(tokio_tungstenite::connect_async(req)).await.unwrap();
    let mut ws = Conn { ws, pending: VecDeque::new() };
    let hello = ws.next().await;
    assert_eq!(hello["latest_keys"], json!({"sitestatus": "statusType"}), "{hello}");
    let (ack, frames) = subscribe(&mut ws, json!({"site": "mrc", "topics": ["sitestatus"], "latest": true})).await;
    assert_eq!(ack["latest"], 2);
    assert_eq!(summary(&frames), vec![row("sitestatus", 1, true), row("sitestatus", 501, true)]);
    let sent: Value = serde_json::from_str(&enclosure).unwrap();
    assert_eq!(frames[0]["data"], sent["data"]);
    assert_eq!(frames[1]["data"]["statusType"], "weather");

    let (_, _, body) = get(&s.url("/sites/mrc/latest?topic=sitestatus"), &[]).await;
    let keys: Vec<_> =
        body["latest"].as_array().unwrap().iter().map(|e| (e["key"].clone(), e["offset"].clone())).collect();
    assert_eq!(keys, vec![(json!("enclosure"), json!(1)), (json!("weather"), json!(501))]);

    // Without the setting, one per topic: the weather replaced the enclosure.
    let plain = TestServer::start(&["--latest-keys", ""]).await;
    assert_eq!(publish_raw(&plain.url("/publish"), enclosure, None).await.0, 202);
    assert_eq!(publish_raw(&plain.url("/publish"), weather, None).await.0, 202);
    let (_, _, body) = get(&plain.url("/sites/mrc/latest"), &[]).await;
    assert_eq!(body["latest"].as_array().unwrap().len(), 1);
    assert!(body["latest"][0].get("key").is_none());
}

/// `DATASTREAM_LATEST_TOPICS=0` turns the feature off: nothing kept, nothing announced, and a
/// `latest` subscribe is answered with none.
#[tokio::test]
async fn latest_topics_zero_turns_it_off() {
    let s = TestServer::start(&["--latest-topics", "0"]).await;
    publish(&s, "mrc", "phase", json!("open")).await;
    let mut req = s.ws_url("/dev").into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().unwrap());
    let (ws, _) = within(tokio_tungstenite::connect_async(req)).await.unwrap();
    let mut ws = Conn { ws, pending: VecDeque::new() };
    let hello = ws.next().await;
    assert!(hello.get("latest_keys").is_none(), "{hello}");
    let (ack, frames) = subscribe(&mut ws, json!({"site": "mrc", "latest": true})).await;
    assert_eq!((ack["offset"].as_u64(), ack["latest"].as_u64(), frames.len()), (Some(1), Some(0), 0));
    let (status, _, body) = get(&s.url("/sites/mrc/latest"), &[]).await;
    assert_eq!((status, body["offset"].as_u64(), body["latest"].clone()), (200, Some(1), json!([])));
}
