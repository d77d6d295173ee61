//! The HTTP accept loop. Like `axum::serve`, but with what a public server needs that it lacks: a
//! deadline for the request headers (so a client that connects and says nothing cannot hold a
//! socket: `DATASTREAM_HANDSHAKE_TIMEOUT`), `TCP_NODELAY` on every connection (frames leave at
//! once rather than waiting on Nagle), a graceful stop for plain HTTP connections, and a lingering
//! close ([`Lingering`]). Upgraded WebSockets are tracked by the sessions themselves.

use std::{
    future::poll_fn,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::{Request, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::warn;

use crate::{proxy_protocol::Listener, wire::Wire};

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a closed connection keeps reading (and discarding) what the client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// Most bytes a closed connection reads and discards before it gives up lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// Serves `router` on `listener` until `stop` is cancelled; then waits up to `grace` for open
/// HTTP requests to finish.
pub async fn serve(
    mut listener: Listener,
    router: Router,
    handshake_timeout: Duration,
    stop: CancellationToken,
    grace: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(handshake_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let wire = Arc::new(Wire::new(stream));
        let service_wire = wire.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            // A WebSocket's session takes the wire, so the fan-out can write to it directly.
            req.extensions_mut().insert(service_wire.clone());
            router.clone().oneshot(req)
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // hyper's header deadline covers an HTTP/1 request once it is recognised as one; the
            // bytes before that (nothing at all, or the start of an HTTP/2 preface, which hyper
            // waits on for ever) get the same deadline here. HTTP/2 is not served.
            if tokio::time::timeout(handshake_timeout, http1_start(&wire)).await != Ok(true) {
                return;
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(Lingering(wire)), service);
            // Errors here are one client's (reset, bad request, header timeout): nothing to do.
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        warn!("HTTP connections still open after the grace period; dropping them");
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often [`http1_start`] looks again at a connection whose first bytes are still undecided.
const START_POLL: Duration = Duration::from_millis(20);

/// Waits until the client's first bytes tell an HTTP/1 request (true) from an HTTP/2 preface or a
/// closed connection (false), without taking them. Bounded by the caller's deadline: a client
/// that stops half-way through the preface's first bytes is not waited on for ever.
async fn http1_start(wire: &Wire) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = match wire.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return true;
        }
        if n == H2_PREFACE.len() {
            return false;
        }
        // A prefix of the preface so far: the rest has not arrived.
        tokio::time::sleep(START_POLL).await;
    }
}

/// A connection that closes gracefully: when dropped, it sends what it still holds, then FIN, and
/// keeps reading (and discarding) what the client still sends for up to [`LINGER`] /
/// [`LINGER_BYTES`], off the caller's task.
///
/// Closing a socket that has unread data makes the kernel answer with a reset, and a reset can
/// overtake the last frames sent: a browser whose oversized frame was refused, or which was still
/// sending when the relay closed it, would see 1006 instead of the close frame before it (the
/// same reason HTTP servers linger on close).
struct Lingering(Arc<Wire>);

impl Drop for Lingering {
    fn drop(&mut self) {
        let wire = self.0.clone();
        // The fan-out may hold the wire a moment longer; nothing is written after this.
        wire.close();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, async {
                if poll_fn(|cx| wire.poll_shutdown(cx)).await.is_err() {
                    return;
                }
                let mut sink = [0u8; 2048];
                let mut read = 0;
                while read < LINGER_BYTES {
                    let mut buf = ReadBuf::new(&mut sink);
                    match poll_fn(|cx| wire.poll_read(cx, &mut buf)).await {
                        Ok(()) if !buf.filled().is_empty() => read += buf.filled().len(),
                        _ => return,
                    }
                }
            })
            .await;
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.0.poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.0.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_shutdown(cx)
    }
}
