//! The interface between the client and its protocol: [`Rules`], what each protocol decides for
//! itself, and [`Core`], what both work on. [`Machine`] picks the protocol once, when the client
//! is created.

use crate::callbacks::Callbacks;
use crate::config::Config;
use crate::link::{Link, LinkId};
use crate::stream::Undo;
use crate::subscriptions::RecoveryFailure;

use super::{Action, legacy, v2};

/// What both protocols' rules work on: the options, the app's callbacks, the links, and the
/// actions decided.
pub(crate) struct Core<F, D> {
    pub(crate) config: Config,
    pub(crate) callbacks: Callbacks<F>,
    pub(crate) links: Vec<Link>,
    pub(crate) next_link: LinkId,
    pub(crate) out: Vec<Action<F, D>>,
}

impl<F, D> Core<F, D> {
    pub(crate) fn link_mut(&mut self, id: LinkId) -> Option<&mut Link> {
        self.links.iter_mut().find(|l| l.id == id)
    }

    /// A new link (for `site` in the legacy protocol), not yet opened.
    pub(crate) fn new_link(&mut self, site: Option<String>) -> LinkId {
        let id = self.next_link;
        self.next_link += 1;
        self.links.push(Link::new(id, site));
        id
    }
}

/// One protocol's rules; the client asks them whatever depends on the protocol.
pub(crate) trait Rules<F, D> {
    /// Takes the configured sites; returns the links to open.
    fn start(&mut self, core: &mut Core<F, D>, sites: Vec<String>) -> Vec<LinkId>;
    /// Wants `site` (with a rewind, where the protocol has history); returns a link to open.
    fn subscribe(&mut self, core: &mut Core<F, D>, site: &str, rewind: Option<u32>) -> Option<LinkId>;
    /// Stops wanting `site`.
    fn unsubscribe(&mut self, core: &mut Core<F, D>, site: &str);
    /// `link`'s release timer fired: whether its socket is no longer needed (and is to be closed
    /// and forgotten).
    fn release(&mut self, core: &Core<F, D>, link: LinkId) -> bool;
    /// Whether an open socket is an accepted connection (else the server's `hello` accepts it).
    fn accepted_on_open(&self) -> bool;
    /// `link`'s socket opened and the connection is accepted with it.
    fn opened(&mut self, core: &mut Core<F, D>, link: LinkId);
    /// The connection was accepted or the listeners changed: brings the server in line.
    fn sync(&mut self, core: &mut Core<F, D>);
    /// Whether every subscription the server was asked for is answered.
    fn settled(&self, core: &Core<F, D>) -> bool;
    /// What `link`'s socket is opened with: URL, subprotocol, token for a subprotocol entry.
    fn socket(&self, core: &Core<F, D>, link: &Link) -> (String, Option<&'static str>, Option<String>);
    /// The connection was lost: nothing the server held for it remains.
    fn disconnected(&mut self);
    /// Whether a live connection can be checked with a client ping.
    fn can_probe(&self) -> bool;
    /// A new token, for a live connection if the protocol can take one without reconnecting.
    fn refresh(&mut self, core: &mut Core<F, D>, token: &str);
    /// Whether a publication of `site` at `position` (absent in the legacy protocol) that
    /// arrived on `link` is new and wanted; records it.
    fn wanted(&mut self, core: &Core<F, D>, link: LinkId, site: &str, position: Option<(&str, u64)>) -> bool;
    /// `wanted` for a v2 publication, with what undoes its record when it changed one.
    fn accept_undoable(
        &mut self,
        core: &Core<F, D>,
        link: LinkId,
        site: &str,
        epoch: &str,
        offset: u64,
    ) -> (bool, Option<Option<Undo>>);
    /// Undoes an `accept_undoable` of `site`.
    fn undo(&mut self, site: &str, undo: Option<Undo>);
    /// A `subscribed` answer: whether the site is still wanted, and a failed recovery to report.
    fn confirmed(
        &mut self,
        id: Option<u64>,
        site: &str,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
        replayed: u32,
    ) -> (bool, Option<RecoveryFailure>);
    /// The server refused request `id`: the site of the subscribe it was, if it was one.
    fn refused(&mut self, id: u64) -> Option<String>;
    /// The position `site`'s stream would be recovered from.
    #[cfg(all(test, target_arch = "wasm32"))]
    fn position(&self, site: &str) -> Option<datastream_protocol::v2::StreamPosition>;
}

/// The protocol a client speaks, with its rules' state. An enum rather than a boxed trait
/// object: each call is forwarded to one of two known types, which the compiler can inline (a
/// boxed trait object made the WebAssembly 0.9 KB larger). What only v2 has (latest
/// publications) the client asks `V2` itself.
#[derive(Debug)]
pub(crate) enum Machine {
    V2(v2::V2),
    Legacy(legacy::Legacy),
}

/// Calls the same method on whichever protocol's rules `$machine` holds.
macro_rules! each {
    ($machine:expr, $rules:ident => $call:expr) => {
        match $machine {
            Machine::V2($rules) => $call,
            Machine::Legacy($rules) => $call,
        }
    };
}

impl<F: Clone + PartialEq, D> Rules<F, D> for Machine {
    fn start(&mut self, core: &mut Core<F, D>, sites: Vec<String>) -> Vec<LinkId> {
        each!(self, r => Rules::<F, D>::start(r, core, sites))
    }

    fn subscribe(&mut self, core: &mut Core<F, D>, site: &str, rewind: Option<u32>) -> Option<LinkId> {
        each!(self, r => Rules::<F, D>::subscribe(r, core, site, rewind))
    }

    fn unsubscribe(&mut self, core: &mut Core<F, D>, site: &str) {
        each!(self, r => Rules::<F, D>::unsubscribe(r, core, site))
    }

    fn release(&mut self, core: &Core<F, D>, link: LinkId) -> bool {
        each!(self, r => Rules::<F, D>::release(r, core, link))
    }

    fn accepted_on_open(&self) -> bool {
        each!(self, r => Rules::<F, D>::accepted_on_open(r))
    }

    fn opened(&mut self, core: &mut Core<F, D>, link: LinkId) {
        each!(self, r => Rules::<F, D>::opened(r, core, link))
    }

    fn sync(&mut self, core: &mut Core<F, D>) {
        each!(self, r => Rules::<F, D>::sync(r, core))
    }

    fn settled(&self, core: &Core<F, D>) -> bool {
        each!(self, r => Rules::<F, D>::settled(r, core))
    }

    fn socket(&self, core: &Core<F, D>, link: &Link) -> (String, Option<&'static str>, Option<String>) {
        each!(self, r => Rules::<F, D>::socket(r, core, link))
    }

    fn disconnected(&mut self) {
        each!(self, r => Rules::<F, D>::disconnected(r))
    }

    fn can_probe(&self) -> bool {
        each!(self, r => Rules::<F, D>::can_probe(r))
    }

    fn refresh(&mut self, core: &mut Core<F, D>, token: &str) {
        each!(self, r => Rules::<F, D>::refresh(r, core, token))
    }

    fn wanted(&mut self, core: &Core<F, D>, link: LinkId, site: &str, position: Option<(&str, u64)>) -> bool {
        each!(self, r => Rules::<F, D>::wanted(r, core, link, site, position))
    }

    fn accept_undoable(
        &mut self,
        core: &Core<F, D>,
        link: LinkId,
        site: &str,
        epoch: &str,
        offset: u64,
    ) -> (bool, Option<Option<Undo>>) {
        each!(self, r => Rules::<F, D>::accept_undoable(r, core, link, site, epoch, offset))
    }

    fn undo(&mut self, site: &str, undo: Option<Undo>) {
        each!(self, r => Rules::<F, D>::undo(r, site, undo))
    }

    fn confirmed(
        &mut self,
        id: Option<u64>,
        site: &str,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
        replayed: u32,
    ) -> (bool, Option<RecoveryFailure>) {
        each!(self, r => Rules::<F, D>::confirmed(r, id, site, epoch, offset, recovered, replayed))
    }

    fn refused(&mut self, id: u64) -> Option<String> {
        each!(self, r => Rules::<F, D>::refused(r, id))
    }

    #[cfg(all(test, target_arch = "wasm32"))]
    fn position(&self, site: &str) -> Option<datastream_protocol::v2::StreamPosition> {
        each!(self, r => Rules::<F, D>::position(r, site))
    }
}
