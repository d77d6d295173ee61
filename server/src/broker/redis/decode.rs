//! What Redis returns, turned into publications: a channel message, stream entries and latest
//! values. The frames clients get are encoded from these by [`Publication`], the relay's one
//! encoder; nothing here or in the scripts builds a frame.

use std::sync::Arc;

use datastream_protocol::v2::PubFrame;
use serde_json::value::RawValue;

use super::keys::split_latest_field;
use crate::{
    broker::HistoryOptions,
    publication::{Position, Publication},
};

/// One stream entry as Redis returns it: id and field/value pairs.
pub(super) type Entry = (String, Vec<(String, String)>);

/// A publication as a site's channel carries it.
#[derive(Debug)]
pub(super) struct ChannelMessage {
    pub(super) site: Arc<str>,
    pub(super) topic: Arc<str>,
    pub(super) epoch: String,
    pub(super) offset: u64,
    pub(super) data: Box<RawValue>,
}

impl ChannelMessage {
    /// Decodes `payload` received on `site`'s channel: `<epoch>\n<offset>\n<topic>\n<data>`, as
    /// the publish script writes it. A JSON publication frame (what nodes of the previous release
    /// publish) is read too, so a rolling upgrade loses nothing.
    pub(super) fn decode(site: &str, payload: &[u8]) -> Result<ChannelMessage, String> {
        let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
        if text.starts_with('{') {
            let frame: PubFrame = serde_json::from_str(text).map_err(|e| e.to_string())?;
            return Ok(ChannelMessage {
                site: frame.site.as_str().into(),
                topic: frame.topic.as_str().into(),
                epoch: frame.epoch,
                offset: frame.offset,
                data: frame.data.ok_or("a publication frame without data")?,
            });
        }
        let mut parts = text.splitn(4, '\n');
        let (Some(epoch), Some(offset), Some(topic), Some(data)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("fewer than 4 lines".into());
        };
        let offset = offset.parse().map_err(|_| format!("bad offset {offset:?}"))?;
        let data = RawValue::from_string(data.to_owned()).map_err(|e| e.to_string())?;
        Ok(ChannelMessage { site: site.into(), topic: topic.into(), epoch: epoch.to_owned(), offset, data })
    }
}

/// Latest values (`<offset>:<ms>:<data>` by [`latest_field`](super::keys::latest_field)) to
/// publications, oldest first.
pub(super) fn values_to_publications(
    site: &Arc<str>,
    epoch: &str,
    values: Vec<(String, String)>,
) -> Vec<Arc<Publication>> {
    let epoch: Arc<str> = epoch.into();
    let mut out: Vec<_> = values
        .into_iter()
        .filter_map(|(field, value)| {
            let (topic, key) = split_latest_field(&field);
            let mut parts = value.splitn(3, ':');
            let offset = parts.next()?.parse().ok()?;
            let _published_ms = parts.next()?;
            let data = RawValue::from_string(parts.next()?.to_owned()).ok()?;
            let position = Position { epoch: epoch.clone(), offset };
            let publication = Publication::from_parts(site.clone(), topic.into(), data, position);
            Some(Arc::new(publication.with_latest_key(key.map(Arc::from))))
        })
        .collect();
    out.sort_unstable_by_key(|p| p.position.offset);
    out
}

/// Stream entries (newest first, as XREVRANGE returns them) to publications, oldest first, each
/// with its latest key as `options` derive it.
pub(super) fn entries_to_publications(
    site: &Arc<str>,
    epoch: &str,
    entries: Vec<Entry>,
    options: &HistoryOptions,
) -> Vec<Arc<Publication>> {
    let epoch: Arc<str> = epoch.into();
    let mut out: Vec<_> = entries
        .into_iter()
        .filter_map(|(_, fields)| {
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let offset = field("o")?.parse().ok()?;
            let topic: Arc<str> = field("t")?.into();
            let data = RawValue::from_string(field("d")?.to_owned()).ok()?;
            let position = Position { epoch: epoch.clone(), offset };
            let key = options.key_of(&topic, &data);
            Some(Arc::new(Publication::from_parts(site.clone(), topic, data, position).with_latest_key(key)))
        })
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_in_both_forms() {
        let m = ChannelMessage::decode("mrc", b"9f3c\n12\nweather\n{\"t\":\n1}").unwrap();
        assert_eq!(
            (&*m.site, &*m.topic, m.epoch.as_str(), m.offset, m.data.get()),
            ("mrc", "weather", "9f3c", 12, "{\"t\":\n1}")
        );
        let old = br#"{"type":"pub","site":"mrc","topic":"weather","epoch":"9f3c","offset":12,"data":{"t":1}}"#;
        let m = ChannelMessage::decode("mrc", old).unwrap();
        assert_eq!((&*m.topic, m.epoch.as_str(), m.offset, m.data.get()), ("weather", "9f3c", 12, r#"{"t":1}"#));
        for bad in [&b"9f3c\n12\nweather"[..], b"9f3c\nx\nt\n1", b"9f3c\n1\nt\nnot json", b"\xff"] {
            assert!(ChannelMessage::decode("mrc", bad).is_err());
        }
    }
}
