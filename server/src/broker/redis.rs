//! The Redis broker: several relay nodes share positions, history and dedupe through one Redis.
//!
//! Per site, with `{site}` as the cluster hash tag so one script touches one slot:
//! - `<prefix>:{site}:meta` — hash with the site's `epoch` and last `offset`;
//! - `<prefix>:{site}:stream` — a stream holding the history (MAXLEN = history size, trimmed by
//!   age with MINID on every publish);
//! - `<prefix>:{site}:dedupe:<key>` — `SET NX PX` marker of an idempotency key;
//! - channel `<prefix>:{site}:pub` — every publication, already encoded as a v2 frame.
//!
//! Publishing is one Lua script (dedupe, epoch, offset, XADD, trim, PUBLISH), so positions are
//! assigned atomically cluster-wide. The epoch lives in Redis: a relay restart keeps it, a Redis
//! restart without persistence loses it and the next touch draws a new one, which tells clients
//! that recovery is impossible. Reading a site never published to draws its epoch too (a client
//! subscribing there is told one), but that `meta` key expires after the history TTL unless a
//! publication makes it permanent: what nobody publishes leaves nothing lasting behind.
//!
//! A node subscribes to a site's channel only while it has local subscribers, and delivers what
//! arrives to its hub in channel order. If the pub/sub connection drops, the reader reconnects
//! with backoff, resubscribes, and fills any offset gap it then sees from the stream before
//! delivering, so local subscribers miss nothing that history still holds.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use datastream_protocol::{backoff::Backoff, v2::PubFrame};
use futures_util::{FutureExt, StreamExt};
use redis::{AsyncCommands, Client, Script, aio::ConnectionManager, aio::PubSubSink};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{BrokerError, HistoryOptions, PublishOutcome, Snapshot};
use crate::{
    hub::{Batch, Hub},
    metrics::Metrics,
    publication::{Position, Publication, PublishRequest},
};

/// Reconnect delays for the pub/sub connection.
const RETRY: Backoff = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5) };

/// Longest a single Redis command may take before the broker reports Redis unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Most channel messages delivered in one batch before it is flushed, so a steady stream still
/// reaches clients promptly.
const MAX_BATCH: usize = 256;

const PUBLISH_LUA: &str = r#"
if KEYS[3] ~= '' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[6]) then return {'dup', 0} end
end
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[5])
redis.call('PERSIST', KEYS[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '*', 'o', offset, 't', ARGV[2], 'd', ARGV[3])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XTRIM', KEYS[2], 'MINID', now_ms - tonumber(ARGV[7]))
local frame = '{"type":"pub","site":"' .. ARGV[1] .. '","topic":"' .. ARGV[2] .. '","epoch":"' .. epoch ..
  '","offset":' .. offset .. ',"data":' .. ARGV[3] .. '}'
redis.call('PUBLISH', ARGV[8], frame)
return {epoch, offset}
"#;

/// A subscriber's view of a site: draws the epoch of a site never published to, with a TTL
/// (the history TTL) that the first publication removes.
const SNAPSHOT_LUA: &str = r#"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[3]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = redis.call('XREVRANGE', KEYS[2], '+', tostring(now_ms - tonumber(ARGV[2])), 'COUNT', ARGV[1])
return {epoch, offset, entries}
"#;

/// One stream entry as Redis returns it: id and field/value pairs.
type Entry = (String, Vec<(String, String)>);

/// The Redis broker.
#[derive(Debug)]
pub struct RedisBroker {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    options: HistoryOptions,
    publish_script: Script,
    snapshot_script: Script,
    /// Sites this node listens to, and the pub/sub sink to change that; one lock so a site is
    /// never subscribed and unsubscribed at once.
    watch: tokio::sync::Mutex<Watch>,
    /// Last position delivered per watched site, to find gaps after a pub/sub reconnect.
    delivered: Mutex<HashMap<Arc<str>, Position>>,
    /// Whether Redis answered the last command and the pub/sub connection is up.
    healthy: AtomicBool,
}

#[derive(Debug, Default)]
struct Watch {
    sites: HashSet<Arc<str>>,
    sink: Option<PubSubSink>,
}

impl RedisBroker {
    /// Connects to Redis at `url`. Fails if Redis cannot be reached at start.
    pub async fn connect(
        url: &str,
        prefix: &str,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        options: HistoryOptions,
    ) -> Result<Arc<Self>, BrokerError> {
        let client = Client::open(url).map_err(|e| BrokerError::Unavailable(format!("bad Redis URL: {e}")))?;
        let conn = tokio::time::timeout(COMMAND_TIMEOUT * 5, client.get_connection_manager())
            .await
            .map_err(|_| BrokerError::Unavailable(format!("Redis at {url} did not answer")))?
            .map_err(|e| BrokerError::Unavailable(format!("cannot connect to Redis at {url}: {e}")))?;
        Ok(Arc::new(RedisBroker {
            hub,
            metrics,
            client,
            conn,
            prefix: prefix.to_owned(),
            options,
            publish_script: Script::new(PUBLISH_LUA),
            snapshot_script: Script::new(SNAPSHOT_LUA),
            watch: tokio::sync::Mutex::default(),
            delivered: Mutex::default(),
            healthy: AtomicBool::new(true),
        }))
    }

    fn key(&self, site: &str, what: &str) -> String {
        format!("{}:{{{site}}}:{what}", self.prefix)
    }

    fn channel(&self, site: &str) -> String {
        self.key(site, "pub")
    }

    /// Whether Redis is reachable, for `/readyz`.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn failed(&self, op: &'static str, e: &dyn std::fmt::Display) -> BrokerError {
        self.metrics.redis_error(op);
        self.healthy.store(false, Ordering::Relaxed);
        BrokerError::Unavailable(format!("Redis {op} failed: {e}"))
    }

    fn new_epoch() -> String {
        format!("{:016x}", rand::random::<u64>())
    }

    /// See [`super::Broker::publish`].
    pub async fn publish(&self, req: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        let site = &*req.site;
        let dedupe = req.idempotency_key.as_deref().map(|k| self.key(site, &format!("dedupe:{k}"))).unwrap_or_default();
        let mut invocation = self.publish_script.prepare_invoke();
        invocation
            .key(self.key(site, "meta"))
            .key(self.key(site, "stream"))
            .key(dedupe)
            .arg(site)
            .arg(&*req.topic)
            .arg(req.data.get())
            .arg(self.options.size)
            .arg(Self::new_epoch())
            .arg(self.options.dedupe_window.as_millis() as u64)
            .arg(self.options.ttl.as_millis() as u64)
            .arg(self.channel(site));
        let mut conn = self.conn.clone();
        let result: (String, u64) = tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| self.failed("publish", &"timed out"))?
            .map_err(|e| self.failed("publish", &e))?;
        self.healthy.store(true, Ordering::Relaxed);
        match result {
            (dup, _) if dup == "dup" => Ok(PublishOutcome::Duplicate),
            (epoch, offset) => Ok(PublishOutcome::Published(Position { epoch: epoch.into(), offset })),
        }
    }

    /// Starts listening to `site`'s channel if this node does not yet; returns once Redis has
    /// confirmed the subscription, so nothing published after it is missed. If the pub/sub
    /// connection is down, the site is still remembered (and an error returned): the reader
    /// subscribes to every remembered site as soon as it is connected again.
    pub async fn watch(&self, site: &Arc<str>) -> Result<(), BrokerError> {
        let mut watch = self.watch.lock().await;
        if watch.sink.is_some() && watch.sites.contains(site) {
            return Ok(());
        }
        watch.sites.insert(site.clone());
        let channel = self.channel(site);
        let sink = watch.sink.as_mut().ok_or_else(|| self.failed("subscribe", &"pub/sub connection down"))?;
        tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(&channel))
            .await
            .map_err(|_| self.failed("subscribe", &"timed out"))?
            .map_err(|e| self.failed("subscribe", &e))?;
        Ok(())
    }

    /// Waits (at most `limit`) until the pub/sub connection is up; false if it is not.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.watch.lock().await.sink.is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Stops listening to sites that no longer have local subscribers.
    pub async fn unwatch_idle(&self) {
        let mut watch = self.watch.lock().await;
        let idle: Vec<_> = watch.sites.iter().filter(|s| self.hub.subscriber_count(s) == 0).cloned().collect();
        for site in idle {
            if let Some(sink) = watch.sink.as_mut()
                && tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(self.channel(&site))).await.is_err()
            {
                continue;
            }
            watch.sites.remove(&site);
            self.delivered.lock().unwrap_or_else(|e| e.into_inner()).remove(&site);
        }
    }

    /// See [`super::Broker::snapshot`].
    pub async fn snapshot(&self, site: &Arc<str>) -> Result<Snapshot, BrokerError> {
        self.watch(site).await?;
        let (epoch, top, entries) = self.read_history(site).await?;
        let history = entries_to_publications(site, &epoch, entries);
        Ok(Snapshot { epoch: epoch.into(), top, history })
    }

    async fn read_history(&self, site: &str) -> Result<(String, u64, Vec<Entry>), BrokerError> {
        let mut invocation = self.snapshot_script.prepare_invoke();
        invocation
            .key(self.key(site, "meta"))
            .key(self.key(site, "stream"))
            .arg(self.options.size)
            .arg(self.options.ttl.as_millis() as u64)
            .arg(Self::new_epoch());
        let mut conn = self.conn.clone();
        let out = tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| self.failed("history", &"timed out"))?
            .map_err(|e| self.failed("history", &e))?;
        self.healthy.store(true, Ordering::Relaxed);
        Ok(out)
    }

    /// Runs the pub/sub reader until `stop`: connects (with backoff), resubscribes to every
    /// watched site, and delivers what arrives.
    pub async fn run_reader(self: Arc<Self>, stop: CancellationToken) {
        let mut attempt = 0;
        loop {
            let pubsub = tokio::select! {
                () = stop.cancelled() => return,
                r = self.client.get_async_pubsub() => r,
            };
            let (mut sink, mut stream) = match pubsub {
                Ok(p) => p.split(),
                Err(e) => {
                    self.failed("pubsub_connect", &e);
                    let delay = RETRY.delay(attempt, rand::random());
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            {
                let mut watch = self.watch.lock().await;
                let channels: Vec<String> = watch.sites.iter().map(|s| self.channel(s)).collect();
                if !channels.is_empty() && sink.subscribe(&channels).await.is_err() {
                    continue;
                }
                watch.sink = Some(sink);
            }
            if attempt > 0 {
                info!("Redis pub/sub reconnected");
            }
            attempt = 0;
            self.healthy.store(true, Ordering::Relaxed);
            // What has arrived already is delivered as one batch (one write per subscriber the
            // fan-out writes to), flushed before waiting for more.
            let mut batch = self.hub.batch();
            let mut batched = 0;
            loop {
                let ready = if batched < MAX_BATCH { stream.next().now_or_never() } else { None };
                let msg = match ready {
                    Some(msg) => msg,
                    None => {
                        batch.flush();
                        batched = 0;
                        tokio::select! {
                            () = stop.cancelled() => return,
                            m = stream.next() => m,
                        }
                    }
                };
                let Some(msg) = msg else { break };
                let Ok(payload) = msg.get_payload::<String>() else { continue };
                self.on_message(&payload, &mut batch).await;
                batched += 1;
            }
            batch.flush();
            warn!("Redis pub/sub connection lost; reconnecting");
            self.failed("pubsub", &"connection lost");
            self.watch.lock().await.sink = None;
        }
    }

    /// Delivers one publication from the channel, first filling any gap since the last one.
    async fn on_message(&self, payload: &str, batch: &mut Batch) {
        let frame: PubFrame = match serde_json::from_str(payload) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "unreadable publication on a Redis channel");
                return;
            }
        };
        let site: Arc<str> = frame.site.as_str().into();
        let previous = self.delivered.lock().unwrap_or_else(|e| e.into_inner()).get(&site).cloned();
        if let Some(prev) = &previous {
            if *prev.epoch == frame.epoch && frame.offset <= prev.offset {
                return;
            }
            if *prev.epoch == frame.epoch && frame.offset > prev.offset + 1 {
                self.fill_gap(&site, prev.offset, frame.offset, batch).await;
            }
        }
        let position = Position { epoch: frame.epoch.as_str().into(), offset: frame.offset };
        let publication =
            Arc::new(Publication::from_parts(site.clone(), frame.topic.as_str().into(), frame.data, position.clone()));
        self.hub.deliver_to(&publication, batch);
        self.delivered.lock().unwrap_or_else(|e| e.into_inner()).insert(site, position);
    }

    async fn fill_gap(&self, site: &Arc<str>, after: u64, before: u64, batch: &mut Batch) {
        let Ok((epoch, _, entries)) = self.read_history(site).await else { return };
        let missing: Vec<_> = entries_to_publications(site, &epoch, entries)
            .into_iter()
            .filter(|p| p.position.offset > after && p.position.offset < before)
            .collect();
        warn!(%site, after, before, filled = missing.len(), "filled a gap in a Redis channel from history");
        for publication in missing {
            self.hub.deliver_to(&publication, batch);
        }
    }

    /// Checks Redis with a PING; used by the health loop.
    pub async fn ping(&self) {
        let mut conn = self.conn.clone();
        let pong: Result<Result<String, _>, _> = tokio::time::timeout(COMMAND_TIMEOUT, conn.ping::<String>()).await;
        let subscribed = self.watch.lock().await.sink.is_some();
        match pong {
            Ok(Ok(_)) if subscribed => self.healthy.store(true, Ordering::Relaxed),
            Ok(Ok(_)) => self.healthy.store(false, Ordering::Relaxed),
            Ok(Err(e)) => drop(self.failed("ping", &e)),
            Err(_) => drop(self.failed("ping", &"timed out")),
        }
    }
}

/// Stream entries (newest first, as XREVRANGE returns them) to publications, oldest first.
fn entries_to_publications(site: &Arc<str>, epoch: &str, entries: Vec<Entry>) -> Vec<Arc<Publication>> {
    let epoch: Arc<str> = epoch.into();
    let mut out: Vec<_> = entries
        .into_iter()
        .filter_map(|(_, fields)| {
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let offset = field("o")?.parse().ok()?;
            let topic: Arc<str> = field("t")?.into();
            let data = serde_json::value::RawValue::from_string(field("d")?.to_owned()).ok()?;
            let position = Position { epoch: epoch.clone(), offset };
            Some(Arc::new(Publication::from_parts(site.clone(), topic, data, position)))
        })
        .collect();
    out.reverse();
    out
}
