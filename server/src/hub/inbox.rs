//! The session's end of its [`Outbox`]: what wakes a session, and the publications it writes
//! itself while the fan-out does not.

use std::{future::poll_fn, sync::Arc, sync::atomic::Ordering, task::Poll};

use super::Outbox;
use crate::publication::Publication;

/// The session's end of an [`Outbox`].
#[derive(Debug)]
pub struct Inbox {
    outbox: Arc<Outbox>,
    /// [`Event::Closing`] was returned already.
    closing_seen: bool,
}

/// [`Inbox::try_recv`] found nothing queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

/// What wakes a session from its [`Inbox`].
#[derive(Debug)]
pub enum Event {
    /// The next queued publication.
    Publication(Arc<Publication>),
    /// A fan-out write left bytes unsent on the wire: the session flushes them.
    Unsent,
    /// The budget was passed ([`Outbox::is_overflowed`]): the session closes the connection.
    Overflowed,
    /// The server asked the connection to close ([`Outbox::close`]); returned once.
    Closing,
}

impl Inbox {
    pub(super) fn new(outbox: Arc<Outbox>) -> Self {
        Inbox { outbox, closing_seen: false }
    }

    /// The oldest queued publication, if any is for the session to write (none while the
    /// fan-out writes to the connection: what is queued then is its to write).
    pub fn try_recv(&mut self) -> Result<Arc<Publication>, Empty> {
        self.outbox.queue().pop_for_session().ok_or(Empty)
    }

    /// Waits for the next publication or the request to close, whichever comes first. Cancel-safe:
    /// an item is only taken in the poll that returns it.
    pub async fn recv(&mut self) -> Event {
        poll_fn(|cx| {
            if let Some(event) = self.ready() {
                return Poll::Ready(event);
            }
            // Register, then look again: a push between the first look and the registration
            // would otherwise go unnoticed.
            self.outbox.waker.register(cx.waker());
            self.ready().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    fn ready(&mut self) -> Option<Event> {
        if !self.closing_seen && self.outbox.closing.load(Ordering::Acquire) {
            self.closing_seen = true;
            return Some(Event::Closing);
        }
        if self.outbox.overflowed.load(Ordering::Relaxed) {
            return Some(Event::Overflowed);
        }
        if self.outbox.unsent.swap(false, Ordering::Acquire) {
            return Some(Event::Unsent);
        }
        self.try_recv().ok().map(Event::Publication)
    }
}
