//! The original service's rules: one link per site (`?site=` in its URL, and the token as
//! `?token=`), accepted as soon as its socket opens, no positions, no server-side
//! subscriptions. An unsubscribed site's link is kept a moment as a spare, so that a subscribe in
//! the same task moves it to the new site with `updatesubscribersite` instead of a new
//! handshake — the original service's way to switch sites.

#[allow(unused_imports)]
use crate::prelude::*;

use super::shared::Core;
use super::{Action, Event};
use crate::callbacks::HookKind;
use crate::link::{Link, LinkId, TimerKind};
use crate::wire::encode_legacy_update;

/// The legacy client keeps everything in its links.
#[derive(Debug, Default)]
pub(crate) struct Legacy;

impl Legacy {
    /// One link per configured site.
    pub(crate) fn start<F, D>(core: &mut Core<F, D>, sites: Vec<String>) -> Vec<LinkId> {
        sites.into_iter().map(|site| core.new_link(Some(site))).collect()
    }

    /// Wants `site`: a spare link moves to it, else a new link is returned to open.
    pub(crate) fn subscribe<F: Clone + PartialEq, D>(core: &mut Core<F, D>, site: &str) -> Option<LinkId> {
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
                // The original service answers nothing: the site counts as subscribed now.
                core.out.push(Action::Send { link, text: encode_legacy_update(site) });
                Self::subscribed(core, Some(site));
            }
            return None;
        }
        Some(core.new_link(Some(site.to_owned())))
    }

    /// Stops wanting `site`: its link becomes a spare, released at the end of the task unless a
    /// subscribe takes it.
    pub(crate) fn unsubscribe<F, D>(core: &mut Core<F, D>, site: &str) {
        if let Some(l) = core.links.iter_mut().find(|l| !l.spare && l.site.as_deref() == Some(site)) {
            l.spare = true;
            let link = l.id;
            core.out.push(Action::SetTimer { link, kind: TimerKind::Release, ms: 0 });
        }
    }

    /// Tells the `subscribed` hooks that `site` (every site with a link, when `None`) is
    /// subscribed: the original service sends no confirmation, so an open socket is one.
    pub(crate) fn subscribed<F: Clone + PartialEq, D>(core: &mut Core<F, D>, site: Option<&str>) {
        for i in 0..core.links.len() {
            let l = &core.links[i];
            if l.spare || site.is_some_and(|site| l.site.as_deref() != Some(site)) {
                continue;
            }
            if let Some(site) = l.site.clone() {
                core.notify(
                    HookKind::Subscribed,
                    Event::Subscribed { site, position: None, replayed: 0, recovered: None },
                );
            }
        }
    }

    /// Whether `link` is a spare no subscribe took.
    pub(crate) fn release<F, D>(core: &Core<F, D>, link: LinkId) -> bool {
        core.links.iter().any(|l| l.id == link && l.spare)
    }

    /// `link`'s socket opened: a link moved to another site while its socket was opening asks
    /// for the new site now.
    pub(crate) fn opened<F, D>(core: &mut Core<F, D>, link: LinkId) {
        let Some(l) = core.link_mut(link) else { return };
        let update = (l.opened_site != l.site).then(|| l.site.clone()).flatten();
        l.opened_site.clone_from(&l.site);
        if let Some(site) = update {
            core.out.push(Action::Send { link, text: encode_legacy_update(&site) });
        }
    }

    /// The socket: `?site=` (and `&token=`) on the configured URL, no subprotocol.
    pub(crate) fn socket<F, D>(core: &Core<F, D>, link: &Link) -> (String, Option<&'static str>, Option<String>) {
        (core.config.socket_url(link.site.as_deref()), None, None)
    }

    /// Whether a publication of `site` that arrived on `link` is wanted: a socket moved to
    /// another site may still deliver a few of the old site's frames.
    pub(crate) fn wanted<F, D>(core: &Core<F, D>, link: LinkId, site: &str) -> bool {
        core.links.iter().any(|l| l.id == link && !l.spare && l.site.as_deref() == Some(site))
    }
}
