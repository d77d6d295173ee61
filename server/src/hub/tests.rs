use super::*;
use std::future::poll_fn;

use crate::publication::{Position, Validator};
use crate::wire::Wire;
use datastream_protocol::NameRules;

fn publication(site: &str, data: &str) -> Arc<Publication> {
    let v = Validator { names: NameRules::default(), max_message_bytes: 1 << 20 };
    let req = v.parse(&format!(r#"{{"site":"{site}","topic":"t","data":{data}}}"#)).unwrap();
    Arc::new(Publication::new(&req, Position { epoch: "e".into(), offset: 1 }))
}

#[test]
fn delivers_to_the_site_only_and_tracks_first_and_last() {
    let hub = Hub::new(Arc::new(Metrics::new()));
    let (a, mut rx_a) = Outbox::new(1 << 20, Framing::Legacy);
    let (b, mut rx_b) = Outbox::new(1 << 20, Framing::Legacy);
    let mrc: Arc<str> = "mrc".into();
    let saf: Arc<str> = "saf".into();
    assert!(hub.subscribe(&mrc, 1, Subscriber { outbox: a.clone(), topics: None, delta: false }));
    assert!(
        !hub.subscribe(&mrc, 1, Subscriber { outbox: a.clone(), topics: None, delta: false }),
        "re-subscribe is not first"
    );
    assert!(hub.subscribe(&saf, 2, Subscriber { outbox: b, topics: None, delta: false }));
    assert_eq!(hub.deliver(&publication("mrc", "1")), 1);
    assert_eq!(rx_a.try_recv().unwrap().site.as_ref(), "mrc");
    assert!(rx_b.try_recv().is_err());
    assert!(hub.unsubscribe("mrc", 1));
    assert!(!hub.unsubscribe("mrc", 1));
    assert_eq!(hub.deliver(&publication("mrc", "2")), 0);
    assert_eq!(hub.subscriber_count("saf"), 1);
}

#[test]
fn outbox_trips_once_the_byte_cap_is_passed() {
    let p = publication("mrc", &format!("\"{}\"", "x".repeat(20)));
    let len = p.queued_len();
    let (outbox, mut rx) = Outbox::new(3 * len + len / 2, Framing::Legacy);
    let metrics = Metrics::new();
    let mut batch = Hub::new(Arc::new(Metrics::new())).batch();
    for _ in 0..3 {
        assert!(outbox.push(&p, &mut batch, &metrics));
    }
    assert_eq!(outbox.queued_bytes(), 3 * len);
    assert!(!outbox.push(&p, &mut batch, &metrics), "over the cap is refused");
    assert!(outbox.is_overflowed());
    // Once tripped, nothing more is queued even after the session drained.
    while rx.try_recv().is_ok() {}
    assert_eq!(outbox.queued_bytes(), 0);
    assert!(!outbox.push(&p, &mut batch, &metrics));
}

#[test]
fn an_empty_connection_takes_any_one_publication() {
    let p = publication("mrc", &format!("\"{}\"", "x".repeat(200)));
    let (outbox, _rx) = Outbox::new(100, Framing::Legacy);
    let metrics = Metrics::new();
    let mut batch = Hub::new(Arc::new(Metrics::new())).batch();
    assert!(outbox.push(&p, &mut batch, &metrics), "larger than the budget, but nothing else is owed");
    assert!(!outbox.push(&p, &mut batch, &metrics));
}

#[tokio::test]
async fn close_all_reaches_every_connection_once_including_later_ones() {
    let hub = Hub::new(Arc::new(Metrics::new()));
    let (subscribed, mut rx_subscribed) = Outbox::new(1 << 20, Framing::Legacy);
    let (idle, mut rx_idle) = Outbox::new(1 << 20, Framing::Legacy);
    let a = hub.connect(subscribed.clone());
    let b = hub.connect(idle);
    hub.subscribe(&Arc::from("mrc"), a, Subscriber { outbox: subscribed, topics: None, delta: false });
    assert_eq!(hub.close_all(), 2);
    assert!(matches!(rx_subscribed.recv().await, Event::Closing));
    assert!(matches!(rx_idle.recv().await, Event::Closing));
    // Asked once: what follows is publications, not the request again.
    hub.deliver(&publication("mrc", "1"));
    assert!(matches!(rx_subscribed.recv().await, Event::Publication(_)));
    let again = tokio::time::timeout(std::time::Duration::from_millis(50), rx_idle.recv()).await;
    assert!(again.is_err(), "closing is reported once");

    // A connection that registers while the server is closing is asked at once.
    let (late, mut rx_late) = Outbox::new(1 << 20, Framing::Legacy);
    let c = hub.connect(late);
    assert!(matches!(rx_late.recv().await, Event::Closing));
    for conn in [a, b, c] {
        hub.disconnect(conn);
    }
    assert_eq!(hub.close_all(), 0);
}

#[tokio::test]
async fn a_waiting_session_is_woken_by_a_push() {
    let (outbox, mut rx) = Outbox::new(1 << 20, Framing::Legacy);
    let waiter = tokio::spawn(async move { matches!(rx.recv().await, Event::Publication(_)) });
    tokio::task::yield_now().await;
    let mut batch = Hub::new(Arc::new(Metrics::new())).batch();
    assert!(outbox.push(&publication("mrc", "1"), &mut batch, &Metrics::new()));
    assert!(tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap());
}

/// A connected pair: the relay's end as a [`Wire`] carrying frames, and the client's end.
/// `small`: both ends' socket buffers as small as the kernel allows, so a client that does not
/// read fills them at once.
async fn wire_pair(small: bool) -> (Arc<Wire>, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if small {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let client = socket.connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    if small {
        socket2::SockRef::from(&server).set_send_buffer_size(4096).unwrap();
    }
    let wire = Arc::new(Wire::new(server));
    wire.set_frames(usize::MAX);
    (wire, client)
}

/// Reads until `want` text messages have arrived whole; returns them.
async fn read_messages(client: &mut tokio::net::TcpStream, want: usize) -> Vec<String> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let got = crate::wire::decode_text_frames(&bytes);
            if got.len() >= want {
                return got;
            }
            let mut buf = [0u8; 64 * 1024];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed after {} messages", got.len());
            bytes.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("messages did not arrive")
}

fn subscribed(hub: &Hub, framing: Framing, max_bytes: usize) -> (Arc<Outbox>, Inbox) {
    let (outbox, rx) = Outbox::new(max_bytes, framing);
    let conn = hub.connect(outbox.clone());
    hub.subscribe(&Arc::from("mrc"), conn, Subscriber { outbox: outbox.clone(), topics: None, delta: false });
    (outbox, rx)
}

#[tokio::test]
async fn the_fan_out_writes_a_batch_itself_without_waking_the_session() {
    for framing in [Framing::Legacy, Framing::Packed] {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (wire, mut client) = wire_pair(false).await;
        let (outbox, mut rx) = subscribed(&hub, framing, 1 << 20);
        outbox.attach(wire.clone());
        assert!(outbox.give_to_fanout());
        let publications: Vec<_> = (1..=3).map(|n| publication("mrc", &n.to_string())).collect();
        let mut batch = hub.batch();
        for p in &publications {
            assert_eq!(hub.deliver_to(p, &mut batch), 1);
        }
        let mut probe = [0u8; 16];
        let early = client.try_read(&mut probe);
        assert!(early.is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock), "written before the flush");
        batch.flush();
        assert_eq!(hub.write_pending(), 3, "one write for the three");
        let expected: Vec<String> = match framing {
            Framing::Legacy => publications.iter().map(|p| p.legacy_frame().to_string()).collect(),
            Framing::Packed => {
                vec![publications.iter().map(|p| p.v2_frame().to_string()).collect::<Vec<_>>().join("\n")]
            }
        };
        assert_eq!(read_messages(&mut client, expected.len()).await, expected, "{framing:?}");
        assert!(futures_util::FutureExt::now_or_never(rx.recv()).is_none(), "the session was woken");
        assert_eq!(outbox.queued_bytes(), 0);
    }
}

#[tokio::test]
async fn the_writer_tasks_write_what_batches_leave_them() {
    let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
    let writers: Vec<_> = (0..hub.writers()).map(|i| tokio::spawn(hub.clone().run_writer(i))).collect();
    let (wire, mut client) = wire_pair(false).await;
    let (outbox, _rx) = subscribed(&hub, Framing::Legacy, 1 << 20);
    outbox.attach(wire.clone());
    assert!(outbox.give_to_fanout());
    for n in 1..=3 {
        hub.deliver(&publication("mrc", &n.to_string()));
    }
    let got = read_messages(&mut client, 3).await;
    assert_eq!(got, (1..=3).map(|n| format!(r#"{{"site":"mrc","topic":"t","data":{n}}}"#)).collect::<Vec<_>>());
    for writer in writers {
        writer.abort();
    }
}

#[tokio::test]
async fn while_the_session_writes_publications_wait_for_it() {
    let hub = Hub::new(Arc::new(Metrics::new()));
    let (wire, mut client) = wire_pair(false).await;
    let (outbox, mut rx) = subscribed(&hub, Framing::Legacy, 1 << 20);
    outbox.attach(wire.clone());
    assert!(outbox.give_to_fanout());
    outbox.take_from_fanout();
    hub.deliver(&publication("mrc", "1"));
    assert!(!outbox.give_to_fanout(), "the session has a publication to write first");
    match futures_util::FutureExt::now_or_never(rx.recv()) {
        Some(Event::Publication(p)) => assert_eq!(p.data.get(), "1"),
        other => panic!("the session should have been woken with the publication: {other:?}"),
    }
    assert!(outbox.give_to_fanout());
    hub.deliver(&publication("mrc", "2"));
    assert_eq!(hub.write_pending(), 1);
    assert_eq!(read_messages(&mut client, 1).await, [r#"{"site":"mrc","topic":"t","data":2}"#]);
    assert!(futures_util::FutureExt::now_or_never(rx.recv()).is_none());
}

#[tokio::test]
async fn unsent_bytes_are_left_to_the_session_and_the_budget_still_holds() {
    let hub = Hub::new(Arc::new(Metrics::new()));
    let (wire, mut client) = wire_pair(true).await;
    let (outbox, mut rx) = subscribed(&hub, Framing::Legacy, 256 * 1024);
    outbox.attach(wire.clone());
    assert!(outbox.give_to_fanout());
    let pad = "x".repeat(16 * 1024);
    // The client reads nothing: the socket fills, then the unsent bytes grow past the budget.
    let mut accepted = 0;
    let mut events = Vec::new();
    for n in 0..1000 {
        if outbox.is_overflowed() {
            break;
        }
        accepted += hub.deliver(&publication("mrc", &format!(r#"{{"n":{n},"pad":"{pad}"}}"#)));
        hub.write_pending();
        if let Some(event) = futures_util::FutureExt::now_or_never(rx.recv()) {
            events.push(format!("{event:?}").split('(').next().unwrap_or_default().to_owned());
        }
    }
    assert!(outbox.is_overflowed(), "the cap never tripped");
    assert_eq!(events.first().map(String::as_str), Some("Unsent"), "{events:?}");
    assert!(matches!(futures_util::FutureExt::now_or_never(rx.recv()), Some(Event::Overflowed)));
    assert_eq!(hub.deliver(&publication("mrc", "0")), 0, "refused once over the cap");
    // Whatever was accepted reaches the client whole and in order once it reads.
    let flush = tokio::spawn({
        let wire = wire.clone();
        async move { poll_fn(|cx| wire.poll_flush(cx)).await }
    });
    let got = read_messages(&mut client, accepted).await;
    flush.await.unwrap().unwrap();
    assert_eq!(got.len(), accepted);
    for (n, text) in got.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["data"]["n"], n, "message {n} out of order or broken");
    }
}

#[test]
fn forgetting_a_site_drops_what_is_queued_for_it() {
    let hub = Hub::new(Arc::new(Metrics::new()));
    let (outbox, mut rx) = subscribed(&hub, Framing::Legacy, 1 << 20);
    hub.subscribe(&Arc::from("saf"), 99, Subscriber { outbox: outbox.clone(), topics: None, delta: false });
    hub.deliver(&publication("mrc", "1"));
    let kept = publication("saf", "2");
    hub.deliver(&kept);
    hub.deliver(&publication("mrc", "3"));
    outbox.forget("mrc");
    assert_eq!(outbox.queued_bytes(), kept.queued_len(), "the forgotten ones' share is freed");
    assert_eq!(rx.try_recv().unwrap().data.get(), "2");
    assert!(rx.try_recv().is_err());
    assert_eq!(outbox.queued_bytes(), 0);
}

#[test]
fn publications_below_a_floor_are_skipped_until_the_site_is_forgotten() {
    let hub = Hub::new(Arc::new(Metrics::new()));
    let (outbox, mut rx) = subscribed(&hub, Framing::Packed, 1 << 20);
    let at = |offset: u64, epoch: &str| {
        let data = serde_json::value::RawValue::from_string(offset.to_string()).unwrap();
        let position = Position { epoch: epoch.into(), offset };
        Arc::new(Publication::from_parts("mrc".into(), "t".into(), data, position))
    };
    // Queued before the floor is set (a subscribe's snapshot being read): dropped then.
    hub.deliver(&at(2, "e"));
    hub.deliver(&at(6, "e"));
    outbox.set_floor(&Arc::from("mrc"), &Arc::from("e"), 5);
    assert_eq!(outbox.queued_bytes(), at(6, "e").queued_len(), "the dropped one's share is freed");
    for p in [at(4, "e"), at(5, "e"), at(3, "other")] {
        hub.deliver(&p);
    }
    let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).map(|p| p.position.offset).collect();
    assert_eq!(got, [6, 5, 3], "below the floor in its epoch is skipped, another epoch is not");
    outbox.forget("mrc");
    hub.deliver(&at(4, "e"));
    assert_eq!(rx.try_recv().map(|p| p.position.offset), Ok(4), "the floor went with the site");
}

/// A publish body larger than a connection's budget (14 × 100 KB against 1 MiB) is not a slow
/// client: the socket takes what is queued as the batch arrives, and a client that reads gets
/// all of it (it used to be closed with 3000 and get none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_budget_reaches_a_reading_client() {
    for framing in [Framing::Legacy, Framing::Packed] {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (wire, mut client) = wire_pair(false).await;
        let (outbox, _rx) = subscribed(&hub, framing, 1 << 20);
        outbox.attach(wire.clone());
        assert!(outbox.give_to_fanout());
        let pad = "x".repeat(100 * 1024);
        let publications: Vec<_> =
            (0..14).map(|n| publication("mrc", &format!(r#"{{"n":{n},"pad":"{pad}"}}"#))).collect();
        // Each is over the packing limit: one frame each in both framings.
        let reader = tokio::spawn(async move { read_messages(&mut client, 14).await });
        let mut batch = hub.batch();
        for p in &publications {
            assert_eq!(hub.deliver_to(p, &mut batch), 1, "{framing:?}: refused");
        }
        drop(batch);
        hub.write_pending();
        assert!(!outbox.is_overflowed(), "{framing:?}");
        let flush = tokio::spawn({
            let wire = wire.clone();
            async move { poll_fn(|cx| wire.poll_flush(cx)).await }
        });
        let got = reader.await.unwrap();
        flush.await.unwrap().unwrap();
        let numbers: Vec<u64> = got
            .iter()
            .flat_map(|frame| frame.split('\n'))
            .map(|text| serde_json::from_str::<serde_json::Value>(text).unwrap())
            .map(|v| v["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..14).collect::<Vec<_>>(), "{framing:?}");
    }
}

/// A device status at `offset`, keyed as the default latest keys key it.
fn status(offset: u64, data: String) -> Arc<Publication> {
    let data = serde_json::value::RawValue::from_string(data).unwrap();
    let position = Position { epoch: "e".into(), offset };
    let p = Publication::from_parts("mrc".into(), "sitestatus".into(), data, position);
    Arc::new(p.with_latest_key(Some("device".into())))
}

#[test]
fn a_delta_goes_only_to_a_connection_that_was_sent_its_base() {
    let hub = Hub::new(Arc::new(Metrics::new()));
    let (outbox, mut rx) = Outbox::new(1 << 20, Framing::Packed);
    let (plain, mut plain_rx) = Outbox::new(1 << 20, Framing::Packed);
    let (site, epoch): (Arc<str>, Arc<str>) = ("mrc".into(), "e".into());
    hub.subscribe(&site, 1, Subscriber { outbox: outbox.clone(), topics: None, delta: true });
    hub.subscribe(&site, 2, Subscriber { outbox: plain.clone(), topics: None, delta: false });
    outbox.track_deltas(&site, &epoch, true, []);
    let mut device = datastream_statusgen::StatusStream::device("mrc", 3);
    let p: Vec<_> = (1..=4).map(|offset| status(offset, device.next_data())).collect();
    let mut next = |p: &Arc<Publication>| {
        hub.deliver(p);
        let mut sent = [Queued { publication: rx.try_recv().unwrap(), delta: false }];
        outbox.written(&mut sent);
        let mut other = [Queued { publication: plain_rx.try_recv().unwrap(), delta: false }];
        plain.written(&mut other);
        assert!(!other[0].delta, "a subscription without deltas gets full frames");
        assert!(Arc::ptr_eq(&sent[0].publication, p));
        sent[0].delta
    };
    assert!(!next(&p[0]), "the slot's first publication on the connection is full");
    assert!(next(&p[1]), "the next is a delta from it");
    assert_eq!(p[1].delta().map(|(base, _)| base), Some(1));
    assert!(Framing::Packed.text(&Queued { publication: p[1].clone(), delta: true }).contains(r#""base":1,"delta":"#));
    // The connection's record says it last got offset 1 (as after a subscribe that sent it):
    // offset 3's delta applies to 2, which it was not sent.
    outbox.track_deltas(&site, &epoch, true, [&p[0]]);
    assert!(!next(&p[2]), "full: its base is not the connection's");
    assert!(next(&p[3]), "and the base of the next");
    // Without deltas (an unsubscribe, or a subscribe that did not ask), the delta is not used.
    outbox.track_deltas(&site, &epoch, false, []);
    let p5 = status(5, device.next_data());
    assert!(!next(&p5));
    assert!(p5.delta().is_some(), "computed all the same: the hub still counts a subscriber with deltas");
}

#[test]
fn invented_slots_are_bounded_in_the_hub_and_the_outbox_and_the_forgotten_go_full() {
    let hub = Hub::new(Arc::new(Metrics::new()));
    let (outbox, mut rx) = Outbox::new(1 << 30, Framing::Packed);
    let (site, epoch): (Arc<str>, Arc<str>) = ("mrc".into(), "e".into());
    hub.subscribe(&site, 1, Subscriber { outbox: outbox.clone(), topics: None, delta: true });
    outbox.track_deltas(&site, &epoch, true, []);
    let mut device = datastream_statusgen::StatusStream::device("mrc", 5);
    let mut offset = 0;
    let mut publish = |key: String| {
        offset += 1;
        let data = serde_json::value::RawValue::from_string(device.next_data()).unwrap();
        let p =
            Publication::from_parts(site.clone(), "sitestatus".into(), data, Position { epoch: epoch.clone(), offset });
        let p = Arc::new(p.with_latest_key(Some(key.into())));
        hub.deliver(&p);
        let mut sent = [Queued { publication: rx.try_recv().unwrap(), delta: false }];
        outbox.written(&mut sent);
        (p, sent[0].delta)
    };
    // A publisher inventing kinds: every one new, none kept past the bound.
    for i in 0..delta::MAX_SLOTS * 3 {
        let (_, delta) = publish(format!("kind{i}"));
        assert!(!delta, "a slot's first publication is full");
    }
    let kept = hub.shard(&site).read().unwrap().get(&site).map(|s| s.slots.lock().unwrap().len());
    assert_eq!(kept, Some(delta::MAX_SLOTS), "the hub keeps at most MAX_SLOTS bases");
    assert_eq!(outbox.delta_slots(&site), delta::MAX_SLOTS, "and the connection as many offsets");
    // The most recent slot is still a base on both sides; a forgotten one starts again in full.
    let (p, delta) = publish(format!("kind{}", delta::MAX_SLOTS * 3 - 1));
    assert!(delta && p.delta().is_some(), "a kept slot still gets its delta");
    let (_, delta) = publish("kind0".into());
    assert!(!delta, "a forgotten slot goes in full");
    let (_, delta) = publish("kind0".into());
    assert!(delta, "and is a base again");
}
