//! The HTTP accept loop. Like `axum::serve`, but with what a public server needs that it lacks: a
//! deadline for the request headers (so a client that connects and says nothing cannot hold a
//! socket: `DATASTREAM_HANDSHAKE_TIMEOUT`), `TCP_NODELAY` on every connection (frames leave at
//! once rather than waiting on Nagle), and a graceful stop for plain HTTP connections. Upgraded
//! WebSockets are tracked by the sessions themselves.

use std::{net::SocketAddr, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{Request, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::warn;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `stop` is cancelled; then waits up to `grace` for open
/// HTTP requests to finish.
pub async fn serve(
    listener: TcpListener,
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
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(req)
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // hyper's header deadline starts with the first byte; a client that sends nothing at
            // all is dropped here.
            let mut first = [0u8; 1];
            if !matches!(tokio::time::timeout(handshake_timeout, stream.peek(&mut first)).await, Ok(Ok(n)) if n > 0) {
                return;
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            // Errors here are one client's (reset, bad request, header timeout): nothing to do.
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        warn!("HTTP connections still open after the grace period; dropping them");
    }
}
