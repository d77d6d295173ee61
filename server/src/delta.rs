//! Delta delivery's encoder: a publication as the difference from the previous publication of its
//! slot (its site, topic and latest key), for v2 subscriptions that asked (`docs/PROTOCOL.md`,
//! "Deltas"). `bench/delta-report.md` measured the candidates on status streams and chose
//! Fossil's delta format.
//!
//! A delta is computed once per publication, by the hub while delivering it, and only when the
//! site has a subscriber on this node that asked for deltas; the outbox then sends each such
//! connection the delta or the full frame, whichever that connection can use
//! ([`crate::hub::Outbox`]). The encoder is a pure function of the two texts, so every node of a
//! cluster computes the same bytes.

/// Smallest data text worth a delta: below it, the frame's `key` and `base` and the delta's own
/// header eat most of the saving.
pub const MIN_DATA_BYTES: usize = 256;

/// Most slots of a site whose last publication the hub keeps as a base, and whose last offset a
/// connection's outbox keeps per subscribed site: a publisher inventing topics must not grow
/// either without bound. Past it the least recently published slot is forgotten; its next
/// publication goes in full and becomes its base again. Photon Ranch's sites have a handful.
pub const MAX_SLOTS: usize = 64;

/// A delta is sent only if its frame is at most this share of the full data text (in percent):
/// past it a viewer saves less than half and pays for applying it on top.
pub const MAX_FRAME_PERCENT: usize = 50;

/// The Fossil delta that turns `base` into `target`, as text; `None` when a delta is not worth
/// computing: a small target, or a text that is not ASCII (the delta's counts are bytes, which a
/// client applying it to a JavaScript string can only match for ASCII texts; the status service
/// writes ASCII).
pub fn fossil(base: &str, target: &str) -> Option<String> {
    if target.len() < MIN_DATA_BYTES || !target.is_ascii() || !base.is_ascii() {
        return None;
    }
    // The crate takes the target first. Its output is the target's literal bytes (ASCII) between
    // base-64 digits and punctuation.
    String::from_utf8(fossil_delta::delta(target, base)).ok()
}

/// Whether a delta frame of `frame_len` bytes saves enough over sending `data_len` bytes of data.
pub fn worth_it(frame_len: usize, data_len: usize) -> bool {
    frame_len * 100 <= data_len * MAX_FRAME_PERCENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use datastream_statusgen::StatusStream;

    #[test]
    fn applying_the_delta_gives_the_target() {
        for mut stream in [StatusStream::device("mrc", 7), StatusStream::weather("mrc", 7)] {
            let mut base = stream.next_data();
            for _ in 0..20 {
                let target = stream.next_data();
                let delta = fossil(&base, &target).expect("status texts are ASCII and large");
                let applied = fossil_delta::apply(base.as_bytes(), delta.as_bytes()).expect("applies");
                assert_eq!(applied, target.as_bytes());
                assert!(delta.len() < target.len() / 2, "{} of {}", delta.len(), target.len());
                base = target;
            }
        }
    }

    #[test]
    fn small_or_non_ascii_texts_get_none() {
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(300));
        assert!(fossil(&big, r#"{"a":1}"#).is_none(), "below the minimum");
        assert!(fossil(&big, &big.replace('x', "é")).is_none());
        assert!(fossil(&big.replace('x', "é"), &big).is_none());
        assert!(fossil(&big, &big.replace("xx", "xy")).is_some());
        assert!(worth_it(50, 100) && !worth_it(51, 100));
    }
}
