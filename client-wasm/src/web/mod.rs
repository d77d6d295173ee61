//! The browser side: everything that touches `web-sys`, compiled for `wasm32` only.
//!
//! - [`api`]: the `DatastreamCore` class exported to JavaScript.
//! - [`driver`]: carries out the client's actions; owns sockets, timers and window listeners.
//! - [`socket`]: one browser WebSocket and its handlers, closed and detached on drop.
//! - [`dispatch`]: frames parsed and publications handed to callbacks in JavaScript, asking the
//!   client which are new and wanted.
//! - [`decode`]: the other server frames, read from what `JSON.parse` gave.
//! - [`convert`]: options in; states and events out.
//! - `browser.js`: the socket's calls, the window's `online` and the document's
//!   `visibilitychange` listeners, and the objects of states and events, in JavaScript: one call
//!   each instead of many across the boundary.

#[allow(unused_imports)]
use crate::prelude::*;

mod api;
mod convert;
mod decode;
mod dispatch;
mod driver;
mod socket;

pub use api::DatastreamCore;
