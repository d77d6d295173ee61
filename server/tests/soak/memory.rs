//! The relay's memory model (docs/DEPLOYMENT.md, "Memory") evaluated for the soak: the most the
//! relay may hold above its baseline, from its limits and from what the soak had open and
//! published at once. The two per-connection costs that depend on the build (an idle WebSocket,
//! an idle HTTP connection) are measured on the running relay first; everything else comes from
//! the configuration.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::common::procs::status_kb;

/// What the WebSocket layer may hold unwritten besides the budget: its 16 KiB write buffer and one
/// frame of the largest kind (a 64 KiB packed frame, or one message with its envelope).
fn ws_write_buffer(max_message: u64, max_name_len: u64) -> u64 {
    16 * 1024 + (64 * 1024).max(max_message + 2 * max_name_len + 1024)
}

/// What hyper queues of a response before it waits for the socket (its default `max_buf_size`).
pub const HTTP_WRITE_QUEUE: u64 = 8192 + 4096 * 100;

/// How many copies of a message a kept publication holds: its data and, once delivered, its
/// legacy and v2 frames.
pub const KEPT_COPIES: u64 = 3;

/// How many copies of a publish body exist while it is being published: the body, the parsed
/// messages, the publications and their two frames.
pub const IN_FLIGHT_COPIES: u64 = 5;

/// The relay's limits the model uses (its configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub queue_bytes: u64,
    pub max_message: u64,
    pub max_name_len: u64,
}

/// Costs measured on the running relay, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// An idle WebSocket (its session task, buffers, registration).
    pub ws_idle: u64,
    /// An idle HTTP keep-alive connection after one request.
    pub http_idle: u64,
}

/// What was open or held at once, at the peak.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub websockets: u64,
    pub http_connections: u64,
    /// HTTP answers written to clients that do not read them.
    pub unread_answers: u64,
    /// Largest message in such an answer.
    pub unread_answer_value: u64,
    /// Publish bodies being published at once, by size.
    pub bodies_in_flight: Vec<u64>,
    /// Publications the broker keeps (history and latest values), by size, summed.
    pub kept_bytes: u64,
}

/// The bound, in KiB, and its terms (name, KiB) for the report.
pub fn bound_kb(limits: Limits, measured: Measured, load: &Load) -> (u64, Vec<(&'static str, u64)>) {
    let per_ws = measured.ws_idle + limits.queue_bytes + ws_write_buffer(limits.max_message, limits.max_name_len);
    let terms = vec![
        ("websockets x (idle + budget + write buffer)", load.websockets * per_ws),
        ("http connections x idle", load.http_connections * measured.http_idle),
        ("unread answers x (write queue + value)", load.unread_answers * (HTTP_WRITE_QUEUE + load.unread_answer_value)),
        ("bodies in flight x copies", load.bodies_in_flight.iter().sum::<u64>() * IN_FLIGHT_COPIES),
        ("kept publications x copies", load.kept_bytes * KEPT_COPIES),
    ];
    let terms: Vec<_> = terms.into_iter().map(|(name, bytes)| (name, bytes.div_ceil(1024))).collect();
    (terms.iter().map(|(_, kb)| kb).sum(), terms)
}

/// Resident memory of `pid` once it has been still for a moment, in KiB.
async fn settled_rss(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    status_kb(pid, "VmRSS").expect("relay VmRSS")
}

/// Measures what an idle WebSocket and an idle HTTP keep-alive connection cost the relay `pid` at
/// `addr`: `n` of each held open, the growth divided by `n`. They are closed again afterwards.
pub async fn measure(addr: SocketAddr, pid: u32, n: usize) -> Measured {
    let before = settled_rss(pid).await;
    let mut sockets = Vec::new();
    for _ in 0..n {
        let url = format!("ws://{addr}/dev?site=calibration");
        sockets.push(tokio_tungstenite::connect_async(url).await.expect("calibration socket").0);
    }
    let with_ws = settled_rss(pid).await;
    let mut idle = Vec::new();
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        let mut tcp = TcpStream::connect(addr).await.expect("calibration connection");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.expect("request");
        let _ = tcp.read(&mut buf).await;
        idle.push(tcp);
    }
    let with_http = settled_rss(pid).await;
    drop(sockets);
    drop(idle);
    let per = |from: u64, to: u64| (to.saturating_sub(from) * 1024).div_ceil(n as u64);
    Measured { ws_idle: per(before, with_ws), http_idle: per(with_ws, with_http) }
}
