//! Hostile clients that speak WebSocket: junk frames, oversized frames, subscription churn, huge
//! topic lists, readers that stall, and clients that send a Close frame. Each loops until the
//! soak's stop token (every round bounded) and records its outcome in the [`Tally`].
//!
//! [`Tally`]: crate::tally::Tally

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::{
    Message,
    client::IntoClientRequest,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

use crate::{Env, common::Ws, stream::SITES};

/// Bounds every wait for one answer from the relay.
const ANSWER: Duration = Duration::from_secs(10);

/// A frame larger than the relay's `DATASTREAM_MAX_CLIENT_FRAME_BYTES` (set to 64 KiB).
const OVERSIZED: usize = 64 * 1024 + 1024;

/// Topics in the huge subscribe: about 50 KB of JSON, under the frame limit, so only a limit on
/// topics (or none) decides what happens.
const HUGE_TOPICS: usize = 5_000;

/// What the next read brought.
enum Next {
    Frame(Message),
    /// The connection ended (end of stream or an error), with why.
    Ended(String),
    TimedOut,
}

async fn next(ws: &mut Ws, limit: Duration) -> Next {
    match timeout(limit, ws.next()).await {
        Ok(Some(Ok(msg))) => Next::Frame(msg),
        Ok(Some(Err(e))) => Next::Ended(e.to_string()),
        Ok(None) => Next::Ended("end of stream".to_owned()),
        Err(_) => Next::TimedOut,
    }
}

/// Opens a WebSocket to `/dev<query>`, v2 if asked (reading its `hello`).
async fn open(env: &Env, query: &str, v2: bool) -> Result<Ws, String> {
    env.opened();
    let mut req = format!("ws://{}/dev{query}", env.addr).into_client_request().map_err(|e| e.to_string())?;
    if v2 {
        req.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().map_err(|_| "header")?);
    }
    let (mut ws, _) = timeout(ANSWER, tokio_tungstenite::connect_async(req))
        .await
        .map_err(|_| format!("no handshake for {query}"))?
        .map_err(|e| format!("handshake for {query}: {e}"))?;
    if v2 {
        match next(&mut ws, ANSWER).await {
            Next::Frame(Message::Text(t)) if t.starts_with(r#"{"type":"hello""#) => {}
            _ => return Err("no hello".to_owned()),
        }
    }
    Ok(ws)
}

/// A v2 heartbeat. Hostile v2 clients do not answer it: they send often enough to be heard.
const PING: &str = r#"{"type":"ping"}"#;

/// The next text frame's lines, skipping control frames and v2 pings; `Err` with the close code
/// (or why it ended) if the connection closed instead.
async fn next_text(ws: &mut Ws) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + ANSWER;
    loop {
        match next(ws, deadline.saturating_duration_since(Instant::now())).await {
            Next::Frame(Message::Text(t)) => {
                let lines: Vec<String> = t.split('\n').filter(|l| *l != PING).map(str::to_owned).collect();
                if !lines.is_empty() {
                    return Ok(lines);
                }
            }
            Next::Frame(Message::Close(frame)) => {
                return Err(frame.map_or("close without a code".to_owned(), |f| format!("close {}", u16::from(f.code))));
            }
            Next::Frame(_) => {}
            Next::Ended(why) => return Err(why),
            Next::TimedOut => return Err("no answer".to_owned()),
        }
    }
}

/// Junk, each to be refused with an error frame: binary, not JSON, unknown types and actions,
/// missing fields, invalid names.
fn junk(v2: bool, rng: &mut StdRng) -> Message {
    let bad_site = ["a b", "bad/site", "", "ü", &"x".repeat(65)][rng.random_range(0..5)].to_owned();
    match rng.random_range(0..6) {
        0 => Message::binary(vec![0u8, 159, 146, 150]),
        1 => Message::text("not json {"),
        2 => Message::text(r#"{"type":"nope","action":"nope"}"#),
        3 => Message::text("[1,2,3]"),
        4 if v2 => Message::text(serde_json::json!({"type": "subscribe", "id": 7, "site": bad_site}).to_string()),
        4 => Message::text(serde_json::json!({"action": "updatesubscribersite", "site": bad_site}).to_string()),
        _ if v2 => Message::text(r#"{"type":"subscribe","id":8,"site":"ok","topics":["bad topic"]}"#),
        _ => Message::text(r#"{"action":"updatesubscribersite"}"#),
    }
}

/// Sends junk frames, one at a time: the first ten must each get an error frame, the eleventh a
/// close 3500 (docs/PROTOCOL.md, error frames). Then again on a new connection.
pub async fn junk_frames(env: Arc<Env>, v2: bool, seed: u64) {
    const CHECK: &str = "junk frames: 10 error frames, then close 3500";
    let mut rng = StdRng::seed_from_u64(seed);
    while !env.stop.is_cancelled() {
        let result = async {
            let mut ws = open(&env, if v2 { "" } else { "?site=junk-site" }, v2).await?;
            for i in 1..=11 {
                ws.send(junk(v2, &mut rng)).await.map_err(|e| format!("send {i}: {e}"))?;
                let answer = next_text(&mut ws).await;
                match (i, answer) {
                    (1..=10, Ok(lines)) if lines.iter().all(|l| l.contains(r#""type":"error""#)) => {}
                    (11, Err(close)) if close == "close 3500" => return Ok(()),
                    (i, other) => return Err(format!("junk frame {i}: {other:?}")),
                }
            }
            Err("still open after 11 junk frames".to_owned())
        }
        .await;
        env.tally.record(CHECK, result);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends one frame over the size limit (text or binary): the relay closes with 3502.
pub async fn oversized_frames(env: Arc<Env>, v2: bool) {
    const CHECK: &str = "oversized frame: close 3502";
    let mut round = 0u32;
    while !env.stop.is_cancelled() {
        round += 1;
        let result = async {
            let mut ws = open(&env, if v2 { "" } else { "?site=junk-site" }, v2).await?;
            let frame = if round.is_multiple_of(2) {
                Message::binary(vec![7u8; OVERSIZED])
            } else {
                Message::text("x".repeat(OVERSIZED))
            };
            // The relay may close before taking the whole frame; what counts is what it answers.
            let _ = ws.send(frame).await;
            loop {
                match next_text(&mut ws).await {
                    Ok(_) => {}
                    Err(close) if close == "close 3502" => return Ok(()),
                    Err(other) => return Err(other),
                }
            }
        }
        .await;
        env.tally.record(CHECK, result);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A site for churn: mostly random names nobody publishes to, sometimes a busy soak site.
fn churn_site(rng: &mut StdRng) -> String {
    if rng.random_bool(0.3) {
        SITES[rng.random_range(0..SITES.len())].to_owned()
    } else {
        format!("churn-{}", rng.random_range(0..2_000))
    }
}

/// v2 churn: subscribe and unsubscribe random sites, paced under the frame rate limit, a few
/// dozen per connection, then leave (abruptly or with a Close) and come back. Every request must
/// be answered, and no publication of a site may follow its `unsubscribed`.
pub async fn v2_churn(env: Arc<Env>, seed: u64) {
    const CHECK: &str = "v2 churn: every request answered, nothing after unsubscribed";
    let mut rng = StdRng::seed_from_u64(seed);
    while !env.stop.is_cancelled() {
        let result = async {
            let mut ws = open(&env, "", true).await?;
            let mut id = 0u64;
            for _ in 0..rng.random_range(5..40) {
                if env.stop.is_cancelled() {
                    break;
                }
                let site = churn_site(&mut rng);
                id += 1;
                let subscribe = serde_json::json!({"type": "subscribe", "id": id, "site": site});
                ws.send(Message::text(subscribe.to_string())).await.map_err(|e| e.to_string())?;
                await_answer(&mut ws, "subscribed", id).await?;
                id += 1;
                let unsubscribe = serde_json::json!({"type": "unsubscribe", "id": id, "site": site});
                ws.send(Message::text(unsubscribe.to_string())).await.map_err(|e| e.to_string())?;
                await_answer(&mut ws, "unsubscribed", id).await?;
                // Anything of that site from here on is a publication after its unsubscribe.
                let quiet_until = Instant::now() + Duration::from_millis(150);
                while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
                    match next(&mut ws, left).await {
                        Next::Frame(Message::Text(t)) => {
                            for line in t.split('\n') {
                                if line.contains(r#""type":"pub""#) && line.contains(&format!(r#""site":"{site}""#)) {
                                    return Err(format!("publication of {site} after unsubscribed"));
                                }
                            }
                        }
                        Next::Frame(Message::Close(f)) => return Err(format!("closed: {f:?}")),
                        Next::Frame(_) | Next::TimedOut => {}
                        Next::Ended(why) => return Err(why),
                    }
                }
            }
            if rng.random_bool(0.5) {
                let _ = timeout(ANSWER, ws.close(None)).await;
            }
            Ok(())
        }
        .await;
        env.tally.record(CHECK, result);
    }
}

/// How a v2 request was answered.
#[derive(Debug)]
enum Answer {
    /// A frame with the request's id: the expected kind, or another (an error).
    Frame(serde_json::Value),
    /// The connection closed (code) or ended (why) first.
    Closed(String),
    /// Nothing within [`ANSWER`].
    Silence,
}

/// Reads until the frame answering request `id` (publications pass by).
async fn answer_to(ws: &mut Ws, id: u64) -> Answer {
    let deadline = Instant::now() + ANSWER;
    while Instant::now() < deadline {
        let lines = match next_text(ws).await {
            Ok(lines) => lines,
            Err(e) if e == "no answer" => return Answer::Silence,
            Err(e) => return Answer::Closed(e),
        };
        for line in lines {
            if line.contains(r#""type":"pub""#) {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) if v["id"] == id => return Answer::Frame(v),
                Ok(_) => {}
                Err(e) => return Answer::Closed(format!("not JSON ({e}): {line}")),
            }
        }
    }
    Answer::Silence
}

/// Reads until the answer of type `kind` to request `id`; `Err` for anything else.
async fn await_answer(ws: &mut Ws, kind: &str, id: u64) -> Result<(), String> {
    match answer_to(ws, id).await {
        Answer::Frame(v) if v["type"] == kind => Ok(()),
        Answer::Frame(v) => Err(format!("{kind} {id}: answered {v}")),
        Answer::Closed(why) => Err(format!("{kind} {id}: {why}")),
        Answer::Silence => Err(format!("{kind} {id}: no answer")),
    }
}

/// Legacy churn: connect to a random site, move with `updatesubscribersite` a few times while
/// reading, then leave abruptly or with a Close. The relay must not close or refuse it.
pub async fn legacy_churn(env: Arc<Env>, seed: u64) {
    const CHECK: &str = "legacy churn: served while moving between sites";
    let mut rng = StdRng::seed_from_u64(seed);
    while !env.stop.is_cancelled() {
        let result = async {
            let mut ws = open(&env, &format!("?site={}", churn_site(&mut rng)), false).await?;
            for _ in 0..rng.random_range(1..8) {
                let update = serde_json::json!({"action": "updatesubscribersite", "site": churn_site(&mut rng)});
                ws.send(Message::text(update.to_string())).await.map_err(|e| e.to_string())?;
                let quiet_until = Instant::now() + Duration::from_millis(rng.random_range(50..300));
                while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
                    match next(&mut ws, left).await {
                        Next::Frame(Message::Text(t)) if t.contains(r#""type":"error""#) => {
                            return Err(format!("refused: {t}"));
                        }
                        Next::Frame(Message::Close(f)) => return Err(format!("closed: {f:?}")),
                        Next::Frame(_) | Next::TimedOut => {}
                        Next::Ended(why) => return Err(why),
                    }
                }
            }
            if rng.random_bool(0.5) {
                let _ = timeout(ANSWER, ws.close(None)).await;
            }
            Ok(())
        }
        .await;
        env.tally.record(CHECK, result);
    }
}

/// Connects and drops at once, at random stages: right after the TCP connect, or right after
/// the handshake (legacy or v2), without a Close.
pub async fn connect_drop(env: Arc<Env>, seed: u64) {
    const CHECK: &str = "connect and drop: handshakes still answered";
    let mut rng = StdRng::seed_from_u64(seed);
    while !env.stop.is_cancelled() {
        let result = match rng.random_range(0..3) {
            0 => {
                env.opened();
                timeout(ANSWER, tokio::net::TcpStream::connect(env.addr))
                    .await
                    .map_err(|_| "no connect".to_owned())
                    .and_then(|r| r.map(drop).map_err(|e| e.to_string()))
            }
            1 => open(&env, &format!("?site={}", churn_site(&mut rng)), false).await.map(drop),
            _ => open(&env, &format!("?site={}", churn_site(&mut rng)), true).await.map(drop),
        };
        env.tally.record(CHECK, result);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A v2 subscribe with thousands of topics: refused with an error frame, or the connection is
/// closed; never accepted (an unbounded topic list is memory a client can pin).
pub async fn huge_topic_list(env: Arc<Env>) {
    const CHECK: &str = "huge topic list: refused (error or close)";
    let topics: Vec<String> = (0..HUGE_TOPICS).map(|i| format!("t-{i:05}")).collect();
    let frame = serde_json::json!({"type": "subscribe", "id": 1, "site": "topics-site", "topics": topics}).to_string();
    while !env.stop.is_cancelled() {
        let result = async {
            let mut ws = open(&env, "", true).await?;
            ws.send(Message::text(frame.clone())).await.map_err(|e| e.to_string())?;
            match answer_to(&mut ws, 1).await {
                Answer::Frame(v) if v["type"] == "error" => Ok(()),
                Answer::Closed(_) => Ok(()),
                Answer::Frame(v) => Err(format!("{HUGE_TOPICS} topics: {}", v["type"])),
                Answer::Silence => Err(format!("{HUGE_TOPICS} topics: no answer")),
            }
        }
        .await;
        env.tally.record(CHECK, result);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Subscribes to busy sites and reads nothing for `stall`: by then the relay must have cut it
/// off (heartbeat timeout, write timeout or byte cap), not kept it, and what it held with it.
/// Then reads what reached the socket: the connection must end.
pub async fn stalled_reader(env: Arc<Env>, v2: bool, site: usize, stall: Duration) {
    const CHECK: &str = "stalled reader: cut off";
    env.opened();
    let query = if v2 {
        let all: Vec<String> = SITES.iter().map(|s| format!("site={s}")).collect();
        format!("?{}", all.join("&"))
    } else {
        format!("?site={}", SITES[site])
    };
    let result = async {
        let mut req = format!("ws://{}/dev{query}", env.addr).into_client_request().map_err(|e| e.to_string())?;
        if v2 {
            req.headers_mut().insert("sec-websocket-protocol", "datastream.v2".parse().map_err(|_| "header")?);
        }
        let (mut ws, _) = timeout(ANSWER, tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| "no handshake".to_owned())?
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(stall).await;
        // Whatever was cut off reaches its end within what the socket buffered; a connection
        // still served keeps receiving publications (and pings) past this bound.
        let deadline = Instant::now() + ANSWER;
        loop {
            match next(&mut ws, deadline.saturating_duration_since(Instant::now())).await {
                Next::Frame(Message::Close(_)) | Next::Ended(_) => return Ok(()),
                Next::Frame(_) => {}
                Next::TimedOut => return Err(format!("still open after stalling {stall:?}")),
            }
        }
    }
    .await;
    env.tally.record(CHECK, result);
}

/// Sends a Close frame: the relay must answer with its own (RFC 6455 §5.5.1), legacy and v2.
pub async fn closer(env: Arc<Env>, v2: bool) {
    const CHECK: &str = "client Close: answered with a Close";
    while !env.stop.is_cancelled() {
        let result = async {
            let mut ws = open(&env, if v2 { "" } else { "?site=closer-site" }, v2).await?;
            let bye = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
            ws.send(Message::Close(Some(bye))).await.map_err(|e| e.to_string())?;
            loop {
                match next(&mut ws, ANSWER).await {
                    Next::Frame(Message::Close(_)) => return Ok(()),
                    Next::Frame(_) => {}
                    Next::Ended(why) => return Err(format!("no Close in reply: {why}")),
                    Next::TimedOut => return Err("no Close in reply within 10 s".to_owned()),
                }
            }
        }
        .await;
        env.tally.record(CHECK, result);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
