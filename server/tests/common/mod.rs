//! Helpers shared by the integration tests: a relay on `127.0.0.1:0` (in-process or as a real
//! child process), WebSocket and HTTP clients, and bounded waits.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod procs;
pub mod raw;
pub mod tls;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use datastream::{AppState, Config, Server};
use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, protocol::frame::coding::CloseCode},
};

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

/// Parses relay flags as the binary would (defaults included), listening on a free loopback port.
pub fn config(args: &[&str]) -> Config {
    let mut all = vec!["datastream", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).expect("valid test flags").config
}

/// A relay running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    /// One HTTP client per server, so publishes reuse a kept-alive connection.
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(args: &[&str]) -> Self {
        let server = Server::bind(config(args)).await.expect("bind");
        let addr = server.local_addr();
        let state = server.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer { addr, state, http: reqwest::Client::new(), stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    /// Opens a legacy connection to `/dev?site=<site>`.
    pub async fn legacy(&self, site: &str) -> Ws {
        connect(&self.ws_url(&format!("/dev?site={site}"))).await
    }

    /// Publishes `body` (a JSON value) through `POST /publish`; returns status and JSON body.
    pub async fn publish(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        send_publish(&self.http, &self.url("/publish"), body.to_string(), None).await
    }

    /// Begins shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => within(task).await.expect("run task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut).await.expect("timed out")
}

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = within(connect_async(url)).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

pub async fn publish_raw(url: &str, body: String, token: Option<&str>) -> (u16, serde_json::Value) {
    send_publish(&reqwest::Client::new(), url, body, token).await
}

async fn send_publish(
    client: &reqwest::Client,
    url: &str,
    body: String,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = client.post(url).header("content-type", "application/json").body(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = within(req.send()).await.expect("publish request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("publish body");
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// The next text frame, skipping pings.
pub async fn next_text(ws: &mut Ws) -> String {
    within(async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await
}

/// The next text frame parsed as JSON.
pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    let text = next_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
}

/// Reads until the server's close frame; returns its code and reason and how many text frames
/// came before it.
pub async fn expect_close(ws: &mut Ws) -> (u16, String, usize) {
    within(async {
        let mut texts = 0;
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string(), texts);
                }
                Some(Ok(Message::Close(None))) => return (u16::from(CloseCode::Status), String::new(), texts),
                Some(Ok(Message::Text(_))) => texts += 1,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
}

/// Asserts no text frame arrives within `dur`.
pub async fn expect_silence(ws: &mut Ws, dur: Duration) {
    let got = tokio::time::timeout(dur, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await;
    if let Ok(text) = got {
        panic!("expected no frame, got {text}");
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    within(ws.send(Message::text(text))).await.expect("send");
}

/// Polls `check` every 20 ms until it holds, failing after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let ok = tokio::time::timeout(WAIT, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting for: {what}");
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// Every fixture in `tests/fixtures/`, as (file name, JSON text).
pub fn fixtures() -> Vec<(String, String)> {
    let dir = repo_root().join("tests/fixtures");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(e.path()).expect("fixture"))
        })
        .collect();
    out.sort();
    assert!(out.len() >= 7, "fixtures missing from {}", dir.display());
    out
}

/// A value of a Prometheus metric line starting with `series` (name plus labels), or 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok())).unwrap_or(0.0)
}

pub async fn get_text(url: &str) -> (u16, String) {
    let resp = within(reqwest::get(url)).await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// A loopback TCP proxy whose connections can all be cut at once, to lose a client's connection
/// without restarting the relay.
pub struct CutProxy {
    pub addr: SocketAddr,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let list = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        CutProxy { addr, conns, accept }
    }

    /// Drops every proxied connection (both sides see the TCP connection end).
    pub fn cut(&self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
