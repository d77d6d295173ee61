//! `loadgen cluster`: v2 subscribers that behave like the SDK — subscribe, keep the last
//! `(epoch, offset)`, and on any close reconnect (through a load balancer) with full-jitter
//! backoff and `recover` — plus a steady HTTP publisher that retries each message with its
//! idempotency key until it is acknowledged. At the end every subscriber's stream is checked
//! against what was acknowledged: lost, duplicated and out-of-order publications, offset gaps,
//! `recovered: false` answers; with reconnect times and rates. Failures (nodes killed or stopped,
//! Redis frozen or restarted) are injected from outside while it runs (`tests/cluster/`).

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    rc::Rc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use datastream_protocol::backoff::Backoff;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
    time::{Instant, sleep, sleep_until, timeout},
};
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

use crate::{payload, round, track::Track};

#[derive(Debug, clap::Args)]
pub(crate) struct ClusterArgs {
    /// WebSocket address (the load balancer).
    #[arg(long)]
    ws: SocketAddr,
    /// HTTP publish address (the load balancer). Without it, publications come from elsewhere
    /// (e.g. SQS) and `--expect` says how many.
    #[arg(long)]
    publish: Option<SocketAddr>,
    /// Bearer token for `POST /publish`.
    #[arg(long)]
    token: Option<String>,
    /// Without `--publish`: publications with sequence numbers `0..N` (site `s{seq % sites}`)
    /// are expected.
    #[arg(long)]
    expect: Option<u64>,
    #[arg(long, default_value_t = 2000)]
    subs: usize,
    /// Sites; subscriber `i` and publication `seq` belong to site `i % sites`, `seq % sites`.
    #[arg(long, default_value_t = 20)]
    sites: usize,
    /// Publications per second, one per request.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds of publishing (with `--expect`: how long the publications may take to come).
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// A publish is retried (same idempotency key) for this long before it counts as failed, seconds.
    #[arg(long, default_value_t = 30.0)]
    give_up: f64,
    /// Created once every subscriber is subscribed; publishing starts then (time 0 of the report).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Longest wait after the last publish for every subscriber to be connected and complete, seconds.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// `recovered: false` is expected (Redis lost its data): not counted as a failure.
    #[arg(long)]
    allow_unrecovered: bool,
    /// Reconnect backoff floor and ceiling, ms (full jitter, as the SDK).
    #[arg(long, default_value_t = 100)]
    backoff_min_ms: u64,
    #[arg(long, default_value_t = 2000)]
    backoff_max_ms: u64,
    /// Handshakes in flight at once for the first connections.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    #[arg(long, default_value = "")]
    label: String,
}

/// One subscriber's state.
#[derive(Debug)]
struct Sub {
    site: usize,
    track: Track,
    /// Subscribed right now.
    live: bool,
}

/// Everything the run records (one thread: `RefCell`s, no locks).
struct Ctx {
    args: ClusterArgs,
    backoff: Backoff,
    subs: RefCell<Vec<Sub>>,
    /// Time 0: when every subscriber was first subscribed.
    t0: Cell<Option<Instant>>,
    ready: Cell<usize>,
    stats: RefCell<Stats>,
}

struct Stats {
    /// Connection lost → subscribed again, ms.
    reconnect: Histogram<u64>,
    /// When each re-subscription completed, seconds since time 0.
    reconnected_at: Vec<f64>,
    closes: BTreeMap<String, u64>,
    connect_errors: BTreeMap<String, u64>,
    error_frames: BTreeMap<String, u64>,
    /// Publish → receive, µs (replays included).
    latency: Histogram<u64>,
    delivered: u64,
    publish: PublishStats,
}

#[derive(Default)]
struct PublishStats {
    acked: Vec<u64>,
    unacked: Vec<u64>,
    attempts: BTreeMap<String, u64>,
    /// The first body of each refusal's status, as publishers see it.
    refusals: BTreeMap<u16, String>,
    /// Failed attempts: (start, end) of each run of consecutive failures, seconds since time 0.
    outages: Vec<(f64, f64)>,
}

fn since(t0: Option<Instant>) -> f64 {
    t0.map_or(0.0, |t| t.elapsed().as_secs_f64())
}

/// A random number in `[0, 1)` (xorshift; jitter needs no better).
fn unit(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

/// Short names for errors, so that the report groups them.
fn kind(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    for (needle, name) in [
        ("Connection refused", "refused"),
        ("Connection reset", "reset"),
        ("timed out", "timeout"),
        ("HTTP error: 502", "handshake 502"),
        ("HTTP error: 503", "handshake 503"),
        ("HTTP error: 504", "handshake 504"),
        ("ResetWithoutClosingHandshake", "reset"),
    ] {
        if s.contains(needle) {
            return name.to_owned();
        }
    }
    s.chars().take(80).collect()
}

pub(crate) async fn run(args: ClusterArgs) -> anyhow::Result<Value> {
    if args.publish.is_none() && args.expect.is_none() {
        bail!("give --publish (HTTP) or --expect (publications come from elsewhere)");
    }
    let sites = args.sites.max(1);
    let ctx = Rc::new(Ctx {
        backoff: Backoff {
            min: Duration::from_millis(args.backoff_min_ms),
            max: Duration::from_millis(args.backoff_max_ms.max(args.backoff_min_ms)),
        },
        subs: RefCell::new(
            (0..args.subs).map(|i| Sub { site: i % sites, track: Track::default(), live: false }).collect(),
        ),
        t0: Cell::new(None),
        ready: Cell::new(0),
        stats: RefCell::new(Stats {
            reconnect: Histogram::new_with_bounds(1, 600_000, 3)?,
            reconnected_at: Vec::new(),
            closes: BTreeMap::new(),
            connect_errors: BTreeMap::new(),
            error_frames: BTreeMap::new(),
            latency: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            delivered: 0,
            publish: PublishStats::default(),
        }),
        args,
    });

    let gate = Rc::new(Semaphore::new(ctx.args.connect_concurrency.max(1)));
    let started = Instant::now();
    for id in 0..ctx.args.subs {
        tokio::task::spawn_local(subscriber(ctx.clone(), id, gate.clone()));
    }
    let deadline = started + Duration::from_secs(120);
    while ctx.ready.get() < ctx.args.subs && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    if ctx.ready.get() < ctx.args.subs {
        bail!("only {} of {} subscribers subscribed within 120 s", ctx.ready.get(), ctx.args.subs);
    }
    eprintln!("[{}] {} subscribers subscribed in {connect_secs:.2}s", ctx.args.label, ctx.args.subs);
    ctx.t0.set(Some(Instant::now()));
    if let Some(path) = &ctx.args.ready_file {
        std::fs::write(path, b"ready\n").with_context(|| format!("write {}", path.display()))?;
    }

    let publish_secs = match ctx.args.publish {
        Some(addr) => publish(&ctx, addr).await,
        None => ctx.args.secs,
    };
    eprintln!("[{}] publishing done at {publish_secs:.1}s; draining", ctx.args.label);

    // Wait until every subscriber is connected and has everything expected.
    let wait = if ctx.args.publish.is_some() { ctx.args.drain } else { ctx.args.secs + ctx.args.drain };
    let until = Instant::now() + Duration::from_secs_f64(wait);
    loop {
        if incomplete(&ctx) == 0 || Instant::now() > until {
            break;
        }
        sleep(Duration::from_millis(200)).await;
    }
    Ok(report(&ctx, connect_secs, publish_secs))
}

/// Whether `seq` is expected to reach its site's subscribers.
fn expected_seqs(ctx: &Ctx) -> Vec<u64> {
    match ctx.args.expect {
        Some(n) if ctx.args.publish.is_none() => (0..n).collect(),
        _ => ctx.stats.borrow().publish.acked.clone(),
    }
}

/// Subscribers not connected, or missing an expected publication.
fn incomplete(ctx: &Ctx) -> usize {
    let expected = expected_seqs(ctx);
    let sites = ctx.args.sites.max(1) as u64;
    ctx.subs
        .borrow()
        .iter()
        .filter(|s| !s.live || expected.iter().any(|&q| q % sites == s.site as u64 && s.track.count(q) == 0))
        .count()
}

fn report(ctx: &Ctx, connect_secs: f64, publish_secs: f64) -> Value {
    let expected = expected_seqs(ctx);
    let sites = ctx.args.sites.max(1) as u64;
    let acked: std::collections::HashSet<u64> = expected.iter().copied().collect();
    let (mut want, mut lost, mut duplicated, mut extra) = (0u64, 0u64, 0u64, 0u64);
    let (mut gaps, mut ooo, mut unrecovered, mut epochs, mut incomplete, mut not_live) = (0, 0, 0, 0, 0usize, 0usize);
    for s in ctx.subs.borrow().iter() {
        let mut missing = 0;
        for &q in expected.iter().filter(|&&q| q % sites == s.site as u64) {
            want += 1;
            match s.track.count(q) {
                0 => missing += 1,
                1 => {}
                n => duplicated += u64::from(n - 1),
            }
        }
        lost += missing;
        incomplete += usize::from(missing > 0);
        not_live += usize::from(!s.live);
        extra += s.track.extra(|q| acked.contains(&q));
        gaps += s.track.gaps;
        ooo += s.track.out_of_order;
        unrecovered += s.track.unrecovered;
        epochs += s.track.epoch_changes;
    }
    let st = ctx.stats.borrow();
    let ms = |h: &Histogram<u64>, q: f64| if h.is_empty() { Value::Null } else { json!(h.value_at_quantile(q)) };
    let us_ms = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() { Value::Null } else { json!(round(h.value_at_quantile(q) as f64 / 1000.0, 2)) }
    };
    let mut at = st.reconnected_at.clone();
    at.sort_by(f64::total_cmp);
    // The most re-subscriptions completed within any one second.
    let (mut peak, mut lo) = (0usize, 0usize);
    for hi in 0..at.len() {
        while at[hi] - at[lo] >= 1.0 {
            lo += 1;
        }
        peak = peak.max(hi - lo + 1);
    }
    let p = &st.publish;
    let longest_outage = p.outages.iter().map(|(a, b)| b - a).fold(0.0, f64::max);
    json!({
        "label": ctx.args.label,
        "subs": ctx.args.subs,
        "sites": sites,
        "connect_secs": round(connect_secs, 2),
        "publish": {
            "mode": if ctx.args.publish.is_some() { "http" } else { "external" },
            "secs": round(publish_secs, 2),
            "acked": p.acked.len(),
            "unacked": p.unacked.len(),
            "attempts": p.attempts,
            "refusals": p.refusals,
            "outages": p.outages.iter().map(|(a, b)| json!([round(*a, 2), round(*b, 2)])).collect::<Vec<_>>(),
            "longest_outage_s": round(longest_outage, 2),
        },
        "deliveries": {
            "expected": want,
            "received": st.delivered,
            "lost": lost,
            "duplicated": duplicated,
            "out_of_order": ooo,
            "offset_gaps": gaps,
            "unrecovered": unrecovered,
            "unrecovered_allowed": ctx.args.allow_unrecovered,
            "epoch_changes": epochs,
            "unacked_delivered": extra,
            "subscribers_incomplete": incomplete,
            "subscribers_not_connected": not_live,
            "latency_p50_ms": us_ms(&st.latency, 0.5),
            "latency_p99_ms": us_ms(&st.latency, 0.99),
            "latency_max_ms": us_ms(&st.latency, 1.0),
        },
        "reconnects": {
            "count": st.reconnect.len(),
            "p50_ms": ms(&st.reconnect, 0.5),
            "p99_ms": ms(&st.reconnect, 0.99),
            "max_ms": ms(&st.reconnect, 1.0),
            "peak_per_s": peak,
            "first_s": at.first().map(|v| round(*v, 2)),
            "last_s": at.last().map(|v| round(*v, 2)),
            "closes": st.closes,
            "connect_errors": st.connect_errors,
        },
        "error_frames": st.error_frames,
    })
}

/// One subscriber: connects, and reconnects after every loss, forever (the run ends the process).
async fn subscriber(ctx: Rc<Ctx>, id: usize, gate: Rc<Semaphore>) {
    let mut rng = (id as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ payload::now_ns() | 1;
    let mut attempt = 0u32;
    let mut lost_at: Option<Instant> = None;
    let mut first = true;
    loop {
        let permit = if first { gate.acquire().await.ok() } else { None };
        let outcome = session(&ctx, id, lost_at, permit).await;
        let subscribed = match outcome {
            Ok((subscribed, reason)) => {
                *ctx.stats.borrow_mut().closes.entry(reason).or_default() += 1;
                subscribed
            }
            Err(e) => {
                *ctx.stats.borrow_mut().connect_errors.entry(kind(&e)).or_default() += 1;
                false
            }
        };
        if subscribed {
            first = false;
            attempt = 0;
            lost_at = Some(Instant::now());
            ctx.subs.borrow_mut()[id].live = false;
        }
        // As the SDK: full jitter, the attempt counter reset only once subscribed again.
        let delay = ctx.backoff.delay(attempt, unit(&mut rng));
        attempt = attempt.saturating_add(1);
        sleep(delay).await;
    }
}

type Ws = WebSocketStream<TcpStream>;

async fn handshake(addr: SocketAddr) -> anyhow::Result<Ws> {
    let tcp = timeout(Duration::from_secs(5), TcpStream::connect(addr)).await.context("connect timed out")??;
    tcp.set_nodelay(true)?;
    let mut req = format!("ws://{addr}/dev").into_client_request()?;
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("datastream.v2"));
    let (ws, _) = timeout(Duration::from_secs(10), client_async(req, tcp)).await.context("handshake timed out")??;
    Ok(ws)
}

/// One connection: handshake, subscribe (recovering from the last position if there is one),
/// then record until it ends. Returns whether it got to `subscribed`, and why it ended; an error
/// if it failed before the WebSocket was open.
async fn session(
    ctx: &Ctx,
    id: usize,
    lost_at: Option<Instant>,
    permit: Option<tokio::sync::SemaphorePermit<'_>>,
) -> anyhow::Result<(bool, String)> {
    let mut ws = handshake(ctx.args.ws).await?;
    let (site, last) = {
        let subs = ctx.subs.borrow();
        (format!("s{}", subs[id].site), subs[id].track.last.clone())
    };
    let subscribe = match &last {
        Some((epoch, offset)) => json!({"type": "subscribe", "id": 1, "site": site,
                                        "recover": {"epoch": epoch, "offset": offset}}),
        None => json!({"type": "subscribe", "id": 1, "site": site}),
    };
    ws.send(Message::text(subscribe.to_string())).await?;
    let mut permit = permit;
    let mut subscribed = false;
    // Nothing at all for longer than the ping interval + grace: dead (the SDK's rule).
    let silence = Duration::from_secs(40);
    loop {
        let msg = match timeout(if subscribed { silence } else { Duration::from_secs(10) }, ws.next()).await {
            Err(_) => return Ok((subscribed, if subscribed { "silent" } else { "setup timeout" }.to_owned())),
            Ok(None) => return Ok((subscribed, "eof".to_owned())),
            Ok(Some(Err(e))) => return Ok((subscribed, kind(&e.into()))),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(c) => {
                return Ok((subscribed, c.map_or_else(|| "close".to_owned(), |c| format!("close {}", c.code))));
            }
            _ => continue,
        };
        let mut pong = false;
        for line in text.as_str().split('\n').filter(|l| !l.is_empty()) {
            let Ok(frame) = serde_json::from_str::<Value>(line) else { continue };
            match frame["type"].as_str() {
                Some("pub") => {
                    let (Some(epoch), Some(offset)) = (frame["epoch"].as_str(), frame["offset"].as_u64()) else {
                        continue;
                    };
                    let seq = payload::extract(line.as_bytes());
                    ctx.subs.borrow_mut()[id].track.on_pub(epoch, offset, seq.map(|(s, _)| s));
                    let mut st = ctx.stats.borrow_mut();
                    st.delivered += 1;
                    if let Some((_, t)) = seq {
                        st.latency.saturating_record((payload::now_ns().saturating_sub(t) / 1000).max(1));
                    }
                }
                Some("subscribed") => {
                    let epoch = frame["epoch"].as_str().unwrap_or_default();
                    let offset = frame["offset"].as_u64().unwrap_or(0);
                    let recovered = frame["recovered"].as_bool();
                    {
                        let mut subs = ctx.subs.borrow_mut();
                        subs[id].track.on_subscribed(epoch, offset, recovered);
                        subs[id].live = true;
                    }
                    subscribed = true;
                    if permit.take().is_some() {
                        ctx.ready.set(ctx.ready.get() + 1);
                    }
                    if let Some(lost) = lost_at {
                        let mut st = ctx.stats.borrow_mut();
                        let ms = u64::try_from(lost.elapsed().as_millis()).unwrap_or(u64::MAX);
                        st.reconnect.saturating_record(ms.max(1));
                        st.reconnected_at.push(since(ctx.t0.get()));
                    }
                }
                Some("ping") => pong = true,
                Some("error") => {
                    let code = frame["code"].as_str().unwrap_or("?").to_owned();
                    *ctx.stats.borrow_mut().error_frames.entry(code.clone()).or_default() += 1;
                    // The subscribe itself was refused (e.g. `unavailable` while Redis is away):
                    // as the SDK, start over with a new connection after a backoff.
                    if !subscribed && frame["id"].as_u64() == Some(1) {
                        return Ok((false, format!("subscribe {code}")));
                    }
                }
                _ => {}
            }
        }
        if pong {
            ws.send(Message::text(r#"{"type":"pong"}"#)).await?;
        }
    }
}

/// Publishes `rate × secs` messages, one per request, each retried with its idempotency key
/// until acknowledged (or `give_up`). Returns how long it took, seconds.
async fn publish(ctx: &Ctx, addr: SocketAddr) -> f64 {
    let args = &ctx.args;
    let total = (args.rate * args.secs).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let retry = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(1) };
    let mut rng = payload::now_ns() | 1;
    let mut http = Http { addr, token: args.token.clone(), conn: None };
    let started = Instant::now();
    let mut next = started;
    let mut failing_since: Option<f64> = None;
    for seq in 0..total {
        sleep_until(next).await;
        next += interval;
        let site = format!("s{}", seq % args.sites.max(1) as u64);
        let msg = payload::message(&site, seq, payload::now_ns(), args.size);
        // `{…}` → `{…,"idempotency_key":"seq-N"}`: a retry after a lost answer publishes once.
        let body = format!(r#"{},"idempotency_key":"seq-{seq}"}}"#, &msg[..msg.len() - 1]);
        let first = Instant::now();
        let mut attempt = 0;
        loop {
            let result = http.post(&body).await;
            let key = match &result {
                Ok((status, _)) => status.to_string(),
                Err(e) => kind(e),
            };
            let now = since(ctx.t0.get());
            let done = {
                let mut st = ctx.stats.borrow_mut();
                *st.publish.attempts.entry(key).or_default() += 1;
                if let Ok((status, body)) = &result
                    && *status != 202
                {
                    st.publish.refusals.entry(*status).or_insert_with(|| body.trim().to_owned());
                }
                if matches!(result, Ok((202, _))) {
                    st.publish.acked.push(seq);
                    if let Some(from) = failing_since.take() {
                        st.publish.outages.push((from, now));
                    }
                    true
                } else {
                    failing_since.get_or_insert(now);
                    let give_up = first.elapsed().as_secs_f64() > args.give_up;
                    if give_up {
                        st.publish.unacked.push(seq);
                    }
                    give_up
                }
            };
            if done {
                break;
            }
            sleep(retry.delay(attempt, unit(&mut rng))).await;
            attempt += 1;
        }
    }
    if let Some(from) = failing_since {
        ctx.stats.borrow_mut().publish.outages.push((from, since(ctx.t0.get())));
    }
    started.elapsed().as_secs_f64()
}

/// A minimal HTTP/1.1 client: one keep-alive connection, one request at a time.
struct Http {
    addr: SocketAddr,
    token: Option<String>,
    conn: Option<TcpStream>,
}

impl Http {
    /// Posts `body` to `/publish`; the response status and body. The connection is dropped after
    /// any error and after a response that closes it.
    async fn post(&mut self, body: &str) -> anyhow::Result<(u16, String)> {
        let result = timeout(Duration::from_secs(5), self.exchange(body))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("publish timed out")));
        match result {
            Ok((status, keep, text)) => {
                if !keep {
                    self.conn = None;
                }
                Ok((status, text))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    async fn exchange(&mut self, body: &str) -> anyhow::Result<(u16, bool, String)> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let c = TcpStream::connect(self.addr).await?;
                c.set_nodelay(true)?;
                self.conn.insert(c)
            }
        };
        let auth = self.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!(
            "POST /publish HTTP/1.1\r\nHost: datastream\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed before the response");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).context("no status")?;
        let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
        let close = header("connection:").is_some_and(|v| v == "close");
        match header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
            Some(len) => {
                while buf.len() < head_end + len {
                    let n = conn.read(&mut chunk).await?;
                    if n == 0 {
                        bail!("connection closed mid-response");
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let text = String::from_utf8_lossy(&buf[head_end..head_end + len]).chars().take(160).collect();
                Ok((status, !close, text))
            }
            // No length: the body ends with the connection (what arrived so far is enough).
            None => Ok((status, false, String::from_utf8_lossy(&buf[head_end..]).chars().take(160).collect())),
        }
    }
}
