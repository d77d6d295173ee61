//! Hostile clients below WebSocket, on plain TCP: connections left half-open at every stage
//! (nothing sent, one byte of a request, half a handshake, half a frame), publishes whose body
//! never comes, and large publishes to sites nobody reads.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, timeout},
};

use crate::{Env, stream::LARGE_PAD};

/// Bounds waits that the relay answers at once (a refused publish).
const ANSWER: Duration = Duration::from_secs(10);

/// How long a half-open connection may stay before the relay must have closed it: the handshake
/// deadline (1 s) for the first stages; for half a frame, the client timeout (3 s), the close
/// grace (2 s) and some room for a loaded machine.
const CUT_OFF: Duration = Duration::from_secs(15);

/// A WebSocket handshake request, complete.
pub fn handshake(v2: bool) -> String {
    let protocol = if v2 { "Sec-WebSocket-Protocol: datastream.v2\r\n" } else { "" };
    format!(
        "GET /dev?site=half-open HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    )
}

/// Where a half-open connection stops.
#[derive(Debug, Clone, Copy)]
pub enum HalfOpen {
    /// TCP connect, then nothing.
    Nothing,
    /// `G`: the first byte of an HTTP/1 request.
    G,
    /// `P`: the first byte of an HTTP/2 preface (or of a POST).
    P,
    /// A WebSocket handshake without its last header line and blank line.
    HalfHandshake,
    /// A whole handshake, answered 101, then half a frame header (legacy or v2).
    HalfFrame { v2: bool },
}

impl HalfOpen {
    fn check(self) -> &'static str {
        match self {
            HalfOpen::Nothing => "half-open: silent TCP connection closed",
            HalfOpen::G => "half-open: 'G' then nothing, closed",
            HalfOpen::P => "half-open: 'P' then nothing, closed",
            HalfOpen::HalfHandshake => "half-open: half a handshake, closed",
            HalfOpen::HalfFrame { v2: false } => "half-open: half a frame (legacy), closed",
            HalfOpen::HalfFrame { v2: true } => "half-open: half a frame (v2), closed",
        }
    }
}

/// Reads (and discards) until the relay closes the connection; `Err` if it is still open at
/// `deadline`.
async fn until_closed(tcp: &mut TcpStream, deadline: Instant) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match timeout(deadline.saturating_duration_since(Instant::now()), tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
            Err(_) => return Err("still open".to_owned()),
        }
    }
}

/// Reads the head of an HTTP response (up to the blank line, or what came before the end).
async fn response_head(tcp: &mut TcpStream, limit: Duration) -> Result<String, String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let read = timeout(limit, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match read {
        Ok(()) => Ok(String::from_utf8_lossy(&head).into_owned()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// One connection stopping at `stage`; the relay must close it within [`CUT_OFF`].
async fn half_open_once(env: &Env, stage: HalfOpen) -> Result<(), String> {
    env.opened();
    let mut tcp = timeout(ANSWER, TcpStream::connect(env.addr))
        .await
        .map_err(|_| "no connect".to_owned())?
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let sent = match stage {
        HalfOpen::Nothing => Ok(()),
        HalfOpen::G => tcp.write_all(b"G").await,
        HalfOpen::P => tcp.write_all(b"P").await,
        HalfOpen::HalfHandshake => {
            let full = handshake(false);
            tcp.write_all(&full.as_bytes()[..full.len() - 30]).await
        }
        HalfOpen::HalfFrame { v2 } => {
            tcp.write_all(handshake(v2).as_bytes()).await.map_err(|e| e.to_string())?;
            let head = response_head(&mut tcp, ANSWER).await?;
            if !head.starts_with("HTTP/1.1 101") {
                return Err(format!("handshake refused: {head}"));
            }
            // A masked text frame with a 16-bit length, cut inside the length.
            tcp.write_all(&[0x81, 0xFE, 0x01]).await
        }
    };
    sent.map_err(|e| e.to_string())?;
    until_closed(&mut tcp, started + CUT_OFF).await.map_err(|e| format!("{e} after {CUT_OFF:?}"))
}

/// Opens half-open connections stopping at `stage`, one after another, until the soak stops.
pub async fn half_open(env: Arc<Env>, stage: HalfOpen) {
    while !env.stop.is_cancelled() {
        let result = half_open_once(&env, stage).await;
        env.tally.record(stage.check(), result);
    }
}

/// How a slow-body publish presents itself.
#[derive(Debug, Clone, Copy)]
pub enum SlowBody {
    /// No `Authorization`: refused (401) before the body is read.
    NoToken,
    /// A wrong token: refused (401) before the body is read.
    WrongToken,
    /// The right token, a body that never comes: the relay must give up on it at some point
    /// (a body deadline), not hold the connection for ever.
    Stalled,
    /// The right token and a `Content-Length` over the body limit: refused (413) at once, or at
    /// least cut like [`SlowBody::Stalled`].
    TooLong,
}

impl SlowBody {
    fn check(self) -> &'static str {
        match self {
            SlowBody::NoToken => "slow publish body, no token: 401 before the body",
            SlowBody::WrongToken => "slow publish body, wrong token: 401 before the body",
            SlowBody::Stalled => "slow publish body, valid token: connection cut",
            SlowBody::TooLong => "slow publish body over the limit: 413 or cut",
        }
    }
}

/// Sends a publish request's headers and the first bytes of a large body, then nothing.
pub async fn slow_body(env: Arc<Env>, kind: SlowBody) {
    env.opened();
    let result = async {
        let mut tcp = timeout(ANSWER, TcpStream::connect(env.addr))
            .await
            .map_err(|_| "no connect".to_owned())?
            .map_err(|e| e.to_string())?;
        let (auth, length) = match kind {
            SlowBody::NoToken => (String::new(), 2_000_000),
            SlowBody::WrongToken => ("Authorization: Bearer not-the-token-at-all\r\n".to_owned(), 2_000_000),
            SlowBody::Stalled => (format!("Authorization: Bearer {}\r\n", env.token), 2_000_000),
            SlowBody::TooLong => (format!("Authorization: Bearer {}\r\n", env.token), 100_000_000),
        };
        let head = format!(
            "POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}Content-Length: {length}\r\n\r\n[{{\"site\":\"vo"
        );
        tcp.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        match kind {
            SlowBody::NoToken | SlowBody::WrongToken => {
                let head = response_head(&mut tcp, ANSWER).await?;
                if head.starts_with("HTTP/1.1 401") { Ok(()) } else { Err(format!("answered {:?}", head.lines().next())) }
            }
            SlowBody::Stalled | SlowBody::TooLong => {
                // No body deadline is documented; any that ends before the soak's does. A refusal
                // (413, 408, 400) counts as well as a close.
                let head = response_head(&mut tcp, env.hard_deadline.saturating_duration_since(Instant::now()))
                    .await
                    .map_err(|_| "still open at the soak's end".to_owned())?;
                if head.starts_with("HTTP/1.1 2") { Err(format!("answered {:?}", head.lines().next())) } else { Ok(()) }
            }
        }
    }
    .await;
    env.tally.record(kind.check(), result);
}

/// Publishes bodies of 14 large messages to sites nobody reads, while the soak runs: accepted
/// (202), and what they took is released with the history (short in the soak).
pub async fn unread_publisher(env: Arc<Env>) {
    const CHECK: &str = "large bodies to unread sites: accepted";
    let client = reqwest::Client::new();
    let mut round = 0usize;
    while !env.stop.is_cancelled() && round < 20 {
        round += 1;
        let site = format!("unread-{}", round % 3);
        let item = format!(r#"{{"site":"{site}","topic":"big","data":"{}"}}"#, "u".repeat(LARGE_PAD));
        let body = format!("[{}]", vec![item; 14].join(","));
        let sent = client.post(format!("http://{}/publish", env.addr)).bearer_auth(&env.token).body(body).send();
        let result = match timeout(ANSWER, sent).await {
            Ok(Ok(resp)) if resp.status().as_u16() == 202 => Ok(()),
            Ok(Ok(resp)) => Err(format!("answered {}", resp.status())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer".to_owned()),
        };
        env.tally.record(CHECK, result);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
}
