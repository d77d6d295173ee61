//! A session speaking protocol v2 (`docs/PROTOCOL.md`): many sites per connection, each with an
//! optional topic filter, stream positions, exact recovery, rewind, the latest publication of each
//! topic, and application-level pings the browser SDK can see.

use std::{future::Future, sync::Arc, time::UNIX_EPOCH};

use axum::extract::ws::{Message, Utf8Bytes};
use datastream_protocol::{
    NameRules,
    error::{ErrorCode, ErrorFrame},
    v2::{ClientFrame, DELTA_FOSSIL, LatestWanted, ServerFrame, StreamPosition},
};
use tracing::warn;

use super::{Protocol, Registration, Start};
use crate::{
    auth::Grant,
    broker::Latest,
    config::{Config, Deltas},
    state::AppState,
    topics::{self, TopicFilter, TopicsError, wants},
};

/// A v2 connection. Its sites live in the [`Registration`]; what a subscribe's snapshot covered is
/// skipped by the outbox's floor.
#[derive(Debug, Default)]
pub struct V2;

/// A subscribe request after validation.
#[derive(Debug)]
pub struct SubscribeRequest {
    /// Request id, echoed back.
    pub id: Option<u64>,
    /// The site.
    pub site: Arc<str>,
    /// Topic filter.
    pub topics: Option<TopicFilter>,
    /// Position to recover from.
    pub recover: Option<StreamPosition>,
    /// Publications to rewind.
    pub rewind: u32,
    /// Which topics' latest publications to send first.
    pub latest: WantLatest,
    /// Publications may go as deltas: the subscribe asked for one the relay offers.
    pub delta: bool,
}

/// A subscribe's `latest`, validated.
#[derive(Debug)]
pub enum WantLatest {
    /// None.
    No,
    /// Of every subscribed topic, those after the client's position.
    Unseen,
    /// Of these subscribed topics (maybe none), whatever the client's position.
    Topics(TopicFilter),
}

/// A subscribe's list of topics, checked ([`topics::distinct_topics`]), or the error frame refusing it.
fn check_topics<'a>(
    names: &NameRules,
    max: usize,
    id: Option<u64>,
    list: &'a [String],
    what: &str,
) -> Result<Vec<&'a str>, ErrorFrame> {
    topics::distinct_topics(names, max, list.iter().map(String::as_str)).map_err(|e| match e {
        TopicsError::TooMany(max) => refuse(id, ErrorCode::TooManyTopics, format!("at most {max} topics {what}")),
        TopicsError::Invalid(e) => refuse(id, ErrorCode::InvalidTopic, e.to_string()),
    })
}

fn refuse(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> ErrorFrame {
    ErrorFrame { id, code, site: None, message: message.into() }
}

impl V2 {
    /// Validates a subscribe request's names and limits.
    #[allow(clippy::too_many_arguments)]
    pub fn check_subscribe(
        &self,
        state: &AppState,
        reg: &Registration,
        id: Option<u64>,
        site: &str,
        topics: &[String],
        recover: Option<StreamPosition>,
        rewind: Option<u32>,
        latest: LatestWanted,
        delta: Option<&str>,
    ) -> Result<SubscribeRequest, ErrorFrame> {
        let names = &state.validator.names;
        names.check_site(site).map_err(|e| refuse(id, ErrorCode::InvalidSite, e.to_string()))?;
        let max_topics = state.config.max_topics as usize;
        let unique = check_topics(names, max_topics, id, topics, "per subscription")?;
        if !reg.grant.allows(site) {
            let message = if reg.grant.has_token() {
                format!("not allowed to subscribe to {site:?}")
            } else {
                format!("a token is required to subscribe to {site:?}")
            };
            return Err(refuse(id, ErrorCode::Forbidden, message).about(site));
        }
        let max = state.config.max_subscriptions as usize;
        let subscribed = reg.sites();
        if !subscribed.iter().any(|s| &**s == site) && subscribed.len() >= max {
            return Err(refuse(
                id,
                ErrorCode::TooManySubscriptions,
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let topics: Option<TopicFilter> = (!unique.is_empty()).then(|| unique.iter().map(|&t| Arc::from(t)).collect());
        let latest = match latest {
            LatestWanted::No => WantLatest::No,
            LatestWanted::Unseen => WantLatest::Unseen,
            LatestWanted::Topics(asked) => {
                let mut asked = check_topics(names, max_topics, id, &asked, "in \"latest\"")?;
                // Only topics the subscription receives (possibly none: the answer says 0).
                asked.retain(|t| wants(topics.as_deref(), t));
                WantLatest::Topics(asked.into_iter().map(Arc::from).collect())
            }
        };
        // An encoding the relay does not offer is not an error: the ack grants none, and the
        // subscription receives full publications.
        let delta = state.config.deltas == Deltas::On && delta == Some(DELTA_FOSSIL);
        Ok(SubscribeRequest { id, site: site.into(), topics, recover, rewind: rewind.unwrap_or(0), latest, delta })
    }

    /// Subscribes ([`Registration::subscribe`]: nothing missed, nothing sent twice). Returns the
    /// ack, then any latest publications, then any replay: offsets only grow along the way, and
    /// live publications follow from the ack's offset on.
    pub async fn subscribe(
        &mut self,
        req: SubscribeRequest,
        reg: &mut Registration,
        state: &AppState,
    ) -> Result<Vec<Utf8Bytes>, ErrorFrame> {
        let latest = match &req.latest {
            WantLatest::No => Latest::No,
            WantLatest::Unseen => Latest::Of(req.topics.as_deref()),
            WantLatest::Topics(topics) => Latest::Of(Some(topics)),
        };
        let start = Start::Snapshot { latest, delta: req.delta };
        let snapshot = match reg.subscribe(req.site.clone(), req.topics.clone(), &state.broker, start).await {
            Ok(Some(snapshot)) => snapshot,
            result => {
                if let Err(e) = result {
                    warn!(site = %req.site, error = %e, "subscribe failed");
                }
                return Err(refuse(req.id, ErrorCode::Unavailable, "history unavailable; retry"));
            }
        };
        let topics = req.topics.as_deref();
        let (recovered, replay) = match &req.recover {
            Some(pos) => match snapshot.recover(&pos.epoch, pos.offset, topics) {
                Some(replay) => (Some(true), replay),
                None => (Some(false), Vec::new()),
            },
            None => (None, snapshot.rewind(req.rewind as usize, topics)),
        };
        // What the client already has in this epoch: nothing, or everything up to its position
        // (except the topics it names in `latest`).
        let seen = match (&req.recover, &req.latest) {
            (Some(pos), WantLatest::Unseen) if pos.epoch == *snapshot.epoch && pos.offset <= snapshot.top => pos.offset,
            _ => 0,
        };
        let latest = snapshot.latest_after(seen, &replay);
        state.metrics.latest_sent("subscribe", latest.len());
        let ack = ServerFrame::Subscribed {
            id: req.id,
            site: req.site.to_string(),
            epoch: snapshot.epoch.to_string(),
            offset: snapshot.top,
            recovered,
            replayed: u32::try_from(replay.len()).unwrap_or(u32::MAX),
            latest: (!matches!(req.latest, WantLatest::No)).then(|| u32::try_from(latest.len()).unwrap_or(u32::MAX)),
            delta: req.delta.then(|| DELTA_FOSSIL.to_owned()),
        };
        // What the answer carries is sent in full, and is what the first deltas apply to.
        reg.track_deltas(&req.site, &snapshot.epoch, req.delta, latest.iter().chain(&replay));
        if req.delta {
            state.hub.remember_sent(&req.site, latest.iter().chain(&replay));
        }
        let mut frames = Vec::with_capacity(latest.len() + replay.len() + 1);
        frames.push(ack.to_json().into());
        frames.extend(latest.iter().map(|p| p.latest_frame()));
        frames.extend(replay.iter().map(|p| p.v2_frame().clone()));
        Ok(frames)
    }

    /// Replaces the connection's grant with the one `token` carries. Subscriptions the new
    /// token no longer allows are removed, each with a `forbidden` error.
    async fn refresh(
        &mut self,
        id: Option<u64>,
        token: &str,
        reg: &mut Registration,
        state: &AppState,
    ) -> Result<Vec<Utf8Bytes>, ErrorFrame> {
        let grant =
            state.auth.verify(Some(token)).await.map_err(|e| refuse(id, ErrorCode::InvalidToken, e.to_string()))?;
        let mut frames = Vec::new();
        let lost: Vec<_> = reg.sites().iter().filter(|s| !grant.allows(s)).cloned().collect();
        for site in lost {
            reg.remove(&site);
            frames.push(
                refuse(None, ErrorCode::Forbidden, format!("no longer allowed to read {site:?}"))
                    .about(&*site)
                    .to_json()
                    .into(),
            );
        }
        let expires_at = grant.expires.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs());
        reg.grant = grant;
        frames.insert(0, ServerFrame::Refreshed { id, expires_at }.to_json().into());
        Ok(frames)
    }

    /// The connection's first frame: the one encoded at start ([`V2::hello_frame`]), unless the
    /// connection's token expires, which it then says when.
    pub fn hello(state: &AppState, grant: &Grant) -> Utf8Bytes {
        match grant.expires.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(at) => Self::hello_frame_expiring(&state.config, Some(at.as_secs())),
            None => state.v2_hello.clone(),
        }
    }

    /// Encodes the hello frame `config` implies.
    pub fn hello_frame(config: &Config) -> Utf8Bytes {
        Self::hello_frame_expiring(config, None)
    }

    fn hello_frame_expiring(config: &Config, expires_at: Option<u64>) -> Utf8Bytes {
        ServerFrame::Hello {
            version: 2,
            ping_interval_ms: u64::try_from(config.ping_interval.as_millis()).unwrap_or(u64::MAX),
            max_subscriptions: config.max_subscriptions,
            latest_keys: if config.latest_topics > 0 {
                config.latest_key_map().pairs().map(|(t, f)| (t.to_owned(), f.to_owned())).collect()
            } else {
                Default::default()
            },
            deltas: match config.deltas {
                Deltas::On => vec![DELTA_FOSSIL.to_owned()],
                Deltas::Off => Vec::new(),
            },
            expires_at,
        }
        .to_json()
        .into()
    }
}

impl Protocol for V2 {
    fn ping(&self) -> Message {
        Message::Text(Utf8Bytes::from_static(r#"{"type":"ping"}"#))
    }

    fn on_text(
        &mut self,
        text: &str,
        reg: &mut Registration,
        state: &AppState,
    ) -> impl Future<Output = Result<Vec<Utf8Bytes>, ErrorFrame>> + Send {
        let frame =
            ClientFrame::parse(text).map_err(|e| ErrorFrame { id: e.id, code: e.code, site: None, message: e.message });
        async move {
            match frame? {
                ClientFrame::Subscribe { id, site, topics, recover, rewind, latest, delta } => {
                    let req = self.check_subscribe(
                        state,
                        reg,
                        id,
                        &site,
                        &topics,
                        recover,
                        rewind,
                        latest,
                        delta.as_deref(),
                    )?;
                    self.subscribe(req, reg, state).await
                }
                ClientFrame::Unsubscribe { id, site } => {
                    reg.remove(&site);
                    Ok(vec![ServerFrame::Unsubscribed { id, site }.to_json().into()])
                }
                ClientFrame::Refresh { id, token } => self.refresh(id, &token, reg, state).await,
                ClientFrame::Ping => Ok(vec![Utf8Bytes::from_static(r#"{"type":"pong"}"#)]),
                ClientFrame::Pong => Ok(Vec::new()),
            }
        }
    }
}
