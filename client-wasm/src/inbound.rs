//! What the client receives, decoded: the server frames of [`datastream_protocol::v2`] other than
//! publications, and the relay's error frame in the legacy protocol.
//!
//! Publications are not decoded into Rust at all: the browser reads them in JavaScript and asks
//! [`Client::accept`](crate::client::Client::accept) about each (see `web/dispatch.rs`), so their
//! data never crosses into WebAssembly. Natively, [`Inbound::from_server_frame`] turns the protocol
//! crate's own [`ServerFrame`] into this form, which is how the tests drive the client with
//! exactly what the relay encodes.

#[allow(unused_imports)]
use crate::prelude::*;

use datastream_protocol::v2::ServerFrame;

use crate::subscriptions::FOSSIL;

/// One frame from the server, other than a publication.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// v2: the connection is accepted.
    Hello {
        /// The server's ping interval.
        ping_interval_ms: u64,
        /// Whether the relay offers Fossil deltas (its `deltas` lists `fossil`).
        fossil: bool,
        /// When the connection's token expires (seconds since the Unix epoch), if it does.
        expires_at: Option<u64>,
    },
    /// v2: a token refresh was accepted; the new token expires at `expires_at`, if it does.
    Refreshed {
        /// Seconds since the Unix epoch.
        expires_at: Option<u64>,
    },
    /// v2: a subscription is in place.
    Subscribed {
        /// The request's id.
        id: Option<u64>,
        /// The site.
        site: String,
        /// The site's epoch.
        epoch: String,
        /// The site's latest offset when the subscription took effect.
        offset: u64,
        /// With `recover`: whether the gap was filled.
        recovered: Option<bool>,
        /// Publications replayed right after this frame (after any latest ones, which the
        /// client does not count: they are marked).
        replayed: u32,
    },
    /// v2: a subscription was removed.
    Unsubscribed,
    /// v2 heartbeat; answer with pong.
    Ping,
    /// v2: the answer to a client ping.
    Pong,
    /// A frame this client does not act on (a newer server's addition); still a sign of life.
    Other,
    /// A refused request or frame.
    Error {
        /// The refused request's id.
        id: Option<u64>,
        /// The machine-readable code (`invalid_site`, …).
        code: String,
        /// The site it is about, when the server says (a `forbidden` subscription).
        site: Option<String>,
        /// What was wrong.
        message: String,
    },
}

impl Inbound {
    /// The protocol crate's frame; `None` for a publication (for [`Client::accept`]).
    ///
    /// [`Client::accept`]: crate::client::Client::accept
    pub fn from_server_frame(frame: ServerFrame) -> Option<Self> {
        Some(match frame {
            ServerFrame::Hello { ping_interval_ms, deltas, expires_at, .. } => {
                Inbound::Hello { ping_interval_ms, fossil: deltas.iter().any(|d| d == FOSSIL), expires_at }
            }
            ServerFrame::Refreshed { expires_at, .. } => Inbound::Refreshed { expires_at },
            ServerFrame::Subscribed { id, site, epoch, offset, recovered, replayed, .. } => {
                Inbound::Subscribed { id, site, epoch, offset, recovered, replayed }
            }
            ServerFrame::Unsubscribed { .. } => Inbound::Unsubscribed,
            ServerFrame::Pub(_) => return None,
            ServerFrame::Ping => Inbound::Ping,
            ServerFrame::Pong => Inbound::Pong,
            ServerFrame::Error { id, code, site, message } => {
                Inbound::Error { id, code: code.as_str().to_owned(), site, message }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use datastream_protocol::error::ErrorCode;
    use datastream_protocol::v2::{ServerFrame, encode_pub};
    use serde_json::value::RawValue;

    use super::*;

    #[test]
    fn converts_what_the_relay_encodes() {
        let data = RawValue::from_string(r#"{"t":1.50}"#.into()).unwrap();
        let text = encode_pub("mrc", "weather", "ep", 4, &data);
        let frame = ServerFrame::parse(&text).unwrap();
        assert_eq!(Inbound::from_server_frame(frame), None, "publications go to Client::accept");
        let e = ServerFrame::Error { id: Some(2), code: ErrorCode::InvalidSite, site: None, message: "m".into() };
        assert_eq!(
            Inbound::from_server_frame(e),
            Some(Inbound::Error { id: Some(2), code: "invalid_site".into(), site: None, message: "m".into() })
        );
    }
}
