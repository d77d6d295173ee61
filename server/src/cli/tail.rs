//! `datastream tail`: follow one or more sites over protocol v2 and print every publication as a
//! JSON line on stdout (`{"type":"pub","site",…,"epoch","offset","data"}`). On a lost connection
//! it reconnects with backoff and resubscribes from the last position printed, so nothing is
//! missed or printed twice; when the relay cannot fill the gap it says so on stderr
//! (`{"event":"recovery_failed",…}`) and carries on from the current position. With `--latest`,
//! each site starts with the latest publication of every (matching) topic, printed as the relay
//! marks it (`"latest":true`), however long ago it was published.

use std::{collections::HashMap, time::Duration};

use clap::Args;
use datastream_protocol::{
    backoff::Backoff,
    close::{CloseCode, should_reconnect},
    v2::{ClientFrame, SUBPROTOCOL, ServerFrame, StreamPosition},
};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

use super::ToolError;

/// Reconnect delays.
const RETRY: Backoff = Backoff { min: Duration::from_millis(500), max: Duration::from_secs(20) };

/// Silence tolerated beyond the server's ping interval before the connection counts as dead.
const GRACE: Duration = Duration::from_secs(10);

/// Arguments of `datastream tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The relay's WebSocket URL, e.g. `ws://127.0.0.1:8080/dev`. Repeat for several nodes:
    /// after a lost connection the next one is tried.
    #[arg(long, env = "DATASTREAM_WS_URL", default_value = "ws://127.0.0.1:8080/dev", value_delimiter = ',')]
    pub url: Vec<String>,

    /// Site to follow (repeat for several).
    #[arg(long, required = true)]
    pub site: Vec<String>,

    /// Only these topics (repeat for several); default: all.
    #[arg(long)]
    pub topic: Vec<String>,

    /// Start with up to this many of each site's latest publications.
    #[arg(long)]
    pub rewind: Option<u32>,

    /// Start with the latest publication of each topic (marked `"latest":true`), however old;
    /// after a reconnect, only those not printed yet.
    #[arg(long)]
    pub latest: bool,

    /// Client token, when the relay requires one.
    #[arg(long, env = "DATASTREAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Exit after printing this many publications.
    #[arg(long)]
    pub count: Option<u64>,
}

/// How one connection ended.
enum Outcome {
    /// `--count` reached.
    Done,
    /// Lost; reconnect.
    Retry(String),
}

/// What tail remembers across connections.
struct Follow {
    args: TailArgs,
    /// Last position printed (or skipped past) per site.
    positions: HashMap<String, StreamPosition>,
    printed: u64,
    /// Index (modulo the count) of the URL to use next.
    next_url: usize,
}

/// Runs until `--count` publications were printed, a terminal close, or Ctrl-C.
pub async fn run(args: TailArgs) -> Result<(), ToolError> {
    let mut follow = Follow { args, positions: HashMap::new(), printed: 0, next_url: 0 };
    let mut attempt = 0;
    loop {
        let outcome = tokio::select! {
            r = follow.connection(&mut attempt) => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match outcome {
            Outcome::Done => return Ok(()),
            Outcome::Retry(why) => {
                let delay = RETRY.delay(attempt, rand::random());
                eprintln!(
                    "{}",
                    json!({"event": "reconnecting", "reason": why, "attempt": attempt + 1, "delay_ms": delay.as_millis() as u64})
                );
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

impl Follow {
    async fn connection(&mut self, attempt: &mut u32) -> Result<Outcome, ToolError> {
        let url = self.args.url[self.next_url % self.args.url.len().max(1)].clone();
        let mut req = url.as_str().into_client_request().map_err(|e| ToolError::Usage(format!("--url: {e}")))?;
        let mut protocols = SUBPROTOCOL.to_owned();
        if let Some(token) = &self.args.token {
            protocols.push_str(&format!(", datastream.token.{token}"));
        }
        let header = HeaderValue::from_str(&protocols).map_err(|e| ToolError::Usage(format!("--token: {e}")))?;
        req.headers_mut().insert("sec-websocket-protocol", header);
        // Until this connection proves healthy, a retry moves on to the next URL.
        self.next_url += 1;
        let mut ws = match connect_async(req).await {
            Ok((ws, _)) => ws,
            Err(e) => return Ok(Outcome::Retry(format!("{url}: {e}"))),
        };
        let mut silence = Duration::from_secs(35);
        let mut id = 0;
        for site in &self.args.site {
            id += 1;
            let recover = self.positions.get(site).cloned();
            let rewind = if recover.is_none() { self.args.rewind } else { None };
            let frame = ClientFrame::Subscribe {
                id: Some(id),
                site: site.clone(),
                topics: self.args.topic.clone(),
                recover,
                rewind,
                latest: self.args.latest.into(),
                delta: None,
            };
            let text = serde_json::to_string(&frame).unwrap_or_default();
            if ws.send(Message::text(text)).await.is_err() {
                return Ok(Outcome::Retry("send failed".into()));
            }
        }
        loop {
            let msg = match tokio::time::timeout(silence, ws.next()).await {
                Err(_) => return Ok(Outcome::Retry("no heartbeat from the relay".into())),
                Ok(None) => return Ok(Outcome::Retry("connection closed".into())),
                Ok(Some(Err(e))) => return Ok(Outcome::Retry(e.to_string())),
                Ok(Some(Ok(msg))) => msg,
            };
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(Some(frame)) => {
                    let code = u16::from(frame.code);
                    if code == CloseCode::GoingAway.code() {
                        // This node is draining: prefer another.
                        self.next_url += 1;
                    }
                    if should_reconnect(code) {
                        return Ok(Outcome::Retry(format!("closed {code}: {}", frame.reason)));
                    }
                    return Err(ToolError::Refused(format!("closed {code}: {}", frame.reason)));
                }
                Message::Close(None) => return Ok(Outcome::Retry("closed".into())),
                _ => continue,
            };
            for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
                match ServerFrame::parse(line) {
                    Ok(ServerFrame::Hello { ping_interval_ms, .. }) => {
                        *attempt = 0;
                        self.next_url -= 1;
                        silence = Duration::from_millis(ping_interval_ms) + GRACE;
                    }
                    Ok(ServerFrame::Subscribed { site, epoch, offset, recovered, replayed, .. }) => {
                        if recovered == Some(false) {
                            eprintln!(
                                "{}",
                                json!({"event": "recovery_failed", "site": site, "epoch": epoch, "offset": offset})
                            );
                        }
                        if recovered == Some(false) || (replayed == 0 && !self.positions.contains_key(&site)) {
                            self.positions.insert(site, StreamPosition { epoch, offset });
                        }
                    }
                    Ok(ServerFrame::Pub(p)) => {
                        // A latest publication is older than the subscription's position (and
                        // sent only if not seen): printed, without moving the position.
                        let seen = self.positions.get(&p.site);
                        if !p.latest && seen.is_some_and(|s| s.epoch == p.epoch && s.offset >= p.offset) {
                            continue;
                        }
                        println!("{line}");
                        if !p.latest {
                            self.positions.insert(p.site, StreamPosition { epoch: p.epoch, offset: p.offset });
                        }
                        self.printed += 1;
                        if self.args.count.is_some_and(|c| self.printed >= c) {
                            let _ = ws.close(None).await;
                            return Ok(Outcome::Done);
                        }
                    }
                    Ok(ServerFrame::Ping) => {
                        if ws.send(Message::text(r#"{"type":"pong"}"#)).await.is_err() {
                            return Ok(Outcome::Retry("send failed".into()));
                        }
                    }
                    Ok(ServerFrame::Error { code, message, .. }) => {
                        eprintln!("{}", json!({"event": "error", "code": code, "message": message}));
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("{}", json!({"event": "unreadable_frame", "error": e.to_string()})),
                }
            }
        }
    }
}
