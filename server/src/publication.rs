//! Messages on their way through the relay: an incoming [`PublishRequest`] (validated the same way
//! whether it came from SQS or HTTP) and the [`Publication`] it becomes once the broker has given it
//! a stream position.
//!
//! A publication is encoded once, when it is created; every subscriber's queue holds a reference
//! to the same bytes.

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use axum::extract::ws::Utf8Bytes;
use datastream_protocol::{NameError, NameRules, legacy, v2};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest accepted idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// A message to publish, after validation.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Target site.
    pub site: Arc<str>,
    /// Topic, chosen by the publisher.
    pub topic: Arc<str>,
    /// The publisher's `data`, kept as its exact JSON text.
    pub data: Box<RawValue>,
    /// Key under which a repeat of this message is recognised and dropped (an SQS message id, or a
    /// key the publisher supplied).
    pub idempotency_key: Option<String>,
}

/// Why an incoming message was refused. Each variant names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    /// The message is larger than the configured limit.
    #[error("message is {size} bytes; the limit is {max}")]
    TooLarge {
        /// Size of the message text.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// Not JSON at all.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("message must be a JSON object with \"site\", \"topic\" and \"data\"")]
    NotAnObject,
    /// A required field is absent.
    #[error("\"{0}\" is required")]
    Missing(&'static str),
    /// A field that must be a string is not.
    #[error("\"{0}\" must be a string")]
    NotAString(&'static str),
    /// A site or topic name breaks the name rules.
    #[error("\"{field}\" is invalid: {source}")]
    BadName {
        /// `site` or `topic`.
        field: &'static str,
        /// What is wrong with it.
        source: NameError,
    },
    /// The idempotency key is empty or too long.
    #[error("\"idempotency_key\" must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes")]
    BadIdempotencyKey,
}

impl InvalidMessage {
    /// The field at fault, if the error is about one field.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            InvalidMessage::Missing(f) | InvalidMessage::NotAString(f) => Some(f),
            InvalidMessage::BadName { field, .. } => Some(field),
            InvalidMessage::BadIdempotencyKey => Some("idempotency_key"),
            _ => None,
        }
    }

    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidMessage::TooLarge { .. } => "too_large",
            InvalidMessage::NotJson(_) => "not_json",
            InvalidMessage::NotAnObject => "not_an_object",
            InvalidMessage::Missing(_) => "missing_field",
            InvalidMessage::NotAString(_) => "not_a_string",
            InvalidMessage::BadName { .. } => "bad_name",
            InvalidMessage::BadIdempotencyKey => "bad_idempotency_key",
        }
    }
}

/// The fields read from an incoming message; anything else in the object is ignored.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    site: Option<&'a RawValue>,
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    idempotency_key: Option<&'a RawValue>,
}

/// Limits applied to incoming messages.
#[derive(Debug, Clone, Copy)]
pub struct Validator {
    /// Site and topic name rules.
    pub names: NameRules,
    /// Largest accepted message text, in bytes.
    pub max_message_bytes: usize,
}

impl Validator {
    /// Validates one message given as JSON text (an SQS body, or one element of an HTTP body).
    pub fn parse(&self, text: &str) -> Result<PublishRequest, InvalidMessage> {
        if text.len() > self.max_message_bytes {
            return Err(InvalidMessage::TooLarge { size: text.len(), max: self.max_message_bytes });
        }
        let raw: &RawValue = serde_json::from_str(text).map_err(|e| InvalidMessage::NotJson(e.to_string()))?;
        if !raw.get().starts_with('{') {
            return Err(InvalidMessage::NotAnObject);
        }
        // Only a duplicate key can fail here, since the text is a valid object.
        let incoming: Incoming<'_> =
            serde_json::from_str(raw.get()).map_err(|e| InvalidMessage::NotJson(e.to_string()))?;
        let site = string_field("site", incoming.site)?;
        self.names.check_site(&site).map_err(|source| InvalidMessage::BadName { field: "site", source })?;
        let topic = string_field("topic", incoming.topic)?;
        self.names.check_topic(&topic).map_err(|source| InvalidMessage::BadName { field: "topic", source })?;
        let data = incoming.data.ok_or(InvalidMessage::Missing("data"))?.to_owned();
        let idempotency_key = match incoming.idempotency_key {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => {
                let key = serde_json::from_str::<String>(raw.get())
                    .map_err(|_| InvalidMessage::NotAString("idempotency_key"))?;
                if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
                    return Err(InvalidMessage::BadIdempotencyKey);
                }
                Some(key)
            }
        };
        Ok(PublishRequest { site: site.into(), topic: topic.into(), data, idempotency_key })
    }
}

fn string_field(name: &'static str, raw: Option<&RawValue>) -> Result<String, InvalidMessage> {
    let raw = raw.ok_or(InvalidMessage::Missing(name))?;
    if raw.get() == "null" {
        return Err(InvalidMessage::Missing(name));
    }
    serde_json::from_str::<String>(raw.get()).map_err(|_| InvalidMessage::NotAString(name))
}

/// Topics whose latest publication is kept per value of a top-level field of their data
/// (`DATASTREAM_LATEST_KEYS`, by default `sitestatus=statusType`: the status service publishes
/// weather, enclosure and device status all as `sitestatus`, told apart by `data.statusType`, and
/// a page needs the latest of each). A publication whose data has no such string field (or one
/// breaking the name rules) is kept under its topic alone.
#[derive(Debug, Clone, Default)]
pub struct LatestKeys(Arc<[(Box<str>, Box<str>)]>);

impl LatestKeys {
    /// From `(topic, field)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        LatestKeys(pairs.into_iter().map(|(t, f)| (t.into_boxed_str(), f.into_boxed_str())).collect())
    }

    /// The `(topic, field)` pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(t, f)| (&**t, &**f))
    }

    /// The key `data` (published on `topic`) is kept under, if its topic has a field.
    pub fn key_of(&self, topic: &str, data: &RawValue) -> Option<Arc<str>> {
        let field = self.0.iter().find(|(t, _)| &**t == topic).map(|(_, f)| &**f)?;
        let value = string_field_of(data, field)?;
        NameRules::default().check_topic(&value).ok()?;
        Some(value.into())
    }
}

/// The string value of the top-level field `field` of `data`, if `data` is an object that has one.
/// Skips every other value without building it, however large. A repeated field counts by its
/// last value, as a browser's `JSON.parse` reads it.
fn string_field_of(data: &RawValue, field: &str) -> Option<String> {
    use std::borrow::Cow;

    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Find<'f>(&'f str);

    impl<'de> Visitor<'de> for Find<'_> {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key == self.0 {
                    let value: &'de RawValue = map.next_value()?;
                    found = serde_json::from_str::<String>(value.get()).ok();
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }

    let mut de = serde_json::Deserializer::from_str(data.get());
    de.deserialize_map(Find(field)).ok().flatten()
}

/// A stream position: publications to one site are numbered by `offset` (1, 2, 3, …) within an
/// `epoch`; a new epoch means the history before it is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Identifies one unbroken history of a site.
    pub epoch: Arc<str>,
    /// Number of the publication within the epoch, from 1.
    pub offset: u64,
}

/// A published message with its position, ready to send.
#[derive(Debug)]
pub struct Publication {
    /// Target site.
    pub site: Arc<str>,
    /// Topic.
    pub topic: Arc<str>,
    /// Position in the site's stream.
    pub position: Position,
    /// When the broker accepted it; used to expire history and to measure fan-out latency.
    pub published_at: Instant,
    /// The publisher's data, verbatim.
    pub data: Box<RawValue>,
    /// The legacy frame `{"site","topic","data"}`, encoded on first use and shared by every
    /// subscriber.
    legacy_frame: OnceLock<Utf8Bytes>,
    /// The v2 frame `{"type":"pub",…}`, encoded on first use and shared by every subscriber.
    v2_frame: OnceLock<Utf8Bytes>,
    /// For a topic whose latest publication is kept per value of a data field
    /// ([`LatestKeys`]), this publication's value of it.
    pub latest_key: Option<Arc<str>>,
    /// This publication as a delta from the previous publication of its slot: that one's offset
    /// and the delta frame. Set once, by the hub, when a subscriber of the site asked for
    /// deltas and the delta is worth sending ([`Publication::prepare_delta`]).
    delta: OnceLock<(u64, Utf8Bytes)>,
}

/// Room taken in a queue by a frame's fixed parts (keys, punctuation, epoch, offset).
const FRAME_OVERHEAD: usize = 96;

/// A frame's text as a publication keeps it, for as long as history holds the publication:
/// without the spare capacity the encoder grew while writing it (up to as much again as its
/// length).
fn kept(mut text: String) -> Utf8Bytes {
    text.shrink_to_fit();
    text.into()
}

impl Publication {
    /// Builds a publication; its frames are encoded when first needed.
    pub fn new(req: &PublishRequest, position: Position) -> Self {
        Publication {
            site: req.site.clone(),
            topic: req.topic.clone(),
            position,
            published_at: Instant::now(),
            data: req.data.clone(),
            legacy_frame: OnceLock::new(),
            v2_frame: OnceLock::new(),
            latest_key: None,
            delta: OnceLock::new(),
        }
    }

    /// Rebuilds a publication from its parts (as received from another node).
    pub fn from_parts(site: Arc<str>, topic: Arc<str>, data: Box<RawValue>, position: Position) -> Self {
        Publication {
            site,
            topic,
            position,
            published_at: Instant::now(),
            data,
            legacy_frame: OnceLock::new(),
            v2_frame: OnceLock::new(),
            latest_key: None,
            delta: OnceLock::new(),
        }
    }

    /// The publication with its [`LatestKeys`] key.
    pub fn with_latest_key(mut self, key: Option<Arc<str>>) -> Self {
        self.latest_key = key;
        self
    }

    /// The legacy frame, encoded on first use.
    pub fn legacy_frame(&self) -> &Utf8Bytes {
        self.legacy_frame.get_or_init(|| kept(legacy::encode_publication(&self.site, &self.topic, &self.data)))
    }

    /// The v2 publication frame, encoded on first use.
    pub fn v2_frame(&self) -> &Utf8Bytes {
        self.v2_frame.get_or_init(|| {
            kept(v2::encode_pub(&self.site, &self.topic, &self.position.epoch, self.position.offset, &self.data))
        })
    }

    /// Computes this publication as a delta from `base`, the previous publication of its slot
    /// (same site, epoch, topic and key, a lower offset), if it is worth sending
    /// ([`delta`](crate::delta)); once: later calls do nothing.
    pub fn prepare_delta(&self, base: &Publication) {
        if self.delta.get().is_some() || base.position.epoch != self.position.epoch {
            return;
        }
        let Some(delta) = crate::delta::fossil(base.data.get(), self.data.get()) else { return };
        let frame = v2::encode_delta(
            &self.site,
            &self.topic,
            &self.position.epoch,
            self.position.offset,
            self.latest_key.as_deref(),
            base.position.offset,
            &delta,
        );
        if crate::delta::worth_it(frame.len(), self.data.get().len()) {
            let _ = self.delta.set((base.position.offset, kept(frame)));
        }
    }

    /// This publication's delta frame and the offset of its base, if one was prepared.
    pub fn delta(&self) -> Option<(u64, &Utf8Bytes)> {
        self.delta.get().map(|(base, frame)| (*base, frame))
    }

    /// This publication as a topic's latest, for a subscribe that asked for it (sent once; not
    /// kept).
    pub fn latest_frame(&self) -> Utf8Bytes {
        v2::encode_latest(&self.site, &self.topic, &self.position.epoch, self.position.offset, &self.data).into()
    }

    /// Bytes this publication occupies in a subscriber's send queue (an upper bound of either
    /// frame's length).
    pub fn queued_len(&self) -> usize {
        self.data.get().len() + self.site.len() + self.topic.len() + self.position.epoch.len() + FRAME_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> Validator {
        Validator { names: NameRules::default(), max_message_bytes: 1024 }
    }

    #[test]
    fn accepts_the_original_body() {
        let req = validator().parse(r#"{"topic": "testing", "site": "tst", "data": "{\"text\": \"hello\"}"}"#).unwrap();
        assert_eq!(&*req.site, "tst");
        assert_eq!(&*req.topic, "testing");
        assert_eq!(req.data.get(), r#""{\"text\": \"hello\"}""#);
        assert_eq!(req.idempotency_key, None);
    }

    #[test]
    fn refuses_each_kind_of_bad_message() {
        let v = validator();
        let cases: &[(&str, InvalidMessage)] = &[
            ("not json", InvalidMessage::NotJson(String::new())),
            ("[1,2]", InvalidMessage::NotAnObject),
            ("\"x\"", InvalidMessage::NotAnObject),
            (r#"{"topic":"t","data":1}"#, InvalidMessage::Missing("site")),
            (r#"{"site":null,"topic":"t","data":1}"#, InvalidMessage::Missing("site")),
            (r#"{"site":3,"topic":"t","data":1}"#, InvalidMessage::NotAString("site")),
            (r#"{"site":"s","data":1}"#, InvalidMessage::Missing("topic")),
            (r#"{"site":"s","topic":"t"}"#, InvalidMessage::Missing("data")),
            (r#"{"site":"s","topic":"t","data":1,"idempotency_key":""}"#, InvalidMessage::BadIdempotencyKey),
        ];
        for (body, want) in cases {
            let got = v.parse(body).unwrap_err();
            assert_eq!(std::mem::discriminant(&got), std::mem::discriminant(want), "{body}: {got}");
        }
        let err = v.parse(r#"{"site":"","topic":"t","data":1}"#).unwrap_err();
        assert_eq!(err.field(), Some("site"));
        assert!(err.to_string().contains("must not be empty"), "{err}");
        let err = v.parse(r#"{"site":"s","topic":"a b","data":1}"#).unwrap_err();
        assert_eq!(err.field(), Some("topic"));
        let big = format!(r#"{{"site":"s","topic":"t","data":"{}"}}"#, "x".repeat(2000));
        assert!(matches!(v.parse(&big), Err(InvalidMessage::TooLarge { max: 1024, .. })));
        assert!(matches!(v.parse(r#"{"site":"a","site":"b","topic":"t","data":1}"#), Err(InvalidMessage::NotJson(_))));
    }

    #[test]
    fn latest_keys_read_one_top_level_string_field() {
        let keys = LatestKeys::new([("sitestatus".to_owned(), "statusType".to_owned())]);
        let key = |topic: &str, data: &str| keys.key_of(topic, &RawValue::from_string(data.into()).unwrap());
        let enclosure = r#"{"site":"mrc","statusType":"enclosure","status":{"statusType":"x","a":[1,{"b":2}]}}"#;
        assert_eq!(key("sitestatus", enclosure).as_deref(), Some("enclosure"));
        assert_eq!(
            key("sitestatus", r#"{"status":{"statusType":"inner"},"statusType":"weather"}"#).as_deref(),
            Some("weather")
        );
        assert_eq!(key("other", enclosure), None, "only the topics named");
        assert_eq!(
            key("sitestatus", r#"{"statusType":"a","statusType":"b"}"#).as_deref(),
            Some("b"),
            "the last, as JSON.parse"
        );
        assert_eq!(key("sitestatus", r#"{"statusType":"a","statusType":1}"#), None);
        for unkeyed in [
            r#"{"status":{"statusType":"nested only"}}"#,
            r#"{"statusType":3}"#,
            r#"{"statusType":null}"#,
            r#"{"statusType":"has space"}"#,
            r#"{"statusType":""}"#,
            r#""{\"statusType\": \"a JSON string\"}""#,
            "[1,2]",
            "42",
        ] {
            assert_eq!(key("sitestatus", unkeyed), None, "{unkeyed}");
        }
        let long = format!(r#"{{"statusType":"{}"}}"#, "x".repeat(65));
        assert_eq!(key("sitestatus", &long), None, "longer than a name may be");
    }

    #[test]
    fn legacy_frame_keeps_data_verbatim() {
        let req = validator()
            .parse(r#"{"data": {"x": 1.0, "big": 123456789012345678901234567890}, "site": "mrc", "topic": "t", "extra": 1}"#)
            .unwrap();
        let p = Publication::new(&req, Position { epoch: "e".into(), offset: 1 });
        assert_eq!(
            p.legacy_frame().as_str(),
            r#"{"site":"mrc","topic":"t","data":{"x": 1.0, "big": 123456789012345678901234567890}}"#
        );
    }
}
