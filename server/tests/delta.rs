//! Delta delivery (`docs/PROTOCOL.md`, "Deltas"): a subscription that asks for deltas receives,
//! once they are applied, exactly what a subscription that did not ask receives — across device
//! and weather statuses (keyed slots), topic filters and a filter change, a reconnect that
//! recovers, a relay restart (a new epoch), a new epoch on a live connection (Redis restarted
//! empty) and two nodes on one Redis. Clients that did not ask,
//! legacy ones included, get today's frames; small publications go in full; `--deltas off` sends
//! none.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::*;
use datastream_protocol::v2::data_text;
use datastream_statusgen::StatusStream;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A publication as a viewer ends up with it: offset and data text.
type Got = (u64, String);

/// A slot as a client sees it: site, topic and key.
type Slot = (String, String, Option<String>);

/// What a client holds of a slot: epoch, offset and data text of its last publication.
type Held = (String, u64, String);

/// A v2 client that applies deltas as the protocol says: it keeps the data text of the last
/// publication of each slot it received (full or rebuilt) and applies a delta only to the one at
/// offset `base` in the same epoch.
struct Viewer {
    ws: Ws,
    hello: Value,
    /// Per slot, the last publication received.
    held: HashMap<Slot, Held>,
    /// What was delivered, per site, in order.
    got: Vec<Got>,
    /// Every publication line received, as sent.
    lines: Vec<String>,
    deltas: usize,
    bytes: usize,
}

async fn viewer(url: &str) -> Viewer {
    let mut req = format!("{url}/dev").into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().unwrap());
    let (mut ws, _) = within(tokio_tungstenite::connect_async(req)).await.unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    Viewer { ws, hello, held: HashMap::new(), got: Vec::new(), lines: Vec::new(), deltas: 0, bytes: 0 }
}

/// The slot key of a full publication's data, by the hello's `latest_keys` rule.
fn key_of(hello: &Value, topic: &str, data: &str) -> Option<String> {
    let field = hello["latest_keys"][topic].as_str()?;
    let data: Value = serde_json::from_str(data).ok()?;
    data[field].as_str().map(str::to_owned)
}

impl Viewer {
    /// Subscribes with `fields` (`site`, and `delta`, `topics`, `recover`…); returns the ack.
    async fn subscribe(&mut self, fields: Value) -> Value {
        let mut req = json!({"type": "subscribe"});
        req.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        send_text(&mut self.ws, &req.to_string()).await;
        let ack = next_json(&mut self.ws).await;
        assert_eq!(ack["type"], "subscribed", "{ack}");
        ack
    }

    /// Reads until `count` more publications were delivered.
    async fn read(&mut self, count: usize) {
        let want = self.got.len() + count;
        while self.got.len() < want {
            let text = next_text(&mut self.ws).await;
            for line in text.split('\n') {
                let f: Value = serde_json::from_str(line).unwrap();
                match f["type"].as_str() {
                    Some("pub") => self.take(line, &f),
                    Some("ping") => {}
                    _ => panic!("unexpected frame {line}"),
                }
            }
        }
    }

    fn take(&mut self, line: &str, f: &Value) {
        self.lines.push(line.to_owned());
        self.bytes += line.len();
        let (site, topic) = (f["site"].as_str().unwrap(), f["topic"].as_str().unwrap());
        let (epoch, offset) = (f["epoch"].as_str().unwrap(), f["offset"].as_u64().unwrap());
        let (key, text) = match f.get("delta") {
            Some(delta) => {
                self.deltas += 1;
                assert!(f.get("data").is_none(), "a delta carries no data: {line}");
                let key = f["key"].as_str().map(str::to_owned);
                let slot = (site.to_owned(), topic.to_owned(), key.clone());
                let base = f["base"].as_u64().unwrap();
                let held = self.held.get(&slot);
                let Some((_, _, base_text)) = held.filter(|(e, o, _)| e == epoch && *o == base) else {
                    panic!("a delta against {base} that this connection does not hold ({held:?}): {line}");
                };
                let text = fossil_delta::apply(base_text.as_bytes(), delta.as_str().unwrap().as_bytes())
                    .expect("the delta applies");
                (key, String::from_utf8(text).unwrap())
            }
            None => {
                let text = data_text(line).unwrap_or_else(|| panic!("no data text in {line}")).to_owned();
                (key_of(&self.hello, topic, &text), text)
            }
        };
        self.held.insert((site.to_owned(), topic.to_owned(), key), (epoch.to_owned(), offset, text.clone()));
        self.got.push((offset, text));
    }

    /// The publications of `topic` received in full, by offset.
    fn full_offsets(&self, topic: &str) -> Vec<u64> {
        self.lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|f| f["topic"] == topic && f.get("data").is_some())
            .map(|f| f["offset"].as_u64().unwrap())
            .collect()
    }
}

/// Publishes `data` on `site`/`topic` through `url`'s `POST /publish`.
async fn publish(url: &str, site: &str, topic: &str, data: &str) {
    let body = format!(r#"{{"site":"{site}","topic":"{topic}","data":{data}}}"#);
    let (status, answer) = publish_raw(&format!("{url}/publish"), body, None).await;
    assert_eq!(status, 202, "{answer}");
}

/// A mixed stream: device statuses every time, a weather status every third, a small note every
/// fifth. Returns `(topic, data)` in publishing order.
struct Mix {
    device: StatusStream,
    weather: StatusStream,
    n: u64,
}

impl Mix {
    fn new(site: &str) -> Mix {
        Mix { device: StatusStream::device(site, 11), weather: StatusStream::weather(site, 11), n: 0 }
    }

    fn next(&mut self, count: usize) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        while out.len() < count {
            self.n += 1;
            out.push(match self.n % 5 {
                0 => ("note", format!(r#"{{"n":{}}}"#, self.n)),
                3 => ("sitestatus", self.weather.next_data()),
                _ => ("sitestatus", self.device.next_data()),
            });
        }
        out
    }
}

async fn publish_all(url: &str, site: &str, items: &[(&'static str, String)]) {
    for (topic, data) in items {
        publish(url, site, topic, data).await;
    }
}

fn texts<'a>(items: &'a [(&'static str, String)]) -> Vec<&'a str> {
    items.iter().map(|(_, d)| d.as_str()).collect()
}

fn got_texts(v: &Viewer) -> Vec<&str> {
    v.got.iter().map(|(_, t)| t.as_str()).collect()
}

#[tokio::test]
async fn a_delta_subscription_receives_what_a_full_one_does() {
    let s = TestServer::start(&[]).await;
    let url = s.ws_url("");
    let mut delta = viewer(&url).await;
    let mut full = viewer(&url).await;
    let mut unknown = viewer(&url).await;
    assert_eq!(delta.hello["deltas"], json!(["fossil"]));
    let ack = delta.subscribe(json!({"site": "mrc", "delta": "fossil"})).await;
    assert_eq!(ack["delta"], "fossil", "{ack}");
    let ack = full.subscribe(json!({"site": "mrc"})).await;
    assert!(ack.get("delta").is_none(), "{ack}");
    let ack = unknown.subscribe(json!({"site": "mrc", "delta": "vcdiff"})).await;
    assert!(ack.get("delta").is_none(), "an encoding the relay does not offer is not granted: {ack}");
    let mut legacy = s.legacy("mrc").await;

    let mut mix = Mix::new("mrc");
    let items = mix.next(40);
    publish_all(&s.url(""), "mrc", &items).await;
    for v in [&mut delta, &mut full, &mut unknown] {
        v.read(items.len()).await;
        assert_eq!(got_texts(v), texts(&items), "every publication, exactly as published, in order");
    }
    assert_eq!(delta.got, full.got);
    assert_eq!((full.deltas, unknown.deltas), (0, 0), "a client that did not ask never gets a delta");
    // The first device and weather statuses are full (nothing to apply them to), and so is every
    // small note; the other statuses (22 device, 7 weather) come as deltas.
    assert_eq!(
        delta.deltas,
        40 - 2 - 8,
        "{:?}",
        delta.lines.iter().map(|l| l.chars().take(100).collect::<String>()).collect::<Vec<_>>()
    );
    assert_eq!(delta.full_offsets("note").len(), 8, "small publications go in full");
    assert!(delta.bytes * 5 < full.bytes, "{} bytes against {}", delta.bytes, full.bytes);
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, "datastream_deltas_computed_total"), 30.0, "once per publication, not per viewer");

    // Full frames are today's, byte for byte, for everyone (legacy clients included).
    let epoch = ack["epoch"].as_str().unwrap();
    for (line, (offset, (topic, data))) in full.lines.iter().zip((1u64..).zip(&items)) {
        let today = format!(
            r#"{{"type":"pub","site":"mrc","topic":"{topic}","epoch":"{epoch}","offset":{offset},"data":{data}}}"#
        );
        assert_eq!(line, &today);
    }
    assert_eq!(unknown.lines, full.lines);
    for (topic, data) in &items {
        assert_eq!(next_text(&mut legacy).await, format!(r#"{{"site":"mrc","topic":"{topic}","data":{data}}}"#));
    }
    // A delta names its slot and base and carries the delta last.
    let d: Value = delta
        .lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|f| f.get("delta").is_some())
        .unwrap();
    assert_eq!(d["key"], "device", "{d}");
    assert_eq!(d["base"], 1, "{d}");
}

#[tokio::test]
async fn topic_filters_and_a_filter_change_restart_from_full() {
    let s = TestServer::start(&[]).await;
    let url = s.ws_url("");
    let (mut delta, mut full) = (viewer(&url).await, viewer(&url).await);
    delta.subscribe(json!({"site": "mrc", "delta": "fossil", "topics": ["sitestatus"]})).await;
    full.subscribe(json!({"site": "mrc", "topics": ["sitestatus"]})).await;
    let mut mix = Mix::new("mrc");
    let first = mix.next(20);
    publish_all(&s.url(""), "mrc", &first).await;
    let statuses = first.iter().filter(|(t, _)| *t == "sitestatus").count();
    delta.read(statuses).await;
    full.read(statuses).await;
    assert_eq!(delta.got, full.got);
    assert_eq!(delta.deltas, statuses - 2);

    // A filter change is a new subscription: the first publication of each slot after it is full,
    // even though the connection holds the previous one.
    let before = delta.lines.len();
    delta.subscribe(json!({"site": "mrc", "delta": "fossil", "topics": ["sitestatus", "note"]})).await;
    full.subscribe(json!({"site": "mrc", "topics": ["sitestatus", "note"]})).await;
    let second = mix.next(20);
    publish_all(&s.url(""), "mrc", &second).await;
    delta.read(second.len()).await;
    full.read(second.len()).await;
    assert_eq!(delta.got, full.got);
    assert_eq!(got_texts(&delta)[statuses..], texts(&second)[..]);
    let after: Vec<Value> = delta.lines[before..].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    for kind in ["device", "weather"] {
        let f = after.iter().find(|f| status_type(f) == Some(kind)).unwrap();
        assert!(f.get("data").is_some(), "the first {kind} status after the change is full: {f}");
    }
    assert_eq!(delta.deltas, statuses - 2 + (second.len() - 4 - 2), "then deltas again");
}

/// A status frame's kind: a delta's key, or the full data's `statusType`.
fn status_type(f: &Value) -> Option<&str> {
    f["key"].as_str().or_else(|| f["data"]["statusType"].as_str())
}

/// A delta viewer of mrc on `s` that received ten statuses: it, its epoch and last offset, and
/// the mix that goes on from there.
async fn saw_ten(s: &TestServer) -> (Viewer, String, u64, Mix) {
    let mut delta = viewer(&s.ws_url("")).await;
    let ack = delta.subscribe(json!({"site": "mrc", "delta": "fossil"})).await;
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    let mut mix = Mix::new("mrc");
    let first = mix.next(10);
    publish_all(&s.url(""), "mrc", &first).await;
    delta.read(first.len()).await;
    assert!(delta.deltas > 0);
    let last = delta.got.last().unwrap().0;
    (delta, epoch, last, mix)
}

#[tokio::test]
async fn a_recovery_is_sent_in_full_and_deltas_follow_it() {
    let s = TestServer::start(&[]).await;
    let url = s.ws_url("");
    let (delta, epoch, last, mut mix) = saw_ten(&s).await;
    drop(delta);

    // Missed while away; then back, on a new connection that holds nothing of this one's.
    let missed = mix.next(10);
    publish_all(&s.url(""), "mrc", &missed).await;
    let mut back = viewer(&url).await;
    let ack =
        back.subscribe(json!({"site": "mrc", "delta": "fossil", "recover": {"epoch": epoch, "offset": last}})).await;
    assert_eq!((ack["recovered"].as_bool(), ack["replayed"].as_u64()), (Some(true), Some(10)), "{ack}");
    back.read(missed.len()).await;
    assert_eq!(back.deltas, 0, "a replay is sent in full");
    let live = mix.next(10);
    publish_all(&s.url(""), "mrc", &live).await;
    back.read(live.len()).await;
    assert_eq!(got_texts(&back), [texts(&missed), texts(&live)].concat());
    assert_eq!(back.deltas, 8, "the replayed statuses are the bases of the next ones");
}

#[tokio::test]
async fn a_restart_begins_a_new_epoch_in_full() {
    let s = TestServer::start(&["--drain-window", "0s"]).await;
    let (delta, epoch, last, mut mix) = saw_ten(&s).await;
    let Viewer { ws, held, .. } = delta;
    drop(ws);
    s.shutdown().await.unwrap();

    // Same client state (it keeps what it held); a new relay, whose offsets start again at 1.
    let s = TestServer::start(&[]).await;
    let mut again = viewer(&s.ws_url("")).await;
    again.held = held;
    let ack =
        again.subscribe(json!({"site": "mrc", "delta": "fossil", "recover": {"epoch": epoch, "offset": last}})).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(ack["epoch"].as_str(), Some(epoch.as_str()));
    let next = mix.next(10);
    publish_all(&s.url(""), "mrc", &next).await;
    again.read(next.len()).await;
    assert_eq!(got_texts(&again), texts(&next));
    assert_eq!(again.full_offsets("sitestatus")[..2], [1, 3], "each slot starts full in the new epoch");
    assert_eq!(again.deltas, 10 - 2 - 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_redis_each_send_exact_deltas() {
    let redis = common::procs::RedisServer::start();
    let a = TestServer::start(&["--redis-url", &redis.url()]).await;
    let b = TestServer::start(&["--redis-url", &redis.url()]).await;
    let mut on_a = viewer(&a.ws_url("")).await;
    let mut on_b = viewer(&b.ws_url("")).await;
    let mut full_b = viewer(&b.ws_url("")).await;
    on_a.subscribe(json!({"site": "mrc", "delta": "fossil"})).await;
    on_b.subscribe(json!({"site": "mrc", "delta": "fossil"})).await;
    full_b.subscribe(json!({"site": "mrc"})).await;
    let mut mix = Mix::new("mrc");
    let items = mix.next(30);
    for (i, (topic, data)) in items.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        publish(&node.url(""), "mrc", topic, data).await;
    }
    for v in [&mut on_a, &mut on_b, &mut full_b] {
        v.read(items.len()).await;
        assert_eq!(got_texts(v), texts(&items));
    }
    assert_eq!(on_a.got, full_b.got);
    assert_eq!((on_a.deltas, on_b.deltas), (30 - 2 - 6, 30 - 2 - 6), "both nodes find the same bases");
    // Every node computes the same delta from the same two publications.
    assert_eq!(on_a.lines, on_b.lines);

    // A replay read back from Redis is keyed like the live stream: its statuses are the bases of
    // the next ones.
    let mut late = viewer(&b.ws_url("")).await;
    let ack = late.subscribe(json!({"site": "mrc", "delta": "fossil", "rewind": 5})).await;
    assert_eq!(ack["replayed"], 5, "{ack}");
    late.read(5).await;
    let more = mix.next(10);
    for (topic, data) in &more {
        publish(&a.url(""), "mrc", topic, data).await;
    }
    late.read(more.len()).await;
    assert_eq!(got_texts(&late), [&texts(&items)[25..], &texts(&more)[..]].concat());
    assert_eq!(late.deltas, 8, "every status after the replay");
}

#[tokio::test]
async fn deltas_off_sends_none() {
    let s = TestServer::start(&["--deltas", "off"]).await;
    let mut v = viewer(&s.ws_url("")).await;
    assert!(v.hello.get("deltas").is_none(), "{}", v.hello);
    let ack = v.subscribe(json!({"site": "mrc", "delta": "fossil"})).await;
    assert!(ack.get("delta").is_none(), "{ack}");
    let items = Mix::new("mrc").next(10);
    publish_all(&s.url(""), "mrc", &items).await;
    v.read(items.len()).await;
    assert_eq!(got_texts(&v), texts(&items));
    assert_eq!(v.deltas, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_on_a_live_connection_starts_each_slot_in_full() {
    let redis = common::procs::RedisServer::start();
    let s = TestServer::start(&["--redis-url", &redis.url()]).await;
    let mut v = viewer(&s.ws_url("")).await;
    let ack = v.subscribe(json!({"site": "mrc", "delta": "fossil"})).await;
    let mut mix = Mix::new("mrc");
    let first = mix.next(5);
    publish_all(&s.url(""), "mrc", &first).await;
    v.read(first.len()).await;
    assert_eq!(v.deltas, 2);

    // Redis comes back empty: the site's stream starts again at offset 1 in a new epoch, on the
    // same connection, which still holds the old epoch's statuses at those offsets.
    let port = redis.kill();
    let _redis = common::procs::RedisServer::start_on(port).expect("redis restarted");
    let mut ready = false;
    for _ in 0..200 {
        if get_text(&s.url("/readyz")).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready, "the node reconnects to Redis");
    let next = mix.next(10);
    publish_all(&s.url(""), "mrc", &next).await;
    v.read(next.len()).await;
    assert_eq!(got_texts(&v), [texts(&first), texts(&next)].concat());
    let epochs: Vec<String> =
        v.lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["epoch"].to_string()).collect();
    assert_ne!(epochs[5], json!(ack["epoch"]).to_string(), "a new epoch");
    assert_eq!(v.full_offsets("sitestatus"), [1, 3, 1, 3], "each slot starts full in the new epoch");
    assert_eq!(v.deltas, 2 + 6);
}
