//! Scenario tests of the client's logic: each drives [`Client`] with the frames the relay would
//! send (encoded by the protocol crate) and a fake clock, and checks the actions it decides.

use core::time::Duration;

use datastream_protocol::error::ErrorCode;
use datastream_protocol::v2::{ServerFrame, encode_pub};
use serde_json::value::RawValue;

use super::*;
use crate::config::Protocol;

type C = Client<&'static str, String>;
type A = Action<&'static str, String>;

const URL: &str = "ws://127.0.0.1:9/dev";

fn config(sites: &[&str]) -> Config {
    let mut c = Config::new(URL);
    c.sites = sites.iter().map(|s| s.to_string()).collect();
    c
}

/// What the client decided, once the current task is done: its flush run (as the browser's
/// microtask does), the flush requests themselves left out.
fn acts(c: &mut C) -> Vec<A> {
    let mut a = c.take_actions();
    c.flush();
    a.extend(c.take_actions());
    a.retain(|a| *a != Action::Flush);
    a
}

/// A started client whose jitter draws are always 0.5.
fn started(config: Config) -> (C, Vec<A>) {
    let mut c = C::new(config, Box::new(|| 0.5)).unwrap();
    c.hook(HookKind::State, "state");
    c.hook(HookKind::Error, "error");
    c.hook(HookKind::RecoveryFailed, "recovery");
    c.hook(HookKind::Ready, "ready");
    c.start(0.0);
    let a = acts(&mut c);
    (c, a)
}

/// A delivery: site, offset, callbacks.
type Delivery = (String, u64, Vec<&'static str>);

/// What the client decided about some frames: its actions, and the publications it accepted,
/// with the callbacks to hand each to (what the browser's dispatcher then does).
#[derive(Debug)]
struct Out {
    actions: Vec<A>,
    delivered: Vec<Delivery>,
}

impl core::ops::Deref for Out {
    type Target = Vec<A>;
    fn deref(&self) -> &Vec<A> {
        &self.actions
    }
}

/// Hands the frames of `text` to the client as the browser does ([`Client::read`]): publications
/// to [`Client::accept`] and [`Client::listeners`], everything else to [`Client::received`].
fn frame(c: &mut C, text: &str, now: f64) -> Out {
    let mut actions = acts(c);
    let delivered = c.read(1, text, now).into_iter().map(|d| (d.frame.site, d.frame.offset, d.callbacks)).collect();
    actions.extend(acts(c));
    Out { actions, delivered }
}

fn hello(c: &mut C, now: f64) -> Out {
    c.opened(1, now);
    frame(c, r#"{"type":"hello","version":2,"ping_interval_ms":25000,"max_subscriptions":100}"#, now)
}

fn publ(site: &str, topic: &str, epoch: &str, offset: u64) -> String {
    let data = RawValue::from_string(format!(r#"{{"n":{offset}}}"#)).unwrap();
    encode_pub(site, topic, epoch, offset, &data)
}

fn subscribed(site: &str, id: u64, epoch: &str, offset: u64, recovered: Option<bool>, replayed: u32) -> String {
    subscribed_latest(site, id, epoch, offset, recovered, replayed, None)
}

fn subscribed_latest(
    site: &str,
    id: u64,
    epoch: &str,
    offset: u64,
    recovered: Option<bool>,
    replayed: u32,
    latest: Option<u32>,
) -> String {
    let (site, epoch, id) = (site.into(), epoch.into(), Some(id));
    ServerFrame::Subscribed { id, site, epoch, offset, recovered, replayed, latest, delta: None }.to_json()
}

/// A latest publication: a `pub` frame marked `latest`, as the relay sends after `subscribed`.
fn latest_publ(site: &str, topic: &str, epoch: &str, offset: u64) -> String {
    let text = publ(site, topic, epoch, offset);
    format!("{},\"latest\":true}}", &text[..text.len() - 1])
}

fn sends(actions: &[A]) -> Vec<serde_json::Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { text, .. } => Some(serde_json::from_str(text).unwrap()),
            _ => None,
        })
        .collect()
}

fn states(actions: &[A]) -> Vec<State> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notify { event: Event::State(s), .. } => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// Offsets delivered, with the callbacks each went to.
fn delivered(out: &Out) -> Vec<Delivery> {
    out.delivered.clone()
}

fn has_event(actions: &[A], want: &Event<String>) -> bool {
    actions.iter().any(|a| matches!(a, Action::Notify { event, .. } if event == want))
}

fn pos(epoch: &str, offset: u64) -> Option<StreamPosition> {
    Some(StreamPosition { epoch: epoch.into(), offset })
}

/// The delay of the timer of `kind` set by `actions`, if one is.
fn timer_ms(actions: &[A], kind: TimerKind) -> Option<u32> {
    actions.iter().find_map(|a| match a {
        Action::SetTimer { kind: k, ms, .. } if *k == kind => Some(*ms),
        _ => None,
    })
}

fn reconnect_timer(actions: &[A]) -> Option<u32> {
    timer_ms(actions, TimerKind::Reconnect)
}

#[test]
fn connects_subscribes_with_the_listeners_topics_and_dispatches() {
    let (mut c, a) = started(config(&["mrc", "mrc2"]));
    assert_eq!(
        a[0],
        Action::Open { link: 1, url: URL.into(), subprotocol: Some("datastream.v2"), token: None },
        "one socket, sites in subscribe frames"
    );
    assert!(a.contains(&Action::SetTimer { link: 1, kind: TimerKind::Heartbeat, ms: 10_000 }), "connect timeout");
    c.on("weather", None, "w", Latest::No);
    c.on("sitestatus", Some("mrc"), "s", Latest::No);
    assert!(acts(&mut c).is_empty(), "nothing is sent before the server's hello");
    c.opened(1, 5.0);
    assert_eq!(c.state(), &State::Connecting, "an open socket is not yet an accepted connection");
    let a = hello(&mut c, 10.0);
    assert_eq!(states(&a), vec![State::Connected]);
    assert!(a.contains(&Action::SetTimer { link: 1, kind: TimerKind::Heartbeat, ms: 35_000 }));
    assert_eq!(
        sends(&a),
        vec![
            serde_json::json!({"type":"subscribe","id":1,"site":"mrc","topics":["sitestatus","weather"]}),
            serde_json::json!({"type":"subscribe","id":2,"site":"mrc2","topics":["weather"]}),
        ]
    );
    assert!(!c.is_ready());
    let a = frame(&mut c, &subscribed("mrc", 1, "e", 4, None, 0), 11.0);
    assert!(!has_event(&a, &Event::Ready), "mrc2 not confirmed yet");
    let a = frame(
        &mut c,
        &format!("{}\n{}", subscribed("mrc2", 2, "e2", 0, None, 0), publ("mrc", "weather", "e", 5)),
        12.0,
    );
    assert!(has_event(&a, &Event::Ready));
    assert!(c.is_ready());
    assert_eq!(delivered(&a), vec![("mrc".into(), 5, vec!["w"])]);
    let a = frame(&mut c, &publ("mrc", "sitestatus", "e", 6), 13.0);
    assert_eq!(delivered(&a), vec![("mrc".into(), 6, vec!["s"])]);
    let a = frame(&mut c, &publ("mrc2", "sitestatus", "e2", 1), 13.0);
    assert!(delivered(&a).is_empty(), "the site filter keeps mrc's listener off mrc2");
    let a = frame(&mut c, r#"{"type":"ping"}"#, 14.0);
    assert_eq!(sends(&a), vec![serde_json::json!({"type":"pong"})]);
}

#[test]
fn backoff_grows_with_each_failure_and_resets_only_on_hello() {
    let (mut c, _) = started(config(&["mrc"]));
    let b = Config::new(URL).backoff;
    let expect = |n: u32| ms_u32(duration_ms(b.delay(n, 0.5)) as f64);
    let mut now = 0.0;
    for attempt in 1..=4u32 {
        // Fails before any hello: the socket even opens, but that is not a confirmation.
        c.opened(1, now);
        c.socket_closed(1, 1006, String::new(), now);
        let a = acts(&mut c);
        let reason = "connection lost";
        assert_eq!(states(&a), vec![State::Reconnecting { attempt, delay_ms: expect(attempt - 1), reason }]);
        assert_eq!(reconnect_timer(&a), Some(expect(attempt - 1)));
        assert!(matches!(a[0], Action::Close { link: 1, .. }), "the dead socket is dropped first");
        now += f64::from(expect(attempt - 1));
        c.timer(1, TimerKind::Reconnect, now);
        assert!(matches!(acts(&mut c)[0], Action::Open { .. }));
        assert_eq!(c.state().name(), "reconnecting");
    }
    assert_eq!(expect(3), 2500, "0.5 s + half of a 4 s spread");
    let a = hello(&mut c, now);
    assert_eq!(states(&a), vec![State::Connected]);
    c.socket_closed(1, 1001, "server shutting down".into(), now);
    let a = acts(&mut c);
    assert_eq!(states(&a), vec![State::Reconnecting { attempt: 1, delay_ms: expect(0), reason: "connection lost" }]);
}

#[test]
fn terminal_close_codes_stop_retrying_and_say_why() {
    let (mut c, _) = started(config(&["mrc"]));
    hello(&mut c, 0.0);
    c.socket_closed(1, 3500, "too many invalid frames".into(), 1.0);
    let a = acts(&mut c);
    assert_eq!(states(&a), vec![State::Closed { code: 3500, reason: "too many invalid frames".into() }]);
    assert_eq!(reconnect_timer(&a), None);
    assert!(c.is_closed());
    c.timer(1, TimerKind::Reconnect, 5000.0);
    c.online(5000.0);
    c.subscribe("saf", None, 5000.0);
    assert!(acts(&mut c).is_empty(), "a closed client stays closed");

    let (mut c, _) = started(config(&["mrc"]));
    c.socket_closed(1, 4501, String::new(), 1.0);
    assert_eq!(c.state(), &State::Closed { code: 4501, reason: "closed by the server".into() });
}

#[test]
fn heartbeat_silence_and_connect_timeout_reconnect() {
    let (mut c, _) = started(config(&["mrc"]));
    // Never opens: the connect timeout ends the attempt.
    c.timer(1, TimerKind::Heartbeat, 10_000.0);
    assert_eq!(c.state().name(), "reconnecting");
    c.timer(1, TimerKind::Reconnect, 11_000.0);
    acts(&mut c);
    hello(&mut c, 11_500.0);
    frame(&mut c, r#"{"type":"ping"}"#, 36_000.0);
    // The timer armed at hello fires: the ping moved the deadline, so it is re-armed.
    c.timer(1, TimerKind::Heartbeat, 46_500.0);
    let a = acts(&mut c);
    assert_eq!(a, vec![Action::SetTimer { link: 1, kind: TimerKind::Heartbeat, ms: 24_500 }]);
    c.timer(1, TimerKind::Heartbeat, 71_000.0);
    let a = acts(&mut c);
    assert_eq!(a[0], Action::Close { link: 1, code: 1000, reason: "heartbeat timeout" });
    assert_eq!(states(&a), vec![State::Reconnecting { attempt: 1, delay_ms: 750, reason: "heartbeat timeout" }]);
}

#[test]
fn resubscribes_with_positions_and_delivers_each_publication_once() {
    let (mut c, _) = started(config(&["mrc"]));
    c.on("*", None, "all", Latest::No);
    hello(&mut c, 0.0);
    frame(&mut c, &subscribed("mrc", 1, "e", 10, None, 0), 1.0);
    let a = frame(&mut c, &format!("{}\n{}", publ("mrc", "x", "e", 11), publ("mrc", "x", "e", 12)), 2.0);
    assert_eq!(delivered(&a).len(), 2);
    c.socket_closed(1, 1006, String::new(), 3.0);
    c.timer(1, TimerKind::Reconnect, 1000.0);
    acts(&mut c);
    let a = hello(&mut c, 1001.0);
    assert_eq!(
        sends(&a),
        vec![serde_json::json!({"type":"subscribe","id":2,"site":"mrc","recover":{"epoch":"e","offset":12}})]
    );
    // The replay overlaps what was delivered (the relay's snapshot raced a live publication).
    let text =
        [subscribed("mrc", 2, "e", 15, Some(true), 4), publ("mrc", "x", "e", 12), publ("mrc", "x", "e", 13)].join("\n");
    let a = frame(&mut c, &text, 1002.0);
    let text =
        [publ("mrc", "x", "e", 14), publ("mrc", "x", "e", 15), publ("mrc", "x", "e", 15), publ("mrc", "x", "e", 16)]
            .join("\n");
    let b = frame(&mut c, &text, 1003.0);
    let offsets: Vec<u64> = delivered(&a).iter().chain(delivered(&b).iter()).map(|d| d.1).collect();
    assert_eq!(offsets, vec![13, 14, 15, 16]);
    assert!(!has_event(&a, &Event::RecoveryFailed(RecoveryFailure { site: "mrc".into(), reason: "epoch_changed" })));

    // The relay restarts: a new epoch, recovery impossible, the app is told.
    c.socket_closed(1, 1001, String::new(), 2000.0);
    c.timer(1, TimerKind::Reconnect, 3000.0);
    acts(&mut c);
    let a = hello(&mut c, 3001.0);
    assert_eq!(sends(&a)[0]["recover"], serde_json::json!({"epoch":"e","offset":16}));
    let a = frame(
        &mut c,
        &format!("{}\n{}", subscribed("mrc", 3, "f", 0, Some(false), 0), publ("mrc", "x", "f", 1)),
        3002.0,
    );
    assert!(has_event(&a, &Event::RecoveryFailed(RecoveryFailure { site: "mrc".into(), reason: "epoch_changed" })));
    assert_eq!(delivered(&a), vec![("mrc".into(), 1, vec!["all"])], "the new epoch's publications flow");
}

#[test]
fn topic_filter_follows_listeners_while_connected() {
    let (mut c, _) = started(config(&["mrc"]));
    let w = c.on("weather", None, "w", Latest::No);
    hello(&mut c, 0.0);
    frame(&mut c, &subscribed("mrc", 1, "e", 0, None, 0), 0.0);
    let star = c.on("*", Some("mrc"), "star", Latest::No);
    // Resubscribing from the position: the relay fills anything queued under the old filter.
    assert_eq!(
        sends(&acts(&mut c))[0],
        serde_json::json!({"type":"subscribe","id":2,"site":"mrc","recover":{"epoch":"e","offset":0}})
    );
    let j = c.on("jobs", None, "j", Latest::No);
    assert!(acts(&mut c).is_empty(), "already receiving every topic");
    c.off_id(star);
    assert_eq!(sends(&acts(&mut c))[0]["topics"], serde_json::json!(["jobs", "weather"]));
    c.off_id(j);
    assert_eq!(sends(&acts(&mut c))[0]["topics"], serde_json::json!(["weather"]));
    c.off_id(w);
    let a = acts(&mut c);
    assert_eq!(sends(&a)[0].get("topics"), None, "no listener: every topic");
}

#[test]
fn subscribe_rewind_and_unsubscribe() {
    let (mut c, a) = started(config(&[]));
    assert!(opens(&a).is_empty(), "no site: no socket");
    assert_eq!(c.state(), &State::Idle);
    c.on("*", None, "all", Latest::No);
    assert!(acts(&mut c).is_empty(), "a listener alone opens nothing");
    c.subscribe("saf", Some(20), 0.0);
    let a = acts(&mut c);
    assert_eq!(opens(&a), [None], "the first site opens the socket");
    assert!(sends(&a).is_empty(), "sent once connected");
    assert_eq!(c.state(), &State::Connecting);
    assert!(!c.is_ready());
    let a = hello(&mut c, 0.0);
    assert_eq!(sends(&a), vec![serde_json::json!({"type":"subscribe","id":1,"site":"saf","rewind":20})]);
    let text =
        [subscribed("saf", 1, "e", 30, None, 2), publ("saf", "t", "e", 29), publ("saf", "t", "e", 30)].join("\n");
    assert_eq!(delivered(&frame(&mut c, &text, 1.0)).len(), 2);
    c.unsubscribe("saf");
    assert_eq!(sends(&acts(&mut c)), vec![serde_json::json!({"type":"unsubscribe","site":"saf"})]);
    assert!(delivered(&frame(&mut c, &publ("saf", "t", "e", 31), 2.0)).is_empty(), "in flight: dropped");
}

/// The relay refuses something: an error frame with `id` and `site`, read by the client.
fn refused(c: &mut C, id: Option<u64>, code: ErrorCode, site: Option<&str>, message: &str) -> Out {
    let err = ServerFrame::Error { id, code, site: site.map(Into::into), message: message.into() };
    frame(c, &err.to_json(), 1.0)
}

/// What the error hooks are told of a refusal.
fn refusal(code: &str, message: &str, site: Option<&str>) -> Event<String> {
    Event::Error(ClientError::Server { code: code.into(), message: message.into(), site: site.map(Into::into) })
}

#[test]
fn refused_subscribe_is_reported_and_does_not_block_ready() {
    let (mut c, _) = started(config(&["mrc"]));
    hello(&mut c, 0.0);
    let a = refused(&mut c, Some(1), ErrorCode::TooManySubscriptions, None, "at most 100");
    assert!(has_event(&a, &refusal("too_many_subscriptions", "at most 100", Some("mrc"))), "the subscribe's site");
    assert!(has_event(&a, &Event::Ready));
}

/// A refresh that no longer grants a site: the relay's error names the site (no request id),
/// and the error reported says which.
#[test]
fn a_refusal_about_a_site_names_it() {
    let (mut c, _) = started(config(&["mrc"]));
    hello(&mut c, 0.0);
    let a = refused(&mut c, None, ErrorCode::Forbidden, Some("mrc"), "no longer allowed to read \"mrc\"");
    assert!(has_event(&a, &refusal("forbidden", "no longer allowed to read \"mrc\"", Some("mrc"))));
}

#[test]
fn online_retries_at_once_and_probes_a_live_connection() {
    let (mut c, _) = started(config(&["mrc"]));
    c.socket_closed(1, 1006, String::new(), 0.0);
    acts(&mut c);
    c.online(10.0);
    let a = acts(&mut c);
    assert_eq!(a[0], Action::ClearTimer { link: 1, kind: TimerKind::Reconnect });
    assert!(matches!(a[1], Action::Open { .. }), "no waiting for the backoff delay");
    c.online(11.0);
    assert!(!acts(&mut c).iter().any(|a| matches!(a, Action::Open { .. })), "already opening");
    hello(&mut c, 20.0);
    c.online(30.0);
    let a = acts(&mut c);
    assert_eq!(sends(&a), vec![serde_json::json!({"type":"ping"})]);
    assert!(a.contains(&Action::SetTimer { link: 1, kind: TimerKind::Heartbeat, ms: 10_000 }));
    c.timer(1, TimerKind::Heartbeat, 10_030.0);
    assert_eq!(states(&acts(&mut c)), [State::Reconnecting { attempt: 1, delay_ms: 750, reason: "no answer to ping" }]);
    // Answered in time: nothing happens.
    c.timer(1, TimerKind::Reconnect, 20_000.0);
    hello(&mut c, 20_001.0);
    c.online(20_002.0);
    frame(&mut c, r#"{"type":"pong"}"#, 20_010.0);
    acts(&mut c);
    c.timer(1, TimerKind::Heartbeat, 30_002.0);
    assert!(matches!(acts(&mut c)[..], [Action::SetTimer { kind: TimerKind::Heartbeat, .. }]));
}

#[test]
fn a_visible_tab_reconnects_at_once_when_stale() {
    let (mut c, _) = started(config(&["mrc"]));
    hello(&mut c, 0.0);
    c.visible(1000.0);
    assert!(acts(&mut c).is_empty(), "fresh: nothing to do");
    // The tab slept; the heartbeat timer has not fired yet.
    c.visible(600_000.0);
    let a = acts(&mut c);
    assert_eq!(a[0], Action::Close { link: 1, code: 1000, reason: "stale after sleep" });
    assert_eq!(states(&a), vec![State::Reconnecting { attempt: 1, delay_ms: 0, reason: "stale after sleep" }]);
    assert!(a.iter().any(|a| matches!(a, Action::Open { .. })));
}

#[test]
fn legacy_mode_one_socket_per_site_and_site_switch_by_action() {
    let mut cfg = config(&["mrc", "mrc2"]);
    cfg.protocol = Protocol::Legacy;
    let (mut c, a) = started(cfg);
    let opens: Vec<&str> = a
        .iter()
        .filter_map(|a| match a {
            Action::Open { url, subprotocol: None, .. } => Some(url.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(opens, vec!["ws://127.0.0.1:9/dev?site=mrc", "ws://127.0.0.1:9/dev?site=mrc2"]);
    c.on("weather", None, "w", Latest::No);
    assert!(acts(&mut c).is_empty(), "legacy has no server-side filter");
    c.opened(1, 1.0);
    assert_eq!(c.state(), &State::Connecting);
    c.opened(2, 1.0);
    let a = acts(&mut c);
    assert_eq!(states(&a), vec![State::Connected]);
    assert!(has_event(&a, &Event::Ready));
    // A bare legacy publication on `link`: the callbacks it goes to.
    let bare = |c: &mut C, link: LinkId, site: &str| {
        if c.accept(link, site, None, 2.0) { c.listeners(site, "weather", false) } else { Vec::new() }
    };
    assert_eq!(bare(&mut c, 2, "mrc2"), vec!["w"]);

    // Switch mrc → saf: the released socket is reused with updatesubscribersite.
    c.unsubscribe("mrc");
    c.subscribe("saf", None, 3.0);
    let a = acts(&mut c);
    assert!(!a.iter().any(|a| matches!(a, Action::Open { .. })));
    assert_eq!(sends(&a), vec![serde_json::json!({"action":"updatesubscribersite","site":"saf"})]);
    assert!(bare(&mut c, 1, "mrc").is_empty(), "a late frame of the old site");
    assert_eq!(bare(&mut c, 1, "saf"), vec!["w"]);
    assert!(acts(&mut c).is_empty());
    c.timer(1, TimerKind::Release, 4.0);
    assert!(!acts(&mut c).iter().any(|a| matches!(a, Action::Close { .. })), "reused: kept");

    // A reconnect uses the current site, not the one the socket was first opened with.
    c.socket_closed(1, 1006, String::new(), 5.0);
    c.timer(1, TimerKind::Reconnect, 1000.0);
    let a = acts(&mut c);
    assert!(a.contains(&Action::Open {
        link: 1,
        url: "ws://127.0.0.1:9/dev?site=saf".into(),
        subprotocol: None,
        token: None
    }));

    // Unsubscribed and not reused: released.
    c.unsubscribe("mrc2");
    c.timer(2, TimerKind::Release, 6.0);
    assert!(acts(&mut c).contains(&Action::Close { link: 2, code: 1000, reason: "site unsubscribed" }));
}

/// The original service confirms nothing: a legacy site counts as subscribed once every socket
/// is open (again after a reconnect), and a site switched to on a live socket at once.
#[test]
fn legacy_sites_are_subscribed_when_their_sockets_are_open() {
    let mut cfg = config(&["mrc", "mrc2"]);
    cfg.protocol = Protocol::Legacy;
    let (mut c, _) = started(cfg);
    c.hook(HookKind::Subscribed, "subscribed");
    let confirmed = |a: &[A]| -> Vec<String> {
        a.iter()
            .filter_map(|a| match a {
                Action::Notify {
                    event: Event::Subscribed { site, position: None, replayed: 0, recovered: None },
                    ..
                } => Some(site.clone()),
                Action::Notify { event: Event::Subscribed { .. }, .. } => {
                    panic!("a legacy confirmation with a position")
                }
                _ => None,
            })
            .collect()
    };
    c.opened(1, 1.0);
    assert!(confirmed(&acts(&mut c)).is_empty(), "mrc2's socket is still opening");
    c.opened(2, 1.0);
    assert_eq!(confirmed(&acts(&mut c)), vec!["mrc", "mrc2"]);
    c.unsubscribe("mrc");
    c.subscribe("saf", None, 2.0);
    assert_eq!(confirmed(&acts(&mut c)), vec!["saf"], "moved on a live socket: subscribed at once");
    c.socket_closed(2, 1006, String::new(), 3.0);
    assert!(confirmed(&acts(&mut c)).is_empty());
    c.timer(2, TimerKind::Reconnect, 1000.0);
    acts(&mut c);
    c.opened(2, 1001.0);
    assert_eq!(confirmed(&acts(&mut c)), vec!["saf", "mrc2"], "open again: every site confirmed again");
}

#[test]
fn legacy_site_switch_while_opening_is_sent_once_open() {
    let mut cfg = config(&["mrc"]);
    cfg.protocol = Protocol::Legacy;
    let (mut c, _) = started(cfg);
    c.unsubscribe("mrc");
    c.subscribe("saf", None, 0.0);
    acts(&mut c);
    c.opened(1, 1.0);
    assert_eq!(sends(&acts(&mut c)), vec![serde_json::json!({"action":"updatesubscribersite","site":"saf"})]);
}

#[test]
fn callback_failures_are_reported_to_error_hooks_only() {
    let (mut c, _) = started(config(&["mrc"]));
    c.callback_failed("mrc".into(), "weather".into(), "boom".into());
    let a = acts(&mut c);
    assert_eq!(
        a,
        vec![Action::Notify {
            callbacks: vec!["error"],
            event: Event::Error(ClientError::Callback {
                site: "mrc".into(),
                topic: "weather".into(),
                error: "boom".into()
            })
        }]
    );
    assert_eq!(c.hook_failed(HookKind::Error, "again".into()), Some("again".into()), "not looped back");
    assert_eq!(c.hook_failed(HookKind::State, "s".into()), None);
    assert_eq!(acts(&mut c).len(), 1);
}

#[test]
fn close_stops_everything() {
    let (mut c, _) = started(config(&["mrc"]));
    hello(&mut c, 0.0);
    c.close();
    let a = acts(&mut c);
    assert_eq!(states(&a), vec![State::Closed { code: 1000, reason: "closed by the client".into() }]);
    assert!(a.contains(&Action::Close { link: 1, code: 1000, reason: "client closed" }));
    assert!(a.contains(&Action::ClearTimer { link: 1, kind: TimerKind::Heartbeat }));
    c.close();
    c.socket_closed(1, 1006, String::new(), 1.0);
    frame(&mut c, &publ("mrc", "t", "e", 1), 1.0);
    assert!(acts(&mut c).is_empty());
    assert!(!c.is_ready());
}

#[test]
fn custom_backoff_is_used() {
    let mut cfg = config(&["mrc"]);
    cfg.backoff.min = Duration::from_millis(10);
    cfg.backoff.max = Duration::from_millis(40);
    let (mut c, _) = started(cfg);
    let mut delays = Vec::new();
    for _ in 0..5 {
        c.socket_closed(1, 1006, String::new(), 0.0);
        delays.push(reconnect_timer(&acts(&mut c)).unwrap());
        c.timer(1, TimerKind::Reconnect, 0.0);
        acts(&mut c);
    }
    assert_eq!(delays, vec![15, 20, 25, 25, 25]);
}

#[test]
fn error_messages_are_the_display_text() {
    let errors: [ClientError<String>; 4] = [
        ClientError::Callback { site: "mrc".into(), topic: "weather".into(), error: "e".into() },
        ClientError::Hook { error: "e".into() },
        ClientError::Server { code: "invalid_site".into(), message: "bad".into(), site: None },
        ClientError::Frame("not JSON".into()),
    ];
    for e in errors {
        assert_eq!(e.message(), e.to_string());
    }
}

#[test]
fn accept_is_a_sign_of_life_and_follows_the_legacy_links_site() {
    let (mut c, _) = started(config(&["mrc"]));
    hello(&mut c, 0.0);
    frame(&mut c, &subscribed("mrc", 1, "e", 0, None, 0), 0.0);
    c.online(100.0);
    assert_eq!(sends(&acts(&mut c)), vec![serde_json::json!({"type":"ping"})]);
    assert!(c.accept(1, "mrc", Some(("e", 1)), 200.0));
    c.timer(1, TimerKind::Heartbeat, 10_100.0);
    assert!(
        matches!(acts(&mut c)[..], [Action::SetTimer { kind: TimerKind::Heartbeat, .. }]),
        "a publication answers the probe"
    );
    c.timer(1, TimerKind::Heartbeat, 35_199.0);
    assert!(!acts(&mut c).iter().any(|a| matches!(a, Action::Close { .. })), "heard at 200");
    c.timer(1, TimerKind::Heartbeat, 35_200.0);
    assert_eq!(states(&acts(&mut c)), [State::Reconnecting { attempt: 1, delay_ms: 750, reason: "heartbeat timeout" }]);

    let mut cfg = config(&["mrc"]);
    cfg.protocol = Protocol::Legacy;
    let (mut c, _) = started(cfg);
    c.opened(1, 1.0);
    assert!(c.accept(1, "mrc", None, 2.0));
    assert!(c.accept(1, "mrc", None, 2.0), "no offsets in legacy: no deduplication");
    assert!(!c.accept(1, "saf", None, 2.0), "another site's frame");
    c.unsubscribe("mrc");
    assert!(!c.accept(1, "mrc", None, 3.0), "released");
}

#[test]
fn listeners_and_their_version() {
    let (mut c, _) = started(config(&["mrc"]));
    let v0 = c.listeners_version();
    let w = c.on("weather", None, "w", Latest::No);
    let v1 = c.listeners_version();
    assert_ne!(v0, v1);
    let m = c.on("*", Some("mrc"), "m", Latest::No);
    assert_eq!(c.listeners("mrc", "weather", false), vec!["w", "m"]);
    assert_eq!(c.listeners("saf", "weather", false), vec!["w"]);
    assert_eq!(c.listeners("saf", "jobs", false), Vec::<&str>::new());
    let v2 = c.listeners_version();
    c.hook(HookKind::State, "s");
    c.subscribe("saf", None, 0.0);
    assert_eq!(c.listeners_version(), v2, "only listeners count");
    c.off_id(w);
    assert_ne!(c.listeners_version(), v2);
    let v3 = c.listeners_version();
    c.off_id(m);
    assert_ne!(c.listeners_version(), v3);
    assert!(c.listeners("mrc", "weather", false).is_empty());
}

fn opens(actions: &[A]) -> Vec<Option<String>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Open { token, .. } => Some(token.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_token_is_offered_on_connect_and_refreshed_in_band() {
    let mut cfg = config(&["mrc"]);
    cfg.token = Some("t1".into());
    let (mut c, a) = started(cfg);
    assert_eq!(opens(&a), [Some("t1".to_string())]);
    hello(&mut c, 1.0);
    c.set_token(Some("t2".into()), 2.0);
    let a = acts(&mut c);
    assert_eq!(sends(&a), [serde_json::json!({"type": "refresh", "token": "t2"})]);
    assert!(opens(&a).is_empty(), "no reconnect for a refresh");
    c.socket_closed(1, 1006, String::new(), 3.0);
    acts(&mut c);
    c.timer(1, TimerKind::Reconnect, 10_000.0);
    assert_eq!(opens(&acts(&mut c)), [Some("t2".to_string())], "the next connection offers the new token");
}

/// A started client that gets its tokens from the app, with a token hook.
fn fetching(sites: &[&str]) -> (C, Vec<A>) {
    let mut cfg = config(sites);
    cfg.fetch_tokens = true;
    let mut c = C::new(cfg, Box::new(|| 0.5)).unwrap();
    c.hook(HookKind::State, "state");
    c.hook(HookKind::Error, "error");
    c.hook(HookKind::Ready, "ready");
    c.hook(HookKind::Token, "token");
    c.start(0.0);
    let a = acts(&mut c);
    (c, a)
}

fn asks(actions: &[A]) -> Vec<(u16, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notify { event: Event::TokenNeeded { code, reason }, .. } => Some((*code, reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn with_tokens_from_the_app_each_attempt_asks_first_and_nothing_without_a_site() {
    let (mut c, a) = fetching(&[]);
    assert!(asks(&a).is_empty() && opens(&a).is_empty(), "no site: no token asked for, no socket");
    c.on("weather", None, "w", Latest::No);
    assert!(acts(&mut c).is_empty());
    c.subscribe("mrc", None, 1.0);
    let a = acts(&mut c);
    assert_eq!(asks(&a), [(0, String::new())], "asked for before connecting");
    assert!(opens(&a).is_empty(), "the socket waits for it");
    assert_eq!(c.state(), &State::Connecting);
    c.set_token(Some("t1".into()), 2.0);
    assert_eq!(opens(&acts(&mut c)), [Some("t1".to_string())]);
    // A lost connection: the next attempt asks again (the app may hand over the one it has).
    hello(&mut c, 3.0);
    c.socket_closed(1, 1006, String::new(), 4.0);
    acts(&mut c);
    c.timer(1, TimerKind::Reconnect, 2000.0);
    let a = acts(&mut c);
    assert_eq!((asks(&a), opens(&a)), (vec![(0, String::new())], vec![]));
    // No token (an anonymous visitor): connects without one.
    c.set_token(None, 2001.0);
    assert_eq!(opens(&acts(&mut c)), [None]);
}

/// The relay says when the token expires (`hello`, `refreshed`); a quarter of its remaining life
/// before then (at most 30 s) the app is asked for a fresh one, which goes out in-band. A fixed
/// token is never refreshed, and a lost connection's timer goes with it.
#[test]
fn tokens_are_refreshed_before_the_relays_expiry() {
    let (mut c, _) = fetching(&["mrc"]);
    c.set_token(Some("t1".into()), 0.0);
    acts(&mut c);
    c.opened(1, 0.0);
    let hello = r#"{"type":"hello","version":2,"ping_interval_ms":25000,"max_subscriptions":100,"expires_at":8}"#;
    let a = frame(&mut c, hello, 1000.0);
    assert_eq!(timer_ms(&a, TimerKind::Refresh), Some(5250), "7 s left: asked for 1.75 s before");
    c.timer(1, TimerKind::Refresh, 6250.0);
    assert_eq!(asks(&acts(&mut c)), [(0, "expiring".to_string())]);
    c.set_token(Some("t2".into()), 6300.0);
    let a = acts(&mut c);
    assert_eq!(sends(&a), [serde_json::json!({"type": "refresh", "token": "t2"})]);
    assert!(opens(&a).is_empty(), "no reconnect for a refresh");
    let a = frame(&mut c, r#"{"type":"refreshed","expires_at":3600}"#, 7000.0);
    assert_eq!(timer_ms(&a, TimerKind::Refresh), Some(3_563_000), "an hour's token: asked for 30 s before");
    // An expiry the client's clock sees as past: asked for after a second, not at once (nor
    // again as fast as the relay answers).
    let a = frame(&mut c, r#"{"type":"refreshed","expires_at":1}"#, 7500.0);
    assert_eq!(timer_ms(&a, TimerKind::Refresh), Some(1000));
    c.socket_closed(1, 1006, String::new(), 8000.0);
    let a = acts(&mut c);
    assert!(a.contains(&Action::ClearTimer { link: 1, kind: TimerKind::Refresh }));
    c.timer(1, TimerKind::Refresh, 9000.0);
    assert!(asks(&acts(&mut c)).is_empty(), "a stale timer of a lost connection asks nothing");

    let mut cfg = config(&["mrc"]);
    cfg.token = Some("fixed".into());
    let (mut c, _) = started(cfg);
    c.opened(1, 0.0);
    assert_eq!(timer_ms(&frame(&mut c, hello, 1000.0), TimerKind::Refresh), None, "a fixed token is not refreshed");
}

#[test]
fn a_failed_token_is_a_failed_attempt_retried_with_backoff() {
    let (mut c, _) = fetching(&["mrc"]);
    for attempt in 1..=2 {
        c.token_failed(10.0);
        let a = acts(&mut c);
        let reason = "getToken() failed";
        let delay_ms = reconnect_timer(&a).unwrap();
        assert_eq!(states(&a), [State::Reconnecting { attempt, delay_ms, reason }], "reported with the reason");
        assert!(!c.is_closed() && opens(&a).is_empty());
        c.timer(1, TimerKind::Reconnect, 5000.0);
        assert_eq!(asks(&acts(&mut c)), [(0, String::new())], "asked again after the delay");
    }
    c.set_token(Some("t".into()), 6000.0);
    assert_eq!(opens(&acts(&mut c)), [Some("t".to_string())]);
    hello(&mut c, 6001.0);
    assert_eq!(c.state(), &State::Connected);
    // A token that never comes: the connect timeout ends the attempt.
    c.socket_closed(1, 1006, String::new(), 7000.0);
    c.timer(1, TimerKind::Reconnect, 8000.0);
    acts(&mut c);
    c.timer(1, TimerKind::Heartbeat, 18_000.0);
    let a = acts(&mut c);
    assert_eq!(states(&a).first().map(State::name), Some("reconnecting"));
    c.set_token(Some("late".into()), 18_001.0);
    assert!(opens(&acts(&mut c)).is_empty(), "a late answer opens nothing");
}

#[test]
fn an_expired_token_asks_for_a_fresh_one_and_a_refused_one_is_asked_for_once() {
    let (mut c, _) = fetching(&["mrc"]);
    c.set_token(Some("t1".into()), 0.0);
    hello(&mut c, 1.0);
    c.socket_closed(1, 3002, "token expired".into(), 2.0);
    let a = acts(&mut c);
    assert_eq!(asks(&a), [(3002, "token expired".to_string())]);
    assert!(opens(&a).is_empty() && reconnect_timer(&a).is_none(), "no attempt with the expired token");
    c.online(3.0);
    assert!(opens(&acts(&mut c)).is_empty(), "not even when the browser comes back online");
    c.set_token(Some("t2".into()), 4.0);
    let a = acts(&mut c);
    assert!(sends(&a).is_empty(), "nothing to refresh on a closed connection");
    assert_eq!(opens(&a), [Some("t2".to_string())]);
    // Refused: one more token is asked for; refused again, the client ends.
    c.socket_closed(1, 3501, "invalid signature".into(), 5.0);
    assert_eq!(asks(&acts(&mut c)), [(3501, "invalid signature".to_string())]);
    c.set_token(Some("t3".into()), 6.0);
    acts(&mut c);
    c.socket_closed(1, 3501, "invalid signature".into(), 7.0);
    assert_eq!(c.state(), &State::Closed { code: 3501, reason: "invalid signature".into() });
}

#[test]
fn without_tokens_from_the_app_an_expired_token_ends_the_client() {
    // A fixed token closed with 3002 would be refused with 3002 at every handshake: no loop.
    let (mut c, _) = started(config(&["mrc"]));
    hello(&mut c, 1.0);
    c.socket_closed(1, 3002, "token expired".into(), 2.0);
    assert!(reconnect_timer(&acts(&mut c)).is_none(), "no reconnect with an expired fixed token");
    assert_eq!(c.state(), &State::Closed { code: 3002, reason: "token expired".into() });
}

#[test]
fn without_tokens_from_the_app_a_refusal_is_terminal() {
    let (mut c, _) = started(config(&["mrc"]));
    hello(&mut c, 1.0);
    c.socket_closed(1, 3501, "invalid signature".into(), 2.0);
    assert_eq!(c.state(), &State::Closed { code: 3501, reason: "invalid signature".into() });
}

#[test]
fn the_socket_closes_after_a_linger_once_the_last_site_is_released() {
    let (mut c, _) = started(config(&["mrc"]));
    hello(&mut c, 0.0);
    frame(&mut c, &subscribed("mrc", 1, "e", 3, None, 0), 1.0);
    c.unsubscribe("mrc");
    let a = acts(&mut c);
    assert!(a.contains(&Action::SetTimer { link: 1, kind: TimerKind::Release, ms: v2::LINGER_MS }));
    assert_eq!(sends(&a), [serde_json::json!({"type":"unsubscribe","site":"mrc"})]);
    // Another site within the linger: the same socket.
    c.subscribe("saf", None, 2.0);
    let a = acts(&mut c);
    assert!(a.contains(&Action::ClearTimer { link: 1, kind: TimerKind::Release }) && opens(&a).is_empty());
    c.timer(1, TimerKind::Release, 3.0);
    assert!(!acts(&mut c).iter().any(|a| matches!(a, Action::Close { .. })), "a site again: kept");
    c.unsubscribe("saf");
    acts(&mut c);
    c.timer(1, TimerKind::Release, 6000.0);
    let a = acts(&mut c);
    assert!(a.contains(&Action::Close { link: 1, code: 1000, reason: "site unsubscribed" }));
    assert_eq!(states(&a), [State::Idle]);
    assert!(c.is_ready(), "nothing to wait for");
    // The next site opens a new socket.
    c.subscribe("sro", None, 7000.0);
    let a = acts(&mut c);
    assert!(matches!(a[..], [Action::Open { link: 2, .. }, ..]), "{a:?}");
    // Lost while lingering: not reconnected, closed.
    hello2(&mut c, 7001.0);
    c.unsubscribe("sro");
    acts(&mut c);
    c.socket_closed(2, 1006, String::new(), 7002.0);
    let a = acts(&mut c);
    assert!(reconnect_timer(&a).is_none() && states(&a) == [State::Idle], "{a:?}");
}

fn hello2(c: &mut C, now: f64) {
    c.opened(2, now);
    let hello = r#"{"type":"hello","version":2,"ping_interval_ms":25000,"max_subscriptions":100}"#;
    c.received(2, Inbound::from_server_frame(ServerFrame::parse(hello).unwrap()).unwrap(), now);
    acts(c);
}

#[test]
fn changes_made_in_one_task_go_out_as_one_frame_per_site() {
    let (mut c, _) = started(config(&["mrc", "wema"]));
    c.on("sitestatus", None, "status", Latest::Held);
    let page = c.on("phase_status", Some("mrc"), "phase", Latest::Held);
    hello(&mut c, 0.0);
    frame(&mut c, &[subscribed("mrc", 1, "e", 3, None, 0), subscribed("wema", 2, "w", 9, None, 0)].join("\n"), 1.0);
    // A site switch as a component does it: release mrc (its listener first), take sro and
    // listen there, asking for the topic's latest value.
    c.off_id(page);
    c.unsubscribe("mrc");
    c.subscribe("sro", None, 2.0);
    c.on("phase_status", Some("sro"), "phase", Latest::Ask);
    let a = acts(&mut c);
    assert_eq!(
        sends(&a),
        [
            serde_json::json!({"type":"unsubscribe","site":"mrc"}),
            serde_json::json!({"type":"subscribe","id":3,"site":"sro","topics":["phase_status","sitestatus"],"latest":true}),
        ],
        "two frames: nothing for wema, nothing narrowing mrc, sro once"
    );
    // Released and taken again in the same task: nothing at all.
    c.unsubscribe("wema");
    c.subscribe("wema", None, 3.0);
    assert!(sends(&acts(&mut c)).is_empty());
}

#[test]
fn every_confirmation_is_reported_with_its_position() {
    let (mut c, _) = started(config(&["mrc"]));
    c.hook(HookKind::Subscribed, "subscribed");
    hello(&mut c, 1.0);
    let a = frame(&mut c, &subscribed("mrc", 1, "e", 7, None, 2), 2.0);
    let want = Event::Subscribed { site: "mrc".into(), position: pos("e", 7), replayed: 2, recovered: None };
    assert!(has_event(&a, &want));
    c.unsubscribe("mrc");
    acts(&mut c);
    let a = frame(&mut c, &subscribed("mrc", 1, "e", 7, None, 0), 3.0);
    assert!(
        !a.iter().any(|a| matches!(a, Action::Notify { event: Event::Subscribed { .. }, .. })),
        "not once unwanted"
    );
}

#[test]
fn latest_publications_reach_latest_listeners_and_leave_the_position_alone() {
    let (mut c, _) = started(config(&["mrc", "saf"]));
    c.hook(HookKind::Subscribed, "subscribed");
    c.on("weather", Some("mrc"), "w", Latest::Held);
    c.on("*", None, "all", Latest::No);
    let a = hello(&mut c, 0.0);
    assert_eq!(
        sends(&a),
        vec![
            serde_json::json!({"type":"subscribe","id":1,"site":"mrc","latest":true}),
            serde_json::json!({"type":"subscribe","id":2,"site":"saf"}),
        ],
        "latest asked only where a latest listener concerns the site"
    );
    // A topic published once long ago (3), the other 500 times since (517 is its latest).
    let text = [
        subscribed_latest("mrc", 1, "e", 520, None, 0, Some(2)),
        latest_publ("mrc", "enclosure", "e", 3),
        latest_publ("mrc", "weather", "e", 517),
        publ("mrc", "weather", "e", 521),
    ]
    .join("\n");
    let a = frame(&mut c, &text, 1.0);
    let want = Event::Subscribed { site: "mrc".into(), position: pos("e", 520), replayed: 0, recovered: None };
    assert!(has_event(&a, &want));
    assert_eq!(
        delivered(&a),
        vec![("mrc".into(), 517, vec!["w"]), ("mrc".into(), 521, vec!["w", "all"])],
        "the latest weather to its latest listener only (nobody asked for the enclosure's), then live to both"
    );
    // A duplicate of a live publication, or one at the subscribe point, is still dropped.
    assert!(delivered(&frame(&mut c, &publ("mrc", "weather", "e", 521), 2.0)).is_empty());
    assert!(delivered(&frame(&mut c, &publ("mrc", "weather", "e", 520), 2.0)).is_empty());
    // Latest publications of a stream that is not the current one, or of a site not wanted.
    assert!(delivered(&frame(&mut c, &latest_publ("mrc", "weather", "old", 9), 2.0)).is_empty());
    assert!(delivered(&frame(&mut c, &latest_publ("sro", "weather", "e", 9), 2.0)).is_empty());

    // Reconnect: the position is the last live one, not a latest one; latest asked again (the
    // relay sends only what the client has not seen: here a topic missed in a gap it could not
    // recover).
    c.socket_closed(1, 1006, String::new(), 3.0);
    c.timer(1, TimerKind::Reconnect, 1000.0);
    acts(&mut c);
    let a = hello(&mut c, 1001.0);
    assert_eq!(
        sends(&a)[0],
        serde_json::json!({"type":"subscribe","id":3,"site":"mrc","recover":{"epoch":"e","offset":521},"latest":true})
    );
    let text = [
        subscribed_latest("mrc", 3, "e", 900, Some(false), 0, Some(1)),
        latest_publ("mrc", "weather", "e", 899),
        publ("mrc", "weather", "e", 901),
    ]
    .join("\n");
    let a = frame(&mut c, &text, 1002.0);
    assert!(has_event(&a, &Event::RecoveryFailed(RecoveryFailure { site: "mrc".into(), reason: "history_trimmed" })));
    assert_eq!(delivered(&a), vec![("mrc".into(), 899, vec!["w"]), ("mrc".into(), 901, vec!["w", "all"])]);
    assert_eq!(sends(&acts(&mut c)), Vec::<serde_json::Value>::new());

    // A recovered gap with latest publications of topics outside it: the replay is counted
    // without them, and the position ends at the subscribe point.
    c.socket_closed(1, 1006, String::new(), 2000.0);
    c.timer(1, TimerKind::Reconnect, 3000.0);
    acts(&mut c);
    let a = hello(&mut c, 3001.0);
    assert_eq!(sends(&a)[0]["recover"], serde_json::json!({"epoch":"e","offset":901}));
    let text = [
        subscribed_latest("mrc", 4, "e", 903, Some(true), 2, Some(1)),
        latest_publ("mrc", "weather", "e", 850),
        publ("mrc", "weather", "e", 902),
        publ("mrc", "weather", "e", 903),
        publ("mrc", "weather", "e", 903),
    ]
    .join("\n");
    let offsets: Vec<u64> = delivered(&frame(&mut c, &text, 3002.0)).iter().map(|d| d.1).collect();
    assert_eq!(offsets, vec![850, 902, 903]);
    c.socket_closed(1, 1006, String::new(), 4000.0);
    c.timer(1, TimerKind::Reconnect, 5000.0);
    acts(&mut c);
    assert_eq!(sends(&hello(&mut c, 5001.0))[0]["recover"], serde_json::json!({"epoch":"e","offset":903}));
}

#[test]
fn a_late_latest_listener_asks_for_what_the_client_lacks_by_name() {
    let (mut c, _) = started(config(&["mrc", "saf"]));
    c.on("weather", None, "w", Latest::No);
    hello(&mut c, 0.0);
    frame(&mut c, &subscribed("mrc", 1, "e", 5, None, 0), 1.0);
    frame(&mut c, &subscribed("saf", 2, "f", 9, None, 0), 1.0);
    // A latest listener of a topic the client holds: the browser hands it over; nothing is sent.
    c.on("weather", Some("mrc"), "held", Latest::Held);
    assert!(sends(&acts(&mut c)).is_empty(), "same filter, nothing lacking: no subscribe");
    // One of a topic it does not hold (never published since the subscribe): asked for by name,
    // whatever the position.
    c.on("weather", Some("mrc"), "late", Latest::Ask);
    assert_eq!(
        sends(&acts(&mut c)),
        vec![serde_json::json!({
            "type":"subscribe","id":3,"site":"mrc","topics":["weather"],"recover":{"epoch":"e","offset":5},"latest":["weather"]
        })]
    );
    // A new topic: one subscribe changes the filter and asks for it.
    c.on("enclosure", Some("mrc"), "enc", Latest::Ask);
    assert_eq!(
        sends(&acts(&mut c)),
        vec![serde_json::json!({
            "type":"subscribe","id":4,"site":"mrc","topics":["enclosure","weather"],"recover":{"epoch":"e","offset":5},
            "latest":["weather","enclosure"]
        })],
        "the first ask is not confirmed yet: still lacking"
    );
    frame(&mut c, &subscribed_latest("mrc", 4, "e", 5, Some(true), 0, Some(1)), 2.0);
    // Every site's, for a listener of every site; a site without a latest listener asks nothing.
    c.on("jobs", Some("mrc"), "j", Latest::Ask);
    let sent = sends(&acts(&mut c));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["latest"], serde_json::json!(["jobs"]), "what was asked and confirmed is not asked again");
    c.on("phase", None, "p", Latest::Ask);
    let sent: Vec<(String, serde_json::Value)> =
        sends(&acts(&mut c)).iter().map(|f| (f["site"].as_str().unwrap().to_owned(), f["latest"].clone())).collect();
    assert_eq!(
        sent,
        vec![("mrc".into(), serde_json::json!(["jobs", "phase"])), ("saf".into(), serde_json::json!(["phase"]))]
    );
    // `*`: nothing to name, so what the client has not seen.
    c.on("*", Some("saf"), "all", Latest::Ask);
    let sent = sends(&acts(&mut c));
    assert_eq!(
        (sent.len(), sent[0]["site"].as_str(), &sent[0]["latest"]),
        (1, Some("saf"), &serde_json::json!(["phase"]))
    );
    frame(&mut c, &subscribed("saf", 8, "f", 9, None, 0), 3.0);
    c.on("*", Some("saf"), "all2", Latest::Ask);
    assert_eq!(sends(&acts(&mut c))[0]["latest"], true);
    // A site subscribed later asks for every topic's on its first subscribe (no position).
    c.subscribe("sro", None, 4.0);
    assert_eq!(sends(&acts(&mut c))[0]["latest"], true);
    // Not a wanted site: nothing now; disconnected: the subscribes after hello ask.
    c.on("x", Some("tst"), "t", Latest::Ask);
    assert!(sends(&acts(&mut c)).is_empty());
    c.socket_closed(1, 1006, String::new(), 5.0);
    acts(&mut c);
    c.on("y", None, "y", Latest::Ask);
    assert!(sends(&acts(&mut c)).is_empty());
}

#[test]
fn legacy_mode_has_no_latest_publications() {
    let mut cfg = config(&["mrc"]);
    cfg.protocol = Protocol::Legacy;
    let (mut c, _) = started(cfg);
    c.on("weather", None, "w", Latest::Ask);
    c.opened(1, 1.0);
    c.on("jobs", None, "j", Latest::Ask);
    assert!(sends(&acts(&mut c)).is_empty(), "nothing to ask the original service");
    assert!(!c.accept_latest(1, "mrc", "e", 2.0));
    assert!(c.accept(1, "mrc", None, 2.0));
    assert_eq!(c.listeners("mrc", "weather", false), vec!["w"], "a latest listener still gets live publications");
}

/// The browser's dispatcher asks about a whole packed frame at once ([`Client::accept_undoable`])
/// and, when a callback changes the client mid-frame, undoes the records of the publications not
/// yet delivered, the latest first ([`Client::undo_accept`]): they count as not arrived yet.
#[test]
fn undone_accepts_count_as_not_arrived_and_the_recovery_position_is_the_last_delivered() {
    let (mut c, _) = started(config(&["mrc"]));
    c.on("*", None, "all", Latest::No);
    hello(&mut c, 0.0);
    frame(&mut c, &subscribed("mrc", 1, "e", 10, None, 0), 1.0);
    let mut undos = Vec::new();
    for offset in 11..=13 {
        let (fresh, undo) = c.accept_undoable(1, "mrc", "e", offset, 2.0);
        assert!(fresh, "{offset} is new");
        undos.push(undo.expect("a wanted site's record changed"));
    }
    // 11 was delivered when its callback changed the client: 13, then 12, are undone.
    for undo in undos.drain(1..).rev() {
        c.undo_accept("mrc", undo);
    }
    assert!(!c.accept_undoable(1, "mrc", "e", 11, 2.0).0, "11 stays delivered: a duplicate now");
    assert!(c.accept_undoable(1, "mrc", "e", 12, 2.0).0, "12 is new again");
    assert_eq!(c.accept_undoable(1, "saf", "e", 1, 2.0), (false, None), "an unwanted site records nothing");
    c.socket_closed(1, 1006, String::new(), 3.0);
    c.timer(1, TimerKind::Reconnect, 1000.0);
    acts(&mut c);
    let a = hello(&mut c, 1001.0);
    assert_eq!(sends(&a)[0]["recover"], serde_json::json!({"epoch":"e","offset":12}), "13 never was delivered");
}

/// A site's first publication, before its `subscribed` frame, starts its stream; undone, the
/// site has no position again and resubscribes without asking to recover.
#[test]
fn an_undone_first_publication_leaves_no_position() {
    let (mut c, _) = started(config(&["mrc"]));
    c.on("*", None, "all", Latest::No);
    hello(&mut c, 0.0);
    let (fresh, undo) = c.accept_undoable(1, "mrc", "e", 5, 1.0);
    assert!(fresh);
    let undo = undo.expect("a wanted site's record changed");
    assert_eq!(undo, Undo::Start, "no stream before it: undoing forgets the stream");
    c.undo_accept("mrc", undo);
    assert!(c.accept_undoable(1, "mrc", "e", 5, 1.5).0, "5 is new again");
    c.undo_accept("mrc", Undo::Start);
    c.socket_closed(1, 1006, String::new(), 2.0);
    c.timer(1, TimerKind::Reconnect, 1000.0);
    acts(&mut c);
    let a = hello(&mut c, 1001.0);
    assert_eq!(sends(&a)[0].get("recover"), None, "no position to recover from");
}

fn hello_with_deltas(c: &mut C, now: f64) -> Out {
    c.opened(1, now);
    frame(
        c,
        r#"{"type":"hello","version":2,"ping_interval_ms":25000,"max_subscriptions":100,"deltas":["fossil"]}"#,
        now,
    )
}

#[test]
fn subscribes_ask_for_deltas_when_offered_unless_turned_off() {
    let (mut c, _) = started(config(&["mrc"]));
    let a = hello_with_deltas(&mut c, 0.0);
    assert_eq!(sends(&a), vec![serde_json::json!({"type":"subscribe","id":1,"site":"mrc","delta":"fossil"})]);

    let (mut c, _) = started(config(&["mrc"]));
    let a = hello(&mut c, 0.0);
    assert_eq!(sends(&a), vec![serde_json::json!({"type":"subscribe","id":1,"site":"mrc"})], "not offered");

    let mut off = config(&["mrc"]);
    off.delta = false;
    let (mut c, _) = started(off);
    let a = hello_with_deltas(&mut c, 0.0);
    assert_eq!(sends(&a), vec![serde_json::json!({"type":"subscribe","id":1,"site":"mrc"})], "delta: false");
}

#[test]
fn a_gap_resubscribes_from_the_last_delivered_and_drops_the_site_until_confirmed() {
    let (mut c, _) = started(config(&["mrc", "wmd"]));
    c.on("*", None, "all", Latest::No);
    hello_with_deltas(&mut c, 0.0);
    frame(&mut c, &[subscribed("mrc", 1, "e", 10, None, 0), subscribed("wmd", 2, "w", 3, None, 0)].join("\n"), 1.0);
    let a = frame(&mut c, &publ("mrc", "x", "e", 11), 2.0);
    assert_eq!(delivered(&a).len(), 1);
    // The browser could not rebuild the publication at 12 (a delta whose base it lacks).
    c.gap("mrc");
    c.gap("mrc");
    let a = acts(&mut c);
    assert_eq!(
        sends(&a),
        vec![
            serde_json::json!({"type":"subscribe","id":3,"site":"mrc","recover":{"epoch":"e","offset":11},"delta":"fossil"})
        ],
        "one resubscribe, from the last delivered"
    );
    // Until it is confirmed, the site's publications are not delivered (the position stays);
    // other sites flow.
    let a = frame(&mut c, &[publ("mrc", "x", "e", 13), publ("wmd", "x", "w", 4)].join("\n"), 3.0);
    assert_eq!(delivered(&a), vec![("wmd".into(), 4, vec!["all"])]);
    c.gap("mrc");
    assert!(sends(&acts(&mut c)).is_empty(), "a resubscribe is on its way");
    let text = [subscribed("mrc", 3, "e", 13, Some(true), 2), publ("mrc", "x", "e", 12), publ("mrc", "x", "e", 13)];
    let a = frame(&mut c, &text.join("\n"), 4.0);
    let offsets: Vec<u64> = delivered(&a).iter().map(|d| d.1).collect();
    assert_eq!(offsets, vec![12, 13], "the replay fills the gap, once and in order");
    let a = frame(&mut c, &publ("mrc", "x", "e", 14), 5.0);
    assert_eq!(delivered(&a).len(), 1);
}
