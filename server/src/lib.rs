//! datastream: a real-time relay for Photon Ranch. Publishers send `{site, topic, data}` messages
//! through SQS or `POST /publish`; browsers subscribed to a site receive them over WebSockets.
//!
//! # Layout
//! - [`config`]: every setting, from flags and `DATASTREAM_*` environment variables.
//! - [`publication`]: validation of incoming messages, and the encoded-once publication.
//! - [`broker`]: stream positions, history, latest values and dedupe; hands publications to the hub
//!   in order.
//! - [`hub`]: local subscribers by site, per-connection byte-capped queues, fan-out.
//! - [`session`]: one task per WebSocket connection.
//! - [`ingest`]: where messages come from: SQS pollers and the HTTP publish endpoint.
//! - [`latest`]: `GET /sites/<site>/latest`, the latest publication of each topic over plain HTTP.
//! - [`http`]: the router: WebSocket upgrade, publish, health, readiness and metrics.
//! - [`auth`]: optional JWT verification of clients, and what a token grants.
//! - [`limits`]: per-address connection limits and per-connection frame rates.
//! - [`client_addr`]: the client's address behind trusted proxies (`X-Forwarded-For`).
//! - [`proxy_protocol`]: the PROXY protocol v2 header (AWS NLB), read before HTTP when enabled.
//! - [`serve`]: the HTTP accept loop (header deadline, TCP_NODELAY, graceful stop).
//! - [`wire`]: a connection's TCP stream, shared by its session and the fan-out's direct writes.
//! - [`metrics`]: Prometheus metrics.
//! - [`demo`]: the demo publisher (plausible live streams for a few sites).
//! - [`cli`]: the binary's tools: `publish`, `tail`, `healthcheck`.
//! - [`server`]: binding, running and the ordered graceful shutdown.
//! - [`supervise`]: background tasks restarted after a panic, and their state for `/readyz`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod broker;
pub mod cli;
pub mod client_addr;
pub mod config;
pub mod demo;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod latest;
pub mod limits;
pub mod metrics;
pub mod proxy_protocol;
pub mod publication;
pub mod serve;
pub mod server;
pub mod session;
pub mod supervise;
pub mod wire;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio_util::task::TaskTracker;

pub use config::Config;
pub use server::Server;

use crate::{auth::Auth, broker::Broker, hub::Hub, limits::IpLimiter, metrics::Metrics, publication::Validator};

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
