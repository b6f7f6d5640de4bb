//! Typed configuration: the TOML contract of `docs/CONFIG.md`.
//!
//! Loading is two steps. [`Config::parse`] turns text into typed values; serde
//! rejects unknown keys and malformed values, naming the key. [`Config::validate`]
//! is pure: it checks what one key cannot check alone (cross-references between
//! stores, routes and processors, cron expressions, ranges) and returns a
//! [`ValidConfig`], the only form the runtime accepts. Defaults live in
//! [`defaults`], in one place.

mod duration;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use duration::ByteSize;
pub use validate::{
    AmqpSettings, BUILTIN_HANDLERS, MAX_PLUGIN_MEMORY, MIN_RATE, PluginLimits, PluginRef,
    ProcessorSettings, ProcessorTrigger, RouteSettings, ServerSettings, StoreSettings, UrlSource,
    ValidConfig, WriteRetry, amqp_url_problem, plugin_name_problem,
};

/// A configuration error; every variant names where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML for this schema (unknown key, wrong type, bad duration ...).
    #[error("{0}")]
    Parse(String),
    /// The values do not fit together; one line per problem, each `key: reason`.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Invalid>),
}

/// One validation problem: the dotted key and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Default values, in one place so that the docs can be checked against them.
pub mod defaults {
    use std::time::Duration;

    pub const LISTEN: &str = "127.0.0.1:9091";
    pub const ADMIN: &str = "127.0.0.1:9190";
    pub const DATA_DIR: &str = "wharf-data";
    /// Largest request body a route takes unless `max_body` says otherwise.
    pub const MAX_BODY: u64 = 1024 * 1024;
    pub const METHODS: &[&str] = &["POST"];
    /// Messages per trigger, as in the guide.
    pub const BATCH: u32 = 1;
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
    pub const MAX_REDELIVERIES: u32 = 5;
    pub const BACKOFF_FACTOR: f64 = 1.0;
    pub const RESPONSE_HANDLER: &str = "log-response";
    /// Memory one plugin call may use.
    pub const PLUGIN_MEMORY: u64 = 64 << 20;
    /// Wall time of one plugin call.
    pub const PLUGIN_DEADLINE: Duration = Duration::from_secs(1);
    pub const PREFETCH: u16 = 256;
    /// Reconnect: forever, from 1 s doubling up to 30 s.
    pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
    pub const RECONNECT_FACTOR: f64 = 2.0;
    pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen addresses and where durable data lives.
    #[serde(default)]
    pub server: ServerConfig,
    /// Message stores by name.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreConfig>,
    /// HTTP routes that accept messages into a store.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Forwarding processors by name.
    #[serde(default)]
    pub processors: BTreeMap<String, ProcessorConfig>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the ingress listener (routes).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address of the admin API, `/metrics` and `/healthz`.
    #[serde(default = "default_admin")]
    pub admin: String,
    /// Directory for embedded stores; relative paths are relative to the working directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// When set, admin API calls need `Authorization: Bearer <token>` (`/healthz` and `/metrics` stay open).
    #[serde(default)]
    pub admin_token: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            admin: default_admin(),
            data_dir: default_data_dir(),
            admin_token: None,
        }
    }
}

fn default_listen() -> String {
    defaults::LISTEN.to_owned()
}
fn default_admin() -> String {
    defaults::ADMIN.to_owned()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(defaults::DATA_DIR)
}

/// Which implementation keeps a store's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite under `data_dir`, group-committed and fsynced.
    #[default]
    Embedded,
    /// RabbitMQ through lapin: a durable queue, publisher confirms, manual acks.
    Amqp,
}

/// `[stores.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `"embedded"` (default) or `"amqp"`.
    #[serde(default)]
    pub backend: Backend,
    /// How often and how patiently a failed write is tried again before fail-over.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Store that takes a write this one refused after its retries.
    #[serde(default)]
    pub secondary: Option<String>,
    /// Capacity: once this many messages are stored, writes are refused (and fail over).
    #[serde(default)]
    pub max_messages: Option<u64>,
    /// Broker URL (`backend = "amqp"`), e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    #[serde(default)]
    pub url: Option<String>,
    /// Name of an environment variable holding the broker URL, to keep credentials out of the file.
    #[serde(default)]
    pub url_env: Option<String>,
    /// Queue name (`backend = "amqp"`); default: the store's name.
    #[serde(default)]
    pub queue: Option<String>,
    /// `"quorum"` (default) or `"classic"` (`backend = "amqp"`).
    #[serde(default)]
    pub queue_type: Option<QueueType>,
    /// Deliveries the broker sends ahead of acks (`backend = "amqp"`, default 256).
    #[serde(default)]
    pub prefetch: Option<u16>,
    /// Certificates for an `amqps://` URL (`backend = "amqp"`).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

/// PEM files for a TLS (`amqps://`) broker connection. Paths are relative to
/// the config file. Without any, the system's trusted CAs verify the broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate(s) trusted in addition to the system's, e.g. a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain, for brokers that require one (mutual TLS).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1), unencrypted.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
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

/// A retry block: `{ count, interval, backoff_factor, max_wait }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries after the first try; `-1` retries forever.
    pub count: i64,
    /// Wait before the first retry.
    #[serde(with = "duration::serde_duration")]
    pub interval: Duration,
    /// Each wait is the previous one times this (>= 1.0).
    #[serde(default = "default_backoff")]
    pub backoff_factor: f64,
    /// Upper bound of one wait.
    #[serde(default, with = "duration::serde_opt_duration")]
    pub max_wait: Option<Duration>,
}

fn default_backoff() -> f64 {
    defaults::BACKOFF_FACTOR
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact request path, e.g. `/healthcare/appointment`.
    pub path: String,
    /// Accepted methods (default `["POST"]`); others get 405.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Accepted media types; absent: any. Others get 415.
    #[serde(default)]
    pub consumes: Option<Vec<String>>,
    /// Store the message goes to.
    pub store: String,
    /// Largest body (`"1MiB"`, `"512KiB"` or bytes); larger gets 413.
    #[serde(default)]
    pub max_body: Option<ByteSize>,
}

/// What a processor does with a message that failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Stop the processor; the message stays at the head of the store.
    Deactivate,
    /// Move the message to `dead_letter_store`.
    DeadLetter,
    /// Remove the message.
    Drop,
}

/// `[processors.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Store to take messages from; one processor per store.
    pub store: String,
    /// `http://` URL every message is forwarded to.
    pub endpoint: String,
    /// Method of the forwarded request; default: the one the message came with.
    #[serde(default)]
    pub method: Option<String>,
    /// Quartz cron with seconds (`"0/2 * * * * ?"`). Absent, with no `interval`: continuous.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Fixed trigger interval. Absent, with no `schedule`: continuous.
    #[serde(default, with = "duration::serde_opt_duration")]
    pub interval: Option<Duration>,
    /// Messages per trigger (default 1); only with `schedule` or `interval`.
    #[serde(default)]
    pub batch: Option<u32>,
    /// Time limit of one forwarding attempt, response body included.
    #[serde(default, with = "duration::serde_opt_duration")]
    pub timeout: Option<Duration>,
    /// Wait between attempts.
    #[serde(default, with = "duration::serde_opt_duration")]
    pub retry_interval: Option<Duration>,
    /// Each wait is the previous one times this (default 1.0: constant).
    #[serde(default)]
    pub backoff_factor: Option<f64>,
    /// Upper bound of one wait (also caps `Retry-After`).
    #[serde(default, with = "duration::serde_opt_duration")]
    pub max_retry_interval: Option<Duration>,
    /// Statuses that count as failures; absent: every non-2xx.
    #[serde(default)]
    pub retry_statuses: Option<Vec<u16>>,
    /// Retries after the first attempt: 5 means 6 attempts in all.
    #[serde(default)]
    pub max_redeliveries: Option<u32>,
    /// `"deactivate"`, `"dead-letter"` or `"drop"`; default: dead-letter if a store is set, else drop.
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    /// Store that takes messages that failed for good.
    #[serde(default)]
    pub dead_letter_store: Option<String>,
    /// How a processor reconnects to an amqp store's broker; unused for embedded stores.
    #[serde(default)]
    pub reconnect: Option<RetryConfig>,
    /// Response handler: `"log-response"` (built in, default), a deployed
    /// plugin's name, or the path of a `.wasm` component of the
    /// `response-handler` world (relative to the config file).
    #[serde(default)]
    pub response_handler: Option<String>,
    /// A deployed plugin's name or the path of a `.wasm` component of the
    /// `failure-policy` world (relative to the config file).
    #[serde(default)]
    pub failure_policy: Option<String>,
    /// Limits of each plugin call this processor makes.
    #[serde(default)]
    pub plugin_limits: Option<PluginLimitsConfig>,
    /// Throttle: at most this many forwarding attempts per second.
    #[serde(default)]
    pub max_rate: Option<f64>,
}

/// Limits of one plugin call; absent keys take the defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimitsConfig {
    /// Linear memory a call may grow to (`"64MiB"`).
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// Wall time of a call, instantiation included (`"1s"`).
    #[serde(default, with = "duration::serde_opt_duration")]
    pub deadline: Option<Duration>,
    /// Fuel (roughly, WebAssembly instructions) a call may burn; absent: no fuel limit.
    #[serde(default)]
    pub fuel: Option<u64>,
}

impl Config {
    /// Parses TOML text; rejects unknown keys and malformed values.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string().trim_end().to_owned()))
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &std::path::Path) -> Result<ValidConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text)?;
        // A plugin path is relative to the config file, not to where wharf runs.
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        for p in config.processors.values_mut() {
            for plugin in [&mut p.response_handler, &mut p.failure_policy]
                .into_iter()
                .flatten()
            {
                if matches!(PluginRef::of(plugin), PluginRef::Path(_))
                    && std::path::Path::new(plugin.as_str()).is_relative()
                {
                    *plugin = base.join(&*plugin).display().to_string();
                }
            }
        }
        // So are TLS files.
        for tls in config.stores.values_mut().filter_map(|s| s.tls.as_mut()) {
            for file in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file]
                .into_iter()
                .flatten()
            {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        config.validate()
    }
}
