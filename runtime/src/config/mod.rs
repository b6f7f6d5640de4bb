//! Typed configuration: the TOML contract of the README's configuration reference.
//!
//! Loading is two steps. [`Config::parse`] (a file) and [`Document::parse`]
//! (a pipeline document: the file without `[server]`, TOML or JSON) turn
//! text into typed values; serde rejects unknown keys and malformed values,
//! naming the key. A store's backend keys are the exception: they are kept as
//! written and read by the backend's own `config.rs` at validation, each
//! malformed or misplaced one named with its key. Validation is pure: it checks what one key cannot check
//! alone (cross-references between stores, routes and processors, cron
//! expressions, ranges) and returns a [`ValidConfig`] / [`ValidPipeline`],
//! the only forms the runtime accepts. `settings.rs` holds those validated
//! types, `validate.rs` the checks. Defaults live in [`defaults`], in one
//! place.

mod duration;
mod settings;
mod tenant;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::store::amqp::config::{AmqpSettings, QueueType, UrlSource};
pub use crate::store::embedded::config::EmbeddedSettings;
pub use crate::store::{Backend, BackendSettings};
pub use duration::{ByteSize, parse_duration};
pub use settings::{
    BUILTIN_HANDLERS, EndpointTls, MAX_PLUGIN_MEMORY, MIN_RATE, OrderKey, PluginLimits, PluginRef,
    ProcessorSettings, ProcessorTrigger, RouteSettings, ServerSettings, Signing, StoreSettings,
    ValidConfig, ValidPipeline, WriteRetry, plugin_name_problem,
};
pub use tenant::{
    DEFAULT_TENANT, Quotas, TenantSpec, tenant_name_problem, validate_quotas, validate_spec,
};
#[cfg(test)]
pub(crate) use validate::serde_fields;
pub use validate::{BackendTable, Problems, proxy_problem, read_table, write_retry};

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
    /// Most messages a processor delivers at once.
    pub const MAX_CONCURRENCY: u32 = 256;
    /// The header an hmac-sha256 signature goes in.
    pub const SIGNATURE_HEADER: &str = "x-signature";
    /// Reconnect: forever, from 1 s doubling up to 30 s.
    pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
    pub const RECONNECT_FACTOR: f64 = 2.0;
    pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
}

/// The serde shape of the file: `[server]` beside the pipeline's tables.
/// (serde's `flatten` cannot be combined with `deny_unknown_fields`, so the
/// pipeline's three tables are named here and in [`PipelineConfig`].)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLayout {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    stores: BTreeMap<String, StoreConfig>,
    #[serde(default)]
    routes: Vec<RouteConfig>,
    #[serde(default)]
    processors: BTreeMap<String, ProcessorConfig>,
    /// `[tenants.NAME]`: each its spec's keys beside its pipeline's tables.
    #[serde(default)]
    tenants: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

/// A tenant the file declares: how it is reached, and its first revision.
#[derive(Debug, Clone)]
pub struct TenantDeclaration {
    pub spec: TenantSpec,
    pub pipeline: Document,
}

/// The whole file: `[server]` and the pipeline document it starts with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen addresses and where durable data lives.
    pub server: ServerConfig,
    /// Everything but `[server]` and `[tenants.*]`: the first revision of
    /// the `default` tenant's pipeline.
    pub pipeline: Document,
    /// The other tenants the file declares, by name.
    pub tenants: BTreeMap<String, TenantDeclaration>,
    /// The directory relative plugin and TLS paths are resolved against:
    /// the config file's own.
    pub base: PathBuf,
    /// The file it was read from (`wharf reload` and SIGHUP read it again).
    pub file: Option<PathBuf>,
}

/// A pipeline document: the config without `[server]`, in TOML or JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
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

/// The text formats a pipeline document may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// JSON if the text starts like a JSON object, else TOML.
    pub fn sniff(text: &str) -> Format {
        if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Toml
        }
    }
}

/// A pipeline document, typed and as written. The written form (as JSON)
/// is what revisions keep and what diffs compare, key by key.
#[derive(Debug, Clone)]
pub struct Document {
    pub config: PipelineConfig,
    /// The document as written, as a JSON object with `stores`, `routes`
    /// and `processors` (absent tables are empty).
    pub value: serde_json::Value,
}

fn parse_error(e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Parse(e.to_string().trim_end().to_owned())
}

impl Document {
    /// Parses a document; rejects unknown keys, malformed values and `[server]`.
    pub fn parse(text: &str, format: Format) -> Result<Document, ConfigError> {
        let value: serde_json::Value = match format {
            Format::Toml => {
                let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
                serde_json::to_value(table).map_err(parse_error)?
            }
            Format::Json => serde_json::from_str(text).map_err(parse_error)?,
        };
        if value.get("server").is_some() {
            return Err(ConfigError::Invalid(vec![Invalid {
                key: "server".into(),
                reason: "is not part of a pipeline document: server settings are read from the config file at start".into(),
            }]));
        }
        // Parsed from the text itself so that errors point at the line.
        let config: PipelineConfig = match format {
            Format::Toml => toml::from_str(text).map_err(parse_error)?,
            Format::Json => serde_json::from_str(text).map_err(parse_error)?,
        };
        Ok(Document::new(config, value))
    }

    /// A document kept as JSON (a stored revision).
    pub fn from_value(value: serde_json::Value) -> Result<Document, ConfigError> {
        let config: PipelineConfig = serde_json::from_value(value.clone()).map_err(parse_error)?;
        Ok(Document::new(config, value))
    }

    fn new(config: PipelineConfig, mut value: serde_json::Value) -> Document {
        if !value.is_object() {
            value = serde_json::json!({});
        }
        for (table, empty) in [
            ("stores", serde_json::json!({})),
            ("routes", serde_json::json!([])),
            ("processors", serde_json::json!({})),
        ] {
            if value.get(table).is_none() {
                value[table] = empty;
            }
        }
        Document { config, value }
    }

    /// The empty pipeline.
    pub fn empty() -> Document {
        Document::new(
            PipelineConfig {
                stores: BTreeMap::new(),
                routes: Vec::new(),
                processors: BTreeMap::new(),
            },
            serde_json::json!({}),
        )
    }

    /// SHA-256 of the document's canonical JSON: equal documents, equal digests.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let canonical = self.value.to_string();
        sha2::Sha256::digest(canonical.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Checks the document (no I/O); relative plugin and TLS paths are
    /// resolved against `base`.
    pub fn validate(&self, base: &Path) -> Result<ValidPipeline, ConfigError> {
        let mut problems = Vec::new();
        let pipeline = self.config.validate(base, &mut problems);
        if problems.is_empty() {
            Ok(pipeline)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
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
    /// Lets the admin API listen off loopback without `admin_token`: anyone
    /// who reaches it can change every tenant. Off by default.
    #[serde(default)]
    pub allow_unauthenticated_admin: bool,
    /// Every tenant's quotas (but `default`'s) where it sets none of its own.
    #[serde(default)]
    pub quotas: Quotas,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            admin: default_admin(),
            data_dir: default_data_dir(),
            admin_token: None,
            allow_unauthenticated_admin: false,
            quotas: Quotas::default(),
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

/// `[stores.NAME]`: the keys every store has, and its backend's own.
/// (`deny_unknown_fields` cannot go with `flatten`; the backend's keys are
/// checked by its own `config` module, every unknown or misplaced key named.)
#[derive(Debug, Clone, Deserialize)]
pub struct StoreConfig {
    /// `"embedded"` (default), `"amqp"`, ...: the folder under `store/`.
    #[serde(default)]
    pub backend: Backend,
    /// How often and how patiently a failed write is tried again before fail-over.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Store that takes a write this one refused after its retries.
    #[serde(default)]
    pub secondary: Option<String>,
    /// The backend's own keys, as written (e.g. `max_messages`, `url`).
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl StoreConfig {
    /// The keys every store takes, whatever its backend.
    pub const KEYS: &[&str] = &["backend", "retry", "secondary"];
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

impl TlsFiles {
    /// Joins relative paths to `base` (the config file's directory).
    pub fn resolve(&mut self, base: &Path) {
        for file in [&mut self.ca_file, &mut self.cert_file, &mut self.key_file]
            .into_iter()
            .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
    }
}

/// `processors.NAME.tls`: PEM files for an `https://` endpoint, relative to
/// the config file, and the name to verify instead of the URL's host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EndpointTlsConfig {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Sent as SNI and checked against the certificate; default: the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// How forwarded requests are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SigningScheme {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature` (standardwebhooks.com).
    StandardWebhooks,
    /// One header holding the hex HMAC-SHA256 of the body.
    HmacSha256,
}

/// `processors.NAME.signing`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    pub scheme: SigningScheme,
    /// The environment variable holding the secret(s), read at start:
    /// `whsec_...` secrets separated by spaces for standard-webhooks (each
    /// signs, for rotation), one secret for hmac-sha256.
    pub secret_env: String,
    /// hmac-sha256 only: the header (default `x-signature`).
    #[serde(default)]
    pub header: Option<String>,
    /// hmac-sha256 only: text before the hex digest, e.g. `"sha256="`.
    #[serde(default)]
    pub prefix: Option<String>,
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
    /// Who may post: absent, anyone who reaches the listener.
    #[serde(default)]
    pub auth: Option<RouteAuth>,
}

/// `auth` of a route: requests need `Authorization: Bearer` with the value
/// of `$bearer_env` (read at each apply), or with one of the tenant's live
/// `ingress` tokens (`tenant_tokens = true`); one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuth {
    #[serde(default)]
    pub bearer_env: Option<String>,
    #[serde(default)]
    pub tenant_tokens: bool,
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
    /// `http://` or `https://` URL every message is forwarded to.
    pub endpoint: String,
    /// TLS of an `https://` endpoint: a private CA, a client certificate
    /// (mutual TLS), the name its certificate must carry.
    #[serde(default)]
    pub tls: Option<EndpointTlsConfig>,
    /// Outbound proxy (`http://[user:password@]host:port`); absent: the
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` environment.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Signs each forwarded request (Standard Webhooks, or a plain HMAC).
    #[serde(default)]
    pub signing: Option<SigningConfig>,
    /// Per-key order: `"header:NAME"` or `"json:/json/pointer"`; messages
    /// with the same key are delivered one at a time, in store order.
    #[serde(default)]
    pub order_key: Option<String>,
    /// Messages delivered at once (default 1: strict store order).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Deactivate the processor after failing this long without a success.
    #[serde(default, with = "duration::serde_opt_duration")]
    pub disable_after: Option<Duration>,
    /// A `410 Gone` from the endpoint deactivates the processor at once.
    #[serde(default)]
    pub deactivate_on_gone: Option<bool>,
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
    /// How the consumer of this processor's amqp store reconnects: the older
    /// place of the store's `reconnect` (still accepted; not both).
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
    /// Parses the TOML text of a config file; rejects unknown keys and
    /// malformed values. Relative paths are relative to the working directory.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let layout: FileLayout = toml::from_str(text).map_err(parse_error)?;
        let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        table.remove("server");
        table.remove("tenants");
        let value = serde_json::to_value(table).map_err(parse_error)?;
        let pipeline = PipelineConfig {
            stores: layout.stores,
            routes: layout.routes,
            processors: layout.processors,
        };
        let mut tenants = BTreeMap::new();
        for (name, mut table) in layout.tenants {
            let mut spec = serde_json::Map::new();
            for key in TenantSpec::KEYS {
                if let Some(value) = table.remove(*key) {
                    spec.insert((*key).to_owned(), value);
                }
            }
            let in_tenant = |e: String| ConfigError::Parse(format!("tenants.{name}: {e}"));
            let spec: TenantSpec = serde_json::from_value(serde_json::Value::Object(spec))
                .map_err(|e| in_tenant(e.to_string()))?;
            let pipeline = Document::from_value(serde_json::Value::Object(table))
                .map_err(|e| in_tenant(e.to_string()))?;
            tenants.insert(name, TenantDeclaration { spec, pipeline });
        }
        Ok(Config {
            server: layout.server,
            pipeline: Document::new(pipeline, value),
            tenants,
            base: PathBuf::from("."),
            file: None,
        })
    }

    /// Reads, parses and validates a file. Plugin and TLS paths are
    /// relative to the file, not to where wharf runs.
    pub fn load(path: &Path) -> Result<ValidConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text)?;
        config.base = path.parent().unwrap_or(Path::new(".")).to_owned();
        config.file = Some(path.to_owned());
        config.validate()
    }
}

impl PipelineConfig {
    /// A copy whose relative plugin paths are joined to `base`.
    fn resolved(&self, base: &Path) -> PipelineConfig {
        let mut config = self.clone();
        for p in config.processors.values_mut() {
            for plugin in [&mut p.response_handler, &mut p.failure_policy]
                .into_iter()
                .flatten()
            {
                if matches!(PluginRef::of(plugin), PluginRef::Path(_))
                    && Path::new(plugin.as_str()).is_relative()
                {
                    *plugin = base.join(&*plugin).display().to_string();
                }
            }
            if let Some(tls) = &mut p.tls {
                for file in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file]
                    .into_iter()
                    .flatten()
                {
                    if file.is_relative() {
                        *file = base.join(&*file);
                    }
                }
            }
        }
        config
    }
}
