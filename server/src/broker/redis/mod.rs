//! The Redis broker: several relay nodes share positions, history, latest values and dedupe
//! through one Redis, and hear each other's publications on its pub/sub channels.
//!
//! Publishing is one Lua script per message (dedupe, epoch, offset, XADD, trim, latest value,
//! PUBLISH), so positions are assigned atomically cluster-wide; a subscriber's snapshot reads
//! position, history and latest values in one script too. Whenever a site's epoch is drawn anew,
//! its latest values (of an older epoch, if any survived) are deleted in the same script. The
//! epoch lives in Redis: a relay restart keeps it, a Redis restart without persistence loses it
//! and the next touch draws a new one, which tells clients that recovery is impossible. Every key
//! expires once what it holds is too old to serve ([`keys`] lists them and their bounds), so what
//! publishers send leaves nothing lasting behind.
//!
//! A node subscribes to a site's channel only while it has local subscribers, and delivers what
//! arrives to its hub in channel order. No lock is held across a Redis call.
//!
//! - [`keys`]: the key schema.
//! - [`scripts`]: the Lua scripts (`lua/*.lua`).
//! - [`call`]: one Redis call, with the timeout and the health accounting.
//! - [`publish`]: publishing, pipelined.
//! - [`read`]: snapshots, latest values, the node's reads of a stream.
//! - [`watch`]: which sites the node listens to.
//! - [`reader`]: the pub/sub connection and its reader task.
//! - [`catch_up`]: gap filling and catch-up after a reconnect.
//! - [`ping`]: the health check.
//! - [`decode`]: Redis's answers to publications.

mod call;
mod catch_up;
mod decode;
mod keys;
mod ping;
mod publish;
mod read;
mod reader;
mod scripts;
mod watch;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, TlsCertificates,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{BrokerError, HistoryOptions};
use crate::{Config, hub::Hub, metrics::Metrics};
use keys::Keys;
use scripts::Scripts;
use watch::Watch;

/// The default of `DATASTREAM_REDIS_TIMEOUT`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://…` or, over TLS, `rediss://…` (may hold a password: never logged).
    pub url: String,
    /// Prefix of every key and channel.
    pub prefix: String,
    /// Longest any Redis command may take before the broker reports Redis unavailable: the
    /// one timeout, also the client's own response timeout.
    pub timeout: Duration,
    /// PEM file of the CA(s) that signed the Redis server's certificate, trusted instead of the
    /// system's roots (a private CA); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl RedisSettings {
    /// `url` and `prefix` with the default timeout and the system's roots.
    pub fn new(url: &str, prefix: &str) -> Self {
        RedisSettings { url: url.to_owned(), prefix: prefix.to_owned(), timeout: DEFAULT_TIMEOUT, ca_file: None }
    }

    /// The configured Redis, if any.
    pub fn from_config(config: &Config) -> Option<Self> {
        let url = config.redis_url.as_deref()?;
        Some(RedisSettings {
            url: url.to_owned(),
            prefix: config.redis_prefix.clone(),
            timeout: config.redis_timeout,
            ca_file: config.redis_ca_file.clone(),
        })
    }

    /// A client for these settings, without connecting: checks the URL and reads the CA file.
    pub fn client(&self) -> Result<Client, SettingsError> {
        if self.url.contains("#insecure") {
            return Err(SettingsError::Url(
                "certificate verification cannot be turned off (#insecure); trust a private CA with DATASTREAM_REDIS_CA_FILE"
                    .into(),
            ));
        }
        let Some(path) = &self.ca_file else {
            return Client::open(self.url.as_str()).map_err(|e| SettingsError::Url(format!("bad Redis URL: {e}")));
        };
        if !self.url.starts_with("rediss://") {
            return Err(SettingsError::CaFile("a CA file is only used with a rediss:// URL (TLS)".into()));
        }
        let pem =
            std::fs::read(path).map_err(|e| SettingsError::CaFile(format!("cannot read {}: {e}", path.display())))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(SettingsError::CaFile(format!("{} holds no PEM certificate", path.display())));
        }
        Client::build_with_tls(self.url.as_str(), TlsCertificates { client_tls: None, root_cert: Some(pem) }).map_err(
            |e| match e.kind() {
                redis::ErrorKind::InvalidClientConfig => SettingsError::Url(format!("bad Redis URL: {e}")),
                _ => SettingsError::CaFile(format!("{}: {e}", path.display())),
            },
        )
    }
}

/// Redis settings that cannot work, by setting.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The URL (`DATASTREAM_REDIS_URL`).
    #[error("{0}")]
    Url(String),
    /// The CA file (`DATASTREAM_REDIS_CA_FILE`).
    #[error("{0}")]
    CaFile(String),
}

/// The Redis broker.
#[derive(Debug)]
pub struct RedisBroker {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Opens the pub/sub connection (again, after a loss).
    client: Client,
    /// The command connection, shared by every caller (multiplexed), reconnected by itself.
    conn: ConnectionManager,
    keys: Keys,
    options: HistoryOptions,
    scripts: Scripts,
    /// The one Redis timeout ([`RedisSettings::timeout`]).
    timeout: Duration,
    /// Watched sites and the pub/sub connection. Never held across a Redis call.
    watch: Mutex<Watch>,
    /// Whether Redis answered the last call.
    answered: AtomicBool,
}

impl RedisBroker {
    /// Connects to Redis. Fails if the settings are wrong or Redis cannot be reached at start
    /// (a TLS server whose certificate is not trusted included).
    pub async fn connect(
        settings: &RedisSettings,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        options: HistoryOptions,
    ) -> Result<Arc<Self>, BrokerError> {
        let client = settings.client().map_err(|e| BrokerError::Settings(e.to_string()))?;
        let at = client.get_connection_info().addr().clone();
        let tls = matches!(at, ConnectionAddr::TcpTls { .. });
        let failed = |e: &dyn std::fmt::Display| {
            let e = e.to_string();
            let hint = if tls && e.contains("certificate") {
                " (is the server's certificate signed by a CA in DATASTREAM_REDIS_CA_FILE, or by one the system trusts?)"
            } else {
                ""
            };
            BrokerError::Unavailable(format!("cannot connect to Redis at {at}: {e}{hint}"))
        };
        // One attempt first: what retrying cannot mend (a certificate not trusted, a refused
        // password) fails the start at once. Redis not up yet is left to the manager's retries.
        let probe = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout));
        if let Err(e) = client.get_multiplexed_async_connection_with_config(&probe).await
            && !(e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped())
        {
            return Err(failed(&e));
        }
        // The client's own deadlines are the relay's one timeout: a Redis stall shorter than it
        // delays a command, never fails it.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.timeout))
            .set_connection_timeout(Some(settings.timeout));
        let conn = tokio::time::timeout(settings.timeout * 5, client.get_connection_manager_with_config(config))
            .await
            .map_err(|_| BrokerError::Unavailable(format!("Redis at {at} did not answer")))?
            .map_err(|e| failed(&e))?;
        Ok(Arc::new(RedisBroker {
            hub,
            metrics,
            client,
            conn,
            keys: Keys::new(&settings.prefix),
            options,
            scripts: Scripts::new(),
            timeout: settings.timeout,
            watch: Mutex::default(),
            answered: AtomicBool::new(true),
        }))
    }

    /// Whether Redis is reachable, for `/readyz`: it answered the last call, and the pub/sub
    /// connection is up and caught up.
    pub fn healthy(&self) -> bool {
        self.answered.load(Ordering::Relaxed) && self.state().caught_up
    }

    fn new_epoch() -> String {
        format!("{:016x}", rand::random::<u64>())
    }
}
