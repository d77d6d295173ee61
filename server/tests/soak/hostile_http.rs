//! Hostile clients that cost the relay memory or sockets without breaking any rule outright:
//! ping floods, readers of large `GET …/latest` answers (and of `/metrics`) who never read them,
//! keep-alive hoarders, and connections that stall in their PROXY header (against a second relay
//! that requires one).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::{Instant, timeout},
};

use crate::{Env, hostile_raw::handshake};

/// Bounds waits that the relay answers at once.
const ANSWER: Duration = Duration::from_secs(10);

/// The site whose latest values are large: [`LATEST_TOPICS`] values of [`LATEST_BYTES`] each.
pub const LATEST_SITE: &str = "soak-latest";
pub const LATEST_TOPICS: usize = 60;
pub const LATEST_BYTES: usize = 200_000;

/// Readers of the large answer at once.
pub const LATEST_READERS: usize = 4;

/// How long a reader of the large answer waits without reading: past the write deadline (the
/// client timeout, 3 s).
const UNREAD: Duration = Duration::from_secs(8);

/// One masked ping frame with a 125-byte payload.
fn ping() -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x89, 0x80 | 125];
    frame.extend_from_slice(&mask);
    frame.extend((0..125).map(|i| b'p' ^ mask[i % 4]));
    frame
}

/// Reads the handshake's answer, then server frames (unmasked) until a close frame; its code, or
/// why there was none.
async fn close_code(tcp: &mut TcpStream, limit: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut upgraded = false;
    loop {
        if !upgraded && let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Err(format!("answered {:?}", String::from_utf8_lossy(&buf[..end])));
            }
            buf.drain(..end + 4);
            upgraded = true;
        }
        // Whole frames at the start of the buffer.
        while upgraded && buf.len() >= 2 {
            let (len, at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap_or_default()) as usize, 10),
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if buf.len() < at + len {
                break;
            }
            if buf[0] & 0x0f == 0x8 {
                return if len >= 2 { Ok(u16::from_be_bytes([buf[at], buf[at + 1]])) } else { Ok(1005) };
            }
            buf.drain(..at + len);
        }
        match timeout(deadline.saturating_duration_since(Instant::now()), tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err("ended without a close frame".to_owned()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err("no close frame in time".to_owned()),
        }
    }
}

/// Floods a WebSocket with pings as fast as it can: control frames count toward the frame
/// rate, so the relay closes it as a misbehaving client (3500) after the burst.
pub async fn ping_flood(env: Arc<Env>, v2: bool) {
    const CHECK: &str = "ping flood: close 3500";
    let flood: Vec<u8> = (0..2000).flat_map(|_| ping()).collect();
    while !env.stop.is_cancelled() {
        env.opened();
        let result = async {
            let mut tcp = timeout(ANSWER, TcpStream::connect(env.addr))
                .await
                .map_err(|_| "no connect".to_owned())?
                .map_err(|e| e.to_string())?;
            tcp.write_all(handshake(v2).as_bytes()).await.map_err(|e| e.to_string())?;
            // The relay may close before it has read the whole flood: a failed write is fine.
            let _ = tcp.write_all(&flood).await;
            match close_code(&mut tcp, ANSWER).await? {
                3500 => Ok(()),
                code => Err(format!("closed with {code}")),
            }
        }
        .await;
        env.tally.record(CHECK, result);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Publishes the large latest values the slow readers ask for.
pub async fn publish_large_latest(addr: SocketAddr, token: &str) {
    let client = reqwest::Client::new();
    for t in 0..LATEST_TOPICS {
        let body = format!(r#"{{"site":"{LATEST_SITE}","topic":"t{t}","data":"{}"}}"#, "l".repeat(LATEST_BYTES));
        let resp = client.post(format!("http://{addr}/publish")).bearer_auth(token).body(body).send().await;
        assert_eq!(resp.map(|r| r.status().as_u16()).ok(), Some(202), "large latest value {t}");
    }
}

/// Sends `request` from a socket with a small receive window and reads nothing for `unread`;
/// then reads to the end and returns how many bytes came. A relay that let go of the response
/// after its write deadline ends the connection long before the whole answer.
async fn unread_response(addr: SocketAddr, request: &str, unread: Duration) -> Result<usize, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket.set_recv_buffer_size(4096).map_err(|e| e.to_string())?;
    let mut tcp =
        timeout(ANSWER, socket.connect(addr)).await.map_err(|_| "no connect".to_owned())?.map_err(|e| e.to_string())?;
    tcp.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    tokio::time::sleep(unread).await;
    let mut total = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + ANSWER;
    loop {
        match timeout(deadline.saturating_duration_since(Instant::now()), tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(total),
            Ok(Ok(n)) => total += n,
            Err(_) => return Err(format!("still open after {total} bytes")),
        }
    }
}

/// Asks for the large latest values and never reads them: the relay writes them one value at a
/// time as the socket takes them, and lets go after its write deadline.
pub async fn slow_latest_reader(env: Arc<Env>) {
    const CHECK: &str = "unread GET …/latest: let go after the write deadline";
    let whole = LATEST_TOPICS * LATEST_BYTES;
    env.opened();
    let request = format!("GET /sites/{LATEST_SITE}/latest HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let result = match unread_response(env.addr, &request, UNREAD).await {
        Ok(n) if n < whole => Ok(()),
        Ok(n) => Err(format!("the whole answer ({n} bytes) was still written")),
        Err(e) => Err(e),
    };
    env.tally.record(CHECK, result);
}

/// Asks for `/metrics` and reads nothing for a while: the answer is small, and the idle
/// keep-alive connection is closed after the handshake timeout.
pub async fn slow_metrics_reader(env: Arc<Env>) {
    const CHECK: &str = "unread /metrics: answered, then closed when idle";
    while !env.stop.is_cancelled() {
        env.opened();
        let result =
            unread_response(env.addr, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", Duration::from_secs(3))
                .await
                .and_then(|n| if n > 0 { Ok(()) } else { Err("no answer".to_owned()) });
        env.tally.record(CHECK, result);
    }
}

/// Holds keep-alive connections open after one request each: every one is closed once idle for
/// the handshake timeout (1 s).
pub async fn keep_alive_hoarder(env: Arc<Env>) {
    const CHECK: &str = "keep-alive hoarder: closed when idle";
    const HELD: usize = 10;
    while !env.stop.is_cancelled() {
        let mut held = Vec::new();
        for _ in 0..HELD {
            env.opened();
            let Ok(Ok(mut tcp)) = timeout(ANSWER, TcpStream::connect(env.addr)).await else {
                env.tally.fail(CHECK, "no connect");
                continue;
            };
            let mut buf = vec![0u8; 4096];
            let answered = async {
                tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.ok()?;
                let n = timeout(ANSWER, tcp.read(&mut buf)).await.ok()?.ok()?;
                buf[..n].starts_with(b"HTTP/1.1 200").then_some(())
            };
            match answered.await {
                Some(()) => held.push(tcp),
                None => env.tally.fail(CHECK, "not answered"),
            }
        }
        let since = Instant::now();
        for mut tcp in held {
            let mut buf = [0u8; 64];
            let closed = matches!(timeout(Duration::from_secs(5), tcp.read(&mut buf)).await, Ok(Ok(0) | Err(_)));
            env.tally
                .record(CHECK, if closed { Ok(()) } else { Err(format!("open {:?} after idling", since.elapsed())) });
        }
    }
}

/// Where a connection to the relay that requires a PROXY header stalls.
#[derive(Debug, Clone, Copy)]
pub enum ProxyStall {
    /// Half the header's fixed part.
    HalfHeader,
    /// A whole header, then nothing.
    Header,
    /// A whole header and half a request.
    HalfRequest,
}

/// A PROXY v2 header for a client at 203.0.113.7.
fn proxy_header() -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 7, 127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90]);
    out
}

/// Stalls in the PROXY header or right after it, against the relay at `addr` (which requires
/// one): each connection is closed once the handshake deadline (1 s, counted from the accept)
/// passes, whatever it sent meanwhile.
pub async fn proxy_staller(env: Arc<Env>, addr: SocketAddr, stall: ProxyStall) {
    const CHECK: &str = "PROXY staller: closed at the handshake deadline";
    while !env.stop.is_cancelled() {
        env.opened();
        let result = async {
            let mut tcp = timeout(ANSWER, TcpStream::connect(addr))
                .await
                .map_err(|_| "no connect".to_owned())?
                .map_err(|e| e.to_string())?;
            let start = Instant::now();
            let header = proxy_header();
            let sent = match stall {
                ProxyStall::HalfHeader => header[..8].to_vec(),
                ProxyStall::Header => header,
                ProxyStall::HalfRequest => [header, b"GET /healthz HTTP/1.1\r\nHo".to_vec()].concat(),
            };
            // Sent late in the deadline: it must not start another.
            tokio::time::sleep(Duration::from_millis(900)).await;
            tcp.write_all(&sent).await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 256];
            loop {
                match timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => break,
                    Ok(Ok(_)) => {}
                    Err(_) => return Err(format!("{stall:?}: still open after 5 s")),
                }
            }
            // One deadline (1 s) from the accept, with room for a loaded machine; a second
            // deadline started by what came at 0.9 s would hold it to 1.9 s.
            let held = start.elapsed();
            if held < Duration::from_millis(1600) { Ok(()) } else { Err(format!("{stall:?}: held {held:?}")) }
        }
        .await;
        env.tally.record(CHECK, result);
    }
}
