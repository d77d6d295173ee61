//! Per-site stream position and deduplication by offset.
//!
//! The client remembers, per site, the last position it has fully covered, and hands it back when
//! it resubscribes so the server can replay the gap. Replays may overlap what was already
//! delivered (a rewind over seen publications, a resubscribe racing a live publication), so every
//! publication is checked against the position: each one reaches callbacks once, in offset order.

#[allow(unused_imports)]
use crate::prelude::*;

use datastream_protocol::v2::StreamPosition;

/// What the client knows about one site's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// The epoch of the publications counted in `delivered`.
    epoch: String,
    /// Every publication up to this offset (that matched the topic filter) has been delivered or
    /// deliberately skipped; the resume point for recovery.
    delivered: u64,
    /// A replay announced by `subscribed` and still arriving.
    replay: Option<Replay>,
}

/// What undoes the record of one accepted publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// The publication started its site's stream (none was confirmed yet): undone, the site has
    /// no stream again.
    Start,
    /// The publication moved the stream on ([`Stream::accept_undoable`]): undone, it is back
    /// where it was.
    Back {
        /// The epoch before, when the publication changed it.
        epoch: Option<String>,
        /// What was delivered before.
        delivered: u64,
        /// The replay under way before.
        replay: Option<Replay>,
    },
}

/// The rest of a replay announced by a `subscribed` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// The site's offset when the subscription took effect: once the replay is through, the
    /// client has seen everything up to here.
    until: u64,
    /// Publications of the replay not yet received.
    remaining: u32,
}

impl Stream {
    /// The position of a stream confirmed by `subscribed` (`epoch`, `offset`) with `replayed`
    /// publications to follow. `previous` is the stream known before, if any.
    pub fn confirmed(previous: Option<Stream>, epoch: &str, offset: u64, replayed: u32) -> Stream {
        let mut stream = match previous {
            // Same history: keep what was delivered, so a replay over it is deduplicated.
            Some(s) if s.epoch == epoch => Stream { replay: None, ..s },
            // A new history: its offsets start again from 1.
            _ => Stream { epoch: epoch.to_owned(), delivered: 0, replay: None },
        };
        if replayed == 0 {
            stream.delivered = stream.delivered.max(offset);
        } else {
            stream.replay = Some(Replay { until: offset, remaining: replayed });
        }
        stream
    }

    /// Whether the publication at (`epoch`, `offset`) is new and should be delivered; records it.
    pub fn accept(&mut self, epoch: &str, offset: u64) -> bool {
        let fresh = if epoch != self.epoch {
            // Only a server whose history restarted mid-connection sends this; its offsets
            // restart too, so follow the new epoch rather than drop everything after it.
            self.epoch = epoch.to_owned();
            self.delivered = offset;
            self.replay = None;
            true
        } else if offset > self.delivered {
            self.delivered = offset;
            true
        } else {
            false
        };
        if let Some(r) = &mut self.replay {
            r.remaining = r.remaining.saturating_sub(1);
            if r.remaining == 0 {
                self.delivered = self.delivered.max(r.until);
                self.replay = None;
            }
        }
        fresh
    }

    /// [`Stream::accept`], with what undoes it ([`Stream::undo`]).
    pub fn accept_undoable(&mut self, epoch: &str, offset: u64) -> (bool, Undo) {
        let undo = Undo::Back {
            epoch: (epoch != self.epoch).then(|| self.epoch.clone()),
            delivered: self.delivered,
            replay: self.replay,
        };
        (self.accept(epoch, offset), undo)
    }

    /// Puts the stream back as it was before the [`Stream::accept_undoable`] that gave `undo`
    /// (undone latest first).
    /// [`Undo::Start`] is not the stream's to undo: the caller forgets the stream.
    pub fn undo(&mut self, undo: Undo) {
        if let Undo::Back { epoch, delivered, replay } = undo {
            if let Some(epoch) = epoch {
                self.epoch = epoch;
            }
            self.delivered = delivered;
            self.replay = replay;
        }
    }

    /// The position to recover from.
    pub fn position(&self) -> StreamPosition {
        StreamPosition { epoch: self.epoch.clone(), offset: self.delivered }
    }

    /// The epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_publications_are_delivered_once_in_order() {
        let mut s = Stream::confirmed(None, "e", 10, 0);
        assert_eq!(s.position(), StreamPosition { epoch: "e".into(), offset: 10 });
        assert!(!s.accept("e", 10), "at the subscribe point: already covered");
        assert!(s.accept("e", 11));
        assert!(!s.accept("e", 11), "duplicate");
        assert!(s.accept("e", 14), "a topic filter skips offsets: not a gap");
        assert!(!s.accept("e", 12), "older than what was delivered");
        assert_eq!(s.position().offset, 14);
    }

    #[test]
    fn recovery_replay_fills_the_gap_then_jumps_to_the_subscribe_point() {
        let mut s = Stream::confirmed(None, "e", 5, 0);
        assert!(s.accept("e", 6));
        // Reconnect, recover from 6; the server holds 7..=9 and replays them.
        s = Stream::confirmed(Some(s), "e", 9, 3);
        assert_eq!(s.position().offset, 6, "until the replay is through, resume from what was seen");
        assert!(s.accept("e", 7));
        assert!(s.accept("e", 8));
        assert!(s.accept("e", 9));
        assert!(s.accept("e", 10), "live after the replay");
        assert_eq!(s.position().offset, 10);
    }

    #[test]
    fn a_rewind_over_delivered_publications_is_deduplicated() {
        let mut s = Stream::confirmed(None, "e", 20, 0);
        assert!(s.accept("e", 21));
        // Rewind 5 on the same epoch: 17..=21, all but none new.
        s = Stream::confirmed(Some(s), "e", 21, 5);
        let fresh: Vec<u64> = (17..=21).filter(|&o| s.accept("e", o)).collect();
        assert!(fresh.is_empty(), "{fresh:?}");
        assert!(s.accept("e", 22));
    }

    #[test]
    fn filtered_replay_ends_at_the_subscribe_point() {
        // Replay of 2 filtered publications (offsets 12 and 15) up to a site offset of 18.
        let mut s = Stream::confirmed(None, "e", 18, 2);
        assert!(s.accept("e", 12));
        assert_eq!(s.position().offset, 12);
        assert!(s.accept("e", 15));
        assert_eq!(s.position().offset, 18, "everything matching up to 18 has been seen");
    }

    #[test]
    fn a_new_epoch_starts_over() {
        let mut s = Stream::confirmed(None, "old", 50, 0);
        assert!(s.accept("old", 51));
        s = Stream::confirmed(Some(s), "new", 2, 0);
        assert_eq!(s.position(), StreamPosition { epoch: "new".into(), offset: 2 });
        assert!(s.accept("new", 3));
        // A rewind right after a restart: offsets from 1 in the new epoch.
        let mut s = Stream::confirmed(Some(s), "newer", 3, 3);
        assert!(s.accept("newer", 1) && s.accept("newer", 2) && s.accept("newer", 3));
        assert_eq!(s.epoch(), "newer");
    }

    #[test]
    fn an_epoch_change_mid_stream_is_followed() {
        let mut s = Stream::confirmed(None, "a", 3, 0);
        assert!(s.accept("b", 1));
        assert!(!s.accept("b", 1));
        assert!(s.accept("b", 2));
        assert_eq!(s.position(), StreamPosition { epoch: "b".into(), offset: 2 });
    }

    #[test]
    fn accepts_undone_latest_first_leave_the_stream_as_before_them() {
        // In a replay of 3 up to 9, from 5: 6, a duplicate, 7, then a new epoch.
        let s0 = Stream::confirmed(Some(Stream::confirmed(None, "e", 5, 0)), "e", 9, 3);
        let mut s = s0.clone();
        let mut undos = Vec::new();
        let mut states = vec![s.clone()];
        for (epoch, offset, fresh) in [("e", 6, true), ("e", 6, false), ("e", 7, true), ("f", 1, true), ("f", 2, true)]
        {
            let (got, undo) = s.accept_undoable(epoch, offset);
            assert_eq!(got, fresh, "{epoch} {offset}");
            undos.push(undo);
            states.push(s.clone());
        }
        assert_eq!(s.position(), StreamPosition { epoch: "f".into(), offset: 2 });
        while let Some(undo) = undos.pop() {
            s.undo(undo);
            assert_eq!(&s, &states[undos.len()]);
        }
        assert_eq!(s, s0);
        // Accepted again, the same answers: the replay counts down again, to its end.
        assert!(s.accept("e", 6) && !s.accept("e", 6) && s.accept("e", 7));
        assert_eq!(s.position().offset, 9);
    }
}
