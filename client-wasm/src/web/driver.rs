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

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use gloo_events::EventListener;
use gloo_timers::callback::Timeout;
use js_sys::{Array, Function};
use wasm_bindgen::prelude::*;

use super::convert;
use super::decode::decode;
use super::dispatch::{ClientSide, Dispatch};
use super::socket::{Handlers, Socket};
use crate::callbacks::HookKind;
use crate::client::{Action, Client, Event};
use crate::config::Protocol;
use crate::link::{LinkId, TimerKind};

pub(crate) type JsClient = Client<Function, JsValue>;

/// The browser side of one client.
pub(crate) struct Driver {
    pub(crate) client: RefCell<JsClient>,
    io: RefCell<Io>,
    legacy: bool,
    /// Reads every socket's frames and calls the publication callbacks.
    dispatch: Dispatch,
    /// The site and epoch names the dispatcher refers to by index.
    names: RefCell<Vec<String>>,
}

/// What the driver holds on the browser's side. Dropping it closes the sockets, cancels the
/// timers and removes the listeners.
#[derive(Default)]
struct Io {
    sockets: Vec<(LinkId, Socket)>,
    timers: Vec<(LinkId, TimerKind, Timeout)>,
    /// `online` on the window and `visibilitychange` on the document.
    listeners: Vec<EventListener>,
}

fn now() -> f64 {
    js_sys::Date::now()
}

impl Driver {
    /// Starts `client`: opens its sockets and listens to the browser's connectivity events.
    pub(crate) fn start(client: JsClient, protocol: Protocol) -> Rc<Driver> {
        let legacy = protocol == Protocol::Legacy;
        let driver = Rc::new_cyclic(|weak: &Weak<Driver>| Driver {
            client: RefCell::new(client),
            io: RefCell::new(Io::default()),
            legacy,
            dispatch: Dispatch::new(legacy, weak.clone()),
            names: RefCell::new(Vec::new()),
        });
        driver.listen_to_browser();
        driver.run(|c, now| c.start(now));
        driver
    }

    /// Calls `f` on the client, then carries out what it decided.
    pub(crate) fn run<R>(self: &Rc<Self>, f: impl FnOnce(&mut JsClient, f64) -> R) -> R {
        let (result, actions) = {
            let mut client = self.client.borrow_mut();
            let result = f(&mut client, now());
            (result, client.take_actions())
        };
        for action in actions {
            self.perform(action);
        }
        result
    }

    fn perform(self: &Rc<Self>, action: Action<Function, JsValue>) {
        match action {
            Action::Open { link, url, subprotocol } => self.open(link, &url, subprotocol),
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
                let weak = Rc::downgrade(self);
                let timeout = Timeout::new(ms, move || {
                    if let Some(driver) = weak.upgrade() {
                        driver.run(|c, now| c.timer(link, kind, now));
                    }
                });
                let old = {
                    let mut io = self.io.borrow_mut();
                    let old = take_timer(&mut io, link, kind);
                    io.timers.push((link, kind, timeout));
                    old
                };
                // Dropped outside the borrow: it may be the very timer running this code.
                drop(old);
            }
            Action::ClearTimer { link, kind } => {
                let old = take_timer(&mut self.io.borrow_mut(), link, kind);
                drop(old);
            }
            Action::Notify { callbacks, event } => {
                let kind = match &event {
                    Event::State(_) => HookKind::State,
                    Event::Error(_) => HookKind::Error,
                    Event::RecoveryFailed(_) => HookKind::RecoveryFailed,
                    Event::Ready => HookKind::Ready,
                };
                let arg = convert::event(event);
                for callback in callbacks {
                    if let Err(error) = callback.call1(&JsValue::NULL, &arg)
                        && let Some(unreported) = self.run(|c, _| c.hook_failed(kind, error))
                    {
                        web_sys::console::error_2(&"datastream: an error listener threw".into(), &unreported);
                    }
                }
            }
        }
    }

    fn open(self: &Rc<Self>, link: LinkId, url: &str, subprotocol: Option<&str>) {
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
        match Socket::open(url, subprotocol, handlers, &self.dispatch, link) {
            Ok(socket) => self.io.borrow_mut().sockets.push((link, socket)),
            // The URL was validated, so this is rare (e.g. a port the browser blocks): treat it
            // as a failed attempt and let the backoff run.
            Err(_) => self.run(|c, now| c.socket_closed(link, 1006, String::new(), now)),
        }
    }

    fn listen_to_browser(self: &Rc<Self>) {
        // Absent in workers; the client then relies on its heartbeat alone.
        let Some(window) = web_sys::window() else { return };
        let weak = Rc::downgrade(self);
        let online = EventListener::new(&window, "online", move |_| with(&weak, |d| d.run(|c, now| c.online(now))));
        let mut listeners = vec![online];
        if let Some(document) = window.document() {
            let weak = Rc::downgrade(self);
            let doc = document.clone();
            listeners.push(EventListener::new(&document, "visibilitychange", move |_| {
                if doc.visibility_state() == web_sys::VisibilityState::Visible {
                    with(&weak, |d| d.run(|c, now| c.visible(now)));
                }
            }));
        }
        self.io.borrow_mut().listeners = listeners;
    }

    /// Closes the client and lets go of every browser resource at once.
    pub(crate) fn shut_down(self: &Rc<Self>) {
        self.run(|c, _| c.close());
        let io = std::mem::take(&mut *self.io.borrow_mut());
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

    fn accept(&self, link: LinkId, site: u32, epoch: u32, offset: f64, now: f64) -> f64 {
        let Some(d) = self.upgrade() else { return -1.0 };
        let names = d.names.borrow();
        let Some(site) = names.get(site as usize) else { return -1.0 };
        let position = if offset < 0.0 {
            None
        } else {
            let Some(epoch) = names.get(epoch as usize) else { return -1.0 };
            Some((epoch.as_str(), offset as u64))
        };
        let mut client = d.client.borrow_mut();
        if client.accept(link, site, position, now) { f64::from(client.listeners_version()) } else { -1.0 }
    }

    fn route(&self, site: &str, topic: &str) -> Array {
        let callbacks = self.upgrade().map(|d| d.client.borrow().listeners(site, topic)).unwrap_or_default();
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
}

fn take_timer(io: &mut Io, link: LinkId, kind: TimerKind) -> Option<Timeout> {
    let i = io.timers.iter().position(|(l, k, _)| *l == link && *k == kind)?;
    Some(io.timers.swap_remove(i).2)
}

fn with(weak: &Weak<Driver>, f: impl FnOnce(&Rc<Driver>)) {
    if let Some(driver) = weak.upgrade() {
        f(&driver);
    }
}
