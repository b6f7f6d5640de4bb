//! What the broker backends (amqp, activemq) share: where the URL comes
//! from, the `tls` block's checks, the default reconnect, and what their
//! consumers do after a lost connection.

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

/// What a broker store's consumer does after its `failures`-th failed or
/// lost connection: `Ok` once the `reconnect` policy's wait is over (try
/// again), `Err(Some(reason))` when the policy's count is spent (give up),
/// `Err(None)` when `stop` was cancelled during the wait.
pub async fn before_reconnect(
    store: &str,
    reconnect: &WriteRetry,
    failures: u32,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), Option<String>> {
    if reconnect.retries.is_some_and(|n| u64::from(failures) > n) {
        let reason = format!("gave up reconnecting after {failures} attempts");
        tracing::error!(%store, "{reason}");
        return Err(Some(reason));
    }
    tokio::select! {
        _ = stop.cancelled() => Err(None),
        _ = tokio::time::sleep(reconnect.backoff.delay(failures)) => Ok(()),
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
