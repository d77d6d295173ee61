//! The original service's rules: one link per site (`?site=` in its URL, and the token as
//! `?token=`), accepted as soon as its socket opens, no positions, no server-side
//! subscriptions. An unsubscribed site's link is kept a moment as a spare, so that a subscribe in
//! the same task moves it to the new site with `updatesubscribersite` instead of a new
//! handshake — the original service's way to switch sites.

use super::Action;
use super::rules::{Core, Rules};
use crate::link::{Link, LinkId, TimerKind};
use crate::stream::Undo;
use crate::subscriptions::RecoveryFailure;
use crate::wire::encode_legacy_update;

/// The legacy client keeps everything in its links.
#[derive(Debug, Default)]
pub(crate) struct Legacy;

impl<F: Clone + PartialEq, D> Rules<F, D> for Legacy {
    fn start(&mut self, core: &mut Core<F, D>, sites: Vec<String>) -> Vec<LinkId> {
        sites.into_iter().map(|site| core.new_link(Some(site))).collect()
    }

    fn subscribe(&mut self, core: &mut Core<F, D>, site: &str, _rewind: Option<u32>) -> Option<LinkId> {
        if core.links.iter().any(|l| !l.spare && l.site.as_deref() == Some(site)) {
            return None;
        }
        // Reuse a socket just released by an unsubscribe.
        if let Some(l) = core.links.iter_mut().find(|l| l.spare) {
            l.spare = false;
            l.site = Some(site.to_owned());
            let link = l.id;
            let live = l.is_live();
            if live {
                l.opened_site = Some(site.to_owned());
            }
            core.out.push(Action::ClearTimer { link, kind: TimerKind::Release });
            if live {
                core.out.push(Action::Send { link, text: encode_legacy_update(site) });
            }
            return None;
        }
        Some(core.new_link(Some(site.to_owned())))
    }

    fn unsubscribe(&mut self, core: &mut Core<F, D>, site: &str) {
        if let Some(l) = core.links.iter_mut().find(|l| !l.spare && l.site.as_deref() == Some(site)) {
            l.spare = true;
            let link = l.id;
            core.out.push(Action::SetTimer { link, kind: TimerKind::Release, ms: 0 });
        }
    }

    fn release(&mut self, core: &Core<F, D>, link: LinkId) -> bool {
        core.links.iter().any(|l| l.id == link && l.spare)
    }

    fn accepted_on_open(&self) -> bool {
        true
    }

    fn opened(&mut self, core: &mut Core<F, D>, link: LinkId) {
        // A link moved to another site while its socket was opening asks for the new site now.
        let Some(l) = core.link_mut(link) else { return };
        let update = (l.opened_site != l.site).then(|| l.site.clone()).flatten();
        l.opened_site.clone_from(&l.site);
        if let Some(site) = update {
            core.out.push(Action::Send { link, text: encode_legacy_update(&site) });
        }
    }

    fn sync(&mut self, _core: &mut Core<F, D>) {}

    fn settled(&self, _core: &Core<F, D>) -> bool {
        true
    }

    fn socket(&self, core: &Core<F, D>, link: &Link) -> (String, Option<&'static str>, Option<String>) {
        (core.config.socket_url(link.site.as_deref()), None, None)
    }

    fn disconnected(&mut self) {}

    fn can_probe(&self) -> bool {
        // No client ping in this protocol: the browser's own close detection has to do.
        false
    }

    fn refresh(&mut self, _core: &mut Core<F, D>, _token: &str) {}

    fn wanted(&mut self, core: &Core<F, D>, link: LinkId, site: &str, _position: Option<(&str, u64)>) -> bool {
        // A socket moved to another site may still deliver a few of the old site's frames.
        core.links.iter().any(|l| l.id == link && !l.spare && l.site.as_deref() == Some(site))
    }

    fn accept_undoable(
        &mut self,
        core: &Core<F, D>,
        link: LinkId,
        site: &str,
        epoch: &str,
        offset: u64,
    ) -> (bool, Option<Option<Undo>>) {
        (Rules::<F, D>::wanted(self, core, link, site, Some((epoch, offset))), None)
    }

    fn undo(&mut self, _site: &str, _undo: Option<Undo>) {}

    fn confirmed(
        &mut self,
        _id: Option<u64>,
        _site: &str,
        _epoch: &str,
        _offset: u64,
        _recovered: Option<bool>,
        _replayed: u32,
    ) -> (bool, Option<RecoveryFailure>) {
        (false, None)
    }

    fn refused(&mut self, _id: u64) -> Option<String> {
        None
    }

    #[cfg(all(test, target_arch = "wasm32"))]
    fn position(&self, _site: &str) -> Option<datastream_protocol::v2::StreamPosition> {
        None
    }
}
