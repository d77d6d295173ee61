//! A thin owner of one browser `WebSocket` and its event handlers.
//!
//! The handlers belong to the [`Socket`] and die with it (as in gloo-net): dropping a socket
//! detaches every handler and closes the connection, so a replaced or abandoned socket can neither
//! call back into the client nor keep its closures alive. Nothing is ever `forget()`-ed, which is
//! what keeps thousands of reconnects from leaking.

use js_sys::{Array, Function};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, WebSocket};

use super::dispatch::Dispatch;
use crate::link::LinkId;

/// What a socket reports, to closures chosen by the caller. Its frames go to the dispatcher.
pub(crate) struct Handlers {
    pub(crate) on_open: Box<dyn FnMut()>,
    /// The close code and reason (1006 and an empty reason when the connection failed).
    pub(crate) on_close: Box<dyn FnMut(u16, String)>,
}

/// An open or opening WebSocket and the closures handling its events.
pub(crate) struct Socket {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut()>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
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
        let ws: WebSocket = match constructor {
            Some(c) => js_sys::Reflect::construct(c, &Array::of2(&url.into(), protocols))?.unchecked_into(),
            None => WebSocket::new_with_str_sequence(url, protocols)?,
        };
        let Handlers { on_open, mut on_close } = handlers;
        let on_open = Closure::<dyn FnMut()>::wrap(on_open);
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| on_close(e.code(), e.reason()));
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let detach_frames = dispatch.attach(&ws, link);
        Ok(Socket { ws, _on_open: on_open, _on_close: on_close, detach_frames })
    }

    /// The browser's socket.
    #[cfg(test)]
    pub(crate) fn ws(&self) -> &WebSocket {
        &self.ws
    }

    /// Sends a text frame. A socket that is not open drops it: the client only sends on an
    /// accepted connection, and resends what matters after a reconnect.
    pub(crate) fn send(&self, text: &str) {
        if self.ws.ready_state() == WebSocket::OPEN {
            let _ = self.ws.send_with_str(text);
        }
    }

    /// Closes with `code` and `reason`, then drops the socket.
    pub(crate) fn close(self, code: u16, reason: &str) {
        self.detach();
        if self.is_active() {
            let _ = self.ws.close_with_code_and_reason(code, reason);
        }
    }

    fn is_active(&self) -> bool {
        matches!(self.ws.ready_state(), WebSocket::CONNECTING | WebSocket::OPEN)
    }

    fn detach(&self) {
        self.ws.set_onopen(None);
        let _ = self.detach_frames.call0(&JsValue::NULL);
        self.ws.set_onclose(None);
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.detach();
        if self.is_active() {
            let _ = self.ws.close();
        }
    }
}
