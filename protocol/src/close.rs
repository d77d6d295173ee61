//! WebSocket close codes sent by the relay, and the rule a client uses to decide whether to
//! reconnect.
//!
//! Codes in 3000–3499 (and 1001, 1011, 1012, 1013) mean "reconnect"; codes in 3500–3999 mean "do not
//! reconnect: something must change first". The full table with reasons is in `docs/PROTOCOL.md`.

#[allow(unused_imports)]
use crate::prelude::*;

/// Close codes the relay sends. Stable: clients switch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The server is shutting down or draining; reconnect (to this or another node).
    GoingAway = 1001,
    /// The client broke the WebSocket framing rules (RFC 6455 §7.4.1): a reserved bit or opcode,
    /// an unmasked or fragmented control frame, …
    ProtocolError = 1002,
    /// A text frame that is not valid UTF-8 (RFC 6455 §8.1).
    InvalidPayload = 1007,
    /// An unexpected server-side failure; reconnect.
    ServerError = 1011,
    /// The client fell too far behind (its send queue passed the byte cap); reconnect and recover.
    SlowConsumer = 3000,
    /// Nothing was heard from the client within the heartbeat timeout; reconnect.
    HeartbeatTimeout = 3001,
    /// The connection's token expired; get a fresh token, then reconnect.
    TokenExpired = 3002,
    /// The client kept sending invalid frames; fix the client before reconnecting.
    BadProtocol = 3500,
    /// The client is not allowed on this server (bad or expired credentials, origin refused).
    Forbidden = 3501,
    /// A client frame was larger than the server accepts.
    MessageTooBig = 3502,
}

impl CloseCode {
    /// The numeric code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// Whether a client should reconnect after this code.
    pub const fn reconnect(self) -> bool {
        should_reconnect(self as u16)
    }
}

/// Whether a client should reconnect after the server closed with `code`.
///
/// Unknown codes outside the terminal ranges are treated as transient, so a new server code never
/// strands a client.
pub const fn should_reconnect(code: u16) -> bool {
    !matches!(code, 3500..=3999 | 4500..=4999)
}

/// Longest close reason: a close frame is a control frame (at most 125 bytes of payload, RFC 6455
/// §5.5), and two of them are the code.
pub const MAX_REASON_BYTES: usize = 123;

/// `reason` cut to [`MAX_REASON_BYTES`] on a UTF-8 boundary, so every close frame is legal
/// whatever text it carries.
pub fn fit_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for c in [
            CloseCode::GoingAway,
            CloseCode::ServerError,
            CloseCode::SlowConsumer,
            CloseCode::HeartbeatTimeout,
            CloseCode::TokenExpired,
        ] {
            assert!(c.reconnect(), "{c:?}");
        }
        for c in [CloseCode::BadProtocol, CloseCode::Forbidden, CloseCode::MessageTooBig] {
            assert!(!c.reconnect(), "{c:?}");
        }
        assert!(should_reconnect(1006));
        assert!(should_reconnect(4000));
        assert!(!should_reconnect(4999));
    }

    #[test]
    fn reasons_fit_a_control_frame_on_a_char_boundary() {
        assert_eq!(fit_reason("short"), "short");
        let long = "é".repeat(100);
        let fitted = fit_reason(&long);
        assert!(fitted.len() <= MAX_REASON_BYTES && fitted.len() >= MAX_REASON_BYTES - 1);
        assert!(long.starts_with(fitted));
    }
}
