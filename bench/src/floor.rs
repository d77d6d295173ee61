//! `loadgen floor`: the least work any server can do for the benchmark's workloads — the floor
//! under every server's CPU and latency figures on this machine.
//!
//! It speaks just enough of the relay's legacy protocol for the load tool (`/dev?site=X`
//! WebSocket upgrades, pipelined `POST /publish` with one JSON message or an array) and nothing
//! else: one thread, blocking sockets, no event loop, no per-connection state but the socket, no
//! validation, no history. Each batch of publications it has read is turned into ready-made
//! WebSocket frames once per site, and each subscriber of the site gets them with one blocking
//! `write` — one system call per subscriber per batch, the fewest a server that does not hold
//! messages back can make. Under load, the requests that arrived together form one batch (the
//! relay does the same by writing whatever is queued for a connection in one go).
//!
//! What it costs per delivery is what the kernel charges for a loopback TCP write (including,
//! on loopback, the receiving socket's input path and the wake-up of the reader) plus a few
//! hundred nanoseconds; `bench/run.sh` runs it as the `floor` target next to the real servers.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The site of a published message; the rest of it is passed on untouched.
#[derive(Deserialize)]
struct Site<'a> {
    #[serde(borrow)]
    site: &'a str,
}

/// Runs the floor server on `listen` until it is killed.
pub(crate) fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    let mut sites: HashMap<String, Vec<TcpStream>> = HashMap::new();
    loop {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buf = Vec::with_capacity(1024);
        let head_len = match read_head(&mut stream, &mut buf) {
            Ok(n) => n,
            Err(_) => continue,
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        if head.starts_with("POST ") {
            // The publisher: serve it until it hangs up, then accept again.
            if let Err(e) = publish_loop(stream, buf, &mut sites) {
                eprintln!("floor: publisher: {e:#}");
            }
            sites.values_mut().for_each(|subs| subs.retain(|s| s.peer_addr().is_ok()));
        } else if let Some((site, key)) = upgrade(&head) {
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            if stream.write_all(answer.as_bytes()).is_ok() {
                sites.entry(site).or_default().push(stream);
            }
        } else {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    }
}

/// Reads until the end of an HTTP head; returns its length (bytes after it stay in `buf`).
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(i + 4);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before the end of the head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The site and `Sec-WebSocket-Key` of a WebSocket upgrade request.
fn upgrade(head: &str) -> Option<(String, String)> {
    let path = head.split_whitespace().nth(1)?;
    let site = path.split_once("site=")?.1.split('&').next()?.to_owned();
    let key = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_owned())
    })?;
    Some((site, key))
}

/// Appends one unmasked WebSocket text frame.
fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Reads pipelined `POST /publish` requests; fans every batch of complete requests out.
fn publish_loop(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    sites: &mut HashMap<String, Vec<TcpStream>>,
) -> anyhow::Result<()> {
    let mut chunk = vec![0u8; 256 * 1024];
    let mut frames: HashMap<String, Vec<u8>> = HashMap::new();
    loop {
        // Every complete request in the buffer belongs to this batch.
        let mut answered = 0usize;
        let mut used = 0usize;
        while let Some((len, body)) = request(&buf[used..])? {
            let body = &buf[used + body.0..used + body.1];
            let messages: Vec<&RawValue> = if body.first() == Some(&b'[') {
                serde_json::from_slice(body)?
            } else {
                vec![serde_json::from_slice(body)?]
            };
            for m in messages {
                let site: Site<'_> = serde_json::from_str(m.get())?;
                match frames.get_mut(site.site) {
                    Some(out) => frame(out, m.get().as_bytes()),
                    None => frame(frames.entry(site.site.to_owned()).or_default(), m.get().as_bytes()),
                }
            }
            used += len;
            answered += 1;
        }
        for (site, out) in frames.iter_mut().filter(|(_, out)| !out.is_empty()) {
            for sub in sites.get(site).into_iter().flatten() {
                // A subscriber that went away is the load tool's business, not the floor's.
                let _ = write_all(sub, out);
            }
            out.clear();
        }
        if answered > 0 {
            stream.write_all(&b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".repeat(answered))?;
            buf.drain(..used);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn write_all(mut sub: &TcpStream, out: &[u8]) -> io::Result<()> {
    sub.write_all(out)
}

/// A complete request at the start of `buf`: its length and the body's range.
fn request(buf: &[u8]) -> anyhow::Result<Option<(usize, (usize, usize))>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buf[..end]).context("request head is not UTF-8")?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .context("request without Content-Length")?;
    let body = end + 4;
    Ok((buf.len() >= body + len).then_some((body + len, (body, body + len))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_payload_with_the_right_length_encoding() {
        let mut out = Vec::new();
        frame(&mut out, b"hi");
        assert_eq!(out, b"\x81\x02hi");
        let mut out = Vec::new();
        frame(&mut out, &[b'x'; 200]);
        assert_eq!(&out[..4], &[0x81, 126, 0, 200]);
        assert_eq!(out.len(), 204);
    }

    #[test]
    fn a_request_is_complete_only_with_its_whole_body() {
        let req = b"POST /publish HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(request(&req[..req.len() - 1]).expect("a valid head"), None);
        let (len, (a, b)) = request(req).expect("a valid head").expect("complete");
        assert_eq!((len, &req[a..b]), (req.len(), &b"hello"[..]));
    }

    #[test]
    fn upgrades_name_their_site_and_key() {
        let head = "GET /dev?site=s7 HTTP/1.1\r\nHost: x\r\nsec-websocket-key: abc==\r\n\r\n";
        assert_eq!(upgrade(head), Some(("s7".into(), "abc==".into())));
        assert_eq!(upgrade("GET /dev HTTP/1.1\r\n\r\n"), None);
    }
}
