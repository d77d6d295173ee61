//! `datastream tail`: follow one or more sites over protocol v2 and print every publication as a
//! JSON line on stdout (`{"type":"pub","site",…,"epoch","offset","data"}`). On a lost connection
//! it reconnects with backoff and resubscribes from the last position printed, so nothing is
//! missed or printed twice; when the relay cannot fill the gap it says so on stderr
//! (`{"event":"recovery_failed",…}`) and carries on from the current position. With `--latest`,
//! each site starts with the latest publication of every (matching) topic, printed as the relay
//! marks it (`"latest":true`), however long ago it was published.
//!
//! Every decision — when to connect and reconnect, the heartbeat, what to subscribe and recover
//! from, which publications are new — is the browser SDK's own client core
//! (`datastream_client::client::Client`), run natively: this file only carries its actions out
//! over a tokio socket and a timer table, and prints. It adds one thing of its own: with several
//! `--url`s, which node to try next.

use std::{collections::HashMap, future::Future, pin::Pin, time::Duration};

use clap::Args;
use datastream_client::{
    callbacks::HookKind,
    client::{Action, Client, ClientError, Event, Latest},
    config::Config,
    link::{LinkId, TimerKind},
    state::State,
};
use datastream_protocol::{backoff::Backoff, close::CloseCode};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{
        Message,
        client::IntoClientRequest,
        http::HeaderValue,
        protocol::{CloseFrame, frame::coding::CloseCode as WsCloseCode},
    },
};

use super::ToolError;

/// Reconnect delays.
const RETRY: Backoff = Backoff { min: Duration::from_millis(500), max: Duration::from_secs(20) };

/// The close code of a connection lost without a close frame (RFC 6455 §7.1.5), as browsers
/// report it.
const ABNORMAL: u16 = 1006;

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Arguments of `datastream tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The relay's WebSocket URL, e.g. `ws://127.0.0.1:8080/dev`. Repeat for several nodes:
    /// after a lost connection the next one is tried.
    #[arg(long, env = "DATASTREAM_WS_URL", default_value = "ws://127.0.0.1:8080/dev", value_delimiter = ',')]
    pub url: Vec<String>,

    /// Site to follow (repeat for several).
    #[arg(long, required = true)]
    pub site: Vec<String>,

    /// Only these topics (repeat for several); default: all.
    #[arg(long)]
    pub topic: Vec<String>,

    /// Start with up to this many of each site's latest publications.
    #[arg(long)]
    pub rewind: Option<u32>,

    /// Start with the latest publication of each topic (marked `"latest":true`), however old;
    /// after a reconnect, only those not printed yet.
    #[arg(long)]
    pub latest: bool,

    /// Client token, when the relay requires one.
    #[arg(long, env = "DATASTREAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Exit after printing this many publications.
    #[arg(long)]
    pub count: Option<u64>,
}

/// The client core's callbacks: tail's own hooks, and its one publication listener.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hook {
    Print,
    State,
    Error,
    RecoveryFailed,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Socket, String>> + Send>>;

/// The client core and what carries its actions out.
struct Tail {
    client: Client<Hook, String>,
    args: TailArgs,
    started: Instant,
    /// The socket being opened, and the open one, with their link.
    connecting: Option<(LinkId, Connecting)>,
    socket: Option<(LinkId, Socket)>,
    timers: HashMap<(LinkId, TimerKind), Instant>,
    flush_due: bool,
    /// Index (modulo their count) of the URL the next socket opens.
    next_url: usize,
    /// Whether the relay accepted the current socket (its `hello`): a node that never did is
    /// passed over at the next attempt.
    accepted: bool,
    printed: u64,
}

/// Runs until `--count` publications were printed, a terminal close, or Ctrl-C.
pub async fn run(args: TailArgs) -> Result<(), ToolError> {
    let mut config = Config::new(args.url.first().cloned().unwrap_or_default());
    config.token = args.token.clone();
    config.backoff = RETRY;
    // Deltas are rebuilt by the browser's dispatcher; tail prints the relay's full frames.
    config.delta = false;
    let mut client = Client::new(config, Box::new(rand::random::<f64>))
        .map_err(|e| ToolError::Usage(format!("--url/--token: {}", e.message())))?;
    client.hook(HookKind::State, Hook::State);
    client.hook(HookKind::Error, Hook::Error);
    client.hook(HookKind::RecoveryFailed, Hook::RecoveryFailed);
    let latest = if args.latest { Latest::Ask } else { Latest::No };
    if args.topic.is_empty() {
        client.on("*", None, Hook::Print, latest);
    }
    for topic in &args.topic {
        client.on(topic, None, Hook::Print, latest);
    }
    let mut tail = Tail {
        client,
        args,
        started: Instant::now(),
        connecting: None,
        socket: None,
        timers: HashMap::new(),
        flush_due: false,
        next_url: 0,
        accepted: false,
        printed: 0,
    };
    tail.client.start(0.0);
    let now = tail.now();
    for site in tail.args.site.clone() {
        tail.client.subscribe(&site, tail.args.rewind, now);
    }
    tokio::select! {
        r = tail.follow() => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

impl Tail {
    /// Milliseconds since tail started: the client core's clock.
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    async fn follow(&mut self) -> Result<(), ToolError> {
        loop {
            if let Some(done) = self.carry_out().await {
                return done;
            }
            let deadline = self.timers.values().min().copied();
            tokio::select! {
                opened = async { self.connecting.as_mut().expect("checked").1.as_mut().await }, if self.connecting.is_some() => {
                    let Some((link, _)) = self.connecting.take() else { continue };
                    match opened {
                        Ok(socket) => {
                            self.socket = Some((link, socket));
                            self.client.opened(link, self.now());
                        }
                        Err(why) => self.closed(link, ABNORMAL, why),
                    }
                }
                message = async { self.socket.as_mut().expect("checked").1.next().await }, if self.socket.is_some() => {
                    let Some((link, _)) = self.socket else { continue };
                    match message {
                        Some(Ok(Message::Text(text))) => self.received(link, &text),
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                            self.socket = None;
                            self.closed(link, code, reason);
                        }
                        // Pings are answered by the socket itself; the relay sends no binary frames.
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            self.socket = None;
                            self.closed(link, ABNORMAL, e.to_string());
                        }
                        None => {
                            self.socket = None;
                            self.closed(link, ABNORMAL, "connection closed".into());
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let now = Instant::now();
                    let due: Vec<(LinkId, TimerKind)> =
                        self.timers.iter().filter(|(_, at)| **at <= now).map(|(k, _)| *k).collect();
                    for (link, kind) in due {
                        self.timers.remove(&(link, kind));
                        self.client.timer(link, kind, self.now());
                    }
                }
            }
        }
    }

    /// A text frame from the relay: its publications printed, the rest told to the client.
    fn received(&mut self, link: LinkId, text: &str) {
        let now = self.now();
        for delivery in self.client.read(link, text, now) {
            if self.printed < self.args.count.unwrap_or(u64::MAX) {
                println!("{}", delivery.line);
                self.printed += 1;
            }
        }
        if self.args.count.is_some_and(|c| self.printed >= c) {
            self.client.close();
        }
        if matches!(self.client.state(), State::Connected) {
            self.accepted = true;
        }
    }

    /// `link`'s socket closed (or failed to open) with `code`: said on stderr, then told to the
    /// client, which decides what follows.
    fn closed(&mut self, link: LinkId, code: u16, reason: String) {
        eprintln!("{}", json!({"event": "closed", "code": code, "reason": reason}));
        // A draining node (1001), or one that never accepted the connection: try the next one.
        if code == CloseCode::GoingAway.code() || !self.accepted {
            self.next_url += 1;
        }
        self.client.socket_closed(link, code, reason, self.now());
    }

    /// Carries out what the client decided; `Some` once tail is done.
    async fn carry_out(&mut self) -> Option<Result<(), ToolError>> {
        loop {
            let actions = self.client.take_actions();
            if actions.is_empty() {
                if !std::mem::take(&mut self.flush_due) {
                    break;
                }
                self.client.flush();
                continue;
            }
            for action in actions {
                match action {
                    Action::Open { link, url: _, subprotocol, token } => self.open(link, subprotocol, token),
                    Action::Send { link, text } => {
                        let sent = match &mut self.socket {
                            Some((l, socket)) if *l == link => socket.send(Message::text(text)).await.is_ok(),
                            _ => true,
                        };
                        if !sent {
                            self.socket = None;
                            self.closed(link, ABNORMAL, "send failed".into());
                        }
                    }
                    Action::Close { link, code, reason } => {
                        if self.connecting.as_ref().is_some_and(|(l, _)| *l == link) {
                            self.connecting = None;
                        }
                        if let Some((l, mut socket)) = self.socket.take() {
                            if l == link {
                                let frame = CloseFrame { code: WsCloseCode::from(code), reason: reason.into() };
                                let _ = tokio::time::timeout(CLOSE_WAIT, socket.close(Some(frame))).await;
                            } else {
                                self.socket = Some((l, socket));
                            }
                        }
                    }
                    Action::SetTimer { link, kind, ms } => {
                        self.timers.insert((link, kind), Instant::now() + Duration::from_millis(ms.into()));
                    }
                    Action::ClearTimer { link, kind } => {
                        self.timers.remove(&(link, kind));
                    }
                    Action::Notify { callbacks, event } => {
                        for hook in callbacks {
                            if let Some(done) = self.notify(hook, &event) {
                                return Some(done);
                            }
                        }
                    }
                    Action::Flush => self.flush_due = true,
                }
            }
        }
        None
    }

    /// Opens `link`'s socket on the next URL, with the subprotocol and token the client asks for.
    fn open(&mut self, link: LinkId, subprotocol: Option<&'static str>, token: Option<String>) {
        let url = self.args.url[self.next_url % self.args.url.len().max(1)].clone();
        self.accepted = false;
        let mut protocols = subprotocol.unwrap_or_default().to_owned();
        if let Some(token) = token {
            protocols.push_str(", datastream.token.");
            protocols.push_str(&token);
        }
        self.connecting = Some((
            link,
            Box::pin(async move {
                let mut request = url.as_str().into_client_request().map_err(|e| format!("{url}: {e}"))?;
                let header = HeaderValue::from_str(&protocols).map_err(|e| format!("token: {e}"))?;
                request.headers_mut().insert("sec-websocket-protocol", header);
                connect_async(request).await.map(|(socket, _)| socket).map_err(|e| format!("{url}: {e}"))
            }),
        ));
    }

    /// Tells tail about an event of its hooks; `Some` once tail is done.
    fn notify(&mut self, hook: Hook, event: &Event<String>) -> Option<Result<(), ToolError>> {
        match (hook, event) {
            (Hook::State, Event::State(State::Reconnecting { attempt, delay_ms, reason })) => {
                eprintln!(
                    "{}",
                    json!({"event": "reconnecting", "reason": reason, "attempt": attempt, "delay_ms": delay_ms})
                );
            }
            (Hook::State, Event::State(State::Closed { code, reason })) => {
                // Closed by tail itself: --count was reached.
                if self.args.count.is_some_and(|c| self.printed >= c) {
                    return Some(Ok(()));
                }
                return Some(Err(ToolError::Refused(format!("closed {code}: {reason}"))));
            }
            (Hook::Error, Event::Error(e)) => {
                let line = match e {
                    ClientError::Server { code, message, site } => {
                        json!({"event": "error", "code": code, "message": message, "site": site})
                    }
                    ClientError::Frame(why) => json!({"event": "unreadable_frame", "error": why}),
                    other => json!({"event": "error", "message": other.message()}),
                };
                eprintln!("{line}");
            }
            (Hook::RecoveryFailed, Event::RecoveryFailed(f)) => {
                eprintln!("{}", json!({"event": "recovery_failed", "site": f.site, "reason": f.reason}));
            }
            _ => {}
        }
        None
    }
}
