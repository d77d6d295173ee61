//! Rules for site and topic names.
//!
//! Names travel in URLs, Redis keys and log lines, so they are restricted to a small, unambiguous
//! set: ASCII letters, digits, `_`, `-`, `.` and `:`, at least one and at most
//! [`NameRules::max_len`] characters. Every real Photon Ranch site (`mrc`, `mrc2`, `saf`, …) and topic
//! (`sitestatus`, `phase_status`, …) fits.

#[allow(unused_imports)]
use crate::prelude::*;

use core::fmt;

/// What kind of name is being checked; used only to word errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A site code such as `mrc`.
    Site,
    /// A topic such as `sitestatus`.
    Topic,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Site => "site",
            NameKind::Topic => "topic",
        })
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("{0} must not be empty")]
    Empty(NameKind),
    /// The name is longer than allowed.
    #[error("{kind} is {len} characters long; the limit is {max}")]
    TooLong {
        /// Site or topic.
        kind: NameKind,
        /// Length of the refused name, in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The name holds a character outside the allowed set.
    #[error("{kind} contains {ch:?}; allowed are ASCII letters, digits, '_', '-', '.' and ':'")]
    BadChar {
        /// Site or topic.
        kind: NameKind,
        /// The first offending character.
        ch: char,
    },
}

/// Limits applied to names. The character set is fixed; the length is configurable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameRules {
    /// Longest accepted name, in characters (all accepted characters are one byte).
    pub max_len: usize,
}

impl Default for NameRules {
    fn default() -> Self {
        Self { max_len: 64 }
    }
}

impl NameRules {
    /// Checks `name` as a site code.
    pub fn check_site(&self, name: &str) -> Result<(), NameError> {
        self.check(NameKind::Site, name)
    }

    /// Checks `name` as a topic.
    pub fn check_topic(&self, name: &str) -> Result<(), NameError> {
        self.check(NameKind::Topic, name)
    }

    fn check(&self, kind: NameKind, name: &str) -> Result<(), NameError> {
        if name.is_empty() {
            return Err(NameError::Empty(kind));
        }
        if let Some(ch) = name.chars().find(|c| !is_name_char(*c)) {
            return Err(NameError::BadChar { kind, ch });
        }
        if name.len() > self.max_len {
            return Err(NameError::TooLong { kind, len: name.len(), max: self.max_len });
        }
        Ok(())
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_names_pass() {
        let rules = NameRules::default();
        for site in ["mrc", "mrc2", "saf", "sro", "tst", "eco-1", "a.b:c_d"] {
            assert_eq!(rules.check_site(site), Ok(()), "{site}");
        }
        for topic in ["sitestatus", "phase_status", "userstatus", "jobs", "imagedata"] {
            assert_eq!(rules.check_topic(topic), Ok(()), "{topic}");
        }
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        let rules = NameRules { max_len: 4 };
        assert_eq!(rules.check_site(""), Err(NameError::Empty(NameKind::Site)));
        assert_eq!(rules.check_topic("abcde"), Err(NameError::TooLong { kind: NameKind::Topic, len: 5, max: 4 }));
        assert_eq!(rules.check_site("a b"), Err(NameError::BadChar { kind: NameKind::Site, ch: ' ' }));
        assert_eq!(rules.check_site("é"), Err(NameError::BadChar { kind: NameKind::Site, ch: 'é' }));
        let msg = rules.check_site("a/b").unwrap_err().to_string();
        assert!(msg.contains("site contains '/'"), "{msg}");
    }
}
