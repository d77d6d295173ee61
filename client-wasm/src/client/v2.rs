//! Protocol v2's rules: every site over one link, the wanted sites kept across reconnects
//! ([`Subscriptions`]) and brought in line with subscribe frames once the server's `hello` accepts
//! a connection, publications judged by stream position, tokens refreshed in-band.
//!
//! The link exists only while the app wants a site: it is created (and opened) with the first
//! one, and closed [`LINGER_MS`] after the last one was released, unless another came meanwhile.

#[allow(unused_imports)]
use crate::prelude::*;

use datastream_protocol::v2::{ClientFrame, SUBPROTOCOL};

use super::Action;
use super::shared::Core;
use crate::link::{LinkId, TimerKind};
use crate::stream::Undo;
use crate::subscriptions::{RecoveryFailure, Subscriptions};
use crate::wire::encode;

/// How long the socket stays open after the last site was released: a page moving from one
/// site to the next (or reloading a lazily loaded view) keeps its connection.
pub(crate) const LINGER_MS: u32 = 5000;

/// The v2 client's own state: the sites it wants.
#[derive(Debug, Default)]
pub(crate) struct V2 {
    subs: Subscriptions,
}

impl V2 {
    /// The link every site uses, when the server has accepted it.
    fn live_link<F, D>(core: &Core<F, D>) -> Option<LinkId> {
        core.links.first().filter(|l| l.is_live()).map(|l| l.id)
    }

    /// Whether a latest publication of `site` in `epoch` (a `pub` marked `latest`) is for a
    /// wanted site's current stream; records nothing.
    pub(crate) fn latest(&self, site: &str, epoch: &str) -> bool {
        self.subs.accept_latest(site, epoch)
    }

    /// The client lacks the latest publication of `topic` (`*`: of every topic) of `site` (every
    /// wanted site when `None`): the next sync subscribes it again, asking for it.
    pub(crate) fn lacks(&mut self, site: Option<&str>, topic: &str) {
        self.subs.resend(site, topic);
    }

    /// Whether the next subscribes ask for deltas (the relay offers them and the app did not
    /// opt out).
    pub(crate) fn deltas(&mut self, on: bool) {
        self.subs.deltas = on;
    }

    /// A gap in `site`'s stream (see [`crate::client::Client::gap`]); whether a resubscribe is
    /// now due.
    pub(crate) fn gap(&mut self, site: &str) -> bool {
        self.subs.gap(site)
    }

    /// Takes the configured sites; returns the link to open, if there is one.
    pub(crate) fn start<F, D>(&mut self, core: &mut Core<F, D>, sites: Vec<String>) -> Vec<LinkId> {
        for site in &sites {
            self.subs.add(site, None);
        }
        if sites.is_empty() { Vec::new() } else { vec![core.new_link(None)] }
    }

    /// Wants `site`; the first site opens the link (or keeps a lingering one).
    pub(crate) fn subscribe<F, D>(&mut self, core: &mut Core<F, D>, site: &str, rewind: Option<u32>) -> Option<LinkId> {
        let idle = self.subs.is_empty();
        self.subs.add(site, rewind);
        match core.links.first() {
            // Lingering after the last site: it stays.
            Some(l) if idle => {
                core.out.push(Action::ClearTimer { link: l.id, kind: TimerKind::Release });
                None
            }
            Some(_) => None,
            None => Some(core.new_link(None)),
        }
    }

    /// Stops wanting `site`; after the last one, the link lingers.
    pub(crate) fn unsubscribe<F, D>(&mut self, core: &mut Core<F, D>, site: &str) {
        if self.subs.remove(site)
            && self.subs.is_empty()
            && let Some(l) = core.links.first()
        {
            core.out.push(Action::SetTimer { link: l.id, kind: TimerKind::Release, ms: LINGER_MS });
        }
    }

    /// The linger is over: whether the link goes (no site came meanwhile).
    pub(crate) fn release(&mut self) -> bool {
        if !self.subs.is_empty() {
            return false;
        }
        // The socket goes: the server holds nothing any more.
        self.subs.disconnected();
        self.subs.take_released();
        true
    }

    /// Sends what the server lacks: unsubscribes of released sites, subscribes of sites whose
    /// subscription (topics, latest, recovery) is not what the listeners need.
    pub(crate) fn sync<F: Clone + PartialEq, D>(&mut self, core: &mut Core<F, D>) {
        let live = Self::live_link(core);
        for site in self.subs.take_released() {
            if let Some(link) = live {
                let frame = ClientFrame::Unsubscribe { id: None, site };
                core.out.push(Action::Send { link, text: encode(&frame) });
            }
        }
        let Some(link) = live else { return };
        let sites: Vec<String> = self.subs.sites().map(str::to_owned).collect();
        for site in sites {
            let (filter, latest) = core.callbacks.filter_for(&site);
            let topics = filter.into_topics();
            if self.subs.needs_subscribe(&site, &topics)
                && let Some(frame) = self.subs.subscribe_frame(&site, topics, latest)
            {
                core.out.push(Action::Send { link, text: encode(&frame) });
            }
        }
    }

    /// Whether every subscription the server was asked for is answered.
    pub(crate) fn settled(&self) -> bool {
        self.subs.settled()
    }

    /// The socket: the configured URL, the v2 subprotocol, the token as a subprotocol entry.
    pub(crate) fn socket<F, D>(core: &Core<F, D>) -> (String, Option<&'static str>, Option<String>) {
        (core.config.socket_url(None), Some(SUBPROTOCOL), core.config.token.clone())
    }

    /// The connection was lost: the server holds no subscription any more.
    pub(crate) fn disconnected(&mut self) {
        self.subs.disconnected();
    }

    /// A new token, sent in-band on a live connection.
    pub(crate) fn refresh<F, D>(core: &mut Core<F, D>, token: &str) {
        if let Some(link) = Self::live_link(core) {
            let frame = ClientFrame::Refresh { id: None, token: token.to_owned() };
            core.out.push(Action::Send { link, text: encode(&frame) });
        }
    }

    /// Whether a publication of `site` (at `position`, if it has one) is new and wanted.
    pub(crate) fn wanted(&mut self, site: &str, position: Option<(&str, u64)>) -> bool {
        match position {
            Some((epoch, offset)) => self.subs.accept(site, epoch, offset),
            None => self.subs.contains(site),
        }
    }

    /// [`V2::wanted`], with what undoes its record when it changed one.
    pub(crate) fn accept_undoable(&mut self, site: &str, epoch: &str, offset: u64) -> (bool, Option<Undo>) {
        self.subs.accept_undoable(site, epoch, offset)
    }

    /// Undoes an [`V2::accept_undoable`] of `site` (the latest first).
    pub(crate) fn undo(&mut self, site: &str, undo: Undo) {
        self.subs.undo(site, undo);
    }

    /// A `subscribed` answer: whether the site is still wanted, and a failed recovery to report.
    pub(crate) fn confirmed(
        &mut self,
        id: Option<u64>,
        site: &str,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
        replayed: u32,
    ) -> (bool, Option<RecoveryFailure>) {
        let failure = self.subs.confirmed(id, site, epoch, offset, recovered, replayed);
        (self.subs.contains(site), failure)
    }

    /// The server refused request `id`: the site of the subscribe it was, if it was one.
    pub(crate) fn refused(&mut self, id: u64) -> Option<String> {
        self.subs.refused(id).map(str::to_owned)
    }

    /// The position `site`'s stream would be recovered from.
    #[cfg(all(test, target_arch = "wasm32"))]
    pub(crate) fn position(&self, site: &str) -> Option<datastream_protocol::v2::StreamPosition> {
        self.subs.position(site)
    }
}
