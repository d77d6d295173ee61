//! The original service's protocol, kept byte-for-byte so existing pages and publishers work
//! unchanged.
//!
//! - Connect to `/<stage>?site=<site>`; the connection receives that site's messages.
//! - The only client frame is `{"action": "updatesubscribersite", "site": "<site>"}`, which moves the
//!   connection to another site. Nothing is sent back for it.
//! - Each publication arrives as one text frame holding exactly `{"site", "topic", "data"}`, with
//!   `data` forwarded as the publisher's own JSON text.

#[allow(unused_imports)]
use crate::prelude::*;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The action name of the one legacy client frame.
pub const UPDATE_SUBSCRIBER_SITE: &str = "updatesubscribersite";

/// A frame sent by a legacy client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyClientFrame {
    /// Replace the connection's site.
    UpdateSubscriberSite {
        /// The new site (not yet checked against [`crate::NameRules`]).
        site: String,
    },
}

/// Why a legacy client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyFrameError {
    /// Not a JSON object.
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    /// A JSON object without a string `action`.
    #[error("frame has no string \"action\"")]
    MissingAction,
    /// An `action` other than `updatesubscribersite`.
    #[error("unknown action {0:?}; the only action is \"updatesubscribersite\"")]
    UnknownAction(String),
    /// `updatesubscribersite` without a string `site`.
    #[error("\"updatesubscribersite\" needs a string \"site\"")]
    MissingSite,
}

#[derive(Deserialize)]
struct RawAction<'a> {
    #[serde(borrow)]
    action: Option<&'a RawValue>,
    #[serde(borrow)]
    site: Option<&'a RawValue>,
}

fn as_string(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}

impl LegacyClientFrame {
    /// Parses one client text frame.
    pub fn parse(text: &str) -> Result<Self, LegacyFrameError> {
        let raw: RawAction<'_> = serde_json::from_str(text).map_err(|e| LegacyFrameError::NotJson(e.to_string()))?;
        let action = as_string(raw.action).ok_or(LegacyFrameError::MissingAction)?;
        if action != UPDATE_SUBSCRIBER_SITE {
            return Err(LegacyFrameError::UnknownAction(action));
        }
        let site = as_string(raw.site).ok_or(LegacyFrameError::MissingSite)?;
        Ok(LegacyClientFrame::UpdateSubscriberSite { site })
    }
}

/// Encodes a publication as the legacy frame `{"site":…,"topic":…,"data":…}`.
///
/// `data` must be valid JSON text; it is copied verbatim, so number formatting, key order and
/// string-vs-object are exactly what the publisher sent.
pub fn encode_publication(site: &str, topic: &str, data: &RawValue) -> String {
    #[derive(serde::Serialize)]
    struct Frame<'a> {
        site: &'a str,
        topic: &'a str,
        data: &'a RawValue,
    }
    // Serializing borrowed strings and a RawValue into a Vec cannot fail.
    serde_json::to_string(&Frame { site, topic, data }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_update_subscriber_site() {
        assert_eq!(
            LegacyClientFrame::parse(r#"{"action":"updatesubscribersite","site":"mrc"}"#),
            Ok(LegacyClientFrame::UpdateSubscriberSite { site: "mrc".into() })
        );
    }

    #[test]
    fn refuses_bad_frames_with_a_reason() {
        assert!(matches!(LegacyClientFrame::parse("nope"), Err(LegacyFrameError::NotJson(_))));
        assert!(matches!(LegacyClientFrame::parse("[1]"), Err(LegacyFrameError::NotJson(_))));
        assert_eq!(LegacyClientFrame::parse("{}"), Err(LegacyFrameError::MissingAction));
        assert_eq!(LegacyClientFrame::parse(r#"{"action":1}"#), Err(LegacyFrameError::MissingAction));
        assert_eq!(
            LegacyClientFrame::parse(r#"{"action":"sendmessage"}"#),
            Err(LegacyFrameError::UnknownAction("sendmessage".into()))
        );
        assert_eq!(
            LegacyClientFrame::parse(r#"{"action":"updatesubscribersite","site":7}"#),
            Err(LegacyFrameError::MissingSite)
        );
    }

    #[test]
    fn encodes_data_verbatim() {
        let data = RawValue::from_string(r#"{"b":1.50,"a":12345678901234567890}"#.into()).unwrap();
        assert_eq!(
            encode_publication("mrc", "weather", &data),
            r#"{"site":"mrc","topic":"weather","data":{"b":1.50,"a":12345678901234567890}}"#
        );
        let s = RawValue::from_string(r#""{\"text\": \"hi\"}""#.into()).unwrap();
        assert_eq!(
            encode_publication("tst", "testing", &s),
            r#"{"site":"tst","topic":"testing","data":"{\"text\": \"hi\"}"}"#
        );
    }
}
