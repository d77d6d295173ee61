//! Prometheus metrics, served at `GET /metrics`.
//!
//! Every labelled series is created up front and kept as a handle, so counting on a hot path is one
//! atomic add with no label lookup. Label values are fixed strings, never client input, so the
//! number of series is bounded.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceReasonLabels {
    source: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViaLabel {
    via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
}

/// Where a message entered the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The SQS queue.
    Sqs,
    /// `POST /publish`.
    Http,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Sqs => "sqs",
            Source::Http => "http",
        }
    }
}

/// All metrics of one relay process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open legacy WebSocket connections.
    pub connections_legacy: Gauge,
    /// Open v2 WebSocket connections.
    pub connections_v2: Gauge,
    /// Open plain HTTP connections (not, or not yet, a WebSocket).
    pub http_connections: Gauge,
    /// Subscriptions (connection × site) across all connections.
    pub subscriptions: Gauge,
    /// Sites with at least one local subscriber.
    pub sites: Gauge,
    messages_in: Family<SourceLabel, Counter>,
    malformed: Family<SourceReasonLabels, Counter>,
    /// Messages dropped as repeats of an SQS message id or idempotency key.
    pub duplicates: Counter,
    /// Frames written to client sockets.
    pub messages_out: Counter,
    dropped: Family<ReasonLabel, Counter>,
    disconnects: Family<ReasonLabel, Counter>,
    client_frames_rejected: Family<ReasonLabel, Counter>,
    connections_refused: Family<ReasonLabel, Counter>,
    sqs_errors: Family<OpLabel, Counter>,
    redis_errors: Family<OpLabel, Counter>,
    /// Pub/sub connections made again after one was lost.
    pub redis_reconnects: Counter,
    /// Publications a node delivered from a site's Redis stream because its channel missed them
    /// (a gap, or a pub/sub reconnect).
    pub redis_filled: Counter,
    /// Publications this node computed as a delta worth sending (once each, for a site with a
    /// subscriber that asked for deltas).
    pub deltas_computed: Counter,
    latest_sent: Family<ViaLabel, Counter>,
    /// Sites whose state the in-memory broker holds (published within the history or latest
    /// TTL, or subscribed to).
    pub broker_sites: Gauge,
    /// Sites whose state the in-memory broker removed once it held nothing and had no subscriber.
    pub broker_sites_removed: Counter,
    /// Idempotency keys the in-memory broker holds (at most `DATASTREAM_DEDUPE_KEYS`).
    pub dedupe_keys: Gauge,
    /// Idempotency keys forgotten before their window ended, to stay within the cap.
    pub dedupe_evicted: Counter,
    task_restarts: Family<TaskLabel, Counter>,
    /// Seconds from a publication's acceptance until it sat in every local subscriber's queue.
    pub fanout_seconds: Histogram,
    /// Seconds from a publication's acceptance until a session wrote it to its socket.
    pub delivery_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("datastream");
        let connections = Family::<ProtocolLabel, Gauge>::default();
        registry.register("connections", "Open WebSocket connections", connections.clone());
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "Open plain HTTP connections (not, or not yet, a WebSocket)",
            http_connections.clone(),
        );
        let subscriptions = Gauge::default();
        registry.register("subscriptions", "Site subscriptions across all connections", subscriptions.clone());
        let sites = Gauge::default();
        registry.register("sites", "Sites with at least one subscriber on this node", sites.clone());
        let messages_in = Family::<SourceLabel, Counter>::default();
        registry.register("messages_in", "Messages accepted for publishing, by source", messages_in.clone());
        let malformed = Family::<SourceReasonLabels, Counter>::default();
        registry.register(
            "messages_malformed",
            "Messages refused as malformed, by source and reason",
            malformed.clone(),
        );
        let duplicates = Counter::default();
        registry.register(
            "messages_duplicate",
            "Messages dropped as repeats within the dedupe window",
            duplicates.clone(),
        );
        let messages_out = Counter::default();
        registry.register("messages_out", "Frames written to client sockets", messages_out.clone());
        let dropped = Family::<ReasonLabel, Counter>::default();
        registry.register("messages_dropped", "Frames not delivered to a client, by reason", dropped.clone());
        let disconnects = Family::<ReasonLabel, Counter>::default();
        registry.register("disconnects", "Connections closed by the server, by reason", disconnects.clone());
        let client_frames_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register("client_frames_rejected", "Client frames refused, by reason", client_frames_rejected.clone());
        let connections_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "WebSocket handshakes refused, by reason",
            connections_refused.clone(),
        );
        let sqs_errors = Family::<OpLabel, Counter>::default();
        registry.register("sqs_errors", "Failed SQS calls, by operation", sqs_errors.clone());
        let redis_errors = Family::<OpLabel, Counter>::default();
        registry.register("redis_errors", "Failed Redis calls, by operation", redis_errors.clone());
        let redis_reconnects = Counter::default();
        registry.register(
            "redis_reconnects",
            "Redis pub/sub connections made again after a loss",
            redis_reconnects.clone(),
        );
        let redis_filled = Counter::default();
        registry.register(
            "redis_filled",
            "Publications delivered from a Redis stream because the channel missed them",
            redis_filled.clone(),
        );
        let deltas_computed = Counter::default();
        registry.register(
            "deltas_computed",
            "Publications computed as a delta from the previous one of their slot",
            deltas_computed.clone(),
        );
        let latest_sent = Family::<ViaLabel, Counter>::default();
        registry.register(
            "latest_sent",
            "Topics' latest publications sent, by way: a v2 subscribe (\"subscribe\") or GET /sites/<site>/latest (\"http\")",
            latest_sent.clone(),
        );
        let broker_sites = Gauge::default();
        registry.register(
            "broker_sites",
            "Sites whose state the in-memory broker holds (published within the history or latest TTL, or subscribed to)",
            broker_sites.clone(),
        );
        let broker_sites_removed = Counter::default();
        registry.register(
            "broker_sites_removed",
            "Sites whose state the in-memory broker removed after it expired with no subscriber left (their next publication starts a new epoch)",
            broker_sites_removed.clone(),
        );
        let dedupe_keys = Gauge::default();
        registry.register("dedupe_keys", "Idempotency keys the in-memory broker holds", dedupe_keys.clone());
        let dedupe_evicted = Counter::default();
        registry.register(
            "dedupe_evicted",
            "Idempotency keys forgotten before their window ended because DATASTREAM_DEDUPE_KEYS was reached",
            dedupe_evicted.clone(),
        );
        let task_restarts = Family::<TaskLabel, Counter>::default();
        registry.register(
            "task_restarts",
            "Background tasks restarted after a panic or an unexpected end, by task",
            task_restarts.clone(),
        );
        let fanout_seconds = Histogram::new(exponential_buckets(0.000_01, 4.0, 10));
        registry.register(
            "fanout_seconds",
            "Time to queue a publication for every local subscriber",
            fanout_seconds.clone(),
        );
        let delivery_seconds = Histogram::new(exponential_buckets(0.000_05, 4.0, 10));
        registry.register(
            "delivery_seconds",
            "Time from acceptance to write on a client socket",
            delivery_seconds.clone(),
        );

        Metrics {
            connections_legacy: connections.get_or_create_owned(&ProtocolLabel { protocol: "legacy" }),
            connections_v2: connections.get_or_create_owned(&ProtocolLabel { protocol: "v2" }),
            http_connections,
            registry,
            subscriptions,
            sites,
            messages_in,
            malformed,
            duplicates,
            messages_out,
            dropped,
            disconnects,
            client_frames_rejected,
            connections_refused,
            sqs_errors,
            redis_errors,
            redis_reconnects,
            redis_filled,
            deltas_computed,
            latest_sent,
            broker_sites,
            broker_sites_removed,
            dedupe_keys,
            dedupe_evicted,
            task_restarts,
            fanout_seconds,
            delivery_seconds,
        }
    }

    /// Counts a message accepted from `source`.
    pub fn message_in(&self, source: Source) {
        self.messages_in(source, 1);
    }

    /// Counts `n` messages accepted from `source`.
    pub fn messages_in(&self, source: Source, n: usize) {
        self.messages_in.get_or_create(&SourceLabel { source: source.label() }).inc_by(n as u64);
    }

    /// Counts a malformed message from `source`.
    pub fn malformed(&self, source: Source, reason: &'static str) {
        self.malformed.get_or_create(&SourceReasonLabels { source: source.label(), reason }).inc();
    }

    /// Counts frames not delivered.
    pub fn dropped(&self, reason: &'static str, n: u64) {
        self.dropped.get_or_create(&ReasonLabel { reason }).inc_by(n);
    }

    /// Counts a connection closed by the server.
    pub fn disconnect(&self, reason: &'static str) {
        self.disconnects.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a refused client frame.
    pub fn client_frame_rejected(&self, reason: &'static str) {
        self.client_frames_rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a refused WebSocket handshake.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a failed SQS call.
    pub fn sqs_error(&self, op: &'static str) {
        self.sqs_errors.get_or_create(&OpLabel { op }).inc();
    }

    /// Counts a failed Redis call.
    pub fn redis_error(&self, op: &'static str) {
        self.redis_errors.get_or_create(&OpLabel { op }).inc();
    }

    /// Counts `n` latest publications sent `via` a subscribe or HTTP.
    pub fn latest_sent(&self, via: &'static str, n: usize) {
        self.latest_sent.get_or_create(&ViaLabel { via }).inc_by(n as u64);
    }

    /// Counts a restart of a background task.
    pub fn task_restart(&self, task: &'static str) {
        self.task_restarts.get_or_create(&TaskLabel { task }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
