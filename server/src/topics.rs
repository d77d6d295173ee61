//! Topic filters: which topics a subscription (or a latest-values read) names, checked once.
//!
//! Shared by the session (a subscribe's `topics` and `latest` lists), the HTTP latest-values
//! endpoint (`?topic=`), the hub (which subscriber wants a publication) and the broker (which
//! history or latest entries a filter selects).

use std::sync::Arc;

use datastream_protocol::{NameError, NameRules};

/// The topics a subscription wants.
pub type TopicFilter = Arc<[Arc<str>]>;

/// Whether a subscription with filter `topics` wants `topic`.
pub fn wants(topics: Option<&[Arc<str>]>, topic: &str) -> bool {
    topics.is_none_or(|t| t.iter().any(|x| &**x == topic))
}

/// Why a list of topics (a subscribe's `topics` or `latest`, a `?topic=` query) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicsError {
    /// More distinct names than the limit.
    TooMany(usize),
    /// A name breaking the rules.
    Invalid(NameError),
}

/// `topics` without repeats (which count once), sorted, each checked against the name rules. The
/// limit is checked before any name, so a huge list costs little.
pub fn distinct_topics<'a>(
    names: &NameRules,
    max: usize,
    topics: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<&'a str>, TopicsError> {
    let mut unique: Vec<&str> = topics.into_iter().collect();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() > max {
        return Err(TopicsError::TooMany(max));
    }
    for topic in &unique {
        names.check_topic(topic).map_err(TopicsError::Invalid)?;
    }
    Ok(unique)
}
