//! A hostile-client soak: one relay process (the debug binary) on loopback; well-behaved legacy
//! and v2 subscribers reading a numbered stream per site while a publisher sends it (single
//! objects, arrays, arrays of 100 KB messages); and, at the same time, clients doing what a public
//! endpoint meets from the careless and the malicious: junk and oversized frames, ping floods,
//! subscription churn, huge topic lists, readers that stall, publishes whose body never comes,
//! connections left half-open at every stage, large bodies to sites nobody reads, clients that
//! send a Close, readers of 12 MB `GET …/latest` answers (and of `/metrics`) who never read them,
//! keep-alive hoarders, and connections stalling in their PROXY header (against a second relay
//! that requires one).
//!
//! Asserted: every well-behaved subscriber got every publication of its sites exactly once and
//! in order, and was never closed; each hostile client met its documented outcome (an error
//! frame, a terminal close, a cut-off); the relay is still running; its peak resident memory
//! stayed under the bound the memory model gives for what was open and published ([`memory`]);
//! and afterwards its open file descriptors are back to their baseline and its resident memory
//! near it (the PROXY relay's too). Every failed check is listed, not only the first. The figures
//! are printed on `soak:` lines (`cargo test -p datastream --test soak -- --nocapture`).
//!
//! Bounded: every wait has a limit; a run takes about 30 s (50 s when a client waiting to be cut off
//! never is), at most 90 s. Randomness is seeded.

#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;
#[path = "soak/hostile_http.rs"]
mod hostile_http;
#[path = "soak/hostile_raw.rs"]
mod hostile_raw;
#[path = "soak/hostile_ws.rs"]
mod hostile_ws;
#[path = "soak/memory.rs"]
mod memory;
#[path = "soak/stream.rs"]
mod stream;
#[path = "soak/tally.rs"]
mod tally;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::procs::{Relay, open_fds, reset_peak_rss, status_kb};
use futures_util::future::join_all;
use hostile_http::{LATEST_BYTES, LATEST_READERS, LATEST_TOPICS, ProxyStall};
use hostile_raw::{HalfOpen, SlowBody};
use stream::{LARGE_PAD, SITES, Totals};
use tally::Tally;
use tokio::{sync::watch, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

/// The relay requires a publish token, so a publish without it can be refused before its body.
const TOKEN: &str = "soak-publish-token-0123456789";

/// Seeds the publisher's sequence; each hostile client adds its own index.
const SEED: u64 = 0x5eed_50a4;

const LEGACY_SUBSCRIBERS: usize = 20;
const V2_SUBSCRIBERS: usize = 20;

/// Publisher requests, [`STEP_PAUSE`] apart (about 20 s), bounded by [`PUBLISH_LIMIT`] on a slow
/// machine.
const PUBLISH_STEPS: u64 = 600;
const STEP_PAUSE: Duration = Duration::from_millis(25);
const PUBLISH_LIMIT: Duration = Duration::from_secs(30);

/// Once the publisher is done, the time subscribers have to receive the rest.
const FINISH: Duration = Duration::from_secs(15);

/// From the soak's start, the time by which every hostile client must be done (and the relay
/// must have cut off those it should).
const HARD_DEADLINE: Duration = Duration::from_secs(50);

/// How long stalled readers read nothing: past the client timeout (3 s) and the close grace (2 s).
const STALL: Duration = Duration::from_secs(8);

/// Resident memory allowed above the baseline once everything is over. What the relay may
/// legitimately still hold is small: history is 10 publications per site and expires after 5 s
/// (the sweeper runs every 2 s), every connection is gone, large blocks go back to the system
/// when freed (see `MALLOC_MMAP_THRESHOLD_` below). What stays is small blocks the allocator keeps
/// for reuse and maps grown to the peak (a few MB: +3-5 MB measured). Keeping even the large
/// messages that passed through (13 MB for the soak's sites, 20+ MB for the unread ones) or
/// ~13 KB per hostile connection would be above it.
const RSS_TOLERANCE_KB: u64 = 16 * 1024;

/// File descriptors allowed above the baseline once everything is closed.
const FD_TOLERANCE: usize = 2;

/// Bounds the waits for file descriptors and memory to come back down.
const SETTLE_FDS: Duration = Duration::from_secs(10);
const SETTLE_RSS: Duration = Duration::from_secs(6);

/// What every client task shares.
#[derive(Debug)]
pub struct Env {
    pub addr: SocketAddr,
    /// The publish token.
    pub token: String,
    /// Cancelled when the publisher is done: hostile loops start no new round.
    pub stop: CancellationToken,
    /// How the hostile checks fared.
    pub tally: Tally,
    /// Hostile connections opened, for the summary.
    hostile_connections: AtomicU64,
    /// Every hostile client is done by then; those waiting to be cut off give up there.
    pub hard_deadline: Instant,
}

impl Env {
    /// Counts one hostile connection.
    pub fn opened(&self) {
        self.hostile_connections.fetch_add(1, Ordering::Relaxed);
    }
}

/// The relay's settings: short timeouts so that cut-offs happen within the soak.
fn relay_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("DATASTREAM_PUBLISH_TOKEN", TOKEN),
        ("DATASTREAM_HANDSHAKE_TIMEOUT", "1s"),
        ("DATASTREAM_BODY_TIMEOUT", "2s"),
        ("DATASTREAM_CLIENT_TIMEOUT", "3s"),
        ("DATASTREAM_PING_INTERVAL", "1s"),
        ("DATASTREAM_MAX_CLIENT_FRAME_BYTES", "65536"),
        ("DATASTREAM_HISTORY_SIZE", "10"),
        ("DATASTREAM_HISTORY_TTL", "5s"),
        // Every client here is 127.0.0.1; the per-address caps are not what this soak is about.
        ("DATASTREAM_MAX_CONNECTIONS_PER_IP", "0"),
        ("DATASTREAM_MAX_HTTP_CONNECTIONS_PER_IP", "0"),
        // glibc serves blocks from this size up with their own mappings and unmaps them when
        // freed; setting it also stops glibc from raising it after each large free, after which
        // it would keep freed publications and bodies in its heaps. Memory measured at the end is
        // then what the relay holds, not what the allocator cached (+4 MB instead of +8-15 MB
        // here). The release container links musl, whose allocator unmaps large blocks anyway.
        ("MALLOC_MMAP_THRESHOLD_", "65536"),
    ]
}

/// Polls `value` every 200 ms until `ok` holds or `limit` passes; returns the last value.
async fn settle<T: Copy>(limit: Duration, value: impl Fn() -> Option<T>, ok: impl Fn(T) -> bool) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        let v = value();
        if v.is_none_or(&ok) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One publish and one connection of each protocol, so the baseline is taken with every path
/// already used once.
async fn warm_up(relay: &Relay) {
    let client = reqwest::Client::new();
    let body = r#"{"site":"warm-up","topic":"t","data":1}"#;
    let resp = client.post(relay.url("/publish")).bearer_auth(TOKEN).body(body).send().await.expect("warm-up publish");
    assert_eq!(resp.status().as_u16(), 202, "warm-up publish");
    let mut legacy = stream::legacy(relay.addr, 0, 0).await.expect("warm-up legacy");
    let mut v2 = stream::v2(relay.addr, 0, vec![0]).await.expect("warm-up v2");
    legacy.close().await;
    v2.close().await;
}

/// Starts every hostile client (and the probe of publications right after a handshake);
/// `proxied` is the relay that requires a PROXY header.
fn spawn_hostile(env: &Arc<Env>, proxied: SocketAddr, set: &mut JoinSet<()>) {
    let mut seed = SEED;
    let mut next_seed = || {
        seed += 1;
        seed
    };
    for v2 in [false, true] {
        set.spawn(hostile_ws::junk_frames(env.clone(), v2, next_seed()));
        set.spawn(hostile_ws::oversized_frames(env.clone(), v2));
        set.spawn(hostile_ws::closer(env.clone(), v2));
        set.spawn(hostile_ws::v2_churn(env.clone(), next_seed()));
        set.spawn(hostile_ws::legacy_churn(env.clone(), next_seed()));
    }
    set.spawn(hostile_ws::connect_drop(env.clone(), next_seed()));
    set.spawn(hostile_ws::huge_topic_list(env.clone()));
    // Two waves of stalled readers: from the start, and once large bodies have been flowing.
    for wave in 0..2u64 {
        for (i, v2) in [false, false, true, true].into_iter().enumerate() {
            let env = env.clone();
            set.spawn(async move {
                tokio::time::sleep(Duration::from_secs(10 * wave)).await;
                hostile_ws::stalled_reader(env, v2, i % SITES.len(), STALL).await;
            });
        }
    }
    for kind in [SlowBody::NoToken, SlowBody::WrongToken, SlowBody::Stalled, SlowBody::TooLong] {
        for _ in 0..2 {
            set.spawn(hostile_raw::slow_body(env.clone(), kind));
        }
    }
    let stages = [
        HalfOpen::Nothing,
        HalfOpen::G,
        HalfOpen::P,
        HalfOpen::HalfHandshake,
        HalfOpen::HalfFrame { v2: false },
        HalfOpen::HalfFrame { v2: true },
    ];
    for stage in stages {
        for _ in 0..3 {
            set.spawn(hostile_raw::half_open(env.clone(), stage));
        }
    }
    set.spawn(hostile_raw::unread_publisher(env.clone()));
    set.spawn(stream::publish_after_handshake(env.clone()));
    for v2 in [false, true] {
        set.spawn(hostile_http::ping_flood(env.clone(), v2));
    }
    for _ in 0..LATEST_READERS {
        set.spawn(hostile_http::slow_latest_reader(env.clone()));
    }
    set.spawn(hostile_http::slow_metrics_reader(env.clone()));
    set.spawn(hostile_http::keep_alive_hoarder(env.clone()));
    for stall in [ProxyStall::HalfHeader, ProxyStall::Header, ProxyStall::HalfRequest] {
        set.spawn(hostile_http::proxy_staller(env.clone(), proxied, stall));
    }
}

/// Every check the hostile clients and the probe make; each must have run at least once.
const CHECKS: &[&str] = &[
    "legacy: a publication right after the handshake is delivered",
    "junk frames: 10 error frames, then close 3500",
    "oversized frame: close 3502",
    "client Close: answered with a Close",
    "v2 churn: every request answered, nothing after unsubscribed",
    "legacy churn: served while moving between sites",
    "connect and drop: handshakes still answered",
    "huge topic list: refused (error or close)",
    "stalled reader: cut off",
    "slow publish body, no token: 401 before the body",
    "slow publish body, wrong token: 401 before the body",
    "slow publish body, valid token: connection cut",
    "slow publish body over the limit: 413 or cut",
    "half-open: silent TCP connection closed",
    "half-open: 'G' then nothing, closed",
    "half-open: 'P' then nothing, closed",
    "half-open: half a handshake, closed",
    "half-open: half a frame (legacy), closed",
    "half-open: half a frame (v2), closed",
    "large bodies to unread sites: accepted",
    "ping flood: close 3500",
    "unread GET …/latest: let go after the write deadline",
    "unread /metrics: answered, then closed when idle",
    "keep-alive hoarder: closed when idle",
    "PROXY staller: closed at the handshake deadline",
];

/// Samples the relay's open WebSockets and plain HTTP connections (from `/metrics`, over one
/// kept-alive connection) every 200 ms, keeping the highest of each.
fn sample_connections(url: String, websockets: Arc<AtomicU64>, http: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), client.get(&url).send()).await
                && let Ok(text) = resp.text().await
            {
                let value = |series: &str| {
                    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok()).unwrap_or(0.0) as u64
                };
                let ws = value(r#"datastream_connections{protocol="legacy"}"#)
                    + value(r#"datastream_connections{protocol="v2"}"#);
                websockets.fetch_max(ws, Ordering::Relaxed);
                http.fetch_max(value("datastream_http_connections"), Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_neither_disturb_subscribers_nor_leak() {
    let started = Instant::now();
    let mut relay = Relay::start(&relay_env());
    let pid = relay.proc.pid();
    let fds_idle = open_fds(pid).expect("relay fds");
    let proxied = Relay::start(&[relay_env(), vec![("DATASTREAM_PROXY_PROTOCOL", "true")]].concat());
    let proxied_fds_base = open_fds(proxied.proc.pid()).expect("PROXY relay fds");
    warm_up(&relay).await;
    let measured = memory::measure(relay.addr, pid, 200).await;
    // Closed connections linger up to 2 s (reading what the client still sends).
    let fds_base = settle(Duration::from_secs(5), || open_fds(pid), |n| n <= fds_idle).await.expect("relay fds");
    let rss_base = status_kb(pid, "VmRSS").expect("relay VmRSS");
    // The peak from here on, not the calibration's.
    assert!(reset_peak_rss(pid), "cannot reset the relay's peak memory (/proc/<pid>/clear_refs)");
    // The site whose latest values make a 12 MB answer, for the readers who never read it.
    hostile_http::publish_large_latest(relay.addr, TOKEN).await;
    let (peak_ws, peak_http) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let connections = sample_connections(relay.url("/metrics"), peak_ws.clone(), peak_http.clone());

    // The highest count of open file descriptors while the soak runs.
    let fds_peak = Arc::new(AtomicUsize::new(fds_base));
    let sampler = {
        let peak = fds_peak.clone();
        tokio::spawn(async move {
            while let Some(n) = open_fds(pid) {
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // Subscribers first (v2 ones have their acks back), then the publisher starts at once: a
    // legacy connection is subscribed once its handshake is answered.
    let v2_sites = |n: usize| vec![n % SITES.len(), (n + 1) % SITES.len()];
    let v2 = join_all((0..V2_SUBSCRIBERS).map(|n| stream::v2(relay.addr, n, v2_sites(n)))).await;
    let legacy = join_all((0..LEGACY_SUBSCRIBERS).map(|n| stream::legacy(relay.addr, n, n % SITES.len()))).await;
    let subscribers: Vec<_> = v2.into_iter().chain(legacy).collect::<Result<_, _>>().expect("subscribers connect");
    let mut per_site = [0u64; SITES.len()];
    for sub in &subscribers {
        for &s in &sub.sites {
            per_site[s] += 1;
        }
    }

    let env = Arc::new(Env {
        addr: relay.addr,
        token: TOKEN.to_owned(),
        stop: CancellationToken::new(),
        tally: Tally::default(),
        hostile_connections: AtomicU64::new(0),
        hard_deadline: Instant::now() + HARD_DEADLINE,
    });
    let (totals_tx, totals_rx) = watch::channel::<Option<Totals>>(None);
    let mut readers = JoinSet::new();
    for sub in subscribers {
        readers.spawn(sub.read(totals_rx.clone(), FINISH));
    }
    drop(totals_rx);
    let mut hostile = JoinSet::new();
    spawn_hostile(&env, proxied.addr, &mut hostile);

    let published = stream::publish(relay.url("/publish"), TOKEN, PUBLISH_STEPS, STEP_PAUSE, PUBLISH_LIMIT, SEED).await;
    totals_tx.send_replace(Some(published.totals));
    env.stop.cancel();

    let mut problems = Vec::new();
    if let Some(failure) = &published.failure {
        problems.push(format!("publisher stopped: {failure}"));
    }
    let mut received = Vec::new();
    let readers_done = tokio::time::timeout(FINISH + Duration::from_secs(5), async {
        while let Some(r) = readers.join_next().await {
            received.push(r.expect("subscriber task"));
        }
    })
    .await;
    if readers_done.is_err() {
        problems.push(format!("{} subscribers still reading after the bound", readers.len()));
        readers.abort_all();
    }
    let hostile_done = tokio::time::timeout_at(env.hard_deadline + Duration::from_secs(5), async {
        while let Some(r) = hostile.join_next().await {
            r.expect("hostile task");
        }
    })
    .await;
    if hostile_done.is_err() {
        problems.push(format!("{} hostile clients still running after the bound", hostile.len()));
        hostile.abort_all();
    }
    // Every client socket is closed from here (their tasks ended).
    drop(hostile);
    drop(readers);

    if let Ok(Some(status)) = relay.proc.child.try_wait() {
        problems.push(format!("the relay exited: {status}"));
    }
    let fds_final =
        settle(SETTLE_FDS, || open_fds(pid), |n| n <= fds_base + FD_TOLERANCE).await.expect("relay fds at the end");
    let rss_final = settle(SETTLE_RSS, || status_kb(pid, "VmRSS"), |kb| kb <= rss_base + RSS_TOLERANCE_KB)
        .await
        .expect("relay VmRSS at the end");
    let rss_peak = status_kb(pid, "VmHWM").unwrap_or(0);
    sampler.abort();
    connections.abort();
    let proxied_fds = settle(SETTLE_FDS, || open_fds(proxied.proc.pid()), |n| n <= proxied_fds_base + FD_TOLERANCE)
        .await
        .expect("PROXY relay fds at the end");

    // The memory model for what was open and published at once. Kept: each soak and unread site's
    // history (10) and latest value of its one topic, all possibly large; the large latest
    // values; one small publication (history and latest) per site the handshake probe made.
    let large = (LARGE_PAD + 200) as u64;
    let fresh_sites = env.tally.count("legacy: a publication right after the handshake is delivered");
    let load = memory::Load {
        websockets: peak_ws.load(Ordering::Relaxed),
        http_connections: peak_http.load(Ordering::Relaxed),
        unread_answers: LATEST_READERS as u64,
        unread_answer_value: LATEST_BYTES as u64,
        // The publisher and the unread publisher, each with up to 14 large messages.
        bodies_in_flight: vec![14 * large, 14 * large],
        kept_bytes: (SITES.len() as u64 + 3) * 11 * large
            + (LATEST_TOPICS as u64 + 10) * LATEST_BYTES as u64
            + fresh_sites * 2 * 200,
    };
    let limits = memory::Limits { queue_bytes: 1024 * 1024, max_message: 262_144, max_name_len: 64 };
    let (bound_kb, terms) = memory::bound_kb(limits, measured, &load);

    let publications: u64 = published.totals.iter().sum();
    let expected: u64 = published.totals.iter().zip(per_site).map(|(t, n)| t * n).sum();
    let delivered: u64 = received.iter().map(|r| r.publications).sum();
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "soak: {LEGACY_SUBSCRIBERS} legacy + {V2_SUBSCRIBERS} v2 subscribers, {} hostile connections; \
         {publications} publications in {} requests ({} of 10-14 x 100 KB); {delivered} of {expected} deliveries; \
         relay RSS {:.1} MB baseline, {:.1} MB peak, {:.1} MB final; fds {fds_base} baseline, {} peak, {fds_final} final; {:.0} s",
        env.hostile_connections.load(Ordering::Relaxed),
        published.requests,
        published.large_bodies,
        mb(rss_base),
        mb(rss_peak),
        mb(rss_final),
        fds_peak.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    );
    println!("soak checks: {}", env.tally.summary().join("; "));
    let terms: Vec<String> = terms.iter().map(|(name, kb)| format!("{name} {:.1} MB", mb(*kb))).collect();
    println!(
        "soak memory: peak {:.1} MB above the baseline, bound {:.1} MB = {}; measured idle websocket {} B, idle http connection {} B; peaks {} websockets, {} http connections",
        mb(rss_peak.saturating_sub(rss_base)),
        mb(bound_kb),
        terms.join(" + "),
        measured.ws_idle,
        measured.http_idle,
        load.websockets,
        load.http_connections,
    );

    for r in &received {
        if let Some(failure) = &r.failure {
            problems.push(format!("subscriber {}: {failure}", r.name));
        }
    }
    problems.extend(env.tally.failures());
    for check in CHECKS {
        if !env.tally.ran(check) {
            problems.push(format!("{check}: never ran"));
        }
    }
    if rss_peak > rss_base + bound_kb {
        problems.push(format!(
            "memory: peak {:.1} MB, above the baseline {:.1} MB plus the model's bound {:.1} MB",
            mb(rss_peak),
            mb(rss_base),
            mb(bound_kb)
        ));
    }
    if proxied_fds > proxied_fds_base + FD_TOLERANCE {
        problems
            .push(format!("PROXY relay file descriptors: {proxied_fds} open at the end, baseline {proxied_fds_base}"));
    }
    if fds_final > fds_base + FD_TOLERANCE {
        problems.push(format!("file descriptors: {fds_final} open at the end, baseline {fds_base}"));
    }
    if rss_final > rss_base + RSS_TOLERANCE_KB {
        problems.push(format!("memory: {:.1} MB resident at the end, baseline {:.1} MB", mb(rss_final), mb(rss_base)));
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}
