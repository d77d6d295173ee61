//! [`Rules`]: the protocol a client speaks, picked once when it is created. Every question whose
//! answer depends on the protocol goes through here; where one protocol lacks the concept, its
//! match arm says what that means for it, once.
//!
//! An enum rather than a boxed trait object: each call goes to one of two known types, which the
//! compiler can inline (a boxed trait object made the WebAssembly 0.9 KB larger).

#[allow(unused_imports)]
use crate::prelude::*;

use crate::config::Protocol;
use crate::link::{Link, LinkId};
use crate::stream::Undo;
use crate::subscriptions::RecoveryFailure;

use super::legacy::Legacy;
use super::shared::Core;
use super::v2::V2;

/// The protocol a client speaks, with its rules' state.
#[derive(Debug)]
pub(crate) enum Rules {
    V2(V2),
    Legacy(Legacy),
}

impl Rules {
    pub(crate) fn new(protocol: Protocol) -> Self {
        match protocol {
            Protocol::V2 => Rules::V2(V2::default()),
            Protocol::Legacy => Rules::Legacy(Legacy),
        }
    }

    /// Takes the configured sites; returns the links to open.
    pub(crate) fn start<F, D>(&mut self, core: &mut Core<F, D>, sites: Vec<String>) -> Vec<LinkId> {
        match self {
            Rules::V2(r) => r.start(core, sites),
            Rules::Legacy(_) => Legacy::start(core, sites),
        }
    }

    /// Wants `site` (with a rewind, where the protocol has history); returns a link to open.
    pub(crate) fn subscribe<F, D>(&mut self, core: &mut Core<F, D>, site: &str, rewind: Option<u32>) -> Option<LinkId>
    where
        F: Clone + PartialEq,
    {
        match self {
            Rules::V2(r) => r.subscribe(core, site, rewind),
            // No history in the original service: nothing to rewind.
            Rules::Legacy(_) => Legacy::subscribe(core, site),
        }
    }

    /// Stops wanting `site`.
    pub(crate) fn unsubscribe<F, D>(&mut self, core: &mut Core<F, D>, site: &str) {
        match self {
            Rules::V2(r) => r.unsubscribe(core, site),
            Rules::Legacy(_) => Legacy::unsubscribe(core, site),
        }
    }

    /// `link`'s release timer fired: whether its socket is no longer needed (and is to be closed
    /// and forgotten).
    pub(crate) fn release<F, D>(&mut self, core: &Core<F, D>, link: LinkId) -> bool {
        match self {
            Rules::V2(r) => r.release(),
            Rules::Legacy(_) => Legacy::release(core, link),
        }
    }

    /// Whether an open socket is an accepted connection; in v2 the server's `hello` accepts it.
    pub(crate) fn accepted_on_open(&self) -> bool {
        matches!(self, Rules::Legacy(_))
    }

    /// `link`'s socket opened and the connection is accepted with it (legacy only: v2's is
    /// accepted by `hello`, and [`Rules::sync`] follows).
    pub(crate) fn opened<F, D>(&mut self, core: &mut Core<F, D>, link: LinkId) {
        if let Rules::Legacy(_) = self {
            Legacy::opened(core, link);
        }
    }

    /// The connection was accepted or the listeners changed: brings the server in line. The
    /// original service has no subscriptions of its own: a link is for its site.
    pub(crate) fn sync<F: Clone + PartialEq, D>(&mut self, core: &mut Core<F, D>) {
        if let Rules::V2(r) = self {
            r.sync(core);
        }
    }

    /// Every link is accepted and every subscription answered: a legacy site counts as
    /// subscribed now (v2's are confirmed one by one by the server).
    pub(crate) fn ready<F: Clone + PartialEq, D>(&mut self, core: &mut Core<F, D>) {
        if let Rules::Legacy(_) = self {
            Legacy::subscribed(core, None);
        }
    }

    /// Whether every subscription the server was asked for is answered (legacy: none is asked).
    pub(crate) fn settled(&self) -> bool {
        match self {
            Rules::V2(r) => r.settled(),
            Rules::Legacy(_) => true,
        }
    }

    /// What `link`'s socket is opened with: URL, subprotocol, token for a subprotocol entry.
    pub(crate) fn socket<F, D>(
        &self,
        core: &Core<F, D>,
        link: &Link,
    ) -> (String, Option<&'static str>, Option<String>) {
        match self {
            Rules::V2(_) => V2::socket(core),
            Rules::Legacy(_) => Legacy::socket(core, link),
        }
    }

    /// The connection was lost: nothing the server held for it remains (legacy: it held
    /// nothing).
    pub(crate) fn disconnected(&mut self) {
        if let Rules::V2(r) = self {
            r.disconnected();
        }
    }

    /// Whether a live connection can be checked with a client ping; the original service has
    /// none: the browser's own close detection has to do there.
    pub(crate) fn can_probe(&self) -> bool {
        matches!(self, Rules::V2(_))
    }

    /// A new token, sent on a live v2 connection; the legacy protocol takes a token in its URL
    /// only, so its next connection uses it.
    pub(crate) fn refresh<F, D>(&mut self, core: &mut Core<F, D>, token: &str) {
        if let Rules::V2(_) = self {
            V2::refresh(core, token);
        }
    }

    /// Whether a publication of `site` at `position` (absent in the legacy protocol) that
    /// arrived on `link` is new and wanted; records it.
    pub(crate) fn wanted<F, D>(
        &mut self,
        core: &Core<F, D>,
        link: LinkId,
        site: &str,
        position: Option<(&str, u64)>,
    ) -> bool {
        match self {
            Rules::V2(r) => r.wanted(site, position),
            Rules::Legacy(_) => Legacy::wanted(core, link, site),
        }
    }

    /// `wanted` for a publication with a position, with what undoes its record when it changed
    /// one (legacy records nothing).
    pub(crate) fn accept_undoable<F, D>(
        &mut self,
        core: &Core<F, D>,
        link: LinkId,
        site: &str,
        epoch: &str,
        offset: u64,
    ) -> (bool, Option<Undo>) {
        match self {
            Rules::V2(r) => r.accept_undoable(site, epoch, offset),
            Rules::Legacy(_) => (Legacy::wanted(core, link, site), None),
        }
    }

    /// Undoes an `accept_undoable` of `site` (only v2 gives an undo).
    pub(crate) fn undo(&mut self, site: &str, undo: Undo) {
        if let Rules::V2(r) = self {
            r.undo(site, undo);
        }
    }

    /// A `subscribed` answer (v2 only: the original service sends none): whether the site is
    /// still wanted, and a failed recovery to report.
    pub(crate) fn confirmed(
        &mut self,
        id: Option<u64>,
        site: &str,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
        replayed: u32,
    ) -> (bool, Option<RecoveryFailure>) {
        match self {
            Rules::V2(r) => r.confirmed(id, site, epoch, offset, recovered, replayed),
            Rules::Legacy(_) => (false, None),
        }
    }

    /// The server refused request `id`: the site of the subscribe it was, if it was one (legacy
    /// requests carry no id).
    pub(crate) fn refused(&mut self, id: u64) -> Option<String> {
        match self {
            Rules::V2(r) => r.refused(id),
            Rules::Legacy(_) => None,
        }
    }

    /// Whether a latest publication of `site` in `epoch` is for a wanted site's current stream;
    /// the original service has no latest publications.
    pub(crate) fn latest(&self, site: &str, epoch: &str) -> bool {
        matches!(self, Rules::V2(r) if r.latest(site, epoch))
    }

    /// The client lacks the latest publication of `topic` of `site` (every wanted site when
    /// `None`); nothing to ask for in the legacy protocol.
    pub(crate) fn lacks(&mut self, site: Option<&str>, topic: &str) {
        if let Rules::V2(r) = self {
            r.lacks(site, topic);
        }
    }

    /// Whether the next subscribes ask for deltas (v2's `hello` offers them).
    pub(crate) fn deltas(&mut self, on: bool) {
        if let Rules::V2(r) = self {
            r.deltas(on);
        }
    }

    /// A gap in `site`'s stream: whether a resubscribe is now due (legacy frames are whole: no
    /// gap, and nothing to recover from).
    pub(crate) fn gap(&mut self, site: &str) -> bool {
        match self {
            Rules::V2(r) => r.gap(site),
            Rules::Legacy(_) => false,
        }
    }

    /// The position `site`'s stream would be recovered from.
    #[cfg(all(test, target_arch = "wasm32"))]
    pub(crate) fn position(&self, site: &str) -> Option<datastream_protocol::v2::StreamPosition> {
        match self {
            Rules::V2(r) => r.position(site),
            Rules::Legacy(_) => None,
        }
    }
}
