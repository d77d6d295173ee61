//! The original service's protocol: one site at a time, moved with
//! `{"action":"updatesubscribersite","site":…}`, publications as bare `{site, topic, data}` frames,
//! WebSocket-level pings (browsers answer them by themselves).
//!
//! The original never answered a client frame; this relay answers only frames it refuses, with an
//! error frame (`{"type":"error",…}`) that pages switching on `topic` ignore.

use std::{future::Future, sync::Arc};

use axum::extract::ws::{Message, Utf8Bytes};
use datastream_protocol::{
    error::{ErrorCode, ErrorFrame},
    legacy::{LegacyClientFrame, LegacyFrameError},
};

use super::{Protocol, Registration, Start};
use crate::state::AppState;

/// A legacy connection. Its one site lives in the [`Registration`].
#[derive(Debug, Default)]
pub struct Legacy;

impl Protocol for Legacy {
    fn ping(&self) -> Message {
        Message::Ping(Default::default())
    }

    fn on_text(
        &mut self,
        text: &str,
        reg: &mut Registration,
        state: &AppState,
    ) -> impl Future<Output = Result<Vec<Utf8Bytes>, ErrorFrame>> + Send {
        let parsed = LegacyClientFrame::parse(text);
        async move {
            match parsed {
                Ok(LegacyClientFrame::UpdateSubscriberSite { site }) => match state.validator.names.check_site(&site) {
                    Ok(()) if !reg.grant.allows(&site) => {
                        let message = format!("not allowed to subscribe to {site:?}");
                        Err(ErrorFrame::new(ErrorCode::Forbidden, message).about(site))
                    }
                    Ok(()) => {
                        let site: Arc<str> = site.into();
                        if reg.sites().first() != Some(&site) {
                            let old: Vec<_> = reg.sites().to_vec();
                            // Live subscriptions cannot fail.
                            let _ = reg.subscribe(site, None, &state.broker, Start::Live).await;
                            for s in old {
                                reg.remove(&s);
                            }
                        }
                        Ok(Vec::new())
                    }
                    Err(e) => Err(ErrorFrame::new(ErrorCode::InvalidSite, e.to_string())),
                },
                Err(e) => Err(refusal(&e)),
            }
        }
    }
}

fn refusal(e: &LegacyFrameError) -> ErrorFrame {
    let code = match e {
        LegacyFrameError::NotJson(_) => ErrorCode::InvalidJson,
        LegacyFrameError::MissingAction | LegacyFrameError::UnknownAction(_) => ErrorCode::UnknownType,
        LegacyFrameError::MissingSite => ErrorCode::InvalidFrame,
    };
    ErrorFrame::new(code, e.to_string())
}
