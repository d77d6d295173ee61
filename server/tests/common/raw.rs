//! A WebSocket client that speaks raw bytes, to check behaviour on the wire (RFC 6455) rather
//! than through a tolerant client library.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::within;

/// A frame as the server sent it.
#[derive(Debug)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// A WebSocket client that speaks raw bytes.
pub struct RawWs {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl RawWs {
    /// Opens `path` with `extra` request headers; returns the client once the 101 was read.
    pub async fn open(addr: SocketAddr, path: &str, extra: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut ws = RawWs { stream, buf: Vec::new() };
        let head = within(ws.read_until_headers_end()).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws
    }

    pub async fn read_until_headers_end(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return head;
            }
            self.fill().await.expect("connection closed during the handshake");
        }
    }

    /// Reads more bytes; `None` at EOF.
    pub async fn fill(&mut self) -> Option<usize> {
        let mut chunk = vec![0u8; 64 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(n)
            }
        }
    }

    /// The next frame, or `None` at EOF.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            self.fill().await?;
        }
    }

    /// The next frame that is not a ping.
    pub async fn next_non_ping(&mut self) -> Option<Frame> {
        loop {
            let frame = within(self.frame()).await?;
            if frame.opcode != 0x9 {
                return Some(frame);
            }
        }
    }

    /// Sends one masked frame (every client frame is masked).
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.stream.write_all(&client_frame(0x80 | opcode, payload)).await.unwrap();
    }
}

/// Decodes one server frame (unmasked) from the start of `bytes`.
pub fn parse_frame(bytes: &[u8]) -> Option<(Frame, usize)> {
    if bytes.len() < 2 {
        return None;
    }
    assert_eq!(bytes[1] & 0x80, 0, "server frames are never masked");
    let (len, at) = match bytes[1] & 0x7f {
        126 => (u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = bytes.get(at..at + len)?.to_vec();
    Some((Frame { opcode: bytes[0] & 0x0f, payload }, at + len))
}

pub fn close_code(frame: &Frame) -> u16 {
    assert_eq!(frame.opcode, 0x8, "expected a close frame, got {frame:?}");
    u16::from_be_bytes([frame.payload[0], frame.payload[1]])
}

impl RawWs {
    /// Opens `path` and returns the response head, whatever its status.
    pub async fn try_open(addr: SocketAddr, path: &str, key: &str, extra: &str) -> (String, RawWs) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut ws = RawWs { stream, buf: Vec::new() };
        let head = within(ws.read_until_headers_end()).await;
        (head, ws)
    }

    /// Sends raw bytes as they are (a frame built by hand, maybe broken on purpose).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }
}

/// One masked client frame: `first` is the first byte (FIN, RSV bits, opcode) as given.
pub fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x9au8, 0x3c, 0x51, 0xe7];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
