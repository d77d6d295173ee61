//! `datastream publish`: send one `{site, topic, data}` message through the relay's HTTP API or
//! straight onto the SQS queue, validated locally first with the relay's own rules.

use clap::Args;
use serde::Serialize;
use serde_json::{json, value::RawValue};

use super::ToolError;
use crate::{config::DEFAULT_MAX_MESSAGE_BYTES, publication::Validator};

/// Arguments of `datastream publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Target site.
    #[arg(long)]
    pub site: String,

    /// Topic.
    #[arg(long)]
    pub topic: String,

    /// The data, as JSON text (`'{"temperature_C": 11.7}'`, `'"a string"'`, `42`).
    #[arg(long)]
    pub data: String,

    /// Publishes of the same key within the relay's dedupe window are delivered once.
    #[arg(long)]
    pub idempotency_key: Option<String>,

    /// The relay's base URL, for HTTP publishing.
    #[arg(long, env = "DATASTREAM_URL", default_value = "http://127.0.0.1:8080", conflicts_with = "sqs_queue")]
    pub url: String,

    /// Bearer token for HTTP publishing.
    #[arg(long, env = "DATASTREAM_PUBLISH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Publish to this SQS queue (name or URL) instead of HTTP, with the standard AWS settings.
    #[arg(long)]
    pub sqs_queue: Option<String>,
}

/// Builds the message body, validating it as the relay would.
fn body(args: &PublishArgs) -> Result<String, ToolError> {
    #[derive(Serialize)]
    struct Body<'a> {
        site: &'a str,
        topic: &'a str,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<&'a str>,
    }
    let data: &RawValue = serde_json::from_str(args.data.trim())
        .map_err(|e| ToolError::Usage(format!("--data is not valid JSON: {e}")))?;
    let body = Body { site: &args.site, topic: &args.topic, data, idempotency_key: args.idempotency_key.as_deref() };
    let text = serde_json::to_string(&body).map_err(|e| ToolError::Usage(e.to_string()))?;
    // The relay's default limits: a message it would refuse is refused here, before sending.
    let validator =
        Validator { names: datastream_protocol::NameRules::default(), max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES };
    validator.parse(&text).map_err(|e| ToolError::Usage(e.to_string()))?;
    Ok(text)
}

/// Publishes; returns the line to print on success.
pub async fn run(args: PublishArgs) -> Result<String, ToolError> {
    let text = body(&args)?;
    match &args.sqs_queue {
        Some(queue) => publish_sqs(queue, text).await,
        None => publish_http(&args, text).await,
    }
}

async fn publish_http(args: &PublishArgs, text: String) -> Result<String, ToolError> {
    let url = format!("{}/publish", args.url.trim_end_matches('/'));
    let mut req = reqwest::Client::new().post(&url).header("content-type", "application/json").body(text);
    if let Some(token) = &args.token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.map_err(|e| ToolError::Unreachable(format!("{url}: {e}")))?;
    let status = resp.status();
    let answer = resp.text().await.unwrap_or_default();
    if status.is_success() { Ok(answer) } else { Err(ToolError::Refused(format!("HTTP {status}: {answer}"))) }
}

async fn publish_sqs(queue: &str, text: String) -> Result<String, ToolError> {
    let client = crate::ingest::sqs::client().await;
    let url = if queue.starts_with("https://") || queue.starts_with("http://") {
        queue.to_owned()
    } else {
        let out = client
            .get_queue_url()
            .queue_name(queue)
            .send()
            .await
            .map_err(|e| ToolError::Unreachable(format!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e))))?;
        out.queue_url().ok_or_else(|| ToolError::Refused("GetQueueUrl returned no URL".into()))?.to_owned()
    };
    let out = client
        .send_message()
        .queue_url(&url)
        .message_body(text)
        .send()
        .await
        .map_err(|e| ToolError::Unreachable(format!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e))))?;
    Ok(json!({ "message_id": out.message_id() }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(site: &str, data: &str) -> PublishArgs {
        PublishArgs {
            site: site.into(),
            topic: "t".into(),
            data: data.into(),
            idempotency_key: None,
            url: String::new(),
            token: None,
            sqs_queue: None,
        }
    }

    #[test]
    fn body_keeps_data_verbatim_and_refuses_bad_input() {
        assert_eq!(body(&args("mrc", "1.50")).unwrap(), r#"{"site":"mrc","topic":"t","data":1.50}"#);
        assert!(matches!(body(&args("mrc", "{oops")), Err(ToolError::Usage(_))));
        assert!(matches!(body(&args("a b", "1")), Err(ToolError::Usage(m)) if m.contains("site")));
    }
}
