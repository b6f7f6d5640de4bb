//! The pure half of loading: cross-checks that turn a [`Config`] into a [`ValidConfig`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::{
    Backend, Config, ConfigError, Invalid, OnFailure, QueueType, RetryConfig, TlsFiles, defaults,
};
use crate::retry::Backoff;

/// A configuration whose values fit together; built only by [`Config::validate`].
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub server: ServerSettings,
    pub stores: BTreeMap<String, StoreSettings>,
    pub routes: Vec<RouteSettings>,
    pub processors: BTreeMap<String, ProcessorSettings>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token: Option<String>,
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

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub name: String,
    pub backend: Backend,
    pub retry: WriteRetry,
    pub secondary: Option<String>,
    pub max_messages: Option<u64>,
    /// Set for `backend = "amqp"`.
    pub amqp: Option<AmqpSettings>,
}

/// Where an amqp store's broker URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    Literal(String),
    /// The environment variable of that name, read when the store opens.
    Env(String),
}

#[derive(Debug, Clone)]
pub struct AmqpSettings {
    pub url: UrlSource,
    pub queue: String,
    pub queue_type: QueueType,
    pub prefetch: u16,
    /// Certificates for `amqps://`; read when the store opens.
    pub tls: TlsFiles,
}

#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub path: String,
    pub methods: Vec<http::Method>,
    /// Lower-case media types; `None` accepts any.
    pub consumes: Option<Vec<String>>,
    pub store: String,
    pub max_body: u64,
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
    /// How the consumer of a broker-backed store reconnects.
    pub reconnect: WriteRetry,
}

/// The slowest throttle: one message every 1000 s.
pub const MIN_RATE: f64 = 0.001;

/// Built-in response handlers, by the name a processor's `response_handler` uses.
pub const BUILTIN_HANDLERS: &[&str] = &["log-response"];

/// The most memory a plugin call may be given (the instance pool's slot size).
pub const MAX_PLUGIN_MEMORY: u64 = 256 << 20;
/// Shortest plugin deadline: the epoch ticks every 10 ms.
const MIN_PLUGIN_DEADLINE: Duration = Duration::from_millis(10);

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

#[derive(Default)]
struct Problems(Vec<Invalid>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Invalid {
            key: key.into(),
            reason: reason.into(),
        });
    }
}

impl Config {
    /// Checks everything that needs more than one key; no I/O.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let mut p = Problems::default();
        let server = ServerSettings {
            listen: socket_addr(&mut p, "server.listen", &self.server.listen),
            admin: socket_addr(&mut p, "server.admin", &self.server.admin),
            data_dir: self.server.data_dir.clone(),
            admin_token: self.server.admin_token.clone(),
        };
        if self.server.admin_token.as_deref() == Some("") {
            p.add(
                "server.admin_token",
                "must not be empty (remove it to turn auth off)",
            );
        }

        let stores = self.validate_stores(&mut p);
        let routes = self.validate_routes(&mut p);
        let processors = self.validate_processors(&mut p);

        if p.0.is_empty() {
            Ok(ValidConfig {
                server,
                stores,
                routes,
                processors,
            })
        } else {
            Err(ConfigError::Invalid(p.0))
        }
    }

    fn validate_stores(&self, p: &mut Problems) -> BTreeMap<String, StoreSettings> {
        let mut out = BTreeMap::new();
        for (name, s) in &self.stores {
            let key = format!("stores.{name}");
            if !valid_name(name) {
                p.add(
                    &key,
                    "a store name may use letters, digits, '-' and '_' only",
                );
            }
            let amqp = match s.backend {
                Backend::Embedded => {
                    let amqp_only = [
                        ("url", s.url.is_some()),
                        ("url_env", s.url_env.is_some()),
                        ("queue", s.queue.is_some()),
                        ("queue_type", s.queue_type.is_some()),
                        ("prefetch", s.prefetch.is_some()),
                        ("tls", s.tls.is_some()),
                    ];
                    for (field, set) in amqp_only {
                        if set {
                            p.add(format!("{key}.{field}"), "only for backend = \"amqp\"");
                        }
                    }
                    None
                }
                Backend::Amqp => Some(amqp_settings(p, &key, name, s)),
            };
            if let Some(secondary) = &s.secondary {
                if secondary == name {
                    p.add(
                        format!("{key}.secondary"),
                        "a store cannot be its own secondary",
                    );
                } else if !self.stores.contains_key(secondary) {
                    p.add(
                        format!("{key}.secondary"),
                        format!(
                            "no store named {secondary:?} (known: {})",
                            self.store_names()
                        ),
                    );
                }
            }
            if s.max_messages == Some(0) {
                p.add(format!("{key}.max_messages"), "must be at least 1");
            }
            let retry = match &s.retry {
                None => WriteRetry::NONE,
                Some(r) => WriteRetry {
                    retries: retry_count(p, &format!("{key}.retry.count"), r.count),
                    backoff: backoff(p, &format!("{key}.retry"), r),
                },
            };
            out.insert(
                name.clone(),
                StoreSettings {
                    name: name.clone(),
                    backend: s.backend,
                    retry,
                    secondary: s.secondary.clone(),
                    max_messages: s.max_messages,
                    amqp,
                },
            );
        }
        // A fail-over chain must end: a -> b -> a would retry forever.
        for name in self.stores.keys() {
            let mut seen = BTreeSet::from([name.as_str()]);
            let mut at = name.as_str();
            while let Some(next) = self.stores.get(at).and_then(|s| s.secondary.as_deref()) {
                if !self.stores.contains_key(next) || next == at {
                    break;
                }
                if !seen.insert(next) {
                    p.add(
                        format!("stores.{name}.secondary"),
                        format!("fail-over chain loops back to {next:?}"),
                    );
                    break;
                }
                at = next;
            }
        }
        out
    }

    fn validate_routes(&self, p: &mut Problems) -> Vec<RouteSettings> {
        let mut out = Vec::new();
        let mut paths = BTreeSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if !r.path.starts_with('/') {
                p.add(
                    format!("{key}.path"),
                    format!("{:?} must start with '/'", r.path),
                );
            } else if r.path.contains('?') {
                p.add(format!("{key}.path"), "a route path has no query string");
            } else if !paths.insert(r.path.as_str()) {
                p.add(
                    format!("{key}.path"),
                    format!("{:?} is already routed", r.path),
                );
            }
            let method_names: Vec<String> = match &r.methods {
                Some(m) => m.clone(),
                None => defaults::METHODS.iter().map(|s| (*s).to_owned()).collect(),
            };
            if method_names.is_empty() {
                p.add(format!("{key}.methods"), "must name at least one method");
            }
            let mut methods = Vec::new();
            for (j, m) in method_names.iter().enumerate() {
                match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => methods.push(method),
                    Err(_) => p.add(
                        format!("{key}.methods[{j}]"),
                        format!("{m:?} is not an HTTP method"),
                    ),
                }
            }
            let consumes = r.consumes.as_ref().map(|list| {
                for (j, c) in list.iter().enumerate() {
                    let ok = matches!(c.split_once('/'), Some((a, b)) if !a.is_empty() && !b.is_empty() && !c.contains(';'));
                    if !ok {
                        p.add(format!("{key}.consumes[{j}]"), format!("{c:?} is not a media type such as \"application/json\""));
                    }
                }
                list.iter().map(|c| c.trim().to_ascii_lowercase()).collect()
            });
            if !self.stores.contains_key(&r.store) {
                p.add(
                    format!("{key}.store"),
                    format!(
                        "no store named {:?} (known: {})",
                        r.store,
                        self.store_names()
                    ),
                );
            }
            let max_body = r.max_body.map_or(defaults::MAX_BODY, |b| b.0);
            if max_body == 0 {
                p.add(format!("{key}.max_body"), "must be more than 0");
            }
            out.push(RouteSettings {
                path: r.path.clone(),
                methods,
                consumes,
                store: r.store.clone(),
                max_body,
            });
        }
        out
    }

    fn validate_processors(&self, p: &mut Problems) -> BTreeMap<String, ProcessorSettings> {
        let mut out = BTreeMap::new();
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, c) in &self.processors {
            let key = format!("processors.{name}");
            if !valid_name(name) {
                p.add(
                    &key,
                    "a processor name may use letters, digits, '-' and '_' only",
                );
            }
            if !self.stores.contains_key(&c.store) {
                p.add(
                    format!("{key}.store"),
                    format!(
                        "no store named {:?} (known: {})",
                        c.store,
                        self.store_names()
                    ),
                );
            } else if let Some(other) = owners.insert(&c.store, name) {
                p.add(
                    format!("{key}.store"),
                    format!("store {:?} already has processor {other:?}; one processor per store keeps delivery in order", c.store),
                );
            }
            let endpoint = match http::Uri::from_str(&c.endpoint) {
                Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => uri,
                Ok(uri) if uri.scheme_str() == Some("https") => {
                    p.add(
                        format!("{key}.endpoint"),
                        "https endpoints are not supported yet; use http://",
                    );
                    uri
                }
                _ => {
                    p.add(
                        format!("{key}.endpoint"),
                        format!("{:?} is not an http:// URL", c.endpoint),
                    );
                    http::Uri::from_static("http://invalid/")
                }
            };
            let method = c.method.as_ref().and_then(|m| {
                http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| {
                        p.add(
                            format!("{key}.method"),
                            format!("{m:?} is not an HTTP method"),
                        )
                    })
                    .ok()
            });
            let trigger = match (&c.schedule, c.interval) {
                (Some(_), Some(_)) => {
                    p.add(&key, "set `schedule` or `interval`, not both");
                    ProcessorTrigger::Continuous
                }
                (Some(expr), None) => match cron::Schedule::from_str(expr) {
                    Ok(s) => ProcessorTrigger::Cron(Box::new(s), expr.clone()),
                    Err(e) => {
                        p.add(
                            format!("{key}.schedule"),
                            format!(
                                "{expr:?} is not a cron expression with seconds (e.g. \"0/2 * * * * ?\"): {}",
                                e.to_string().lines().last().unwrap_or_default().trim()
                            ),
                        );
                        ProcessorTrigger::Continuous
                    }
                },
                (None, Some(interval)) => {
                    if interval.is_zero() {
                        p.add(format!("{key}.interval"), "must be more than 0");
                    }
                    ProcessorTrigger::Interval(interval)
                }
                (None, None) => ProcessorTrigger::Continuous,
            };
            let batch = match (c.batch, &trigger) {
                (Some(_), ProcessorTrigger::Continuous) => {
                    p.add(format!("{key}.batch"), "only with `schedule` or `interval` (without them the processor forwards continuously)");
                    1
                }
                (Some(0), _) => {
                    p.add(format!("{key}.batch"), "must be at least 1");
                    1
                }
                (Some(n), _) => n as usize,
                (None, _) => defaults::BATCH as usize,
            };
            let timeout = c.timeout.unwrap_or(defaults::TIMEOUT);
            if timeout.is_zero() {
                p.add(format!("{key}.timeout"), "must be more than 0");
            }
            let factor = c.backoff_factor.unwrap_or(defaults::BACKOFF_FACTOR);
            if !(factor >= 1.0 && factor.is_finite()) {
                p.add(format!("{key}.backoff_factor"), "must be a number >= 1.0");
            }
            let retry = Backoff {
                initial: c.retry_interval.unwrap_or(defaults::RETRY_INTERVAL),
                factor,
                max: c.max_retry_interval,
            };
            if let Some(statuses) = &c.retry_statuses {
                for (j, s) in statuses.iter().enumerate() {
                    if !(100..=599).contains(s) {
                        p.add(
                            format!("{key}.retry_statuses[{j}]"),
                            format!("{s} is not an HTTP status (100-599)"),
                        );
                    }
                }
            }
            if let Some(dls) = &c.dead_letter_store {
                if dls == &c.store {
                    p.add(
                        format!("{key}.dead_letter_store"),
                        "must differ from the processor's own store",
                    );
                } else if !self.stores.contains_key(dls) {
                    p.add(
                        format!("{key}.dead_letter_store"),
                        format!("no store named {dls:?} (known: {})", self.store_names()),
                    );
                }
            }
            let on_failure = match (c.on_failure, &c.dead_letter_store) {
                (Some(OnFailure::DeadLetter), None) => {
                    p.add(
                        format!("{key}.on_failure"),
                        "\"dead-letter\" needs `dead_letter_store`",
                    );
                    OnFailure::DeadLetter
                }
                (Some(action), _) => action,
                (None, Some(_)) => OnFailure::DeadLetter,
                (None, None) => OnFailure::Drop,
            };
            let response_handler = c
                .response_handler
                .clone()
                .unwrap_or_else(|| defaults::RESPONSE_HANDLER.to_owned());
            if let PluginRef::Deployed(name) = PluginRef::of(&response_handler)
                && let Some(problem) = plugin_name_problem(name)
            {
                p.add(
                    format!("{key}.response_handler"),
                    format!("{problem}; use a built-in handler ({BUILTIN_HANDLERS:?}), a deployed plugin's name or the path of a .wasm component"),
                );
            }
            if let Some(policy) = &c.failure_policy {
                match PluginRef::of(policy) {
                    PluginRef::Builtin(_) => p.add(
                        format!("{key}.failure_policy"),
                        format!("{policy:?} is a response handler, not a failure policy"),
                    ),
                    PluginRef::Deployed(name) => {
                        if let Some(problem) = plugin_name_problem(name) {
                            p.add(
                                format!("{key}.failure_policy"),
                                format!("{problem}; use a deployed plugin's name or the path of a .wasm component"),
                            );
                        }
                    }
                    PluginRef::Path(_) => {}
                }
            }
            let plugin_limits = plugin_limits(p, &key, c.plugin_limits.as_ref());
            if let Some(rate) = c.max_rate
                && !(rate >= MIN_RATE && rate.is_finite())
            {
                p.add(
                    format!("{key}.max_rate"),
                    format!("must be a number of messages per second, at least {MIN_RATE}"),
                );
            }
            let reconnect = match &c.reconnect {
                Some(r) => WriteRetry {
                    retries: retry_count(p, &format!("{key}.reconnect.count"), r.count),
                    backoff: backoff(p, &format!("{key}.reconnect"), r),
                },
                None => WriteRetry {
                    retries: None,
                    backoff: Backoff {
                        initial: defaults::RECONNECT_INTERVAL,
                        factor: defaults::RECONNECT_FACTOR,
                        max: Some(defaults::RECONNECT_MAX),
                    },
                },
            };
            out.insert(
                name.clone(),
                ProcessorSettings {
                    name: name.clone(),
                    store: c.store.clone(),
                    endpoint,
                    method,
                    trigger,
                    batch,
                    timeout,
                    retry,
                    max_redeliveries: c.max_redeliveries.unwrap_or(defaults::MAX_REDELIVERIES),
                    retry_statuses: c.retry_statuses.clone(),
                    on_failure,
                    dead_letter_store: c.dead_letter_store.clone(),
                    response_handler,
                    failure_policy: c.failure_policy.clone(),
                    plugin_limits,
                    max_rate: c.max_rate,
                    reconnect,
                },
            );
        }
        out
    }

    fn store_names(&self) -> String {
        if self.stores.is_empty() {
            return "none".to_owned();
        }
        self.stores
            .keys()
            .map(|k| format!("{k:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What is wrong with an amqp store's URL, given whether it has a `tls`
/// block: the key at fault (`url` or `tls`) and why. Checked here for a
/// literal URL, and when the store opens for one from the environment.
pub fn amqp_url_problem(url: &str, has_tls: bool) -> Option<(&'static str, &'static str)> {
    if url.starts_with("amqps://") {
        None
    } else if !url.starts_with("amqp://") {
        Some(("url", "is not an amqp:// or amqps:// URL"))
    } else if has_tls {
        Some(("tls", "only for an amqps:// url (TLS); this url is amqp://"))
    } else {
        None
    }
}

fn amqp_settings(p: &mut Problems, key: &str, name: &str, s: &super::StoreConfig) -> AmqpSettings {
    let url = match (&s.url, &s.url_env) {
        (Some(url), None) => {
            match amqp_url_problem(url, s.tls.is_some()) {
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
            p.add(key, "backend = \"amqp\" needs `url` (or `url_env`)");
            UrlSource::Env(String::new())
        }
    };
    if s.max_messages.is_some() {
        p.add(
            format!("{key}.max_messages"),
            "only for backend = \"embedded\" (set a max-length policy on the queue instead)",
        );
    }
    let queue = s.queue.clone().unwrap_or_else(|| name.to_owned());
    if queue.is_empty() || queue.len() > 255 {
        p.add(format!("{key}.queue"), "a queue name has 1 to 255 bytes");
    }
    let prefetch = s.prefetch.unwrap_or(defaults::PREFETCH);
    if prefetch == 0 {
        p.add(format!("{key}.prefetch"), "must be at least 1");
    }
    let tls = s.tls.clone().unwrap_or_default();
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        p.add(
            format!("{key}.tls"),
            "cert_file and key_file go together: a client certificate and its key",
        );
    }
    AmqpSettings {
        url,
        queue,
        queue_type: s.queue_type.unwrap_or_default(),
        prefetch,
        tls,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn socket_addr(p: &mut Problems, key: &str, text: &str) -> SocketAddr {
    SocketAddr::from_str(text).unwrap_or_else(|_| {
        p.add(
            key,
            format!("{text:?} is not an address such as \"127.0.0.1:9091\""),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

fn retry_count(p: &mut Problems, key: &str, count: i64) -> Option<u64> {
    match count {
        -1 => None,
        n if n >= 0 => Some(n as u64),
        n => {
            p.add(
                key,
                format!("{n} is not a retry count (0 or more, or -1 for forever)"),
            );
            Some(0)
        }
    }
}

fn backoff(p: &mut Problems, key: &str, r: &RetryConfig) -> Backoff {
    if !(r.backoff_factor >= 1.0 && r.backoff_factor.is_finite()) {
        p.add(format!("{key}.backoff_factor"), "must be a number >= 1.0");
    }
    if let Some(max) = r.max_wait
        && max < r.interval
    {
        p.add(
            format!("{key}.max_wait"),
            "must not be shorter than `interval`",
        );
    }
    Backoff {
        initial: r.interval,
        factor: r.backoff_factor,
        max: r.max_wait,
    }
}

/// A processor's `plugin_limits`, checked against what the engine can give.
fn plugin_limits(
    p: &mut Problems,
    key: &str,
    given: Option<&super::PluginLimitsConfig>,
) -> PluginLimits {
    let mut limits = PluginLimits::default();
    let Some(given) = given else {
        return limits;
    };
    if let Some(memory) = given.memory {
        if memory.0 < 1 << 20 || memory.0 > MAX_PLUGIN_MEMORY {
            p.add(
                format!("{key}.plugin_limits.memory"),
                format!("must be from 1MiB to {}MiB", MAX_PLUGIN_MEMORY >> 20),
            );
        } else {
            limits.memory = usize::try_from(memory.0).unwrap_or(usize::MAX);
        }
    }
    if let Some(deadline) = given.deadline {
        if deadline < MIN_PLUGIN_DEADLINE {
            p.add(
                format!("{key}.plugin_limits.deadline"),
                format!("must be at least {MIN_PLUGIN_DEADLINE:?}"),
            );
        } else {
            limits.deadline = deadline;
        }
    }
    if let Some(fuel) = given.fuel {
        if fuel == 0 {
            p.add(format!("{key}.plugin_limits.fuel"), "must be more than 0");
        } else {
            limits.fuel = Some(fuel);
        }
    }
    limits
}
