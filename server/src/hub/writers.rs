//! The fan-out's writers: tasks (one per core) that write each connection's share of a delivery
//! [`Batch`] to its socket, one write per connection for everything queued there.

use std::{
    future::poll_fn,
    sync::{Arc, Mutex},
    task::Poll,
};

use futures_util::task::AtomicWaker;

use super::{Outbox, framing::MAX_PACKED_BYTES};
use crate::metrics::Metrics;

/// Connections a fan-out writer writes to before it lets other tasks run.
const WRITES_PER_TURN: usize = 256;

/// The connections one or more deliveries left publications for, handed to the fan-out's
/// writers when flushed (or dropped): each connection gets one write for all of the batch's
/// publications — or more of them, if the writer gets to it later.
#[derive(Debug)]
pub struct Batch {
    pub(super) dirty: Vec<Arc<Outbox>>,
    pub(super) writers: Arc<[Writer]>,
}

impl Batch {
    /// Hands what was delivered to the writers.
    pub fn flush(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        if let [writer] = &*self.writers {
            writer.add(self.dirty.drain(..));
            return;
        }
        let n = self.writers.len();
        for (i, writer) in self.writers.iter().enumerate() {
            writer.add(self.dirty.iter().filter(|o| o.writer % n == i).cloned());
        }
        self.dirty.clear();
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One of the fan-out's writers: the connections it has to write to, and its task's waker.
#[derive(Debug, Default)]
pub(super) struct Writer {
    pending: Mutex<Vec<Arc<Outbox>>>,
    waker: AtomicWaker,
}

impl Writer {
    fn add(&self, outboxes: impl Iterator<Item = Arc<Outbox>>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let before = pending.len();
        pending.extend(outboxes);
        let added = pending.len() > before;
        drop(pending);
        if added {
            self.waker.wake();
        }
    }

    fn has_pending(&self) -> bool {
        !self.pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    pub(super) fn take(&self, into: &mut Vec<Arc<Outbox>>) {
        std::mem::swap(into, &mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Runs for as long as the process serves: writes what batches left for its connections.
    /// Under load, publications pile up while it writes, and the next write to a connection
    /// carries all of them. It yields every [`WRITES_PER_TURN`] connections, so a large fan-out
    /// does not hold up the rest of the runtime.
    pub(super) async fn run(&self, metrics: &Metrics) {
        let mut scratch = Vec::new();
        let mut outboxes = Vec::new();
        loop {
            poll_fn(|cx| {
                if self.has_pending() {
                    return Poll::Ready(());
                }
                self.waker.register(cx.waker());
                if self.has_pending() { Poll::Ready(()) } else { Poll::Pending }
            })
            .await;
            self.take(&mut outboxes);
            let mut written = 0;
            for (i, outbox) in outboxes.drain(..).enumerate() {
                written += outbox.write_direct(&mut scratch, metrics) as u64;
                if i % WRITES_PER_TURN == WRITES_PER_TURN - 1 {
                    tokio::task::yield_now().await;
                }
            }
            metrics.messages_out.inc_by(written);
            if scratch.capacity() > MAX_PACKED_BYTES {
                scratch = Vec::new();
            }
        }
    }
}
