//! Reading a site: a subscriber's snapshot (position, history, latest values), a reader's latest
//! values, and the node's own reads of a site's stream and position (for gaps and catch-up).

use std::sync::Arc;

use redis::Script;

use super::{
    RedisBroker,
    decode::{Entry, entries_to_publications, values_to_publications},
};
use crate::{
    broker::{BrokerError, Latest, Snapshot},
    publication::Position,
};

/// What the snapshot scripts return: epoch, offset, stream entries (newest first) and latest
/// values as (field, `<offset>:<ms>:<data>`).
type Read = (String, u64, Vec<Entry>, Vec<(String, String)>);

impl RedisBroker {
    /// See [`crate::broker::Broker::snapshot`].
    pub async fn snapshot(&self, site: &Arc<str>, latest: Latest<'_>) -> Result<Snapshot, BrokerError> {
        self.watch(site).await?;
        let (epoch, top, entries, values) = self.read_snapshot(&self.scripts.snapshot, site, latest).await?;
        let history = entries_to_publications(site, &epoch, entries, &self.options);
        let latest = values_to_publications(site, &epoch, values);
        Ok(Snapshot { epoch: epoch.into(), top, history, latest })
    }

    /// See [`crate::broker::Broker::latest`].
    pub async fn latest(&self, site: &Arc<str>, topics: Option<&[Arc<str>]>) -> Result<Snapshot, BrokerError> {
        let (epoch, top, _, values) = self.read_snapshot(&self.scripts.latest, site, Latest::Of(topics)).await?;
        let latest = values_to_publications(site, &epoch, values);
        Ok(Snapshot { epoch: epoch.into(), top, history: Vec::new(), latest })
    }

    /// Runs the snapshot or latest script (`lua/snapshot.lua` lists their keys and arguments).
    async fn read_snapshot(&self, script: &Script, site: &str, latest: Latest<'_>) -> Result<Read, BrokerError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.meta(site))
            .key(self.keys.stream(site))
            .key(self.keys.latest(site))
            .key(self.keys.latest_order(site))
            .arg(self.options.size)
            .arg(self.options.ttl.as_millis() as u64)
            .arg(Self::new_epoch())
            .arg(match latest {
                Latest::Of(Some([])) | Latest::No => "0",
                Latest::Of(_) if self.options.latest_topics == 0 => "0",
                Latest::Of(_) => "1",
            })
            .arg(self.options.latest_ttl.as_millis() as u64);
        if let Latest::Of(Some(topics)) = latest {
            for topic in topics {
                invocation.arg(&**topic);
            }
        }
        let mut conn = self.conn.clone();
        self.call("history", invocation.invoke_async(&mut conn)).await
    }

    /// The site's stream as Redis holds it: epoch (`''` if none), offset and entries, newest
    /// first. Creates nothing.
    pub(super) async fn read_history(&self, site: &str) -> Result<(String, u64, Vec<Entry>), BrokerError> {
        let mut invocation = self.scripts.history.prepare_invoke();
        invocation
            .key(self.keys.meta(site))
            .key(self.keys.stream(site))
            .arg(self.options.size)
            .arg(self.options.ttl.as_millis() as u64);
        let mut conn = self.conn.clone();
        self.call("history", invocation.invoke_async(&mut conn)).await
    }

    /// The site's position as it stands, read without creating anything (epoch `''` if the site
    /// has none).
    pub(super) async fn read_top(&self, site: &str) -> Result<Position, BrokerError> {
        let mut conn = self.conn.clone();
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(self.keys.meta(site)).arg("epoch").arg("offset");
        let (epoch, offset): (Option<String>, Option<u64>) = self.call("history", hmget.query_async(&mut conn)).await?;
        Ok(Position { epoch: epoch.unwrap_or_default().into(), offset: offset.unwrap_or(0) })
    }
}
