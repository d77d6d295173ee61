//! Protocol v2's rules: every site over one link, the wanted sites kept across reconnects
//! ([`Subscriptions`]) and brought in line with subscribe frames once the server's `hello` accepts
//! a connection, publications judged by stream position, tokens refreshed in-band.

use datastream_protocol::v2::{ClientFrame, SUBPROTOCOL};

use super::Action;
use super::rules::{Core, Rules};
use crate::link::{Link, LinkId};
use crate::stream::Undo;
use crate::subscriptions::{RecoveryFailure, Subscriptions};
use crate::wire::encode;

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
}

impl<F: Clone + PartialEq, D> Rules<F, D> for V2 {
    fn start(&mut self, core: &mut Core<F, D>, sites: Vec<String>) -> Vec<LinkId> {
        for site in &sites {
            self.subs.add(site, None);
        }
        vec![core.new_link(None)]
    }

    fn subscribe(&mut self, core: &mut Core<F, D>, site: &str, rewind: Option<u32>) -> Option<LinkId> {
        if self.subs.add(site, rewind) {
            self.sync(core);
        }
        None
    }

    fn unsubscribe(&mut self, core: &mut Core<F, D>, site: &str) {
        if self.subs.remove(site)
            && let Some(link) = Self::live_link(core)
        {
            let frame = ClientFrame::Unsubscribe { id: None, site: site.to_owned() };
            core.out.push(Action::Send { link, text: encode(&frame) });
        }
    }

    fn accepted_on_open(&self) -> bool {
        // The server's hello, not the socket, says the connection is accepted.
        false
    }

    fn opened(&mut self, _core: &mut Core<F, D>, _link: LinkId) {}

    fn sync(&mut self, core: &mut Core<F, D>) {
        let Some(link) = Self::live_link(core) else { return };
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

    fn settled(&self, core: &Core<F, D>) -> bool {
        !core.links.is_empty() && self.subs.settled()
    }

    fn socket(&self, core: &Core<F, D>, _link: &Link) -> (String, Option<&'static str>, Option<String>) {
        (core.config.socket_url(None), Some(SUBPROTOCOL), core.config.token.clone())
    }

    fn disconnected(&mut self) {
        self.subs.disconnected();
    }

    fn can_probe(&self) -> bool {
        true
    }

    fn refresh(&mut self, core: &mut Core<F, D>, token: &str) {
        if let Some(link) = Self::live_link(core) {
            let frame = ClientFrame::Refresh { id: None, token: token.to_owned() };
            core.out.push(Action::Send { link, text: encode(&frame) });
        }
    }

    fn wanted(&mut self, _core: &Core<F, D>, _link: LinkId, site: &str, position: Option<(&str, u64)>) -> bool {
        match position {
            Some((epoch, offset)) => self.subs.accept(site, epoch, offset),
            None => self.subs.contains(site),
        }
    }

    fn accept_undoable(
        &mut self,
        _core: &Core<F, D>,
        _link: LinkId,
        site: &str,
        epoch: &str,
        offset: u64,
    ) -> (bool, Option<Option<Undo>>) {
        self.subs.accept_undoable(site, epoch, offset)
    }

    fn undo(&mut self, site: &str, undo: Option<Undo>) {
        self.subs.undo(site, undo);
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
        let failure = self.subs.confirmed(id, site, epoch, offset, recovered, replayed);
        (self.subs.contains(site), failure)
    }

    fn refused(&mut self, id: u64) -> Option<String> {
        self.subs.refused(id).map(str::to_owned)
    }

    #[cfg(all(test, target_arch = "wasm32"))]
    fn position(&self, site: &str) -> Option<datastream_protocol::v2::StreamPosition> {
        self.subs.position(site)
    }
}
