//! Catch-up and gap filling: local subscribers get every publication of a watched site once and
//! in order, even when its channel missed some. A publication whose offset skips ahead of the
//! site's delivered position is preceded by the missing ones, read from the stream; after a
//! reconnect every watched site gets what it missed meanwhile from its stream before anything
//! newer, so a site that gets no further publication is not left waiting for one to reveal its
//! gap. Both are counted in `datastream_redis_filled_total`.

use std::sync::Arc;

use futures_util::{StreamExt, stream};
use tracing::{info, warn};

use super::{
    RedisBroker,
    decode::{ChannelMessage, entries_to_publications},
    reader::{RECONNECT_CONCURRENCY, RETRY},
};
use crate::{
    hub::Batch,
    publication::{Position, Publication},
};

/// Reads of a site's stream tried after a reconnect before its gap is left to its next
/// publication.
const CATCH_UP_TRIES: u32 = 5;

impl RedisBroker {
    /// Delivers, for every watched site, what was published since its delivered position. A
    /// site whose stream cannot be read is tried again a few times (the command connection may
    /// be reconnecting too), then left to the gap filling of its next publication.
    pub(super) async fn catch_up(&self, batch: &mut Batch) {
        let mut sites: Vec<(Arc<str>, Position)> =
            self.state().sites.iter().filter_map(|(s, e)| Some((s.clone(), e.delivered.clone()?))).collect();
        for attempt in 0..CATCH_UP_TRIES {
            sites = self.catch_up_sites(sites, batch).await;
            if sites.is_empty() {
                return;
            }
            tokio::time::sleep(RETRY.delay(attempt, rand::random())).await;
        }
        warn!(sites = sites.len(), "cannot read back what some sites missed; their next publication fills it");
    }

    /// Catches up `sites`; returns those whose stream could not be read.
    async fn catch_up_sites(&self, sites: Vec<(Arc<str>, Position)>, batch: &mut Batch) -> Vec<(Arc<str>, Position)> {
        let mut failed = Vec::new();
        let mut reads = stream::iter(sites)
            .map(|(site, after)| async move {
                let read = self.read_history(&site).await;
                (site, after, read)
            })
            .buffer_unordered(RECONNECT_CONCURRENCY);
        while let Some((site, after, read)) = reads.next().await {
            let Ok((epoch, _, entries)) = read else {
                failed.push((site, after));
                continue;
            };
            // Another epoch: Redis lost the site's stream, and all of the new one is new here.
            let from = if *after.epoch == epoch { after.offset } else { 0 };
            let missed: Vec<_> = entries_to_publications(&site, &epoch, entries, &self.options)
                .into_iter()
                .filter(|p| p.position.offset > from)
                .collect();
            let Some(last) = missed.last().map(|p| p.position.clone()) else { continue };
            info!(%site, after = from, filled = missed.len(), "delivered from history what the channel missed while disconnected");
            self.deliver_filled(&missed, batch);
            self.set_delivered(&site, last);
        }
        failed
    }

    fn deliver_filled(&self, publications: &[Arc<Publication>], batch: &mut Batch) {
        for publication in publications {
            self.hub.deliver_to(publication, batch);
        }
        self.metrics.redis_filled.inc_by(publications.len() as u64);
    }

    /// Delivers one publication from `channel`, first filling any gap since the last one.
    pub(super) async fn on_message(&self, channel: &str, payload: &[u8], batch: &mut Batch) {
        let Some(site) = self.keys.site_of_channel(channel) else {
            warn!(channel, "publication on a channel the relay does not use");
            return;
        };
        let message = match ChannelMessage::decode(site, payload) {
            Ok(m) => m,
            Err(e) => {
                warn!(%site, error = %e, "unreadable publication on a Redis channel");
                return;
            }
        };
        let site = message.site;
        let previous = self.state().sites.get(&site).and_then(|e| e.delivered.clone());
        let after = match &previous {
            Some(prev) if *prev.epoch == message.epoch => {
                if message.offset <= prev.offset {
                    return;
                }
                prev.offset
            }
            // Another epoch: Redis lost the site's stream, and all of the new one is new here.
            Some(_) => 0,
            None => message.offset.saturating_sub(1),
        };
        if message.offset > after + 1 {
            self.fill_gap(&site, &message.epoch, after, message.offset, batch).await;
        }
        // The site's epoch is shared with the delivered position while it lasts: no allocation.
        let epoch = match previous {
            Some(prev) if *prev.epoch == message.epoch => prev.epoch,
            _ => message.epoch.into(),
        };
        let position = Position { epoch, offset: message.offset };
        let key = self.options.key_of(&message.topic, &message.data);
        let publication = Publication::from_parts(site.clone(), message.topic, message.data, position.clone());
        let publication = Arc::new(publication.with_latest_key(key));
        self.hub.deliver_to(&publication, batch);
        self.set_delivered(&site, position);
    }

    async fn fill_gap(&self, site: &Arc<str>, epoch: &str, after: u64, before: u64, batch: &mut Batch) {
        let Ok((held, _, entries)) = self.read_history(site).await else { return };
        if held != epoch {
            return;
        }
        let missing: Vec<_> = entries_to_publications(site, &held, entries, &self.options)
            .into_iter()
            .filter(|p| p.position.offset > after && p.position.offset < before)
            .collect();
        warn!(%site, after, before, filled = missing.len(), "filled a gap in a Redis channel from history");
        self.deliver_filled(&missing, batch);
    }
}
