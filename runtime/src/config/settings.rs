//! The validated forms of the config: what the runtime takes. Built only by
//! the checks in `validate.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{BackendSettings, Document, OnFailure, defaults};
use crate::retry::Backoff;

/// A configuration whose values fit together; built only by [`Config::validate`](super::Config::validate).
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub server: ServerSettings,
    /// The pipeline the file describes, validated ...
    pub pipeline: ValidPipeline,
    /// ... and as written: the file's revision of the pipeline.
    pub document: Document,
    /// The other tenants the file declares (each document validated).
    pub tenants: BTreeMap<String, super::TenantDeclaration>,
    /// What relative paths in pipeline documents are relative to.
    pub base: PathBuf,
    /// The config file, when read from one.
    pub file: Option<PathBuf>,
}

/// A pipeline whose values fit together; built only by [`Document::validate`].
#[derive(Debug, Clone, Default)]
pub struct ValidPipeline {
    pub stores: BTreeMap<String, StoreSettings>,
    pub routes: Vec<RouteSettings>,
    pub processors: BTreeMap<String, ProcessorSettings>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token: Option<String>,
    /// The admin API off loopback without a token, asked for explicitly.
    pub allow_unauthenticated_admin: bool,
    /// Default quotas of tenants (but `default`).
    pub quotas: super::Quotas,
}

/// How a store write is retried; `attempts: None` retries forever.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRetry {
    pub retries: Option<u64>,
    pub backoff: Backoff,
}

impl WriteRetry {
    /// No retries: the first failure fails over.
    pub const NONE: WriteRetry = WriteRetry {
        retries: Some(0),
        backoff: Backoff {
            initial: Duration::ZERO,
            factor: 1.0,
            max: None,
        },
    };
}

/// A store: what every backend has (the write retry and the fail-over),
/// and its backend's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    pub name: String,
    pub retry: WriteRetry,
    pub secondary: Option<String>,
    pub backend: BackendSettings,
}

#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub path: String,
    pub methods: Vec<http::Method>,
    /// Lower-case media types; `None` accepts any.
    pub consumes: Option<Vec<String>>,
    pub store: String,
    pub max_body: u64,
    /// The environment variable holding the bearer token requests need.
    pub bearer_env: Option<String>,
    /// Whether requests need one of the tenant's `ingress` tokens instead.
    pub tenant_tokens: bool,
}

/// What starts a round of forwarding.
#[derive(Debug, Clone)]
pub enum ProcessorTrigger {
    /// Quartz cron with seconds; the text is kept for display.
    Cron(Box<cron::Schedule>, String),
    /// A fixed interval.
    Interval(Duration),
    /// Forward each message as soon as it is stored.
    Continuous,
}

#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    pub name: String,
    pub store: String,
    pub endpoint: http::Uri,
    pub method: Option<http::Method>,
    pub trigger: ProcessorTrigger,
    pub batch: usize,
    pub timeout: Duration,
    pub retry: Backoff,
    pub max_redeliveries: u32,
    pub retry_statuses: Option<Vec<u16>>,
    pub on_failure: OnFailure,
    pub dead_letter_store: Option<String>,
    /// Built-in name, deployed plugin name or `.wasm` path (see [`PluginRef`]).
    pub response_handler: String,
    /// Deployed plugin name or `.wasm` path of a failure policy, if any.
    pub failure_policy: Option<String>,
    pub plugin_limits: PluginLimits,
    pub max_rate: Option<f64>,
    /// The `tls` block of an `https://` endpoint (files resolved).
    pub tls: EndpointTls,
    /// The configured proxy; `None`: the environment's.
    pub proxy: Option<http::Uri>,
    pub signing: Option<Signing>,
    pub order_key: Option<OrderKey>,
    /// Messages delivered at once, at least 1.
    pub concurrency: usize,
    pub disable_after: Option<Duration>,
    pub deactivate_on_gone: bool,
}

/// TLS settings of an `https://` endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointTls {
    pub files: super::TlsFiles,
    pub server_name: Option<String>,
}

/// How a processor signs what it forwards; the secret is read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    pub scheme: super::SigningScheme,
    pub secret_env: String,
    /// hmac-sha256: the header and the text before the digest.
    pub header: http::HeaderName,
    pub prefix: String,
}

/// Where a message's ordering key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKey {
    /// The first value of this request header.
    Header(http::HeaderName),
    /// The value at this JSON pointer in the body (strings as they are,
    /// other values as JSON text).
    Json(String),
}

impl std::fmt::Display for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderKey::Header(name) => write!(f, "header:{name}"),
            OrderKey::Json(pointer) => write!(f, "json:{pointer}"),
        }
    }
}

impl OrderKey {
    /// `header:NAME` or `json:/pointer`.
    pub fn parse(text: &str) -> Result<OrderKey, &'static str> {
        if let Some(name) = text.strip_prefix("header:") {
            return http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(OrderKey::Header)
                .map_err(|_| "not a header name after `header:`");
        }
        if let Some(pointer) = text.strip_prefix("json:") {
            if pointer.starts_with('/') {
                return Ok(OrderKey::Json(pointer.to_owned()));
            }
            return Err("a JSON pointer after `json:` starts with '/', e.g. json:/customer/id");
        }
        Err("use header:NAME (a request header) or json:/pointer (a value in the JSON body)")
    }

    /// The key of `message`; `None` when it has none (no such header, a
    /// body that is not JSON or has no value there).
    pub fn of(&self, message: &crate::store::Message) -> Option<String> {
        match self {
            OrderKey::Header(name) => message
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            OrderKey::Json(pointer) => {
                let body: serde_json::Value = serde_json::from_slice(&message.body).ok()?;
                match body.pointer(pointer)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                }
            }
        }
    }
}

/// The slowest throttle: one message every 1000 s.
pub const MIN_RATE: f64 = 0.001;

/// Built-in response handlers, by the name a processor's `response_handler` uses.
pub const BUILTIN_HANDLERS: &[&str] = &["log-response"];

/// The most memory a plugin call may be given (the instance pool's slot size).
pub const MAX_PLUGIN_MEMORY: u64 = 256 << 20;
/// Shortest plugin deadline: the epoch ticks every 10 ms.
pub(super) const MIN_PLUGIN_DEADLINE: Duration = Duration::from_millis(10);

/// Limits of one plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Linear memory a call may grow to, in bytes.
    pub memory: usize,
    /// Wall time of a call, instantiation included.
    pub deadline: Duration,
    /// Fuel a call may burn; `None`: unlimited.
    pub fuel: Option<u64>,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory: defaults::PLUGIN_MEMORY as usize,
            deadline: defaults::PLUGIN_DEADLINE,
            fuel: None,
        }
    }
}

/// What a `response_handler` or `failure_policy` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginRef<'a> {
    /// A handler compiled into Wharf (`log-response`).
    Builtin(&'a str),
    /// A component file, named by a path ending in `.wasm`.
    Path(&'a str),
    /// A plugin deployed through the admin API, by name.
    Deployed(&'a str),
}

impl<'a> PluginRef<'a> {
    pub fn of(value: &'a str) -> PluginRef<'a> {
        if BUILTIN_HANDLERS.contains(&value) {
            PluginRef::Builtin(value)
        } else if value.ends_with(".wasm") || value.contains('/') {
            PluginRef::Path(value)
        } else {
            PluginRef::Deployed(value)
        }
    }
}

/// Why `name` cannot name a deployed plugin, if it cannot.
pub fn plugin_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (!ok).then(|| {
        format!("{name:?} is not a plugin name: 1 to 64 letters, digits, '-' or '_', starting with a letter or digit")
    })
}
