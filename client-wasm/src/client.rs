//! The client's logic, free of I/O: events go in (the app's calls, socket events, timers, the
//! browser's `online` and visibility events), [`Action`]s come out (open, send, close, arm a
//! timer, call these hooks). The browser layer (`web`) only carries actions out, which keeps
//! every decision here, where native tests drive it step by step with a fake clock.
//!
//! Publications are the exception, for speed: the browser reads them itself and asks
//! [`Client::accept`] whether each is new and wanted, and [`Client::listeners`] whose callbacks
//! get it; the client keeps the positions and deduplicates as for any other frame.
//!
//! What differs between the two protocols — how sites are subscribed, when a connection counts as
//! accepted, which publications are wanted, what a socket is opened with — is each protocol's
//! rules: `client/rules.rs` asks the protocol the client speaks (`client/v2.rs`,
//! `client/legacy.rs`), and says what a protocol without the concept does. This file holds what
//! they share: links, timers, backoff, tokens, states and hooks; `client/shared.rs` the data they
//! all work on.
//!
//! `F` is a callback (a JavaScript function in the browser), `D` a value thrown by one.

#[allow(unused_imports)]
use crate::prelude::*;

use datastream_protocol::close::{CloseCode, should_reconnect};
use datastream_protocol::v2::{ClientFrame, StreamPosition};

use crate::callbacks::{Callbacks, HookKind, ListenerId, TopicSelector};
use crate::config::{Config, ConfigError, duration_ms};
use crate::inbound::Inbound;
use crate::link::{Link, LinkId, Phase, TimerKind};
use crate::state::State;
use crate::stream::Undo;
use crate::subscriptions::RecoveryFailure;
use crate::wire::encode;

mod legacy;
mod rules;
mod shared;
mod v2;

use rules::Rules;
use shared::Core;

/// Something for the browser layer to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<F, D> {
    /// Open a new socket for `link` (closing any it had).
    Open {
        /// The link.
        link: LinkId,
        /// Where to.
        url: String,
        /// The WebSocket subprotocol to ask for.
        subprotocol: Option<&'static str>,
        /// The token to offer as a second subprotocol entry (`datastream.token.<token>`).
        token: Option<String>,
    },
    /// Send a text frame on `link`'s socket.
    Send {
        /// The link.
        link: LinkId,
        /// The frame.
        text: String,
    },
    /// Close `link`'s socket, if it has one, and forget it.
    Close {
        /// The link.
        link: LinkId,
        /// The close code sent (1000: nothing is wrong on the client's side).
        code: u16,
        /// The close reason sent.
        reason: &'static str,
    },
    /// Arm (or re-arm) a timer; when it fires, call [`Client::timer`].
    SetTimer {
        /// The link.
        link: LinkId,
        /// Which timer.
        kind: TimerKind,
        /// Delay in milliseconds.
        ms: u32,
    },
    /// Cancel a timer.
    ClearTimer {
        /// The link.
        link: LinkId,
        /// Which timer.
        kind: TimerKind,
    },
    /// Tell these hooks about an event.
    Notify {
        /// The hooks.
        callbacks: Vec<F>,
        /// The event.
        event: Event<D>,
    },
    /// Call [`Client::flush`] once the current task is done (and the microtasks it queued, where
    /// frameworks' schedulers run): what the app changed goes out as at most one frame per site.
    Flush,
}

/// An event for the app's hooks.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<D> {
    /// The connection state changed.
    State(State),
    /// Something the app should know went wrong.
    Error(ClientError<D>),
    /// A site's gap could not be recovered: refetch its state.
    RecoveryFailed(RecoveryFailure),
    /// Connected, and every subscription confirmed.
    Ready,
    /// A subscription of `site` took effect: the server confirmed it (v2), or its socket is
    /// open (legacy, which has no confirmations).
    Subscribed {
        /// The site.
        site: String,
        /// Its history's epoch and latest offset when the subscription took effect (v2 only).
        position: Option<StreamPosition>,
        /// How many publications are replayed before live ones.
        replayed: u32,
        /// Whether the gap since the last position was recovered (absent: nothing to recover).
        recovered: Option<bool>,
    },
    /// A token is needed from the app ([`Client::set_token`], or [`Client::token_failed`]): a
    /// connection attempt waits for it — `code` 0 before connecting; 3002 (expired) or 3501
    /// (refused): the server closed the last connection over its token — or, `code` 0 and
    /// `reason` `expiring`, the live connection's token expires soon and the answer is sent
    /// in-band.
    TokenNeeded {
        /// The close code, or 0.
        code: u16,
        /// The server's reason, or empty.
        reason: String,
    },
}

/// Whether a new listener wants latest publications, and whether the client holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latest {
    /// Live publications only.
    No,
    /// Latest publications first; the client held what it needs (the browser handed it over).
    Held,
    /// Latest publications first, and the client does not hold them all: ask the server.
    Ask,
}

/// What the error hooks are told.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError<D> {
    /// A publication callback threw; the others still ran.
    #[error("a callback for topic {topic} of site {site} threw")]
    Callback {
        /// The publication's site.
        site: String,
        /// The publication's topic.
        topic: String,
        /// What it threw.
        error: D,
    },
    /// An event hook (state, ready, recovery) threw.
    #[error("an event listener threw")]
    Hook {
        /// What it threw.
        error: D,
    },
    /// The server refused a request.
    #[error("the server refused a request ({code}): {message}")]
    Server {
        /// The error code, e.g. `too_many_subscriptions`.
        code: String,
        /// The server's explanation.
        message: String,
        /// The site of the refused subscribe, when it was one.
        site: Option<String>,
    },
    /// A frame from the server could not be read.
    #[error("unreadable frame from the server: {0}")]
    Frame(String),
}

impl<D> ClientError<D> {
    /// The same text as `Display`, built without the formatting machinery (see
    /// [`ConfigError::message`]).
    pub fn message(&self) -> String {
        let mut m = String::new();
        match self {
            ClientError::Callback { site, topic, .. } => {
                m.push_str("a callback for topic ");
                m.push_str(topic);
                m.push_str(" of site ");
                m.push_str(site);
                m.push_str(" threw");
            }
            ClientError::Hook { .. } => m.push_str("an event listener threw"),
            ClientError::Server { code, message, .. } => {
                m.push_str("the server refused a request (");
                m.push_str(code);
                m.push_str("): ");
                m.push_str(message);
            }
            ClientError::Frame(why) => {
                m.push_str("unreadable frame from the server: ");
                m.push_str(why);
            }
        }
        m
    }
}

/// The client: what both protocols share, and its protocol's rules.
pub struct Client<F, D> {
    core: Core<F, D>,
    rules: Rules,
    /// Set once the client is finished; nothing reconnects after.
    closed: Option<State>,
    /// The state last reported to the app.
    reported: State,
    /// Whether `Ready` was reported for the current connection.
    ready_reported: bool,
    /// A uniform random number in [0, 1), for the backoff jitter.
    random: Box<dyn FnMut() -> f64>,
    /// Why the next token is asked for: the close code and reason of a connection the server
    /// ended over its token; `(0, "")` for an ordinary attempt.
    token_cause: (u16, String),
    /// The last connection was refused (3501) and a new token was asked for: another refusal
    /// before the server accepts a connection is final.
    token_retried: bool,
    /// An [`Action::Flush`] is out and not yet done.
    flush_due: bool,
}

impl<F, D> core::fmt::Debug for Client<F, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client").field("state", &self.reported).field("links", &self.core.links.len()).finish()
    }
}

impl<F: Clone + PartialEq, D> Client<F, D> {
    /// A client for `config`, not yet connected; call [`Client::start`].
    pub fn new(config: Config, random: Box<dyn FnMut() -> f64>) -> Result<Self, ConfigError> {
        config.validate()?;
        let rules = Rules::new(config.protocol);
        Ok(Client {
            core: Core { config, callbacks: Callbacks::default(), links: Vec::new(), next_link: 1, out: Vec::new() },
            rules,
            closed: None,
            reported: State::Idle,
            ready_reported: false,
            random,
            token_cause: (0, String::new()),
            token_retried: false,
            flush_due: false,
        })
    }

    /// The actions decided since the last call.
    pub fn take_actions(&mut self) -> Vec<Action<F, D>> {
        core::mem::take(&mut self.core.out)
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.reported
    }

    /// Whether the client is connected and every subscription is confirmed.
    pub fn is_ready(&self) -> bool {
        self.closed.is_none() && self.core.links.iter().filter(|l| !l.spare).all(Link::is_live) && self.rules.settled()
    }

    /// Whether the client is finished.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Takes the configured sites and opens the connection(s) they need (none without a site).
    pub fn start(&mut self, now: f64) {
        let sites = core::mem::take(&mut self.core.config.sites);
        for link in self.rules.start(&mut self.core, sites) {
            self.open(link, now);
        }
        self.report_state();
        self.report_ready();
    }

    // ----- the app's calls -----

    /// Registers a publication listener for `topic` (`*`: every topic), on `site` only if given.
    /// With `latest` other than [`Latest::No`] it wants each topic's latest publication first:
    /// every subscribe of a site it concerns asks the server for them (v2), and they are handed
    /// to it by [`Client::listeners`]. What the client already holds, the browser gives it at
    /// once; with [`Latest::Ask`] (that did not cover it) the site is subscribed again now,
    /// asking the server for `topic`'s by name (however old: the client says it lacks it) or, for
    /// `*`, for what the client has not seen. Nothing is asked in the legacy protocol, nor for a
    /// site not yet wanted (its first subscribe asks for every topic's).
    pub fn on(&mut self, topic: &str, site: Option<&str>, callback: F, latest: Latest) -> ListenerId {
        let selector = TopicSelector::parse(topic);
        let id = self.core.callbacks.add(selector, site.map(str::to_owned), callback, latest != Latest::No);
        if latest == Latest::Ask {
            self.rules.lacks(site, topic);
        }
        self.schedule_flush();
        id
    }

    /// Registers an event hook.
    pub fn hook(&mut self, kind: HookKind, callback: F) -> ListenerId {
        self.core.callbacks.add_hook(kind, callback)
    }

    /// Removes a listener or hook by id.
    pub fn off_id(&mut self, id: ListenerId) {
        if self.core.callbacks.remove(id) {
            self.schedule_flush();
        }
    }

    /// Subscribes to `site`; with `rewind`, first replays up to that many of its latest
    /// publications (v2 only; the legacy protocol keeps no history). The first site opens the
    /// connection.
    pub fn subscribe(&mut self, site: &str, rewind: Option<u32>, now: f64) {
        if self.closed.is_some() {
            return;
        }
        if let Some(link) = self.rules.subscribe(&mut self.core, site, rewind) {
            self.open(link, now);
        }
        self.schedule_flush();
        self.report_state();
        self.report_ready();
    }

    /// Unsubscribes from `site`. Without a site left, the connection closes after a linger.
    pub fn unsubscribe(&mut self, site: &str) {
        if self.closed.is_some() {
            return;
        }
        self.rules.unsubscribe(&mut self.core, site);
        self.schedule_flush();
        self.report_state();
        self.report_ready();
    }

    /// Sends what the app's calls since the last flush changed: at most one subscribe or
    /// unsubscribe frame per site whose subscription changed.
    pub fn flush(&mut self) {
        self.flush_due = false;
        if self.closed.is_none() {
            self.rules.sync(&mut self.core);
            self.report_ready();
        }
    }

    /// Closes every socket for good.
    pub fn close(&mut self) {
        self.shut_down(1000, "closed by the client".to_owned());
    }

    /// The app's answer to [`Event::TokenNeeded`]: the token to connect with, or `None` to
    /// connect without one. A connection attempt waiting for it opens now; a v2 connection that
    /// is live gets it in a `refresh` frame; every later connection offers it.
    pub fn set_token(&mut self, token: Option<String>, now: f64) {
        if self.closed.is_some() {
            return;
        }
        if let Some(token) = &token {
            self.rules.refresh(&mut self.core, token);
        }
        self.core.config.token = token;
        for i in 0..self.core.links.len() {
            if let Phase::Token { since } = self.core.links[i].phase {
                self.connect(self.core.links[i].id, since.min(now));
            }
        }
    }

    /// The app could not get a token (its `getToken` failed): the attempts waiting for one fail,
    /// and are tried again after the backoff delay, asking again.
    pub fn token_failed(&mut self, now: f64) {
        while let Some(id) = self.core.links.iter().find(|l| matches!(l.phase, Phase::Token { .. })).map(|l| l.id) {
            self.lose(id, "getToken() failed", false, now);
        }
    }

    // ----- what the browser reports -----

    /// `link`'s socket opened.
    pub fn opened(&mut self, link: LinkId, now: f64) {
        let accepted = self.rules.accepted_on_open();
        let Some(l) = self.core.link_mut(link) else { return };
        let Phase::Opening { since } = l.phase else { return };
        l.last_heard = now;
        if !accepted {
            l.phase = Phase::Handshake { since };
            return;
        }
        l.phase = Phase::Live;
        l.failures = 0;
        l.state = State::Connected;
        self.core.out.push(Action::ClearTimer { link, kind: TimerKind::Heartbeat });
        self.rules.opened(&mut self.core, link);
        self.report_state();
        self.report_ready();
    }

    /// A frame other than a publication arrived on `link`.
    pub fn received(&mut self, link: LinkId, frame: Inbound, now: f64) {
        let grace = self.grace_ms();
        let Some(l) = self.link_mut(link) else { return };
        l.last_heard = now;
        l.probe_sent = None;
        match frame {
            Inbound::Hello { ping_interval_ms, fossil, expires_at } => {
                if !matches!(l.phase, Phase::Handshake { .. }) {
                    return;
                }
                l.phase = Phase::Live;
                l.failures = 0;
                l.state = State::Connected;
                // Clamp so a bogus interval cannot make the timer fire constantly or never.
                l.silence_limit = ping_interval_ms.clamp(1000, 3_600_000) as f64 + grace;
                let ms = ms_u32(l.silence_limit);
                self.core.out.push(Action::SetTimer { link, kind: TimerKind::Heartbeat, ms });
                self.token_retried = false;
                self.rules.deltas(fossil && self.core.config.delta);
                self.rules.sync(&mut self.core);
                self.report_state();
                self.expires(link, expires_at, now);
            }
            Inbound::Refreshed { expires_at } => self.expires(link, expires_at, now),
            Inbound::Subscribed { id, site, epoch, offset, recovered, replayed } => {
                let (wanted, failure) = self.rules.confirmed(id, &site, &epoch, offset, recovered, replayed);
                if wanted {
                    let position = Some(StreamPosition { epoch, offset });
                    let event = Event::Subscribed { site, position, replayed, recovered };
                    self.notify(HookKind::Subscribed, event);
                }
                if let Some(failure) = failure {
                    self.notify(HookKind::RecoveryFailed, Event::RecoveryFailed(failure));
                }
            }
            Inbound::Ping => self.core.out.push(Action::Send { link, text: encode(&ClientFrame::Pong) }),
            Inbound::Pong | Inbound::Unsubscribed | Inbound::Other => {}
            Inbound::Error { id, code, site, message } => {
                // The subscribe refused, else what the server says it is about (a refresh that
                // no longer grants a site).
                let site = id.and_then(|id| self.rules.refused(id)).or(site);
                self.notify(HookKind::Error, Event::Error(ClientError::Server { code, message, site }));
            }
        }
        self.report_ready();
    }

    /// A publication of `site` at `position` (`(epoch, offset)`; `None` in the legacy protocol)
    /// arrived on `link`: records it and returns whether it is new and wanted, i.e. is to be
    /// handed to the callbacks of [`Client::listeners`], in order (a callback that throws is
    /// reported with [`Client::callback_failed`]). Like any frame, it shows the link is alive.
    /// Decides no action.
    pub fn accept(&mut self, link: LinkId, site: &str, position: Option<(&str, u64)>, now: f64) -> bool {
        let Some(l) = self.link_mut(link) else { return false };
        l.last_heard = now;
        l.probe_sent = None;
        self.rules.wanted(&self.core, link, site, position)
    }

    /// [`Client::accept`] of a v2 publication, with what undoes its record
    /// ([`Client::undo_accept`]) when it changed one.
    pub fn accept_undoable(
        &mut self,
        link: LinkId,
        site: &str,
        epoch: &str,
        offset: u64,
        now: f64,
    ) -> (bool, Option<Undo>) {
        let Some(l) = self.link_mut(link) else { return (false, None) };
        l.last_heard = now;
        l.probe_sent = None;
        self.rules.accept_undoable(&self.core, link, site, epoch, offset)
    }

    /// A latest publication of `site` in `epoch` (a `pub` frame marked `latest`) arrived on
    /// `link`: whether it is for a wanted site's current stream, i.e. is to be handed to the
    /// latest listeners of [`Client::listeners`] (unless the browser holds something as new). It
    /// is older than the site's position and is not part of the stream: the position recovered
    /// from and the replay still arriving are left as they are. A sign of life, like any frame.
    pub fn accept_latest(&mut self, link: LinkId, site: &str, epoch: &str, now: f64) -> bool {
        let Some(l) = self.link_mut(link) else { return false };
        l.last_heard = now;
        l.probe_sent = None;
        self.rules.latest(site, epoch)
    }

    /// A publication of `site` could not be read in full (a delta whose base the browser does not
    /// hold, or that does not apply): a gap. Nothing of the site is accepted any more until it is
    /// subscribed again, recovering from the last position delivered (the replay comes in full).
    pub fn gap(&mut self, site: &str) {
        if self.rules.gap(site) {
            self.schedule_flush();
        }
    }

    /// Forgets a publication of `site` recorded by [`Client::accept_undoable`] (the latest first):
    /// as if it had not arrived yet.
    pub fn undo_accept(&mut self, site: &str, undo: Undo) {
        self.rules.undo(site, undo);
    }

    /// The position `site`'s stream would be recovered from.
    #[cfg(all(test, target_arch = "wasm32"))]
    pub(crate) fn position(&self, site: &str) -> Option<datastream_protocol::v2::StreamPosition> {
        self.rules.position(site)
    }

    /// The callbacks for a publication of `site` on `topic`, in registration order; with
    /// `latest`, for a latest publication: those of listeners that want latest publications.
    pub fn listeners(&self, site: &str, topic: &str, latest: bool) -> Vec<F> {
        self.core.callbacks.matching(site, topic, latest)
    }

    /// Changes whenever a listener is added or removed: what [`Client::listeners`] returned stays
    /// valid for as long as it does not.
    pub fn listeners_version(&self) -> u32 {
        self.core.callbacks.version()
    }

    /// A frame on `link` could not be decoded.
    pub fn undecodable(&mut self, link: LinkId, message: String, now: f64) {
        if let Some(l) = self.link_mut(link) {
            l.last_heard = now;
            self.notify(HookKind::Error, Event::Error(ClientError::Frame(message)));
        }
    }

    /// `link`'s socket closed (or failed to open) with `code`.
    pub fn socket_closed(&mut self, link: LinkId, code: u16, reason: String, now: f64) {
        if self.link_mut(link).is_none() {
            return;
        }
        let over_token = code == CloseCode::TokenExpired.code()
            || (code == CloseCode::Forbidden.code() && !core::mem::take(&mut self.token_retried));
        if over_token && self.core.config.fetch_tokens {
            // Reconnect at once with a fresh token: the one it has would be refused.
            self.token_retried = code == CloseCode::Forbidden.code();
            self.token_cause = (code, reason);
            self.lose(link, "token", true, now);
        } else if code == CloseCode::TokenExpired.code() {
            // A fixed token that expired: the relay refuses it at the next handshake too
            // (3002 again), so reconnecting with it would only loop.
            self.shut_down(code, if reason.is_empty() { "token expired".to_owned() } else { reason });
        } else if should_reconnect(code) {
            self.lose(link, "connection lost", false, now);
        } else {
            let reason = if reason.is_empty() { "closed by the server".to_owned() } else { reason };
            self.shut_down(code, reason);
        }
    }

    /// A timer set by [`Action::SetTimer`] fired.
    pub fn timer(&mut self, link: LinkId, kind: TimerKind, now: f64) {
        let grace = self.grace_ms();
        let connect_timeout = duration_ms(self.core.config.connect_timeout) as f64;
        let Some(l) = self.link_mut(link) else { return };
        match (kind, l.phase) {
            (TimerKind::Reconnect, Phase::Waiting) => self.open(link, now),
            (TimerKind::Heartbeat, Phase::Opening { since } | Phase::Handshake { since } | Phase::Token { since }) => {
                if now - since >= connect_timeout {
                    let why =
                        if matches!(l.phase, Phase::Token { .. }) { "no token in time" } else { "connect timeout" };
                    self.lose(link, why, false, now);
                } else {
                    let ms = ms_u32(connect_timeout - (now - since));
                    self.core.out.push(Action::SetTimer { link, kind, ms });
                }
            }
            (TimerKind::Heartbeat, Phase::Live) => match l.liveness(now, grace) {
                Err(why) => self.lose(link, why, false, now),
                Ok(next) => self.core.out.push(Action::SetTimer { link, kind, ms: ms_u32(next) }),
            },
            (TimerKind::Release, _) if self.rules.release(&self.core, link) => self.drop_link(link),
            (TimerKind::Refresh, Phase::Live) => {
                self.notify(HookKind::Token, Event::TokenNeeded { code: 0, reason: "expiring".to_owned() });
            }
            _ => {}
        }
    }

    /// The browser is back online: retry now rather than after the backoff delay, and make sure
    /// an open connection still works (the network may have changed under it).
    pub fn online(&mut self, now: f64) {
        self.wake(now, false);
    }

    /// The page became visible: timers in a hidden tab are throttled and a sleeping machine's
    /// sockets die silently, so reconnect now if the connection is stale or waiting.
    pub fn visible(&mut self, now: f64) {
        self.wake(now, true);
    }

    /// A publication callback threw `error`.
    pub fn callback_failed(&mut self, site: String, topic: String, error: D) {
        self.notify(HookKind::Error, Event::Error(ClientError::Callback { site, topic, error }));
    }

    /// An event hook threw `error`. Errors of error hooks are not reported again (it would loop).
    pub fn hook_failed(&mut self, kind: HookKind, error: D) -> Option<D> {
        if kind == HookKind::Error {
            return Some(error);
        }
        self.notify(HookKind::Error, Event::Error(ClientError::Hook { error }));
        None
    }

    // ----- internals -----

    /// The relay says `link`'s token expires at `expires_at` (Unix seconds): with tokens from the
    /// app, a fresh one is asked for a quarter of its remaining life before then (at most 30 s
    /// before, which also absorbs a small difference between the two clocks), and sent in-band.
    /// Never sooner than [`MIN_REFRESH_MS`]: a clock far ahead of the relay's, or an expiry
    /// already past, would otherwise ask the app again as fast as the relay answers.
    fn expires(&mut self, link: LinkId, expires_at: Option<u64>, now: f64) {
        if let (Some(at), true) = (expires_at, self.core.config.fetch_tokens) {
            let left = at as f64 * 1000.0 - now;
            let ms = ms_u32(left - (left / 4.0).min(30_000.0)).max(MIN_REFRESH_MS);
            self.core.out.push(Action::SetTimer { link, kind: TimerKind::Refresh, ms });
        }
    }

    fn grace_ms(&self) -> f64 {
        duration_ms(self.core.config.heartbeat_grace) as f64
    }

    fn link_mut(&mut self, id: LinkId) -> Option<&mut Link> {
        self.core.link_mut(id)
    }

    /// Starts a connection attempt on `link`: with tokens from the app, asks for one first (once
    /// for every link waiting), else opens its socket. The connect timeout covers both.
    fn open(&mut self, link: LinkId, now: f64) {
        let connect_timeout = ms_u32(duration_ms(self.core.config.connect_timeout) as f64);
        let asked = self.core.links.iter().any(|l| matches!(l.phase, Phase::Token { .. }));
        let fetch = self.core.config.fetch_tokens;
        let Some(l) = self.core.link_mut(link) else { return };
        l.probe_sent = None;
        let timer = Action::SetTimer { link, kind: TimerKind::Heartbeat, ms: connect_timeout };
        if !fetch {
            self.connect(link, now);
            return self.core.out.push(timer);
        }
        l.phase = Phase::Token { since: now };
        self.core.out.push(timer);
        let (code, reason) = core::mem::take(&mut self.token_cause);
        if !asked {
            self.notify(HookKind::Token, Event::TokenNeeded { code, reason });
        }
    }

    /// Opens `link`'s socket, for an attempt started at `since`.
    fn connect(&mut self, link: LinkId, since: f64) {
        let Some(l) = self.core.link_mut(link) else { return };
        l.phase = Phase::Opening { since };
        l.opened_site.clone_from(&l.site);
        let Some(l) = self.core.links.iter().find(|l| l.id == link) else { return };
        let (url, subprotocol, token) = self.rules.socket(&self.core, l);
        self.core.out.push(Action::Open { link, url, subprotocol, token });
    }

    /// `link` is no more (`why`): forget its socket and schedule the next attempt (now, with
    /// `at_once`).
    fn lose(&mut self, link: LinkId, why: &'static str, at_once: bool, now: f64) {
        // No site needs it any more (it was lingering): it goes instead.
        if self.rules.release(&self.core, link) {
            return self.drop_link(link);
        }
        let unit = (self.random)();
        let backoff = self.core.config.backoff;
        let Some(l) = self.core.links.iter_mut().find(|l| l.id == link) else { return };
        l.failures = l.failures.saturating_add(1);
        let delay_ms = if at_once { 0 } else { ms_u32(duration_ms(backoff.delay(l.failures - 1, unit)) as f64) };
        l.state = State::Reconnecting { attempt: l.failures, delay_ms, reason: why };
        l.phase = Phase::Waiting;
        self.core.out.push(Action::Close { link, code: 1000, reason: why });
        self.core.out.push(Action::ClearTimer { link, kind: TimerKind::Heartbeat });
        self.core.out.push(Action::ClearTimer { link, kind: TimerKind::Refresh });
        self.rules.disconnected();
        self.ready_reported = false;
        self.report_state();
        if at_once {
            self.core.out.push(Action::ClearTimer { link, kind: TimerKind::Reconnect });
            self.open(link, now);
        } else {
            self.core.out.push(Action::SetTimer { link, kind: TimerKind::Reconnect, ms: delay_ms });
        }
    }

    fn wake(&mut self, now: f64, from_hidden: bool) {
        let grace = self.grace_ms();
        // Legacy has no client ping; the browser's own close detection has to do there.
        let can_probe = self.rules.can_probe();
        let ids: Vec<LinkId> = self.core.links.iter().map(|l| l.id).collect();
        for id in ids {
            let Some(l) = self.link_mut(id) else { continue };
            match l.phase {
                Phase::Waiting => {
                    self.core.out.push(Action::ClearTimer { link: id, kind: TimerKind::Reconnect });
                    self.open(id, now);
                }
                Phase::Live if l.is_stale(now) => self.lose(id, "stale after sleep", true, now),
                // A network change can leave a socket open but dead; a ping tells within the
                // grace period. A tab coming back before its connection went stale needs none.
                Phase::Live if can_probe && !from_hidden && l.probe_sent.is_none() => {
                    l.probe_sent = Some(now);
                    self.core.out.push(Action::Send { link: id, text: encode(&ClientFrame::Ping) });
                    self.core.out.push(Action::SetTimer { link: id, kind: TimerKind::Heartbeat, ms: ms_u32(grace) });
                }
                _ => {}
            }
        }
    }

    /// Closes and forgets `link`, which no site needs.
    fn drop_link(&mut self, link: LinkId) {
        self.close_link(link, "site unsubscribed");
        self.core.links.retain(|l| l.id != link);
        self.report_state();
        self.report_ready();
    }

    /// Closes `link`'s socket and cancels its timers.
    fn close_link(&mut self, link: LinkId, reason: &'static str) {
        self.core.out.push(Action::Close { link, code: 1000, reason });
        for kind in [TimerKind::Reconnect, TimerKind::Heartbeat, TimerKind::Release, TimerKind::Refresh] {
            self.core.out.push(Action::ClearTimer { link, kind });
        }
    }

    /// Asks for a [`Client::flush`] once the current task is done, unless one is due already.
    fn schedule_flush(&mut self) {
        if !core::mem::replace(&mut self.flush_due, true) {
            self.core.out.push(Action::Flush);
        }
    }

    fn shut_down(&mut self, code: u16, reason: String) {
        if self.closed.is_some() {
            return;
        }
        for l in core::mem::take(&mut self.core.links) {
            self.close_link(l.id, "client closed");
        }
        self.closed = Some(State::Closed { code, reason });
        self.report_state();
    }

    fn notify(&mut self, kind: HookKind, event: Event<D>) {
        self.core.notify(kind, event);
    }

    fn report_state(&mut self) {
        let now = match &self.closed {
            Some(closed) => closed.clone(),
            None => State::combine(self.core.links.iter().filter(|l| !l.spare).map(|l| &l.state)),
        };
        if now != self.reported {
            self.reported = now.clone();
            self.notify(HookKind::State, Event::State(now));
        }
    }

    fn report_ready(&mut self) {
        let ready = self.is_ready();
        if ready && !self.ready_reported {
            self.rules.ready(&mut self.core);
            self.notify(HookKind::Ready, Event::Ready);
        }
        self.ready_reported = ready;
    }
}

/// The shortest wait before asking for a token to refresh the connection's with.
const MIN_REFRESH_MS: u32 = 1000;

/// Longest timer delay browsers honour (2^31 - 1 ms); a longer one fires at once.
const MAX_TIMER_MS: u32 = i32::MAX as u32;

/// A delay in whole milliseconds for a timer, rounded up so a deadline is never checked early.
fn ms_u32(ms: f64) -> u32 {
    if ms.is_nan() || ms <= 0.0 {
        0
    } else if ms >= f64::from(MAX_TIMER_MS) {
        MAX_TIMER_MS
    } else {
        // `f64::ceil` is std's: the truncation, plus one when it dropped a fraction.
        let whole = ms as u32;
        if f64::from(whole) < ms { whole + 1 } else { whole }
    }
}

#[cfg(test)]
mod tests;
