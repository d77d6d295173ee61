//! SQS ingest: several long-poll loops consume the incoming queue.
//!
//! - A message is deleted (in one batch per receive) only after the broker published it, or
//!   recognised it as a duplicate. A message received but not published when shutdown begins is
//!   left alone and comes back after its visibility timeout.
//! - A malformed body is never published and never deleted: it is logged with its message id and
//!   reason, counted in `datastream_messages_malformed_total{source="sqs"}`, and left to the
//!   queue's redrive policy, which moves it to the dead-letter queue after `maxReceiveCount`
//!   receives. Configure a redrive policy on the queue (the original uses 5).
//! - The SQS message id is the idempotency key (unless the body carries its own
//!   `idempotency_key`), so a message delivered twice is fanned out once within the dedupe window.
//! - SQS errors are counted, flip `/readyz` to 503, and are retried with capped, jittered backoff;
//!   they never stop the process.

use std::{sync::Arc, time::Duration};

use aws_sdk_sqs::{
    Client,
    error::DisplayErrorContext,
    types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName},
};
use datastream_protocol::backoff::Backoff;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{broker::PublishOutcome, metrics::Source, publication::PublishRequest, state::AppState};

/// Retry delays after an SQS error.
const RETRY: Backoff = Backoff { min: Duration::from_millis(200), max: Duration::from_secs(20) };

/// Builds an SQS client from the standard AWS configuration chain (`AWS_REGION`,
/// `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL`, credentials from env, profile, or instance role).
pub async fn client() -> Client {
    let config = aws_config::load_from_env().await;
    Client::new(&config)
}

/// Resolves the configured queue (a URL, or a name looked up with GetQueueUrl), retrying until it
/// succeeds or `stop` is cancelled.
async fn resolve(client: &Client, state: &AppState, queue: &str, stop: &CancellationToken) -> Option<String> {
    if queue.starts_with("https://") || queue.starts_with("http://") {
        return Some(queue.to_owned());
    }
    let mut attempt = 0;
    loop {
        match client.get_queue_url().queue_name(queue).send().await {
            Ok(out) => {
                if let Some(url) = out.queue_url() {
                    info!(queue, url, "resolved SQS queue");
                    return Some(url.to_owned());
                }
                error!(queue, "GetQueueUrl returned no URL");
            }
            Err(e) => {
                let missing = e.as_service_error().is_some_and(|e| e.is_queue_does_not_exist());
                error!(queue, missing, error = %DisplayErrorContext(&e), "cannot resolve SQS queue");
            }
        }
        state.metrics.sqs_error("get_queue_url");
        state.readiness.set_sqs(false);
        if !sleep_or_stop(RETRY.delay(attempt, rand::random()), stop).await {
            return None;
        }
        attempt = attempt.saturating_add(1);
    }
}

/// Sleeps for `delay`; false if `stop` was cancelled first.
async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Runs `pollers` receive loops on `queue` until `stop` is cancelled; returns when all finished
/// their in-flight batch.
pub async fn run(client: Client, state: Arc<AppState>, queue: String, stop: CancellationToken) {
    let Some(url) = resolve(&client, &state, &queue, &stop).await else { return };
    state.readiness.set_sqs(true);
    let mut loops = tokio::task::JoinSet::new();
    let pollers = stop.child_token();
    for poller in 0..state.config.sqs_pollers {
        loops.spawn(poll(poller, client.clone(), state.clone(), url.clone(), pollers.clone()));
    }
    while let Some(done) = loops.join_next().await {
        // A poller that panicked takes the others down with it (they finish their in-flight
        // batch), so the supervisor restarts all of ingest rather than leaving it half alive.
        if let Err(e) = done
            && e.is_panic()
        {
            pollers.cancel();
            while loops.join_next().await.is_some() {}
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

async fn poll(poller: usize, client: Client, state: Arc<AppState>, url: String, stop: CancellationToken) {
    let wait = i32::try_from(state.config.sqs_wait.as_secs()).unwrap_or(20);
    let mut attempt = 0;
    while !stop.is_cancelled() {
        let receive = client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send();
        // Dropping a pending receive on shutdown loses nothing: messages SQS already handed out
        // become visible again after their visibility timeout.
        let received = tokio::select! {
            () = stop.cancelled() => break,
            r = receive => r,
        };
        let messages = match received {
            Ok(out) => {
                attempt = 0;
                state.readiness.set_sqs(true);
                out.messages.unwrap_or_default()
            }
            Err(e) => {
                state.metrics.sqs_error("receive");
                state.readiness.set_sqs(false);
                warn!(poller, error = %DisplayErrorContext(&e), "SQS receive failed; retrying");
                if !sleep_or_stop(RETRY.delay(attempt, rand::random()), &stop).await {
                    break;
                }
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        // Each message validated alone; the valid ones published as one batch (one write per
        // subscriber for the whole receive).
        let (valid, requests): (Vec<&Message>, Vec<PublishRequest>) =
            messages.iter().filter_map(|m| Some((m, parse(&state, m)?))).unzip();
        let done = publish(&state, &valid, &requests).await;
        delete(&client, &state, &url, done).await;
    }
    debug!(poller, "SQS poller stopped");
}

/// Validates one SQS message; `None` if it is malformed (logged, counted, left in the queue).
fn parse(state: &AppState, message: &Message) -> Option<PublishRequest> {
    let id = message.message_id().unwrap_or("?");
    let body = message.body().unwrap_or("");
    let mut req = match state.validator.parse(body) {
        Ok(req) => req,
        Err(e) => {
            let receives = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .map_or("?", String::as_str);
            state.metrics.malformed(Source::Sqs, e.reason());
            warn!(
                message_id = id,
                receive_count = receives,
                reason = %e,
                "malformed SQS message not published; left for the queue's redrive policy"
            );
            return None;
        }
    };
    if req.idempotency_key.is_none() {
        req.idempotency_key = Some(format!("sqs:{id}"));
    }
    Some(req)
}

/// Publishes `requests` (of `messages`, in order); returns the receipt handles of the messages
/// that may be deleted: those published or recognised as duplicates. After a failure the rest
/// stay in the queue and come back.
async fn publish(state: &AppState, messages: &[&Message], requests: &[PublishRequest]) -> Vec<String> {
    if requests.is_empty() {
        return Vec::new();
    }
    let (outcomes, failure) = match state.broker.publish_all(requests).await {
        Ok(outcomes) => (outcomes, None),
        Err(partial) => (partial.outcomes, Some(partial.cause)),
    };
    let mut done = Vec::with_capacity(outcomes.len());
    for (message, outcome) in messages.iter().zip(&outcomes) {
        match outcome {
            PublishOutcome::Published(_) => state.metrics.message_in(Source::Sqs),
            PublishOutcome::Duplicate => {
                state.metrics.duplicates.inc();
                debug!(message_id = message.message_id().unwrap_or("?"), "duplicate SQS message dropped");
            }
        }
        if let Some(handle) = message.receipt_handle() {
            done.push(handle.to_owned());
        }
    }
    if let Some(e) = failure {
        let left = messages.len() - outcomes.len();
        warn!(left, error = %e, "publish failed; messages left in the queue");
    }
    done
}

/// Deletes handled messages in one batch, retrying a failed call a few times. A message whose
/// delete fails is received again later and dropped then as a duplicate.
async fn delete(client: &Client, state: &AppState, url: &str, handles: Vec<String>) {
    if handles.is_empty() {
        return;
    }
    let entries: Vec<_> = handles
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(h).build().ok())
        .collect();
    for attempt in 0..3 {
        match client.delete_message_batch().queue_url(url).set_entries(Some(entries.clone())).send().await {
            Ok(out) => {
                for failed in out.failed() {
                    state.metrics.sqs_error("delete");
                    warn!(entry = failed.id(), code = failed.code(), "SQS delete failed for one message");
                }
                return;
            }
            Err(e) => {
                state.metrics.sqs_error("delete");
                warn!(attempt, error = %DisplayErrorContext(&e), "SQS batch delete failed");
                tokio::time::sleep(RETRY.delay(attempt, rand::random())).await;
            }
        }
    }
}
