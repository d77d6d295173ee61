//! The key schema: the name of every Redis key and channel the broker uses, and how a latest
//! value's hash field is made. Per site, with `{site}` as the cluster hash tag so one script
//! touches one slot:
//!
//! | key | type | holds | bounded by |
//! |---|---|---|---|
//! | `<prefix>:{site}:meta` | hash | the site's `epoch` and last `offset` | expires `max(history TTL, latest TTL)` after the site's last publication (a site only read: after the history TTL) |
//! | `<prefix>:{site}:stream` | stream | the history: `o` offset, `t` topic, `d` data | `MAXLEN` history size, trimmed by age (`MINID`) on every publish, expires after the history TTL without one |
//! | `<prefix>:{site}:dedupe:<key>` | string | marker of an idempotency key | `SET NX PX`: expires after the dedupe window |
//! | `<prefix>:{site}:latest` | hash | [`latest_field`] → `<offset>:<unix ms>:<data>` | the latest-values limit of fields; expires after the latest TTL without a publish |
//! | `<prefix>:{site}:latest:order` | sorted set | the same fields scored by that offset, to drop the least recently published past the limit | as `latest` |
//! | channel `<prefix>:{site}:pub` | pub/sub | every publication: `<epoch>\n<offset>\n<topic>\n<data>` | – |

use std::borrow::Cow;

/// Builds the names of one deployment's keys (its prefix).
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.to_owned() }
    }

    fn key(&self, site: &str, what: &str) -> String {
        format!("{}:{{{site}}}:{what}", self.prefix)
    }

    /// The site's position.
    pub(super) fn meta(&self, site: &str) -> String {
        self.key(site, "meta")
    }

    /// The site's history stream.
    pub(super) fn stream(&self, site: &str) -> String {
        self.key(site, "stream")
    }

    /// The marker of idempotency key `key` on `site` (keys are per site).
    pub(super) fn dedupe(&self, site: &str, key: &str) -> String {
        self.key(site, &format!("dedupe:{key}"))
    }

    /// The site's latest values.
    pub(super) fn latest(&self, site: &str) -> String {
        self.key(site, "latest")
    }

    /// The order in which the site's latest values were published.
    pub(super) fn latest_order(&self, site: &str) -> String {
        self.key(site, "latest:order")
    }

    /// The site's pub/sub channel.
    pub(super) fn channel(&self, site: &str) -> String {
        self.key(site, "pub")
    }

    /// The site a channel of [`Keys::channel`] belongs to.
    pub(super) fn site_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?.strip_suffix("}:pub")
    }
}

/// The field of the latest hash a publication's latest value is kept under: its topic, or
/// `<topic>\n<key>` for a topic of [`LatestKeys`](crate::publication::LatestKeys). A topic
/// cannot hold a newline, so the field names one topic's key unambiguously.
pub(super) fn latest_field<'a>(topic: &'a str, key: Option<&str>) -> Cow<'a, str> {
    match key {
        Some(key) => Cow::Owned(format!("{topic}\n{key}")),
        None => Cow::Borrowed(topic),
    }
}

/// A field of [`latest_field`] back to its topic and key.
pub(super) fn split_latest_field(field: &str) -> (&str, Option<&str>) {
    match field.split_once('\n') {
        Some((topic, key)) => (topic, Some(key)),
        None => (field, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_their_inverses() {
        let keys = Keys::new("ds");
        assert_eq!(keys.meta("mrc"), "ds:{mrc}:meta");
        assert_eq!(keys.dedupe("mrc", "sqs:1"), "ds:{mrc}:dedupe:sqs:1");
        assert_eq!(keys.site_of_channel(&keys.channel("a.b:c")), Some("a.b:c"));
        assert_eq!(keys.site_of_channel("other:{mrc}:pub"), None);
        assert_eq!(split_latest_field(&latest_field("sitestatus", Some("weather"))), ("sitestatus", Some("weather")));
        assert_eq!(split_latest_field(&latest_field("jobs", None)), ("jobs", None));
    }
}
