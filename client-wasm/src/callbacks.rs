//! The registry of the app's callbacks: publication listeners (by topic, optionally by site) and
//! event hooks (state, errors, failed recoveries, readiness).
//!
//! Generic over the callback type so the logic is tested natively with plain values; in the
//! browser a callback is a `js_sys::Function`. The registry also derives the topic filter sent to
//! the server: a site's publications on topics nobody listens to are not transferred at all; and
//! whether the server is asked for each topic's latest publication (some listener wants it).

#[allow(unused_imports)]
use crate::prelude::*;

/// Handle returned when a callback is registered; removes it again.
pub type ListenerId = u32;

/// The topic a listener wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicSelector {
    /// `*`: every topic.
    Any,
    /// One topic.
    Named(String),
}

impl TopicSelector {
    /// `*` means every topic; anything else is a topic name.
    pub fn parse(topic: &str) -> TopicSelector {
        if topic == "*" { TopicSelector::Any } else { TopicSelector::Named(topic.to_owned()) }
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            TopicSelector::Any => true,
            TopicSelector::Named(t) => t == topic,
        }
    }
}

/// Which topics of a site the listeners need, i.e. the filter to subscribe with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicFilter {
    /// Every topic (some listener uses `*`, or there is no listener yet).
    All,
    /// Only these, sorted.
    Only(Vec<String>),
}

impl TopicFilter {
    /// The `topics` field of a subscribe frame: empty means every topic.
    pub fn into_topics(self) -> Vec<String> {
        match self {
            TopicFilter::All => Vec::new(),
            TopicFilter::Only(t) => t,
        }
    }
}

#[derive(Debug, Clone)]
struct Listener<F> {
    id: ListenerId,
    topic: TopicSelector,
    /// `None`: every site.
    site: Option<String>,
    callback: F,
    /// It wants each topic's latest publication first (`on(…, { latest: true })`).
    latest: bool,
}

/// The kinds of client events an app can listen to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// The connection state changed.
    State,
    /// Something went wrong that the app should know about (a callback threw, the server refused
    /// a request, a frame could not be read).
    Error,
    /// A site's missed publications could not be recovered; the app should refetch its state.
    RecoveryFailed,
    /// The client is connected and every subscription is confirmed.
    Ready,
    /// The server confirmed a site's subscription (after every (re)connect).
    Subscribed,
    /// A connection attempt waits for the app's token (with [`crate::config::Config::fetch_tokens`]):
    /// before each attempt, and at once when the server ended the connection over its token
    /// (expired, or refused); see [`crate::client::Client::set_token`].
    Token,
}

/// Every callback the app registered.
#[derive(Debug, Clone)]
pub struct Callbacks<F> {
    listeners: Vec<Listener<F>>,
    hooks: Vec<(ListenerId, HookKind, F)>,
    next_id: ListenerId,
    /// Changes whenever the listeners do.
    version: u32,
}

impl<F> Default for Callbacks<F> {
    fn default() -> Self {
        Callbacks { listeners: Vec::new(), hooks: Vec::new(), next_id: 1, version: 0 }
    }
}

impl<F: Clone + PartialEq> Callbacks<F> {
    fn next_id(&mut self) -> ListenerId {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Adds a publication listener for `topic` (`*`: every topic) on `site` (`None`: every site);
    /// with `latest`, it wants each topic's latest publication first.
    pub fn add(&mut self, topic: TopicSelector, site: Option<String>, callback: F, latest: bool) -> ListenerId {
        let id = self.next_id();
        self.listeners.push(Listener { id, topic, site, callback, latest });
        self.changed();
        id
    }

    /// Adds an event hook.
    pub fn add_hook(&mut self, kind: HookKind, callback: F) -> ListenerId {
        let id = self.next_id();
        self.hooks.push((id, kind, callback));
        id
    }

    /// Removes the listener or hook `id`; false if there was none.
    pub fn remove(&mut self, id: ListenerId) -> bool {
        let (listeners, hooks) = (self.listeners.len(), self.hooks.len());
        self.listeners.retain(|l| l.id != id);
        self.hooks.retain(|h| h.0 != id);
        if listeners != self.listeners.len() {
            self.changed();
        }
        listeners != self.listeners.len() || hooks != self.hooks.len()
    }

    /// A number that changes whenever a listener is added or removed: what [`Callbacks::matching`]
    /// returned stays valid for as long as it does not (31 bits, so it is exact in any number
    /// type).
    pub fn version(&self) -> u32 {
        self.version
    }

    fn changed(&mut self) {
        self.version = self.version.wrapping_add(1) & 0x7fff_ffff;
    }

    /// The callbacks for a publication, in registration order; with `latest_only`, those of
    /// listeners that want latest publications (the ones a relay's latest frame is for).
    pub fn matching(&self, site: &str, topic: &str, latest_only: bool) -> Vec<F> {
        self.listeners
            .iter()
            .filter(|l| {
                (l.latest || !latest_only) && l.topic.matches(topic) && l.site.as_deref().is_none_or(|s| s == site)
            })
            .map(|l| l.callback.clone())
            .collect()
    }

    /// The hooks of one kind, in registration order.
    pub fn hooks(&self, kind: HookKind) -> Vec<F> {
        self.hooks.iter().filter(|h| h.1 == kind).map(|h| h.2.clone()).collect()
    }

    /// The topics `site`'s listeners need, and whether one of them wants latest publications
    /// (its subscribes then ask the server for them). Until a listener concerns the site, every
    /// topic is wanted, so a listener added later has nothing to wait for beyond a filter change.
    pub fn filter_for(&self, site: &str) -> (TopicFilter, bool) {
        let mut topics: Vec<String> = Vec::new();
        let (mut all, mut latest) = (true, false);
        let mut any = false;
        for l in self.listeners.iter().filter(|l| l.site.as_deref().is_none_or(|s| s == site)) {
            latest |= l.latest;
            match &l.topic {
                TopicSelector::Any => any = true,
                TopicSelector::Named(t) => {
                    all = false;
                    // Kept sorted and unique by insertion: no sort routine in the bundle.
                    if let Err(i) = topics.binary_search(t) {
                        topics.insert(i, t.clone());
                    }
                }
            }
        }
        (if all || any { TopicFilter::All } else { TopicFilter::Only(topics) }, latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(t: &str) -> TopicSelector {
        TopicSelector::Named(t.into())
    }

    #[test]
    fn matching_by_topic_wildcard_and_site() {
        let mut c = Callbacks::default();
        c.add(named("weather"), None, 'w', false);
        c.add(TopicSelector::Any, None, '*', false);
        c.add(named("sitestatus"), Some("mrc".into()), 'm', false);
        assert_eq!(c.matching("mrc", "weather", false), vec!['w', '*']);
        assert_eq!(c.matching("saf", "sitestatus", false), vec!['*']);
        assert_eq!(c.matching("mrc", "sitestatus", false), vec!['*', 'm']);
    }

    #[test]
    fn removal_by_id() {
        let mut c = Callbacks::default();
        let a = c.add(named("weather"), None, 'a', false);
        let b = c.add(named("weather"), Some("mrc".into()), 'b', false);
        c.add(named("jobs"), None, 'b', false);
        assert!(c.remove(a));
        assert!(!c.remove(a), "already gone");
        assert!(c.remove(b));
        assert_eq!(c.matching("mrc", "weather", false), Vec::<char>::new());
        assert_eq!(c.matching("mrc", "jobs", false), vec!['b']);
    }

    #[test]
    fn hooks_are_kept_apart_from_listeners() {
        let mut c = Callbacks::default();
        let s = c.add_hook(HookKind::State, 's');
        c.add_hook(HookKind::Error, 'e');
        c.add(TopicSelector::Any, None, 'l', false);
        assert_eq!(c.hooks(HookKind::State), vec!['s']);
        assert_eq!(c.hooks(HookKind::RecoveryFailed), Vec::<char>::new());
        assert!(c.remove(s));
        assert_eq!(c.hooks(HookKind::State), Vec::<char>::new());
        assert_eq!(c.matching("x", "y", false), vec!['l']);
    }

    #[test]
    fn latest_listeners_are_told_apart() {
        let mut c = Callbacks::default();
        assert!(!c.filter_for("mrc").1);
        c.add(named("weather"), None, 'w', false);
        c.add(named("weather"), Some("mrc".into()), 'l', true);
        c.add(TopicSelector::Any, Some("saf".into()), 's', true);
        assert_eq!(c.matching("mrc", "weather", false), vec!['w', 'l'], "live publications reach both");
        assert_eq!(c.matching("mrc", "weather", true), vec!['l'], "latest ones only who asked");
        assert_eq!(c.matching("saf", "weather", true), vec!['s']);
        assert_eq!(c.matching("sro", "weather", true), Vec::<char>::new());
        assert!(c.filter_for("mrc").1 && c.filter_for("saf").1 && !c.filter_for("sro").1);
        let all = c.add(named("jobs"), None, 'a', true);
        assert!(c.filter_for("sro").1, "a listener of every site concerns every site");
        c.remove(all);
        assert!(!c.filter_for("sro").1);
    }

    #[test]
    fn topic_filter_follows_the_listeners() {
        let mut c = Callbacks::default();
        assert_eq!(c.filter_for("mrc").0, TopicFilter::All, "no listener yet");
        c.add(named("weather"), None, 1, false);
        c.add(named("sitestatus"), Some("mrc".into()), 2, false);
        c.add(named("weather"), Some("mrc".into()), 3, false);
        assert_eq!(c.filter_for("mrc").0, TopicFilter::Only(vec!["sitestatus".into(), "weather".into()]));
        assert_eq!(c.filter_for("saf").0, TopicFilter::Only(vec!["weather".into()]));
        let star = c.add(TopicSelector::Any, Some("saf".into()), 4, false);
        assert_eq!(c.filter_for("saf").0, TopicFilter::All);
        assert_eq!(c.filter_for("mrc").0.into_topics(), vec!["sitestatus".to_owned(), "weather".into()]);
        c.remove(star);
        assert_eq!(c.filter_for("saf").0.into_topics(), vec!["weather".to_owned()]);
        assert!(TopicFilter::All.into_topics().is_empty());
    }

    #[test]
    fn version_changes_with_every_listener_change_only() {
        let mut c = Callbacks::default();
        let mut seen = vec![c.version()];
        let mut changed = |c: &Callbacks<char>| {
            let v = c.version();
            let fresh = !seen.contains(&v);
            seen.push(v);
            fresh
        };
        let a = c.add(named("weather"), None, 'a', false);
        assert!(changed(&c), "added");
        c.add(named("weather"), None, 'b', false);
        assert!(changed(&c), "added");
        let h = c.add_hook(HookKind::State, 'h');
        assert!(!changed(&c), "hooks do not concern publications");
        assert!(c.remove(h));
        assert!(!changed(&c), "nor does removing one");
        assert!(!c.remove(999));
        assert!(!changed(&c), "nothing removed");
        c.matching("mrc", "weather", false);
        assert!(!changed(&c), "reading changes nothing");
        assert!(c.remove(a));
        assert!(changed(&c), "removed by id");
        c.version = 0x7fff_ffff;
        c.add(TopicSelector::Any, None, 'c', false);
        assert_eq!(c.version(), 0, "wraps within 31 bits");
    }
}
