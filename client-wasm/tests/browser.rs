//! The SDK in a real browser against the real relay, run by `scripts/test-client.sh` with
//! `wasm-pack test --headless --chrome` and `--firefox`.
//!
//! The script starts `tests/client/harness.mjs` first: the relay (1 s heartbeat), a TCP proxy in
//! front of it that tests can cut, refuse or freeze, and a control endpoint to publish and to
//! restart the relay. Their ports arrive at compile time in `DS_TEST_RELAY_PORT`,
//! `DS_TEST_PROXY_PORT` and `DS_TEST_CONTROL_PORT`. Each test uses its own sites.

#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, missing_debug_implementations, unreachable_pub)]

use std::cell::RefCell;
use std::rc::Rc;

use datastream_client::DatastreamCore;
use js_sys::{Function, JSON, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn port(value: Option<&'static str>, name: &str) -> u16 {
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} not set: run scripts/test-client.sh"))
}

fn relay_url() -> String {
    format!("ws://127.0.0.1:{}/dev", port(option_env!("DS_TEST_RELAY_PORT"), "DS_TEST_RELAY_PORT"))
}

fn proxy_url() -> String {
    format!("ws://127.0.0.1:{}/dev", port(option_env!("DS_TEST_PROXY_PORT"), "DS_TEST_PROXY_PORT"))
}

async fn control(path: &str, body: &str) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}{path}", port(option_env!("DS_TEST_CONTROL_PORT"), "DS_TEST_CONTROL_PORT"));
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(body));
    let window = web_sys::window().unwrap();
    let res: web_sys::Response = JsFuture::from(window.fetch_with_str_and_init(&url, &init)).await.unwrap().into();
    let text = JsFuture::from(res.text().unwrap()).await.unwrap().as_string().unwrap();
    assert!(res.ok(), "{path}: {} {text}", res.status());
    serde_json::from_str(&text).unwrap()
}

async fn publish(site: &str, topic: &str, data: serde_json::Value) {
    publish_raw(site, topic, &data.to_string()).await;
}

/// Publishes `data` as this JSON text, byte for byte.
async fn publish_raw(site: &str, topic: &str, data: &str) {
    control("/publish", &format!(r#"{{"site":"{site}","topic":"{topic}","data":{data}}}"#)).await;
}

async fn sleep(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        web_sys::window().unwrap().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms).unwrap();
    });
    JsFuture::from(p).await.unwrap();
}

/// Polls `cond` every 20 ms; fails the test with `what` after `ms`.
async fn wait_until(what: &str, ms: i32, cond: impl Fn() -> bool) {
    let mut waited = 0;
    while !cond() {
        assert!(waited < ms, "timed out after {ms} ms waiting for {what}");
        sleep(20).await;
        waited += 20;
    }
}

thread_local! {
    static BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs tests one at a time: the runner interleaves async tests, and some cut, freeze or
/// restart what every other test's connection goes through.
struct Serial;

impl Serial {
    async fn acquire() -> Serial {
        while BUSY.with(|b| b.replace(true)) {
            sleep(50).await;
        }
        Serial
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(false));
    }
}

thread_local! {
    static RUN: String = format!("{:06}", (js_sys::Math::random() * 1e6) as u32);
}

/// A site name unique to this run, so history left by an earlier run against the same relay
/// cannot shift offsets.
fn site(name: &str) -> String {
    RUN.with(|run| format!("{name}-{run}"))
}

#[derive(Debug, Clone, PartialEq)]
struct Got {
    site: String,
    topic: String,
    epoch: Option<String>,
    offset: Option<u64>,
    data: String,
    /// `meta.latest`: a latest publication, not a live one.
    latest: bool,
}

type Log = Rc<RefCell<Vec<JsValue>>>;

/// A client and everything it reported.
struct Probe {
    core: DatastreamCore,
    states: Log,
    errors: Log,
    recoveries: Log,
    closures: Vec<Closure<dyn FnMut(JsValue, JsValue)>>,
}

fn get_str(v: &JsValue, key: &str) -> Option<String> {
    Reflect::get(v, &key.into()).ok()?.as_string()
}

impl Probe {
    fn new(options: serde_json::Value) -> Probe {
        Probe::with(options, &JsValue::UNDEFINED)
    }

    /// [`Probe::new`], the dispatcher holding the last publication of each slot in `cache` (a
    /// `Map`, as the npm wrapper passes it) when given.
    fn with(options: serde_json::Value, cache: &JsValue) -> Probe {
        let options = JSON::parse(&options.to_string()).unwrap();
        if !cache.is_undefined() {
            Reflect::set(&options, &"cache".into(), cache).unwrap();
        }
        let mut p = Probe {
            core: DatastreamCore::new(options).unwrap(),
            states: Log::default(),
            errors: Log::default(),
            recoveries: Log::default(),
            closures: Vec::new(),
        };
        for (kind, log) in
            [("state", p.states.clone()), ("error", p.errors.clone()), ("recoveryfailed", p.recoveries.clone())]
        {
            let f = p.keep(move |event, _| log.borrow_mut().push(event));
            p.core.hook(kind, f).unwrap();
        }
        p.core.start();
        p
    }

    fn keep(&mut self, f: impl FnMut(JsValue, JsValue) + 'static) -> Function {
        let closure = Closure::<dyn FnMut(JsValue, JsValue)>::new(f);
        let function = closure.as_ref().unchecked_ref::<Function>().clone();
        self.closures.push(closure);
        function
    }

    /// Records every publication `topic` (on `site` only if given) delivers.
    fn listen(&mut self, topic: &str, site: Option<&str>) -> Rc<RefCell<Vec<Got>>> {
        self.listen_id(topic, site).0
    }

    /// [`Probe::listen`], with the listener's id.
    fn listen_id(&mut self, topic: &str, site: Option<&str>) -> (Rc<RefCell<Vec<Got>>>, u32) {
        self.listen_with(topic, site, 0)
    }

    /// [`Probe::listen`] for a listener that wants latest publications, which the client does
    /// not hold (the npm wrapper hands over what it holds itself): the relay is asked for them.
    fn listen_latest(&mut self, topic: &str, site: Option<&str>) -> Rc<RefCell<Vec<Got>>> {
        self.listen_with(topic, site, 2).0
    }

    fn listen_with(&mut self, topic: &str, site: Option<&str>, latest: u8) -> (Rc<RefCell<Vec<Got>>>, u32) {
        let got = Rc::new(RefCell::new(Vec::new()));
        let log = got.clone();
        let f = self.keep(move |data, meta| {
            log.borrow_mut().push(Got {
                site: get_str(&meta, "site").unwrap(),
                topic: get_str(&meta, "topic").unwrap(),
                epoch: get_str(&meta, "epoch"),
                offset: Reflect::get(&meta, &"offset".into()).unwrap().as_f64().map(|n| n as u64),
                data: JSON::stringify(&data).unwrap().into(),
                latest: Reflect::get(&meta, &"latest".into()).unwrap() == JsValue::TRUE,
            })
        });
        let id = self.core.on(topic, f, site.map(str::to_owned), latest);
        (got, id)
    }

    fn state(&self) -> String {
        get_str(&self.core.state(), "type").unwrap()
    }

    async fn ready(&self) {
        wait_until("ready", 10_000, || self.core.is_ready()).await;
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.core.close();
    }
}

fn offsets(got: &Rc<RefCell<Vec<Got>>>) -> Vec<u64> {
    got.borrow().iter().map(|g| g.offset.unwrap_or(0)).collect()
}

#[wasm_bindgen_test]
async fn connects_and_receives() {
    let _serial = Serial::acquire().await;
    let mut p = Probe::new(serde_json::json!({"url": relay_url(), "sites": [site("b-recv")]}));
    let got = p.listen("weather", None);
    assert_eq!(p.state(), "connecting");
    p.ready().await;
    assert_eq!(p.state(), "connected");
    publish_raw(&site("b-recv"), "weather", r#"{"t":1.50,"s":"x"}"#).await;
    wait_until("one publication", 5_000, || got.borrow().len() == 1).await;
    let g = got.borrow()[0].clone();
    assert_eq!((g.site.as_str(), g.topic.as_str(), g.offset), (site("b-recv").as_str(), "weather", Some(1)));
    assert!(g.epoch.is_some_and(|e| !e.is_empty()));
    assert_eq!(g.data, r#"{"t":1.5,"s":"x"}"#, "the publisher's object, key order kept");
    let states: Vec<String> = p.states.borrow().iter().map(|s| get_str(s, "type").unwrap()).collect();
    assert_eq!(states, vec!["connecting", "connected"]);
}

#[wasm_bindgen_test]
async fn topic_filter_is_applied_by_the_server() {
    let _serial = Serial::acquire().await;
    let mut p = Probe::new(serde_json::json!({"url": proxy_url(), "sites": [site("b-filter")]}));
    let got = p.listen("weather", None);
    p.ready().await;
    control("/reset", "").await;
    let big = "x".repeat(50_000);
    publish(&site("b-filter"), "imagedata", serde_json::json!({ "blob": big })).await;
    publish(&site("b-filter"), "weather", serde_json::json!({"t": 2})).await;
    wait_until("the weather publication", 5_000, || got.borrow().len() == 1).await;
    assert_eq!(offsets(&got), vec![2], "offset 1 was filtered out on the server");
    let stats = control("/stats", "").await;
    let bytes = stats["bytes_to_client"].as_u64().unwrap();
    assert!(bytes < 5_000, "the filtered 50 KB publication reached the browser: {bytes} bytes");
}

#[wasm_bindgen_test]
async fn many_sites_over_one_socket_with_a_site_filter() {
    let _serial = Serial::acquire().await;
    control("/reset", "").await;
    let mut p = Probe::new(serde_json::json!({"url": proxy_url(), "sites": [site("b-m1"), site("b-m2")]}));
    let all = p.listen("*", None);
    let m2 = p.listen("status", Some(site("b-m2").as_str()));
    p.ready().await;
    publish(&site("b-m1"), "status", serde_json::json!(1)).await;
    publish(&site("b-m2"), "status", serde_json::json!(2)).await;
    publish(&site("b-m2"), "jobs", serde_json::json!(3)).await;
    wait_until("three publications", 5_000, || all.borrow().len() == 3).await;
    let sites: Vec<String> = all.borrow().iter().map(|g| g.site.clone()).collect();
    assert_eq!(sites, vec![site("b-m1"), site("b-m2"), site("b-m2")]);
    assert_eq!(m2.borrow().len(), 1);
    assert_eq!(m2.borrow()[0].data, "2");
    assert_eq!(control("/stats", "").await["connections"], 1, "one socket for both sites");
}

#[wasm_bindgen_test]
async fn subscribe_with_rewind_and_unsubscribe() {
    let _serial = Serial::acquire().await;
    for n in 1..=3 {
        publish(&site("b-rw"), "t", serde_json::json!(n)).await;
    }
    let mut p = Probe::new(serde_json::json!({"url": relay_url()}));
    let got = p.listen("*", None);
    p.ready().await;
    p.core.subscribe(&site("b-rw"), Some(2));
    wait_until("the rewound publications", 5_000, || got.borrow().len() == 2).await;
    assert_eq!(offsets(&got), vec![2, 3]);
    publish(&site("b-rw"), "t", serde_json::json!(4)).await;
    wait_until("a live publication", 5_000, || got.borrow().len() == 3).await;
    p.core.unsubscribe(&site("b-rw"));
    sleep(100).await;
    publish(&site("b-rw"), "t", serde_json::json!(5)).await;
    sleep(500).await;
    assert_eq!(offsets(&got), vec![2, 3, 4], "nothing after unsubscribe");
}

#[wasm_bindgen_test]
async fn recovers_exactly_what_was_missed_while_cut_off() {
    let _serial = Serial::acquire().await;
    let mut p = Probe::new(serde_json::json!({
        "url": proxy_url(), "sites": [site("b-rec")], "minReconnectDelay": 100, "maxReconnectDelay": 200
    }));
    let got = p.listen("*", None);
    p.ready().await;
    for n in 1..=3 {
        publish(&site("b-rec"), "t", serde_json::json!(n)).await;
    }
    wait_until("the first three", 5_000, || got.borrow().len() == 3).await;
    control("/refuse", "").await;
    control("/cut", "").await;
    wait_until("reconnecting", 5_000, || p.state() == "reconnecting").await;
    for n in 4..=8 {
        publish(&site("b-rec"), "t", serde_json::json!(n)).await;
    }
    sleep(400).await;
    assert_eq!(p.state(), "reconnecting", "refused attempts keep it reconnecting");
    control("/accept", "").await;
    p.ready().await;
    publish(&site("b-rec"), "t", serde_json::json!(9)).await;
    wait_until("all nine", 5_000, || got.borrow().len() >= 9).await;
    sleep(200).await;
    assert_eq!(offsets(&got), (1..=9).collect::<Vec<u64>>(), "each once, in order, none missing");
    let data: Vec<String> = got.borrow().iter().map(|g| g.data.clone()).collect();
    assert_eq!(data, (1..=9).map(|n| n.to_string()).collect::<Vec<_>>());
    assert!(p.recoveries.borrow().is_empty(), "recovery succeeded");
    assert!(p.errors.borrow().is_empty());
    let reconnecting = p.states.borrow().iter().filter(|s| get_str(s, "type").unwrap() == "reconnecting").count();
    assert!(reconnecting >= 1);
}

#[wasm_bindgen_test]
async fn a_relay_restart_reports_that_recovery_failed() {
    let _serial = Serial::acquire().await;
    let mut p = Probe::new(serde_json::json!({
        "url": proxy_url(), "sites": [site("b-restart")], "minReconnectDelay": 100, "maxReconnectDelay": 300
    }));
    let got = p.listen("*", None);
    p.ready().await;
    publish(&site("b-restart"), "t", serde_json::json!(1)).await;
    wait_until("the first publication", 5_000, || got.borrow().len() == 1).await;
    let first_epoch = got.borrow()[0].epoch.clone();
    control("/restart", "").await;
    wait_until("the failed-recovery event", 15_000, || !p.recoveries.borrow().is_empty()).await;
    let failure = p.recoveries.borrow()[0].clone();
    assert_eq!(get_str(&failure, "site").as_deref(), Some(site("b-restart").as_str()));
    assert_eq!(get_str(&failure, "reason").as_deref(), Some("epoch_changed"));
    p.ready().await;
    publish(&site("b-restart"), "t", serde_json::json!(2)).await;
    wait_until("a publication of the new epoch", 5_000, || got.borrow().len() == 2).await;
    let g = got.borrow()[1].clone();
    assert_eq!(g.offset, Some(1));
    assert_ne!(g.epoch, first_epoch);
}

#[wasm_bindgen_test]
async fn a_silent_connection_is_detected_by_the_heartbeat() {
    let _serial = Serial::acquire().await;
    let mut p = Probe::new(serde_json::json!({
        "url": proxy_url(), "sites": [site("b-silent")], "heartbeatGrace": 500, "minReconnectDelay": 50, "maxReconnectDelay": 100
    }));
    let got = p.listen("*", None);
    p.ready().await;
    control("/freeze", "").await;
    // The relay pings every second: silence past 1 s + 0.5 s grace means dead.
    wait_until("reconnecting", 4_000, || p.state() == "reconnecting").await;
    p.ready().await;
    publish(&site("b-silent"), "t", serde_json::json!(1)).await;
    wait_until("a publication on the new connection", 5_000, || got.borrow().len() == 1).await;
}

/// Dispatches a plain event named `name` on the window or, with `on_document`, on its document.
fn browser_event(name: &str, on_document: bool) {
    let window = web_sys::window().unwrap();
    let target: web_sys::EventTarget = if on_document { window.document().unwrap().into() } else { window.into() };
    target.dispatch_event(&web_sys::Event::new(name).unwrap()).unwrap();
}

#[wasm_bindgen_test]
async fn online_and_visible_retry_at_once_and_are_let_go_on_close() {
    let _serial = Serial::acquire().await;
    // Without the browser's events the client would wait 30 s before each retry.
    let p = Probe::new(serde_json::json!({
        "url": proxy_url(), "sites": [site("b-online")], "minReconnectDelay": 30_000, "maxReconnectDelay": 30_000
    }));
    p.ready().await;
    control("/cut", "").await;
    wait_until("reconnecting", 5_000, || p.state() == "reconnecting").await;
    browser_event("online", false);
    wait_until("reconnected on `online`", 5_000, || p.core.is_ready()).await;
    let visible =
        web_sys::window().unwrap().document().unwrap().visibility_state() == web_sys::VisibilityState::Visible;
    if visible {
        control("/cut", "").await;
        wait_until("reconnecting", 5_000, || p.state() == "reconnecting").await;
        browser_event("visibilitychange", true);
        wait_until("reconnected on `visibilitychange`", 5_000, || p.core.is_ready()).await;
    }
    p.core.close();
    let states = p.states.borrow().len();
    // The listeners are gone with the client: these reach nothing (a listener left behind would
    // call a freed closure and throw).
    browser_event("online", false);
    browser_event("visibilitychange", true);
    sleep(100).await;
    assert_eq!(p.states.borrow().len(), states, "nothing reported after the close");
    assert_eq!(p.state(), "closed");
}

#[wasm_bindgen_test]
async fn a_terminal_close_stops_retrying() {
    let _serial = Serial::acquire().await;
    let mut p = Probe::new(serde_json::json!({"url": relay_url(), "sites": [site("b-term")]}));
    // Listeners naming many long topics make the first subscribe frame larger than the relay's
    // 1024-byte client frame limit: it closes with 3502, a terminal code.
    for i in 0..20 {
        p.listen(&format!("{i:02}-{}", "t".repeat(58)), None);
    }
    wait_until("closed", 5_000, || p.state() == "closed").await;
    let state = p.core.state();
    assert_eq!(Reflect::get(&state, &"code".into()).unwrap().as_f64(), Some(3502.0));
    assert_eq!(get_str(&state, "reason").as_deref(), Some("frame too large"));
    sleep(1_500).await;
    assert_eq!(p.state(), "closed", "no reconnect after a terminal code");
    let kinds: Vec<String> = p.states.borrow().iter().map(|s| get_str(s, "type").unwrap()).collect();
    assert_eq!(kinds, vec!["connecting", "connected", "closed"]);
}

#[wasm_bindgen_test]
async fn a_throwing_callback_is_isolated_and_reported() {
    let _serial = Serial::acquire().await;
    let mut p = Probe::new(serde_json::json!({"url": relay_url(), "sites": [site("b-throw")]}));
    let thrower = Function::new_with_args("data, meta", "throw new Error('boom ' + data)");
    p.core.on("t", thrower, None, 0);
    let got = p.listen("t", None);
    p.ready().await;
    publish(&site("b-throw"), "t", serde_json::json!(1)).await;
    publish(&site("b-throw"), "t", serde_json::json!(2)).await;
    wait_until("both publications", 5_000, || got.borrow().len() == 2).await;
    wait_until("two error events", 5_000, || p.errors.borrow().len() == 2).await;
    let e = p.errors.borrow()[1].clone();
    assert_eq!(get_str(&e, "kind").as_deref(), Some("callback"));
    assert_eq!(get_str(&e, "site").as_deref(), Some(site("b-throw").as_str()));
    let thrown = Reflect::get(&e, &"error".into()).unwrap();
    assert_eq!(get_str(&thrown, "message").as_deref(), Some("boom 2"));
    assert_eq!(p.state(), "connected");
}

#[wasm_bindgen_test]
async fn listeners_added_and_removed_while_publications_flow() {
    let _serial = Serial::acquire().await;
    let mut p = Probe::new(serde_json::json!({"url": relay_url(), "sites": [site("b-flow")]}));
    let (first, first_id) = p.listen_id("t", None);
    p.ready().await;
    publish(&site("b-flow"), "t", serde_json::json!(1)).await;
    wait_until("the first publication", 5_000, || first.borrow().len() == 1).await;
    // Added once publications flow: it gets the next ones.
    let second = p.listen("t", None);
    publish(&site("b-flow"), "t", serde_json::json!(2)).await;
    wait_until("both listeners", 5_000, || first.borrow().len() == 2 && second.borrow().len() == 1).await;
    // Removed: no longer called; the other still is.
    p.core.off_id(first_id);
    publish(&site("b-flow"), "t", serde_json::json!(3)).await;
    wait_until("the third publication", 5_000, || second.borrow().len() == 2).await;
    sleep(100).await;
    assert_eq!(offsets(&first), vec![1, 2]);
    assert_eq!(offsets(&second), vec![2, 3]);
}

#[wasm_bindgen_test]
async fn a_callback_that_closes_the_client_ends_the_dispatch() {
    let _serial = Serial::acquire().await;
    let options =
        JSON::parse(&serde_json::json!({"url": relay_url(), "sites": [site("b-cbclose")]}).to_string()).unwrap();
    let core = Rc::new(DatastreamCore::new(options).unwrap());
    let calls = Rc::new(RefCell::new(Vec::<&str>::new()));
    let (c1, c2, closing) = (calls.clone(), calls.clone(), core.clone());
    let closer = Closure::<dyn FnMut(JsValue, JsValue)>::new(move |_, _| {
        c1.borrow_mut().push("closer");
        closing.close();
    });
    let after = Closure::<dyn FnMut(JsValue, JsValue)>::new(move |_, _| c2.borrow_mut().push("after"));
    core.on("t", closer.as_ref().unchecked_ref::<Function>().clone(), None, 0);
    core.on("t", after.as_ref().unchecked_ref::<Function>().clone(), None, 0);
    core.start();
    wait_until("ready", 10_000, || core.is_ready()).await;
    publish(&site("b-cbclose"), "t", serde_json::json!(1)).await;
    wait_until("the closing callback", 5_000, || !calls.borrow().is_empty()).await;
    publish(&site("b-cbclose"), "t", serde_json::json!(2)).await;
    sleep(300).await;
    assert_eq!(
        *calls.borrow(),
        vec!["closer"],
        "nothing after the close, not even the same publication's next callback"
    );
    assert_eq!(get_str(&core.state(), "type").as_deref(), Some("closed"));
}

#[wasm_bindgen_test]
async fn legacy_protocol_one_socket_per_site_and_site_switch() {
    let _serial = Serial::acquire().await;
    let mut p = Probe::new(serde_json::json!({"url": relay_url(), "protocol": "legacy", "sites": [site("b-leg")]}));
    let got = p.listen("weather", None);
    p.ready().await;
    publish(&site("b-leg"), "weather", serde_json::json!("{\"text\": \"hello\"}")).await;
    wait_until("a legacy publication", 5_000, || got.borrow().len() == 1).await;
    let g = got.borrow()[0].clone();
    assert_eq!((g.site.as_str(), g.epoch, g.offset), (site("b-leg").as_str(), None, None));
    assert_eq!(g.data, r#""{\"text\": \"hello\"}""#, "string data stays a string");
    // Switch sites the legacy way: the socket is moved with updatesubscribersite.
    p.core.unsubscribe(&site("b-leg"));
    p.core.subscribe(&site("b-leg2"), None);
    sleep(300).await;
    publish(&site("b-leg"), "weather", serde_json::json!(1)).await;
    publish(&site("b-leg2"), "weather", serde_json::json!(2)).await;
    wait_until("the new site's publication", 5_000, || got.borrow().len() == 2).await;
    sleep(200).await;
    assert_eq!(got.borrow().len(), 2);
    assert_eq!(got.borrow()[1].site, site("b-leg2"));
}

#[wasm_bindgen_test]
async fn close_is_final() {
    let _serial = Serial::acquire().await;
    let mut p = Probe::new(serde_json::json!({"url": relay_url(), "sites": [site("b-close")]}));
    let got = p.listen("*", None);
    p.ready().await;
    p.core.close();
    assert_eq!(p.state(), "closed");
    publish(&site("b-close"), "t", serde_json::json!(1)).await;
    sleep(300).await;
    assert!(got.borrow().is_empty());
}

/// `(offset, latest)` of each delivery.
fn marks(got: &Rc<RefCell<Vec<Got>>>) -> Vec<(u64, bool)> {
    got.borrow().iter().map(|g| (g.offset.unwrap_or(0), g.latest)).collect()
}

#[wasm_bindgen_test]
async fn latest_publications_first_then_live_ones_once_each() {
    let _serial = Serial::acquire().await;
    let s = site("b-latest");
    // A topic published once, then 500 publications of another on the same site.
    publish(&s, "enclosure", serde_json::json!({"shutter": "open"})).await;
    let many: Vec<serde_json::Value> =
        (1..=500).map(|n| serde_json::json!({"site": s, "topic": "weather", "data": {"n": n}})).collect();
    control("/publish", &serde_json::Value::Array(many).to_string()).await;
    // A page opened afterwards: both latest values, marked, before anything new is published.
    let mut p = Probe::new(serde_json::json!({"url": relay_url(), "sites": [s]}));
    let enclosure = p.listen_latest("enclosure", Some(&s));
    let weather = p.listen_latest("weather", None);
    let live = p.listen("weather", None);
    p.ready().await;
    wait_until("both latest values", 5_000, || enclosure.borrow().len() == 1 && weather.borrow().len() == 1).await;
    assert_eq!(marks(&enclosure), vec![(1, true)]);
    assert_eq!(marks(&weather), vec![(501, true)]);
    assert_eq!(enclosure.borrow()[0].data, r#"{"shutter":"open"}"#);
    assert_eq!(weather.borrow()[0].data, r#"{"n":500}"#);
    assert!(live.borrow().is_empty(), "a listener that did not ask gets live publications only");
    // Then a live one, to everyone, once.
    publish(&s, "weather", serde_json::json!({"n": 501})).await;
    wait_until("the live publication", 5_000, || weather.borrow().len() == 2 && live.borrow().len() == 1).await;
    sleep(300).await;
    assert_eq!(marks(&weather), vec![(501, true), (502, false)]);
    assert_eq!(marks(&live), vec![(502, false)]);
    assert_eq!(marks(&enclosure), vec![(1, true)]);
}

#[wasm_bindgen_test]
async fn a_late_latest_listener_of_a_topic_never_received_gets_it_from_the_relay() {
    let _serial = Serial::acquire().await;
    let s = site("b-late");
    publish(&s, "enclosure", serde_json::json!("open")).await;
    for n in 1..=3 {
        publish(&s, "weather", serde_json::json!(n)).await;
    }
    let mut p = Probe::new(serde_json::json!({
        "url": proxy_url(), "sites": [s], "minReconnectDelay": 100, "maxReconnectDelay": 200
    }));
    let weather = p.listen("weather", None);
    p.ready().await;
    publish(&s, "weather", serde_json::json!(4)).await;
    wait_until("a live publication", 5_000, || weather.borrow().len() == 1).await;
    // Mounted later, for a topic outside the filter, published before the subscription: asked
    // for by name, though older than the position.
    let enclosure = p.listen_latest("enclosure", Some(&s));
    wait_until("the enclosure's latest", 5_000, || enclosure.borrow().len() == 1).await;
    assert_eq!(marks(&enclosure), vec![(1, true)]);
    // A reconnect that recovers asks again but gets nothing twice.
    control("/cut", "").await;
    wait_until("reconnecting", 5_000, || p.state() == "reconnecting").await;
    p.ready().await;
    publish(&s, "enclosure", serde_json::json!("closed")).await;
    publish(&s, "weather", serde_json::json!(5)).await;
    wait_until("live again", 5_000, || weather.borrow().len() == 2 && enclosure.borrow().len() == 2).await;
    sleep(300).await;
    assert_eq!(marks(&enclosure), vec![(1, true), (6, false)]);
    assert_eq!(marks(&weather), vec![(5, false), (7, false)]);
    assert!(p.recoveries.borrow().is_empty());
}

#[wasm_bindgen_test]
async fn after_a_restart_latest_listeners_get_the_new_history_s_values() {
    let _serial = Serial::acquire().await;
    let s = site("b-latest-restart");
    let mut p = Probe::new(serde_json::json!({
        "url": proxy_url(), "sites": [s], "minReconnectDelay": 100, "maxReconnectDelay": 300
    }));
    let got = p.listen_latest("t", None);
    p.ready().await;
    publish(&s, "t", serde_json::json!(1)).await;
    wait_until("a live publication", 5_000, || got.borrow().len() == 1).await;
    // The relay restarts (in memory: a new epoch, nothing held) and gets a publication before the
    // client is back: the gap cannot be recovered, the latest value fills it.
    control("/refuse", "").await;
    control("/restart", "").await;
    publish(&s, "t", serde_json::json!(2)).await;
    control("/accept", "").await;
    wait_until("the failed-recovery event", 15_000, || !p.recoveries.borrow().is_empty()).await;
    wait_until("the new history's latest value", 5_000, || got.borrow().len() == 2).await;
    let g = got.borrow()[1].clone();
    assert_eq!((g.offset, g.latest, g.data.as_str()), (Some(1), true, "2"));
    assert_ne!(g.epoch, got.borrow()[0].epoch);
}

#[wasm_bindgen_test]
async fn legacy_protocol_has_no_latest_publications() {
    let _serial = Serial::acquire().await;
    let s = site("b-leg-latest");
    publish(&s, "t", serde_json::json!(1)).await;
    let mut p = Probe::new(serde_json::json!({"url": relay_url(), "protocol": "legacy", "sites": [s]}));
    let got = p.listen_latest("t", None);
    p.ready().await;
    sleep(300).await;
    assert!(got.borrow().is_empty(), "the original service has none to send");
    publish(&s, "t", serde_json::json!(2)).await;
    wait_until("a live publication", 5_000, || got.borrow().len() == 1).await;
    assert_eq!((got.borrow()[0].data.as_str(), got.borrow()[0].latest), ("2", false));
}

/// The slots `cache` holds of `site` (`topic`, or `topic:key`), least recently updated first.
fn slots(cache: &js_sys::Map, site: &str) -> Vec<String> {
    let held = cache.get(&site.into());
    if held.is_undefined() {
        return Vec::new();
    }
    js_sys::Array::from(&held.unchecked_ref::<js_sys::Map>().keys().into())
        .iter()
        .map(|k| k.as_string().unwrap().replace('\n', ":"))
        .collect()
}

#[wasm_bindgen_test]
async fn latest_per_kind_a_rare_enclosure_status_survives_500_weather_ones() {
    let _serial = Serial::acquire().await;
    let s = site("b-kinds");
    // The status service's shape: every kind on `sitestatus`, told apart by `statusType`. The
    // enclosure's once, then 500 weather ones.
    publish(&s, "sitestatus", serde_json::json!({"statusType": "enclosure", "shutter": "open"})).await;
    let many: Vec<serde_json::Value> = (1..=500)
        .map(|n| serde_json::json!({"site": s, "topic": "sitestatus", "data": {"statusType": "weather", "n": n}}))
        .collect();
    control("/publish", &serde_json::Value::Array(many).to_string()).await;
    // A page opened afterwards gets both, marked, oldest first; then a live one once.
    let cache = js_sys::Map::new();
    let mut p = Probe::with(serde_json::json!({"url": relay_url(), "sites": [s]}), &cache);
    let status = p.listen_latest("sitestatus", Some(&s));
    let live = p.listen("sitestatus", None);
    p.ready().await;
    wait_until("both kinds", 5_000, || status.borrow().len() == 2).await;
    assert_eq!(marks(&status), vec![(1, true), (501, true)]);
    let data = |i: usize| serde_json::from_str::<serde_json::Value>(&status.borrow()[i].data).unwrap();
    assert_eq!(data(0), serde_json::json!({"statusType": "enclosure", "shutter": "open"}));
    assert_eq!(data(1), serde_json::json!({"statusType": "weather", "n": 500}));
    assert!(live.borrow().is_empty(), "a listener that did not ask gets live publications only");
    assert_eq!(slots(&cache, &s), ["sitestatus:enclosure", "sitestatus:weather"], "a slot per kind");
    publish(&s, "sitestatus", serde_json::json!({"statusType": "weather", "n": 501})).await;
    wait_until("the live publication", 5_000, || status.borrow().len() == 3 && live.borrow().len() == 1).await;
    // A later latest listener asks the relay again (the npm wrapper hands it the held kinds
    // itself): both kinds come back and are dropped as held, so nobody gets one twice.
    let late = p.listen_latest("sitestatus", Some(&s));
    sleep(500).await;
    assert!(late.borrow().is_empty(), "{:?}", late.borrow());
    assert_eq!(marks(&status), vec![(1, true), (501, true), (502, false)]);
    assert_eq!(marks(&live), vec![(502, false)]);
    // The enclosure changes: its kind's slot is replaced, everyone gets it once.
    publish(&s, "sitestatus", serde_json::json!({"statusType": "enclosure", "shutter": "closed"})).await;
    wait_until("the enclosure's change", 5_000, || late.borrow().len() == 1 && status.borrow().len() == 4).await;
    sleep(200).await;
    assert_eq!(marks(&late), vec![(503, false)]);
    assert_eq!(slots(&cache, &s), ["sitestatus:weather", "sitestatus:enclosure"]);
}
