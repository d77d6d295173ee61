//! A connection's TCP stream, shared by the HTTP and WebSocket stack (which reads and writes it
//! through [`serve`](crate::serve)'s `Lingering`) and by the hub's fan-out, which writes
//! publications straight to subscribers' sockets ([`crate::hub::Batch`]).
//!
//! Two writers must never interleave their bytes inside one WebSocket frame. Once a connection is a
//! WebSocket, [`Wire::set_frames`] makes every write *whole*: what the kernel does not take at once
//! is kept, in order, as the wire's *unsent* bytes, and a write never returns half done. They are
//! sent by [`Wire::poll_flush`], which the session drives (its socket's flush, or its inbox's
//! [`Unsent`](crate::hub::Event::Unsent) event), and they count in the connection's byte budget.
//!
//! The budget holds for the session's own writes too — replies, replays, heartbeats, close frames,
//! and the pongs the WebSocket layer sends by itself for every ping a client sends: a write that
//! would take the unsent bytes past the budget waits until the socket has taken enough (the
//! WebSocket layer then keeps what it could not write, and answers only the latest of the pings
//! that arrive meanwhile, as RFC 6455 §5.5.3 allows). The fan-out checks the budget itself
//! before it writes ([`crate::hub::Outbox`]). A connection that owes nothing takes any one write,
//! whatever its size: a publication larger than the budget still reaches a client that reads.

use std::{
    io,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use tokio::{io::ReadBuf, net::TcpStream};

/// An unsent buffer larger than this is freed once sent, rather than kept for the next time:
/// most connections never have one, and memory per connection is what limits a node.
const KEEP_UNSENT_CAPACITY: usize = 4096;

/// One TCP connection, shareable between tasks.
#[derive(Debug)]
pub struct Wire {
    stream: TcpStream,
    /// Writes are whole (see the module doc). Read without the lock on every write, so plain
    /// HTTP connections never take it.
    frames: AtomicBool,
    /// Most unsent bytes the session's writes may leave (the connection's byte budget); set with
    /// `frames`.
    budget: AtomicUsize,
    unsent: Mutex<Unsent>,
    /// How many bytes `unsent` holds, readable without its lock: the byte budget reads it on
    /// every delivery.
    unsent_len: AtomicUsize,
}

#[derive(Debug, Default)]
struct Unsent {
    /// Bytes accepted but not yet taken by the kernel, oldest first.
    bytes: BytesMut,
    /// The connection was closed: writes fail.
    closed: bool,
}

impl Wire {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream) -> Self {
        Wire {
            stream,
            frames: AtomicBool::new(false),
            budget: AtomicUsize::new(usize::MAX),
            unsent: Mutex::default(),
            unsent_len: AtomicUsize::new(0),
        }
    }

    fn locked(&self) -> MutexGuard<'_, Unsent> {
        self.unsent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes written but not yet taken by the kernel.
    pub fn unsent(&self) -> usize {
        self.unsent_len.load(Ordering::Acquire)
    }

    /// Makes every later write whole, and the session's writes wait while the unsent bytes would
    /// pass `budget`. Call once the connection carries WebSocket frames and before a second
    /// writer (the fan-out) may write.
    pub fn set_frames(&self, budget: usize) {
        self.budget.store(budget, Ordering::Relaxed);
        self.frames.store(true, Ordering::Release);
    }

    /// Whether the connection carries WebSocket frames ([`Wire::set_frames`]).
    pub fn carries_frames(&self) -> bool {
        self.frames.load(Ordering::Relaxed)
    }

    /// Waits for the first bytes and reads them without taking them.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.peek(buf).await
    }

    /// Marks the connection closed: later writes fail with `NotConnected`.
    pub fn close(&self) {
        self.locked().closed = true;
    }

    /// Writes `bytes` whole: sends what the kernel takes now and keeps the rest, in order, for
    /// [`Wire::poll_flush`]. Returns how many bytes are unsent afterwards (0: all sent).
    pub fn write_whole(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut unsent = self.locked();
        self.write_locked(&mut unsent, bytes)?;
        Ok(unsent.bytes.len())
    }

    fn write_locked(&self, unsent: &mut Unsent, bytes: &[u8]) -> io::Result<()> {
        if unsent.closed {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let sent = if unsent.bytes.is_empty() {
            match self.stream.try_write(bytes) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            }
        } else {
            0
        };
        unsent.bytes.extend_from_slice(&bytes[sent..]);
        self.unsent_len.store(unsent.bytes.len(), Ordering::Release);
        Ok(())
    }

    /// Sends the unsent bytes; ready once there are none.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            {
                let mut unsent = self.locked();
                self.send_unsent(&mut unsent)?;
                if unsent.bytes.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
            // Outside the lock: the fan-out may add to the unsent bytes meanwhile.
            ready!(self.stream.poll_write_ready(cx))?;
        }
    }

    /// Gives the kernel as much of the unsent bytes as it takes now.
    fn send_unsent(&self, unsent: &mut Unsent) -> io::Result<()> {
        while !unsent.bytes.is_empty() {
            match self.stream.try_write(&unsent.bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    unsent.bytes.advance(n);
                    self.unsent_len.store(unsent.bytes.len(), Ordering::Release);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if unsent.bytes.is_empty() && unsent.bytes.capacity() > KEEP_UNSENT_CAPACITY {
            unsent.bytes = BytesMut::new();
        }
        Ok(())
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

    /// Writes from `bufs` (the `AsyncWrite` contract). Once [`Wire::set_frames`] was called, whole,
    /// and pending while they would take the unsent bytes past the budget (module doc).
    pub fn poll_write_vectored(&self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.frames.load(Ordering::Acquire) {
            let len: usize = bufs.iter().map(|b| b.len()).sum();
            let budget = self.budget.load(Ordering::Relaxed);
            loop {
                {
                    let mut unsent = self.locked();
                    if unsent.bytes.is_empty() || unsent.bytes.len().saturating_add(len) <= budget {
                        for buf in bufs {
                            self.write_locked(&mut unsent, buf)?;
                        }
                        return Poll::Ready(Ok(len));
                    }
                    // Over the budget: let the socket take what it can before waiting for it.
                    self.send_unsent(&mut unsent)?;
                    if unsent.bytes.is_empty() || unsent.bytes.len() + len <= budget {
                        continue;
                    }
                }
                ready!(self.stream.poll_write_ready(cx))?;
            }
        }
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    /// Sends the unsent bytes, then shuts the sending side down (FIN).
    pub fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write))
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
