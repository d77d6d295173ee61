//! Client frames as JSON text, written by hand.
//!
//! The frames are the protocol crate's [`ClientFrame`]; only their encoding is done here, because
//! serde_json's serializer (with its formatting and error machinery) would be the largest part of
//! the WebAssembly bundle. The tests check the output byte for byte against serde_json's, so the
//! two cannot drift apart.

#[allow(unused_imports)]
use crate::prelude::*;

use datastream_protocol::legacy::UPDATE_SUBSCRIBER_SITE;
use datastream_protocol::v2::{ClientFrame, LatestWanted};

/// The frame's JSON text, exactly as `serde_json::to_string` writes it.
pub fn encode(frame: &ClientFrame) -> String {
    let mut out = String::with_capacity(64);
    match frame {
        ClientFrame::Subscribe { id, site, topics, recover, rewind, latest, delta } => {
            out.push_str(r#"{"type":"subscribe""#);
            push_id(&mut out, *id);
            push_key(&mut out, "site");
            push_string(&mut out, site);
            if !topics.is_empty() {
                push_key(&mut out, "topics");
                push_strings(&mut out, topics);
            }
            if let Some(position) = recover {
                push_key(&mut out, "recover");
                out.push_str(r#"{"epoch":"#);
                push_string(&mut out, &position.epoch);
                out.push_str(r#","offset":"#);
                push_u64(&mut out, position.offset);
                out.push('}');
            }
            if let Some(rewind) = rewind {
                push_key(&mut out, "rewind");
                push_u64(&mut out, u64::from(*rewind));
            }
            match latest {
                LatestWanted::No => {}
                LatestWanted::Unseen => out.push_str(r#","latest":true"#),
                LatestWanted::Topics(topics) => {
                    push_key(&mut out, "latest");
                    push_strings(&mut out, topics);
                }
            }
            if let Some(delta) = delta {
                push_key(&mut out, "delta");
                push_string(&mut out, delta);
            }
        }
        ClientFrame::Unsubscribe { id, site } => {
            out.push_str(r#"{"type":"unsubscribe""#);
            push_id(&mut out, *id);
            push_key(&mut out, "site");
            push_string(&mut out, site);
        }
        ClientFrame::Ping => out.push_str(r#"{"type":"ping""#),
        ClientFrame::Pong => out.push_str(r#"{"type":"pong""#),
        ClientFrame::Refresh { id, token } => {
            out.push_str(r#"{"type":"refresh""#);
            push_id(&mut out, *id);
            push_key(&mut out, "token");
            push_string(&mut out, token);
        }
    }
    out.push('}');
    out
}

/// The legacy protocol's one client frame, `{"action":"updatesubscribersite","site":…}`.
pub fn encode_legacy_update(site: &str) -> String {
    let mut out = String::with_capacity(48 + site.len());
    out.push_str(r#"{"action":"#);
    push_string(&mut out, UPDATE_SUBSCRIBER_SITE);
    push_key(&mut out, "site");
    push_string(&mut out, site);
    out.push('}');
    out
}

fn push_key(out: &mut String, key: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
}

fn push_id(out: &mut String, id: Option<u64>) {
    if let Some(id) = id {
        push_key(out, "id");
        push_u64(out, id);
    }
}

/// Appends the decimal digits of `n`.
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Appends `s` as a JSON string, escaped as serde_json escapes.
fn push_strings(out: &mut String, strings: &[String]) {
    out.push('[');
    for (i, s) in strings.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(out, s);
    }
    out.push(']');
}

fn push_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                out.push(char::from(HEX[(c as usize) >> 4]));
                out.push(char::from(HEX[(c as usize) & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use datastream_protocol::v2::StreamPosition;

    use super::*;

    #[test]
    fn matches_serde_json_for_every_frame_shape() {
        let nasty = "q\"b\\s\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é🌟";
        let frames = [
            ClientFrame::Subscribe {
                id: None,
                site: "mrc".into(),
                topics: vec![],
                recover: None,
                rewind: None,
                latest: LatestWanted::No,
                delta: None,
            },
            ClientFrame::Subscribe {
                id: Some(u64::MAX),
                site: nasty.into(),
                topics: vec!["a".into(), nasty.into()],
                recover: Some(StreamPosition { epoch: nasty.into(), offset: 0 }),
                rewind: Some(u32::MAX),
                latest: LatestWanted::Unseen,
                delta: Some(nasty.into()),
            },
            ClientFrame::Subscribe {
                id: Some(0),
                site: "s".into(),
                topics: vec!["t".into()],
                recover: None,
                rewind: Some(20),
                latest: LatestWanted::Topics(vec!["t".into(), nasty.into()]),
                delta: None,
            },
            ClientFrame::Subscribe {
                id: Some(7),
                site: "s".into(),
                topics: vec![],
                recover: Some(StreamPosition { epoch: "9f3c".into(), offset: 1_234_567_890_123 }),
                rewind: None,
                latest: LatestWanted::No,
                delta: None,
            },
            ClientFrame::Unsubscribe { id: Some(3), site: "saf".into() },
            ClientFrame::Unsubscribe { id: None, site: nasty.into() },
            ClientFrame::Ping,
            ClientFrame::Pong,
            ClientFrame::Refresh { id: Some(1), token: nasty.into() },
            ClientFrame::Refresh { id: None, token: "t".into() },
        ];
        for frame in &frames {
            assert_eq!(encode(frame), serde_json::to_string(frame).unwrap(), "{frame:?}");
            assert_eq!(ClientFrame::parse(&encode(frame)).as_ref(), Ok(frame), "the relay reads it back");
        }
    }

    #[test]
    fn legacy_update_is_what_the_relay_parses() {
        use datastream_protocol::legacy::LegacyClientFrame;
        let text = encode_legacy_update("saf");
        assert_eq!(text, r#"{"action":"updatesubscribersite","site":"saf"}"#);
        assert_eq!(LegacyClientFrame::parse(&text), Ok(LegacyClientFrame::UpdateSubscriberSite { site: "saf".into() }));
    }

    #[test]
    fn numbers() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }
}
