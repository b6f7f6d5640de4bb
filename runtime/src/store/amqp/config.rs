//! The amqp backend's settings and their (pure) checks.

use std::path::Path;

use serde::Deserialize;

use crate::config::{
    BackendTable, Problems, RetryConfig, TlsFiles, WriteRetry, defaults, read_table, write_retry,
};
pub use crate::store::broker::{UrlSource, default_reconnect};
use crate::store::broker::{validate_tls, validate_url};

/// The store keys only this backend takes.
pub const KEYS: &[&str] = &[
    "url",
    "url_env",
    "queue",
    "queue_type",
    "prefetch",
    "tls",
    "reconnect",
];

/// The keys as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AmqpConfig {
    /// Broker URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    #[serde(default)]
    url: Option<String>,
    /// Name of an environment variable holding the broker URL, to keep credentials out of the file.
    #[serde(default)]
    url_env: Option<String>,
    /// Queue name; default: the store's name.
    #[serde(default)]
    queue: Option<String>,
    /// `"quorum"` (default) or `"classic"`.
    #[serde(default)]
    queue_type: Option<QueueType>,
    /// Deliveries the broker sends ahead of acks (default 256).
    #[serde(default)]
    prefetch: Option<u16>,
    /// Certificates for an `amqps://` URL.
    #[serde(default)]
    tls: Option<TlsFiles>,
    /// How the consumer reconnects to the broker; default: forever, 1 s doubling to 30 s.
    #[serde(default)]
    reconnect: Option<RetryConfig>,
}

/// RabbitMQ queue type of an amqp store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated, Raft-based; the default.
    #[default]
    Quorum,
    /// The classic queue.
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// What to say of another backend's key on an amqp store.
pub fn instead_of(key: &str) -> Option<&'static str> {
    (key == "max_messages").then_some("set a max-length policy on the queue instead")
}

/// What an amqp store is opened with.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpSettings {
    pub url: UrlSource,
    pub queue: String,
    pub queue_type: QueueType,
    pub prefetch: u16,
    /// Certificates for `amqps://`; read when the store opens.
    pub tls: TlsFiles,
    /// How the consumer reconnects: the store's `reconnect`, or (the older
    /// place) its processor's.
    pub reconnect: WriteRetry,
}

/// What is wrong with an amqp store's URL, given whether it has a `tls`
/// block: the key at fault (`url` or `tls`) and why. Checked at validation
/// for a literal URL, and when the store opens for one from the environment.
pub fn url_problem(url: &str, has_tls: bool) -> Option<(&'static str, String)> {
    if url.starts_with("amqps://") {
        None
    } else if !url.starts_with("amqp://") {
        Some(("url", "is not an amqp:// or amqps:// URL".to_owned()))
    } else if has_tls {
        Some((
            "tls",
            "only for an amqps:// url (TLS); this url is amqp://".to_owned(),
        ))
    } else {
        None
    }
}

/// Checks the amqp keys of store `key` (named `name`); relative TLS paths
/// are resolved against `base`.
pub fn validate(
    p: &mut Problems<'_>,
    key: &str,
    name: &str,
    table: &BackendTable,
    base: &Path,
) -> AmqpSettings {
    let s: AmqpConfig = read_table(p, key, table);
    let has_tls = s.tls.is_some();
    let url = validate_url(
        p,
        key,
        "amqp",
        (&s.url, &s.url_env),
        |k| table.contains_key(k),
        |url| url_problem(url, has_tls),
    );
    let queue = s.queue.clone().unwrap_or_else(|| name.to_owned());
    if queue.is_empty() || queue.len() > 255 {
        p.add(format!("{key}.queue"), "a queue name has 1 to 255 bytes");
    }
    let prefetch = s.prefetch.unwrap_or(defaults::PREFETCH);
    if prefetch == 0 {
        p.add(format!("{key}.prefetch"), "must be at least 1");
    }
    let tls = validate_tls(p, key, &s.tls, base);
    let reconnect = match &s.reconnect {
        Some(r) => write_retry(p, &format!("{key}.reconnect"), r),
        None => default_reconnect(),
    };
    AmqpSettings {
        url,
        queue,
        queue_type: s.queue_type.unwrap_or_default(),
        prefetch,
        tls,
        reconnect,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_the_fields_of_the_serde_shape() {
        assert_eq!(
            crate::config::serde_fields::<super::AmqpConfig>(),
            super::KEYS
        );
    }
}
