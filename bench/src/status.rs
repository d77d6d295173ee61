//! Status streams (statusgen) through the relay's v2 protocol, with or without deltas
//! (`docs/PROTOCOL.md`, "Deltas"): what one subscriber holds per slot, how it turns a `pub` line
//! into the publication's data text (applying a Fossil delta to the text it holds at `base`, as a
//! client does), and what is counted on the way: the bytes of the frames, the deltas, the deltas
//! that could not be applied, gaps and order by offset. Whether each text equals what was
//! published is checked by [`crate::sub::Shared`], which has the published texts.

use std::collections::HashMap;

use datastream_protocol::v2::data_text;

use crate::payload;

/// What the publisher sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Payload {
    /// `{"seq","t","pad"}` padded to `--size` (every target).
    Synthetic,
    /// statusgen's device status (about 18 KB), topic `sitestatus` (v2 relay only).
    Device,
    /// statusgen's weather status (about 1.4 KB), topic `sitestatus` (v2 relay only).
    Weather,
}

/// What the subscribers of a status payload counted in the current phase, all together.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(crate) struct Counts {
    /// Bytes of the WebSocket frames that carried publications, header included.
    pub(crate) frame_bytes: u64,
    /// Publication lines received (full or delta).
    pub(crate) pubs: u64,
    /// Of which deltas.
    pub(crate) deltas: u64,
    /// Deltas against a base the subscriber did not hold, or that did not apply (length or
    /// checksum), or whose result was not UTF-8.
    pub(crate) delta_failures: u64,
    /// Data texts (full, or rebuilt from a delta) that differ from the text published under their
    /// sequence number.
    pub(crate) mismatches: u64,
    /// Offsets skipped (within an epoch).
    pub(crate) gaps: u64,
    /// Publications at or below an offset already received.
    pub(crate) out_of_order: u64,
}

/// One subscriber's view: per slot (the `statusType`), the epoch, offset and data text of the last
/// publication received; and the last position.
#[derive(Debug, Default)]
pub(crate) struct Viewer {
    held: HashMap<String, (String, u64, String)>,
    last: Option<(String, u64)>,
}

/// The text of the JSON string starting right after `key` (no escapes expected).
fn string_after<'a>(hay: &'a str, key: &str) -> Option<&'a str> {
    let start = hay.find(key)? + key.len();
    let len = hay[start..].find('"')?;
    Some(&hay[start..start + len])
}

impl Viewer {
    /// Takes one `pub` line; returns the publication's data text, or `None` when it could not be
    /// rebuilt (counted as a delta failure: a client would treat it as a gap).
    pub(crate) fn take(&mut self, line: &str, counts: &mut Counts) -> Option<&str> {
        counts.pubs += 1;
        let got = if let Some(text) = data_text(line) {
            let epoch = string_after(line, r#""epoch":""#);
            let offset = payload::number_after(line.as_bytes(), br#""offset":"#).map(|(o, _)| o);
            let key = string_after(text, r#""statusType": ""#).unwrap_or_default().to_owned();
            epoch.zip(offset).map(|(e, o)| (e.to_owned(), o, key, text.to_owned()))
        } else {
            counts.deltas += 1;
            self.apply(line)
        };
        let Some((epoch, offset, key, text)) = got else {
            counts.delta_failures += 1;
            return None;
        };
        match &self.last {
            Some((e, last)) if *e == epoch && offset <= *last => counts.out_of_order += 1,
            Some((e, last)) if *e == epoch => counts.gaps += offset - last - 1,
            _ => {}
        }
        self.last = Some((epoch.clone(), offset));
        let slot = self.held.entry(key).or_default();
        *slot = (epoch, offset, text);
        Some(slot.2.as_str())
    }

    /// A delta line: epoch, offset, slot key and the rebuilt text, if its base is held and it
    /// applies.
    fn apply(&self, line: &str) -> Option<(String, u64, String, String)> {
        let f: serde_json::Value = serde_json::from_str(line).ok()?;
        let epoch = f["epoch"].as_str()?;
        let (offset, base) = (f["offset"].as_u64()?, f["base"].as_u64()?);
        let key = f["key"].as_str().unwrap_or_default();
        let (_, _, base_text) = self.held.get(key).filter(|(e, o, _)| e == epoch && *o == base)?;
        let text = fossil_delta::apply(base_text.as_bytes(), f["delta"].as_str()?.as_bytes()).ok()?;
        Some((epoch.to_owned(), offset, key.to_owned(), String::from_utf8(text).ok()?))
    }
}

/// The size of a server's (unmasked) WebSocket frame with `len` payload bytes.
pub(crate) fn frame_size(len: usize) -> u64 {
    let header = match len {
        0..126 => 2,
        126..65536 => 4,
        _ => 10,
    };
    (len + header) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_rebuilds_the_next_status_and_a_missing_base_is_a_failure() {
        let mut device = datastream_statusgen::StatusStream::device("s0", 1);
        let (a, b) = (device.next_data(), device.next_data());
        let delta = String::from_utf8(fossil_delta::delta(b.as_bytes(), a.as_bytes())).expect("ASCII");
        let full = format!(r#"{{"type":"pub","site":"s0","topic":"sitestatus","epoch":"e","offset":4,"data":{a}}}"#);
        let d = serde_json::json!({"type":"pub","site":"s0","topic":"sitestatus","epoch":"e","offset":5,
            "key":"device","base":4,"delta":delta})
        .to_string();
        let (mut v, mut c) = (Viewer::default(), Counts::default());
        assert_eq!(v.take(&full, &mut c), Some(a.as_str()));
        assert_eq!(v.take(&d, &mut c), Some(b.as_str()));
        assert_eq!((c.pubs, c.deltas, c.delta_failures, c.gaps, c.out_of_order), (2, 1, 0, 0, 0));
        // The same delta again: its base (4) is no longer what the slot holds.
        assert_eq!(v.take(&d, &mut c), None);
        assert_eq!(c.delta_failures, 1);
    }
}
