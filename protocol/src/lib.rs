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
//! Nothing here does I/O; every type is plain data with serde impls. `no_std` (with `alloc`), so
//! the browser SDK's WebAssembly module links no std.

#![no_std]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[macro_use]
extern crate alloc;
#[cfg(test)]
extern crate std;

/// What std's prelude would bring.
mod prelude {
    pub(crate) use alloc::boxed::Box;
    pub(crate) use alloc::string::{String, ToString};
    pub(crate) use alloc::vec::Vec;
}

pub mod backoff;
pub mod close;
pub mod error;
pub mod legacy;
pub mod names;
pub mod v2;

pub use names::{NameError, NameRules};
