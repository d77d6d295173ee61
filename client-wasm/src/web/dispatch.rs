//! Frames to callbacks, on the JavaScript side (`dispatch.js`).
//!
//! A publication's way to its callbacks is the client's hot path. Done from WebAssembly it costs
//! a dozen boundary crossings per publication (the event's data, `JSON.parse`, a property read
//! per field, copies of the site, topic and epoch into Rust strings, a metadata object built
//! property by property, the call). Here the frames are read and the callbacks called in
//! JavaScript, and the client keeps every decision and all protocol state:
//!
//! - Each socket's `onmessage` splits a v2 frame into its lines (a legacy frame is one
//!   publication, and may contain newlines), skips blank lines, and `JSON.parse`s each.
//! - Well-formed publications (v2: `type` `pub`, string `site`, `topic` and `epoch`, a
//!   non-negative integer `offset`; legacy: string `site` and `topic`, `type` not `error`) cost
//!   one call into the client for each run of them in a frame (a packed v2 frame is mostly one
//!   run), with numbers only in a shared `Float64Array`:
//!   [`Client::accept`](crate::client::Client::accept) says of each, in order, whether it is new
//!   and wanted (deduplication by offset, the legacy socket's site). Site and epoch names cross
//!   as indices in a table of names the client keeps: each distinct name is copied into it once.
//! - The answers hold as long as the callbacks leave the client alone. Each publication is judged
//!   as if the ones before it had been dispatched, so a callback that calls the client
//!   (unsubscribes, adds a listener, closes, or throws, which is reported) may change the
//!   answers for the rest of the run. The dispatcher tells the client which publication it is
//!   dispatching (`state[0]`); the client, called back, first forgets what it recorded for the
//!   ones after it (their offsets, so neither deduplication nor the position a resubscribe
//!   recovers from counts them) and says so (`state[1]`); the dispatcher then asks about them
//!   again, one call each for the rest of the frame (a callback that calls the client once
//!   may do so for each publication). The callbacks see exactly what they would if each
//!   publication were judged alone.
//! - The callbacks for a site and topic are asked for once and cached until the listeners
//!   change (the client answers `accept` with its listeners' version). Each callback gets
//!   `(data, meta)` with `this` null; `meta` is `{site, topic, epoch, offset}` (legacy:
//!   `{site, topic}`). One that throws is reported and the others still run; once the socket is
//!   detached (the client closed, maybe by a callback), nothing more is dispatched.
//! - Every other frame, malformed ones included, goes to the client whole (`undefined` when the
//!   text was not JSON), in order with the publications.
//! - A latest publication (v2: a `pub` marked `latest: true`, from before the subscription, sent
//!   after `subscribed`) is judged by
//!   [`Client::accept_latest`](crate::client::Client::accept_latest) (its epoch index `i` crosses
//!   as `-1 - i`), which records nothing. It goes to the callbacks of the listeners that asked for
//!   latest publications (asked for each time: they are rare), with `latest: true` in `meta`,
//!   unless a publication of its slot at least as new is held already.
//! - A publication's slot is its topic; for a topic the relay keeps per kind of state (the
//!   `hello` frame's `latest_keys`, topic → field, e.g. `sitestatus` → `statusType`), its topic
//!   and the value of that top-level field of its data, when the data is an object whose field is
//!   a string following the name rules (1–64 ASCII letters, digits, `_ - . :`), as the relay
//!   does. The options' `latestKeys` (an object topic → field), when given, is used instead of
//!   what the relay announces (the legacy protocol announces nothing). The options' `keys` (a
//!   `Map`; a new one when absent) receives the rule in force.
//! - A rewind's replay under way (the options' `replays`, a `Map` of site → `{ left, to }` the npm
//!   wrapper fills when a subscribe that asked for a rewind is confirmed): of the site's next
//!   `left` publications (latest ones not counted), those the client does not accept (it had
//!   delivered them) go to the listeners `to` only (`[topic, callback]` entries: the handle's that
//!   asked for the rewind), and are not held as the last publication; those it accepts go to
//!   every listener as usual.
//! - The last publication received of each site and slot (live, replayed or latest) is held in
//!   the options' `cache` given to [`Dispatch::new`], a `Map` of site → slot (`topic`, or
//!   `topic\nkey`) → the parsed frame, up to 64 slots per site (the least recently updated
//!   dropped first). The npm wrapper reads it (a new latest listener gets what it holds at once;
//!   `latest(site, topic, key)`) and drops a site's when it unsubscribes it. Publications' data
//!   stays in JavaScript.
//!
//! - Deltas (docs/PROTOCOL.md, "Deltas"), while the last `hello` offers `fossil` and the options'
//!   `delta` is not `false` (the client then asks for them): the data text of each publication
//!   received (full, latest, replayed, or rebuilt) is kept with its epoch and offset per site and
//!   slot (the relay's slot rule, its `latest_keys`) in the options' `texts`, a `Map` the npm
//!   wrapper drops a site's of when unsubscribing it. A `pub` with `delta` is rebuilt from the
//!   slot's text at exactly `base` in its epoch with the Fossil applier, its length and checksum
//!   checked, then parsed and dispatched as a full one. One that cannot be (base not held, bad
//!   delta) is a gap: the publications before it are dispatched, it is dropped, and the client is
//!   told ([`ClientSide::gap`]): it accepts nothing more of the site until a resubscribe that
//!   recovers from the last position delivered is confirmed.
//!
//! The name table and the cached callbacks start over past 1,000 entries, so names that never
//! repeat cannot grow them without bound.

#[allow(unused_imports)]
use crate::prelude::*;

use js_sys::{Array, Float64Array, Function};
use wasm_bindgen::prelude::*;

use crate::link::LinkId;

#[wasm_bindgen(module = "/src/web/dispatch.js")]
extern "C" {
    type Dispatcher;

    /// `accept(link, buf, from, to, now)`; `ask(what, a, b, c)`; `state`: see [`Dispatch::new`].
    fn dispatcher(
        legacy: bool,
        accept: &Function,
        ask: &Function,
        state: &Float64Array,
        options: &JsValue,
    ) -> Dispatcher;

    #[wasm_bindgen(method)]
    fn attach(this: &Dispatcher, ws: &JsValue, link: LinkId) -> Function;
}

/// What the dispatcher asks the client.
pub(crate) trait ClientSide: Clone + 'static {
    /// Copies a site or epoch name into the table (emptied first when `first`); returns its
    /// index there.
    fn intern(&self, name: String, first: bool) -> u32;
    /// Whether each of publications `from..to` of a frame that arrived on `link` at `now` is new
    /// and wanted, judged in order as if each had been dispatched before the next. Each is four
    /// numbers in `buf`: its site and epoch (indices in the table; a latest publication's epoch
    /// index `i` as `-1 - i`), its offset (-1 in the legacy protocol: no position), then the
    /// answer, written there: the listeners' version (≥ 0) if so, else -1. Until the client is
    /// next called, it can forget the ones after `state[0]` (see [`Dispatch::state`]).
    fn accept(&self, link: LinkId, buf: &Float64Array, from: u32, to: u32, now: f64);
    /// The callbacks for a publication of `site` on `topic`, in order; with `latest`, for a
    /// latest publication (the listeners that want one).
    fn route(&self, site: &str, topic: &str, latest: bool) -> Array;
    /// Any other frame arrived on `link`, parsed (`undefined`: not JSON).
    fn other(&self, link: LinkId, frame: JsValue);
    /// A callback for a publication of `site` on `topic` threw `error`.
    fn failed(&self, site: String, topic: String, error: JsValue);
    /// A publication of `site` could not be read in full (a delta that does not apply): a gap
    /// ([`Client::gap`](crate::client::Client::gap)).
    fn gap(&self, site: String);
}

/// The dispatcher's requests other than `accept`, by number (`ask(what, a, b, c)` in JavaScript).
const INTERN: u32 = 0;
const ROUTE: u32 = 1;
const OTHER: u32 = 2;
const FAILED: u32 = 3;
const GAP: u32 = 4;

/// One client's dispatcher and the closures it calls, which live as long as it does.
pub(crate) struct Dispatch {
    js: Dispatcher,
    /// Shared with the dispatcher: `[i, asked]`, the index of the publication whose callbacks
    /// run, and whether the client was called since the last `accept`. The client sets `asked`
    /// when, called back from a callback, it forgets the publications after `i` (what the
    /// callback did may change their answers): the dispatcher then asks about them again.
    pub(crate) state: Float64Array,
    _accept: Closure<dyn FnMut(LinkId, Float64Array, u32, u32, f64)>,
    _ask: Closure<dyn FnMut(u32, JsValue, JsValue, JsValue) -> JsValue>,
}

impl Dispatch {
    /// A dispatcher for the legacy protocol's frames (one publication each, no position) or v2's.
    ///
    /// `accept` is called once for each run of publications in a frame, with numbers only. The
    /// rarer requests share one
    /// function, `ask(what, a, b, c)` (one closure instead of four in the bundle, values passed
    /// as they are): [`INTERN`] `(name, first)`, [`ROUTE`] `(site, topic, latest)`, [`OTHER`]
    /// `(link, frame)`, [`FAILED`] `(site, topic, error)`, [`GAP`] `(site)`.
    ///
    /// `options.cache` (a `Map`; a new one when absent) receives the last publication of each
    /// site and slot; the app's side reads it, and drops a site's when unsubscribing it.
    /// `options.keys` (a `Map`) receives the topics kept per kind of state (topic → field), from
    /// `options.latestKeys` when given, else from the relay's `hello`. `options.replays` (a `Map`)
    /// holds the rewinds' replays under way (see the module's documentation).
    pub(crate) fn new(legacy: bool, client: impl ClientSide, options: &JsValue) -> Dispatch {
        let asked = client.clone();
        let accept = Closure::<dyn FnMut(LinkId, Float64Array, u32, u32, f64)>::new(move |link, buf, from, to, now| {
            client.accept(link, &buf, from, to, now)
        });
        let ask = Closure::<dyn FnMut(u32, JsValue, JsValue, JsValue) -> JsValue>::new(
            move |what, a: JsValue, b: JsValue, c: JsValue| match what {
                INTERN => asked.intern(text(&a), b.is_truthy()).into(),
                ROUTE => asked.route(&text(&a), &text(&b), c.is_truthy()).into(),
                OTHER => {
                    asked.other(a.as_f64().unwrap_or_default() as LinkId, b);
                    JsValue::UNDEFINED
                }
                FAILED => {
                    asked.failed(text(&a), text(&b), c);
                    JsValue::UNDEFINED
                }
                GAP => {
                    asked.gap(text(&a));
                    JsValue::UNDEFINED
                }
                _ => JsValue::UNDEFINED,
            },
        );
        let state = Float64Array::new_with_length(2);
        let js = dispatcher(legacy, accept.as_ref().unchecked_ref(), ask.as_ref().unchecked_ref(), &state, options);
        Dispatch { js, state, _accept: accept, _ask: ask }
    }

    /// Takes over `ws`'s `onmessage`, dispatching its frames as `link`'s. Returns the function
    /// that stops it (and clears `onmessage`); call it before the closures are dropped.
    pub(crate) fn attach(&self, ws: &JsValue, link: LinkId) -> Function {
        self.js.attach(ws, link)
    }
}

fn text(v: &JsValue) -> String {
    v.as_string().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use alloc::rc::Rc;
    use core::cell::{Cell, RefCell};

    use js_sys::{JSON, Object, Reflect};
    use wasm_bindgen_test::*;

    use super::*;

    wasm_bindgen_test_configure!(run_in_browser);

    /// A client that is a script: it records what it is asked, accepts while `wanted`, answers
    /// with `version`, and routes to `callbacks`.
    #[derive(Clone, Default)]
    struct Script {
        log: Rc<RefCell<Vec<String>>>,
        names: Rc<RefCell<Vec<String>>>,
        wanted: Rc<Cell<bool>>,
        version: Rc<Cell<f64>>,
        callbacks: Rc<RefCell<Vec<Function>>>,
        /// The callbacks for latest publications.
        latest_callbacks: Rc<RefCell<Vec<Function>>>,
        /// Each `accept`'s range.
        batches: Rc<RefCell<Vec<(u32, u32)>>>,
    }

    impl ClientSide for Script {
        fn intern(&self, name: String, first: bool) -> u32 {
            let mut names = self.names.borrow_mut();
            if first {
                names.clear();
            }
            self.log.borrow_mut().push(format!("intern {name}{}", if first { " first" } else { "" }));
            names.push(name);
            (names.len() - 1) as u32
        }

        fn accept(&self, link: LinkId, buf: &Float64Array, from: u32, to: u32, now: f64) {
            self.batches.borrow_mut().push((from, to));
            for i in from..to {
                let at = |j: u32| buf.get_index(4 * i + j);
                let (epoch, latest) = if at(1) < 0.0 { (-1.0 - at(1), true) } else { (at(1), false) };
                let v = self.accept_one(link, at(0) as u32, epoch as u32, at(2), latest, now);
                buf.set_index(4 * i + 3, v);
            }
        }

        fn route(&self, site: &str, topic: &str, latest: bool) -> Array {
            let which = if latest { "latest " } else { "" };
            self.log.borrow_mut().push(format!("route {which}{site} {topic}"));
            let callbacks = if latest { &self.latest_callbacks } else { &self.callbacks };
            callbacks.borrow().iter().collect()
        }

        fn other(&self, link: LinkId, frame: JsValue) {
            let text = if frame.is_undefined() { "undefined".to_owned() } else { json(&frame) };
            self.log.borrow_mut().push(format!("other {link} {text}"));
        }

        fn failed(&self, site: String, topic: String, error: JsValue) {
            let message = Reflect::get(&error, &"message".into()).unwrap().as_string().unwrap();
            self.log.borrow_mut().push(format!("failed {site} {topic} {message}"));
        }

        fn gap(&self, site: String) {
            self.log.borrow_mut().push(format!("gap {site}"));
        }
    }

    impl Script {
        fn accept_one(&self, link: LinkId, site: u32, epoch: u32, offset: f64, latest: bool, now: f64) -> f64 {
            assert!(now > 1e12, "Date.now(): {now}");
            let names = self.names.borrow();
            let epoch = if offset < 0.0 { "-".to_owned() } else { names[epoch as usize].clone() };
            let which = if latest { " latest" } else { "" };
            self.log.borrow_mut().push(format!("accept {link} {} {epoch} {offset}{which}", names[site as usize]));
            if self.wanted.get() { self.version.get() } else { -1.0 }
        }
    }

    /// A dispatcher asking a [`Script`].
    struct Fake {
        dispatch: Dispatch,
        script: Script,
        /// What the dispatcher holds.
        cache: js_sys::Map,
    }

    impl core::ops::Deref for Fake {
        type Target = Script;
        fn deref(&self) -> &Script {
            &self.script
        }
    }

    impl Fake {
        fn new(legacy: bool) -> Fake {
            Fake::with_keys(legacy, None)
        }

        /// A dispatcher given `latestKeys` (JSON) when `Some`.
        fn with_keys(legacy: bool, latest_keys: Option<&str>) -> Fake {
            let script = Script::default();
            script.wanted.set(true);
            let cache = js_sys::Map::new();
            let options = Object::new();
            Reflect::set(&options, &"cache".into(), &cache).unwrap();
            if let Some(keys) = latest_keys {
                Reflect::set(&options, &"latestKeys".into(), &JSON::parse(keys).unwrap()).unwrap();
            }
            Fake { dispatch: Dispatch::new(legacy, script.clone(), &options), script, cache }
        }

        /// A callback that records `[this, data, meta]` in `globalThis.dispatched`, then runs
        /// `then` (with `data` and `meta` in scope).
        fn listen(&self, then: &str) {
            let body = format!("'use strict'; globalThis.dispatched.push([this, data, meta]); {then}");
            self.callbacks.borrow_mut().push(Function::new_with_args("data, meta", &body));
        }

        /// [`Fake::listen`] for latest publications; records `["latest", data, meta]`.
        fn listen_latest(&self) {
            let body = "globalThis.dispatched.push(['latest', data, meta])";
            self.latest_callbacks.borrow_mut().push(Function::new_with_args("data, meta", body));
        }

        fn take(&self) -> Vec<String> {
            core::mem::take(&mut *self.log.borrow_mut())
        }
    }

    fn json(v: &JsValue) -> String {
        JSON::stringify(v).unwrap().into()
    }

    /// What the callbacks recorded since the last call, as JSON.
    fn dispatched() -> String {
        let global = js_sys::global();
        let got = Reflect::get(&global, &"dispatched".into()).unwrap();
        Reflect::set(&global, &"dispatched".into(), &Array::new()).unwrap();
        if got.is_undefined() { "[]".to_owned() } else { json(&got) }
    }

    /// The `data` argument of each callback call since the last look, in order.
    fn dispatched_data() -> Vec<serde_json::Value> {
        let calls: Vec<Vec<serde_json::Value>> = serde_json::from_str(&dispatched()).unwrap();
        calls.into_iter().map(|call| call[1].clone()).collect()
    }

    /// A stand-in for a WebSocket: the dispatcher only sets its `onmessage`.
    fn socket(fake: &Fake, link: LinkId) -> (Object, Function) {
        let ws = Object::new();
        let detach = fake.dispatch.attach(&ws, link);
        (ws, detach)
    }

    fn message(ws: &Object, data: &JsValue) {
        let handler = Reflect::get(ws, &"onmessage".into()).unwrap();
        assert!(handler.is_function(), "onmessage is set");
        let event = Object::new();
        Reflect::set(&event, &"data".into(), data).unwrap();
        handler.unchecked_ref::<Function>().call1(ws, &event).unwrap();
    }

    fn pub_frame(site: &str, topic: &str, epoch: &str, offset: u32, data: &str) -> String {
        format!(
            r#"{{"type":"pub","site":"{site}","topic":"{topic}","epoch":"{epoch}","offset":{offset},"data":{data}}}"#
        )
    }

    #[wasm_bindgen_test]
    fn deltas_are_rebuilt_from_the_slot_at_their_base_else_a_gap() {
        dispatched();
        let fake = Fake::new(false);
        fake.listen("");
        let (ws, _detach) = socket(&fake, 7);
        let hello = r#"{"type":"hello","version":2,"ping_interval_ms":25000,"latest_keys":{"s":"statusType"},"deltas":["fossil"]}"#;
        let base = r#"{"statusType":"device","mount":{"ra":1}}"#;
        // Copies 35 characters of the base, inserts `2}}`; 40 characters, then the checksum.
        let delta = |offset: u32, base: u32, delta: &str| {
            let delta = serde_json::to_string(delta).unwrap();
            format!(
                r#"{{"type":"pub","site":"mrc","topic":"s","epoch":"e","offset":{offset},"key":"device","base":{base},"delta":{delta}}}"#
            )
        };
        let good = "d\na@0,3:2}}1S6Pzy;";
        let text = [hello, &pub_frame("mrc", "s", "e", 1, base), &delta(2, 1, good)].join("\n");
        message(&ws, &text.as_str().into());
        let asked = |fake: &Fake| {
            fake.take().into_iter().filter(|l| l.starts_with("accept") || l.starts_with("gap")).collect::<Vec<_>>()
        };
        assert_eq!(asked(&fake), vec!["accept 7 mrc e 1", "accept 7 mrc e 2"]);
        let data = dispatched_data();
        assert_eq!(data[1], serde_json::json!({"statusType":"device","mount":{"ra":2}}), "rebuilt as published");

        // Not held at its base (the slot is at 2), a wrong checksum, a wrong length: each a gap,
        // the publications before it dispatched first, nothing of it.
        let text = [
            pub_frame("mrc", "s", "e", 3, r#"{"statusType":"weather"}"#),
            delta(4, 1, good),
            delta(4, 2, "d\na@0,3:2}}1S6Pzz;"),
            delta(4, 2, "e\na@0,3:2}}1S6Pzy;"),
        ]
        .join("\n");
        message(&ws, &text.as_str().into());
        assert_eq!(asked(&fake), vec!["accept 7 mrc e 3", "gap mrc", "gap mrc", "gap mrc"]);
        assert_eq!(dispatched_data(), vec![serde_json::json!({"statusType":"weather"})]);
    }

    #[wasm_bindgen_test]
    fn packed_frames_are_taken_in_order_and_publications_dispatched() {
        dispatched();
        let fake = Fake::new(false);
        fake.listen("");
        let (ws, _detach) = socket(&fake, 7);
        let text = [
            r#"{"type":"hello","version":2,"ping_interval_ms":25000}"#,
            "",
            "  ",
            &pub_frame("mrc", "t", "e", 1, r#"{"n":1}"#),
            "not json",
            r#"{"type":"pub","site":"mrc","topic":"t","epoch":"e","offset":1.5,"data":1}"#,
            r#"{"type":"pub","site":"mrc","topic":"t","epoch":"e","offset":-1,"data":1}"#,
            r#"{"type":"pub","site":"mrc","topic":"t","offset":3,"data":1}"#,
            r#"{"type":"pub","site":5,"topic":"t","epoch":"e","offset":3,"data":1}"#,
            "42",
            "null",
            &pub_frame("mrc", "t", "e", 2, r#""s""#),
            "",
        ]
        .join("\n");
        message(&ws, &text.as_str().into());
        assert_eq!(
            fake.take(),
            vec![
                r#"other 7 {"type":"hello","version":2,"ping_interval_ms":25000}"#.to_owned(),
                "intern mrc first".into(),
                "intern e".into(),
                "accept 7 mrc e 1".into(),
                "route mrc t".into(),
                "other 7 undefined".into(),
                r#"other 7 {"type":"pub","site":"mrc","topic":"t","epoch":"e","offset":1.5,"data":1}"#.into(),
                r#"other 7 {"type":"pub","site":"mrc","topic":"t","epoch":"e","offset":-1,"data":1}"#.into(),
                r#"other 7 {"type":"pub","site":"mrc","topic":"t","offset":3,"data":1}"#.into(),
                r#"other 7 {"type":"pub","site":5,"topic":"t","epoch":"e","offset":3,"data":1}"#.into(),
                "other 7 42".into(),
                "other 7 null".into(),
                "accept 7 mrc e 2".into(),
            ],
            "names and routes are asked for once"
        );
        assert_eq!(
            dispatched(),
            r#"[[null,{"n":1},{"site":"mrc","topic":"t","epoch":"e","offset":1}],[null,"s",{"site":"mrc","topic":"t","epoch":"e","offset":2}]]"#,
            "this is null, the data as parsed, meta {{site, topic, epoch, offset}}"
        );
        // Binary frames are ignored.
        message(&ws, &js_sys::ArrayBuffer::new(4).into());
        assert!(fake.take().is_empty());
    }

    #[wasm_bindgen_test]
    fn routes_are_cached_per_listeners_version_and_unwanted_publications_dropped() {
        dispatched();
        let fake = Fake::new(false);
        fake.listen("");
        let (ws, _detach) = socket(&fake, 1);
        message(&ws, &pub_frame("mrc", "a", "e", 1, "1").into());
        message(&ws, &pub_frame("mrc", "b", "e", 2, "2").into());
        message(&ws, &pub_frame("mrc", "a", "e", 3, "3").into());
        fake.wanted.set(false);
        message(&ws, &pub_frame("mrc", "c", "e", 3, "4").into());
        fake.wanted.set(true);
        fake.version.set(1.0);
        fake.listen("");
        message(&ws, &pub_frame("mrc", "a", "e", 4, "5").into());
        let routes: Vec<String> = fake.take().into_iter().filter(|l| l.starts_with("route")).collect();
        assert_eq!(routes, vec!["route mrc a", "route mrc b", "route mrc a"], "asked again after the change only");
        let data = dispatched_data();
        assert_eq!(data, vec![1, 2, 3, 5, 5], "the dropped one reached nobody; the new listener got the last");

        // No callback at all: nothing to call, but the route is still cached.
        let fake = Fake::new(false);
        let (ws, _detach) = socket(&fake, 1);
        message(&ws, &pub_frame("mrc", "a", "e", 1, "1").into());
        message(&ws, &pub_frame("mrc", "a", "e", 2, "1").into());
        assert_eq!(fake.take().iter().filter(|l| l.starts_with("route")).count(), 1);
        assert_eq!(dispatched(), "[]");
    }

    #[wasm_bindgen_test]
    fn a_throwing_callback_is_reported_and_the_others_still_run() {
        dispatched();
        let fake = Fake::new(false);
        fake.listen("throw new Error('boom ' + data)");
        fake.listen("");
        let (ws, _detach) = socket(&fake, 1);
        let text = [pub_frame("mrc", "t", "e", 1, "1"), pub_frame("mrc", "t", "e", 2, "2")].join("\n");
        message(&ws, &text.into());
        let failures: Vec<String> = fake.take().into_iter().filter(|l| l.starts_with("failed")).collect();
        assert_eq!(failures, vec!["failed mrc t boom 1", "failed mrc t boom 2"]);
        assert_eq!(dispatched().matches("\"site\"").count(), 4, "both callbacks, both publications");
    }

    #[wasm_bindgen_test]
    fn a_frame_is_judged_in_one_call_and_the_rest_again_after_the_client_was_asked() {
        dispatched();
        let fake = Fake::new(false);
        // What the client does when a callback calls it: it marks the batch as stale.
        Reflect::set(&js_sys::global(), &"state".into(), &fake.dispatch.state).unwrap();
        fake.listen("globalThis.cursors = [...(globalThis.cursors || []), state[0]]; if (data === 2) state[1] = 1");
        let (ws, _detach) = socket(&fake, 1);
        let text: Vec<String> = (1..=4).map(|i| pub_frame("mrc", "t", "e", i, &i.to_string())).collect();
        message(&ws, &text.join("\n").into());
        assert_eq!(*fake.batches.borrow(), [(0, 4), (2, 3), (3, 4)], "after the second, the rest again, one by one");
        let cursors = Reflect::get(&js_sys::global(), &"cursors".into()).unwrap();
        assert_eq!(json(&cursors), "[0,1,2,3]", "the client is told which one is dispatched");
        assert_eq!(dispatched().matches("\"site\"").count(), 4);
        // Unwanted from the third on: judged again, they are dropped.
        fake.batches.borrow_mut().clear();
        let text: Vec<String> = (5..=8).map(|i| pub_frame("mrc", "t", "e", i, &i.to_string())).collect();
        fake.listen("if (data === 6) { globalThis.unwant(); state[1] = 1 }");
        fake.version.set(1.0);
        let script = fake.script.clone();
        let unwant = Closure::<dyn FnMut()>::new(move || script.wanted.set(false));
        Reflect::set(&js_sys::global(), &"unwant".into(), unwant.as_ref()).unwrap();
        message(&ws, &text.join("\n").into());
        assert_eq!(*fake.batches.borrow(), [(0, 4), (2, 3), (3, 4)]);
        let data = dispatched_data();
        assert_eq!(data, vec![5, 5, 6, 6], "both callbacks of the sixth, nothing after");
    }

    #[wasm_bindgen_test]
    fn detaching_stops_at_once_even_from_a_callback() {
        dispatched();
        let fake = Fake::new(false);
        fake.listen("globalThis.detach()");
        fake.listen("");
        let (ws, detach) = socket(&fake, 1);
        Reflect::set(&js_sys::global(), &"detach".into(), &detach).unwrap();
        let handler = Reflect::get(&ws, &"onmessage".into()).unwrap();
        let text = [pub_frame("mrc", "t", "e", 1, "1"), pub_frame("mrc", "t", "e", 2, "2")].join("\n");
        message(&ws, &text.into());
        assert_eq!(dispatched().matches("\"site\"").count(), 1, "neither the second callback nor the next line");
        assert!(Reflect::get(&ws, &"onmessage".into()).unwrap().is_null(), "onmessage cleared");
        // A handler kept from before does nothing either.
        let event = Object::new();
        Reflect::set(&event, &"data".into(), &pub_frame("mrc", "t", "e", 3, "3").into()).unwrap();
        handler.unchecked_ref::<Function>().call1(&ws, &event).unwrap();
        assert_eq!(fake.take().iter().filter(|l| l.starts_with("accept")).count(), 2, "judged together, before");
        assert_eq!(dispatched(), "[]");
    }

    #[wasm_bindgen_test]
    fn legacy_frames_are_whole_publications_without_position() {
        dispatched();
        let fake = Fake::new(true);
        fake.listen("");
        let (ws, _detach) = socket(&fake, 3);
        // A publisher's pretty-printed data: one frame, newlines and all.
        message(&ws, &"{\"site\":\"mrc\",\"topic\":\"w\",\n\"data\":{\n\"t\": 1}}".into());
        message(&ws, &r#"{"type":"error","site":"mrc","topic":"w","code":"x","message":"m"}"#.into());
        message(&ws, &"".into());
        message(&ws, &r#"{"site":"mrc","data":1}"#.into());
        assert_eq!(
            fake.take(),
            vec![
                "intern mrc first".to_owned(),
                "accept 3 mrc - -1".into(),
                "route mrc w".into(),
                r#"other 3 {"type":"error","site":"mrc","topic":"w","code":"x","message":"m"}"#.into(),
                "other 3 undefined".into(),
                r#"other 3 {"site":"mrc","data":1}"#.into(),
            ]
        );
        assert_eq!(dispatched(), r#"[[null,{"t":1},{"site":"mrc","topic":"w"}]]"#, "meta {{site, topic}}");
    }

    #[wasm_bindgen_test]
    fn name_and_route_caches_are_bounded() {
        dispatched();
        let fake = Fake::new(false);
        let (ws, _detach) = socket(&fake, 1);
        // 1000 names (999 sites and the epoch), then the table starts over.
        for i in 0..1000 {
            message(&ws, &pub_frame(&format!("s{i}"), "t", "e", 1, "1").into());
        }
        let interns: Vec<String> = fake.take().into_iter().filter(|l| l.starts_with("intern")).collect();
        assert_eq!(interns.len(), 1002, "999 sites and the epoch, then both again");
        assert_eq!(interns[0], "intern s0 first");
        assert_eq!(interns[1000], "intern s999 first");
        assert_eq!(interns[1001], "intern e");
        message(&ws, &pub_frame("s999", "t", "e", 2, "1").into());
        assert_eq!(fake.take(), vec!["accept 1 s999 e 2"], "known again after the start over");

        // 1000 routes, then the routes start over.
        let fake = Fake::new(false);
        let (ws, _detach) = socket(&fake, 1);
        for i in 0..1001 {
            message(&ws, &pub_frame("mrc", &format!("t{i}"), "e", 1, "1").into());
        }
        message(&ws, &pub_frame("mrc", "t0", "e", 1, "1").into());
        message(&ws, &pub_frame("mrc", "t1000", "e", 1, "1").into());
        let routes = fake.take().into_iter().filter(|l| l.starts_with("route")).collect::<Vec<_>>();
        assert_eq!(routes.len(), 1002);
        assert_eq!(routes[1001], "route mrc t0", "t0 was forgotten, t1000 kept");
    }

    fn latest_frame(site: &str, topic: &str, epoch: &str, offset: u32, data: &str) -> String {
        let text = pub_frame(site, topic, epoch, offset, data);
        format!("{},\"latest\":true}}", &text[..text.len() - 1])
    }

    impl Fake {
        /// The data of the publication held of `site` on `topic`, as JSON; `None` if none.
        fn held(&self, site: &str, topic: &str) -> Option<String> {
            let topics = self.cache.get(&site.into());
            if topics.is_undefined() {
                return None;
            }
            let frame = topics.unchecked_ref::<js_sys::Map>().get(&topic.into());
            (!frame.is_undefined()).then(|| json(&Reflect::get(&frame, &"data".into()).unwrap()))
        }

        /// The slots held of `site` (`topic`, or `topic:key` for a keyed one), least recently
        /// updated first.
        fn held_topics(&self, site: &str) -> Vec<String> {
            let topics = self.cache.get(&site.into());
            if topics.is_undefined() {
                return Vec::new();
            }
            js_sys::Array::from(&topics.unchecked_ref::<js_sys::Map>().keys().into())
                .iter()
                .map(|t| t.as_string().unwrap().replace('\n', ":"))
                .collect()
        }
    }

    #[wasm_bindgen_test]
    fn latest_publications_go_to_latest_listeners_unless_something_as_new_is_held() {
        dispatched();
        let fake = Fake::new(false);
        fake.listen("");
        fake.listen_latest();
        let (ws, _detach) = socket(&fake, 7);
        // The answer to a subscribe with latest: a topic published long ago, another's latest,
        // then live.
        let text = [
            latest_frame("mrc", "enc", "e", 3, r#""open""#),
            latest_frame("mrc", "w", "e", 517, "1"),
            pub_frame("mrc", "w", "e", 521, "2"),
        ]
        .join("\n");
        message(&ws, &text.into());
        assert_eq!(
            fake.take(),
            vec![
                "intern mrc first",
                "intern e",
                "accept 7 mrc e 3 latest",
                "accept 7 mrc e 517 latest",
                "accept 7 mrc e 521",
                "route latest mrc enc",
                "route latest mrc w",
                "route mrc w",
            ],
            "judged together, the latest ones marked"
        );
        assert_eq!(
            dispatched(),
            concat!(
                r#"[["latest","open",{"site":"mrc","topic":"enc","epoch":"e","offset":3,"latest":true}],"#,
                r#"["latest",1,{"site":"mrc","topic":"w","epoch":"e","offset":517,"latest":true}],"#,
                r#"[null,2,{"site":"mrc","topic":"w","epoch":"e","offset":521}]]"#
            ),
            "latest ones to the latest listeners with latest: true; live ones as before"
        );
        assert_eq!(fake.held("mrc", "w").as_deref(), Some("2"));
        assert_eq!(fake.held("mrc", "enc").as_deref(), Some(r#""open""#));
        assert_eq!((fake.held("mrc", "x"), fake.held("saf", "w")), (None, None));

        // Another subscribe's latest ones: what is held already is not handed out again.
        let text = [latest_frame("mrc", "w", "e", 521, "2"), latest_frame("mrc", "enc", "e", 3, r#""open""#)];
        message(&ws, &text.join("\n").into());
        assert!(!fake.take().iter().any(|l| l.starts_with("route")));
        assert_eq!(dispatched(), "[]");
        // Newer than what is held (a gap that could not be recovered), or of a new epoch: handed out.
        message(&ws, &latest_frame("mrc", "w", "e", 900, "3").into());
        message(&ws, &latest_frame("mrc", "enc", "f", 1, r#""closed""#).into());
        assert_eq!(dispatched_data(), vec![serde_json::json!(3), serde_json::json!("closed")]);
        assert_eq!(fake.held("mrc", "enc").as_deref(), Some(r#""closed""#));
        // Refused by the client (not of a wanted site's stream): neither handed out nor held.
        fake.wanted.set(false);
        message(&ws, &latest_frame("sro", "w", "e", 1, "4").into());
        message(&ws, &pub_frame("sro", "w", "e", 2, "5").into());
        assert_eq!(dispatched(), "[]");
        assert_eq!(fake.held("sro", "w"), None);
    }

    #[wasm_bindgen_test]
    fn what_is_held_is_bounded_per_site_least_recently_updated_first() {
        dispatched();
        let fake = Fake::new(false);
        let (ws, _detach) = socket(&fake, 1);
        message(&ws, &pub_frame("saf", "t0", "f", 1, "0").into());
        for i in 0..64 {
            message(&ws, &pub_frame("mrc", &format!("t{i}"), "e", i + 1, &i.to_string()).into());
        }
        assert_eq!(fake.held_topics("mrc"), (0..64).map(|i| format!("t{i}")).collect::<Vec<_>>(), "64 held");
        assert_eq!(dispatched(), "[]", "nobody listens: held all the same");
        // t0 updated: t1 is now the least recently updated, and goes with the 65th topic.
        message(&ws, &pub_frame("mrc", "t0", "e", 65, "65").into());
        message(&ws, &pub_frame("mrc", "t64", "e", 66, "66").into());
        let topics = fake.held_topics("mrc");
        assert_eq!(topics.len(), 64);
        assert_eq!((topics[0].as_str(), topics[62].as_str(), topics[63].as_str()), ("t2", "t0", "t64"));
        assert_eq!(fake.held("mrc", "t0").as_deref(), Some("65"));
        assert_eq!(fake.held("mrc", "t1"), None);
        message(&ws, &pub_frame("mrc", "t65", "e", 67, "67").into());
        assert_eq!((fake.held("mrc", "t2"), fake.held("mrc", "t3").as_deref()), (None, Some("3")));
        assert_eq!(fake.held_topics("saf"), vec!["t0"], "per site");
    }

    #[wasm_bindgen_test]
    fn legacy_publications_are_held_and_never_latest() {
        dispatched();
        let fake = Fake::new(true);
        fake.listen("");
        fake.listen_latest();
        let (ws, _detach) = socket(&fake, 3);
        message(&ws, &r#"{"site":"mrc","topic":"w","data":1,"latest":true}"#.into());
        assert_eq!(fake.take(), vec!["intern mrc first", "accept 3 mrc - -1", "route mrc w"]);
        assert_eq!(dispatched(), r#"[[null,1,{"site":"mrc","topic":"w"}]]"#);
        assert_eq!(fake.held("mrc", "w").as_deref(), Some("1"));
    }

    /// A `sitestatus`-like publication of kind `kind` (a JSON value) with payload `n`.
    fn status(kind: &str, n: u32) -> String {
        format!(r#"{{"statusType":{kind},"n":{n}}}"#)
    }

    const HELLO: &str = r#"{"type":"hello","version":2,"ping_interval_ms":25000,"max_subscriptions":10,"latest_keys":{"s":"statusType"}}"#;

    #[wasm_bindgen_test]
    fn a_keyed_topic_is_held_per_kind_by_the_rule_the_hello_announces() {
        dispatched();
        let fake = Fake::new(false);
        let (ws, _detach) = socket(&fake, 1);
        // Before the relay said anything: one slot per topic.
        message(&ws, &pub_frame("mrc", "s", "e", 1, &status(r#""enclosure""#, 1)).into());
        assert_eq!(fake.held_topics("mrc"), ["s"]);
        message(&ws, &HELLO.into());
        assert!(
            fake.take().iter().any(|l| l.starts_with("other 1 {\"type\":\"hello\"")),
            "the client still gets the hello"
        );
        let mut offset = 1;
        let mut publish = |topic: &str, data: &str| {
            offset += 1;
            message(&ws, &pub_frame("mrc", topic, "e", offset, data).into());
        };
        publish("s", &status(r#""enclosure""#, 2));
        publish("s", &status(r#""weather""#, 3));
        publish("s", &status(r#""weather""#, 4));
        publish("s", &status(r#""device:1.a-b_c""#, 5));
        assert_eq!(fake.held_topics("mrc"), ["s", "s:enclosure", "s:weather", "s:device:1.a-b_c"]);
        assert_eq!(fake.held("mrc", "s\nweather").as_deref(), Some(&*status(r#""weather""#, 4)));
        assert_eq!(fake.held("mrc", "s\nenclosure").as_deref(), Some(&*status(r#""enclosure""#, 2)));
        // Kept under the topic alone: no such field, not a string, not a name, not an object, or
        // the field only nested.
        let long = format!(r#""{}""#, "x".repeat(65));
        for (i, unkeyed) in [
            r#"{"n":6}"#.to_owned(),
            status("3", 7),
            status("null", 8),
            status(r#""has space""#, 9),
            status(r#""""#, 10),
            status(&long, 11),
            status(r#"["weather"]"#, 12),
            r#"["weather"]"#.to_owned(),
            r#""weather""#.to_owned(),
            "null".to_owned(),
            r#"{"status":{"statusType":"weather"}}"#.to_owned(),
        ]
        .into_iter()
        .enumerate()
        {
            publish("s", &unkeyed);
            assert_eq!(fake.held("mrc", "s").as_deref(), Some(unkeyed.as_str()), "case {i}");
            assert_eq!(fake.held_topics("mrc").len(), 4, "case {i}: no new slot");
        }
        let long_ok = format!(r#""{}""#, "x".repeat(64));
        publish("s", &status(&long_ok, 13));
        // Another topic's field of that name means nothing.
        publish("t", &status(r#""weather""#, 14));
        assert_eq!(fake.held_topics("mrc").len(), 6);
        assert_eq!(fake.held("mrc", "t").as_deref(), Some(&*status(r#""weather""#, 14)));
        // A relay that announces no rule (a later connection): one slot per topic again.
        message(&ws, &r#"{"type":"hello","version":2,"ping_interval_ms":25000,"max_subscriptions":10}"#.into());
        message(&ws, &pub_frame("mrc", "s", "e", 100, &status(r#""rain""#, 15)).into());
        assert_eq!(fake.held("mrc", "s").as_deref(), Some(&*status(r#""rain""#, 15)));
        assert_eq!(fake.held("mrc", "s\nrain"), None);
    }

    #[wasm_bindgen_test]
    fn a_latest_publication_is_dropped_only_if_its_own_kind_is_held_as_new() {
        dispatched();
        let fake = Fake::new(false);
        fake.listen("");
        fake.listen_latest();
        let (ws, _detach) = socket(&fake, 1);
        message(&ws, &HELLO.into());
        // Weather received live at 500; the enclosure's latest, published at 12, still comes.
        message(&ws, &pub_frame("mrc", "s", "e", 500, &status(r#""weather""#, 1)).into());
        assert_eq!(dispatched_data(), [serde_json::json!({"statusType": "weather", "n": 1})]);
        let text = [
            latest_frame("mrc", "s", "e", 12, &status(r#""enclosure""#, 2)),
            latest_frame("mrc", "s", "e", 500, &status(r#""weather""#, 1)),
            latest_frame("mrc", "s", "e", 499, &status(r#""weather""#, 0)),
        ]
        .join("\n");
        message(&ws, &text.into());
        assert_eq!(
            dispatched(),
            r#"[["latest",{"statusType":"enclosure","n":2},{"site":"mrc","topic":"s","epoch":"e","offset":12,"latest":true}]]"#,
            "the enclosure's, not the weather held already"
        );
        // Asked again (another listener): both held, nothing handed out twice.
        let text = [
            latest_frame("mrc", "s", "e", 12, &status(r#""enclosure""#, 2)),
            latest_frame("mrc", "s", "e", 500, &status(r#""weather""#, 1)),
        ];
        message(&ws, &text.join("\n").into());
        assert_eq!(dispatched(), "[]");
        // A newer one of a kind (a gap not recovered) is handed out; the other kind is left alone.
        message(&ws, &latest_frame("mrc", "s", "e", 600, &status(r#""enclosure""#, 3)).into());
        assert_eq!(dispatched_data(), [serde_json::json!({"statusType": "enclosure", "n": 3})]);
        assert_eq!(fake.held("mrc", "s\nweather").as_deref(), Some(&*status(r#""weather""#, 1)));
        // Without keys (a topic not in the rule), the weather held hides the older enclosure.
        message(&ws, &pub_frame("mrc", "u", "e", 700, &status(r#""weather""#, 4)).into());
        dispatched();
        message(&ws, &latest_frame("mrc", "u", "e", 13, &status(r#""enclosure""#, 5)).into());
        assert_eq!(dispatched(), "[]");
    }

    #[wasm_bindgen_test]
    fn the_bound_counts_slots_least_recently_updated_first() {
        dispatched();
        let fake = Fake::new(false);
        let (ws, _detach) = socket(&fake, 1);
        message(&ws, &HELLO.into());
        message(&ws, &pub_frame("mrc", "t", "e", 1, "0").into());
        for i in 1..64 {
            message(&ws, &pub_frame("mrc", "s", "e", i + 1, &status(&format!(r#""k{i}""#), i)).into());
        }
        let slots = fake.held_topics("mrc");
        assert_eq!((slots.len(), slots[0].as_str(), slots[63].as_str()), (64, "t", "s:k63"));
        // t updated, then a 65th slot: the least recently updated (k1) goes.
        message(&ws, &pub_frame("mrc", "t", "e", 65, "1").into());
        message(&ws, &pub_frame("mrc", "s", "e", 66, &status(r#""k64""#, 64)).into());
        let slots = fake.held_topics("mrc");
        assert_eq!(slots.len(), 64);
        assert_eq!((slots[0].as_str(), slots[62].as_str(), slots[63].as_str()), ("s:k2", "t", "s:k64"));
        assert_eq!(fake.held("mrc", "s\nk1"), None);
    }

    #[wasm_bindgen_test]
    fn keys_given_by_the_app_win_over_the_relays_and_serve_the_legacy_protocol() {
        dispatched();
        let fake = Fake::with_keys(false, Some(r#"{"s":"kind"}"#));
        let (ws, _detach) = socket(&fake, 1);
        message(&ws, &HELLO.into());
        message(&ws, &pub_frame("mrc", "s", "e", 1, r#"{"kind":"a","statusType":"weather"}"#).into());
        message(&ws, &pub_frame("mrc", "s", "e", 2, r#"{"kind":"b","statusType":"weather"}"#).into());
        assert_eq!(fake.held_topics("mrc"), ["s:a", "s:b"]);

        let legacy = Fake::with_keys(true, Some(r#"{"sitestatus":"statusType"}"#));
        let (ws, _detach) = socket(&legacy, 2);
        for kind in ["enclosure", "weather", "weather"] {
            let frame = format!(r#"{{"site":"mrc","topic":"sitestatus","data":{{"statusType":"{kind}"}}}}"#);
            message(&ws, &frame.into());
        }
        assert_eq!(legacy.held_topics("mrc"), ["sitestatus:enclosure", "sitestatus:weather"]);
    }
}
