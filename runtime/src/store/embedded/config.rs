//! The embedded backend's settings and their (pure) checks.

use serde::Deserialize;

use crate::config::{BackendTable, Problems, read_table};

/// The store keys only this backend takes.
pub const KEYS: &[&str] = &["max_messages"];

/// The keys as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddedConfig {
    /// Capacity: once this many messages are stored, writes are refused (and fail over).
    #[serde(default)]
    max_messages: Option<u64>,
}

/// What an embedded store is opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedSettings {
    /// Capacity: once this many messages are stored, writes are refused (and fail over).
    pub max_messages: Option<u64>,
}

/// Checks the embedded keys of store `key`.
pub fn validate(p: &mut Problems<'_>, key: &str, table: &BackendTable) -> EmbeddedSettings {
    let s: EmbeddedConfig = read_table(p, key, table);
    if s.max_messages == Some(0) {
        p.add(format!("{key}.max_messages"), "must be at least 1");
    }
    EmbeddedSettings {
        max_messages: s.max_messages,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_the_fields_of_the_serde_shape() {
        assert_eq!(
            crate::config::serde_fields::<super::EmbeddedConfig>(),
            super::KEYS
        );
    }
}
