//! The error frame the relay sends when it refuses a client frame, and its codes.
//!
//! ```json
//! {"type":"error","code":"invalid_site","message":"site contains ' '; allowed are …"}
//! ```
//! A refused frame does not close the connection; a client that keeps sending bad frames is
//! closed with [`crate::close::CloseCode::BadProtocol`].

#[allow(unused_imports)]
use crate::prelude::*;

use serde::{Deserialize, Serialize};

/// Why a client frame was refused. Serialized in `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON, or not an object.
    InvalidJson,
    /// The frame is a binary frame; only text frames are understood.
    BinaryFrame,
    /// The frame's `action` or `type` is not one the server knows.
    UnknownType,
    /// A required field is missing or of the wrong type.
    InvalidFrame,
    /// A site name breaks the name rules.
    InvalidSite,
    /// A topic name breaks the name rules.
    InvalidTopic,
    /// The connection already has the most subscriptions allowed.
    TooManySubscriptions,
    /// A subscription's topic filter names more topics than allowed.
    TooManyTopics,
    /// The client may not subscribe to this site.
    Forbidden,
    /// The server could not carry out the request right now; retry later.
    Unavailable,
    /// The client sent frames faster than the server accepts.
    RateLimited,
    /// A token failed verification.
    InvalidToken,
}

impl ErrorCode {
    /// The code as it appears on the wire, also used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::BinaryFrame => "binary_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::InvalidSite => "invalid_site",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::TooManyTopics => "too_many_topics",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidToken => "invalid_token",
        }
    }
}

/// `{"type":"error","code":…,"message":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "error")]
pub struct ErrorFrame {
    /// The id of the refused request, when it carried one (v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// The site the refusal is about, when it is about one (`forbidden`: which subscription was
    /// refused or ended), so a client need not parse the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Human-readable detail.
    pub message: String,
}

impl ErrorFrame {
    /// An error frame without a request id.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorFrame { id: None, code, site: None, message: message.into() }
    }

    /// The same frame, about `site`.
    pub fn about(self, site: impl Into<String>) -> Self {
        ErrorFrame { site: Some(site.into()), ..self }
    }

    /// Encodes the frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape() {
        let f = ErrorFrame::new(ErrorCode::InvalidSite, "bad");
        assert_eq!(f.to_json(), r#"{"type":"error","code":"invalid_site","message":"bad"}"#);
        let f = ErrorFrame { id: Some(4), ..f };
        assert_eq!(f.to_json(), r#"{"type":"error","id":4,"code":"invalid_site","message":"bad"}"#);
        assert_eq!(serde_json::from_str::<ErrorFrame>(&f.to_json()).unwrap(), f);
        let f = ErrorFrame::new(ErrorCode::Forbidden, "no").about("mrc");
        assert_eq!(f.to_json(), r#"{"type":"error","code":"forbidden","site":"mrc","message":"no"}"#);
        assert_eq!(serde_json::from_str::<ErrorFrame>(&f.to_json()).unwrap(), f);
    }
}
