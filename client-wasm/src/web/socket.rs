//! A thin owner of one browser `WebSocket` and its event handlers.
//!
//! The handlers belong to the [`Socket`] and die with it (as in gloo-net): dropping a socket
//! detaches every handler and closes the connection, so a replaced or abandoned socket can neither
//! call back into the client nor keep its closures alive. Nothing is ever `forget()`-ed, which is
//! what keeps thousands of reconnects from leaking. The socket itself is handled in JavaScript
//! (`browser.js`: open, send, close), one call each instead of a web-sys import per property.

#[allow(unused_imports)]
use crate::prelude::*;

use js_sys::{Array, Function};
use wasm_bindgen::prelude::*;

use super::dispatch::Dispatch;
use crate::link::LinkId;

#[wasm_bindgen(module = "/src/web/browser.js")]
extern "C" {
    /// `new (ctor || WebSocket)(url, protocols)`, its `onopen` and `onclose` (code, reason) set.
    #[wasm_bindgen(catch, js_name = open)]
    fn open_socket(
        ctor: &JsValue,
        url: &str,
        protocols: &Array,
        on_open: &Closure<dyn FnMut()>,
        on_close: &Closure<dyn FnMut(u16, String)>,
    ) -> Result<JsValue, JsValue>;
    /// Sends if the socket is open.
    #[wasm_bindgen(js_name = send)]
    fn send_text(ws: &JsValue, text: &str);
    /// Detaches the handlers (`detach`: the frames'), then closes with `code` (0: none) and
    /// `reason` if connecting or open.
    #[wasm_bindgen(js_name = close)]
    fn close_socket(ws: &JsValue, detach: &Function, code: u16, reason: &str);
}

/// What a socket reports, to closures chosen by the caller. Its frames go to the dispatcher.
pub(crate) struct Handlers {
    pub(crate) on_open: Box<dyn FnMut()>,
    /// The close code and reason (1006 and an empty reason when the connection failed).
    pub(crate) on_close: Box<dyn FnMut(u16, String)>,
}

/// An open or opening WebSocket and the closures handling its events.
pub(crate) struct Socket {
    ws: JsValue,
    _on_open: Closure<dyn FnMut()>,
    _on_close: Closure<dyn FnMut(u16, String)>,
    /// Stops the dispatch of its frames.
    detach_frames: Function,
}

impl Socket {
    /// Opens a socket to `url` with `constructor` (the global `WebSocket` if `None`), asking for
    /// `protocols`, its frames dispatched by `dispatch` as `link`'s. Fails when the URL is refused
    /// outright.
    pub(crate) fn open(
        constructor: Option<&Function>,
        url: &str,
        protocols: &Array,
        handlers: Handlers,
        dispatch: &Dispatch,
        link: LinkId,
    ) -> Result<Socket, JsValue> {
        let Handlers { on_open, on_close } = handlers;
        let on_open = Closure::<dyn FnMut()>::wrap(on_open);
        let on_close = Closure::<dyn FnMut(u16, String)>::wrap(on_close);
        let none = JsValue::UNDEFINED;
        let ws = open_socket(constructor.map_or(&none, AsRef::as_ref), url, protocols, &on_open, &on_close)?;
        let detach_frames = dispatch.attach(&ws, link);
        Ok(Socket { ws, _on_open: on_open, _on_close: on_close, detach_frames })
    }

    /// The browser's socket.
    #[cfg(test)]
    pub(crate) fn ws(&self) -> &JsValue {
        &self.ws
    }

    /// Sends a text frame. A socket that is not open drops it: the client only sends on an
    /// accepted connection, and resends what matters after a reconnect.
    pub(crate) fn send(&self, text: &str) {
        send_text(&self.ws, text);
    }

    /// Closes with `code` and `reason`, then drops the socket.
    pub(crate) fn close(self, code: u16, reason: &str) {
        close_socket(&self.ws, &self.detach_frames, code, reason);
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        close_socket(&self.ws, &self.detach_frames, 0, "");
    }
}
