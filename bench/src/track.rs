//! Exact accounting for one v2 subscriber that reconnects and recovers: what it received, by
//! stream position and by the publisher's sequence number, so that loss, duplicates and order
//! can be told apart after any number of reconnects.

use std::collections::HashMap;

/// One subscriber's view of its site's stream.
#[derive(Debug, Default)]
pub(crate) struct Track {
    /// The last position seen (from a `subscribed` or a `pub`): what a reconnect recovers from.
    pub(crate) last: Option<(String, u64)>,
    /// How many times each sequence number arrived.
    seen: HashMap<u64, u32>,
    /// Offsets skipped within an epoch (publications the stream had that never arrived).
    pub(crate) gaps: u64,
    /// Publications that arrived at or below an offset already seen, with a new sequence number.
    pub(crate) out_of_order: u64,
    /// Publications whose sequence number had already arrived.
    pub(crate) duplicates: u64,
    /// `subscribed` answers with `recovered: false`.
    pub(crate) unrecovered: u64,
    /// Publications in another epoch than the last position's without a `recovered: false` first.
    pub(crate) epoch_changes: u64,
}

impl Track {
    /// The answer to a subscribe: `recovered` is `None` when no recovery was asked for.
    pub(crate) fn on_subscribed(&mut self, epoch: &str, offset: u64, recovered: Option<bool>) {
        match recovered {
            // The replay that follows continues from the position we had.
            Some(true) => {}
            // Nothing is replayed: live publications continue after the site's current position.
            Some(false) => {
                self.unrecovered += 1;
                self.last = Some((epoch.to_owned(), offset));
            }
            None => self.last = Some((epoch.to_owned(), offset)),
        }
    }

    /// A publication at `(epoch, offset)` carrying the publisher's sequence number `seq`.
    pub(crate) fn on_pub(&mut self, epoch: &str, offset: u64, seq: Option<u64>) {
        let count = seq.map(|s| {
            let c = self.seen.entry(s).or_default();
            *c += 1;
            *c
        });
        if count.is_some_and(|c| c > 1) {
            self.duplicates += 1;
            return;
        }
        match &self.last {
            Some((e, last)) if e == epoch => {
                if offset <= *last {
                    self.out_of_order += 1;
                    return;
                }
                self.gaps += offset - last - 1;
            }
            Some(_) => {
                self.epoch_changes += 1;
                // Offsets start at 1 in a new epoch: anything below this one never arrived.
                self.gaps += offset.saturating_sub(1);
            }
            None => {}
        }
        self.last = Some((epoch.to_owned(), offset));
    }

    /// How many times `seq` arrived.
    pub(crate) fn count(&self, seq: u64) -> u32 {
        self.seen.get(&seq).copied().unwrap_or(0)
    }

    /// Sequence numbers received that `expected` does not contain (published, though the
    /// publisher never saw it acknowledged).
    pub(crate) fn extra(&self, expected: impl Fn(u64) -> bool) -> u64 {
        self.seen.keys().filter(|s| !expected(**s)).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_stream_across_a_recovered_reconnect_counts_nothing() {
        let mut t = Track::default();
        t.on_subscribed("e", 4, None);
        t.on_pub("e", 5, Some(10));
        t.on_pub("e", 6, Some(11));
        // Reconnect: recovered, the replay continues where the stream was.
        t.on_subscribed("e", 8, Some(true));
        t.on_pub("e", 7, Some(12));
        t.on_pub("e", 8, Some(13));
        assert_eq!((t.gaps, t.out_of_order, t.duplicates, t.unrecovered, t.epoch_changes), (0, 0, 0, 0, 0));
        assert_eq!((t.count(12), t.count(99)), (1, 0));
        assert_eq!(t.last, Some(("e".into(), 8)));
    }

    #[test]
    fn loss_duplicates_and_order_are_told_apart() {
        let mut t = Track::default();
        t.on_subscribed("e", 0, None);
        t.on_pub("e", 1, Some(1));
        t.on_pub("e", 4, Some(4)); // 2 and 3 missing
        t.on_pub("e", 4, Some(4)); // the same publication again
        t.on_pub("e", 3, Some(3)); // late
        assert_eq!((t.gaps, t.duplicates, t.out_of_order), (2, 1, 1));
        assert_eq!(t.extra(|s| s != 4), 1);
    }

    #[test]
    fn an_unrecovered_subscribe_and_a_silent_epoch_change_are_counted() {
        let mut t = Track::default();
        t.on_subscribed("a", 3, None);
        t.on_subscribed("b", 0, Some(false));
        t.on_pub("b", 1, Some(7));
        assert_eq!((t.unrecovered, t.epoch_changes, t.gaps), (1, 0, 0));
        t.on_pub("c", 3, Some(8));
        assert_eq!((t.epoch_changes, t.gaps), (1, 2));
    }
}
