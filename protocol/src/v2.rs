//! Protocol v2: many sites per connection, stream positions, history recovery, rewind, topic
//! filters and application-level heartbeats. Spoken by the browser SDK.
//!
//! Negotiated with the WebSocket subprotocol [`SUBPROTOCOL`] on the same `/<stage>` endpoint as the
//! legacy protocol, so one URL serves both and legacy clients (which ask for no subprotocol) are
//! untouched. Sites may be given in the URL (`?site=mrc&site=saf`) or subscribed later.
//!
//! Every frame is a JSON object with a `type`. A server text frame may hold several frames
//! separated by `\n` (the server packs frames under load); clients split on `\n` before parsing.
//! See `docs/PROTOCOL.md` for the whole exchange with examples.

#[allow(unused_imports)]
use crate::prelude::*;

use alloc::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ErrorCode;

/// The WebSocket subprotocol that selects v2.
pub const SUBPROTOCOL: &str = "datastream.v2";

/// A stream position: `offset` counts a site's publications within `epoch`; a different epoch
/// means the history before it is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Identifies one unbroken history of a site.
    pub epoch: String,
    /// Offset of the last publication seen (0: none yet).
    pub offset: u64,
}

/// Which topics' latest publications a subscribe asks for (its `latest` field).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "LatestField", into = "LatestField")]
pub enum LatestWanted {
    /// `false` or absent: none.
    #[default]
    No,
    /// `true`: of every subscribed topic, those the client has not seen: with `recover`, only
    /// publications after its position (it has the rest).
    Unseen,
    /// `["topic", …]`: of these topics (those the subscription receives), whatever the `recover`
    /// position: the client says it does not hold them (say, a topic it just added).
    Topics(Vec<String>),
}

impl LatestWanted {
    /// Whether nothing is asked for.
    pub fn is_no(&self) -> bool {
        matches!(self, LatestWanted::No)
    }
}

impl From<bool> for LatestWanted {
    fn from(on: bool) -> Self {
        if on { LatestWanted::Unseen } else { LatestWanted::No }
    }
}

/// How [`LatestWanted`] is written: a boolean or a list of topics.
#[derive(Serialize, Deserialize)]
#[serde(untagged, expecting = "a boolean or an array of topic names")]
enum LatestField {
    Flag(bool),
    Topics(Vec<String>),
}

impl From<LatestField> for LatestWanted {
    fn from(field: LatestField) -> Self {
        match field {
            LatestField::Flag(on) => on.into(),
            LatestField::Topics(topics) => LatestWanted::Topics(topics),
        }
    }
}

impl From<LatestWanted> for LatestField {
    fn from(wanted: LatestWanted) -> Self {
        match wanted {
            LatestWanted::No => LatestField::Flag(false),
            LatestWanted::Unseen => LatestField::Flag(true),
            LatestWanted::Topics(topics) => LatestField::Topics(topics),
        }
    }
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Subscribe to a site (or change an existing subscription's options).
    Subscribe {
        /// Echoed in the reply, to match replies to requests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The site.
        site: String,
        /// Only these topics are sent; absent or empty: every topic.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        topics: Vec<String>,
        /// The last position the client saw; the server replays what followed, if it still
        /// holds all of it (see [`ServerFrame::Subscribed::recovered`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recover: Option<StreamPosition>,
        /// Without `recover`: send up to this many of the latest publications first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rewind: Option<u32>,
        /// Send first the latest publication of topics, however long ago it was published,
        /// marked [`PubFrame::latest`]: see [`LatestWanted`].
        #[serde(default, skip_serializing_if = "LatestWanted::is_no")]
        latest: LatestWanted,
        /// Receive publications as deltas where that saves bytes, in this encoding (one of the
        /// hello's [`ServerFrame::Hello::deltas`]; another is ignored: full publications).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delta: Option<String>,
    },
    /// Stop receiving a site.
    Unsubscribe {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The site.
        site: String,
    },
    /// The answer to a server [`ServerFrame::Ping`].
    Pong,
    /// A client-initiated liveness check; the server answers [`ServerFrame::Pong`].
    Ping,
    /// Replace the connection's token (before it expires) without reconnecting.
    Refresh {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The new token.
        token: String,
    },
}

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    /// The error code to report.
    pub code: ErrorCode,
    /// What is wrong.
    pub message: String,
    /// The request id, if one could be read.
    pub id: Option<u64>,
}

impl ClientFrame {
    /// Decodes one client text frame. Never panics, whatever the input.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        #[derive(Deserialize)]
        struct Peek<'a> {
            #[serde(rename = "type", borrow)]
            kind: Option<&'a RawValue>,
            id: Option<serde_json::Value>,
        }
        let peek: Peek<'_> = serde_json::from_str(text).map_err(|e| FrameError {
            code: ErrorCode::InvalidJson,
            message: format!("frame is not a JSON object: {e}"),
            id: None,
        })?;
        let id = peek.id.as_ref().and_then(serde_json::Value::as_u64);
        let kind = peek.kind.and_then(|k| serde_json::from_str::<&str>(k.get()).ok());
        match kind {
            Some("subscribe" | "unsubscribe" | "ping" | "pong" | "refresh") => {}
            Some(other) => {
                return Err(FrameError {
                    code: ErrorCode::UnknownType,
                    message: format!("unknown type {other:?}; expected subscribe, unsubscribe, ping, pong or refresh"),
                    id,
                });
            }
            None => {
                return Err(FrameError {
                    code: ErrorCode::UnknownType,
                    message: "frame has no string \"type\"".into(),
                    id,
                });
            }
        }
        serde_json::from_str(text).map_err(|e| FrameError { code: ErrorCode::InvalidFrame, message: e.to_string(), id })
    }
}

/// The delta encoding the relay offers: a Fossil delta (the `fossil` delta format of the Fossil SCM)
/// of the publication's data text against the data text of the slot's previous publication.
pub const DELTA_FOSSIL: &str = "fossil";

/// A publication as a v2 client receives it: whole (`data`), or, for a subscription that asked for
/// deltas, as a `delta` from the publication of the same slot at offset `base` that this connection
/// was sent. The relay writes `data` (or `delta`) last, but for `latest`, which follows `data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PubFrame {
    /// The site.
    pub site: String,
    /// The topic.
    pub topic: String,
    /// The site's epoch.
    pub epoch: String,
    /// The publication's offset in the site's stream.
    pub offset: u64,
    /// In a delta, for a topic kept per value of a data field (the hello's `latest_keys`), this
    /// publication's value of it: with the topic, its slot. Full frames do not carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For a delta: the offset of the publication of the same slot it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    /// The publisher's data, verbatim (absent in a delta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// The delta that turns the base's data text into this publication's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<String>,
    /// True for a topic's latest publication sent because the subscribe asked for `latest`: an
    /// older publication than the subscription's position, which it does not move.
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub latest: bool,
}

/// Frames the server sends. Decode with [`ServerFrame::parse`] (serde cannot buffer the raw
/// `data` of a publication through an internally tagged enum).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame of every connection: the server accepted it. Clients reset their reconnect
    /// backoff on this frame.
    Hello {
        /// Protocol version (2).
        version: u32,
        /// How often the server pings, in milliseconds. A client that hears nothing for this long
        /// plus a grace period should consider the connection dead.
        ping_interval_ms: u64,
        /// Most sites one connection may subscribe to.
        max_subscriptions: u32,
        /// Topics whose latest publication the server keeps per value of a top-level field of
        /// their data (topic → field, e.g. `{"sitestatus": "statusType"}`): a `latest` subscribe
        /// gets one such topic's latest publication for each value. Absent: none.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        latest_keys: BTreeMap<String, String>,
        /// The delta encodings a subscribe may ask for (`["fossil"]`). Absent: none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        deltas: Vec<String>,
        /// When the connection's token expires (seconds since the Unix epoch), for a connection
        /// made with an expiring token: refresh it before then. Absent: nothing expires.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// A subscription is in place.
    Subscribed {
        /// The request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The site.
        site: String,
        /// The site's current epoch.
        epoch: String,
        /// The site's latest offset when the subscription took effect (after any replay, the
        /// client has seen everything up to here that matches its topics).
        offset: u64,
        /// With `recover`: true if every missed publication is replayed right after this frame;
        /// false if the gap could not be filled (history trimmed, or a new epoch) and nothing was
        /// replayed: the app should refetch current state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Number of publications (replayed or rewound) sent right after this frame, after any
        /// latest ones.
        replayed: u32,
        /// With `latest`: the number of latest publications (marked `"latest": true`) sent right
        /// after this frame, before any replayed ones.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        latest: Option<u32>,
        /// The delta encoding granted: publications of this subscription may come as deltas.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delta: Option<String>,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// The request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The site.
        site: String,
    },
    /// A publication.
    Pub(PubFrame),
    /// A token refresh was accepted.
    Refreshed {
        /// The request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// When the new token expires (seconds since the Unix epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// Heartbeat; answer with [`ClientFrame::Pong`].
    Ping,
    /// The answer to a client [`ClientFrame::Ping`].
    Pong,
    /// A refused request or frame.
    Error {
        /// The id of the refused request, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Machine-readable reason.
        code: ErrorCode,
        /// The site the refusal is about, when it is about one (see [`crate::error::ErrorFrame`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site: Option<String>,
        /// Human-readable detail.
        message: String,
    },
}

impl ServerFrame {
    /// Encodes the frame as JSON text.
    pub fn to_json(&self) -> String {
        // Every field serializes infallibly (strings, numbers, RawValue).
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes one frame.
    pub fn parse(text: &str) -> Result<ServerFrame, serde_json::Error> {
        #[derive(Deserialize)]
        struct Peek<'a> {
            #[serde(rename = "type", borrow)]
            kind: &'a str,
        }
        // The relay always writes `type` first; check that cheaply before a full peek.
        if text.starts_with(r#"{"type":"pub","#)
            || serde_json::from_str::<Peek<'_>>(text).is_ok_and(|p| p.kind == "pub")
        {
            return serde_json::from_str(text).map(ServerFrame::Pub);
        }
        serde_json::from_str(text)
    }

    /// Splits a server text frame into the frames it packs and decodes each.
    pub fn parse_packed(text: &str) -> impl Iterator<Item = Result<ServerFrame, serde_json::Error>> + '_ {
        text.split('\n').filter(|s| !s.trim().is_empty()).map(ServerFrame::parse)
    }
}

/// A publication frame's header, before its `data` or `delta`.
#[derive(Serialize)]
struct Head<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    site: &'a str,
    topic: &'a str,
    epoch: &'a str,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<u64>,
}

/// `head`'s fields, then `"<field>":` and `value` verbatim, then `tail` and the closing brace.
fn encode(head: &Head<'_>, field: &str, value: &str, tail: &str) -> String {
    // A struct of strings and numbers always serializes.
    let mut out = serde_json::to_string(head).unwrap_or_default();
    out.pop();
    out.reserve(field.len() + value.len() + tail.len() + 5);
    out.push_str(",\"");
    out.push_str(field);
    out.push_str("\":");
    out.push_str(value);
    out.push_str(tail);
    out.push('}');
    out
}

/// What follows `data` in a latest publication's frame.
const LATEST_TAIL: &str = ",\"latest\":true";

/// Encodes a publication frame. `data` is copied verbatim.
pub fn encode_pub(site: &str, topic: &str, epoch: &str, offset: u64, data: &RawValue) -> String {
    let head = Head { kind: "pub", site, topic, epoch, offset, key: None, base: None };
    encode(&head, "data", data.get(), "")
}

/// Encodes a topic's latest publication, sent because a subscribe asked for `latest`: a
/// publication frame marked `"latest":true` (after `data`).
pub fn encode_latest(site: &str, topic: &str, epoch: &str, offset: u64, data: &RawValue) -> String {
    let head = Head { kind: "pub", site, topic, epoch, offset, key: None, base: None };
    encode(&head, "data", data.get(), LATEST_TAIL)
}

/// Encodes a publication as `delta`, which turns the data text of the publication at offset
/// `base` (the previous one of its slot: its topic and, for a keyed topic, `key`) into this one's.
pub fn encode_delta(
    site: &str,
    topic: &str,
    epoch: &str,
    offset: u64,
    key: Option<&str>,
    base: u64,
    delta: &str,
) -> String {
    let head = Head { kind: "pub", site, topic, epoch, offset, key, base: Some(base) };
    // A string always serializes.
    encode(&head, "delta", &serde_json::to_string(delta).unwrap_or_default(), "")
}

/// A full publication frame's data text, exactly as published: from after `,"data":` to the
/// closing brace, or to `,"latest":true}` for a latest publication (the relay writes `data` last
/// but for that mark). What a client keeps as the base of a later delta. `None` for a delta or a
/// text that is not a publication frame as the relay writes it.
pub fn data_text(frame: &str) -> Option<&str> {
    let start = frame.find(",\"data\":")? + 8;
    let body = frame.strip_suffix('}')?;
    // No JSON value ends with this tail: it can only be the mark.
    body.strip_suffix(LATEST_TAIL).unwrap_or(body).get(start..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_with_everything() {
        let f = ClientFrame::parse(
            r#"{"type":"subscribe","id":3,"site":"mrc","topics":["sitestatus"],"recover":{"epoch":"e","offset":41}}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                id: Some(3),
                site: "mrc".into(),
                topics: vec!["sitestatus".into()],
                recover: Some(StreamPosition { epoch: "e".into(), offset: 41 }),
                rewind: None,
                latest: LatestWanted::No,
                delta: None,
            }
        );
        assert_eq!(ClientFrame::parse(r#"{"type":"pong"}"#).unwrap(), ClientFrame::Pong);
        assert_eq!(
            ClientFrame::parse(r#"{"type":"unsubscribe","site":"a"}"#).unwrap(),
            ClientFrame::Unsubscribe { id: None, site: "a".into() }
        );
    }

    #[test]
    fn errors_are_typed_and_keep_the_id() {
        let e = ClientFrame::parse("nope").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidJson);
        let e = ClientFrame::parse(r#"{"type":"publish","id":9}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::UnknownType, Some(9)));
        let e = ClientFrame::parse(r#"{"id":9}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::UnknownType, Some(9)));
        let e = ClientFrame::parse(r#"{"type":"subscribe","id":4}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::InvalidFrame, Some(4)));
        assert!(e.message.contains("site"), "{}", e.message);
        let e = ClientFrame::parse(r#"{"type":"subscribe","site":"a","rewind":-1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidFrame);
        let e = ClientFrame::parse(r#"{"type":"subscribe","site":"a","extra":1}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidFrame);
    }

    #[test]
    fn pub_frame_round_trips_with_verbatim_data() {
        let data = RawValue::from_string(r#"{"n":1.50}"#.into()).unwrap();
        let text = encode_pub("mrc", "t", "ep", 7, &data);
        assert_eq!(text, r#"{"type":"pub","site":"mrc","topic":"t","epoch":"ep","offset":7,"data":{"n":1.50}}"#);
        assert_eq!(data_text(&text), Some(r#"{"n":1.50}"#));
        let frames: Vec<_> = ServerFrame::parse_packed(&format!("{text}\n{}", ServerFrame::Ping.to_json()))
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            matches!(&frames[0], ServerFrame::Pub(p) if p.offset == 7 && p.data.as_ref().unwrap().get() == r#"{"n":1.50}"#)
        );
        assert!(matches!(frames[1], ServerFrame::Ping));
    }

    #[test]
    fn latest_is_asked_for_and_marked() {
        let f = ClientFrame::parse(r#"{"type":"subscribe","site":"mrc","topics":["a"],"latest":true}"#).unwrap();
        assert!(matches!(f, ClientFrame::Subscribe { latest: LatestWanted::Unseen, .. }));
        let text = r#"{"type":"subscribe","site":"mrc","topics":["a","b"],"latest":["b"]}"#;
        let f = ClientFrame::parse(text).unwrap();
        assert!(matches!(&f, ClientFrame::Subscribe { latest: LatestWanted::Topics(t), .. } if t == &["b"]));
        assert_eq!(serde_json::to_string(&f).unwrap(), text);
        for absent in [r#"{"type":"subscribe","site":"mrc"}"#, r#"{"type":"subscribe","site":"mrc","latest":false}"#] {
            let f = ClientFrame::parse(absent).unwrap();
            assert!(matches!(f, ClientFrame::Subscribe { latest: LatestWanted::No, .. }));
            assert!(!serde_json::to_string(&f).unwrap().contains("latest"), "absent when false");
        }
        for bad in [r#""yes""#, "1", r#"[1]"#, "null", r#"{"a":1}"#] {
            let e = ClientFrame::parse(&format!(r#"{{"type":"subscribe","site":"mrc","latest":{bad}}}"#)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidFrame, "{bad}");
            assert!(e.message.contains("a boolean or an array of topic names"), "{bad}: {}", e.message);
        }

        let data = RawValue::from_string("1".into()).unwrap();
        let text = encode_latest("mrc", "t", "ep", 3, &data);
        assert_eq!(text, r#"{"type":"pub","site":"mrc","topic":"t","epoch":"ep","offset":3,"data":1,"latest":true}"#);
        assert_eq!(data_text(&text), Some("1"), "data is the last field but for the mark");
        assert!(matches!(ServerFrame::parse(&text).unwrap(), ServerFrame::Pub(p) if p.latest && p.offset == 3));
        let live = encode_pub("mrc", "t", "ep", 4, &data);
        assert!(matches!(ServerFrame::parse(&live).unwrap(), ServerFrame::Pub(p) if !p.latest));
    }

    #[test]
    fn keyed_publications_and_deltas() {
        let data = RawValue::from_string(r#"{"statusType":"device","n":1}"#.into()).unwrap();
        let text = encode_pub("mrc", "sitestatus", "ep", 9, &data);
        assert_eq!(
            text,
            r#"{"type":"pub","site":"mrc","topic":"sitestatus","epoch":"ep","offset":9,"data":{"statusType":"device","n":1}}"#,
            "a full frame carries no key"
        );
        assert_eq!(data_text(&text), Some(data.get()));
        let nested = RawValue::from_string(r#"{"a":{"latest":true}}"#.into()).unwrap();
        assert_eq!(data_text(&encode_latest("mrc", "t", "ep", 1, &nested)), Some(nested.get()));
        assert_eq!(data_text(&encode_pub("mrc", "t", "ep", 1, &nested)), Some(nested.get()));
        let delta = encode_delta("mrc", "sitestatus", "ep", 12, Some("device"), 9, "1r\n\"x:\\");
        assert_eq!(
            delta,
            r#"{"type":"pub","site":"mrc","topic":"sitestatus","epoch":"ep","offset":12,"key":"device","base":9,"delta":"1r\n\"x:\\"}"#
        );
        assert_eq!(data_text(&delta), None, "a delta has no data");
        match ServerFrame::parse(&delta).unwrap() {
            ServerFrame::Pub(p) => {
                assert_eq!((p.offset, p.base, p.key.as_deref()), (12, Some(9), Some("device")));
                assert_eq!(p.delta.as_deref(), Some("1r\n\"x:\\"));
                assert!(p.data.is_none());
            }
            other => panic!("{other:?}"),
        }
        let f = ClientFrame::parse(r#"{"type":"subscribe","site":"mrc","delta":"fossil"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Subscribe { delta: Some(d), .. } if d == DELTA_FOSSIL));
        assert_eq!(data_text("{}"), None);
        assert_eq!(data_text(r#"{"type":"pub","data":1"#), None, "cut short");
    }
}
