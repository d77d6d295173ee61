//! The class JavaScript sees, `DatastreamCore`. The npm package wraps it in the friendlier
//! `Datastream` (which loads the WebAssembly module first, and turns listener ids into
//! unsubscribe functions); this layer only converts arguments and forwards to the driver.

#[allow(unused_imports)]
use crate::prelude::*;

use alloc::rc::Rc;

use js_sys::Function;
use wasm_bindgen::prelude::*;

use super::convert;
use super::driver::{Driver, JsClient};
use crate::callbacks::HookKind;
use crate::client::Latest;

/// A datastream client in the browser.
#[wasm_bindgen]
pub struct DatastreamCore {
    driver: Rc<Driver>,
}

impl core::fmt::Debug for DatastreamCore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DatastreamCore").finish_non_exhaustive()
    }
}

#[wasm_bindgen]
impl DatastreamCore {
    /// Validates `options` (throws a `TypeError` or `Error` naming the bad one); `start` then
    /// takes the configured sites (and connects if there are any).
    #[wasm_bindgen(constructor)]
    pub fn new(options: JsValue) -> Result<DatastreamCore, JsValue> {
        let config = convert::config(&options)?;
        let protocol = config.protocol;
        let websocket = js_sys::Reflect::get(&options, &"WebSocket".into())?.dyn_into::<Function>().ok();
        let client =
            JsClient::new(config, Box::new(js_sys::Math::random)).map_err(|e| js_sys::Error::new(&e.message()))?;
        Ok(DatastreamCore { driver: Driver::start(client, protocol, websocket, &options) })
    }

    /// Takes the configured sites, connecting if there are any. Called once, after the hooks
    /// that must see the first connection attempt (`token`) are registered.
    pub fn start(&self) {
        self.driver.run(|c, now| c.start(now));
    }

    /// Calls `callback(data, meta)` for each publication on `topic` (`*`: every topic), of `site`
    /// only when given. `latest` 0 (or absent): live publications only; 1: first with the latest
    /// publication of each topic the relay
    /// sends (`meta.latest` true; the caller hands it what the cache holds); 2: the same, and the
    /// cache did not cover it: ask the relay now. Returns an id for `offId`.
    pub fn on(&self, topic: &str, callback: Function, site: Option<String>, latest: u8) -> u32 {
        let latest = match latest {
            0 => Latest::No,
            1 => Latest::Held,
            _ => Latest::Ask,
        };
        self.driver.run(|c, _| c.on(topic, site.as_deref(), callback, latest))
    }

    /// Removes a listener or hook by the id `on` or `hook` returned.
    #[wasm_bindgen(js_name = offId)]
    pub fn off_id(&self, id: u32) {
        self.driver.run(|c, _| c.off_id(id));
    }

    /// Registers an event hook: `kind` is `state`, `error`, `recoveryfailed` or `ready`.
    pub fn hook(&self, kind: &str, callback: Function) -> Result<u32, JsValue> {
        let kind = match kind {
            "state" => HookKind::State,
            "error" => HookKind::Error,
            "recoveryfailed" => HookKind::RecoveryFailed,
            "ready" => HookKind::Ready,
            "subscribed" => HookKind::Subscribed,
            "token" => HookKind::Token,
            _ => return Err(convert::type_error("unknown event kind")),
        };
        Ok(self.driver.run(|c, _| c.hook(kind, callback)))
    }

    /// Subscribes to `site`, first replaying up to `rewind` of its latest publications.
    pub fn subscribe(&self, site: &str, rewind: Option<u32>) {
        self.driver.run(|c, now| c.subscribe(site, rewind, now));
    }

    /// The app's token: a string (`''`: connect without one) replaces it — sent in a `refresh`
    /// on a live v2 connection, offered by every later one, and an attempt waiting for a token
    /// opens; anything else says the app could not get one: the waiting attempt fails and is
    /// retried after the backoff delay.
    #[wasm_bindgen(js_name = setToken)]
    pub fn set_token(&self, token: JsValue) {
        self.driver.run(|c, now| match token.as_string() {
            Some(token) => c.set_token(Some(token).filter(|t| !t.is_empty()), now),
            None => c.token_failed(now),
        });
    }

    /// Unsubscribes from `site`.
    pub fn unsubscribe(&self, site: &str) {
        self.driver.run(|c, _| c.unsubscribe(site));
    }

    /// The current state, e.g. `{type: 'reconnecting', attempt: 2, delay: 1400}`.
    pub fn state(&self) -> JsValue {
        convert::state(self.driver.client.borrow().state())
    }

    /// Whether the client is connected with every subscription confirmed.
    #[wasm_bindgen(js_name = isReady)]
    pub fn is_ready(&self) -> bool {
        self.driver.client.borrow().is_ready()
    }

    /// Closes the client for good: sockets closed, timers cancelled, listeners removed.
    pub fn close(&self) {
        self.driver.shut_down();
    }
}
