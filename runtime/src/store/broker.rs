//! What the broker backends (amqp, activemq) share in their config: where
//! the URL comes from, the `tls` block's checks and the default reconnect.

use std::path::Path;

use crate::config::{Problems, TlsFiles, WriteRetry, defaults};
use crate::retry::Backoff;

/// Where a broker store's URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    Literal(String),
    /// The environment variable of that name, read when the store opens.
    Env(String),
}

impl UrlSource {
    /// The URL: the literal, or the variable's value now.
    pub fn read(&self, store: &str) -> Result<String, super::StoreError> {
        match self {
            UrlSource::Literal(url) => Ok(url.clone()),
            UrlSource::Env(var) => std::env::var(var).map_err(|_| super::StoreError::Permanent {
                store: store.to_owned(),
                reason: format!("url_env: environment variable {var} is not set"),
            }),
        }
    }
}

/// The consumer's reconnect policy when none is set: forever, 1 s doubling to 30 s.
pub fn default_reconnect() -> WriteRetry {
    WriteRetry {
        retries: None,
        backoff: Backoff {
            initial: defaults::RECONNECT_INTERVAL,
            factor: defaults::RECONNECT_FACTOR,
            max: Some(defaults::RECONNECT_MAX),
        },
    }
}

/// Checks `url` / `url_env` of store `key` of backend `backend`; `problem`
/// says what is wrong with a literal URL (the key at fault and why).
pub fn validate_url(
    p: &mut Problems<'_>,
    key: &str,
    backend: &str,
    (url, url_env): (&Option<String>, &Option<String>),
    written: impl Fn(&str) -> bool,
    problem: impl Fn(&str) -> Option<(&'static str, String)>,
) -> UrlSource {
    match (url, url_env) {
        (Some(url), None) => {
            match problem(url) {
                Some(("url", why)) => p.add(format!("{key}.url"), format!("{url:?} {why}")),
                Some((field, why)) => p.add(format!("{key}.{field}"), why),
                None => {}
            }
            UrlSource::Literal(url.clone())
        }
        (None, Some(var)) => {
            if var.is_empty() {
                p.add(
                    format!("{key}.url_env"),
                    "must name an environment variable",
                );
            }
            UrlSource::Env(var.clone())
        }
        (Some(_), Some(_)) => {
            p.add(key, "set `url` or `url_env`, not both");
            UrlSource::Env(String::new())
        }
        (None, None) => {
            // A malformed `url` is named already.
            if !written("url") && !written("url_env") {
                p.add(
                    key,
                    format!("backend = \"{backend}\" needs `url` (or `url_env`)"),
                );
            }
            UrlSource::Env(String::new())
        }
    }
}

/// The `tls` block as written, its paths resolved against `base`, checked.
pub fn validate_tls(
    p: &mut Problems<'_>,
    key: &str,
    tls: &Option<TlsFiles>,
    base: &Path,
) -> TlsFiles {
    let mut tls = tls.clone().unwrap_or_default();
    tls.resolve(base);
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        p.add(
            format!("{key}.tls"),
            "cert_file and key_file go together: a client certificate and its key",
        );
    }
    tls
}
