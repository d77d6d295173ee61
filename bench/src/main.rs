//! `loadgen`: opens N WebSocket subscribers to a fan-out server, publishes at a fixed rate or in
//! bursts, and reports connect time, memory per connection, delivery rate, loss, latency
//! percentiles and CPU per million deliveries, as one JSON object per run.
//!
//! # Layout
//! - [`sub`]: subscriber tasks, one protocol per server under test, recording into one histogram.
//! - [`publish`]: the publisher (HTTP for the relays, TCP for the brokers).
//! - [`tsstream`]: TCP reads that carry the kernel's receive timestamp (`SO_TIMESTAMPNS`).
//! - [`payload`]: the messages (sequence number and send time inside `data`).
//! - [`status`]: statusgen's status streams as payloads, rebuilt from Fossil deltas and checked
//!   by the v2 subscribers (`--payload device|weather`, `--delta`).
//! - [`mqtt`]: the few MQTT packets needed.
//! - [`procstat`]: CPU and RSS of a process from `/proc`.
//! - [`floor`]: `loadgen floor`, the least work any server can do for these workloads (a
//!   reference, run like a server under test).
//! - [`cluster`]: `loadgen cluster`, SDK-like v2 subscribers that reconnect and recover through a
//!   load balancer while failures are injected, with exact loss/duplicate/order accounting
//!   ([`track`]).
//!
//! Everything runs on one thread (a current-thread runtime), so `taskset` can give the load tool
//! one core and the server the other.

mod cluster;
mod floor;
mod mqtt;
mod payload;
mod procstat;
mod publish;
mod status;
mod sub;
mod track;
mod tsstream;

use std::{cell::RefCell, net::SocketAddr, rc::Rc, str::FromStr, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::{Value, json};
use tokio::{
    sync::Semaphore,
    time::{Instant, sleep, sleep_until},
};

use datastream_statusgen::StatusStream;

use crate::{
    publish::{Outgoing, Publisher},
    status::Payload,
    sub::{Endpoint, Shared, Target},
};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Subscribers + publisher: the fan-out scenarios.
    Run(RunArgs),
    /// HTTP publish throughput with no subscribers (the relay and the Node relay).
    IngestHttp(IngestArgs),
    /// v2 subscribers that reconnect and recover like the SDK, a publisher that retries, and
    /// exact accounting of loss, duplicates and order (relay clusters under failure).
    Cluster(cluster::ClusterArgs),
    /// The floor server: the legacy protocol's fan-out with nothing but one blocking write per
    /// subscriber per batch (the lower bound of any server's CPU and latency here).
    Floor {
        /// Address to listen on (subscribers and the publisher).
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Server under test.
    #[arg(long, value_enum)]
    target: Target,
    /// WebSocket address subscribers connect to.
    #[arg(long)]
    ws: SocketAddr,
    /// Publish address (HTTP for the relays, TCP client port for nats, MQTT port for mosquitto);
    /// the WebSocket address when absent.
    #[arg(long)]
    publish: Option<SocketAddr>,
    /// PID of the server, for its CPU time and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Bearer token for the relay's `POST /publish`.
    #[arg(long)]
    publish_token: Option<String>,
    /// Another process whose CPU time each phase reports, as `name=pid` (e.g. `redis=1234`,
    /// `node2=1240`, `haproxy=1250`); repeatable.
    #[arg(long = "pid", value_parser = named_pid)]
    pids: Vec<(String, u32)>,
    /// Number of subscribers.
    #[arg(long, default_value_t = 1000)]
    subs: usize,
    /// Sites the subscribers are spread over (round robin); publications go round robin too.
    #[arg(long, default_value_t = 1)]
    sites: usize,
    /// Size of each message (the legacy frame), bytes (synthetic payload).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// What is published: synthetic messages of `--size`, or a statusgen status stream per site
    /// (topic `sitestatus`, the tool's `seq` and `t` added at the end of each status; relay-v2
    /// only). With a status stream every subscriber rebuilds each publication's data text and
    /// checks it against the published one.
    #[arg(long, value_enum, default_value_t = Payload::Synthetic)]
    payload: Payload,
    /// Subscribers ask for Fossil deltas (`"delta":"fossil"`; status payloads only).
    #[arg(long)]
    delta: bool,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// A phase `name:ticks_per_s:messages_per_tick:seconds`, e.g. `steady:10:1:10` (10 msg/s) or
    /// `burst:1:200:5` (200 messages at once, every second); repeatable, run in order.
    #[arg(long = "phase", required = true)]
    phases: Vec<Phase>,
    /// Seconds to wait after connecting, before measuring idle memory and publishing.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Longest wait for stragglers after a phase's last publish, seconds.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Free-form label copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Debug, clap::Args)]
struct IngestArgs {
    /// The relay's (or Node relay's) HTTP address.
    #[arg(long)]
    http: SocketAddr,
    #[arg(long)]
    server_pid: Option<u32>,
    /// Bearer token for the relay's `POST /publish`.
    #[arg(long)]
    publish_token: Option<String>,
    /// Messages to publish in total.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Messages per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Keep-alive connections publishing concurrently.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Topics per site, published round robin (`bench0`, `bench1`, …); 1: the one topic `bench`.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    #[arg(long, default_value = "")]
    label: String,
}

fn named_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected name=pid")?;
    Ok((name.to_owned(), pid.parse().map_err(|e| format!("{pid}: {e}"))?))
}

/// One publishing phase.
#[derive(Clone, Debug)]
struct Phase {
    name: String,
    ticks_per_s: f64,
    per_tick: usize,
    secs: f64,
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [name, rate, burst, secs] = parts[..] else {
            return Err("expected name:ticks_per_s:messages_per_tick:seconds".into());
        };
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{v}: {e}"));
        let phase = Phase {
            name: name.to_owned(),
            ticks_per_s: num(rate)?,
            per_tick: burst.parse().map_err(|e| format!("{burst}: {e}"))?,
            secs: num(secs)?,
        };
        if phase.ticks_per_s <= 0.0 || phase.per_tick == 0 || phase.secs <= 0.0 {
            return Err("rate, burst and seconds must be positive".into());
        }
        Ok(phase)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Every subscriber is a file descriptor: use all the hard limit allows.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    if let Cmd::Floor { listen } = cli.cmd {
        return floor::serve(listen);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, async {
        match cli.cmd {
            Cmd::Run(args) => run(args).await,
            Cmd::IngestHttp(args) => ingest_http(args).await,
            Cmd::Cluster(args) => cluster::run(args).await,
            Cmd::Floor { .. } => unreachable!("served above, without a runtime"),
        }
    })?;
    println!("{report}");
    // Skip tearing down thousands of sockets one by one.
    std::process::exit(0)
}

fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Reads a process's CPU seconds, or NaN when unknown.
fn cpu(pid: &str) -> f64 {
    procstat::cpu_seconds(pid).unwrap_or(f64::NAN)
}

async fn run(args: RunArgs) -> anyhow::Result<Value> {
    let pid = args.server_pid.map_or_else(|| "0".to_owned(), |p| p.to_string());
    let sites: Vec<String> = (0..args.sites.max(1)).map(|i| format!("s{i}")).collect();
    let shared = Rc::new(RefCell::new(Shared::new(sites.len())?));
    let rss_idle = procstat::status_kb(&pid, "VmRSS:");

    // Connect.
    let gate = Rc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let status = args.payload != Payload::Synthetic;
    if status && args.target != Target::RelayV2 {
        bail!("--payload {:?} needs --target relay-v2", args.payload);
    }
    if args.delta && !status {
        bail!("--delta needs a status payload (--payload device or weather)");
    }
    let ep = Endpoint { target: args.target, addr: args.ws, status, delta: args.delta };
    let started = Instant::now();
    for i in 0..args.subs {
        let idx = i % sites.len();
        tokio::task::spawn_local(sub::run(ep.clone(), idx, sites[idx].clone(), i, shared.clone(), gate.clone()));
    }
    let connect_deadline = started + Duration::from_secs(120);
    loop {
        let (ready, failed) = {
            let s = shared.borrow();
            (s.ready, s.failed)
        };
        if ready + failed >= args.subs || Instant::now() > connect_deadline {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_conn = procstat::status_kb(&pid, "VmRSS:");
    let (connected, failed, first_error, connect_p50, connect_p99) = {
        let s = shared.borrow();
        (s.ready, s.failed, s.first_error.clone(), ms(&s.connect, 0.5), ms(&s.connect, 0.99))
    };
    eprintln!(
        "[{}] {connected}/{} connected in {connect_secs:.2}s ({failed} failed{})",
        args.label,
        args.subs,
        first_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
    );
    if connected == 0 {
        bail!("no subscriber connected: {}", first_error.unwrap_or_default());
    }
    let kb_per_conn = match (rss_idle, rss_conn) {
        (Some(a), Some(b)) => json!(round((b as f64 - a as f64) / connected as f64, 2)),
        _ => Value::Null,
    };

    let mut publisher =
        Publisher::connect(args.target, args.publish.unwrap_or(args.ws), args.publish_token.as_deref()).await?;
    let mut seq = 0u64;
    let mut phases = Vec::new();
    let mut streams: Vec<StatusStream> = sites
        .iter()
        .enumerate()
        .map(|(i, site)| match args.payload {
            Payload::Weather => StatusStream::weather(site, i as u32 + 1),
            _ => StatusStream::device(site, i as u32 + 1),
        })
        .collect();
    for phase in &args.phases {
        let result = run_phase(phase, &mut publisher, &mut seq, &sites, &mut streams, &shared, &pid, &args).await?;
        eprintln!("[{}] {}", args.label, result);
        phases.push(result);
    }
    let closed = shared.borrow().closed.clone();
    Ok(json!({
        "label": args.label,
        "target": args.target,
        "subs": args.subs,
        "sites": sites.len(),
        "size": args.size,
        "payload": args.payload,
        "delta": args.delta,
        "connected": connected,
        "failed": failed,
        "first_error": first_error,
        "connect_secs": round(connect_secs, 3),
        "connect_p50_ms": connect_p50,
        "connect_p99_ms": connect_p99,
        "rss_idle_kb": rss_idle,
        "rss_connected_kb": rss_conn,
        "kb_per_conn": kb_per_conn,
        "rss_peak_kb": procstat::status_kb(&pid, "VmHWM:"),
        "closed": closed,
        "kernel_timestamped_frames": shared.borrow().kernel_ts,
        "phases": phases,
    }))
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    phase: &Phase,
    publisher: &mut Publisher,
    seq: &mut u64,
    sites: &[String],
    streams: &mut [StatusStream],
    shared: &Rc<RefCell<Shared>>,
    pid: &str,
    args: &RunArgs,
) -> anyhow::Result<Value> {
    let ticks = (phase.ticks_per_s * phase.secs).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / phase.ticks_per_s);
    let live: Vec<usize> = {
        let mut s = shared.borrow_mut();
        s.lo = *seq;
        s.hi = u64::MAX;
        s.received = 0;
        s.stray = 0;
        s.pings = 0;
        s.last_recv = None;
        s.latency.reset();
        s.counts = status::Counts::default();
        s.live.clone()
    };
    let (server0, self0) = (cpu(pid), cpu("self"));
    let others0: Vec<f64> = args.pids.iter().map(|(_, p)| cpu(&p.to_string())).collect();
    let started = Instant::now();
    let mut next = started;
    let mut expected = 0u64;
    let mut data_bytes = 0u64;
    for _ in 0..ticks {
        sleep_until(next).await;
        next += interval;
        let batch: Vec<Outgoing> = (0..phase.per_tick)
            .map(|_| {
                let idx = (*seq % sites.len() as u64) as usize;
                expected += live[idx] as u64;
                let site = sites[idx].clone();
                let json = if args.payload == Payload::Synthetic {
                    payload::message(&site, *seq, payload::now_ns(), args.size)
                } else {
                    let data = payload::with_seq(&streams[idx].next_data(), *seq, payload::now_ns());
                    data_bytes += data.len() as u64;
                    let json = StatusStream::publication(&site, &data);
                    shared.borrow_mut().published.insert(*seq, data);
                    json
                };
                *seq += 1;
                Outgoing { site, json }
            })
            .collect();
        publisher.send(&batch).await.context("publish")?;
    }
    publisher.settle().await.context("publish")?;
    let publish_secs = started.elapsed().as_secs_f64();
    shared.borrow_mut().hi = *seq;
    // Wait for stragglers: until everything arrived, nothing arrived for 2 s, or the drain limit.
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    let mut last_count = 0;
    let mut last_change = Instant::now();
    loop {
        let got = shared.borrow().received;
        if got >= expected || Instant::now() > deadline || last_change.elapsed() > Duration::from_secs(2) {
            break;
        }
        if got != last_count {
            last_count = got;
            last_change = Instant::now();
        }
        sleep(Duration::from_millis(20)).await;
    }
    let (server1, self1) = (cpu(pid), cpu("self"));
    let others: serde_json::Map<String, Value> = args
        .pids
        .iter()
        .zip(others0)
        .map(|((name, p), before)| (name.clone(), json!(round(cpu(&p.to_string()) - before, 3))))
        .collect();
    let s = shared.borrow();
    let span = s.last_recv.map_or(publish_secs, |t| (t - started).as_secs_f64()).max(1e-3);
    let server_cpu = server1 - server0;
    let tool_cpu = self1 - self0;
    let lost = expected.saturating_sub(s.received);
    let live_now: usize = s.live.iter().sum();
    let live_before: usize = live.iter().sum();
    let published = ticks * phase.per_tick as u64;
    let c = s.counts;
    let status = (args.payload != Payload::Synthetic).then(|| {
        json!({
            "data_bytes_per_pub": round(data_bytes as f64 / published.max(1) as f64, 1),
            "frame_bytes_per_delivery": round(c.frame_bytes as f64 / c.pubs.max(1) as f64, 1),
            "counts": c,
        })
    });
    Ok(json!({
        "phase": phase.name,
        "ticks_per_s": phase.ticks_per_s,
        "per_tick": phase.per_tick,
        "secs": phase.secs,
        "published": published,
        "publish_rate": round((ticks * phase.per_tick as u64) as f64 / publish_secs, 1),
        "expected": expected,
        "received": s.received,
        "lost": lost,
        "loss_pct": round(100.0 * lost as f64 / expected.max(1) as f64, 3),
        "stray": s.stray,
        "pings": s.pings,
        "disconnected": live_before.saturating_sub(live_now),
        "delivered_per_s": round(s.received as f64 / span, 0),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_s_per_m": round(server_cpu / (s.received.max(1) as f64 / 1e6), 2),
        "server_cpu_ms_per_pub": round(1000.0 * server_cpu / published.max(1) as f64, 3),
        "status": status,
        "server_cpu_pct": round(100.0 * server_cpu / span, 1),
        "tool_cpu_s": round(tool_cpu, 2),
        "tool_cpu_pct": round(100.0 * tool_cpu / span, 1),
        "cpu_s": others,
        "p50_ms": ms(&s.latency, 0.5),
        "p90_ms": ms(&s.latency, 0.9),
        "p99_ms": ms(&s.latency, 0.99),
        "p999_ms": ms(&s.latency, 0.999),
        "max_ms": s.latency.max() as f64 / 1000.0,
        "rss_kb": procstat::status_kb(pid, "VmRSS:"),
    }))
}

async fn ingest_http(args: IngestArgs) -> anyhow::Result<Value> {
    let pid = args.server_pid.map_or_else(|| "0".to_owned(), |p| p.to_string());
    let requests = args.messages.div_ceil(args.batch.max(1));
    let per_conn = requests.div_ceil(args.conns.max(1));
    let mut publishers = Vec::new();
    for _ in 0..args.conns.max(1) {
        publishers.push(Publisher::connect(Target::Relay, args.http, args.publish_token.as_deref()).await?);
    }
    let (server0, self0) = (cpu(&pid), cpu("self"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut p) in publishers.into_iter().enumerate() {
        let (batch, size, topics) = (args.batch.max(1), args.size, args.topics.max(1));
        tasks.push(tokio::task::spawn_local(async move {
            for r in 0..per_conn {
                let msgs: Vec<Outgoing> = (0..batch)
                    .map(|i| {
                        let n = c * per_conn + r * batch + i;
                        let site = format!("i{}", n % 100);
                        let mut json = payload::message(&site, 0, payload::now_ns(), size);
                        if topics > 1 {
                            // Each site cycles through its topics (n / 100: the site's own count).
                            let topic = format!(r#""topic":"bench{}""#, (n / 100) % topics);
                            json = json.replacen(r#""topic":"bench""#, &topic, 1);
                        }
                        Outgoing { site, json }
                    })
                    .collect();
                p.send(&msgs).await?;
            }
            p.settle().await?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = per_conn * args.conns.max(1) * args.batch.max(1);
    let server_cpu = cpu(&pid) - server0;
    let tool_cpu = cpu("self") - self0;
    Ok(json!({
        "label": args.label,
        "messages": sent,
        "batch": args.batch,
        "conns": args.conns,
        "topics": args.topics,
        "secs": round(secs, 3),
        "messages_per_s": round(sent as f64 / secs, 0),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_ms_per_1k": round(1000.0 * server_cpu / (sent as f64 / 1000.0), 2),
        "tool_cpu_s": round(tool_cpu, 2),
    }))
}
