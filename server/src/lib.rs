//! datastream: a real-time relay for Photon Ranch. Publishers send `{site, topic, data}` messages
//! through SQS or `POST /publish`; browsers subscribed to a site receive them over WebSockets.
//!
//! # Layout
//! - [`config`]: every setting, from flags and `DATASTREAM_*` environment variables.
//! - [`publication`]: validation of incoming messages, and the encoded-once publication.
//! - [`broker`]: stream positions, history, latest values and dedupe; hands publications to the hub
//!   in order.
//! - [`hub`]: local subscribers by site, per-connection byte-capped queues, fan-out.
//! - [`delta`]: a publication as the difference from its slot's previous one, for subscriptions
//!   that asked.
//! - [`session`]: one task per WebSocket connection.
//! - [`ingest`]: where messages come from: SQS pollers and the HTTP publish endpoint.
//! - [`http`]: the router, the WebSocket handshake, `GET /sites/<site>/latest` (the latest
//!   publication of each topic over plain HTTP), health, readiness and metrics.
//! - [`topics`]: topic filters, checked once for subscribes, latest reads and deliveries.
//! - [`state`]: what every handler and session shares, and the upstreams' health.
//! - [`auth`]: optional JWT verification of clients, and what a token grants.
//! - [`limits`]: connection caps (WebSockets, plain HTTP; total and per address) and
//!   per-connection frame rates.
//! - [`client_addr`]: the client's address behind trusted proxies (`X-Forwarded-For`).
//! - [`proxy_protocol`]: the PROXY protocol v2 header (AWS NLB), read before HTTP when enabled.
//! - [`serve`]: the HTTP accept loop (one handshake deadline, connection caps, write deadlines,
//!   TCP_NODELAY, graceful stop).
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
pub mod delta;
pub mod demo;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod proxy_protocol;
pub mod publication;
pub mod serve;
pub mod server;
pub mod session;
pub mod state;
pub mod supervise;
pub mod topics;
pub mod wire;

pub use config::Config;
pub use server::Server;
pub use state::{AppState, Readiness};
