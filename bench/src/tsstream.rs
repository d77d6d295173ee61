//! A TCP stream that remembers when the kernel received the bytes of its latest read.
//!
//! The socket has `SO_TIMESTAMPNS` on, and every read goes through `recvmsg`, which hands back the
//! kernel's receive time of the data as a control message. Latency measured against that time does
//! not include how long the bytes waited for the load tool to get round to reading them.

use std::{
    io::{self, IoSliceMut},
    os::fd::AsRawFd,
    pin::Pin,
    task::{Context, Poll, ready},
};

use nix::sys::{
    socket::{self, ControlMessageOwned, MsgFlags, sockopt},
    time::TimeSpec,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::TcpStream,
};

/// A [`TcpStream`] whose reads record the kernel receive timestamp.
#[derive(Debug)]
pub(crate) struct TsStream {
    inner: TcpStream,
    /// Room for one `SCM_TIMESTAMPNS` control message, reused by every read.
    cmsg: Vec<u8>,
    /// Kernel receive time (ns since the Unix epoch) of the latest read that carried one.
    last_ns: u64,
}

impl TsStream {
    /// Turns kernel receive timestamps on for `inner`.
    pub(crate) fn new(inner: TcpStream) -> io::Result<Self> {
        socket::setsockopt(&inner, sockopt::ReceiveTimestampns, &true)?;
        inner.set_nodelay(true)?;
        Ok(TsStream { inner, cmsg: nix::cmsg_space!(TimeSpec), last_ns: 0 })
    }

    /// Kernel receive time of the bytes returned by the latest read, in ns since the Unix epoch
    /// (0 before the first read).
    pub(crate) fn last_ns(&self) -> u64 {
        self.last_ns
    }
}

// `recvmsg` takes the control-message buffer as a `Vec` (it sets its length).
#[allow(clippy::ptr_arg)]
fn recv(fd: i32, dst: &mut [u8], cmsg: &mut Vec<u8>) -> io::Result<(usize, u64)> {
    let mut iov = [IoSliceMut::new(dst)];
    let msg = socket::recvmsg::<()>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)?;
    let mut ts = 0;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(t) = c {
                ts = u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0);
            }
        }
    }
    Ok((msg.bytes, ts))
}

impl AsyncRead for TsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let fd = this.inner.as_raw_fd();
            let cmsg = &mut this.cmsg;
            let dst = buf.initialize_unfilled();
            match this.inner.try_io(Interest::READABLE, || recv(fd, dst, cmsg)) {
                Ok((n, ts)) => {
                    if ts != 0 {
                        this.last_ns = ts;
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
