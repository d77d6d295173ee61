//! The health check the sweep runs: a PING on the command connection and on the pub/sub
//! connection. A pub/sub connection that does not answer is dropped, so the reader reconnects
//! even though its socket never closed (a frozen or partitioned Redis).

use super::RedisBroker;

impl RedisBroker {
    /// Checks Redis with a PING on both connections.
    pub async fn ping(&self) {
        let mut conn = self.conn.clone();
        let _ = self.call("ping", redis::cmd("PING").query_async::<String>(&mut conn)).await;
        let live = self.state().live.clone();
        if let Some(live) = live {
            let mut sink = live.sink.clone();
            if self.call("pubsub_ping", sink.ping::<redis::Value>()).await.is_err() {
                live.lost.cancel();
            }
        }
    }
}
