//! One socket's life: waiting to reconnect, opening, open, accepted; its failure count (the
//! backoff attempt) and its liveness bookkeeping.
//!
//! Protocol v2 uses a single link for every site; the legacy protocol one link per site. The
//! decisions about links are taken in [`crate::client`]; this module holds their data and the
//! rules that depend only on it.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::state::State;

/// Identifies a link for as long as the client lives (never reused).
pub type LinkId = u32;

/// The timers a link may have running; each kind at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// The backoff delay before the next attempt.
    Reconnect,
    /// The deadline for the socket to open / the server to answer, then for the next sign of life.
    Heartbeat,
    /// Closes a socket no site needs any more: legacy, a site's socket once unsubscribed, unless
    /// a new site reuses it first; v2, the socket after the last site was released and a linger
    /// passed without a new one.
    Release,
    /// v2 with tokens from the app: asks for a fresh token shortly before the connection's
    /// expires (the relay says when, in `hello` and `refreshed`).
    Refresh,
}

/// Where a link is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Phase {
    /// Waiting for the reconnect timer.
    Waiting,
    /// Waiting for the app's token (its `getToken`) before opening, since `since` (ms): the
    /// attempt started then, and the connect timeout covers the wait.
    Token {
        /// When the attempt started.
        since: f64,
    },
    /// The socket is opening, since `since` (ms).
    Opening {
        /// When the attempt started.
        since: f64,
    },
    /// v2: the socket is open, the server's `hello` has not come yet.
    Handshake {
        /// When the attempt started.
        since: f64,
    },
    /// Accepted by the server.
    Live,
}

/// One socket's state.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) id: LinkId,
    /// Legacy: the site this link is for. `None` for the v2 link.
    pub(crate) site: Option<String>,
    /// Legacy: the site the socket was opened with (`?site=`); differs from `site` when the
    /// link was reused for another site while opening.
    pub(crate) opened_site: Option<String>,
    /// Legacy: unsubscribed; kept open a moment for a new site to reuse, then released.
    pub(crate) spare: bool,
    pub(crate) phase: Phase,
    /// The state this link reports.
    pub(crate) state: State,
    /// Consecutive failed attempts since the server last accepted a connection.
    pub(crate) failures: u32,
    /// When the last frame arrived (ms).
    pub(crate) last_heard: f64,
    /// When a liveness probe (a client ping) was sent and not yet answered by any frame.
    pub(crate) probe_sent: Option<f64>,
    /// Longest tolerated silence once live: the server's ping interval plus the grace (ms).
    pub(crate) silence_limit: f64,
}

impl Link {
    pub(crate) fn new(id: LinkId, site: Option<String>) -> Self {
        Link {
            id,
            site,
            opened_site: None,
            spare: false,
            phase: Phase::Waiting,
            state: State::Connecting,
            failures: 0,
            last_heard: 0.0,
            probe_sent: None,
            silence_limit: f64::INFINITY,
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// Why the link, live, should be considered dead at `now`, if it should; otherwise how long
    /// until the next check.
    pub(crate) fn liveness(&self, now: f64, grace: f64) -> Result<f64, &'static str> {
        let silent_for = now - self.last_heard;
        if silent_for >= self.silence_limit {
            return Err("heartbeat timeout");
        }
        let mut next = self.silence_limit - silent_for;
        if let Some(sent) = self.probe_sent {
            let waited = now - sent;
            if waited >= grace {
                return Err("no answer to ping");
            }
            next = next.min(grace - waited);
        }
        Ok(next)
    }

    /// Whether the connection looks stale at `now`: silent for longer than the server's heartbeat
    /// allows (after sleep or in a throttled background tab, timers fire late).
    pub(crate) fn is_stale(&self, now: f64) -> bool {
        self.is_live() && now - self.last_heard >= self.silence_limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_counts_silence_and_unanswered_probes() {
        let mut l = Link::new(1, None);
        l.phase = Phase::Live;
        l.last_heard = 1000.0;
        l.silence_limit = 35_000.0;
        assert_eq!(l.liveness(1000.0, 10_000.0), Ok(35_000.0));
        assert_eq!(l.liveness(30_000.0, 10_000.0), Ok(6000.0));
        assert_eq!(l.liveness(36_000.0, 10_000.0), Err("heartbeat timeout"));
        assert!(l.is_stale(36_000.0) && !l.is_stale(35_999.0));
        l.probe_sent = Some(2000.0);
        assert_eq!(l.liveness(3000.0, 10_000.0), Ok(9000.0), "the probe deadline comes first");
        assert_eq!(l.liveness(12_000.0, 10_000.0), Err("no answer to ping"));
    }
}
