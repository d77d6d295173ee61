//! Connection and frame limits that protect the relay from one client, or one address, taking
//! more than its share.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

/// Counts open connections per IP address (per /64 for IPv6).
#[derive(Debug)]
pub struct IpLimiter {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// The address a connection is counted under. An IPv6 host usually holds a whole /64 and can pick
/// any address in it, so counting single IPv6 addresses would cap nothing; IPv4-mapped addresses
/// (from a dual-stack listener) count as the IPv4 address they carry.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        v4 => v4,
    }
}

/// One open connection's place in its address's count; released on drop.
#[derive(Debug)]
pub struct IpPermit {
    limiter: Arc<IpLimiter>,
    ip: IpAddr,
}

impl IpLimiter {
    /// A limiter allowing `max` connections per address (0: unlimited).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(IpLimiter { max, open: Mutex::default() })
    }

    /// Takes a place for `ip`, or `None` if the address is at its limit.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let ip = bucket(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_default();
        if self.max != 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpPermit { limiter: self.clone(), ip })
    }

    /// Open connections from `ip` (its /64, for IPv6).
    pub fn count(&self, ip: IpAddr) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).get(&bucket(ip)).copied().unwrap_or(0)
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Counts open plain HTTP connections, in total and per address (WebSockets are counted by their
/// sessions once upgraded). A connection takes its place when accepted, before a byte is read, and
/// gives it back when it closes or becomes a WebSocket.
#[derive(Debug)]
pub struct HttpConnections {
    open: AtomicUsize,
    max: usize,
    per_ip: Arc<IpLimiter>,
    gauge: Gauge,
}

/// Why a connection was refused a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    /// The relay holds its most plain HTTP connections.
    Total,
    /// The client's address holds its most.
    PerAddress,
}

/// One plain HTTP connection's place; released on drop.
#[derive(Debug)]
pub struct HttpPermit {
    conns: Arc<HttpConnections>,
    _ip: Option<IpPermit>,
}

impl HttpConnections {
    /// `max` connections in all, `max_per_ip` per address (0: no limit), counted in `gauge`.
    pub fn new(max: usize, max_per_ip: usize, gauge: Gauge) -> Arc<Self> {
        Arc::new(HttpConnections { open: AtomicUsize::new(0), max, per_ip: IpLimiter::new(max_per_ip), gauge })
    }

    /// Takes a place in the total.
    pub fn admit(self: &Arc<Self>) -> Result<HttpPermit, HttpRefusal> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(HttpRefusal::Total);
        }
        self.gauge.inc();
        Ok(HttpPermit { conns: self.clone(), _ip: None })
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl HttpPermit {
    /// Takes the client's place in its address's count too.
    pub fn for_client(mut self, ip: IpAddr) -> Result<Self, HttpRefusal> {
        self._ip = Some(self.conns.per_ip.try_acquire(ip).ok_or(HttpRefusal::PerAddress)?);
        Ok(self)
    }
}

impl Drop for HttpPermit {
    fn drop(&mut self) {
        self.conns.open.fetch_sub(1, Ordering::Relaxed);
        self.conns.gauge.dec();
    }
}

/// A token bucket limiting how fast one connection may send frames.
#[derive(Debug)]
pub struct FrameRate {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl FrameRate {
    /// `rate` frames per second sustained, `burst` at once.
    pub fn new(rate: f64, burst: f64) -> Self {
        FrameRate { rate, burst, tokens: burst, last: Instant::now() }
    }

    /// Takes one frame's token; false if the connection is over its rate.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ip_permits_are_counted_and_released() {
        let limiter = IpLimiter::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let a = limiter.try_acquire(ip).unwrap();
        let _b = limiter.try_acquire(ip).unwrap();
        assert!(limiter.try_acquire(ip).is_none());
        assert!(limiter.try_acquire(other).is_some(), "other addresses are unaffected");
        drop(a);
        assert_eq!(limiter.count(ip), 1);
        assert!(limiter.try_acquire(ip).is_some());
        let unlimited = IpLimiter::new(0);
        let permits: Vec<_> = (0..1000).map(|_| unlimited.try_acquire(ip).unwrap()).collect();
        assert_eq!(unlimited.count(ip), permits.len());
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let limiter = IpLimiter::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = limiter.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = limiter.try_acquire(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")).unwrap();
        assert!(limiter.try_acquire(ip("2001:db8:1:2::99")).is_none(), "a third address in the same /64");
        assert_eq!(limiter.count(ip("2001:db8:1:2::7")), 2);
        assert!(limiter.try_acquire(ip("2001:db8:1:3::1")).is_some(), "the next /64 is another client");
        // An IPv4-mapped address is its IPv4 address, not a /64 shared with every IPv4 client.
        let _c = limiter.try_acquire(ip("::ffff:192.0.2.1")).unwrap();
        let _d = limiter.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(limiter.try_acquire(ip("192.0.2.1")).is_none());
        assert!(limiter.try_acquire(ip("::ffff:192.0.2.2")).is_some());
    }

    #[test]
    fn http_connections_are_capped_in_total_and_per_address() {
        let gauge = Gauge::default();
        let conns = HttpConnections::new(3, 2, gauge.clone());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = conns.admit().unwrap().for_client(ip).unwrap();
        let _b = conns.admit().unwrap().for_client(ip).unwrap();
        assert_eq!(conns.admit().unwrap().for_client(ip).unwrap_err(), HttpRefusal::PerAddress);
        assert_eq!(conns.open(), 2, "a refused connection gives its place back");
        let _c = conns.admit().unwrap();
        assert_eq!(conns.admit().unwrap_err(), HttpRefusal::Total);
        assert_eq!(gauge.get(), 3);
        drop(a);
        assert_eq!((conns.open(), gauge.get()), (2, 2));
        assert!(conns.admit().unwrap().for_client(ip).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn frame_rate_allows_a_burst_then_the_sustained_rate() {
        let mut rate = FrameRate::new(10.0, 5.0);
        assert_eq!((0..20).filter(|_| rate.allow()).count(), 5, "the burst");
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!((0..20).filter(|_| rate.allow()).count(), 5, "refilled up to the burst, not beyond");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(rate.allow());
        assert!(!rate.allow());
    }
}
