//! Binding the listener, running every task, and the ordered graceful shutdown:
//!
//! 1. refuse new connections and publishes (503) and report not ready;
//! 2. stop SQS ingest, letting each poller finish publishing its in-flight batch;
//! 3. close every WebSocket with 1001 after writing what was queued for it;
//! 4. stop the HTTP server.
//!
//! Each step waits at most until the shutdown deadline; whatever is left is dropped then.
//!
//! Every background task (fan-out writers, Redis reader, sweeper, JWKS refresh, SQS ingest, demo)
//! runs under a [`Supervisor`] that restarts it after a panic or an unexpected end, and `/readyz`
//! names it while it is down; the HTTP server alone fails fast (`run` returns an error). See
//! [`crate::supervise`] for why.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use crate::{
    auth::Auth,
    broker::{Broker, HistoryOptions, MemoryBroker, RedisBroker, RedisSettings},
    config::Config,
    http,
    hub::Hub,
    ingest,
    limits::{HttpConnections, IpLimiter},
    metrics::Metrics,
    proxy_protocol::Listener,
    publication::Validator,
    serve::{ServeLimits, serve},
    session::v2::V2,
    state::AppState,
    state::Readiness,
    supervise::{Supervisor, until_stopped},
};

/// How long to wait at start for the Redis pub/sub connection before serving.
const REDIS_START_WAIT: Duration = Duration::from_secs(5);

/// How often the broker does its upkeep (expiry; for Redis, idle channels and a health check).
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// A relay bound to its address, ready to run.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl Server {
    /// Validates `config`, binds the listener and builds the shared state.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (DATASTREAM_LISTEN)", config.listen))?;
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let options = HistoryOptions::from_config(&config);
        let broker = match RedisSettings::from_config(&config) {
            Some(redis) => Broker::Redis(
                RedisBroker::connect(&redis, hub.clone(), metrics.clone(), options)
                    .await
                    .context("DATASTREAM_REDIS_URL")?,
            ),
            None => Broker::Memory(Box::new(MemoryBroker::new(hub.clone(), metrics.clone(), options))),
        };
        let auth = Auth::from_config(&config).await?;
        let ip_limiter = IpLimiter::new(config.max_connections_per_ip);
        let http_connections = HttpConnections::new(
            config.max_http_connections,
            config.max_http_connections_per_ip,
            metrics.http_connections.clone(),
        );
        let state = AppState {
            validator: Validator { names: config.name_rules(), max_message_bytes: config.max_message_bytes },
            v2_hello: V2::hello_frame(&config),
            readiness: Readiness {
                sqs_enabled: config.sqs_queue.is_some(),
                sqs_ok: AtomicBool::new(false),
                tasks: Arc::default(),
            },
            config,
            hub,
            broker,
            metrics,
            sessions: TaskTracker::new(),
            draining: AtomicBool::new(false),
            auth,
            ip_limiter,
            http_connections,
        };
        Ok(Server { listener, state: Arc::new(state) })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TcpListener always has a local address.
        self.listener.local_addr().unwrap_or(self.state.config.listen)
    }

    /// Shared state, for tests and embedding.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `shutdown` completes, then shuts down in order (see the module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Server { listener, state } = self;
        let addr = listener.local_addr().context("listener address")?;

        let supervisor = Supervisor { tasks: state.readiness.tasks.clone(), metrics: state.metrics.clone() };
        let stop_ingest = CancellationToken::new();
        let ingest = TaskTracker::new();
        if let Some(queue) = state.config.sqs_queue.clone() {
            let client = ingest::sqs::client().await;
            let state = state.clone();
            ingest.spawn(supervisor.spawn("sqs".into(), "sqs", stop_ingest.clone(), move |stop| {
                ingest::sqs::run(client.clone(), state.clone(), queue.clone(), stop)
            }));
        }

        if state.config.demo {
            let state = state.clone();
            ingest.spawn(
                supervisor.spawn("demo".into(), "demo", stop_ingest.clone(), move |stop| {
                    crate::demo::run(state.clone(), stop)
                }),
            );
        }
        ingest.close();

        // Stopped once the sessions are closed: the fan-out writes until then.
        let stop_background = CancellationToken::new();
        {
            let state = state.clone();
            supervisor.spawn("sweeper".into(), "sweeper", stop_background.clone(), move |stop| {
                let state = state.clone();
                until_stopped(stop, async move {
                    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                    loop {
                        tick.tick().await;
                        state.broker.sweep().await;
                    }
                })
            });
        }

        {
            let state = state.clone();
            supervisor.spawn("jwks_refresh".into(), "jwks_refresh", stop_background.clone(), move |stop| {
                let state = state.clone();
                until_stopped(stop, async move {
                    let period = state.config.jwks_refresh;
                    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                    loop {
                        tick.tick().await;
                        state.auth.refresh().await;
                    }
                })
            });
        }

        // The fan-out's writers: they write what deliveries leave for connections.
        for i in 0..state.hub.writers() {
            let hub = state.hub.clone();
            supervisor.spawn(format!("fanout_writer_{i}"), "fanout_writer", stop_background.clone(), move |stop| {
                until_stopped(stop, hub.clone().run_writer(i))
            });
        }

        if let Broker::Redis(redis) = &state.broker {
            let reader = redis.clone();
            supervisor.spawn("redis_reader".into(), "redis_reader", stop_background.clone(), move |stop| {
                reader.clone().run_reader(stop)
            });
            // Serve once publications can flow, so the first subscribers miss nothing.
            if !redis.wait_connected(REDIS_START_WAIT).await {
                warn!("Redis pub/sub not connected yet; serving anyway, subscriptions catch up when it is");
            }
        }

        let stop_http = CancellationToken::new();
        let router = http::router(state.clone());
        let limits = ServeLimits {
            handshake_timeout: state.config.handshake_timeout,
            write_timeout: state.config.client_timeout,
            http: state.http_connections.clone(),
            trusted_proxies: state.config.trusted_proxies.clone(),
            metrics: state.metrics.clone(),
        };
        let listener =
            Listener::new(listener, state.config.proxy_protocol, state.config.handshake_timeout, limits.http.clone());
        let mut http_task =
            tokio::spawn(serve(listener, router, limits, stop_http.clone(), state.config.shutdown_timeout));
        info!(%addr, stage = %state.config.stage, sqs = state.config.sqs_queue.is_some(), "listening");

        tokio::select! {
            () = shutdown => {}
            res = &mut http_task => {
                stop_background.cancel();
                res.context("HTTP server task")?;
                anyhow::bail!("HTTP server stopped unexpectedly");
            }
        }

        let deadline = Instant::now() + state.config.shutdown_timeout;
        info!(timeout = ?state.config.shutdown_timeout, "shutting down");
        state.draining.store(true, Ordering::Relaxed);

        stop_ingest.cancel();
        if tokio::time::timeout_at(deadline, ingest.wait()).await.is_err() {
            warn!("ingest did not stop before the deadline");
        }

        let asked = state.hub.close_all();
        debug!(sessions = asked, "asked every session to close");
        state.sessions.close();
        if tokio::time::timeout_at(deadline, state.sessions.wait()).await.is_err() {
            warn!(open = state.sessions.len(), "sessions still open at the deadline; dropping them");
        }

        stop_http.cancel();
        stop_background.cancel();
        match tokio::time::timeout_at(deadline, &mut http_task).await {
            Ok(res) => res.context("HTTP server task")?,
            Err(_) => {
                warn!("HTTP connections still open at the deadline; dropping them");
                http_task.abort();
            }
        }
        info!("stopped");
        Ok(())
    }
}
