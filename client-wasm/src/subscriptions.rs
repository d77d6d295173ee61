//! The sites the app wants (protocol v2), what the server has confirmed for each, and the subscribe
//! frames that bring the server in line — after every reconnect, with each site's last position
//! so the gap is replayed.
//!
//! The app's wishes live here, not in the connection, which is why they survive reconnects.

#[allow(unused_imports)]
use crate::prelude::*;

use datastream_protocol::v2::{ClientFrame, LatestWanted, StreamPosition};

use crate::stream::{Stream, Undo};

/// One wanted site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Subscription {
    /// A rewind the app asked for and the server has not yet confirmed.
    rewind: Option<u32>,
    /// Position and deduplication state; `None` until the first `subscribed`.
    stream: Option<Stream>,
    /// The topic filter the server applies on this connection; `None` when the server holds no
    /// subscription (not yet sent, or the connection was lost).
    sent_topics: Option<Vec<String>>,
    /// Id of the latest subscribe not yet answered.
    pending: Option<u64>,
    /// The position sent with the latest subscribe's `recover`, to tell why a recovery failed.
    recover_sent: Option<StreamPosition>,
    /// Topics whose latest publication a listener wants and the client does not hold: asked for
    /// by name (whatever the position recovered from) until a subscribe asking is confirmed.
    lacking: Vec<String>,
    /// A publication could not be read (see [`Subscriptions::gap`]): nothing is accepted until
    /// the subscribe sent since is confirmed, so the position stays at the last delivered.
    broken: bool,
}

/// The delta encoding the client applies.
pub(crate) const FOSSIL: &str = "fossil";

/// Why a site's missed publications could not be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryFailure {
    /// The site; the app should refetch its current state.
    pub site: String,
    /// `"epoch_changed"` (the server's history restarted, e.g. the relay restarted) or
    /// `"history_trimmed"` (the gap is older than the history the server keeps).
    pub reason: &'static str,
}

/// Every site the app wants, sorted by name (a handful: a sorted `Vec` is smaller in the
/// WebAssembly bundle than a map, and as fast).
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    /// The wanted sites, and those released in this task and not yet unsubscribed on the wire.
    sites: Vec<(String, Subscription)>,
    /// The sites released in this task: the next [`Subscriptions::take_released`] forgets them
    /// and says which to unsubscribe, unless the app wants one again first (a release and a
    /// subscribe in one task change nothing on the wire).
    released: Vec<String>,
    next_id: u64,
    /// Subscribes ask for deltas ([`FOSSIL`]).
    pub(crate) deltas: bool,
}

impl Subscriptions {
    /// A wanted site.
    fn get(&self, site: &str) -> Option<&Subscription> {
        let i = self.sites.binary_search_by(|(s, _)| s.as_str().cmp(site)).ok()?;
        (!self.released.iter().any(|r| r == site)).then(|| &self.sites[i].1)
    }

    fn get_mut(&mut self, site: &str) -> Option<&mut Subscription> {
        let i = self.sites.binary_search_by(|(s, _)| s.as_str().cmp(site)).ok()?;
        (!self.released.iter().any(|r| r == site)).then(|| &mut self.sites[i].1)
    }

    /// Wants `site`; with `rewind`, asks for up to that many of its latest publications first
    /// (the larger of two rewinds asked for before the server answered). A site released in
    /// this task is simply wanted again, its subscription and position unchanged.
    pub fn add(&mut self, site: &str, rewind: Option<u32>) {
        self.released.retain(|r| r != site);
        let i = match self.sites.binary_search_by(|(s, _)| s.as_str().cmp(site)) {
            Ok(i) => i,
            Err(i) => {
                self.sites.insert(i, (site.to_owned(), Subscription::default()));
                i
            }
        };
        let sub = &mut self.sites[i].1;
        if rewind.is_some() {
            sub.rewind = sub.rewind.max(rewind);
            sub.sent_topics = None;
        }
    }

    /// Stops wanting `site`; returns whether it was wanted. What the server holds for it is
    /// unsubscribed by the next [`Subscriptions::take_released`].
    pub fn remove(&mut self, site: &str) -> bool {
        let wanted = self.contains(site);
        if wanted {
            self.released.push(site.to_owned());
        }
        wanted
    }

    /// Forgets the released sites; returns those the server holds a subscription of (or was
    /// asked for one): they are to be unsubscribed.
    pub fn take_released(&mut self) -> Vec<String> {
        let released = core::mem::take(&mut self.released);
        let mut held = Vec::new();
        self.sites.retain(|(site, s)| {
            let gone = released.contains(site);
            if gone && (s.sent_topics.is_some() || s.pending.is_some()) {
                held.push(site.clone());
            }
            !gone
        });
        held
    }

    /// Whether `site` is wanted.
    pub fn contains(&self, site: &str) -> bool {
        self.get(site).is_some()
    }

    /// Whether any site is wanted.
    pub fn is_empty(&self) -> bool {
        self.sites.len() == self.released.len()
    }

    /// The wanted sites, sorted.
    pub fn sites(&self) -> impl Iterator<Item = &str> {
        self.sites.iter().map(|(s, _)| s.as_str()).filter(|s| !self.released.iter().any(|r| r == s))
    }

    /// Whether the server's subscription for `site` differs from `topics` (or is missing).
    pub fn needs_subscribe(&self, site: &str, topics: &[String]) -> bool {
        self.get(site).is_some_and(|s| s.sent_topics.as_deref() != Some(topics))
    }

    /// The subscribe frame for `site` with filter `topics`, recovering from the last position
    /// when there is one (a rewind the app asked for wins: it is a deliberate replay); records it
    /// as sent. With `latest` (a listener wants latest publications) it asks for them: by name
    /// for the topics the client lacks when it recovers (the position says nothing of those),
    /// else those the client has not seen (with `recover`: published after the position, i.e.
    /// missed in a gap the server could not replay; without: every topic's).
    pub fn subscribe_frame(&mut self, site: &str, topics: Vec<String>, latest: bool) -> Option<ClientFrame> {
        let i = self.sites.binary_search_by(|(s, _)| s.as_str().cmp(site)).ok()?;
        self.next_id += 1;
        let id = self.next_id;
        let sub = &mut self.sites[i].1;
        let recover = match (sub.rewind, &sub.stream) {
            (None, Some(stream)) => Some(stream.position()),
            _ => None,
        };
        let latest = match latest {
            false => LatestWanted::No,
            true if recover.is_some() && !sub.lacking.is_empty() => LatestWanted::Topics(sub.lacking.clone()),
            true => LatestWanted::Unseen,
        };
        sub.sent_topics = Some(topics.clone());
        sub.pending = Some(id);
        sub.recover_sent.clone_from(&recover);
        Some(ClientFrame::Subscribe {
            id: Some(id),
            site: site.to_owned(),
            topics,
            rewind: if recover.is_none() { sub.rewind } else { None },
            recover,
            latest,
            delta: self.deltas.then(|| FOSSIL.to_owned()),
        })
    }

    /// A publication of `site` could not be read in full: a gap. Until a new subscribe is
    /// confirmed nothing of the site is accepted, so it recovers from the last position
    /// delivered. Returns whether that subscribe is to be sent (not when one is already due).
    pub fn gap(&mut self, site: &str) -> bool {
        let Some(sub) = self.get_mut(site) else { return false };
        if sub.broken {
            return false;
        }
        sub.broken = true;
        sub.sent_topics = None;
        true
    }

    /// Makes the next [`Subscriptions::needs_subscribe`] of `site` (every wanted site when
    /// `None`) true, though its filter did not change: a listener wants the latest publication of
    /// `topic` (`*`: of every topic), which the client does not hold.
    pub fn resend(&mut self, site: Option<&str>, topic: &str) {
        for (name, sub) in &mut self.sites {
            if site.is_none_or(|s| s == name) {
                sub.sent_topics = None;
                if topic != "*" && !sub.lacking.iter().any(|t| t == topic) {
                    sub.lacking.push(topic.to_owned());
                }
            }
        }
    }

    /// Whether a latest publication of `site` in `epoch` (a `pub` frame marked `latest`, sent
    /// after `subscribed`) is for a wanted site's current stream. It is older than the stream's
    /// position and not part of it: nothing is recorded, so the position a resubscribe recovers
    /// from, and the count of a replay still arriving, stay as they are.
    pub fn accept_latest(&self, site: &str, epoch: &str) -> bool {
        self.get(site).and_then(|sub| sub.stream.as_ref()).is_some_and(|stream| stream.epoch() == epoch)
    }

    /// Records a `subscribed` frame. Returns the failure to report when the server could not
    /// recover the gap.
    pub fn confirmed(
        &mut self,
        id: Option<u64>,
        site: &str,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
        replayed: u32,
    ) -> Option<RecoveryFailure> {
        // A site unsubscribed meanwhile: its publications are dropped anyway.
        let sub = self.get_mut(site)?;
        sub.stream = Some(Stream::confirmed(sub.stream.take(), epoch, offset, replayed));
        if id.is_some() && sub.pending == id {
            sub.broken = false;
            sub.pending = None;
            sub.rewind = None;
            sub.lacking.clear();
        }
        if recovered == Some(false) {
            let reason = match &sub.recover_sent {
                Some(p) if p.epoch != epoch => "epoch_changed",
                _ => "history_trimmed",
            };
            return Some(RecoveryFailure { site: site.to_owned(), reason });
        }
        None
    }

    /// The server refused request `id`; if it was a pending subscribe, the site it was for (its
    /// subscription is not in place and no longer awaited).
    pub fn refused(&mut self, id: u64) -> Option<&str> {
        let (site, sub) = self.sites.iter_mut().find(|(_, s)| s.pending == Some(id))?;
        sub.pending = None;
        sub.sent_topics = None;
        Some(site.as_str())
    }

    /// Whether the publication at (`epoch`, `offset`) on `site` is new and wanted; records it.
    pub fn accept(&mut self, site: &str, epoch: &str, offset: u64) -> bool {
        let Some(sub) = self.get_mut(site).filter(|s| !s.broken) else { return false };
        match &mut sub.stream {
            Some(stream) => stream.accept(epoch, offset),
            None => {
                // The server confirms before publishing, so this is only defensive: start
                // counting here rather than drop the site.
                sub.stream = Some(Stream::confirmed(None, epoch, offset, 0));
                true
            }
        }
    }

    /// [`Subscriptions::accept`], with what undoes it ([`Subscriptions::undo`]) when it recorded
    /// something (`None`: the site is not wanted).
    pub fn accept_undoable(&mut self, site: &str, epoch: &str, offset: u64) -> (bool, Option<Undo>) {
        let Some(sub) = self.get_mut(site).filter(|s| !s.broken) else { return (false, None) };
        match &mut sub.stream {
            Some(stream) => {
                let (fresh, undo) = stream.accept_undoable(epoch, offset);
                (fresh, Some(undo))
            }
            None => (self.accept(site, epoch, offset), Some(Undo::Start)),
        }
    }

    /// Undoes an [`Subscriptions::accept_undoable`] of `site` (the latest first).
    pub fn undo(&mut self, site: &str, undo: Undo) {
        let Some(sub) = self.get_mut(site) else { return };
        match (undo, &mut sub.stream) {
            (Undo::Start, stream) => *stream = None,
            (undo, Some(stream)) => stream.undo(undo),
            (_, None) => {}
        }
    }

    /// The connection was lost: the server holds nothing any more; positions are kept.
    pub fn disconnected(&mut self) {
        for (_, sub) in &mut self.sites {
            sub.sent_topics = None;
            sub.pending = None;
        }
    }

    /// Whether every wanted site has been answered.
    pub fn settled(&self) -> bool {
        self.sites.iter().all(|(site, s)| s.pending.is_none() || self.released.contains(site))
    }

    /// The position of `site`'s stream, if known.
    pub fn position(&self, site: &str) -> Option<StreamPosition> {
        self.get(site)?.stream.as_ref().map(Stream::position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(subs: &mut Subscriptions, site: &str, topics: &[&str]) -> ClientFrame {
        subs.subscribe_frame(site, topics.iter().map(|t| t.to_string()).collect(), false).unwrap()
    }

    #[test]
    fn first_subscribe_rewinds_then_recovers_after_reconnect() {
        let mut subs = Subscriptions::default();
        subs.add("mrc", Some(20));
        subs.add("mrc", None);
        let f = frame(&mut subs, "mrc", &["weather"]);
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                id: Some(1),
                site: "mrc".into(),
                topics: vec!["weather".into()],
                recover: None,
                rewind: Some(20),
                latest: LatestWanted::No,
                delta: None,
            }
        );
        assert!(!subs.settled());
        assert_eq!(subs.confirmed(Some(1), "mrc", "e", 7, None, 0), None);
        assert!(subs.settled());
        assert!(subs.accept("mrc", "e", 8));
        subs.disconnected();
        assert!(subs.needs_subscribe("mrc", &["weather".into()]));
        let f = frame(&mut subs, "mrc", &["weather"]);
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                id: Some(2),
                site: "mrc".into(),
                topics: vec!["weather".into()],
                recover: Some(StreamPosition { epoch: "e".into(), offset: 8 }),
                rewind: None,
                latest: LatestWanted::No,
                delta: None,
            },
            "the rewind was done once; now the position is what matters"
        );
    }

    #[test]
    fn failed_recovery_is_reported_with_its_cause() {
        let mut subs = Subscriptions::default();
        subs.add("mrc", None);
        frame(&mut subs, "mrc", &[]);
        subs.confirmed(Some(1), "mrc", "e1", 3, None, 0);
        subs.disconnected();
        frame(&mut subs, "mrc", &[]);
        assert_eq!(
            subs.confirmed(Some(2), "mrc", "e2", 0, Some(false), 0),
            Some(RecoveryFailure { site: "mrc".into(), reason: "epoch_changed" })
        );
        assert_eq!(subs.position("mrc"), Some(StreamPosition { epoch: "e2".into(), offset: 0 }));
        assert!(subs.accept("mrc", "e2", 1), "the new epoch's first publication");
        subs.disconnected();
        frame(&mut subs, "mrc", &[]);
        assert_eq!(
            subs.confirmed(Some(3), "mrc", "e2", 900, Some(false), 0),
            Some(RecoveryFailure { site: "mrc".into(), reason: "history_trimmed" })
        );
        assert!(!subs.accept("mrc", "e2", 900) && subs.accept("mrc", "e2", 901));
    }

    #[test]
    fn filter_changes_and_refusals() {
        let mut subs = Subscriptions::default();
        subs.add("mrc", None);
        let topics = vec!["a".to_string()];
        assert!(subs.needs_subscribe("mrc", &topics));
        subs.subscribe_frame("mrc", topics.clone(), false);
        assert!(!subs.needs_subscribe("mrc", &topics));
        assert!(subs.needs_subscribe("mrc", &["a".into(), "b".into()]));
        assert!(!subs.needs_subscribe("saf", &topics), "not wanted: nothing to send");
        assert_eq!(subs.refused(1), Some("mrc"));
        assert!(subs.settled(), "a refused subscribe is not awaited");
        assert!(subs.needs_subscribe("mrc", &topics));
        assert_eq!(subs.refused(1), None);
    }

    #[test]
    fn unwanted_sites_are_dropped() {
        let mut subs = Subscriptions::default();
        subs.add("mrc", None);
        frame(&mut subs, "mrc", &[]);
        assert!(subs.remove("mrc"));
        assert!(!subs.remove("mrc"));
        assert_eq!(subs.confirmed(Some(1), "mrc", "e", 1, None, 0), None);
        assert!(!subs.accept("mrc", "e", 2));
        assert_eq!(subs.sites().count(), 0);
        assert!(subs.settled());
        assert_eq!(subs.take_released(), vec!["mrc".to_string()], "the server was asked for it");
        assert_eq!(subs.take_released(), Vec::<String>::new());
        subs.add("saf", None);
        subs.remove("saf");
        assert_eq!(subs.take_released(), Vec::<String>::new(), "never sent: nothing to unsubscribe");
    }

    #[test]
    fn released_and_wanted_again_in_one_task_keeps_the_subscription() {
        let mut subs = Subscriptions::default();
        subs.add("mrc", None);
        frame(&mut subs, "mrc", &["a"]);
        subs.confirmed(Some(1), "mrc", "e", 4, None, 0);
        assert!(subs.accept("mrc", "e", 5));
        assert!(subs.remove("mrc"));
        assert!(!subs.contains("mrc") && !subs.accept("mrc", "e", 6), "released: nothing more delivered");
        subs.add("mrc", None);
        assert!(!subs.needs_subscribe("mrc", &["a".into()]), "the server's subscription is still the one wanted");
        assert_eq!(subs.take_released(), Vec::<String>::new());
        assert!(subs.accept("mrc", "e", 6) && !subs.accept("mrc", "e", 5), "the position is kept");
        subs.add("mrc", Some(3));
        subs.add("mrc", Some(2));
        let ClientFrame::Subscribe { rewind, .. } = frame(&mut subs, "mrc", &["a"]) else { unreachable!() };
        assert_eq!(rewind, Some(3), "the larger rewind");
    }

    #[test]
    fn a_new_rewind_on_a_known_site_is_sent_as_rewind() {
        let mut subs = Subscriptions::default();
        subs.add("saf", None);
        frame(&mut subs, "saf", &[]);
        subs.confirmed(Some(1), "saf", "e", 10, None, 0);
        subs.add("saf", Some(5));
        let ClientFrame::Subscribe { rewind, recover, .. } = frame(&mut subs, "saf", &[]) else { unreachable!() };
        assert_eq!((rewind, recover), (Some(5), None));
        // The rewind replays 6..=10, all already delivered.
        subs.confirmed(Some(2), "saf", "e", 10, None, 5);
        assert!((6..=10).all(|o| !subs.accept("saf", "e", o)));
        assert!(subs.accept("saf", "e", 11));
    }

    #[test]
    fn latest_publications_leave_the_position_alone() {
        let mut subs = Subscriptions::default();
        subs.add("mrc", None);
        assert!(!subs.accept_latest("mrc", "e"), "nothing confirmed yet");
        let f = subs.subscribe_frame("mrc", vec![], true).unwrap();
        let ClientFrame::Subscribe { latest, recover, .. } = f else { unreachable!() };
        assert_eq!((latest, recover), (LatestWanted::Unseen, None), "the first subscribe: every topic's");
        // 520 publications so far; 2 latest ones follow (offsets 3 and 17), then live ones.
        subs.confirmed(Some(1), "mrc", "e", 520, None, 0);
        assert!(subs.accept_latest("mrc", "e") && subs.accept_latest("mrc", "e"));
        assert_eq!(subs.position("mrc"), Some(StreamPosition { epoch: "e".into(), offset: 520 }), "not moved back");
        assert!(!subs.accept_latest("mrc", "other"), "not of the current stream");
        assert!(!subs.accept_latest("saf", "e"), "not wanted");
        assert!(subs.accept("mrc", "e", 521));

        // With a replay: latest publications come first and are not counted in it.
        subs.disconnected();
        let ClientFrame::Subscribe { recover, latest, .. } = subs.subscribe_frame("mrc", vec![], true).unwrap() else {
            unreachable!()
        };
        assert_eq!((recover.map(|p| p.offset), latest), (Some(521), LatestWanted::Unseen), "what was missed");
        subs.confirmed(Some(2), "mrc", "e", 523, Some(true), 2);
        assert!(subs.accept_latest("mrc", "e"), "a latest one of a topic not in the replay");
        assert_eq!(subs.position("mrc").unwrap().offset, 521, "until the replay is through");
        assert!(subs.accept("mrc", "e", 522) && subs.accept("mrc", "e", 523));
        assert_eq!(subs.position("mrc").unwrap().offset, 523, "both replayed ones counted, not the latest one");
        assert!(!subs.accept("mrc", "e", 523) && subs.accept("mrc", "e", 524));
        assert!(subs.remove("mrc"));
        assert!(!subs.accept_latest("mrc", "e"), "unsubscribed");
    }

    #[test]
    fn resend_asks_for_the_lacking_topics_by_name() {
        let latest_of = |subs: &mut Subscriptions, site: &str, topics: &[String]| {
            let ClientFrame::Subscribe { latest, .. } = subs.subscribe_frame(site, topics.to_vec(), true).unwrap()
            else {
                unreachable!()
            };
            latest
        };
        let mut subs = Subscriptions::default();
        subs.add("mrc", None);
        subs.add("saf", None);
        let topics = vec!["a".to_string(), "b".to_string()];
        // Before the first confirmation there is no position: every topic's latest is asked for.
        subs.resend(Some("mrc"), "a");
        assert_eq!(latest_of(&mut subs, "mrc", &topics), LatestWanted::Unseen);
        subs.confirmed(Some(1), "mrc", "e", 10, None, 0);
        subs.subscribe_frame("saf", topics.clone(), false);
        subs.confirmed(Some(2), "saf", "f", 3, None, 0);
        assert!(!subs.needs_subscribe("mrc", &topics) && !subs.needs_subscribe("saf", &topics));

        // Same filter, a topic lacking: asked for again, by name (the position covers it).
        subs.resend(Some("mrc"), "b");
        assert!(subs.needs_subscribe("mrc", &topics) && !subs.needs_subscribe("saf", &topics));
        subs.resend(None, "a");
        subs.resend(None, "b");
        assert!(subs.needs_subscribe("saf", &topics));
        assert_eq!(latest_of(&mut subs, "mrc", &topics), LatestWanted::Topics(vec!["b".into(), "a".into()]));
        assert_eq!(latest_of(&mut subs, "saf", &topics), LatestWanted::Topics(vec!["a".into(), "b".into()]));
        // Asked until confirmed (a lost connection asks again), then no more.
        subs.disconnected();
        assert_eq!(latest_of(&mut subs, "mrc", &topics), LatestWanted::Topics(vec!["b".into(), "a".into()]));
        subs.confirmed(Some(5), "mrc", "e", 12, Some(true), 0);
        assert_eq!(latest_of(&mut subs, "mrc", &topics), LatestWanted::Unseen);
        // `*`: nothing to name; what the client has not seen.
        subs.confirmed(Some(6), "mrc", "e", 12, None, 0);
        subs.resend(Some("mrc"), "*");
        assert!(subs.needs_subscribe("mrc", &topics));
        assert_eq!(latest_of(&mut subs, "mrc", &topics), LatestWanted::Unseen);
        subs.resend(Some("sro"), "a");
        assert!(!subs.needs_subscribe("sro", &topics), "not wanted");
    }
}
