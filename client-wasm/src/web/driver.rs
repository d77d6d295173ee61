//! Carries out the client's [`Action`]s in the browser and feeds it the browser's events.
//!
//! Ownership: [`Driver`] owns the client, the sockets, the timers and the window listeners; every
//! closure handed to the browser holds only a `Weak` reference back, so dropping the driver drops
//! everything and no reference cycle keeps a closed client alive.
//!
//! Re-entrancy: app callbacks may call back into the client (subscribe from a listener, close from
//! a state hook). No `RefCell` borrow is ever held while JavaScript runs: actions are taken out of
//! the client first, then carried out one by one; publications are dispatched in JavaScript
//! ([`super::dispatch`]), which asks the client between callbacks, never during one.

#[allow(unused_imports)]
use crate::prelude::*;

use alloc::rc::{Rc, Weak};
use core::cell::RefCell;

use js_sys::{Array, Float64Array, Function};
use wasm_bindgen::prelude::*;

use super::convert;
use super::decode::decode;
use super::dispatch::{ClientSide, Dispatch};
use super::socket::{Handlers, Socket};
use crate::callbacks::HookKind;
use crate::client::{Action, Client, Event};
use crate::config::Protocol;
use crate::link::{LinkId, TimerKind};
use crate::stream::Undo;

pub(crate) type JsClient = Client<Function, JsValue>;

/// The browser side of one client.
pub(crate) struct Driver {
    pub(crate) client: RefCell<JsClient>,
    /// The `WebSocket` constructor the app gave (e.g. in Node); the global one otherwise.
    websocket: Option<Function>,
    io: RefCell<Io>,
    legacy: bool,
    /// Reads every socket's frames and calls the publication callbacks.
    dispatch: Dispatch,
    /// The site and epoch names the dispatcher refers to by index.
    names: RefCell<Vec<String>>,
    /// The dispatcher's latest batch of publications is still being dispatched.
    batch_open: core::cell::Cell<bool>,
    /// What accepting each of that batch's publications recorded (its index, site, the undo).
    batch: RefCell<Vec<(u32, u32, Undo)>>,
    /// Calls [`crate::client::Client::flush`] on its second run: queued as a microtask by
    /// [`Action::Flush`], it queues itself once more first, so the microtasks the task queued
    /// meanwhile run before it — a framework's scheduler (Vue's watchers run in one) makes its
    /// changes of the same task, and one flush sends them all. (Dropped with the driver: the npm
    /// wrapper frees a closed client a task later, once no flush can be queued.)
    flush: Closure<dyn FnMut()>,
    /// Every timer's callback, told which link's timer of which kind (`TimerKind as u8`) ran:
    /// one closure for all of them, the browser's `setTimeout` passing the two along.
    timer: Closure<dyn FnMut(LinkId, u8)>,
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = queueMicrotask)]
    fn queue_microtask(callback: &JsValue);
    /// Calls `callback(link, kind)` after `ms`; the id is a number in browsers, an object in Node.
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(callback: &Closure<dyn FnMut(LinkId, u8)>, ms: u32, link: LinkId, kind: u8) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str, error: &JsValue);
}

#[wasm_bindgen(module = "/src/web/browser.js")]
extern "C" {
    /// Calls `event(true)` on the window's `online`, `event(false)` when the document becomes
    /// visible; returns the function that removes both listeners (browser.js).
    fn listen(event: &Closure<dyn FnMut(bool)>) -> Function;
}

/// The `online` and `visibilitychange` listeners; dropping it removes them, then frees the closure
/// they called.
struct BrowserEvents {
    _event: Closure<dyn FnMut(bool)>,
    remove: Function,
}

impl Drop for BrowserEvents {
    fn drop(&mut self) {
        let _ = self.remove.call0(&JsValue::NULL);
    }
}

/// What the driver holds on the browser's side. Dropping it closes the sockets, cancels the
/// timers and removes the listeners.
#[derive(Default)]
struct Io {
    sockets: Vec<(LinkId, Socket)>,
    /// The timers running: their link, kind and `setTimeout` id.
    timers: Vec<(LinkId, TimerKind, JsValue)>,
    /// `online` on the window and `visibilitychange` on the document.
    listeners: Option<BrowserEvents>,
}

impl Drop for Io {
    fn drop(&mut self) {
        for (_, _, id) in &self.timers {
            clear_timeout(id);
        }
    }
}

fn now() -> f64 {
    js_sys::Date::now()
}

impl Driver {
    /// Drives `client` (started by its `start`, which opens the sockets its sites need) and listens
    /// to the browser's connectivity events. The last publication of each site and topic goes
    /// into `options.cache` (see [`Dispatch::new`]).
    pub(crate) fn start(
        client: JsClient,
        protocol: Protocol,
        websocket: Option<Function>,
        options: &JsValue,
    ) -> Rc<Driver> {
        let legacy = protocol == Protocol::Legacy;
        let driver = Rc::new_cyclic(|weak: &Weak<Driver>| Driver {
            client: RefCell::new(client),
            websocket,
            io: RefCell::new(Io::default()),
            legacy,
            dispatch: Dispatch::new(legacy, weak.clone(), options),
            names: RefCell::new(Vec::new()),
            batch_open: Default::default(),
            batch: RefCell::default(),
            flush: {
                let weak = weak.clone();
                // True on the first run (queue again), false on the second (flush).
                let mut hop = false;
                Closure::new(move || {
                    hop = !hop;
                    with(&weak, |d| {
                        if hop {
                            queue_microtask(d.flush.as_ref());
                        } else {
                            d.run(|c, _| c.flush());
                        }
                    })
                })
            },
            timer: {
                let weak = weak.clone();
                Closure::new(move |link: LinkId, kind: u8| {
                    let kind = match kind {
                        0 => TimerKind::Reconnect,
                        1 => TimerKind::Heartbeat,
                        2 => TimerKind::Release,
                        _ => TimerKind::Refresh,
                    };
                    with(&weak, |d| {
                        // It ran: its id is spent.
                        take_timer(&mut d.io.borrow_mut(), link, kind);
                        d.run(|c, now| c.timer(link, kind, now));
                    })
                })
            },
        });
        driver.listen_to_browser();
        driver
    }

    /// Calls `f` on the client, then carries out what it decided.
    pub(crate) fn run<R>(self: &Rc<Self>, f: impl FnOnce(&mut JsClient, f64) -> R) -> R {
        self.settle();
        let result = f(&mut self.client.borrow_mut(), now());
        self.carry_out();
        result
    }

    /// Carries out what the client decided. Not inlined into each of `run`'s many instances.
    #[inline(never)]
    fn carry_out(self: &Rc<Self>) {
        let actions = self.client.borrow_mut().take_actions();
        for action in actions {
            self.perform(action);
        }
    }

    /// Called back while a batch of publications is dispatched (from a callback): the
    /// publications after the one being dispatched are forgotten, as if not arrived yet, and the
    /// dispatcher told to ask about them again.
    #[inline(never)]
    fn settle(&self) {
        if !self.batch_open.replace(false) {
            return;
        }
        let state = &self.dispatch.state;
        let cursor = state.get_index(0);
        state.set_index(1, 1.0);
        let batch = core::mem::take(&mut *self.batch.borrow_mut());
        let names = self.names.borrow();
        let mut client = self.client.borrow_mut();
        for (i, site, undo) in batch.into_iter().rev() {
            if f64::from(i) <= cursor {
                break;
            }
            if let Some(site) = names.get(site as usize) {
                client.undo_accept(site, undo);
            }
        }
    }

    fn perform(self: &Rc<Self>, action: Action<Function, JsValue>) {
        match action {
            Action::Flush => queue_microtask(self.flush.as_ref()),
            Action::Open { link, url, subprotocol, token } => self.open(link, &url, subprotocol, token),
            Action::Send { link, text } => {
                let io = self.io.borrow();
                if let Some((_, socket)) = io.sockets.iter().find(|(id, _)| *id == link) {
                    socket.send(&text);
                }
            }
            Action::Close { link, code, reason } => {
                let socket = {
                    let mut io = self.io.borrow_mut();
                    io.sockets.iter().position(|(id, _)| *id == link).map(|i| io.sockets.swap_remove(i).1)
                };
                if let Some(socket) = socket {
                    socket.close(code, reason);
                }
            }
            Action::SetTimer { link, kind, ms } => {
                let id = set_timeout(&self.timer, ms, link, kind as u8);
                let mut io = self.io.borrow_mut();
                take_timer(&mut io, link, kind);
                io.timers.push((link, kind, id));
            }
            Action::ClearTimer { link, kind } => take_timer(&mut self.io.borrow_mut(), link, kind),
            Action::Notify { callbacks, event } => {
                let kind = match &event {
                    Event::State(_) => HookKind::State,
                    Event::Error(_) => HookKind::Error,
                    Event::RecoveryFailed(_) => HookKind::RecoveryFailed,
                    Event::Ready => HookKind::Ready,
                    Event::Subscribed { .. } => HookKind::Subscribed,
                    Event::TokenNeeded { .. } => HookKind::Token,
                };
                let arg = convert::event(event);
                for callback in callbacks {
                    if let Err(error) = callback.call1(&JsValue::NULL, &arg)
                        && let Some(unreported) = self.run(|c, _| c.hook_failed(kind, error))
                    {
                        console_error("datastream: an error listener threw", &unreported);
                    }
                }
            }
        }
    }

    fn open(self: &Rc<Self>, link: LinkId, url: &str, subprotocol: Option<&str>, token: Option<String>) {
        let old = {
            let mut io = self.io.borrow_mut();
            io.sockets.iter().position(|(id, _)| *id == link).map(|i| io.sockets.swap_remove(i).1)
        };
        drop(old);
        let (w_open, w_close) = (Rc::downgrade(self), Rc::downgrade(self));
        let handlers = Handlers {
            on_open: Box::new(move || with(&w_open, |d| d.run(|c, now| c.opened(link, now)))),
            on_close: Box::new(move |code, reason| {
                with(&w_close, |d| d.run(|c, now| c.socket_closed(link, code, reason, now)))
            }),
        };
        let protocols = Array::new();
        if let Some(p) = subprotocol {
            protocols.push(&p.into());
            if let Some(token) = token {
                protocols.push(&(String::from("datastream.token.") + &token).into());
            }
        }
        match Socket::open(self.websocket.as_ref(), url, &protocols, handlers, &self.dispatch, link) {
            Ok(socket) => self.io.borrow_mut().sockets.push((link, socket)),
            // The URL was validated, so this is rare (e.g. a port the browser blocks): treat it
            // as a failed attempt and let the backoff run.
            Err(_) => self.run(|c, now| c.socket_closed(link, 1006, String::new(), now)),
        }
    }

    fn listen_to_browser(self: &Rc<Self>) {
        let weak = Rc::downgrade(self);
        let event = Closure::new(move |online: bool| {
            with(&weak, |d| d.run(|c, now| if online { c.online(now) } else { c.visible(now) }))
        });
        let remove = listen(&event);
        self.io.borrow_mut().listeners = Some(BrowserEvents { _event: event, remove });
    }

    /// Closes the client and lets go of every browser resource at once.
    pub(crate) fn shut_down(self: &Rc<Self>) {
        self.run(|c, _| c.close());
        let io = core::mem::take(&mut *self.io.borrow_mut());
        drop(io);
    }
}

/// The dispatcher's questions, answered by the client (held weakly: the dispatcher belongs to
/// the driver).
impl ClientSide for Weak<Driver> {
    fn intern(&self, name: String, first: bool) -> u32 {
        let Some(d) = self.upgrade() else { return 0 };
        let mut names = d.names.borrow_mut();
        if first {
            names.clear();
        }
        names.push(name);
        (names.len() - 1) as u32
    }

    fn accept(&self, link: LinkId, buf: &Float64Array, from: u32, to: u32, now: f64) {
        let part = buf.subarray(4 * from, 4 * to);
        // js-sys's `to_vec` and `copy_from` assert the lengths, which keeps the formatting code of
        // the panic message in the module (0.5 KB gzip); reading element by element instead made
        // the dispatch 15 % slower per publication (bench/client/micro.mjs).
        let mut v = part.to_vec();
        if let Some(d) = self.upgrade() {
            let names = d.names.borrow();
            let mut client = d.client.borrow_mut();
            let version = f64::from(client.listeners_version());
            let mut batch = d.batch.borrow_mut();
            batch.clear();
            d.batch_open.set(true);
            for (i, p) in (from..).zip(v.chunks_exact_mut(4)) {
                // A latest publication's epoch index `i` comes as `-1 - i`.
                let latest = p[1] < 0.0;
                let epoch = if latest { -1.0 - p[1] } else { p[1] };
                let fresh = match (names.get(p[0] as usize), names.get(epoch as usize)) {
                    (Some(site), _) if p[2] < 0.0 => client.accept(link, site, None, now),
                    // A latest publication records nothing: there is nothing to undo.
                    (Some(site), Some(epoch)) if latest => client.accept_latest(link, site, epoch, now),
                    (Some(site), Some(epoch)) => {
                        let (fresh, undo) = client.accept_undoable(link, site, epoch, p[2] as u64, now);
                        if let Some(undo) = undo {
                            batch.push((i, p[0] as u32, undo));
                        }
                        fresh
                    }
                    _ => false,
                };
                p[3] = if fresh { version } else { -1.0 };
            }
        } else {
            v.chunks_exact_mut(4).for_each(|p| p[3] = -1.0);
        }
        part.copy_from(&v);
    }

    fn route(&self, site: &str, topic: &str, latest: bool) -> Array {
        let callbacks = self.upgrade().map(|d| d.client.borrow().listeners(site, topic, latest)).unwrap_or_default();
        callbacks.iter().collect()
    }

    fn other(&self, link: LinkId, frame: JsValue) {
        with(self, |d| {
            let frame = decode(&frame, d.legacy);
            d.run(|c, now| match frame {
                Ok(f) => c.received(link, f, now),
                Err(e) => c.undecodable(link, e, now),
            });
        });
    }

    fn failed(&self, site: String, topic: String, error: JsValue) {
        with(self, |d| d.run(|c, _| c.callback_failed(site, topic, error)));
    }

    fn gap(&self, site: String) {
        with(self, |d| d.run(|c, _| c.gap(&site)));
    }
}

/// Cancels `link`'s timer of `kind`, if one is running.
fn take_timer(io: &mut Io, link: LinkId, kind: TimerKind) {
    if let Some(i) = io.timers.iter().position(|(l, k, _)| *l == link && *k == kind) {
        clear_timeout(&io.timers.swap_remove(i).2);
    }
}

fn with(weak: &Weak<Driver>, f: impl FnOnce(&Rc<Driver>)) {
    if let Some(driver) = weak.upgrade() {
        f(&driver);
    }
}

/// The real client behind the dispatcher, given packed frames as if from its socket: what the
/// callbacks do between publications of one frame takes effect for the next, as if each had
/// been judged alone.
#[cfg(test)]
mod tests {
    use alloc::rc::Rc;
    use core::cell::RefCell;

    use js_sys::{JSON, Object, Reflect};
    use wasm_bindgen_test::*;

    use super::*;

    wasm_bindgen_test_configure!(run_in_browser);

    type Act = Box<dyn Fn(&Rc<Driver>, &str, u64)>;

    /// A client of `sites` whose socket never opens (nothing listens on port 9): the tests
    /// hand its dispatcher frames themselves.
    struct Fixture {
        driver: Rc<Driver>,
        got: Rc<RefCell<Vec<String>>>,
        _keep: Vec<Closure<dyn FnMut(JsValue, JsValue)>>,
    }

    impl Fixture {
        fn new(sites: &[&str]) -> Fixture {
            let options = serde_json::json!({"url": "ws://127.0.0.1:9/dev", "sites": sites});
            let config = convert::config(&JSON::parse(&options.to_string()).unwrap()).unwrap();
            let client = JsClient::new(config, Box::new(js_sys::Math::random)).unwrap();
            let driver = Driver::start(client, Protocol::V2, None, &js_sys::Object::new());
            driver.run(|c, now| c.start(now));
            Fixture { driver, got: Rc::default(), _keep: Vec::new() }
        }

        /// A listener for topic `t` that records `"{name} {site} {offset}"`, then runs `act`.
        fn listen(&mut self, name: &'static str, act: Act) {
            let (got, weak) = (self.got.clone(), Rc::downgrade(&self.driver));
            let f = Closure::<dyn FnMut(JsValue, JsValue)>::new(move |_data, meta: JsValue| {
                let site = Reflect::get(&meta, &"site".into()).unwrap().as_string().unwrap();
                let offset = Reflect::get(&meta, &"offset".into()).unwrap().as_f64().unwrap() as u64;
                got.borrow_mut().push(format!("{name} {site} {offset}"));
                if let Some(d) = weak.upgrade() {
                    act(&d, &site, offset);
                }
            });
            let function: Function = f.as_ref().unchecked_ref::<Function>().clone();
            self.driver.run(|c, _| c.on("t", None, function, crate::client::Latest::No));
            self._keep.push(f);
        }

        /// One packed frame of publications of topic `t` at (site, offset), epoch `e`.
        fn frame(&self, pubs: &[(&str, u64)]) {
            let text: Vec<String> = pubs
                .iter()
                .map(|(site, offset)| {
                    format!(r#"{{"type":"pub","site":"{site}","topic":"t","epoch":"e","offset":{offset},"data":0}}"#)
                })
                .collect();
            let ws = self.driver.io.borrow().sockets[0].1.ws().clone();
            let handler = Reflect::get(&ws, &"onmessage".into()).unwrap();
            let event = Object::new();
            Reflect::set(&event, &"data".into(), &text.join("\n").into()).unwrap();
            handler.unchecked_ref::<Function>().call1(&ws, &event).unwrap();
        }

        fn take(&self) -> Vec<String> {
            core::mem::take(&mut *self.got.borrow_mut())
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            self.driver.shut_down();
        }
    }

    fn nothing() -> Act {
        Box::new(|_, _, _| {})
    }

    #[wasm_bindgen_test]
    fn duplicates_within_one_frame_are_dropped() {
        let mut f = Fixture::new(&["a", "b"]);
        f.listen("l", nothing());
        f.frame(&[("a", 1), ("a", 2), ("b", 1), ("a", 2), ("a", 1), ("b", 1), ("a", 3), ("a", 3)]);
        assert_eq!(f.take(), ["l a 1", "l a 2", "l b 1", "l a 3"]);
        f.frame(&[("a", 3), ("a", 4)]);
        assert_eq!(f.take(), ["l a 4"]);
    }

    #[wasm_bindgen_test]
    fn a_callback_that_unsubscribes_stops_that_site_within_the_frame() {
        let mut f = Fixture::new(&["a", "b"]);
        f.listen(
            "l",
            Box::new(|d, site, offset| {
                if (site, offset) == ("a", 2) {
                    d.run(|c, _| c.unsubscribe("a"));
                }
            }),
        );
        f.frame(&[("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3), ("a", 4)]);
        assert_eq!(f.take(), ["l a 1", "l b 1", "l a 2", "l b 2", "l b 3"]);
    }

    #[wasm_bindgen_test]
    fn a_callback_that_resubscribes_or_adds_a_listener_is_seen_by_the_next_publication() {
        let mut f = Fixture::new(&["a"]);
        let positions = Rc::new(RefCell::new(Vec::new()));
        let seen = positions.clone();
        f.listen(
            "l",
            Box::new(move |d, _, offset| {
                // Every call into the client sees the stream as of this publication: the
                // position a resubscribe would recover from.
                seen.borrow_mut().push(d.run(|c, _| c.position("a")).map(|p| p.offset));
                if offset == 2 {
                    // Both asked of the client before the rest of the frame is judged.
                    d.run(|c, now| {
                        c.unsubscribe("a");
                        c.subscribe("a", None, now);
                    });
                    let function =
                        Function::new_with_args("data, meta", "globalThis.late = (globalThis.late || 0) + 1");
                    d.run(|c, _| c.on("t", None, function, crate::client::Latest::No));
                }
            }),
        );
        Reflect::set(&js_sys::global(), &"late".into(), &0.into()).unwrap();
        f.frame(&[("a", 1), ("a", 2), ("a", 3), ("a", 2), ("a", 4)]);
        assert_eq!(f.take(), ["l a 1", "l a 2", "l a 3", "l a 4"], "wanted again at once: still the same subscription");
        assert_eq!(*positions.borrow(), [Some(1), Some(2), Some(3), Some(4)]);
        assert_eq!(Reflect::get(&js_sys::global(), &"late".into()).unwrap(), 2, "the new listener from the next one");
        assert_eq!(f.driver.run(|c, _| c.position("a")).map(|p| p.offset), Some(4));
    }

    #[wasm_bindgen_test]
    fn a_callback_that_closes_the_client_stops_everything_after_it() {
        let mut f = Fixture::new(&["a", "b"]);
        f.listen(
            "first",
            Box::new(|d, site, offset| {
                if (site, offset) == ("b", 1) {
                    d.shut_down();
                }
            }),
        );
        f.listen("second", nothing());
        f.frame(&[("a", 1), ("b", 1), ("a", 2), ("b", 2)]);
        assert_eq!(f.take(), ["first a 1", "second a 1", "first b 1"]);
        assert!(f.driver.client.borrow().is_closed());
    }

    #[wasm_bindgen_test]
    fn a_throwing_callback_mid_frame_stops_nothing() {
        let mut f = Fixture::new(&["a"]);
        let errors = Rc::new(RefCell::new(0));
        let count = errors.clone();
        let hook = Closure::<dyn FnMut(JsValue, JsValue)>::new(move |_, _| *count.borrow_mut() += 1);
        let function: Function = hook.as_ref().unchecked_ref::<Function>().clone();
        f.driver.run(|c, _| c.hook(HookKind::Error, function));
        f._keep.push(hook);
        let thrower = Function::new_with_args(
            "data, meta",
            "globalThis.thrown = (globalThis.thrown || 0) + 1; if (meta.offset === 2) throw new Error('boom')",
        );
        Reflect::set(&js_sys::global(), &"thrown".into(), &0.into()).unwrap();
        f.driver.run(|c, _| c.on("t", None, thrower, crate::client::Latest::No));
        f.listen("other", nothing());
        f.frame(&[("a", 1), ("a", 2), ("a", 3), ("a", 3), ("a", 4)]);
        assert_eq!(f.take(), ["other a 1", "other a 2", "other a 3", "other a 4"]);
        assert_eq!(Reflect::get(&js_sys::global(), &"thrown".into()).unwrap(), 4);
        assert_eq!(*errors.borrow(), 1, "reported once");
    }
}
