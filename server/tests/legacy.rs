//! The original service's protocol, unchanged: `/<stage>?site=`, `updatesubscribersite`, bare
//! `{site, topic, data}` frames, with every real message shape.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn handshake_needs_a_site_and_the_stage_path() {
    let s = TestServer::start(&[]).await;
    for (path, want, body) in [
        ("/dev", 400, "missing query parameter: site"),
        ("/dev?site=", 400, "missing query parameter: site"),
        ("/dev?site=a%20b", 400, "invalid query parameter site"),
        ("/prod?site=mrc", 404, "not found"),
        ("/", 404, "not found"),
    ] {
        let err = tokio_tungstenite::connect_async(s.ws_url(path)).await.expect_err(path);
        let tokio_tungstenite::tungstenite::Error::Http(resp) = err else { panic!("{path}: {err}") };
        assert_eq!(resp.status().as_u16(), want, "{path}");
        let text = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
        assert!(text.contains(body), "{path}: {text}");
    }
    // A configured stage moves the endpoint.
    let prod = TestServer::start(&["--stage", "prod"]).await;
    let mut ws = connect(&prod.ws_url("/prod?site=mrc")).await;
    prod.publish(&json!({"site": "mrc", "topic": "t", "data": 1})).await;
    assert_eq!(next_json(&mut ws).await["data"], 1);
}

#[tokio::test]
async fn every_fixture_arrives_as_published() {
    let s = TestServer::start(&[]).await;
    for (name, text) in fixtures() {
        let published: Value = serde_json::from_str(&text).unwrap();
        let site = published["site"].as_str().unwrap();
        let mut ws = s.legacy(site).await;
        let (status, body) = publish_raw(&s.url("/publish"), text.clone(), None).await;
        assert_eq!(status, 202, "{name}: {body}");
        let frame = next_text(&mut ws).await;
        let received: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(received, published, "{name}");
        // Exactly the three keys, in the original's order.
        assert!(frame.starts_with(&format!(r#"{{"site":"{site}","topic":"#)), "{name}: {frame}");
        let keys: Vec<_> = received.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 3, "{name}");
    }
}

#[tokio::test]
async fn data_is_forwarded_byte_for_byte() {
    let s = TestServer::start(&[]).await;
    let mut ws = s.legacy("tst").await;
    let body = r#"{"site":"tst","topic":"t","data":{"big":123456789012345678901234567890,"f":1.50,"s":"é\u00e9"}}"#;
    let (status, _) = publish_raw(&s.url("/publish"), body.into(), None).await;
    assert_eq!(status, 202);
    assert_eq!(next_text(&mut ws).await, body);
    // A JSON string stays a string.
    let body = r#"{"site": "tst", "topic": "testing", "data": "{\"text\": \"hello, site tst\"}"}"#;
    publish_raw(&s.url("/publish"), body.into(), None).await;
    let got = next_json(&mut ws).await;
    assert_eq!(got["data"], Value::String(r#"{"text": "hello, site tst"}"#.into()));
}

#[tokio::test]
async fn fan_out_reaches_every_subscriber_of_the_site_only() {
    let s = TestServer::start(&[]).await;
    let mut mrc: Vec<Ws> = Vec::new();
    for _ in 0..20 {
        mrc.push(s.legacy("mrc").await);
    }
    let mut saf = s.legacy("saf").await;
    eventually("subscriptions registered", || s.state.hub.subscriber_count("mrc") == 20).await;
    for n in 0..5 {
        s.publish(&json!({"site": "mrc", "topic": "weather", "data": n})).await;
    }
    for ws in &mut mrc {
        for n in 0..5 {
            assert_eq!(next_json(ws).await["data"], n, "in order");
        }
    }
    expect_silence(&mut saf, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn updatesubscribersite_moves_the_connection() {
    let s = TestServer::start(&[]).await;
    let mut ws = s.legacy("mrc").await;
    send_text(&mut ws, r#"{"action": "updatesubscribersite", "site": "saf"}"#).await;
    eventually("moved to saf", || s.state.hub.subscriber_count("saf") == 1).await;
    assert_eq!(s.state.hub.subscriber_count("mrc"), 0);
    s.publish(&json!({"site": "mrc", "topic": "t", "data": "old"})).await;
    s.publish(&json!({"site": "saf", "topic": "t", "data": "new"})).await;
    let got = next_json(&mut ws).await;
    assert_eq!((got["site"].as_str(), got["data"].as_str()), (Some("saf"), Some("new")));
    // Moving to the same site again changes nothing and answers nothing.
    send_text(&mut ws, r#"{"action": "updatesubscribersite", "site": "saf"}"#).await;
    expect_silence(&mut ws, Duration::from_millis(200)).await;
    assert_eq!(s.state.hub.subscriber_count("saf"), 1);
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_keeps_working() {
    let s = TestServer::start(&[]).await;
    let mut ws = s.legacy("mrc").await;
    for (frame, code) in [
        ("not json", "invalid_json"),
        (r#"{"action":"sendmessage"}"#, "unknown_type"),
        (r#"{"site":"x"}"#, "unknown_type"),
        (r#"{"action":"updatesubscribersite"}"#, "invalid_frame"),
        (r#"{"action":"updatesubscribersite","site":"no/slash"}"#, "invalid_site"),
        (r#"{"action":"updatesubscribersite","site":""}"#, "invalid_site"),
    ] {
        send_text(&mut ws, frame).await;
        let err = next_json(&mut ws).await;
        assert_eq!(err["type"], "error", "{frame}");
        assert_eq!(err["code"], code, "{frame}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Still subscribed to mrc, still served.
    s.publish(&json!({"site": "mrc", "topic": "t", "data": 1})).await;
    assert_eq!(next_json(&mut ws).await["data"], 1);
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, r#"datastream_client_frames_rejected_total{reason="invalid_site"}"#), 2.0);
}

#[tokio::test]
async fn a_client_that_keeps_sending_garbage_is_closed_terminally() {
    let s = TestServer::start(&[]).await;
    let mut ws = s.legacy("mrc").await;
    for _ in 0..11 {
        send_text(&mut ws, "garbage").await;
    }
    let (code, reason, errors) = expect_close(&mut ws).await;
    assert_eq!(code, 3500, "{reason}");
    assert_eq!(errors, 10, "ten error frames before the close");
    eventually("registry emptied", || s.state.hub.subscriber_count("mrc") == 0).await;
}

#[tokio::test]
async fn oversized_client_frames_close_the_connection_and_others_are_unaffected() {
    let s = TestServer::start(&["--max-client-frame-bytes", "1024"]).await;
    let mut bad = s.legacy("mrc").await;
    let mut good = s.legacy("mrc").await;
    send_text(&mut bad, &"x".repeat(4096)).await;
    let (code, _, _) = expect_close(&mut bad).await;
    assert_eq!(code, 3502, "message too big");
    s.publish(&json!({"site": "mrc", "topic": "t", "data": 1})).await;
    assert_eq!(next_json(&mut good).await["data"], 1);
}

#[tokio::test]
async fn closed_connections_leave_the_registry_at_once() {
    let s = TestServer::start(&[]).await;
    let ws = s.legacy("mrc").await;
    let mut other = s.legacy("saf").await;
    eventually("both registered", || s.state.hub.subscriber_count("mrc") == 1).await;
    drop(ws);
    eventually("mrc subscriber removed", || s.state.hub.subscriber_count("mrc") == 0).await;
    other.close(None).await.unwrap();
    eventually("saf subscriber removed", || s.state.hub.subscriber_count("saf") == 0).await;
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, r#"datastream_connections{protocol="legacy"}"#), 0.0);
    assert_eq!(metric(&metrics, "datastream_subscriptions "), 0.0);
    assert_eq!(metric(&metrics, "datastream_sites "), 0.0);
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_without_delaying_others() {
    // Queue cap 64 KiB; 200 messages of ~60 KiB far exceed it plus the kernel's socket buffers.
    let s = TestServer::start(&["--client-queue-bytes", "65536", "--max-message-bytes", "65536"]).await;
    let mut slow = s.legacy("mrc").await;
    let mut fast = s.legacy("mrc").await;
    eventually("registered", || s.state.hub.subscriber_count("mrc") == 2).await;
    let blob = "x".repeat(60_000);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 200 {
            next_json(&mut fast).await;
            n += 1;
        }
        n
    });
    for n in 0..200 {
        let (status, _) = s.publish(&json!({"site": "mrc", "topic": "t", "data": {"n": n, "blob": blob}})).await;
        assert_eq!(status, 202);
    }
    assert_eq!(within(reader).await.unwrap(), 200, "the fast client got everything");
    let (code, reason, got) = expect_close(&mut slow).await;
    assert_eq!(code, 3000, "{reason}");
    assert!(got < 200, "the slow client was cut off before the end ({got})");
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, r#"datastream_disconnects_total{reason="slow_consumer"}"#), 1.0);
    assert!(metric(&metrics, r#"datastream_messages_dropped_total{reason="slow_consumer"}"#) >= 1.0);
}

#[tokio::test]
async fn silent_clients_time_out_and_live_ones_stay() {
    let s = TestServer::start(&["--ping-interval", "100ms", "--client-timeout", "400ms"]).await;
    let mut silent = s.legacy("mrc").await;
    let mut live = s.legacy("mrc").await;
    // `live` keeps reading, so its client library answers the server's pings.
    let keep = tokio::spawn(async move {
        expect_silence(&mut live, Duration::from_millis(1200)).await;
        live
    });
    // `silent` reads nothing (so answers no ping) for longer than the timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (code, reason, _) = expect_close(&mut silent).await;
    assert_eq!(code, 3001, "{reason}");
    let mut live = within(keep).await.unwrap();
    s.publish(&json!({"site": "mrc", "topic": "t", "data": 1})).await;
    assert_eq!(next_json(&mut live).await["data"], 1);
}

#[tokio::test]
async fn shutdown_delivers_what_was_queued_then_closes_with_1001() {
    let s = TestServer::start(&[]).await;
    let mut ws = s.legacy("mrc").await;
    for n in 0..50 {
        s.publish(&json!({"site": "mrc", "topic": "t", "data": n})).await;
    }
    let state = s.state.clone();
    let done = tokio::spawn(s.shutdown());
    let (code, reason, texts) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    assert_eq!(texts, 50, "everything queued before shutdown was delivered");
    within(done).await.unwrap().expect("clean shutdown");
    assert!(state.is_draining());
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_within_the_client_timeout() {
    // The queue cap is larger than what is published, so only the blocked write can end this.
    let s = TestServer::start(&[
        "--ping-interval",
        "200ms",
        "--client-timeout",
        "800ms",
        "--client-queue-bytes",
        "67108864",
        "--max-message-bytes",
        "65536",
    ])
    .await;
    let mut stalled = s.legacy("mrc").await; // never read again
    eventually("registered", || s.state.hub.subscriber_count("mrc") == 1).await;
    // It keeps talking (pings, every 100 ms), so it is never silent: only the blocked write can
    // end it, not the heartbeat timeout, however slowly this machine publishes.
    let talker = tokio::spawn(async move {
        use futures_util::SinkExt;
        for _ in 0..200 {
            if stalled.send(tokio_tungstenite::tungstenite::Message::Ping(Default::default())).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let blob = "x".repeat(60_000);
    // 18 MB: more than loopback's socket buffers hold, so the session's write blocks.
    for n in 0..300 {
        s.publish(&json!({"site": "mrc", "topic": "t", "data": {"n": n, "blob": blob}})).await;
    }
    eventually("the stalled session ended", || s.state.hub.subscriber_count("mrc") == 0).await;
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, r#"datastream_disconnects_total{reason="write_timeout"}"#), 1.0, "{metrics}");
    talker.abort();
}

#[tokio::test]
async fn an_oversized_frame_still_in_flight_gets_a_clean_close_not_a_reset() {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Error;
    let s = TestServer::start(&["--max-client-frame-bytes", "1024"]).await;
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (mut ws, _) = within(tokio_tungstenite::client_async(s.ws_url("/dev?site=mrc"), tcp)).await.unwrap();
    // One masked text frame announcing 64 KiB, written whole: the relay refuses it after reading
    // the header, with most of the payload still unread in its socket. Closing a socket with
    // unread data makes the kernel send a reset, which browsers report as 1006 instead of the
    // close frame that came before it.
    let len = 64 * 1024u64;
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.resize(frame.len() + len as usize, b'x');
    within(ws.get_mut().write_all(&frame)).await.unwrap();
    let (code, reason, _) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (3502, "frame too large"));
    // Then the connection ends in an orderly way.
    let end = within(async {
        loop {
            match ws.next().await {
                Some(Ok(_)) => continue,
                None | Some(Err(Error::ConnectionClosed)) => return Ok(()),
                Some(Err(e)) => return Err(e),
            }
        }
    })
    .await;
    assert!(end.is_ok(), "connection reset instead of closed: {end:?}");
}
