//! A connection's TCP stream, shared by the HTTP and WebSocket stack (which reads and writes it
//! through [`serve`](crate::serve)'s `Lingering`) and by the hub's fan-out, which writes
//! publications straight to subscribers' sockets ([`crate::hub::Batch`]).
//!
//! Two writers must never interleave their bytes inside one WebSocket frame. Once a connection is a
//! WebSocket, [`Wire::set_frames`] makes every write *whole*: what the kernel does not take at once
//! is kept, in order, in the wire's backlog, and a write never returns half done. The backlog is
//! sent by [`Wire::poll_flush`], which the session drives (its socket's flush, or its inbox's
//! backlog event).

use std::{
    io,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use tokio::{io::ReadBuf, net::TcpStream};
use tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Data, OpCode},
};

/// A backlog buffer larger than this is freed once sent, rather than kept for the next backlog:
/// most connections never have one, and memory per connection is what limits a node.
const KEEP_BACKLOG_CAPACITY: usize = 4096;

/// One TCP connection, shareable between tasks.
#[derive(Debug)]
pub struct Wire {
    stream: TcpStream,
    /// Writes are whole (see the module doc). Read without the lock on every write, so plain
    /// HTTP connections never take it.
    frames: AtomicBool,
    backlog: Mutex<Backlog>,
}

#[derive(Debug, Default)]
struct Backlog {
    /// Bytes accepted but not yet taken by the kernel, oldest first.
    bytes: BytesMut,
    /// The connection was closed: writes fail.
    closed: bool,
}

impl Wire {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream) -> Self {
        Wire { stream, frames: AtomicBool::new(false), backlog: Mutex::default() }
    }

    fn backlog(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every later write whole. Call once the connection carries WebSocket frames and
    /// before a second writer (the fan-out) may write.
    pub fn set_frames(&self) {
        self.frames.store(true, Ordering::Release);
    }

    /// Waits for the first bytes and reads them without taking them.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.peek(buf).await
    }

    /// Marks the connection closed: later writes fail with `NotConnected`.
    pub fn close(&self) {
        self.backlog().closed = true;
    }

    /// Writes `bytes` whole: sends what the kernel takes now and keeps the rest, in order, for
    /// [`Wire::poll_flush`]. Returns the backlog's size afterwards (0: all sent).
    pub fn write_whole(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut backlog = self.backlog();
        self.write_locked(&mut backlog, bytes)?;
        Ok(backlog.bytes.len())
    }

    fn write_locked(&self, backlog: &mut Backlog, bytes: &[u8]) -> io::Result<()> {
        if backlog.closed {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let sent = if backlog.bytes.is_empty() {
            match self.stream.try_write(bytes) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            }
        } else {
            0
        };
        backlog.bytes.extend_from_slice(&bytes[sent..]);
        Ok(())
    }

    /// Sends the backlog; ready once it is empty.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            {
                let mut backlog = self.backlog();
                if backlog.bytes.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                match self.stream.try_write(&backlog.bytes) {
                    Ok(n) => {
                        backlog.bytes.advance(n);
                        if backlog.bytes.is_empty() && backlog.bytes.capacity() > KEEP_BACKLOG_CAPACITY {
                            backlog.bytes = BytesMut::new();
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            // Outside the lock: the fan-out may add to the backlog meanwhile.
            ready!(self.stream.poll_write_ready(cx))?;
        }
    }

    /// Reads into `buf` (the `AsyncRead` contract).
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was cleared: the next poll registers for the next event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes from `bufs` (the `AsyncWrite` contract). Whole once [`Wire::set_frames`] was called.
    pub fn poll_write_vectored(&self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.frames.load(Ordering::Acquire) {
            let mut backlog = self.backlog();
            for buf in bufs {
                self.write_locked(&mut backlog, buf)?;
            }
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    /// Sends the backlog, then shuts the sending side down (FIN).
    pub fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write))
    }
}

/// Appends a WebSocket text frame (server to client: unmasked) carrying `parts` joined by `\n`.
pub fn text_frame<'a>(out: &mut Vec<u8>, parts: impl Iterator<Item = &'a [u8]> + Clone) {
    let mut len = 0;
    for (i, part) in parts.clone().enumerate() {
        len += part.len() + usize::from(i > 0);
    }
    let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
    // Writing to a Vec cannot fail.
    let _ = header.format(len as u64, out);
    for (i, part) in parts.enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(part);
    }
}

/// Decodes the complete text frames at the start of `bytes` the way a client does.
#[cfg(test)]
pub(crate) fn decode_text_frames(bytes: &[u8]) -> Vec<String> {
    use tungstenite::protocol::{Message, Role, WebSocket};
    let mut ws = WebSocket::from_raw_socket(io::Cursor::new(bytes.to_vec()), Role::Client, None);
    let mut out = Vec::new();
    while let Ok(Message::Text(t)) = ws.read() {
        out.push(t.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_decode_as_one_message_each() {
        let mut out = Vec::new();
        text_frame(&mut out, [&b"a"[..]].into_iter());
        text_frame(&mut out, [&b"{\"x\":1}"[..], b"{\"y\":2}"].into_iter());
        let big = "z".repeat(70_000);
        text_frame(&mut out, [big.as_bytes()].into_iter());
        let medium = "m".repeat(300);
        text_frame(&mut out, [medium.as_bytes()].into_iter());
        assert_eq!(decode_text_frames(&out), ["a".to_owned(), "{\"x\":1}\n{\"y\":2}".to_owned(), big, medium]);
    }
}
