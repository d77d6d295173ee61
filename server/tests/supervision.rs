//! Background tasks under supervision, as `/readyz` reports them.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[tokio::test]
async fn readyz_names_a_background_task_that_is_not_running() {
    let s = TestServer::start(&[]).await;
    // Answered once `run` started every task.
    let (status, body) = get_text(&s.url("/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""tasks_down":[]"#), "{body}");
    let tasks = s.state.readiness.tasks.all();
    for name in ["sweeper", "jwks_refresh", "fanout_writer_0"] {
        assert_eq!(tasks.get(name), Some(&true), "{name} supervised: {tasks:?}");
    }

    // What the supervisor records while a failed task waits for its restart.
    s.state.readiness.tasks.report("sweeper", false);
    let (status, body) = get_text(&s.url("/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""tasks_down":["sweeper"]"#), "{body}");
    s.state.readiness.tasks.report("sweeper", true);
    assert_eq!(get_text(&s.url("/readyz")).await.0, 200);
    s.shutdown().await.unwrap();
}
