//! Frames as text, for drivers outside the browser (`datastream tail`, the scenario tests): each
//! line of a v2 frame is parsed by the protocol crate and handed to the client as the browser's
//! dispatcher hands it (`web/dispatch.rs`): a publication to [`Client::accept`] (a latest one to
//! [`Client::accept_latest`]) and, when it is new and wanted, to the callbacks of
//! [`Client::listeners`]; every other frame to [`Client::received`]. Deltas are applied by the
//! browser's dispatcher only: such a driver turns [`Config::delta`] off, and a delta that comes
//! anyway is a gap ([`Client::gap`]).
//!
//! [`Config::delta`]: crate::config::Config::delta

#[allow(unused_imports)]
use crate::prelude::*;

use datastream_protocol::v2::{PubFrame, ServerFrame};

use crate::client::Client;
use crate::inbound::Inbound;
use crate::link::LinkId;

/// A publication to hand to callbacks.
#[derive(Debug)]
pub struct Delivery<'a, F> {
    /// Its line of the frame, as the relay sent it.
    pub line: &'a str,
    /// The publication.
    pub frame: PubFrame,
    /// The callbacks to hand it to, in order.
    pub callbacks: Vec<F>,
}

impl<F: Clone + PartialEq, D> Client<F, D> {
    /// Reads the v2 text frame `text` that arrived on `link` at `now`: what it decides comes out
    /// of [`Client::take_actions`] as for any event; the publications to deliver, in order, are
    /// returned.
    pub fn read<'a>(&mut self, link: LinkId, text: &'a str, now: f64) -> Vec<Delivery<'a, F>> {
        let mut out = Vec::new();
        for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
            match ServerFrame::parse(line) {
                Ok(ServerFrame::Pub(p)) if p.data.is_none() => self.gap(&p.site),
                Ok(ServerFrame::Pub(p)) => {
                    let fresh = if p.latest {
                        self.accept_latest(link, &p.site, &p.epoch, now)
                    } else {
                        self.accept(link, &p.site, Some((&p.epoch, p.offset)), now)
                    };
                    let callbacks = if fresh { self.listeners(&p.site, &p.topic, p.latest) } else { Vec::new() };
                    if !callbacks.is_empty() {
                        out.push(Delivery { line, frame: p, callbacks });
                    }
                }
                Ok(other) => {
                    if let Some(frame) = Inbound::from_server_frame(other) {
                        self.received(link, frame, now);
                    }
                }
                Err(e) => self.undecodable(link, e.to_string(), now),
            }
        }
        out
    }
}
