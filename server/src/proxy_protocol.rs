//! The PROXY protocol v2 (what an AWS NLB, HAProxy or a TCP proxy sends first on each connection)
//! with `DATASTREAM_PROXY_PROTOCOL`: a binary header carrying the client's address, read before
//! any HTTP. That address then stands for the TCP peer everywhere (per-address cap, loopback
//! check, logs).
//!
//! With the setting on, every connection must start with the header: one without it is closed
//! (the specification forbids guessing, which would let a direct client pass as anyone). A
//! `LOCAL` header (the balancer's own health checks) keeps the real peer. Headers are read off the
//! accept loop, each within the handshake deadline, so a slow or silent connection delays no other.
//! That deadline covers the whole handshake: the time spent on the PROXY header is not given
//! again for the HTTP request that follows it.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};

use crate::limits::{HttpConnections, HttpPermit};
use tracing::{debug, warn};

/// The fixed start of every v2 header.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Signature, version/command, family/protocol, length.
const FIXED_LEN: usize = 16;

/// Largest address block (addresses plus TLVs) accepted. Balancers send a few dozen bytes (an NLB
/// adds its endpoint id); the protocol allows 64 KiB, which no client should make the relay hold.
const MAX_BLOCK_LEN: usize = 1024;

/// Accepted connections waiting for `accept` once their header is read.
const READY_QUEUE: usize = 256;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A header that could not be used; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection does not start with the v2 signature.
    #[error("no PROXY protocol v2 header")]
    Missing,
    /// Version other than 2, or a command other than LOCAL / PROXY.
    #[error("unsupported PROXY protocol version or command {0:#04x}")]
    Version(u8),
    /// The address block is larger than [`MAX_BLOCK_LEN`].
    #[error("PROXY header of {0} bytes is too large")]
    TooLarge(usize),
    /// The address block is shorter than its family needs.
    #[error("PROXY header address block is truncated")]
    Truncated,
    /// The connection failed or closed while the header was read.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    /// The header did not arrive within the handshake deadline.
    #[error("no PROXY header within the handshake deadline")]
    Timeout,
}

/// What the fixed part of a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fixed {
    /// `PROXY` (a relayed connection) rather than `LOCAL` (the proxy's own, e.g. a health check).
    proxied: bool,
    /// The address family and transport byte.
    family: u8,
    /// Length of the address block that follows.
    len: usize,
}

fn parse_fixed(head: &[u8; FIXED_LEN]) -> Result<Fixed, ProxyHeaderError> {
    if head[..12] != SIGNATURE {
        return Err(ProxyHeaderError::Missing);
    }
    let proxied = match head[12] {
        0x20 => false,
        0x21 => true,
        other => return Err(ProxyHeaderError::Version(other)),
    };
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_BLOCK_LEN {
        return Err(ProxyHeaderError::TooLarge(len));
    }
    Ok(Fixed { proxied, family: head[13], len })
}

/// The client's address from the address block, or `None` when the header does not carry one
/// for TCP (`LOCAL`, `UNSPEC`, UDP, Unix sockets): then the TCP peer stands.
fn source(fixed: Fixed, block: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    if !fixed.proxied {
        return Ok(None);
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match fixed.family {
        // TCP over IPv4: source, destination, source port, destination port; then TLVs.
        0x11 => {
            if block.len() < 12 {
                return Err(ProxyHeaderError::Truncated);
            }
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port(8))))
        }
        // TCP over IPv6.
        0x21 => {
            if block.len() < 36 {
                return Err(ProxyHeaderError::Truncated);
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&block[..16]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port(32))))
        }
        _ => Ok(None),
    }
}

/// Reads a v2 header from the start of `stream`, taking exactly its bytes; returns the client's
/// address, or `peer` when the header names none.
pub async fn read_header(stream: &mut TcpStream, peer: SocketAddr) -> Result<SocketAddr, ProxyHeaderError> {
    let mut head = [0u8; FIXED_LEN];
    stream.read_exact(&mut head).await?;
    let fixed = parse_fixed(&head)?;
    let mut block = vec![0u8; fixed.len];
    stream.read_exact(&mut block).await?;
    Ok(source(fixed, &block)?.unwrap_or(peer))
}

/// A connection the listener accepted: its stream, its client's address, when it was accepted
/// (the handshake deadline runs from there, whatever was read before HTTP), and, once its PROXY
/// header was read, its place among the HTTP connections.
#[derive(Debug)]
pub struct Accepted {
    /// The TCP stream, positioned after any PROXY header.
    pub stream: TcpStream,
    /// The client's address (the TCP peer, or what the PROXY header names).
    pub peer: SocketAddr,
    /// When the TCP connection was accepted.
    pub at: Instant,
    /// Taken while the PROXY header was read, so that connections still sending theirs count too.
    pub permit: Option<HttpPermit>,
}

/// The relay's listener: plain, or reading a PROXY header from each connection before handing it
/// on with the client's address as its peer.
#[derive(Debug)]
pub enum Listener {
    /// Connections as accepted.
    Plain(TcpListener),
    /// Connections whose header was read, from a task that accepts and reads them.
    Proxied {
        /// Connections ready to serve, with the client's address.
        ready: mpsc::Receiver<Accepted>,
        /// Accepts and reads headers; aborted (and the socket closed) when the listener is dropped.
        task: JoinHandle<()>,
    },
}

impl Listener {
    /// Wraps `listener`; with `proxy_protocol`, each connection must send a header within
    /// `deadline`, holding a place among `http`'s connections meanwhile.
    pub fn new(listener: TcpListener, proxy_protocol: bool, deadline: Duration, http: Arc<HttpConnections>) -> Self {
        if !proxy_protocol {
            return Listener::Plain(listener);
        }
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let task = tokio::spawn(accept_proxied(listener, tx, deadline, http));
        Listener::Proxied { ready, task }
    }

    /// The next connection and its client's address.
    pub async fn accept(&mut self) -> io::Result<Accepted> {
        match self {
            Listener::Plain(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok(Accepted { stream, peer, at: Instant::now(), permit: None })
            }
            Listener::Proxied { ready, .. } => {
                ready.recv().await.ok_or_else(|| io::Error::other("PROXY protocol accept task ended"))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Proxied { task, .. } = self {
            task.abort();
        }
    }
}

async fn accept_proxied(
    listener: TcpListener,
    ready: mpsc::Sender<Accepted>,
    deadline: Duration,
    http: Arc<HttpConnections>,
) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let at = Instant::now();
        // Counted before its header is read: a flood of connections that send none cannot grow
        // past the cap. No HTTP yet, so a refusal is a plain close.
        let Ok(permit) = http.admit() else {
            debug!(%peer, "connection refused: too many HTTP connections");
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let header = tokio::time::timeout_at(at + deadline, read_header(&mut stream, peer)).await;
            match header.unwrap_or(Err(ProxyHeaderError::Timeout)) {
                Ok(client) => {
                    let _ = ready.send(Accepted { stream, peer: client, at, permit: Some(permit) }).await;
                }
                // One connection's problem: it is closed, as the specification requires.
                Err(e) => debug!(%peer, error = %e, "connection refused: PROXY header"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 header: `command` 0x20 LOCAL / 0x21 PROXY, `family`, then `block`.
    fn header(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.push(command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn parse(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
        let head: [u8; FIXED_LEN] = bytes[..FIXED_LEN].try_into().unwrap();
        let fixed = parse_fixed(&head)?;
        source(fixed, &bytes[FIXED_LEN..FIXED_LEN + fixed.len])
    }

    #[test]
    fn ipv4_and_ipv6_sources() {
        let mut v4 = vec![203, 0, 113, 7, 10, 0, 0, 1];
        v4.extend_from_slice(&4711u16.to_be_bytes());
        v4.extend_from_slice(&8080u16.to_be_bytes());
        assert_eq!(parse(&header(0x21, 0x11, &v4)).unwrap(), Some("203.0.113.7:4711".parse().unwrap()));
        // TLVs after the addresses (an NLB's endpoint id) are skipped.
        let mut with_tlv = v4.clone();
        with_tlv.extend_from_slice(&[0xEA, 0x00, 0x04, b'v', b'p', b'c', b'e']);
        assert_eq!(parse(&header(0x21, 0x11, &with_tlv)).unwrap(), Some("203.0.113.7:4711".parse().unwrap()));
        let src: Ipv6Addr = "2001:db8::9".parse().unwrap();
        let mut v6 = src.octets().to_vec();
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&443u16.to_be_bytes());
        v6.extend_from_slice(&8080u16.to_be_bytes());
        assert_eq!(parse(&header(0x21, 0x21, &v6)).unwrap(), Some("[2001:db8::9]:443".parse().unwrap()));
    }

    #[test]
    fn local_and_unspecified_keep_the_peer() {
        assert_eq!(parse(&header(0x20, 0x00, &[])).unwrap(), None, "LOCAL: a health check");
        assert_eq!(parse(&header(0x20, 0x11, &[0; 12])).unwrap(), None, "LOCAL ignores any addresses");
        assert_eq!(parse(&header(0x21, 0x00, &[])).unwrap(), None, "UNSPEC");
        assert_eq!(parse(&header(0x21, 0x31, &[0; 216])).unwrap(), None, "Unix sockets");
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut wrong = header(0x21, 0x11, &[0; 12]);
        wrong[0] = b'G';
        assert!(matches!(parse(&wrong), Err(ProxyHeaderError::Missing)));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Err(ProxyHeaderError::Missing)));
        assert!(matches!(parse(&header(0x11, 0x11, &[0; 12])), Err(ProxyHeaderError::Version(0x11))));
        assert!(matches!(parse(&header(0x22, 0x11, &[0; 12])), Err(ProxyHeaderError::Version(0x22))));
        assert!(matches!(parse(&header(0x21, 0x11, &[0; 11])), Err(ProxyHeaderError::Truncated)));
        assert!(matches!(parse(&header(0x21, 0x21, &[0; 35])), Err(ProxyHeaderError::Truncated)));
        let huge = header(0x21, 0x11, &vec![0; MAX_BLOCK_LEN + 1]);
        assert!(matches!(parse(&huge), Err(ProxyHeaderError::TooLarge(_))));
    }
}
