//! The datastream browser SDK: one WebSocket for every site of the Photon Ranch app, reconnecting
//! with backoff, recovering what it missed, and dispatching publications to callbacks by topic.
//!
//! Compiled to WebAssembly and published on npm as `@photonranch/datastream`, whose README
//! documents the JavaScript API.
//!
//! # Layout
//! Logic, free of I/O and tested natively (`cargo test -p datastream-client`):
//! - [`config`]: options, defaults, validation.
//! - [`state`]: the connection state the app sees.
//! - [`link`]: one socket's life (phase, failures, liveness).
//! - [`callbacks`]: the app's listeners and event hooks; the topic filter they imply.
//! - [`subscriptions`]: the wanted sites and their subscribe frames, kept across reconnects.
//! - [`stream`]: per-site positions and deduplication by offset.
//! - [`inbound`]: decoded server frames, other than publications.
//! - [`wire`]: client frames encoded as JSON text.
//! - [`text`]: server frames read from text, for drivers outside the browser (`datastream tail`).
//! - [`client`]: the state machine tying these together: events in, actions out; and, for
//!   publications, whether each is new and wanted and whose callbacks get it. What depends on the
//!   protocol is asked of the protocol the client speaks (`client/rules.rs`): v2
//!   (`client/v2.rs`: one link, subscriptions, positions, in-band token refresh) or legacy
//!   (`client/legacy.rs`: one link per site, `updatesubscribersite`). Its scenario tests are
//!   `client/tests.rs`.
//!
//! In the browser only (`wasm32`), the `web` module carries the actions out: the socket, timers,
//! the `online` and visibility listeners, frame decoding, and the JavaScript-facing class. Its
//! dispatcher, in JavaScript, reads the frames and calls the publication callbacks, asking the
//! client about each publication with numbers only: the hot path stays out of WebAssembly memory.
//!
//! Reconnect delays come from [`datastream_protocol::backoff::Backoff`], shared with the relay.
//!
//! # What lives where
//! Each rule has one home:
//! - **This crate** decides every protocol question: connecting, backoff, heartbeats, which sites
//!   the relay has and with which topics, latest values and deltas, positions and duplicates,
//!   confirmations (the legacy protocol's included), when a token is needed (before each attempt,
//!   and before the expiry the relay announces), refusals and the sites they concern.
//! - **The dispatcher** (`web/dispatch.js`) is the hot path: it reads frames, keeps publications'
//!   data (never copied into WebAssembly), the last publication of each slot and the bases of
//!   deltas, applies deltas, and owns the name and slot rules (`NAME`, `slotOf`). Its contract
//!   with this crate is documented once, in `web/dispatch.rs`.
//! - **The npm wrapper** (`npm/src/index.js`) holds what the app holds: reference-counted
//!   subscription handles and their promises, listener functions, typed errors, the module's
//!   loading, the app's `getToken`; it checks the app's names with the dispatcher's rule and
//!   otherwise asks this crate.

#![cfg_attr(not(feature = "std"), no_std)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

extern crate alloc;

/// What std's prelude would bring, for the `no_std` build.
mod prelude {
    pub(crate) use alloc::borrow::ToOwned;
    pub(crate) use alloc::boxed::Box;
    pub(crate) use alloc::string::{String, ToString};
    pub(crate) use alloc::vec;
    pub(crate) use alloc::vec::Vec;
}

pub mod callbacks;
pub mod client;
pub mod config;
pub mod inbound;
pub mod link;
pub mod state;
pub mod stream;
pub mod subscriptions;
pub mod text;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod web;

#[cfg(target_arch = "wasm32")]
pub use web::DatastreamCore;

/// A first-fit allocator with coalescing, a few hundred bytes of code instead of dlmalloc's
/// several KB: the client allocates little (names, frames to send), and payloads stay in
/// JavaScript.
/// Without std (the npm build), a panic traps: the module's state is then unusable anyway, and
/// std's handler would only format a message nobody reads.
#[cfg(all(target_arch = "wasm32", not(feature = "std")))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: lol_alloc::LockedAllocator<lol_alloc::FreeListAllocator> =
    lol_alloc::LockedAllocator::new(lol_alloc::FreeListAllocator::new());
