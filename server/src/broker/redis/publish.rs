//! Publishing: every message goes through the publish script (`lua/publish.lua`); a batch goes as
//! pipelines of script calls, so a body of 100 messages costs a few round trips, not 100, and
//! Redis runs them in order.

use redis::{Cmd, ErrorKind, RedisError, RedisResult, ServerErrorKind};

use super::{RedisBroker, keys::latest_field};
use crate::{
    broker::{BrokerError, PartialPublish, PublishOutcome},
    publication::{Position, PublishRequest},
};

/// Most script calls in one pipeline, and about the most bytes of data: what one round trip
/// carries, within the one Redis timeout.
const PIPELINE_CALLS: usize = 100;
const PIPELINE_BYTES: usize = 1 << 20;

impl RedisBroker {
    /// See [`crate::broker::Broker::publish_all`]. Pipelines run one after another; a failure
    /// stops the batch there.
    pub async fn publish_all(&self, requests: &[PublishRequest]) -> Result<Vec<PublishOutcome>, PartialPublish> {
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut rest = requests;
        while !rest.is_empty() {
            let mut bytes = 0;
            let calls = rest
                .iter()
                .take(PIPELINE_CALLS)
                .take_while(|r| {
                    bytes += r.data.get().len();
                    bytes <= PIPELINE_BYTES
                })
                .count()
                .max(1);
            let (pipeline, after) = rest.split_at(calls);
            if let Err(cause) = self.publish_pipeline(pipeline, &mut outcomes).await {
                return Err(PartialPublish { outcomes, cause });
            }
            rest = after;
        }
        Ok(outcomes)
    }

    /// Publishes `requests` in one pipeline, appending their outcomes in order up to the first
    /// that failed. Redis runs every call of a pipeline, so after a failure the later calls may
    /// have published: they are left unacknowledged (a retry with their idempotency keys
    /// publishes each once), never reported out of order.
    async fn publish_pipeline(
        &self,
        requests: &[PublishRequest],
        outcomes: &mut Vec<PublishOutcome>,
    ) -> Result<(), BrokerError> {
        let mut pending = requests;
        let mut loaded = false;
        loop {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for request in pending {
                pipe.add_command(self.publish_call(request));
            }
            let mut conn = self.conn.clone();
            let results: Vec<RedisResult<(String, u64)>> = self.call("publish", pipe.query_async(&mut conn)).await?;
            let failed = results.iter().position(Result::is_err);
            for result in results.iter().take(failed.unwrap_or(results.len())).flatten() {
                outcomes.push(match result {
                    (dup, _) if dup == "dup" => PublishOutcome::Duplicate,
                    (epoch, offset) => {
                        PublishOutcome::Published(Position { epoch: epoch.as_str().into(), offset: *offset })
                    }
                });
            }
            let Some(i) = failed else { return Ok(()) };
            // Redis does not know the script (restarted, flushed, failed over): nothing from `i`
            // on ran if every call from there failed so, and they can be sent again once it is
            // loaded, in order.
            if !loaded && results[i..].iter().all(|r| r.as_ref().is_err_and(no_script)) {
                let mut conn = self.conn.clone();
                self.call("publish", self.scripts.publish.prepare_invoke().load_async(&mut conn)).await?;
                loaded = true;
                pending = &pending[i..];
                continue;
            }
            let error = results[i].as_ref().err().map(ToString::to_string).unwrap_or_default();
            return Err(self.failed("publish", &error));
        }
    }

    /// One call of the publish script for `request` (`lua/publish.lua` lists its keys and
    /// arguments).
    fn publish_call(&self, request: &PublishRequest) -> Cmd {
        let site = &*request.site;
        let options = &self.options;
        let dedupe = request.idempotency_key.as_deref().map(|k| self.keys.dedupe(site, k)).unwrap_or_default();
        let key = options.latest_key_of(request);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts.publish.get_hash())
            .arg(5)
            .arg(self.keys.meta(site))
            .arg(self.keys.stream(site))
            .arg(dedupe)
            .arg(self.keys.latest(site))
            .arg(self.keys.latest_order(site))
            .arg(&*request.topic)
            .arg(request.data.get())
            .arg(options.size)
            .arg(Self::new_epoch())
            .arg(options.dedupe_window.as_millis() as u64)
            .arg(options.ttl.as_millis() as u64)
            .arg(self.keys.channel(site))
            .arg(options.latest_topics)
            .arg(options.latest_ttl.as_millis() as u64)
            .arg(&*latest_field(&request.topic, key.as_deref()))
            .arg(options.site_ttl().as_millis().max(1) as u64);
        cmd
    }
}

fn no_script(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}
