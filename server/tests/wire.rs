//! What a client can make the relay do on the wire (RFC 6455), checked on the raw bytes: control
//! frames count in the connection's byte budget and in its frame rate, a broken frame is answered
//! with the close code that says why before the connection ends, and a handshake whose key is
//! not a 16-byte nonce is refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{procs::*, raw::*, *};
use serde_json::json;
use tokio::{io::AsyncWriteExt, net::TcpSocket};

const V2: &str = "Sec-WebSocket-Protocol: datastream.v2\r\n";
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A ping frame with a 125-byte payload (the largest a control frame may carry) starting `tag`.
fn ping(tag: &[u8]) -> Vec<u8> {
    let mut payload = tag.to_vec();
    payload.resize(125, b'.');
    client_frame(0x89, &payload)
}

/// One socket floods 300,000 pings (39 MB) and never reads. Each ping asks for a pong; before
/// pongs counted in the byte budget they piled up unsent without bound (~130 bytes each). Now
/// what the connection owes stays within its budget, the latest ping is the one answered, and the
/// relay keeps serving everyone else.
#[tokio::test]
async fn a_ping_flood_that_never_reads_is_held_to_the_connection_budget() {
    let relay = Relay::start(&[
        // The rate rule would close the flooder at once; this checks the budget alone.
        ("DATASTREAM_CLIENT_FRAME_RATE", "10000000"),
        ("DATASTREAM_CLIENT_FRAME_BURST", "10000000"),
        ("DATASTREAM_CLIENT_QUEUE_BYTES", "262144"),
        ("DATASTREAM_MAX_MESSAGE_BYTES", "65536"),
    ]);
    let pid = relay.proc.pid();
    let mut reader = connect(&relay.ws_url("/dev?site=mrc")).await;
    let before = status_kb(pid, "VmHWM").unwrap();

    for path in ["/dev?site=flood", "/dev"] {
        // A small receive window, so the kernel holds little of what the relay sends.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(relay.addr).await.unwrap();
        let mut ws = RawWs { stream, buf: Vec::new() };
        let extra = if path == "/dev" { V2 } else { "" };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        ws.send_raw(request.as_bytes()).await;
        let head = within(ws.read_until_headers_end()).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");

        let chunk: Vec<u8> = (0..1000).flat_map(|_| ping(b"flood")).collect();
        let flood = async {
            for _ in 0..300 {
                ws.stream.write_all(&chunk).await.unwrap();
            }
            ws.stream.write_all(&ping(b"last")).await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(120), flood).await.expect("the relay kept reading");

        // Everyone else is still served meanwhile.
        let (status, _) =
            publish_raw(&relay.url("/publish"), json!({"site": "mrc", "topic": "t", "data": 1}).to_string(), None)
                .await;
        assert_eq!(status, 202);
        assert_eq!(next_json(&mut reader).await["data"], 1, "{path}");

        // Now read what the relay owes: the pongs it could queue, ending with the latest ping's
        // (a busy relay may still be working through the flood it has buffered: no silence
        // bound, only an overall one).
        let mut pongs = 0u64;
        let answered = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match ws.frame().await {
                    Some(f) if f.opcode == 0xA => {
                        pongs += 1;
                        if f.payload.starts_with(b"last") {
                            return true;
                        }
                    }
                    Some(_) => {}
                    None => return false,
                }
            }
        })
        .await;
        assert_eq!(answered, Ok(true), "{path}: the latest ping is answered (after {pongs} pongs)");
        // 300,000 pings were answered with far fewer pongs: the rest were coalesced.
        assert!(pongs < 100_000, "{path}: {pongs} pongs");
    }
    let grown = status_kb(pid, "VmHWM").unwrap().saturating_sub(before);
    // 2 × 300,000 pongs would be 76 MB; the budget is 256 KiB (plus one frame of write buffer).
    assert!(grown < 16 * 1024, "the relay grew by {grown} KiB under the ping floods");
}

/// Pings count toward the client frame rate: a flood past the burst is closed as a misbehaving
/// client (3500), on the wire, after the pongs the burst earned.
#[tokio::test]
async fn pings_past_the_frame_rate_close_the_connection() {
    let s = TestServer::start(&["--client-frame-rate", "20", "--client-frame-burst", "60"]).await;
    for (path, extra) in [("/dev?site=mrc", ""), ("/dev", V2)] {
        let mut ws = RawWs::open(s.addr, path, extra).await;
        let flood: Vec<u8> = (0..500).flat_map(|_| ping(b"p")).collect();
        ws.send_raw(&flood).await;
        let mut pongs = 0;
        let code = loop {
            let frame = within(ws.frame()).await.unwrap_or_else(|| panic!("{path}: EOF before a close frame"));
            match frame.opcode {
                0xA => pongs += 1,
                0x8 => break close_code(&frame),
                _ => {}
            }
        };
        assert_eq!(code, 3500, "{path}");
        assert!((1..=75).contains(&pongs), "{path}: {pongs} pongs");
    }
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert!(metric(&metrics, r#"datastream_client_frames_rejected_total{reason="rate_limited"}"#) >= 20.0, "{metrics}");
}

/// RFC 6455 §7.1.7 and §7.4.1: a client that breaks the framing rules is told so with 1002, one
/// whose text is not UTF-8 with 1007, before the TCP connection ends — on both protocols.
#[tokio::test]
async fn a_broken_frame_gets_a_close_frame_naming_the_violation() {
    let s = TestServer::start(&[]).await;
    let unmasked = {
        let mut f = vec![0x81, 0x02];
        f.extend_from_slice(b"hi");
        f
    };
    let long_ping = client_frame(0x89, &[b'x'; 126]);
    let cases: [(&str, Vec<u8>, u16); 7] = [
        ("a reserved bit", client_frame(0xC1, b"{}"), 1002),
        ("a reserved opcode", client_frame(0x83, b"{}"), 1002),
        ("an unmasked frame", unmasked, 1002),
        ("a fragmented ping", client_frame(0x09, b"x"), 1002),
        ("a continuation with nothing to continue", client_frame(0x80, b"x"), 1002),
        ("a control frame over 125 bytes", long_ping, 1002),
        ("text that is not UTF-8", client_frame(0x81, &[b'"', 0xff, 0xfe, b'"']), 1007),
    ];
    for (path, extra) in [("/dev?site=mrc", ""), ("/dev", V2)] {
        for (what, bytes, want) in &cases {
            let mut ws = RawWs::open(s.addr, path, extra).await;
            ws.send_raw(bytes).await;
            let frame = ws.next_non_ping().await.unwrap_or_else(|| panic!("{path}, {what}: EOF without a close frame"));
            let frame = if frame.opcode == 0x1 {
                // v2's hello came first.
                ws.next_non_ping().await.unwrap_or_else(|| panic!("{path}, {what}: EOF without a close frame"))
            } else {
                frame
            };
            assert_eq!(close_code(&frame), *want, "{path}, {what}");
            assert!(within(ws.frame()).await.is_none(), "{path}, {what}: the connection ends after the close");
        }
    }
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, r#"datastream_disconnects_total{reason="protocol_error"}"#), 14.0, "{metrics}");
    // The relay still serves.
    let mut ws = s.legacy("mrc").await;
    s.publish(&json!({"site": "mrc", "topic": "t", "data": 1})).await;
    assert_eq!(next_json(&mut ws).await["data"], 1);
}

/// RFC 6455 §4.2.1: the key must be a base64-encoded 16-byte value; a handshake with any other is
/// refused with 400, not upgraded.
#[tokio::test]
async fn a_handshake_key_that_is_not_16_bytes_is_refused() {
    let s = TestServer::start(&[]).await;
    for (key, want) in [
        (KEY, "HTTP/1.1 101"),
        ("AAAAAAAAAAAAAAAAAAAAAA==", "HTTP/1.1 101"),
        ("abc", "HTTP/1.1 400"),
        ("not base64 at all!!!!!==", "HTTP/1.1 400"),
        ("AAAAAAAAAAAAAAAAAAAA", "HTTP/1.1 400"),             // 15 bytes
        ("AAAAAAAAAAAAAAAAAAAAAAAA", "HTTP/1.1 400"),         // 18 bytes
        ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", "HTTP/1.1 400"), // 22 bytes
    ] {
        for (path, extra) in [("/dev?site=mrc", ""), ("/dev", V2)] {
            let (head, _) = RawWs::try_open(s.addr, path, key, extra).await;
            assert!(head.starts_with(want), "{key:?} on {path}: {head}");
        }
    }
}
