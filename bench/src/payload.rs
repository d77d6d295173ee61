//! The published messages: a sequence number and a send time inside `data`, padded to a size.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (the clock kernel receive timestamps use).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0))
}

/// The topic every benchmark message is published under.
pub(crate) const TOPIC: &str = "bench";

/// `{"site":…,"topic":"bench","data":{"seq":…,"t":…,"pad":"…"}}`, padded to `size` bytes (when
/// `size` is larger than the unpadded message). This is exactly the frame a legacy subscriber
/// receives, and the payload the brokers carry.
pub(crate) fn message(site: &str, seq: u64, t_ns: u64, size: usize) -> String {
    let head = format!(r#"{{"site":"{site}","topic":"{TOPIC}","data":{{"seq":{seq},"t":{t_ns},"pad":""#);
    let tail = r#""}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(head.len() + pad + tail.len());
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    s
}

/// A status `data` text (statusgen) carrying the tool's sequence number and send time as two
/// more fields at its end, in the status's own layout: `…, "seq": 3, "t": 1700000000123456789}`.
pub(crate) fn with_seq(data: &str, seq: u64, t_ns: u64) -> String {
    let body = data.strip_suffix('}').unwrap_or(data);
    format!("{body}, \"seq\": {seq}, \"t\": {t_ns}}}")
}

/// The decimal number right after the first `key` in `bytes`, and where it ends.
pub(crate) fn number_after(bytes: &[u8], key: &[u8]) -> Option<(u64, usize)> {
    let mut start = bytes.windows(key.len()).position(|w| w == key)? + key.len();
    // Status texts are laid out as Python's `json.dumps` writes them: `"seq": 1`.
    while bytes.get(start) == Some(&b' ') {
        start += 1;
    }
    let mut value = 0u64;
    let mut end = start;
    while let Some(d) = bytes.get(end).filter(|b| b.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        end += 1;
    }
    (end > start).then_some((value, end))
}

/// The `(seq, t)` of a message found anywhere in `bytes` (a legacy frame, a v2 `pub` frame, or a
/// broker payload).
pub(crate) fn extract(bytes: &[u8]) -> Option<(u64, u64)> {
    let (seq, end) = number_after(bytes, br#""seq":"#)?;
    let (t, _) = number_after(&bytes[end..], br#""t":"#)?;
    Some((seq, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_the_size_and_round_trips() {
        let m = message("s1", 42, 1_700_000_000_123_456_789, 200);
        assert_eq!(m.len(), 200);
        let v: serde_json::Value = serde_json::from_str(&m).expect("valid JSON");
        assert_eq!(v["data"]["seq"], 42);
        assert_eq!(extract(m.as_bytes()), Some((42, 1_700_000_000_123_456_789)));
    }

    #[test]
    fn a_status_carries_seq_and_time_and_stays_json() {
        let d = with_seq(r#"{"site": "s0", "statusType": "device", "server_timestamp_ms": 5}"#, 7, 99);
        let v: serde_json::Value = serde_json::from_str(&d).expect("valid JSON");
        assert_eq!((v["seq"].as_u64(), v["statusType"].as_str()), (Some(7), Some("device")));
        assert_eq!(extract(d.as_bytes()), Some((7, 99)));
    }

    #[test]
    fn extract_finds_the_message_inside_a_v2_frame() {
        let f =
            r#"{"type":"pub","site":"s0","topic":"bench","epoch":"ab","offset":7,"data":{"seq":3,"t":9,"pad":"x"}}"#;
        assert_eq!(extract(f.as_bytes()), Some((3, 9)));
        assert_eq!(extract(b"{\"type\":\"ping\"}"), None);
    }
}
