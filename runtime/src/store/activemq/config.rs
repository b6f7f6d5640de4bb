//! The activemq backend's settings and their (pure) checks.

use std::path::Path;

use serde::Deserialize;

use crate::config::{
    BackendTable, Problems, RetryConfig, TlsFiles, WriteRetry, defaults, read_table, write_retry,
};

pub use crate::store::broker::{UrlSource, default_reconnect};
use crate::store::broker::{validate_tls, validate_url};

/// The store keys only this backend takes.
pub const KEYS: &[&str] = &["url", "url_env", "queue", "prefetch", "tls", "reconnect"];

/// The keys as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActiveMqConfig {
    /// Broker URL, e.g. `stomp://admin:admin@127.0.0.1:61613`.
    #[serde(default)]
    url: Option<String>,
    /// Name of an environment variable holding the broker URL.
    #[serde(default)]
    url_env: Option<String>,
    /// Queue name; default: the store's name.
    #[serde(default)]
    queue: Option<String>,
    /// Messages the broker sends ahead of acks (default 256).
    #[serde(default)]
    prefetch: Option<u16>,
    /// Certificates for a `stomp+ssl://` URL.
    #[serde(default)]
    tls: Option<TlsFiles>,
    /// How the consumer reconnects; default: forever, 1 s doubling to 30 s.
    #[serde(default)]
    reconnect: Option<RetryConfig>,
}

/// What to say of another backend's key on an activemq store.
pub fn instead_of(key: &str) -> Option<&'static str> {
    match key {
        "max_messages" => Some(
            "limit the queue in ActiveMQ instead (a destination policy with a memory or store limit)",
        ),
        "queue_type" => Some("ActiveMQ has one kind of queue; remove it"),
        _ => None,
    }
}

/// What an activemq store is opened with.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveMqSettings {
    pub url: UrlSource,
    pub queue: String,
    pub prefetch: u16,
    /// Certificates for `stomp+ssl://`; read when the store opens.
    pub tls: TlsFiles,
    pub reconnect: WriteRetry,
}

/// What is wrong with a store's STOMP URL, given whether it has a `tls`
/// block: the key at fault and why.
pub fn url_problem(url: &str, has_tls: bool) -> Option<(&'static str, String)> {
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => return Some(("url", format!("is not a URL ({e})"))),
    };
    match parsed.scheme() {
        "stomp+ssl" => {}
        "stomp" if has_tls => {
            return Some((
                "tls",
                "only for a stomp+ssl:// url (TLS); this url is stomp://".to_owned(),
            ));
        }
        "stomp" => {}
        _ => return Some(("url", "is not a stomp:// or stomp+ssl:// URL".to_owned())),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Some(("url", "names no host".to_owned()));
    }
    if parsed.path() != "" && parsed.path() != "/" {
        return Some((
            "url",
            "has a path; name the queue with `queue` instead".to_owned(),
        ));
    }
    None
}

/// What is wrong with an ActiveMQ queue name, if anything.
pub fn queue_problem(queue: &str) -> Option<&'static str> {
    if queue.is_empty() || queue.len() > 255 {
        Some("a queue name has 1 to 255 bytes")
    } else if queue
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '*' | '>' | '/'))
    {
        Some(
            "a queue name has no spaces, `,`, `*`, `>` or `/` (ActiveMQ reads them as composite or wildcard destinations)",
        )
    } else {
        None
    }
}

/// Checks the activemq keys of store `key` (named `name`); relative TLS
/// paths are resolved against `base`.
pub fn validate(
    p: &mut Problems<'_>,
    key: &str,
    name: &str,
    table: &BackendTable,
    base: &Path,
) -> ActiveMqSettings {
    let s: ActiveMqConfig = read_table(p, key, table);
    let has_tls = s.tls.is_some();
    let url = validate_url(
        p,
        key,
        "activemq",
        (&s.url, &s.url_env),
        |k| table.contains_key(k),
        |url| url_problem(url, has_tls),
    );
    let queue = s.queue.clone().unwrap_or_else(|| name.to_owned());
    if let Some(why) = queue_problem(&queue) {
        p.add(format!("{key}.queue"), why);
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
    ActiveMqSettings {
        url,
        queue,
        prefetch,
        tls,
        reconnect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_fields_of_the_serde_shape() {
        assert_eq!(
            crate::config::serde_fields::<super::ActiveMqConfig>(),
            super::KEYS
        );
    }

    #[test]
    fn urls_and_queue_names_are_checked() {
        assert_eq!(url_problem("stomp://u:p@127.0.0.1:61613", false), None);
        assert_eq!(url_problem("stomp+ssl://broker:61614", true), None);
        assert_eq!(url_problem("stomp://broker", true).unwrap().0, "tls");
        assert_eq!(url_problem("amqp://broker", false).unwrap().0, "url");
        assert_eq!(url_problem("stomp://broker/q", false).unwrap().0, "url");
        assert_eq!(url_problem("not a url", false).unwrap().0, "url");
        assert_eq!(queue_problem("orders.eu"), None);
        assert!(queue_problem("a,b").is_some());
        assert!(queue_problem("a b").is_some());
        assert!(queue_problem("").is_some());
    }

    #[test]
    fn a_tenants_store_gets_a_queue_of_its_own_unless_it_names_one() {
        use crate::config::{BackendSettings, BackendTable};
        let settings = |queue: &str| ActiveMqSettings {
            url: UrlSource::Literal("stomp://127.0.0.1:61613".into()),
            queue: queue.into(),
            prefetch: 1,
            tls: TlsFiles::default(),
            reconnect: default_reconnect(),
        };
        let mut unnamed = BackendSettings::ActiveMq(settings("orders"));
        unnamed.scope_to_tenant("acme", &BackendTable::new());
        assert_eq!(unnamed.queue(), Some("acme.orders"));
        let mut written = BackendTable::new();
        written.insert("queue".into(), serde_json::Value::String("shared".into()));
        let mut named = BackendSettings::ActiveMq(settings("shared"));
        named.scope_to_tenant("acme", &written);
        assert_eq!(named.queue(), Some("shared"));
    }
}
