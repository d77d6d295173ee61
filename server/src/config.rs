//! Configuration: one struct, read from command-line flags and `DATASTREAM_*` environment
//! variables, validated once at start.
//!
//! Every field has a default that runs the relay alone (in-memory broker, HTTP publish) so the
//! bare binary serves on first run. AWS settings (`AWS_REGION`, `AWS_ENDPOINT_URL_SQS`, credentials)
//! are not duplicated here: the AWS SDK reads them as it always does.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, ValueEnum};
use datastream_protocol::NameRules;

use crate::{client_addr::Cidr, publication::LatestKeys};

/// Default largest message: SQS's own limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 262_144;

/// Most topics per site whose latest publication may be kept.
pub const MAX_LATEST_TOPICS: usize = 1024;

/// Paths the relay serves itself; the stage may not take one of these names.
const RESERVED_PATHS: &[&str] = &["healthz", "readyz", "metrics", "publish"];

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Whether v2 subscriptions may ask for publications as deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Deltas {
    /// Offered (the hello lists `fossil`) and sent to subscriptions that ask.
    On,
    /// Never sent: every publication goes out in full, the hello offers none, and a subscribe
    /// asking for one is granted none.
    Off,
}

/// Relay configuration. Each flag has a matching `DATASTREAM_*` environment variable.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address and port to listen on for WebSocket and HTTP.
    #[arg(long, env = "DATASTREAM_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Stage name: WebSocket clients connect to `/<stage>?site=<site>`, and the default SQS queue
    /// name's suffix. The original service's production stage is `dev`.
    #[arg(long, env = "DATASTREAM_STAGE", default_value = "dev")]
    pub stage: String,

    /// SQS queue to consume: a queue name (resolved with GetQueueUrl) or a full queue URL.
    /// Unset: no SQS ingest. Region, endpoint and credentials come from the standard AWS settings.
    #[arg(long, env = "DATASTREAM_SQS_QUEUE")]
    pub sqs_queue: Option<String>,

    /// Redis URL (`redis://host:6379/0`) shared by every relay node: positions, history, dedupe and
    /// fan-out across nodes. Unset: the in-memory broker (one node).
    #[arg(long, env = "DATASTREAM_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    #[arg(long, env = "DATASTREAM_REDIS_PREFIX", default_value = "datastream")]
    pub redis_prefix: String,

    /// Longest a Redis command may take (the Redis client's own response and connect timeout
    /// too): a Redis stall shorter than this delays publishes and subscribes; a longer one fails
    /// them (503, `unavailable`).
    #[arg(long, env = "DATASTREAM_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// PEM file of the CA(s) that signed the Redis server's certificate, for a `rediss://` URL
    /// served with a private CA; trusted instead of the system's roots. Unset: the system's
    /// roots (enough for ElastiCache, whose certificates public CAs sign). Certificates are
    /// always verified.
    #[arg(long, env = "DATASTREAM_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Concurrent SQS long-poll loops.
    #[arg(long, env = "DATASTREAM_SQS_POLLERS", default_value_t = 2)]
    pub sqs_pollers: usize,

    /// SQS long-poll wait (0–20 s).
    #[arg(long, env = "DATASTREAM_SQS_WAIT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub sqs_wait: Duration,

    /// Bearer token required by `POST /publish`. Unset: publishing is open to loopback callers only,
    /// unless `--publish-open` is given.
    #[arg(long, env = "DATASTREAM_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,

    /// Accept `POST /publish` from any address without a token. Only for trusted networks.
    #[arg(long, env = "DATASTREAM_PUBLISH_OPEN", default_value_t = false)]
    pub publish_open: bool,

    /// Largest accepted message (the JSON text of one `{site, topic, data}` object), in bytes.
    /// The default is SQS's own limit.
    #[arg(long, env = "DATASTREAM_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Largest accepted `POST /publish` body, in bytes.
    #[arg(long, env = "DATASTREAM_MAX_PUBLISH_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_publish_body_bytes: usize,

    /// Longest site or topic name, in characters.
    #[arg(long, env = "DATASTREAM_MAX_NAME_LEN", default_value_t = 64)]
    pub max_name_len: usize,

    /// Publications kept per site for recovery and rewind.
    #[arg(long, env = "DATASTREAM_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,

    /// How long a publication stays in history.
    #[arg(long, env = "DATASTREAM_HISTORY_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,

    /// Topics per site whose latest publication is kept (for `latest` subscriptions and
    /// `GET /sites/<site>/latest`), whatever the history's size and age; past it, the topic
    /// published least recently is dropped. 0 turns the feature off.
    #[arg(long, env = "DATASTREAM_LATEST_TOPICS", default_value_t = 64)]
    pub latest_topics: usize,

    /// Topics whose latest publication is kept per value of a top-level field of their data,
    /// as comma-separated `topic=field` (the status service publishes weather, enclosure and
    /// device status all as `sitestatus`, told apart by `statusType`). Empty: none.
    #[arg(long, env = "DATASTREAM_LATEST_KEYS", value_delimiter = ',', default_value = "sitestatus=statusType")]
    pub latest_keys: Vec<String>,

    /// How long a topic's latest publication is kept after it was published.
    #[arg(long, env = "DATASTREAM_LATEST_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub latest_ttl: Duration,

    /// Delta delivery: `on` sends a v2 subscription that asks for it (`"delta":"fossil"`) each
    /// large publication as the difference from the previous one of its slot (the same slots as
    /// `--latest-keys`) when that is at most half its size; `off` sends every publication in full.
    #[arg(long, env = "DATASTREAM_DELTAS", value_enum, default_value_t = Deltas::On)]
    pub deltas: Deltas,

    /// Window in which a repeated SQS message id or idempotency key is dropped as a duplicate.
    #[arg(long, env = "DATASTREAM_DEDUPE_WINDOW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub dedupe_window: Duration,

    /// Most idempotency keys the in-memory broker remembers (all sites together); past it the
    /// oldest is forgotten before its window ends, so a very late repeat of it publishes again.
    /// With Redis each key expires after the dedupe window instead.
    #[arg(long, env = "DATASTREAM_DEDUPE_KEYS", default_value_t = 100_000)]
    pub dedupe_keys: usize,

    /// Per-connection cap, in bytes, on what waits to be sent (queued, or written but not yet taken
    /// by the socket); a client that falls further behind is disconnected (close code 3000) so it
    /// cannot hold memory or delay others.
    #[arg(long, env = "DATASTREAM_CLIENT_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub client_queue_bytes: usize,

    /// Largest frame a client may send, in bytes.
    #[arg(long, env = "DATASTREAM_MAX_CLIENT_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_client_frame_bytes: usize,

    /// Interval between server pings.
    #[arg(long, env = "DATASTREAM_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// A connection from which nothing (not even a pong) was heard for this long is closed; so
    /// is one whose writes (a WebSocket's, or an HTTP response's) make no progress for this long.
    #[arg(long, env = "DATASTREAM_CLIENT_TIMEOUT", default_value = "35s", value_parser = humantime::parse_duration)]
    pub client_timeout: Duration,

    /// On SIGTERM/SIGINT, how long to wait for in-flight work and open sockets before exiting.
    #[arg(long, env = "DATASTREAM_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// On shutdown, connections are closed at random moments spread over this window, so
    /// clients do not all reconnect at once. Must be shorter than the shutdown timeout.
    #[arg(long, env = "DATASTREAM_DRAIN_WINDOW", default_value = "3s", value_parser = humantime::parse_duration)]
    pub drain_window: Duration,

    /// Most sites one v2 connection may subscribe to.
    #[arg(long, env = "DATASTREAM_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: u32,

    /// Most topics in one v2 subscription's filter (repeats count once); more are refused with
    /// `too_many_topics`. Bounds what a connection holds and what each publication is matched
    /// against.
    #[arg(long, env = "DATASTREAM_MAX_TOPICS", default_value_t = 64)]
    pub max_topics: u32,

    /// HS256 secret for client tokens (at least 32 bytes). Setting this (or `--jwks`) makes a
    /// token mandatory for WebSocket clients; unset, clients are anonymous and may read any site.
    #[arg(long, env = "DATASTREAM_JWT_SECRET", hide_env_values = true, conflicts_with = "jwks")]
    pub jwt_secret: Option<String>,

    /// RS256/ES256 public keys for client tokens: a JWKS file path or http(s) URL.
    #[arg(long, env = "DATASTREAM_JWKS")]
    pub jwks: Option<String>,

    /// How often a JWKS URL is fetched again.
    #[arg(long, env = "DATASTREAM_JWKS_REFRESH", default_value = "10m", value_parser = humantime::parse_duration)]
    pub jwks_refresh: Duration,

    /// Sites a client without a token may read while client tokens are on (comma-separated site
    /// codes, or `*` for every site): public pages next to logged-in users on one relay. A token
    /// grants these too. Empty: every client needs a token. Only with `--jwt-secret` or `--jwks`
    /// (without them every site is open anyway).
    #[arg(long, env = "DATASTREAM_ANONYMOUS_SITES", value_delimiter = ',')]
    pub anonymous_sites: Vec<String>,

    /// Required `aud` claim of client tokens, if set.
    #[arg(long, env = "DATASTREAM_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim of client tokens, if set.
    #[arg(long, env = "DATASTREAM_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Browser origins allowed to open WebSockets and to read `GET /sites/<site>/latest`
    /// (comma-separated, e.g. `https://www.photonranch.org`). Empty: any. Requests without an
    /// `Origin` header (non-browser clients) are not affected.
    #[arg(long, env = "DATASTREAM_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Most open WebSocket connections; further handshakes get 503.
    #[arg(long, env = "DATASTREAM_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// Most open WebSocket connections from one IP address (0: no limit); further handshakes get
    /// 429. IPv6 clients are counted per /64. Behind a proxy, set `--trusted-proxies` so each
    /// client counts rather than the proxy.
    #[arg(long, env = "DATASTREAM_MAX_CONNECTIONS_PER_IP", default_value_t = 200)]
    pub max_connections_per_ip: usize,

    /// Most open plain HTTP connections (publish, latest values, metrics, health, the demo's
    /// files, WebSocket handshakes until they are upgraded); further connections are answered 503
    /// and closed at once.
    #[arg(long, env = "DATASTREAM_MAX_HTTP_CONNECTIONS", default_value_t = 4096)]
    pub max_http_connections: usize,

    /// Most open plain HTTP connections from one address, IPv6 per /64 (0: no limit); further
    /// ones are answered 429 and closed at once. Connections from `--trusted-proxies` count only
    /// toward the total (they carry many clients).
    #[arg(long, env = "DATASTREAM_MAX_HTTP_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub max_http_connections_per_ip: usize,

    /// Address ranges of the load balancers / reverse proxies in front of the relay
    /// (comma-separated CIDRs, e.g. `10.0.0.0/8,fd00::/8`). A request from one of them names its
    /// client in `X-Forwarded-For` (the rightmost entry that is not itself a trusted proxy), used
    /// for the per-address cap, the loopback check of `POST /publish` and logs. Empty: the header
    /// is ignored and the TCP peer is the client.
    #[arg(long, env = "DATASTREAM_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,

    /// Every connection starts with a PROXY protocol v2 header (AWS NLB, HAProxy) whose source
    /// address is the client's; connections without one are closed. Only when nothing but that
    /// proxy can reach the relay: anyone else could claim any address.
    #[arg(long, env = "DATASTREAM_PROXY_PROTOCOL", default_value_t = false)]
    pub proxy_protocol: bool,

    /// Time allowed for a client to send its first request's headers (including the WebSocket
    /// handshake, and a PROXY header before them) after connecting; also the longest an idle
    /// keep-alive HTTP connection is kept, and the time each later request's headers have.
    #[arg(long, env = "DATASTREAM_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Time allowed for a `POST /publish` body to arrive once its headers were accepted; a slower
    /// body is answered with 408 and the connection closed.
    #[arg(long, env = "DATASTREAM_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// Client frames accepted per second per connection (sustained); faster ones are refused
    /// with `rate_limited`.
    #[arg(long, env = "DATASTREAM_CLIENT_FRAME_RATE", default_value_t = 20.0)]
    pub client_frame_rate: f64,

    /// Client frames accepted in a burst above the sustained rate.
    #[arg(long, env = "DATASTREAM_CLIENT_FRAME_BURST", default_value_t = 60.0)]
    pub client_frame_burst: f64,

    /// Directory of static files served at `/` (the demo dashboard). Unset: none.
    #[arg(long, env = "DATASTREAM_STATIC_DIR")]
    pub static_dir: Option<std::path::PathBuf>,

    /// Publish plausible demo streams for a few sites (mrc, mrc2, saf, sro, tst).
    #[arg(long, env = "DATASTREAM_DEMO", default_value_t = false)]
    pub demo: bool,

    /// Log format.
    #[arg(long, env = "DATASTREAM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// A setting that cannot work, named so the operator can fix it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    /// The flag (and environment variable) at fault.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { setting, reason: reason.into() }
}

impl Config {
    /// Checks the settings that clap's types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.stage.is_empty()
            || !self.stage.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(bad(
                "--stage (DATASTREAM_STAGE)",
                format!("{:?} must be non-empty ASCII letters, digits, '_', '-' or '.'", self.stage),
            ));
        }
        if RESERVED_PATHS.contains(&self.stage.as_str()) {
            return Err(bad(
                "--stage (DATASTREAM_STAGE)",
                format!("{:?} is a path the relay serves itself ({})", self.stage, RESERVED_PATHS.join(", ")),
            ));
        }
        if matches!(&self.sqs_queue, Some(q) if q.trim().is_empty()) {
            return Err(bad("--sqs-queue (DATASTREAM_SQS_QUEUE)", "is set but empty; unset it to disable SQS"));
        }
        if self.redis_timeout.is_zero() || self.redis_timeout > Duration::from_secs(60) {
            return Err(bad("--redis-timeout (DATASTREAM_REDIS_TIMEOUT)", "must be between 1ms and 60s"));
        }
        if self.redis_url.is_none() && self.redis_ca_file.is_some() {
            return Err(bad("--redis-ca-file (DATASTREAM_REDIS_CA_FILE)", "is set without --redis-url"));
        }
        if self.dedupe_keys == 0 {
            return Err(bad("--dedupe-keys (DATASTREAM_DEDUPE_KEYS)", "must be at least 1"));
        }
        if self.sqs_pollers == 0 || self.sqs_pollers > 64 {
            return Err(bad("--sqs-pollers (DATASTREAM_SQS_POLLERS)", "must be between 1 and 64"));
        }
        if self.sqs_wait > Duration::from_secs(20) {
            return Err(bad("--sqs-wait (DATASTREAM_SQS_WAIT)", "SQS allows at most 20s"));
        }
        if matches!(&self.publish_token, Some(t) if t.len() < 16) {
            return Err(bad("--publish-token (DATASTREAM_PUBLISH_TOKEN)", "must be at least 16 characters"));
        }
        if self.max_message_bytes < 64 {
            return Err(bad("--max-message-bytes (DATASTREAM_MAX_MESSAGE_BYTES)", "must be at least 64"));
        }
        if self.max_publish_body_bytes < self.max_message_bytes {
            return Err(bad(
                "--max-publish-body-bytes (DATASTREAM_MAX_PUBLISH_BODY_BYTES)",
                "must be at least --max-message-bytes",
            ));
        }
        if self.max_name_len == 0 || self.max_name_len > 256 {
            return Err(bad("--max-name-len (DATASTREAM_MAX_NAME_LEN)", "must be between 1 and 256"));
        }
        if self.history_size == 0 {
            return Err(bad("--history-size (DATASTREAM_HISTORY_SIZE)", "must be at least 1"));
        }
        if self.client_queue_bytes < self.max_message_bytes {
            return Err(bad(
                "--client-queue-bytes (DATASTREAM_CLIENT_QUEUE_BYTES)",
                "must be at least --max-message-bytes, or the largest message could never be sent",
            ));
        }
        if self.max_client_frame_bytes < 256 {
            return Err(bad("--max-client-frame-bytes (DATASTREAM_MAX_CLIENT_FRAME_BYTES)", "must be at least 256"));
        }
        if self.ping_interval.is_zero() {
            return Err(bad("--ping-interval (DATASTREAM_PING_INTERVAL)", "must be positive"));
        }
        if self.client_timeout <= self.ping_interval {
            return Err(bad(
                "--client-timeout (DATASTREAM_CLIENT_TIMEOUT)",
                "must be longer than --ping-interval, or healthy clients would be cut off",
            ));
        }
        if self.drain_window >= self.shutdown_timeout {
            return Err(bad(
                "--drain-window (DATASTREAM_DRAIN_WINDOW)",
                "must be shorter than --shutdown-timeout, or closes would be cut off",
            ));
        }
        if matches!(&self.jwt_secret, Some(s) if s.len() < 32) {
            return Err(bad("--jwt-secret (DATASTREAM_JWT_SECRET)", "must be at least 32 bytes"));
        }
        let anonymous: Vec<&str> = self.anonymous_sites.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
        if !anonymous.is_empty() && self.jwt_secret.is_none() && self.jwks.is_none() {
            return Err(bad(
                "--anonymous-sites (DATASTREAM_ANONYMOUS_SITES)",
                "has no effect without --jwt-secret or --jwks: every site is open to anyone then",
            ));
        }
        if let Some(site) = anonymous.iter().find(|s| **s != "*" && self.name_rules().check_site(s).is_err()) {
            return Err(bad(
                "--anonymous-sites (DATASTREAM_ANONYMOUS_SITES)",
                format!("{site:?} is not a site code (or *)"),
            ));
        }
        if self.max_http_connections == 0 {
            return Err(bad("--max-http-connections (DATASTREAM_MAX_HTTP_CONNECTIONS)", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(bad("--max-connections (DATASTREAM_MAX_CONNECTIONS)", "must be at least 1"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(bad("--handshake-timeout (DATASTREAM_HANDSHAKE_TIMEOUT)", "must be positive"));
        }
        if self.body_timeout.is_zero() {
            return Err(bad("--body-timeout (DATASTREAM_BODY_TIMEOUT)", "must be positive"));
        }
        if self.latest_topics > MAX_LATEST_TOPICS {
            return Err(bad(
                "--latest-topics (DATASTREAM_LATEST_TOPICS)",
                format!("must be at most {MAX_LATEST_TOPICS}"),
            ));
        }
        for pair in self.latest_keys.iter().filter(|p| !p.trim().is_empty()) {
            let ok = pair.split_once('=').is_some_and(|(topic, field)| {
                self.name_rules().check_topic(topic.trim()).is_ok()
                    && !field.trim().is_empty()
                    && field.trim().len() <= 64
                    && !field.chars().any(char::is_control)
            });
            if !ok {
                return Err(bad(
                    "--latest-keys (DATASTREAM_LATEST_KEYS)",
                    format!("{pair:?} is not topic=field, e.g. sitestatus=statusType"),
                ));
            }
        }
        if self.latest_ttl.is_zero() {
            return Err(bad("--latest-ttl (DATASTREAM_LATEST_TTL)", "must be positive"));
        }
        if self.max_topics == 0 {
            return Err(bad("--max-topics (DATASTREAM_MAX_TOPICS)", "must be at least 1"));
        }
        if !(self.client_frame_rate > 0.0 && self.client_frame_rate.is_finite()) {
            return Err(bad("--client-frame-rate (DATASTREAM_CLIENT_FRAME_RATE)", "must be a positive number"));
        }
        if !(self.client_frame_burst >= 1.0 && self.client_frame_burst.is_finite()) {
            return Err(bad("--client-frame-burst (DATASTREAM_CLIENT_FRAME_BURST)", "must be at least 1"));
        }
        if let Some(origin) =
            self.allowed_origins.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return Err(bad(
                "--allowed-origins (DATASTREAM_ALLOWED_ORIGINS)",
                format!("{origin:?} is not an origin like https://www.photonranch.org"),
            ));
        }
        if let Some(dir) = &self.static_dir
            && !dir.join("index.html").is_file()
        {
            return Err(bad(
                "--static-dir (DATASTREAM_STATIC_DIR)",
                format!("{} has no index.html (build the demo first: scripts/run.sh does)", dir.display()),
            ));
        }
        if self.max_subscriptions == 0 {
            return Err(bad("--max-subscriptions (DATASTREAM_MAX_SUBSCRIPTIONS)", "must be at least 1"));
        }
        Ok(())
    }

    /// `--latest-keys` as `(topic, field)` pairs (after [`Config::validate`]).
    pub fn latest_key_map(&self) -> LatestKeys {
        LatestKeys::new(self.latest_keys.iter().filter_map(|pair| {
            let (topic, field) = pair.split_once('=')?;
            Some((topic.trim().to_owned(), field.trim().to_owned()))
        }))
    }

    /// The name rules implied by this configuration.
    pub fn name_rules(&self) -> NameRules {
        NameRules { max_len: self.max_name_len }
    }
}

/// Parses `args` as the binary's flags would be, for unit tests.
#[cfg(test)]
pub(crate) fn test_config(args: &[&str]) -> Config {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }
    let mut all = vec!["datastream"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).expect("parse").config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        test_config(args)
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]);
        c.validate().expect("defaults validate");
        assert_eq!(c.stage, "dev");
        assert_eq!(c.sqs_queue, None);
        assert_eq!(c.ping_interval, Duration::from_secs(25));
    }

    #[test]
    fn errors_name_the_setting() {
        let err = parse(&["--stage", "metrics"]).validate().unwrap_err();
        assert!(err.to_string().contains("DATASTREAM_STAGE"), "{err}");
        let err = parse(&["--stage", "a/b"]).validate().unwrap_err();
        assert!(err.to_string().contains("--stage"), "{err}");
        let err = parse(&["--ping-interval", "30s", "--client-timeout", "30s"]).validate().unwrap_err();
        assert!(err.to_string().contains("DATASTREAM_CLIENT_TIMEOUT"), "{err}");
        let err = parse(&["--publish-token", "short"]).validate().unwrap_err();
        assert!(err.to_string().contains("DATASTREAM_PUBLISH_TOKEN"), "{err}");
        let err = parse(&["--sqs-wait", "21s"]).validate().unwrap_err();
        assert!(err.to_string().contains("DATASTREAM_SQS_WAIT"), "{err}");
    }

    #[test]
    fn latest_settings_are_checked() {
        let pairs = |c: &Config| c.latest_key_map().pairs().map(|(t, f)| format!("{t}={f}")).collect::<Vec<_>>();
        assert_eq!(pairs(&parse(&[])), vec!["sitestatus=statusType"], "the status service's shape by default");
        assert!(pairs(&parse(&["--latest-keys", ""])).is_empty(), "empty: none");
        let c = parse(&["--latest-keys", "sitestatus=statusType, jobs = kind"]);
        assert!(c.validate().is_ok());
        assert_eq!(pairs(&c), vec!["sitestatus=statusType", "jobs=kind"]);
        for bad in ["sitestatus", "a b=c", "t=", "=f"] {
            let err = parse(&["--latest-keys", bad]).validate().unwrap_err();
            assert!(err.to_string().contains("DATASTREAM_LATEST_KEYS"), "{bad}: {err}");
        }
        let err = parse(&["--latest-topics", "1025"]).validate().unwrap_err();
        assert!(err.to_string().contains("DATASTREAM_LATEST_TOPICS"), "{err}");
        let err = parse(&["--latest-ttl", "0s"]).validate().unwrap_err();
        assert!(err.to_string().contains("DATASTREAM_LATEST_TTL"), "{err}");
        assert!(parse(&["--latest-topics", "0"]).validate().is_ok(), "0 turns it off");
    }

    #[test]
    fn deltas_are_on_unless_turned_off() {
        assert_eq!(parse(&[]).deltas, Deltas::On);
        assert_eq!(parse(&["--deltas", "off"]).deltas, Deltas::Off);
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        let err = Cli::try_parse_from(["datastream", "--deltas", "maybe"]).unwrap_err();
        assert!(err.to_string().contains("--deltas"), "{err}");
    }

    #[test]
    fn anonymous_sites_need_tokens_on_and_valid_names() {
        let secret = "0123456789abcdef0123456789abcdef";
        assert!(parse(&["--jwt-secret", secret, "--anonymous-sites", "mrc,sro"]).validate().is_ok());
        assert!(parse(&["--jwt-secret", secret, "--anonymous-sites", "*"]).validate().is_ok());
        assert!(parse(&["--anonymous-sites", ""]).validate().is_ok(), "empty: none");
        let err = parse(&["--anonymous-sites", "mrc"]).validate().unwrap_err();
        assert!(
            err.to_string().contains("DATASTREAM_ANONYMOUS_SITES") && err.to_string().contains("no effect"),
            "{err}"
        );
        let err = parse(&["--jwt-secret", secret, "--anonymous-sites", "mrc,a b"]).validate().unwrap_err();
        assert!(err.to_string().contains("DATASTREAM_ANONYMOUS_SITES"), "{err}");
    }

    #[test]
    fn trusted_proxies_are_parsed_at_start() {
        let c = parse(&["--trusted-proxies", "10.0.0.0/8, 192.0.2.7,fd00::/8"]);
        assert_eq!(c.trusted_proxies.len(), 3);
        assert!(parse(&[]).trusted_proxies.is_empty());
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        let err = Cli::try_parse_from(["datastream", "--trusted-proxies", "10.0.0.0/8,10.0.0.1/33"]).unwrap_err();
        assert!(err.to_string().contains("--trusted-proxies"), "{err}");
        assert!(err.to_string().contains("prefix length"), "{err}");
    }
}
