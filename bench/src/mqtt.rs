//! The few MQTT 3.1.1 packets the benchmark needs (QoS 0 only, no keep-alive).

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        p.push(byte);
        if len == 0 {
            break;
        }
    }
    p.extend_from_slice(body);
    p
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT with a clean session and keep-alive off.
pub(crate) fn connect(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    string(&mut body, client_id);
    packet(0x10, &body)
}

/// SUBSCRIBE to one topic at QoS 0.
pub(crate) fn subscribe(topic: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    string(&mut body, topic);
    body.push(0);
    packet(0x82, &body)
}

/// PUBLISH at QoS 0.
pub(crate) fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 2);
    string(&mut body, topic);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// Calls `on_payload` for every complete PUBLISH in `buf`; returns the bytes consumed.
pub(crate) fn publishes(buf: &[u8], mut on_payload: impl FnMut(&[u8])) -> usize {
    let mut at = 0;
    loop {
        let Some(&first) = buf.get(at) else { return at };
        let mut len = 0usize;
        let mut shift = 0;
        let mut i = at + 1;
        loop {
            let Some(&b) = buf.get(i) else { return at };
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = i + len;
        if buf.len() < end {
            return at;
        }
        if first >> 4 == 3 {
            let body = &buf[i..end];
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let id_len = if (first >> 1) & 3 > 0 { 2 } else { 0 };
            if let Some(p) = body.get(2 + topic_len + id_len..) {
                on_payload(p);
            }
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_round_trips_across_split_buffers() {
        let big = vec![b'x'; 300];
        let mut stream = publish("bench/s0", b"{\"seq\":1}");
        stream.extend(publish("bench/s0", &big));
        let mut got = Vec::new();
        let used = publishes(&stream[..stream.len() - 5], |p| got.push(p.to_vec()));
        assert_eq!(got, vec![b"{\"seq\":1}".to_vec()]);
        let used2 = publishes(&stream[used..], |p| got.push(p.to_vec()));
        assert_eq!(used + used2, stream.len());
        assert_eq!(got[1], big);
    }
}
