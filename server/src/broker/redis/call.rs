//! One Redis call: bounded by the relay's one Redis timeout (`DATASTREAM_REDIS_TIMEOUT`), its
//! failure counted in `datastream_redis_errors_total{op}` and reflected in the broker's health.
//! Every command and pub/sub request of the broker goes through [`RedisBroker::call`].

use std::{fmt, future::Future, sync::atomic::Ordering};

use redis::RedisResult;

use super::RedisBroker;
use crate::broker::BrokerError;

impl RedisBroker {
    /// Runs `request` (operation `op`, the label of its errors) within the Redis timeout. An
    /// answer marks Redis reachable; an error or a timeout is counted and marks it unreachable.
    /// A request that timed out may still be carried out when Redis wakes: it was sent.
    pub(super) async fn call<T>(
        &self,
        op: &'static str,
        request: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(answer)) => {
                self.answered.store(true, Ordering::Relaxed);
                Ok(answer)
            }
            Ok(Err(e)) => Err(self.failed(op, &e)),
            Err(_) => Err(self.failed(op, &"timed out")),
        }
    }

    /// Counts a failed Redis operation `op` and marks Redis unreachable until it answers again.
    pub(super) fn failed(&self, op: &'static str, e: &dyn fmt::Display) -> BrokerError {
        self.metrics.redis_error(op);
        self.answered.store(false, Ordering::Relaxed);
        BrokerError::Unavailable(format!("Redis {op} failed: {e}"))
    }
}
