//! The demo publisher and the static file service that carries the demo dashboard.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn static_files_are_served_at_the_root_when_configured() {
    let dir = std::env::temp_dir().join(format!("datastream-static-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html><title>dashboard</title>").unwrap();
    std::fs::write(dir.join("assets/app.js"), "console.log(1)").unwrap();
    let s = TestServer::start(&["--static-dir", dir.to_str().unwrap()]).await;
    let (status, body) = get_text(&s.url("/")).await;
    assert_eq!((status, body.contains("dashboard")), (200, true));
    assert_eq!(get_text(&s.url("/assets/app.js")).await.0, 200);
    assert_eq!(get_text(&s.url("/nope.js")).await.0, 404);
    // The relay's own endpoints are unaffected.
    assert_eq!(get_text(&s.url("/healthz")).await.0, 200);
    let mut ws = s.legacy("mrc").await;
    s.publish(&serde_json::json!({"site": "mrc", "topic": "t", "data": 1})).await;
    assert_eq!(next_json(&mut ws).await["data"], 1);
    std::fs::remove_dir_all(&dir).unwrap();

    // Without the setting there is nothing at /.
    let plain = TestServer::start(&[]).await;
    assert_eq!(get_text(&plain.url("/")).await.0, 404);
    // A directory without index.html is a configuration error naming the setting.
    let err = datastream::Server::bind(config(&["--static-dir", "/nonexistent"])).await.unwrap_err();
    assert!(err.to_string().contains("DATASTREAM_STATIC_DIR"), "{err}");
}

#[tokio::test]
async fn demo_mode_publishes_live_streams_in_the_real_shapes() {
    let s = TestServer::start(&["--demo"]).await;
    let mut ws = s.legacy("mrc").await;
    let mut topics = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while topics.len() < 2 && tokio::time::Instant::now() < deadline {
        let frame = next_json(&mut ws).await;
        assert_eq!(frame["site"], "mrc");
        if frame["topic"] == "sitestatus" && frame["data"]["statusType"] == "weather" {
            let leaf = &frame["data"]["status"]["observing_conditions"]["observing_conditions1"]["temperature_C"];
            assert!(leaf["val"].is_number() && leaf["timestamp"].is_u64(), "{frame}");
        }
        topics.insert(frame["topic"].as_str().unwrap().to_owned());
    }
    assert!(topics.contains("sitestatus") && topics.len() >= 2, "{topics:?}");
}

#[tokio::test]
async fn demo_mode_publishes_every_kind_at_start_so_the_latest_of_each_is_there_at_once() {
    let s = TestServer::start(&["--demo"]).await;
    // The latest entries of mrc, as (topic, key) → the entry.
    let read = || async {
        let (status, body) = get_text(&s.url("/sites/mrc/latest")).await;
        assert_eq!(status, 200, "{body}");
        let latest: serde_json::Value = serde_json::from_str(&body).unwrap();
        latest["latest"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| ((p["topic"].as_str().unwrap().to_owned(), p["key"].as_str().map(str::to_owned)), p.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let kind = |topic: &str, key: Option<&str>| (topic.to_owned(), key.map(str::to_owned));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let first = loop {
        let entries = read().await;
        if entries.len() == 5 || tokio::time::Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kinds: Vec<_> = first.keys().cloned().collect();
    assert_eq!(
        kinds,
        [
            kind("jobs", None),
            kind("phase_status", None),
            kind("sitestatus", Some("enclosure")),
            kind("sitestatus", Some("weather")),
            kind("userstatus", None),
        ]
    );
    // The enclosure status has the real shape, on the real topic.
    let enclosure = &first[&kind("sitestatus", Some("enclosure"))];
    assert_eq!(enclosure["data"]["statusType"], "enclosure", "{enclosure}");
    assert!(enclosure["data"]["status"]["enclosure"]["enclosure1"]["shutter_status"]["val"].is_string(), "{enclosure}");
    // The weather goes on (every 2 s) and does not replace it: the next enclosure status is
    // minutes away.
    assert!(datastream::demo::ENCLOSURE_EVERY >= Duration::from_secs(120));
    let weather_at = |entries: &std::collections::BTreeMap<_, serde_json::Value>| {
        entries[&kind("sitestatus", Some("weather"))]["offset"].as_u64().unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let later = loop {
        let entries = read().await;
        if weather_at(&entries) > weather_at(&first) {
            break entries;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new weather");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(later[&kind("sitestatus", Some("enclosure"))], *enclosure, "the enclosure's kept");
}
