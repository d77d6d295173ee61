//! `POST /publish`: success, validation errors naming the field, size limits, auth, duplicates.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn publishes_one_object_or_an_array() {
    let s = TestServer::start(&[]).await;
    let mut ws = s.legacy("mrc").await;
    let (status, body) = s.publish(&json!({"site": "mrc", "topic": "a", "data": 1})).await;
    assert_eq!((status, body), (202, json!({"accepted": 1, "duplicates": 0})));
    let (status, body) = s
        .publish(&json!([
            {"site": "mrc", "topic": "b", "data": 2},
            {"site": "saf", "topic": "c", "data": 3},
            {"site": "mrc", "topic": "d", "data": 4}
        ]))
        .await;
    assert_eq!((status, body), (202, json!({"accepted": 3, "duplicates": 0})));
    for topic in ["a", "b", "d"] {
        assert_eq!(next_json(&mut ws).await["topic"], topic);
    }
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, r#"datastream_messages_in_total{source="http"}"#), 4.0);
    assert!(metric(&metrics, "datastream_messages_out_total") >= 3.0);
}

#[tokio::test]
async fn bad_bodies_are_refused_naming_the_field_and_publish_nothing() {
    let s = TestServer::start(&[]).await;
    let mut ws = s.legacy("mrc").await;
    let url = s.url("/publish");
    let cases: &[(&str, u16, Option<&str>, Option<u64>)] = &[
        ("not json", 400, None, None),
        ("", 400, None, None),
        ("[]", 400, None, None),
        ("42", 400, None, None),
        (r#"{"topic":"t","data":1}"#, 400, Some("site"), None),
        (r#"{"site":"","topic":"t","data":1}"#, 400, Some("site"), None),
        (r#"{"site":"mrc","topic":7,"data":1}"#, 400, Some("topic"), None),
        (r#"{"site":"mrc","topic":"t"}"#, 400, Some("data"), None),
        (r#"[{"site":"mrc","topic":"t","data":1},{"site":"mrc","data":1}]"#, 400, Some("topic"), Some(1)),
        (r#"[{"site":"mrc","topic":"t","data":1},"x"]"#, 400, None, Some(1)),
    ];
    for (body, status, field, index) in cases {
        let (got, err) = publish_raw(&url, (*body).into(), None).await;
        assert_eq!(got, *status, "{body}: {err}");
        assert!(err["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}: {err}");
        assert_eq!(err["field"].as_str(), *field, "{body}: {err}");
        assert_eq!(err["index"].as_u64(), *index, "{body}: {err}");
    }
    // Nothing from the refused array reached the subscriber, and the server still serves.
    s.publish(&json!({"site": "mrc", "topic": "ok", "data": 1})).await;
    assert_eq!(next_json(&mut ws).await["topic"], "ok");
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert!(metric(&metrics, r#"datastream_messages_malformed_total{source="http",reason="missing_field"}"#) >= 3.0);
}

#[tokio::test]
async fn oversized_messages_and_bodies_get_413() {
    let s = TestServer::start(&["--max-message-bytes", "1000", "--max-publish-body-bytes", "5000"]).await;
    let big = "x".repeat(1500);
    let (status, err) = s.publish(&json!({"site": "mrc", "topic": "t", "data": big})).await;
    assert_eq!(status, 413, "{err}");
    assert!(err["error"].as_str().unwrap().contains("limit is 1000"), "{err}");
    let items: Vec<_> = (0..10).map(|_| json!({"site": "mrc", "topic": "t", "data": "x".repeat(600)})).collect();
    let (status, err) = s.publish(&json!(items)).await;
    assert_eq!(status, 413, "{err}");
    assert!(err["error"].as_str().unwrap().contains("5000"), "{err}");
}

#[tokio::test]
async fn a_configured_token_is_required() {
    let token = "0123456789abcdef-secret";
    let s = TestServer::start(&["--publish-token", token]).await;
    let url = s.url("/publish");
    let body = json!({"site": "mrc", "topic": "t", "data": 1}).to_string();
    let (status, _) = publish_raw(&url, body.clone(), None).await;
    assert_eq!(status, 401);
    let (status, _) = publish_raw(&url, body.clone(), Some("0123456789abcdef-wrong!")).await;
    assert_eq!(status, 401);
    let (status, _) = publish_raw(&url, body, Some(token)).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn a_repeated_idempotency_key_is_published_once() {
    let s = TestServer::start(&[]).await;
    let mut ws = s.legacy("mrc").await;
    let msg = json!({"site": "mrc", "topic": "t", "data": 1, "idempotency_key": "job-42"});
    assert_eq!(s.publish(&msg).await.1, json!({"accepted": 1, "duplicates": 0}));
    assert_eq!(s.publish(&msg).await.1, json!({"accepted": 0, "duplicates": 1}));
    s.publish(&json!({"site": "mrc", "topic": "t", "data": 2})).await;
    assert_eq!(next_json(&mut ws).await["data"], 1);
    assert_eq!(next_json(&mut ws).await["data"], 2, "the duplicate was not delivered");
    let (_, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(metric(&metrics, "datastream_messages_duplicate_total"), 1.0);
}

#[tokio::test]
async fn health_readiness_and_unknown_paths() {
    let s = TestServer::start(&[]).await;
    assert_eq!(get_text(&s.url("/healthz")).await, (200, "ok\n".into()));
    let (status, body) = get_text(&s.url("/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""sqs":"disabled""#), "{body}");
    assert_eq!(get_text(&s.url("/nope")).await.0, 404);
    let (status, metrics) = get_text(&s.url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("datastream_fanout_seconds"), "{metrics}");
}
