//! The browser side: everything that touches `web-sys`, compiled for `wasm32` only.
//!
//! - [`api`]: the `DatastreamCore` class exported to JavaScript.
//! - [`driver`]: carries out the client's actions; owns sockets, timers and window listeners.
//! - [`socket`]: one browser WebSocket and its handlers, closed and detached on drop.
//! - [`decode`]: server frames read with `JSON.parse`.
//! - [`convert`]: options in; states, events and metadata out.
//! - [`keys`]: property names made once.

mod api;
mod convert;
mod decode;
mod driver;
mod keys;
mod socket;

pub use api::DatastreamCore;
