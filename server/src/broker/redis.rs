//! The Redis broker: several relay nodes share positions, history and dedupe through one Redis.
//!
//! Per site, with `{site}` as the cluster hash tag so one script touches one slot:
//! - `<prefix>:{site}:meta` — hash with the site's `epoch` and last `offset`;
//! - `<prefix>:{site}:stream` — a stream holding the history (MAXLEN = history size, trimmed by
//!   age with MINID on every publish, and expiring after the history TTL without a publish: what a
//!   site that went quiet held is too old to replay by then);
//! - `<prefix>:{site}:dedupe:<key>` — `SET NX PX` marker of an idempotency key;
//! - `<prefix>:{site}:latest` — hash: topic (`<topic>\n<key>` for a topic of
//!   [`LatestKeys`](crate::publication::LatestKeys)) → its latest publication,
//!   `<offset>:<unix ms>:<data>`;
//! - `<prefix>:{site}:latest:order` — sorted set: the same fields scored by that offset, to drop
//!   the least recently published past the limit; both expire after the latest TTL without a
//!   publish;
//! - channel `<prefix>:{site}:pub` — every publication, already encoded as a v2 frame.
//!
//! Publishing is one Lua script (dedupe, epoch, offset, XADD, trim, latest, PUBLISH), so positions
//! are assigned atomically cluster-wide, and a snapshot reads position, history and latest values
//! in one script too. Whenever a site's epoch is drawn anew, its latest values (of an older epoch,
//! if any survived) are deleted in the same script. The epoch lives in Redis: a relay restart keeps it, a Redis
//! restart without persistence loses it and the next touch draws a new one, which tells clients
//! that recovery is impossible. Reading a site never published to draws its epoch too (a client
//! subscribing there is told one), but that `meta` key expires after the history TTL unless a
//! publication makes it permanent: what nobody publishes leaves nothing lasting behind.
//!
//! A node subscribes to a site's channel only while it has local subscribers, and delivers what
//! arrives to its hub in channel order. No lock is held across a Redis call: the watched sites
//! sit behind a plain mutex, and each site's SUBSCRIBE / UNSUBSCRIBE is ordered by a lock of its
//! own, so a slow Redis delays the subscribers of one site by at most [`COMMAND_TIMEOUT`], never
//! the whole node.
//!
//! Per watched site the node keeps the position up to which its local subscribers have
//! everything (the last publication delivered, or the site's position just before the node
//! subscribed). A publication whose offset skips ahead of it is preceded by the missing ones,
//! read from the stream. If the pub/sub connection drops (or stops answering the sweep's ping),
//! the reader reconnects with backoff (logged, counted in `datastream_redis_reconnects_total`),
//! resubscribes every watched site and then, before reading the channel again, delivers what each
//! site missed meanwhile from its stream — so a site that gets no further publication is not
//! left waiting for one to reveal its gap.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use datastream_protocol::{backoff::Backoff, v2::PubFrame};
use futures_util::{FutureExt, StreamExt, stream};
use redis::{AsyncCommands, Client, Script, aio::ConnectionManager, aio::PubSubSink, aio::PubSubStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{BrokerError, HistoryOptions, Latest, PublishOutcome, Snapshot};
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

/// Sites resubscribed, or read back, at once after a reconnect: the commands share a connection,
/// so this bounds what is in flight, not how long anyone waits.
const RECONNECT_CONCURRENCY: usize = 32;

/// Reads of a site's stream tried after a reconnect before its gap is left to its next
/// publication.
const CATCH_UP_TRIES: u32 = 5;

const PUBLISH_LUA: &str = r#"
if KEYS[3] ~= '' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[6]) then return {'dup', 0} end
end
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[5]) == 1 then
  redis.call('DEL', KEYS[4], KEYS[5])
end
redis.call('PERSIST', KEYS[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '*', 'o', offset, 't', ARGV[2], 'd', ARGV[3])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XTRIM', KEYS[2], 'MINID', now_ms - tonumber(ARGV[7]))
redis.call('PEXPIRE', KEYS[2], ARGV[7])
local keep = tonumber(ARGV[9])
if keep > 0 then
  redis.call('HSET', KEYS[4], ARGV[11], offset .. ':' .. now_ms .. ':' .. ARGV[3])
  if redis.call('ZADD', KEYS[5], offset, ARGV[11]) == 1 then
    local excess = redis.call('ZCARD', KEYS[5]) - keep
    if excess > 0 then
      local gone = redis.call('ZPOPMIN', KEYS[5], excess)
      for i = 1, #gone, 2 do redis.call('HDEL', KEYS[4], gone[i]) end
    end
  end
  redis.call('PEXPIRE', KEYS[4], ARGV[10])
  redis.call('PEXPIRE', KEYS[5], ARGV[10])
end
local frame = '{"type":"pub","site":"' .. ARGV[1] .. '","topic":"' .. ARGV[2] .. '","epoch":"' .. epoch ..
  '","offset":' .. offset .. ',"data":' .. ARGV[3] .. '}'
redis.call('PUBLISH', ARGV[8], frame)
return {epoch, offset}
"#;

/// Reads the latest values (`KEYS[3]`) of the topics `ARGV[6..]` (all if none; none at all if
/// `ARGV[4]` is `'0'`) published within `ARGV[5]` ms of `now_ms`, as `{field, value}` pairs (a
/// field is a topic, or `<topic>\n<key>`). The hash holds at most the latest-topics limit of
/// fields. Shared by the scripts below.
const READ_LATEST_LUA: &str = r#"
local function read_latest(now_ms)
  local out = {}
  if ARGV[4] == '0' then return out end
  local oldest = now_ms - tonumber(ARGV[5])
  local wanted = nil
  if #ARGV > 5 then
    wanted = {}
    for i = 6, #ARGV do wanted[ARGV[i]] = true end
  end
  local all = redis.call('HGETALL', KEYS[3])
  for i = 1, #all, 2 do
    local field, value = all[i], all[i + 1]
    local topic = string.match(field, '^[^\n]*')
    if wanted == nil or wanted[topic] then
      local ms = tonumber(string.match(value, '^%d+:(%d+):'))
      if ms and ms >= oldest then out[#out + 1] = {field, value} end
    end
  end
  return out
end
"#;

/// A subscriber's view of a site (position, history and, if asked, latest values): draws the
/// epoch of a site never published to, with a TTL (the history TTL) that the first publication
/// removes.
const SNAPSHOT_LUA: &str = r#"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[3]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[3], KEYS[4])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = redis.call('XREVRANGE', KEYS[2], '+', tostring(now_ms - tonumber(ARGV[2])), 'COUNT', ARGV[1])
return {epoch, offset, entries, read_latest(now_ms)}
"#;

/// A reader's view of a site's latest values (`GET /sites/<site>/latest`): creates nothing; a
/// site without an epoch reads as epoch `''` and nothing held.
const LATEST_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {'', 0, {}, {}} end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {epoch, offset, {}, read_latest(now_ms)}
"#;

/// The node's own read of a site's stream (to fill a gap): creates nothing; a site without an
/// epoch reads as epoch `''` and nothing held.
const HISTORY_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {'', 0, {}} end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = redis.call('XREVRANGE', KEYS[2], '+', tostring(now_ms - tonumber(ARGV[2])), 'COUNT', ARGV[1])
return {epoch, offset, entries}
"#;

/// One stream entry as Redis returns it: id and field/value pairs.
type Entry = (String, Vec<(String, String)>);

/// What the snapshot scripts return: epoch, offset, stream entries (newest first) and latest
/// values as (topic, `<offset>:<ms>:<data>`).
type Read = (String, u64, Vec<Entry>, Vec<(String, String)>);

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
    latest_script: Script,
    history_script: Script,
    /// Watched sites and the pub/sub connection. Never held across a Redis call.
    watch: Mutex<Watch>,
    /// Whether Redis answered the last command and the pub/sub connection is up.
    healthy: AtomicBool,
}

#[derive(Debug, Default)]
struct Watch {
    /// Sites with local subscribers (or that had them at the last sweep).
    sites: HashMap<Arc<str>, Site>,
    /// The pub/sub connection, while it is up.
    live: Option<Live>,
    /// Pub/sub connections made so far; numbers each, so a subscription confirmed on an earlier
    /// connection is not taken for one on the current.
    connections: u64,
    /// Whether the current connection has resubscribed every site and delivered what each missed.
    caught_up: bool,
}

/// The pub/sub connection in use.
#[derive(Clone)]
struct Live {
    /// Its number ([`Watch::connections`] when it was made).
    id: u64,
    /// Sends its SUBSCRIBE / UNSUBSCRIBE; cloned to be used outside the lock.
    sink: PubSubSink,
    /// Cancelled when the sweep finds it no longer answering, so the reader drops it and
    /// reconnects even though its socket never closed.
    lost: CancellationToken,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live").field("id", &self.id).finish_non_exhaustive()
    }
}

/// One watched site.
#[derive(Debug, Default)]
struct Site {
    /// Held across this site's SUBSCRIBE or UNSUBSCRIBE, so they reach Redis in the order they
    /// were decided; no other site waits for it.
    op: Arc<tokio::sync::Mutex<()>>,
    /// The connection on which Redis confirmed the subscription.
    subscribed_on: Option<u64>,
    /// Subscribes that failed so far: a watcher that queued behind one that failed fails at once
    /// instead of adding its own timeout to the queue.
    failures: u64,
    /// Set while the sweep drops the site, so a watcher arriving meanwhile subscribes it again.
    leaving: bool,
    /// Position up to which local subscribers have every publication they are owed: the last one
    /// delivered, or the site's position just before the node subscribed. `None` if unknown.
    delivered: Option<Position>,
}

/// Marks the pub/sub connection gone when the reader ends, however it ends (stopped, or a panic
/// its supervisor restarts it after), so nothing takes a dead connection's subscriptions for live.
struct ReaderGone<'a>(&'a RedisBroker);

impl Drop for ReaderGone<'_> {
    fn drop(&mut self) {
        let mut watch = self.0.state();
        watch.live = None;
        watch.caught_up = false;
        drop(watch);
        self.0.healthy.store(false, Ordering::Relaxed);
    }
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
            snapshot_script: Script::new(&format!("{READ_LATEST_LUA}{SNAPSHOT_LUA}")),
            latest_script: Script::new(&format!("{READ_LATEST_LUA}{LATEST_LUA}")),
            history_script: Script::new(HISTORY_LUA),
            watch: Mutex::default(),
            healthy: AtomicBool::new(true),
        }))
    }

    fn key(&self, site: &str, what: &str) -> String {
        format!("{}:{{{site}}}:{what}", self.prefix)
    }

    fn channel(&self, site: &str) -> String {
        self.key(site, "pub")
    }

    fn state(&self) -> MutexGuard<'_, Watch> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
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
        // A topic cannot hold a newline, so `<topic>\n<key>` names one topic's key unambiguously.
        let slot: Cow<'_, str> = match self.options.latest_keys.key_of(&req.topic, &req.data) {
            Some(key) if self.options.latest_topics > 0 => format!("{}\n{key}", req.topic).into(),
            _ => Cow::Borrowed(&req.topic),
        };
        let mut invocation = self.publish_script.prepare_invoke();
        invocation
            .key(self.key(site, "meta"))
            .key(self.key(site, "stream"))
            .key(dedupe)
            .key(self.key(site, "latest"))
            .key(self.key(site, "latest:order"))
            .arg(site)
            .arg(&*req.topic)
            .arg(req.data.get())
            .arg(self.options.size)
            .arg(Self::new_epoch())
            .arg(self.options.dedupe_window.as_millis() as u64)
            .arg(self.options.ttl.as_millis() as u64)
            .arg(self.channel(site))
            .arg(self.options.latest_topics)
            .arg(self.options.latest_ttl.as_millis() as u64)
            .arg(&*slot);
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
        {
            let mut watch = self.state();
            let live = watch.live.as_ref().map(|l| l.id);
            let entry = watch.sites.entry(site.clone()).or_default();
            if live.is_some() && entry.subscribed_on == live && !entry.leaving {
                return Ok(());
            }
        }
        self.subscribe(site, true).await
    }

    /// Subscribes `site` on the live connection unless it is already. `remember`: add the site if
    /// it is not watched (a watcher), rather than leave it dropped (the reader resubscribing).
    async fn subscribe(&self, site: &Arc<str>, remember: bool) -> Result<(), BrokerError> {
        loop {
            let (op, failures) = {
                let mut watch = self.state();
                let entry = match watch.sites.get_mut(site) {
                    Some(entry) => entry,
                    None if remember => watch.sites.entry(site.clone()).or_default(),
                    None => return Ok(()),
                };
                (entry.op.clone(), entry.failures)
            };
            let _op = op.lock().await;
            let (live, needs_baseline) = {
                let watch = self.state();
                // Dropped by the sweep while this waited: look again.
                let Some(entry) = watch.sites.get(site).filter(|e| Arc::ptr_eq(&e.op, &op)) else { continue };
                let Some(live) = watch.live.clone() else {
                    drop(watch);
                    return Err(self.failed("subscribe", &"pub/sub connection down"));
                };
                if entry.subscribed_on == Some(live.id) {
                    return Ok(());
                }
                if entry.failures != failures {
                    return Err(BrokerError::Unavailable("Redis subscribe failed".into()));
                }
                (live, entry.delivered.is_none())
            };
            if needs_baseline {
                // Read before subscribing: whatever is published after it comes through the
                // channel, or is filled from the stream once a later publication (or a
                // reconnect) shows it missing.
                if let Ok(top) = self.read_top(site).await {
                    let mut watch = self.state();
                    if let Some(entry) = watch.sites.get_mut(site)
                        && entry.delivered.is_none()
                    {
                        entry.delivered = Some(top);
                    }
                }
            }
            let mut sink = live.sink.clone();
            let result = tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(self.channel(site))).await;
            let confirmed = matches!(result, Ok(Ok(())));
            if let Some(entry) = self.state().sites.get_mut(site) {
                if confirmed {
                    entry.subscribed_on = Some(live.id);
                } else {
                    entry.failures += 1;
                }
            }
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(self.failed("subscribe", &e)),
                Err(_) => Err(self.failed("subscribe", &"timed out")),
            };
        }
    }

    /// The site's position as it stands, read without creating anything (epoch `''` if the site
    /// has none).
    async fn read_top(&self, site: &str) -> Result<Position, BrokerError> {
        let mut conn = self.conn.clone();
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(self.key(site, "meta")).arg("epoch").arg("offset");
        let read = hmget.query_async::<(Option<String>, Option<u64>)>(&mut conn);
        let (epoch, offset) = tokio::time::timeout(COMMAND_TIMEOUT, read)
            .await
            .map_err(|_| self.failed("history", &"timed out"))?
            .map_err(|e| self.failed("history", &e))?;
        Ok(Position { epoch: epoch.unwrap_or_default().into(), offset: offset.unwrap_or(0) })
    }

    /// Waits (at most `limit`) until the pub/sub connection is up, every watched site
    /// subscribed and caught up; false if it is not.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.state().caught_up {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Brings the subscriptions in line with local subscribers: stops listening to sites that no
    /// longer have any, and retries those whose subscribe failed on the current connection.
    pub async fn unwatch_idle(&self) {
        let (idle, pending) = {
            let watch = self.state();
            let live = watch.live.as_ref().map(|l| l.id);
            let mut idle = Vec::new();
            let mut pending = Vec::new();
            for (site, entry) in &watch.sites {
                if self.hub.subscriber_count(site) == 0 {
                    idle.push((site.clone(), entry.op.clone()));
                } else if live.is_some() && entry.subscribed_on != live {
                    pending.push(site.clone());
                }
            }
            (idle, pending)
        };
        for (site, op) in idle {
            let _op = op.lock().await;
            let live = {
                let mut watch = self.state();
                let live = watch.live.clone();
                let Some(entry) = watch.sites.get_mut(&site).filter(|e| Arc::ptr_eq(&e.op, &op)) else { continue };
                // A subscriber may have come since the list was made; a later one finds
                // `leaving` set and subscribes again once this is done.
                if self.hub.subscriber_count(&site) > 0 {
                    continue;
                }
                entry.leaving = true;
                live
            };
            let done = match live {
                Some(live) => {
                    let mut sink = live.sink.clone();
                    matches!(
                        tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(self.channel(&site))).await,
                        Ok(Ok(()))
                    )
                }
                // The next connection subscribes only to the sites still listed.
                None => true,
            };
            let mut watch = self.state();
            if done {
                watch.sites.remove(&site);
            } else if let Some(entry) = watch.sites.get_mut(&site) {
                // Whether Redis still sends it is unknown: the next watcher subscribes again, the
                // next sweep retries.
                entry.leaving = false;
                entry.subscribed_on = None;
            }
        }
        for site in pending {
            if let Err(e) = self.subscribe(&site, false).await {
                warn!(%site, error = %e, "cannot subscribe to a watched site; retrying at the next sweep");
            }
        }
    }

    /// See [`super::Broker::snapshot`].
    pub async fn snapshot(&self, site: &Arc<str>, latest: Latest<'_>) -> Result<Snapshot, BrokerError> {
        self.watch(site).await?;
        let (epoch, top, entries, values) = self.read_snapshot(&self.snapshot_script, site, latest).await?;
        let history = entries_to_publications(site, &epoch, entries);
        let latest = values_to_publications(site, &epoch, values);
        Ok(Snapshot { epoch: epoch.into(), top, history, latest })
    }

    /// See [`super::Broker::latest`].
    pub async fn latest(&self, site: &Arc<str>, topics: Option<&[Arc<str>]>) -> Result<Snapshot, BrokerError> {
        let (epoch, top, _, values) = self.read_snapshot(&self.latest_script, site, Latest::Of(topics)).await?;
        let latest = values_to_publications(site, &epoch, values);
        Ok(Snapshot { epoch: epoch.into(), top, history: Vec::new(), latest })
    }

    async fn read_snapshot(&self, script: &Script, site: &str, latest: Latest<'_>) -> Result<Read, BrokerError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.key(site, "meta"))
            .key(self.key(site, "stream"))
            .key(self.key(site, "latest"))
            .key(self.key(site, "latest:order"))
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
        let out = tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| self.failed("history", &"timed out"))?
            .map_err(|e| self.failed("history", &e))?;
        self.healthy.store(true, Ordering::Relaxed);
        Ok(out)
    }

    async fn read_history(&self, script: &Script, site: &str) -> Result<(String, u64, Vec<Entry>), BrokerError> {
        let mut invocation = script.prepare_invoke();
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
    /// watched site, delivers what each missed, then what arrives; and again after a loss.
    pub async fn run_reader(self: Arc<Self>, stop: CancellationToken) {
        let _gone = ReaderGone(&self);
        let mut attempt = 0;
        let mut reconnect = false;
        loop {
            let pubsub = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(COMMAND_TIMEOUT * 5, self.client.get_async_pubsub()) => r,
            };
            let failure = match pubsub {
                Ok(Ok(pubsub)) => {
                    let (sink, stream) = pubsub.split();
                    let since = Instant::now();
                    if !self.listen(sink, stream, reconnect, &stop).await {
                        return;
                    }
                    reconnect = true;
                    // A connection that stayed up a while starts the delays over; one that drops
                    // at once (a flapping network, a killed client) keeps them growing.
                    if since.elapsed() > RETRY.max {
                        attempt = 0;
                    }
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".to_owned()),
            };
            if let Some(e) = failure {
                self.failed("pubsub_connect", &e);
                warn!(error = %e, attempt, "cannot connect the Redis pub/sub connection");
            }
            let delay = RETRY.delay(attempt, rand::random());
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Uses one pub/sub connection until it is lost (true) or `stop` (false).
    async fn listen(
        &self,
        sink: PubSubSink,
        mut stream: PubSubStream,
        reconnect: bool,
        stop: &CancellationToken,
    ) -> bool {
        let lost = CancellationToken::new();
        let id = {
            let mut watch = self.state();
            watch.connections += 1;
            let id = watch.connections;
            watch.live = Some(Live { id, sink, lost: lost.clone() });
            id
        };
        if reconnect {
            info!(connection = id, "Redis pub/sub reconnected");
            self.metrics.redis_reconnects.inc();
        }
        // Subscribed first, then read back: what is published after a site's subscription comes
        // through the channel, what came before it is in the stream; the delivered positions drop
        // what both hold.
        let mut batch = self.hub.batch();
        tokio::select! {
            () = stop.cancelled() => return false,
            () = async {
                self.resubscribe_all().await;
                self.catch_up(&mut batch).await;
            } => {}
        }
        batch.flush();
        self.state().caught_up = true;
        self.healthy.store(true, Ordering::Relaxed);
        // What has arrived already is delivered as one batch (one write per subscriber the
        // fan-out writes to), flushed before waiting for more.
        let mut batched = 0;
        loop {
            let ready = if batched < MAX_BATCH { stream.next().now_or_never() } else { None };
            let msg = match ready {
                Some(msg) => msg,
                None => {
                    batch.flush();
                    batched = 0;
                    tokio::select! {
                        () = stop.cancelled() => return false,
                        () = lost.cancelled() => None,
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
        {
            let mut watch = self.state();
            if watch.live.as_ref().is_some_and(|l| l.id == id) {
                watch.live = None;
                watch.caught_up = false;
            }
        }
        warn!(connection = id, "Redis pub/sub connection lost; reconnecting");
        self.failed("pubsub", &"connection lost");
        true
    }

    /// Subscribes every watched site on the live connection.
    async fn resubscribe_all(&self) {
        let sites: Vec<Arc<str>> = self.state().sites.keys().cloned().collect();
        stream::iter(sites)
            .for_each_concurrent(RECONNECT_CONCURRENCY, |site| async move {
                if let Err(e) = self.subscribe(&site, false).await {
                    warn!(%site, error = %e, "cannot resubscribe a watched site; retrying at the next sweep");
                }
            })
            .await;
    }

    /// Delivers, for every watched site, what was published since its delivered position. A
    /// site whose stream cannot be read is tried again a few times (the command connection may
    /// be reconnecting too), then left to the gap filling of its next publication.
    async fn catch_up(&self, batch: &mut Batch) {
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
                let read = self.read_history(&self.history_script, &site).await;
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
            let missed: Vec<_> = entries_to_publications(&site, &epoch, entries)
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

    fn set_delivered(&self, site: &str, position: Position) {
        if let Some(entry) = self.state().sites.get_mut(site) {
            entry.delivered = Some(position);
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
        let previous = self.state().sites.get(&site).and_then(|e| e.delivered.clone());
        let after = match &previous {
            Some(prev) if *prev.epoch == frame.epoch => {
                if frame.offset <= prev.offset {
                    return;
                }
                prev.offset
            }
            // Another epoch: Redis lost the site's stream, and all of the new one is new here.
            Some(_) => 0,
            None => frame.offset.saturating_sub(1),
        };
        if frame.offset > after + 1 {
            self.fill_gap(&site, &frame.epoch, after, frame.offset, batch).await;
        }
        let position = Position { epoch: frame.epoch.as_str().into(), offset: frame.offset };
        let publication =
            Arc::new(Publication::from_parts(site.clone(), frame.topic.as_str().into(), frame.data, position.clone()));
        self.hub.deliver_to(&publication, batch);
        self.set_delivered(&site, position);
    }

    async fn fill_gap(&self, site: &Arc<str>, epoch: &str, after: u64, before: u64, batch: &mut Batch) {
        let Ok((held, _, entries)) = self.read_history(&self.history_script, site).await else { return };
        if held != epoch {
            return;
        }
        let missing: Vec<_> = entries_to_publications(site, &held, entries)
            .into_iter()
            .filter(|p| p.position.offset > after && p.position.offset < before)
            .collect();
        warn!(%site, after, before, filled = missing.len(), "filled a gap in a Redis channel from history");
        self.deliver_filled(&missing, batch);
    }

    /// Checks Redis with a PING on both connections; used by the health loop. A pub/sub
    /// connection that does not answer is dropped, and the reader reconnects.
    pub async fn ping(&self) {
        let mut conn = self.conn.clone();
        let pong: Result<Result<String, _>, _> = tokio::time::timeout(COMMAND_TIMEOUT, conn.ping::<String>()).await;
        let live = self.state().live.clone();
        let listening = match live {
            Some(live) => {
                let mut sink = live.sink.clone();
                let answered =
                    matches!(tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await, Ok(Ok(_)));
                if !answered {
                    self.metrics.redis_error("pubsub_ping");
                    live.lost.cancel();
                }
                answered
            }
            None => false,
        };
        match pong {
            Ok(Ok(_)) if listening => self.healthy.store(true, Ordering::Relaxed),
            Ok(Ok(_)) => self.healthy.store(false, Ordering::Relaxed),
            Ok(Err(e)) => drop(self.failed("ping", &e)),
            Err(_) => drop(self.failed("ping", &"timed out")),
        }
    }
}

/// Latest values (`<offset>:<ms>:<data>` per topic, or `<topic>\n<key>`) to publications, oldest
/// first.
fn values_to_publications(site: &Arc<str>, epoch: &str, values: Vec<(String, String)>) -> Vec<Arc<Publication>> {
    let epoch: Arc<str> = epoch.into();
    let mut out: Vec<_> = values
        .into_iter()
        .filter_map(|(field, value)| {
            let (topic, key) = match field.split_once('\n') {
                Some((topic, key)) => (topic, Some(Arc::from(key))),
                None => (field.as_str(), None),
            };
            let mut parts = value.splitn(3, ':');
            let offset = parts.next()?.parse().ok()?;
            let _published_ms = parts.next()?;
            let data = serde_json::value::RawValue::from_string(parts.next()?.to_owned()).ok()?;
            let position = Position { epoch: epoch.clone(), offset };
            Some(Arc::new(Publication::from_parts(site.clone(), topic.into(), data, position).with_latest_key(key)))
        })
        .collect();
    out.sort_unstable_by_key(|p| p.position.offset);
    out
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
