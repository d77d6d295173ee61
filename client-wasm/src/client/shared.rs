//! [`Core`]: what the client and both protocols' rules work on.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::callbacks::{Callbacks, HookKind};
use crate::config::Config;
use crate::link::{Link, LinkId};

use super::{Action, Event};

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

    /// Tells the hooks of `kind` about `event`, if there are any.
    pub(crate) fn notify(&mut self, kind: HookKind, event: Event<D>)
    where
        F: Clone + PartialEq,
    {
        let callbacks = self.callbacks.hooks(kind);
        if !callbacks.is_empty() {
            self.out.push(Action::Notify { callbacks, event });
        }
    }
}
