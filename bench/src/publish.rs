//! Publishers: one connection per run, one write per tick (a burst is one write).
//!
//! - relay and Node relay: `POST /publish` on a keep-alive HTTP/1.1 connection; a tick's messages
//!   go as one JSON array (a single message as an object). Requests are pipelined: a tick does not
//!   wait for the previous answer (like the brokers' fire-and-forget publishes), a reader task
//!   checks every answer, and a phase ends only when all were answered.
//! - nats-server: its TCP client port, one `PUB` per message.
//! - mosquitto: its MQTT TCP port, one QoS 0 PUBLISH per message.

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    rc::Rc,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, tcp::OwnedWriteHalf},
    sync::Notify,
};

use crate::{mqtt, sub::Target};

/// One message to publish: its site and its JSON (`{"site","topic","data"}`).
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) site: String,
    pub(crate) json: String,
}

/// A connected publisher.
#[derive(Debug)]
pub(crate) enum Publisher {
    Http {
        write: OwnedWriteHalf,
        sent: u64,
        answers: Rc<Answers>,
        /// `Authorization: Bearer …\r\n`, or empty.
        auth: String,
    },
    Nats(OwnedWriteHalf),
    Mqtt(OwnedWriteHalf),
}

/// Most HTTP requests awaiting their answer before a publish waits.
const MAX_IN_FLIGHT: u64 = 256;

/// What the HTTP reader task has seen.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    ok: Cell<u64>,
    failure: RefCell<Option<String>>,
    changed: Notify,
}

/// Reads and discards what a broker sends the publisher (its acknowledgements and pings).
fn drain(mut read: tokio::net::tcp::OwnedReadHalf) {
    tokio::task::spawn_local(async move {
        let mut sink = vec![0u8; 4096];
        while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    });
}

async fn read_until(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>, needle: &[u8]) -> anyhow::Result<()> {
    let mut chunk = [0u8; 4096];
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

impl Publisher {
    /// Connects to `addr` with the publish path of `target`; `token` is the relay's publish token.
    pub(crate) async fn connect(target: Target, addr: SocketAddr, token: Option<&str>) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect(addr).await.with_context(|| format!("publisher connect {addr}"))?;
        stream.set_nodelay(true)?;
        match target {
            Target::Relay | Target::RelayV2 | Target::Node | Target::Floor => {
                let (mut read, write) = stream.into_split();
                let answers = Rc::new(Answers::default());
                let seen = answers.clone();
                tokio::task::spawn_local(async move {
                    let mut buf = Vec::new();
                    loop {
                        match read_response(&mut read, &mut buf).await {
                            Ok(()) => seen.ok.set(seen.ok.get() + 1),
                            Err(e) => {
                                seen.failure.borrow_mut().get_or_insert(format!("{e:#}"));
                                seen.changed.notify_one();
                                break;
                            }
                        }
                        seen.changed.notify_one();
                    }
                });
                let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
                Ok(Publisher::Http { write, sent: 0, answers, auth })
            }
            Target::Nats => {
                let mut buf = Vec::new();
                read_until(&mut stream, &mut buf, b"\r\n").await?;
                stream.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\nPING\r\n").await?;
                read_until(&mut stream, &mut buf, b"PONG\r\n").await?;
                let (read, write) = stream.into_split();
                drain(read);
                Ok(Publisher::Nats(write))
            }
            Target::Mosquitto => {
                stream.write_all(&mqtt::connect("bench-publisher")).await?;
                let mut ack = [0u8; 4];
                stream.read_exact(&mut ack).await?;
                if ack[0] != 0x20 || ack[3] != 0 {
                    bail!("CONNACK refused: {ack:?}");
                }
                let (read, write) = stream.into_split();
                drain(read);
                Ok(Publisher::Mqtt(write))
            }
        }
    }

    /// Publishes `msgs` with one write.
    pub(crate) async fn send(&mut self, msgs: &[Outgoing]) -> anyhow::Result<()> {
        match self {
            Publisher::Http { write, sent, answers, auth } => {
                while *sent - answers.ok.get() >= MAX_IN_FLIGHT {
                    answers.check()?;
                    answers.changed.notified().await;
                }
                answers.check()?;
                let body = if let [one] = msgs {
                    one.json.clone()
                } else {
                    let mut b = String::from("[");
                    for (i, m) in msgs.iter().enumerate() {
                        if i > 0 {
                            b.push(',');
                        }
                        b.push_str(&m.json);
                    }
                    b.push(']');
                    b
                };
                let req = format!(
                    "POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                write.write_all(req.as_bytes()).await?;
                *sent += 1;
                Ok(())
            }
            Publisher::Nats(w) => {
                let mut out = Vec::with_capacity(msgs.iter().map(|m| m.json.len() + 40).sum());
                for m in msgs {
                    out.extend_from_slice(format!("PUB bench.{} {}\r\n", m.site, m.json.len()).as_bytes());
                    out.extend_from_slice(m.json.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                Ok(w.write_all(&out).await?)
            }
            Publisher::Mqtt(w) => {
                let mut out = Vec::new();
                for m in msgs {
                    out.extend(mqtt::publish(&format!("bench/{}", m.site), m.json.as_bytes()));
                }
                Ok(w.write_all(&out).await?)
            }
        }
    }
}

impl Answers {
    fn check(&self) -> anyhow::Result<()> {
        match &*self.failure.borrow() {
            Some(e) => bail!("publish: {e}"),
            None => Ok(()),
        }
    }
}

impl Publisher {
    /// Waits until every HTTP request sent so far was answered (at once for the brokers).
    pub(crate) async fn settle(&mut self) -> anyhow::Result<()> {
        if let Publisher::Http { sent, answers, .. } = self {
            while answers.ok.get() < *sent {
                answers.check()?;
                answers.changed.notified().await;
            }
        }
        Ok(())
    }
}

/// Reads one HTTP/1.1 response (with `Content-Length`) and fails unless it is 2xx.
async fn read_response(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> anyhow::Result<()> {
    read_until(stream, buf, b"\r\n\r\n").await?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").context("no header end")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12).unwrap_or("").to_owned();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let mut chunk = [0u8; 4096];
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    buf.drain(..head_end + len);
    if !status.starts_with('2') {
        bail!("publish refused: {status} {body}");
    }
    Ok(())
}
