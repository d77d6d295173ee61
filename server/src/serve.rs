//! The HTTP accept loop. Like `axum::serve`, but with what a public server needs that it lacks:
//!
//! - **One deadline for the handshake** (`DATASTREAM_HANDSHAKE_TIMEOUT`), from the moment the TCP
//!   connection is accepted until its first request's headers are in — whatever comes first (a
//!   PROXY header, nothing at all, the start of an HTTP/2 preface, a request dribbled a byte at a
//!   time). Later requests on a keep-alive connection get the same time for their headers, which
//!   is also the longest an idle keep-alive connection is kept.
//! - **Counted, capped connections**: every plain HTTP connection takes a place among
//!   `DATASTREAM_MAX_HTTP_CONNECTIONS` (and `DATASTREAM_MAX_HTTP_CONNECTIONS_PER_IP` for its
//!   address) when accepted, before a byte is read; past either it is answered 503 / 429 and
//!   closed at once. A WebSocket gives its place back once upgraded (its session counts it then).
//! - **A write deadline for every response**: a response whose writing makes no progress for
//!   `DATASTREAM_CLIENT_TIMEOUT` (a client that does not read it) is abandoned and the connection
//!   closed, so a slow reader holds neither memory nor a connection for long.
//! - `TCP_NODELAY` on every connection (frames leave at once rather than waiting on Nagle), a
//!   graceful stop for plain HTTP connections, and a lingering close ([`Connection`]).
//!
//! Upgraded WebSockets are tracked by the sessions themselves.

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
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::{Instant, Sleep},
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::{
    client_addr::Cidr,
    limits::{HttpConnections, HttpRefusal},
    metrics::Metrics,
    proxy_protocol::{Accepted, Listener},
    wire::Wire,
};

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a closed connection keeps reading (and discarding) what the client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// Most bytes a closed connection reads and discards before it gives up lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// What the accept loop enforces on every connection.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// From accept to the first request's headers; each later request's headers; keep-alive idle.
    pub handshake_timeout: Duration,
    /// Longest a response's writing may make no progress.
    pub write_timeout: Duration,
    /// Plain HTTP connections, counted and capped.
    pub http: Arc<HttpConnections>,
    /// Peers that carry many clients (load balancers): counted only in the total.
    pub trusted_proxies: Vec<Cidr>,
    /// Where refusals are counted.
    pub metrics: Arc<Metrics>,
}

/// Serves `router` on `listener` until `stop` is cancelled; then waits up to `grace` for open
/// HTTP requests to finish.
pub async fn serve(
    mut listener: Listener,
    router: Router,
    limits: ServeLimits,
    stop: CancellationToken,
    grace: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.handshake_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let Accepted { stream, peer, at, permit } = tokio::select! {
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
        let permit = match permit {
            Some(permit) => Ok(permit),
            None => limits.http.admit(),
        };
        let trusted = limits.trusted_proxies.iter().any(|c| c.contains(peer.ip()));
        let permit = permit.and_then(|p| if trusted { Ok(p) } else { p.for_client(peer.ip()) });
        let wire = Arc::new(Wire::new(stream));
        let permit = match permit {
            Ok(permit) => permit,
            Err(refusal) => {
                refuse(&wire, refusal, &limits.metrics);
                drop(Connection::new(wire, limits.write_timeout));
                continue;
            }
        };
        let router = router.clone();
        let service_wire = wire.clone();
        let first_request = Arc::new(Notify::new());
        let requested = first_request.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            requested.notify_one();
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            // A WebSocket's session takes the wire, so the fan-out can write to it directly.
            req.extensions_mut().insert(service_wire.clone());
            router.clone().oneshot(req)
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let deadline = at + limits.handshake_timeout;
        let write_timeout = limits.write_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            // hyper's header deadline covers an HTTP/1 request once it is recognised as one; the
            // bytes before that (nothing at all, or the start of an HTTP/2 preface, which hyper
            // waits on for ever) fall under the same deadline here. HTTP/2 is not served.
            if tokio::time::timeout_at(deadline, http1_start(&wire)).await != Ok(true) {
                return;
            }
            let conn =
                builder.serve_connection_with_upgrades(TokioIo::new(Connection::new(wire, write_timeout)), service);
            let conn = watcher.watch(conn.into_owned());
            // Until the first request's headers are in, the deadline counted from the accept
            // holds (hyper would start its own afresh); then hyper's holds for later requests.
            let handshake = async {
                tokio::select! {
                    () = first_request.notified() => std::future::pending::<()>().await,
                    () = tokio::time::sleep_until(deadline) => {}
                }
            };
            tokio::select! {
                // Errors here are one client's (reset, bad request, header timeout): nothing to do.
                _ = conn => {}
                () = handshake => debug!(%peer, "handshake deadline passed"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        warn!("HTTP connections still open after the grace period; dropping them");
    }
}

/// Answers a connection refused a place, without reading its request: a short response if the
/// kernel takes it at once (it always does on a fresh connection), then the lingering close.
fn refuse(wire: &Wire, refusal: HttpRefusal, metrics: &Metrics) {
    let (label, response): (&'static str, &[u8]) = match refusal {
        HttpRefusal::Total => (
            "http_max",
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\n",
        ),
        HttpRefusal::PerAddress => (
            "http_per_ip",
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 40\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections from this address\n",
        ),
    };
    metrics.connection_refused(label);
    let _ = wire.write_whole(response);
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

/// A connection's IO as hyper sees it: writes with a deadline, and a graceful close.
///
/// **Write deadline.** While the connection is plain HTTP, a write that stays blocked (the client
/// does not read its response) for the write timeout fails, which ends the connection. Once it
/// carries WebSocket frames the session applies its own deadlines and this one stands aside.
///
/// **Lingering close.** When dropped, it sends what it still holds, then FIN, and keeps reading
/// (and discarding) what the client still sends for up to [`LINGER`] / [`LINGER_BYTES`], off the
/// caller's task. Closing a socket that has unread data makes the kernel answer with a reset, and
/// a reset can overtake the last frames sent: a browser whose oversized frame was refused, or
/// which was still sending when the relay closed it, would see 1006 instead of the close frame
/// before it (the same reason HTTP servers linger on close).
struct Connection {
    wire: Arc<Wire>,
    write_timeout: Duration,
    /// Armed when a write is first blocked; cleared when one makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    fn new(wire: Arc<Wire>, write_timeout: Duration) -> Self {
        Connection { wire, write_timeout, stalled: None }
    }

    /// Passes on a write's outcome, failing it once it has been blocked past the deadline.
    fn deadline<T>(&mut self, cx: &mut Context<'_>, outcome: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if outcome.is_ready() || self.wire.carries_frames() {
            self.stalled = None;
            return outcome;
        }
        let timeout = self.write_timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "response not read in time"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let wire = self.wire.clone();
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

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.wire.poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let outcome = self.wire.poll_write_vectored(cx, &[io::IoSlice::new(buf)]);
        self.deadline(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = self.wire.poll_write_vectored(cx, bufs);
        self.deadline(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = self.wire.poll_flush(cx);
        self.deadline(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = self.wire.poll_shutdown(cx);
        self.deadline(cx, outcome)
    }
}
