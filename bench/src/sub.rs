//! Subscribers: one task per WebSocket, speaking each server's protocol, all recording into one
//! [`Shared`] (the load tool runs on a single thread).

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    rc::Rc,
};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::{net::TcpStream, sync::Semaphore, time::Instant};
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

use crate::{
    mqtt, payload,
    status::{self, Counts, Viewer},
    tsstream::TsStream,
};

/// The server under test, and so the protocol its subscribers speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Target {
    /// The relay, legacy protocol (`/dev?site=X`, one message per text frame).
    Relay,
    /// The relay, protocol v2 (subprotocol `datastream.v2`; frames may be packed).
    RelayV2,
    /// nats-server's WebSocket listener (NATS protocol in WebSocket frames).
    Nats,
    /// mosquitto's WebSocket listener (MQTT 3.1.1, QoS 0).
    Mosquitto,
    /// The Node.js `ws` relay in `bench/node-relay` (`/dev?site=X`).
    Node,
    /// `loadgen floor`, the reference that does nothing but write (`/dev?site=X`).
    Floor,
}

/// What every subscriber reports to.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Publish → kernel-receive latency of the current phase, in µs.
    pub(crate) latency: Histogram<u64>,
    /// Handshake-to-subscribed time of each connection, in µs.
    pub(crate) connect: Histogram<u64>,
    /// Messages of the current phase received (all subscribers).
    pub(crate) received: u64,
    /// Messages received whose sequence number is outside the current phase.
    pub(crate) stray: u64,
    /// Heartbeats received in the current phase: WebSocket pings, v2 `ping` frames, NATS `PING`s.
    pub(crate) pings: u64,
    /// Sequence numbers `lo..hi` belong to the current phase.
    pub(crate) lo: u64,
    pub(crate) hi: u64,
    /// When the latest in-phase message arrived.
    pub(crate) last_recv: Option<Instant>,
    /// Subscribers connected and subscribed.
    pub(crate) ready: usize,
    /// Subscribers that could not connect, with the first error.
    pub(crate) failed: usize,
    pub(crate) first_error: Option<String>,
    /// Subscribers whose connection ended after they were ready, by reason.
    pub(crate) closed: BTreeMap<String, usize>,
    /// Messages timed with the kernel's receive timestamp (the rest: with the time of the read).
    pub(crate) kernel_ts: u64,
    /// Subscribers currently ready, per site.
    pub(crate) live: Vec<usize>,
    /// Status payloads: what the subscribers counted in the current phase.
    pub(crate) counts: Counts,
    /// Status payloads: the data text published under each sequence number.
    pub(crate) published: HashMap<u64, String>,
}

impl Shared {
    pub(crate) fn new(sites: usize) -> anyhow::Result<Self> {
        Ok(Shared {
            latency: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            connect: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            received: 0,
            stray: 0,
            pings: 0,
            lo: 0,
            hi: 0,
            last_recv: None,
            ready: 0,
            failed: 0,
            first_error: None,
            closed: BTreeMap::new(),
            kernel_ts: 0,
            live: vec![0; sites],
            counts: Counts::default(),
            published: HashMap::new(),
        })
    }

    fn record(&mut self, bytes: &[u8], recv_ns: u64) {
        let Some((seq, t)) = payload::extract(bytes) else { return };
        if seq < self.lo || seq >= self.hi {
            self.stray += 1;
            return;
        }
        self.received += 1;
        self.last_recv = Some(Instant::now());
        let us = recv_ns.saturating_sub(t) / 1000;
        self.latency.saturating_record(us.max(1));
    }

    /// A status publication's data text as a subscriber ended up with it: compared with the text
    /// published under its sequence number, then recorded.
    fn record_status(&mut self, text: &str, recv_ns: u64) {
        let seq = payload::extract(text.as_bytes()).map(|(seq, _)| seq);
        if seq.and_then(|seq| self.published.get(&seq)).is_none_or(|p| p != text) {
            self.counts.mismatches += 1;
        }
        self.record(text.as_bytes(), recv_ns);
    }
}

type Ws = WebSocketStream<TsStream>;

/// Where a subscriber connects.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub(crate) target: Target,
    pub(crate) addr: SocketAddr,
    /// v2 with a status payload: subscribe with a `subscribe` message (asking for Fossil deltas
    /// when `delta`), rebuild and check every publication.
    pub(crate) status: bool,
    pub(crate) delta: bool,
}

/// Connects one subscriber to `site` (index `site_idx`), then records every message until the
/// connection ends. `gate` bounds how many handshakes are in flight at once.
pub(crate) async fn run(
    ep: Endpoint,
    site_idx: usize,
    site: String,
    id: usize,
    shared: Rc<RefCell<Shared>>,
    gate: Rc<Semaphore>,
) {
    let Ok(permit) = gate.acquire().await else { return };
    let started = Instant::now();
    let ws = match connect(&ep, &site, id).await {
        Ok(ws) => ws,
        Err(e) => {
            let mut s = shared.borrow_mut();
            s.failed += 1;
            s.first_error.get_or_insert_with(|| format!("{e:#}"));
            return;
        }
    };
    drop(permit);
    {
        let mut s = shared.borrow_mut();
        s.ready += 1;
        s.live[site_idx] += 1;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        s.connect.saturating_record(us.max(1));
    }
    let reason = match read_loop(&ep, ws, &shared).await {
        Ok(reason) => reason,
        Err(e) => format!("error: {e:#}"),
    };
    let mut s = shared.borrow_mut();
    s.live[site_idx] -= 1;
    *s.closed.entry(reason).or_default() += 1;
}

async fn handshake(ep: &Endpoint, path: &str, subprotocol: Option<&'static str>) -> anyhow::Result<Ws> {
    let tcp = TcpStream::connect(ep.addr).await.context("connect")?;
    let stream = TsStream::new(tcp).context("SO_TIMESTAMPNS")?;
    let mut req = format!("ws://{}{path}", ep.addr).into_client_request()?;
    if let Some(p) = subprotocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
    }
    let (ws, _) = client_async(req, stream).await.context("WebSocket handshake")?;
    Ok(ws)
}

/// Reads frames until `done` says the setup answer arrived.
async fn await_frame(ws: &mut Ws, mut done: impl FnMut(&[u8]) -> bool) -> anyhow::Result<()> {
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        if let Message::Close(c) = msg {
            bail!("closed during setup: {c:?}");
        }
        if done(&msg.into_data()) {
            return Ok(());
        }
    }
    bail!("connection ended during setup")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn connect(ep: &Endpoint, site: &str, id: usize) -> anyhow::Result<Ws> {
    match ep.target {
        Target::Relay | Target::Node | Target::Floor => handshake(ep, &format!("/dev?site={site}"), None).await,
        Target::RelayV2 if ep.status => {
            let mut ws = handshake(ep, "/dev", Some("datastream.v2")).await?;
            let delta = if ep.delta { r#","delta":"fossil""# } else { "" };
            let req = format!(r#"{{"type":"subscribe","id":1,"site":"{site}"{delta}}}"#);
            ws.send(Message::text(req)).await?;
            let mut granted = false;
            await_frame(&mut ws, |f| {
                granted = contains(f, br#""delta":"fossil""#);
                contains(f, br#""type":"subscribed""#)
            })
            .await?;
            if ep.delta && !granted {
                bail!("the relay did not grant deltas");
            }
            Ok(ws)
        }
        Target::RelayV2 => {
            let mut ws = handshake(ep, &format!("/dev?site={site}"), Some("datastream.v2")).await?;
            await_frame(&mut ws, |f| contains(f, br#""type":"subscribed""#)).await?;
            Ok(ws)
        }
        Target::Nats => {
            let mut ws = handshake(ep, "/", None).await?;
            await_frame(&mut ws, |f| f.starts_with(b"INFO")).await?;
            let setup = format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB bench.{site} 1\r\nPING\r\n"
            );
            ws.send(Message::binary(setup.into_bytes())).await?;
            await_frame(&mut ws, |f| contains(f, b"PONG\r\n")).await?;
            Ok(ws)
        }
        Target::Mosquitto => {
            let mut ws = handshake(ep, "/", Some("mqtt")).await?;
            ws.send(Message::binary(mqtt::connect(&format!("sub{id}")))).await?;
            await_frame(&mut ws, |f| f.first() == Some(&0x20)).await?;
            ws.send(Message::binary(mqtt::subscribe(&format!("bench/{site}")))).await?;
            await_frame(&mut ws, |f| f.first() == Some(&0x90)).await?;
            Ok(ws)
        }
    }
}

/// Records messages until the connection ends; returns why it ended.
async fn read_loop(ep: &Endpoint, mut ws: Ws, shared: &RefCell<Shared>) -> anyhow::Result<String> {
    let target = ep.target;
    let mut viewer = Viewer::default();
    // Bytes of a broker's stream not yet parsed (NATS and MQTT messages may span frames).
    let mut pending: Vec<u8> = Vec::new();
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        let mut recv_ns = ws.get_ref().last_ns();
        if recv_ns == 0 {
            recv_ns = payload::now_ns();
        } else {
            shared.borrow_mut().kernel_ts += 1;
        }
        let data = match msg {
            Message::Text(t) => t.into(),
            Message::Binary(b) => b,
            Message::Close(c) => return Ok(c.map_or_else(|| "close".to_owned(), |c| format!("close {}", c.code))),
            Message::Ping(_) => {
                shared.borrow_mut().pings += 1;
                continue;
            }
            Message::Pong(_) | Message::Frame(_) => continue,
        };
        match target {
            Target::Relay | Target::Node | Target::Floor => shared.borrow_mut().record(&data, recv_ns),
            Target::RelayV2 => {
                let pong = {
                    let mut s = shared.borrow_mut();
                    let mut pong = false;
                    if ep.status && contains(&data, br#""type":"pub""#) {
                        s.counts.frame_bytes += status::frame_size(data.len());
                    }
                    for frame in data.split(|&b| b == b'\n') {
                        if ep.status && contains(frame, br#""type":"pub""#) {
                            let line = std::str::from_utf8(frame).unwrap_or_default();
                            if let Some(text) = viewer.take(line, &mut s.counts) {
                                s.record_status(text, recv_ns);
                            }
                        } else if contains(frame, br#""type":"pub""#) {
                            s.record(frame, recv_ns);
                        } else if contains(frame, br#""type":"ping""#) {
                            s.pings += 1;
                            pong = true;
                        }
                    }
                    pong
                };
                if pong {
                    ws.send(Message::text(r#"{"type":"pong"}"#)).await?;
                }
            }
            Target::Nats => {
                pending.extend_from_slice(&data);
                let parsed = nats_messages(&pending, &mut shared.borrow_mut(), recv_ns);
                let (used, pings) = parsed?;
                pending.drain(..used);
                shared.borrow_mut().pings += pings as u64;
                for _ in 0..pings {
                    ws.send(Message::binary(b"PONG\r\n".to_vec())).await?;
                }
            }
            Target::Mosquitto => {
                pending.extend_from_slice(&data);
                let used = mqtt::publishes(&pending, |p| shared.borrow_mut().record(p, recv_ns));
                pending.drain(..used);
            }
        }
    }
    Ok("eof".to_owned())
}

/// Parses the complete NATS protocol lines in `buf`, recording each `MSG` payload; returns the
/// bytes consumed and how many `PING`s need a `PONG`.
fn nats_messages(buf: &[u8], s: &mut Shared, recv_ns: u64) -> anyhow::Result<(usize, usize)> {
    let mut at = 0;
    let mut pings = 0;
    while let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") {
        let line = &buf[at..at + eol];
        if line.starts_with(b"MSG ") {
            let len: usize = std::str::from_utf8(line)?
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .context("MSG without a length")?;
            let start = at + eol + 2;
            if buf.len() < start + len + 2 {
                break;
            }
            s.record(&buf[start..start + len], recv_ns);
            at = start + len + 2;
        } else {
            if line == b"PING" {
                pings += 1;
            } else if line.starts_with(b"-ERR") {
                bail!("{}", String::from_utf8_lossy(line));
            }
            at += eol + 2;
        }
    }
    Ok((at, pings))
}
