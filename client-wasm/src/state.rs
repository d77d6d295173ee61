//! The connection state the app sees, and how the states of several sockets (legacy mode: one
//! per site) combine into one.

#[allow(unused_imports)]
use crate::prelude::*;

/// The client's connection state, as reported to `onState` listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No site to subscribe to, so no socket: before the first site, and once the last one was
    /// released (after a short linger).
    Idle,
    /// Opening the first connection.
    Connecting,
    /// The server accepted the connection (v2: its `hello` arrived; legacy: every site's socket
    /// is open).
    Connected,
    /// The connection was lost, or an attempt failed (the app's `getToken` included); attempt
    /// number `attempt` (1 for the first retry) starts after `delay_ms`, or has started and not
    /// yet been accepted.
    Reconnecting {
        /// Consecutive failed attempts since the server last accepted a connection.
        attempt: u32,
        /// The delay drawn before this attempt, in milliseconds.
        delay_ms: u32,
        /// Why the last attempt or connection failed, in words.
        reason: &'static str,
    },
    /// Finished: closed by the app, or by the server with a terminal code. No more reconnects.
    Closed {
        /// The close code (1000 when the app closed the client).
        code: u16,
        /// Why, in words.
        reason: String,
    },
}

impl State {
    /// The state's name as the JavaScript API spells it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Reconnecting { .. } => "reconnecting",
            State::Closed { .. } => "closed",
        }
    }

    /// Combines the states of several sockets: the client is only as connected as its worst
    /// socket. A reconnecting socket outranks one still connecting, and among reconnecting
    /// sockets the one with the most failed attempts is reported. No socket at all is `Idle`.
    pub fn combine<'a>(states: impl IntoIterator<Item = &'a State>) -> State {
        let mut worst = State::Idle;
        for s in states {
            let replace = match (&worst, s) {
                (State::Idle, _) => true,
                (State::Closed { .. }, _) => false,
                (_, State::Closed { .. }) => true,
                (State::Reconnecting { attempt: a, .. }, State::Reconnecting { attempt: b, .. }) => b > a,
                (State::Reconnecting { .. }, _) => false,
                (_, State::Reconnecting { .. }) => true,
                (State::Connected, State::Connecting) => true,
                _ => false,
            };
            if replace {
                worst = s.clone();
            }
        }
        worst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(attempt: u32) -> State {
        State::Reconnecting { attempt, delay_ms: 100 * attempt, reason: "connection lost" }
    }

    #[test]
    fn combine_reports_the_worst_socket() {
        assert_eq!(State::combine([]), State::Idle);
        assert_eq!(State::combine([&State::Connected, &State::Connecting]), State::Connecting);
        assert_eq!(State::combine([&State::Connecting, &rec(1), &State::Connected]), rec(1));
        assert_eq!(State::combine([&rec(2), &rec(5), &rec(3)]), rec(5));
        let closed = State::Closed { code: 3500, reason: "x".into() };
        assert_eq!(State::combine([&rec(2), &closed, &State::Connected]), closed);
    }

    #[test]
    fn names_match_the_js_api() {
        assert_eq!(State::Connecting.name(), "connecting");
        assert_eq!(State::Idle.name(), "idle");
        assert_eq!(rec(1).name(), "reconnecting");
        assert_eq!(State::Closed { code: 1000, reason: String::new() }.name(), "closed");
    }
}
