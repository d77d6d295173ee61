//! How publications become WebSocket text frames: one framing rule for every writer (the fan-out's
//! direct writes and the session's own), so a client sees the same frames whoever wrote them.

use axum::extract::ws::Utf8Bytes;
use tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Data, OpCode},
};

use super::outbox::Queued;

/// Largest text frame that packing builds; a publication is never split, so a larger one still
/// goes out whole in a frame of its own.
pub const MAX_PACKED_BYTES: usize = 64 * 1024;

/// How a connection's publications are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One publication per text frame, as its legacy frame.
    Legacy,
    /// Consecutive publications share one text frame, their v2 frames (full, or the delta the
    /// outbox chose) separated by `\n`, up to [`MAX_PACKED_BYTES`].
    Packed,
}

impl Framing {
    /// The text a queued publication is sent as.
    pub fn text(self, item: &Queued) -> &Utf8Bytes {
        let p = &item.publication;
        match self {
            Framing::Legacy => p.legacy_frame(),
            Framing::Packed if item.delta => p.delta().map_or_else(|| p.v2_frame(), |(_, frame)| frame),
            Framing::Packed => p.v2_frame(),
        }
    }

    /// Splits consecutive publications into the groups that each go out as one text frame (see
    /// [`Framing::payload`]): one each for [`Framing::Legacy`]; for [`Framing::Packed`], as many
    /// as fit in [`MAX_PACKED_BYTES`], a larger one alone.
    pub fn groups(self, items: &[Queued]) -> impl Iterator<Item = &[Queued]> {
        let mut rest = items;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let n = match self {
                Framing::Legacy => 1,
                Framing::Packed => {
                    let (mut n, mut len) = (0, 0);
                    for p in rest {
                        let added = self.text(p).len() + usize::from(n > 0);
                        if n > 0 && len + added > MAX_PACKED_BYTES {
                            break;
                        }
                        (n, len) = (n + 1, len + added);
                    }
                    n
                }
            };
            let (group, tail) = rest.split_at(n);
            rest = tail;
            Some(group)
        })
    }

    /// The text of one frame carrying `group`: the publications' texts joined with `\n`. A lone
    /// publication is its shared, encoded-once bytes, not a copy.
    pub fn payload(self, group: &[Queued]) -> Utf8Bytes {
        if let [one] = group {
            return self.text(one).clone();
        }
        let mut text = Vec::with_capacity(self.payload_len(group));
        self.append_payload(group, &mut text);
        // Joined UTF-8 texts are UTF-8.
        String::from_utf8(text).unwrap_or_default().into()
    }

    /// Appends one whole WebSocket text frame (server to client: unmasked) carrying `group` to
    /// `out`: what the fan-out writes to a socket itself.
    pub fn append_frame(self, group: &[Queued], out: &mut Vec<u8>) {
        let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
        // Writing to a Vec cannot fail.
        let _ = header.format(self.payload_len(group) as u64, out);
        self.append_payload(group, out);
    }

    fn payload_len(self, group: &[Queued]) -> usize {
        group.iter().map(|p| self.text(p).len()).sum::<usize>() + group.len().saturating_sub(1)
    }

    fn append_payload(self, group: &[Queued], out: &mut Vec<u8>) {
        for (i, p) in group.iter().enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(self.text(p).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::publication::{Position, Publication};

    fn publication(data: &str) -> Queued {
        let data = serde_json::value::RawValue::from_string(data.to_owned()).unwrap();
        let position = Position { epoch: "e".into(), offset: 1 };
        Queued {
            publication: Arc::new(Publication::from_parts("mrc".into(), "t".into(), data, position)),
            delta: false,
        }
    }

    #[test]
    fn a_lone_publication_is_sent_as_the_shared_bytes() {
        let p = publication("1");
        let out = Framing::Packed.payload(std::slice::from_ref(&p));
        assert_eq!(out.as_str().as_ptr(), p.publication.v2_frame().as_str().as_ptr(), "not copied");
    }

    #[test]
    fn packed_frames_are_joined_with_newlines_up_to_the_limit() {
        let sizes =
            |framing: Framing, items: &[Queued]| -> Vec<usize> { framing.groups(items).map(<[_]>::len).collect() };
        let small: Vec<_> = ["1", "2", "3"].map(publication).into();
        assert_eq!(sizes(Framing::Packed, &small), [3]);
        assert_eq!(sizes(Framing::Legacy, &small), [1, 1, 1], "legacy: one publication per frame");
        let text = Framing::Packed.payload(&small);
        let lines: Vec<_> = text.as_str().lines().collect();
        assert_eq!(lines, small.iter().map(|p| p.publication.v2_frame().as_str()).collect::<Vec<_>>());

        // Three of ~30 KiB: two fit in 64 KiB, the third starts the next frame.
        let big = publication(&format!("\"{}\"", "x".repeat(30 * 1024)));
        assert_eq!(sizes(Framing::Packed, &[big.clone(), big.clone(), big]), [2, 1]);
        // One over the limit goes out whole, alone.
        let huge = publication(&format!("\"{}\"", "y".repeat(MAX_PACKED_BYTES)));
        let a = publication("1");
        assert_eq!(sizes(Framing::Packed, &[a.clone(), huge, a]), [1, 1, 1]);
    }

    #[test]
    fn frames_decode_as_one_message_each_as_a_client_reads_them() {
        let one = [publication("1")];
        let two = [publication(r#"{"x":1}"#), publication(r#"{"y":2}"#)];
        let big = [publication(&format!("\"{}\"", "z".repeat(70_000)))];
        let mut out = Vec::new();
        Framing::Legacy.append_frame(&one, &mut out);
        Framing::Packed.append_frame(&two, &mut out);
        Framing::Packed.append_frame(&big, &mut out);
        let expected = [
            Framing::Legacy.payload(&one).to_string(),
            Framing::Packed.payload(&two).to_string(),
            Framing::Packed.payload(&big).to_string(),
        ];
        assert!(expected[1].contains('\n'));
        assert_eq!(crate::wire::decode_text_frames(&out), expected);
    }
}
