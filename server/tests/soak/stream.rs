//! The well-behaved side of the soak: a publisher sending a numbered sequence per site through
//! `POST /publish` (single objects, arrays, and arrays of 100 KB messages), legacy and v2
//! subscribers that check they receive every number of their sites once and in order, and are
//! never closed, and a probe that publishes right after a legacy handshake.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::{Env, common::Ws};

/// The sites the publisher numbers; nothing else publishes to them.
pub const SITES: [&str; 4] = ["soak-a", "soak-b", "soak-c", "soak-d"];

/// Size of the padding of a large message: ten or fourteen of them make one body of 1–1.4 MB,
/// more than the default per-connection cap (1 MiB) in one batch.
pub const LARGE_PAD: usize = 100_000;

/// Every this many publisher steps, one body of large messages.
const LARGE_EVERY: u64 = 60;

/// Where every number of each site ends up once the publisher is done: `totals[i]` for `SITES[i]`.
pub type Totals = [u64; SITES.len()];

/// The JSON text of message `seq` to `site`; `pad` bytes of padding make it large.
fn message(site: usize, seq: u64, pad: usize) -> String {
    let site = SITES[site];
    if pad == 0 {
        format!(r#"{{"site":"{site}","topic":"soak","data":{{"seq":{seq}}}}}"#)
    } else {
        format!(r#"{{"site":"{site}","topic":"soak","data":{{"seq":{seq},"pad":"{}"}}}}"#, "x".repeat(pad))
    }
}

/// What the publisher did.
#[derive(Debug, Default)]
pub struct Published {
    /// Publications accepted per site; each site's numbers run 1..=total.
    pub totals: Totals,
    /// `POST /publish` requests answered 202.
    pub requests: u64,
    /// Of those, bodies of large messages.
    pub large_bodies: u64,
    /// Why it stopped early, if it did.
    pub failure: Option<String>,
}

/// Runs `steps` publish requests (bounded by `limit` in all), `pause` apart, drawn from `seed`:
/// mostly single objects, some arrays of 2–20 small messages over several sites, and every
/// [`LARGE_EVERY`] steps an array of 10 or 14 large messages to one site. A request that is not
/// answered `202` with every message accepted ends the run (and fails the soak).
pub async fn publish(url: String, token: &str, steps: u64, pause: Duration, limit: Duration, seed: u64) -> Published {
    let client = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Published::default();
    let started = Instant::now();
    for step in 0..steps {
        if started.elapsed() > limit {
            break;
        }
        let mut next = out.totals;
        let mut take = |site: usize| {
            next[site] += 1;
            next[site]
        };
        let large = step % LARGE_EVERY == LARGE_EVERY / 2;
        let (body, count) = if large {
            let site = rng.random_range(0..SITES.len());
            let n = if (step / LARGE_EVERY).is_multiple_of(2) { 14 } else { 10 };
            let items: Vec<String> = (0..n).map(|_| message(site, take(site), LARGE_PAD)).collect();
            (format!("[{}]", items.join(",")), n)
        } else if rng.random_bool(0.3) {
            let n = rng.random_range(2..=20);
            let items: Vec<String> = (0..n)
                .map(|_| {
                    let site = rng.random_range(0..SITES.len());
                    message(site, take(site), 0)
                })
                .collect();
            (format!("[{}]", items.join(",")), n)
        } else {
            let site = rng.random_range(0..SITES.len());
            (message(site, take(site), 0), 1)
        };
        let sent = client.post(&url).bearer_auth(token).header("content-type", "application/json").body(body).send();
        let answer = match tokio::time::timeout(Duration::from_secs(10), sent).await {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let accepted =
                    serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["accepted"].as_u64());
                if status == 202 && accepted == Some(count) {
                    Ok(())
                } else {
                    Err(format!("step {step}: {status} {text}"))
                }
            }
            Ok(Err(e)) => Err(format!("step {step}: {e}")),
            Err(_) => Err(format!("step {step}: no answer within 10 s")),
        };
        if let Err(e) = answer {
            out.failure = Some(e);
            break;
        }
        out.totals = next;
        out.requests += 1;
        out.large_bodies += u64::from(large);
        tokio::time::sleep(pause).await;
    }
    out
}

/// A well-behaved subscriber, connected and subscribed.
#[derive(Debug)]
pub struct Subscriber {
    /// `legacy-3`, `v2-7`: how failures name it.
    pub name: String,
    /// v2 frames are packed and carry positions; legacy frames are bare messages.
    pub v2: bool,
    /// Indexes into [`SITES`].
    pub sites: Vec<usize>,
    ws: Ws,
}

/// Bounds one handshake (and, for v2, its acks).
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Opens a legacy connection to `/dev?site=…`. Subscribed once the handshake is answered.
pub async fn legacy(addr: SocketAddr, n: usize, site: usize) -> Result<Subscriber, String> {
    let name = format!("legacy-{n}");
    let url = format!("ws://{addr}/dev?site={}", SITES[site]);
    let connected = tokio::time::timeout(CONNECT_LIMIT, tokio_tungstenite::connect_async(url)).await;
    let (ws, _) = connected.map_err(|_| format!("{name}: no handshake"))?.map_err(|e| format!("{name}: {e}"))?;
    Ok(Subscriber { name, v2: false, sites: vec![site], ws })
}

/// Opens a v2 connection with its sites in the URL; subscribed once `hello` and one `subscribed`
/// per site (at offset 0: nothing was published to them yet) came back.
pub async fn v2(addr: SocketAddr, n: usize, sites: Vec<usize>) -> Result<Subscriber, String> {
    let name = format!("v2-{n}");
    let query: Vec<String> = sites.iter().map(|&s| format!("site={}", SITES[s])).collect();
    let mut req = format!("ws://{addr}/dev?{}", query.join("&")).into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().map_err(|_| "header")?);
    let acks = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| e.to_string())?;
        let mut subscribed = 0;
        let mut hello = false;
        while subscribed < sites.len() {
            let text = match ws.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                other => return Err(format!("ended before its acks: {other:?}")),
            };
            for line in text.split('\n') {
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
                match v["type"].as_str() {
                    Some("hello") => hello = true,
                    Some("subscribed") if hello && v["offset"] == 0 => subscribed += 1,
                    Some("ping") => {}
                    _ => return Err(format!("unexpected frame before its acks: {line}")),
                }
            }
        }
        Ok(ws)
    };
    let ws = tokio::time::timeout(CONNECT_LIMIT, acks)
        .await
        .map_err(|_| format!("{name}: no acks"))?
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(Subscriber { name, v2: true, sites, ws })
}

/// What one subscriber saw.
#[derive(Debug)]
pub struct Received {
    pub name: String,
    /// Publications received (all sites).
    pub publications: u64,
    /// The first thing that went wrong: a gap, a repeat, a close, missing publications.
    pub failure: Option<String>,
}

/// `"key":"value"` in the head of a frame (values here have no escapes).
fn str_field<'a>(head: &'a str, key: &str) -> Option<&'a str> {
    let start = head.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = head[start..].find('"')?;
    Some(&head[start..start + len])
}

/// `"key":123` in the head of a frame.
fn u64_field(head: &str, key: &str) -> Option<u64> {
    let start = head.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits = head[start..].bytes().take_while(u8::is_ascii_digit).count();
    head[start..start + digits].parse().ok()
}

impl Subscriber {
    /// Reads promptly (answering v2 pings) until every publication of its sites arrived, each
    /// once and in order, or something went wrong. `totals` says, once the publisher is done, how
    /// many each site got; from then the rest must arrive within `finish`. Closes politely after.
    pub async fn read(mut self, mut totals: watch::Receiver<Option<Totals>>, finish: Duration) -> Received {
        let mut seen: Totals = [0; SITES.len()];
        let mut publications = 0u64;
        let mut expected: Option<Totals> = None;
        let mut deadline: Option<tokio::time::Instant> = None;
        let failure = loop {
            if let Some(t) = &expected
                && self.sites.iter().all(|&s| seen[s] == t[s])
            {
                break None;
            }
            let msg = tokio::select! {
                msg = self.ws.next() => msg,
                changed = totals.changed(), if expected.is_none() => {
                    expected = *totals.borrow_and_update();
                    if changed.is_err() && expected.is_none() {
                        break Some("publisher gone without totals".to_owned());
                    }
                    if expected.is_some() {
                        deadline = Some(tokio::time::Instant::now() + finish);
                    }
                    continue;
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    let t = expected.unwrap_or_default();
                    let missing: Vec<String> = self.sites.iter().filter(|&&s| seen[s] != t[s])
                        .map(|&s| format!("{} {} of {}", SITES[s], seen[s], t[s])).collect();
                    break Some(format!("missing publications after {finish:?}: {}", missing.join(", ")));
                }
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => break Some("binary frame from the relay".to_owned()),
                Some(Ok(Message::Close(frame))) => break Some(format!("closed by the relay: {frame:?}")),
                Some(Err(e)) => break Some(format!("connection failed: {e}")),
                None => break Some("connection ended".to_owned()),
            };
            let mut pong = false;
            let lines = if self.v2 { text.split('\n').collect() } else { vec![text.as_str()] };
            let mut bad = None;
            for line in lines {
                match self.check(line, &mut seen) {
                    Ok(Line::Publication) => publications += 1,
                    Ok(Line::Ping) => pong = true,
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                }
            }
            if bad.is_some() {
                break bad;
            }
            if pong && let Err(e) = self.ws.send(Message::text(r#"{"type":"pong"}"#)).await {
                break Some(format!("cannot answer a ping: {e}"));
            }
        };
        self.close().await;
        Received { name: self.name, publications, failure }
    }

    /// Leaves politely, waiting (briefly) for the relay's answer; whether it answers at all is a
    /// hostile client's check.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            let _ = self.ws.close(None).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Checks one publication (or v2 ping) against the numbers seen so far.
    fn check(&self, line: &str, seen: &mut Totals) -> Result<Line, String> {
        // Only the head is scanned: a large message's padding is not parsed.
        let head = line.get(..200).unwrap_or(line);
        if self.v2 {
            match str_field(head, "type") {
                Some("pub") => {}
                Some("ping") => return Ok(Line::Ping),
                _ => return Err(format!("unexpected frame: {head}")),
            }
        }
        let site = str_field(head, "site").and_then(|s| SITES.iter().position(|&x| x == s));
        let seq = u64_field(head, "seq");
        let (Some(site), Some(seq)) = (site, seq) else { return Err(format!("not a soak publication: {head}")) };
        if !self.sites.contains(&site) {
            return Err(format!("publication of a site not subscribed: {head}"));
        }
        if self.v2 && u64_field(head, "offset") != Some(seq) {
            return Err(format!("offset is not the site's publication number {seq}: {head}"));
        }
        let want = seen[site] + 1;
        if seq != want {
            let what = if seq < want { "repeated or out of order" } else { "gap" };
            return Err(format!("{what}: {} expected {want}, got {seq}", SITES[site]));
        }
        seen[site] = seq;
        Ok(Line::Publication)
    }
}

/// What a checked line was.
enum Line {
    Publication,
    Ping,
}

/// While the soak runs: open a legacy connection to a fresh site and publish to it as soon as the
/// handshake is answered. The publication must arrive: a legacy client is subscribed once its
/// handshake is answered (it has no other signal), however busy the relay is.
pub async fn publish_after_handshake(env: Arc<Env>) {
    const CHECK: &str = "legacy: a publication right after the handshake is delivered";
    let client = reqwest::Client::new();
    let mut n = 0u64;
    while !env.stop.is_cancelled() {
        n += 1;
        let site = format!("fresh-{n}");
        let result = async {
            let url = format!("ws://{}/dev?site={site}", env.addr);
            let (mut ws, _) = tokio::time::timeout(CONNECT_LIMIT, tokio_tungstenite::connect_async(url))
                .await
                .map_err(|_| "no handshake".to_owned())?
                .map_err(|e| e.to_string())?;
            let body = format!(r#"{{"site":"{site}","topic":"fresh","data":{n}}}"#);
            let sent = client.post(format!("http://{}/publish", env.addr)).bearer_auth(&env.token).body(body).send();
            match tokio::time::timeout(CONNECT_LIMIT, sent).await {
                Ok(Ok(resp)) if resp.status().as_u16() == 202 => {}
                other => return Err(format!("publish: {other:?}")),
            }
            let got = tokio::time::timeout(CONNECT_LIMIT, async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => return Ok(t),
                        Some(Ok(_)) => {}
                        other => return Err(format!("{other:?}")),
                    }
                }
            })
            .await
            .map_err(|_| "publication lost: nothing within 10 s".to_owned())??;
            let want = format!(r#"{{"site":"{site}","topic":"fresh","data":{n}}}"#);
            if got.as_str() == want { Ok(()) } else { Err(format!("expected {want}, got {got}")) }
        }
        .await;
        env.tally.record(CHECK, result);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
