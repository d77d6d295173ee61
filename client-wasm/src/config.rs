//! The client's options, their defaults, and their validation.
//!
//! Checked once when the client is created, so a typo in a URL fails at once with a message naming
//! the option, instead of as an endless reconnect loop. Site codes and topics are not checked
//! here: the npm wrapper (`npm/src/index.js`, `check`) checks every name the app gives, at once and
//! before the module has loaded, and the relay refuses anything else with an error frame; a second
//! copy of the rule here would only add bytes.

#[allow(unused_imports)]
use crate::prelude::*;

use core::time::Duration;

use datastream_protocol::backoff::Backoff;

use crate::wire::push_u64;

/// Which protocol the relay speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Protocol v2: every site over one socket, stream positions, recovery, heartbeats.
    V2,
    /// The original service's protocol: one socket per site, no recovery.
    Legacy,
}

/// Client options. [`Config::new`] gives the defaults for a URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `ws://` or `wss://` URL of the stage endpoint, e.g. `wss://datastream.photonranch.org/dev`.
    pub url: String,
    /// Sites subscribed from the start.
    pub sites: Vec<String>,
    /// The protocol to speak.
    pub protocol: Protocol,
    /// Reconnect delays (full jitter between `min` and a ceiling doubling up to `max`).
    pub backoff: Backoff,
    /// How long past the server's ping interval silence is tolerated before the connection is
    /// declared dead. Covers a late ping plus network jitter.
    pub heartbeat_grace: Duration,
    /// How long opening a socket (and, in v2, getting the server's `hello`) may take before the
    /// attempt counts as failed; browsers alone may wait minutes on a black-holed address.
    pub connect_timeout: Duration,
    /// The token sent when a socket opens (v2: as a subprotocol entry; legacy: `?token=`), and
    /// in a v2 `refresh` when it is replaced. Never logged or put into an error message.
    pub token: Option<String>,
    /// The app gives tokens on demand (its `getToken`): each connection attempt first asks for
    /// one ([`crate::client::Event::TokenNeeded`]) and opens once it has the answer.
    pub fetch_tokens: bool,
    /// Ask for v2 publications as deltas when the relay offers them (the browser applies them).
    pub delta: bool,
}

/// Why options were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `url` is not a WebSocket URL.
    #[error("url must start with ws:// or wss://, got \"{0}\"")]
    Url(String),
    /// A delay option is out of range.
    #[error("{field} must be between {min_ms} and {max_ms} ms, got {got_ms}")]
    Delay {
        /// The option at fault.
        field: &'static str,
        /// Smallest accepted value.
        min_ms: u64,
        /// Largest accepted value.
        max_ms: u64,
        /// The value given.
        got_ms: u64,
    },
}

impl ConfigError {
    /// The same text as `Display`, built without the formatting machinery, which would be a large
    /// share of the WebAssembly bundle. The tests hold the two equal.
    pub fn message(&self) -> String {
        let mut m = String::new();
        match self {
            ConfigError::Url(url) => {
                m.push_str("url must start with ws:// or wss://, got \"");
                m.push_str(url);
                m.push('"');
            }
            ConfigError::Delay { field, min_ms, max_ms, got_ms } => {
                m.push_str(field);
                m.push_str(" must be between ");
                push_u64(&mut m, *min_ms);
                m.push_str(" and ");
                push_u64(&mut m, *max_ms);
                m.push_str(" ms, got ");
                push_u64(&mut m, *got_ms);
            }
        }
        m
    }
}

/// Longest delay option accepted: one day. Anything longer is a unit mistake.
const MAX_DELAY_MS: u64 = 86_400_000;

impl Config {
    /// Defaults for `url`: protocol v2, no sites, reconnect between 0.5 s and 20 s, 10 s heartbeat
    /// grace, 10 s connect timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Config {
            url: url.into(),
            sites: Vec::new(),
            protocol: Protocol::V2,
            backoff: Backoff { min: Duration::from_millis(500), max: Duration::from_secs(20) },
            heartbeat_grace: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            token: None,
            fetch_tokens: false,
            delta: true,
        }
    }

    /// Checks every option; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let lower = self.url.to_ascii_lowercase();
        // A byte scan, here and in `socket_url`: `str::contains(char)` would bring in memchr's
        // word-at-a-time search, ~0.6 KB of WebAssembly for a URL read once.
        if !(lower.starts_with("ws://") || lower.starts_with("wss://")) || self.url.bytes().any(|b| b == b'#') {
            return Err(ConfigError::Url(self.url.clone()));
        }
        check_delay("minReconnectDelay", self.backoff.min, 0)?;
        check_delay("maxReconnectDelay", self.backoff.max, duration_ms(self.backoff.min))?;
        check_delay("heartbeatGrace", self.heartbeat_grace, 0)?;
        check_delay("connectTimeout", self.connect_timeout, 1)?;
        Ok(())
    }

    /// The URL a socket opens: as given for v2; with the site (and the token, if any) in the
    /// query for the legacy protocol, which knows no other way to pass them at connect time.
    pub fn socket_url(&self, legacy_site: Option<&str>) -> String {
        match legacy_site {
            None => self.url.clone(),
            Some(site) => {
                // Site codes are ASCII letters, digits and `_-.:`, all safe in a query string, and
                // so are a JWT's base64url parts and dots.
                let sep = if self.url.bytes().any(|b| b == b'?') { '&' } else { '?' };
                let mut url = String::with_capacity(self.url.len() + site.len() + 6);
                url.push_str(&self.url);
                url.push(sep);
                url.push_str("site=");
                url.push_str(site);
                if let Some(token) = &self.token {
                    url.push_str("&token=");
                    url.push_str(token);
                }
                url
            }
        }
    }
}

/// Milliseconds in `d`, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn check_delay(field: &'static str, value: Duration, min_ms: u64) -> Result<(), ConfigError> {
    let got_ms = duration_ms(value);
    if got_ms < min_ms || got_ms > MAX_DELAY_MS {
        return Err(ConfigError::Delay { field, min_ms, max_ms: MAX_DELAY_MS, got_ms });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::new("wss://datastream.photonranch.org/dev");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.backoff.min, Duration::from_millis(500));
        assert_eq!(c.backoff.max, Duration::from_secs(20));
    }

    #[test]
    fn refuses_bad_options_naming_them() {
        assert!(matches!(Config::new("https://x/dev").validate(), Err(ConfigError::Url(_))));
        assert!(matches!(Config::new("wss://x/dev#a").validate(), Err(ConfigError::Url(_))));
        let mut c = Config::new("ws://127.0.0.1:1/dev");
        c.backoff.max = Duration::from_millis(100);
        let e = c.validate().unwrap_err();
        assert!(matches!(e, ConfigError::Delay { field: "maxReconnectDelay", .. }), "{e}");
    }

    #[test]
    fn message_is_the_display_text() {
        let mut c = Config::new("ws://h/dev");
        let mut errors = vec![Config::new("http://x").validate().unwrap_err()];
        c.connect_timeout = Duration::ZERO;
        errors.push(c.validate().unwrap_err());
        for e in errors {
            assert_eq!(e.message(), e.to_string());
        }
    }

    #[test]
    fn legacy_url_carries_the_site() {
        let c = Config::new("wss://h/dev");
        assert_eq!(c.socket_url(None), "wss://h/dev");
        assert_eq!(c.socket_url(Some("mrc")), "wss://h/dev?site=mrc");
        let mut c = Config::new("wss://h/dev?token=x");
        assert_eq!(c.socket_url(Some("mrc")), "wss://h/dev?token=x&site=mrc");
        c.url = "wss://h/dev".into();
        c.token = Some("a.b.c".into());
        assert_eq!(c.socket_url(Some("mrc")), "wss://h/dev?site=mrc&token=a.b.c");
        assert_eq!(c.socket_url(None), "wss://h/dev", "v2 sends it as a subprotocol entry");
    }
}
