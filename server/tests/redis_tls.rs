//! Redis over TLS (`rediss://`), against a real `redis-server` serving TLS only, with a CA and a
//! certificate made for the test: a relay publishes and delivers through it; a server whose
//! certificate another CA signed is refused with a clear error; certificates are verified by
//! default (the test CA is not among the system's roots).

#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::tls::{TlsFiles, start_tls_redis, tls_url};
use datastream::{
    Server,
    broker::{HistoryOptions, RedisBroker, RedisSettings},
    hub::Hub,
    metrics::Metrics,
};
use serde_json::json;

fn options() -> HistoryOptions {
    HistoryOptions {
        size: 100,
        ttl: Duration::from_secs(600),
        dedupe_window: Duration::from_secs(60),
        dedupe_keys: 1000,
        latest_topics: 64,
        latest_ttl: Duration::from_secs(600),
        latest_keys: Default::default(),
    }
}

async fn connect(settings: &RedisSettings) -> Result<Arc<RedisBroker>, String> {
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(metrics.clone()));
    RedisBroker::connect(settings, hub, metrics, options()).await.map_err(|e| e.to_string())
}

/// Two relays on one TLS Redis: a subscriber of one gets what is published to the other, and a
/// latest value written through one is read through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_go_through_redis_over_tls() {
    let tls = TlsFiles::generate("round-trip");
    let redis = start_tls_redis(&tls);
    let url = tls_url(redis.port);
    let ca = tls.ca_path();
    let args = ["--redis-url", url.as_str(), "--redis-ca-file", ca.as_str()];
    let a = common::TestServer::start(&args).await;
    let b = common::TestServer::start(&args).await;
    let mut ws = a.legacy("mrc").await;
    // The legacy subscription is registered with its handshake; its watch of the site's channel
    // follows: publish until the first arrives.
    let mut n = 0;
    let first = loop {
        n += 1;
        assert_eq!(b.publish(&json!({"site": "mrc", "topic": "t", "data": n})).await.0, 202);
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), common::next_json(&mut ws)).await {
            break frame;
        }
        assert!(n < 50, "nothing arrived over TLS");
    };
    assert_eq!(first["topic"], "t");
    let last = first["data"].as_u64().unwrap();
    assert_eq!(b.publish(&json!({"site": "mrc", "topic": "phase", "data": {"over": "tls"}})).await.0, 202);
    loop {
        let frame = common::next_json(&mut ws).await;
        if frame["topic"] == "phase" {
            assert_eq!(frame["data"], json!({"over": "tls"}));
            break;
        }
        assert!(frame["data"].as_u64().unwrap() > last);
    }
    let (status, body) = common::get_text(&a.url("/sites/mrc/latest?topic=phase")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""over":"tls""#), "{body}");
    let (status, body) = common::get_text(&a.url("/readyz")).await;
    assert_eq!(status, 200, "{body}");
}

/// A server whose certificate the trusted CA did not sign is refused at start, saying why; so is
/// the test server when only the system's roots are trusted (verification is on by default).
#[tokio::test]
async fn a_certificate_no_trusted_ca_signed_is_refused() {
    let served = TlsFiles::generate("served");
    let other = TlsFiles::generate("other");
    let redis = start_tls_redis(&served);
    let url = tls_url(redis.port);

    let trusted = RedisSettings { ca_file: Some(other.ca.clone()), ..RedisSettings::new(&url, "test") };
    let err = connect(&trusted).await.unwrap_err();
    assert!(err.contains("UnknownIssuer") && err.contains("DATASTREAM_REDIS_CA_FILE"), "{err}");

    let system_roots = RedisSettings::new(&url, "test");
    let err = connect(&system_roots).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // The relay does not start, and names the setting.
    let ca = other.ca_path();
    let err = Server::bind(common::config(&["--redis-url", &url, "--redis-ca-file", &ca])).await.unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("DATASTREAM_REDIS_URL") && err.contains("UnknownIssuer"), "{err}");

    // With the right CA it connects.
    let right = RedisSettings { ca_file: Some(served.ca.clone()), ..RedisSettings::new(&url, "test") };
    connect(&right).await.unwrap();
}

/// A plain `redis://` client cannot talk to a TLS-only Redis (nothing falls back to plain text),
/// and a `rediss://` URL with `#insecure` (no verification) is refused before connecting.
#[tokio::test]
async fn no_plain_text_and_no_way_to_skip_verification() {
    let tls = TlsFiles::generate("plain");
    let redis = start_tls_redis(&tls);
    let plain = RedisSettings {
        timeout: Duration::from_millis(500),
        ..RedisSettings::new(&format!("redis://127.0.0.1:{}/", redis.port), "test")
    };
    assert!(connect(&plain).await.is_err());
    let insecure = RedisSettings::new(&format!("{}#insecure", tls_url(redis.port)), "test");
    let err = connect(&insecure).await.unwrap_err();
    assert!(err.contains("cannot be turned off"), "{err}");
}
