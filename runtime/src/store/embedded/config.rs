//! The embedded backend's settings and their (pure) checks.

use crate::config::{Problems, StoreConfig};

/// The store keys only this backend takes.
pub const KEYS: &[&str] = &["max_messages"];

/// What an embedded store is opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedSettings {
    /// Capacity: once this many messages are stored, writes are refused (and fail over).
    pub max_messages: Option<u64>,
}

/// Checks the embedded keys of store `key`.
pub fn validate(p: &mut Problems<'_>, key: &str, s: &StoreConfig) -> EmbeddedSettings {
    if s.max_messages == Some(0) {
        p.add(format!("{key}.max_messages"), "must be at least 1");
    }
    EmbeddedSettings {
        max_messages: s.max_messages,
    }
}
