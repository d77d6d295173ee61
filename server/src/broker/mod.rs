//! Brokers give each publication its stream position, keep per-site history, drop duplicates,
//! and hand publications to the local [`Hub`](crate::hub::Hub) in position order.
//!
//! [`Broker`] is the one type the rest of the relay talks to; each backend sits beside it
//! (`memory` today). Every backend passes the same conformance tests.

mod memory;

use std::time::Duration;

pub use memory::MemoryBroker;

use crate::publication::{Position, PublishRequest};

/// How much history a broker keeps per site.
#[derive(Debug, Clone, Copy)]
pub struct HistoryOptions {
    /// Most publications kept per site.
    pub size: usize,
    /// Oldest publication kept.
    pub ttl: Duration,
    /// Window in which a repeated idempotency key is dropped.
    pub dedupe_window: Duration,
}

/// What happened to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Published at this position.
    Published(Position),
    /// A repeat of a message seen within the dedupe window; not published again.
    Duplicate,
}

/// A publish that could not be carried out; the caller keeps the message (SQS does not delete it,
/// HTTP answers 503) so nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker's backend is unreachable.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// The broker in use.
#[derive(Debug)]
pub enum Broker {
    /// Single-node, in-process.
    Memory(MemoryBroker),
}

impl Broker {
    /// Publishes `req`: assigns its position, records it in history and delivers it to local
    /// subscribers, unless it repeats a recent idempotency key.
    pub async fn publish(&self, req: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.publish(req)),
        }
    }

    /// Periodic upkeep: expire history and dedupe keys.
    pub fn sweep(&self) {
        match self {
            Broker::Memory(b) => b.sweep(),
        }
    }
}
