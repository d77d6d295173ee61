//! The datastream wire format, shared by the relay (`server/`) and the browser SDK
//! (`client-wasm/`) so the two ends can never drift apart.
//!
//! # Layout
//! - [`names`]: what a site or topic name may look like.
//! - [`legacy`]: the original service's protocol (one site per connection, the
//!   `updatesubscribersite` action, bare `{site, topic, data}` frames).
//! - [`v2`]: protocol v2, spoken by the browser SDK: many sites, positions, recovery.
//! - [`close`]: WebSocket close codes and what a client should do on each.
//! - [`error`]: the error frame sent for a refused client frame.
//! - [`backoff`]: the retry delay policy shared by clients and the relay's upstream connections.
//!
//! Nothing here does I/O; every type is plain data with serde impls.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backoff;
pub mod close;
pub mod error;
pub mod legacy;
pub mod names;
pub mod v2;

pub use names::{NameError, NameRules};
