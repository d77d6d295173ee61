//! The state every request handler and session shares, and the upstreams' health that
//! `/readyz` reports.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio_util::task::TaskTracker;

use crate::{
    auth::Auth,
    broker::Broker,
    config::Config,
    hub::Hub,
    limits::{HttpConnections, IpLimiter},
    metrics::Metrics,
    publication::Validator,
    supervise,
};

/// State shared by every request handler and session.
#[derive(Debug)]
pub struct AppState {
    /// The validated configuration.
    pub config: Config,
    /// Message validation limits, derived from the configuration.
    pub validator: Validator,
    /// Local subscribers.
    pub hub: Arc<Hub>,
    /// Positions, history and delivery.
    pub broker: Broker,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Tracks every WebSocket session, which axum does not do once a connection is upgraded.
    pub sessions: TaskTracker,
    /// Set once shutdown began: new connections and publishes are refused with 503.
    pub draining: AtomicBool,
    /// Upstream health, for `/readyz`.
    pub readiness: Readiness,
    /// Client token verification.
    pub auth: Auth,
    /// Open connections per address.
    pub ip_limiter: Arc<IpLimiter>,
    /// Open plain HTTP connections, in total and per address.
    pub http_connections: Arc<HttpConnections>,
    /// The v2 hello frame, the same for every connection.
    pub v2_hello: axum::extract::ws::Utf8Bytes,
}

impl AppState {
    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Health of the relay's upstreams, reported by `/readyz`.
#[derive(Debug)]
pub struct Readiness {
    /// Whether SQS ingest is configured at all.
    pub sqs_enabled: bool,
    /// Whether the last SQS call succeeded.
    pub sqs_ok: AtomicBool,
    /// Which background tasks run, and which wait to be restarted after a failure.
    pub tasks: Arc<supervise::Tasks>,
}

impl Readiness {
    /// Records the outcome of an SQS call.
    pub fn set_sqs(&self, ok: bool) {
        self.sqs_ok.store(ok, Ordering::Relaxed);
    }

    /// Whether SQS is healthy (or not in use).
    pub fn sqs(&self) -> bool {
        !self.sqs_enabled || self.sqs_ok.load(Ordering::Relaxed)
    }

    /// Names of the background tasks not running (waiting to be restarted).
    pub fn tasks_down(&self) -> Vec<String> {
        self.tasks.down()
    }
}
