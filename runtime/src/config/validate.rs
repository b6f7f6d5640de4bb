//! The pure half of loading: cross-checks that turn a [`Config`] into a
//! [`ValidConfig`] and a pipeline document into a [`ValidPipeline`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use super::settings::MIN_PLUGIN_DEADLINE;
use super::{
    BUILTIN_HANDLERS, Backend, Config, ConfigError, EndpointTls, Invalid, MAX_PLUGIN_MEMORY,
    MIN_RATE, OnFailure, OrderKey, PipelineConfig, PluginLimits, PluginRef, ProcessorSettings,
    ProcessorTrigger, RetryConfig, RouteSettings, ServerSettings, Signing, StoreConfig,
    StoreSettings, ValidConfig, ValidPipeline, WriteRetry, defaults, plugin_name_problem,
};
use crate::retry::Backoff;

/// Where validation collects problems; every backend's checks add to it.
pub struct Problems<'a>(&'a mut Vec<Invalid>);

impl<'a> Problems<'a> {
    pub fn new(problems: &'a mut Vec<Invalid>) -> Problems<'a> {
        Problems(problems)
    }

    pub fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Invalid {
            key: key.into(),
            reason: reason.into(),
        });
    }
}

/// A backend's own keys of one store, as written.
pub type BackendTable = serde_json::Map<String, serde_json::Value>;

/// Reads a backend's keys into its serde shape `T`. Each key is read on its
/// own first, so that every malformed one is listed with its key (serde
/// stops at the first); the result holds the well-formed ones, so that the
/// backend's checks still see them.
pub fn read_table<T: serde::de::DeserializeOwned + Default>(
    p: &mut Problems<'_>,
    key: &str,
    table: &BackendTable,
) -> T {
    let mut fine = BackendTable::new();
    for (field, value) in table {
        let one = BackendTable::from_iter([(field.clone(), value.clone())]);
        match serde_json::from_value::<T>(serde_json::Value::Object(one)) {
            Ok(_) => {
                fine.insert(field.clone(), value.clone());
            }
            Err(e) => p.add(format!("{key}.{field}"), e.to_string()),
        }
    }
    serde_json::from_value(serde_json::Value::Object(fine)).unwrap_or_else(|e| {
        p.add(key, e.to_string());
        T::default()
    })
}

impl Config {
    /// Checks the server settings and the pipeline; no I/O. Every problem
    /// is listed, each with its key.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut p = Problems(&mut problems);
        let server = ServerSettings {
            listen: socket_addr(&mut p, "server.listen", &self.server.listen),
            admin: socket_addr(&mut p, "server.admin", &self.server.admin),
            data_dir: self.server.data_dir.clone(),
            admin_token: self.server.admin_token.clone(),
            allow_unauthenticated_admin: self.server.allow_unauthenticated_admin,
            quotas: self.server.quotas,
        };
        super::validate_quotas(&mut p, "server.quotas", &self.server.quotas);
        if self.server.admin_token.is_none()
            && !self.server.allow_unauthenticated_admin
            && !server.admin.ip().is_loopback()
        {
            p.add(
                "server.admin_token",
                format!(
                    "the admin API listens on {} (not loopback) without a token: set admin_token, or allow_unauthenticated_admin = true to run it open",
                    server.admin
                ),
            );
        }
        if self.server.admin_token.as_deref() == Some("") {
            p.add(
                "server.admin_token",
                "must not be empty (remove it to turn auth off)",
            );
        }
        let pipeline = self.pipeline.config.validate(&self.base, &mut problems);
        let mut p = Problems(&mut problems);
        for (name, tenant) in &self.tenants {
            let key = format!("tenants.{name}");
            super::validate_spec(&mut p, &key, name, &tenant.spec);
            if name == super::DEFAULT_TENANT {
                p.add(
                    &key,
                    "the default tenant is the top-level tables; name another tenant",
                );
            }
        }
        for (name, tenant) in &self.tenants {
            let mut inner = Vec::new();
            tenant.pipeline.config.validate(&self.base, &mut inner);
            problems.extend(inner.into_iter().map(|i| Invalid {
                key: format!("tenants.{name}.{}", i.key),
                reason: i.reason,
            }));
        }
        if problems.is_empty() {
            Ok(ValidConfig {
                server,
                pipeline,
                document: self.pipeline,
                tenants: self.tenants,
                base: self.base,
                file: self.file,
            })
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

impl PipelineConfig {
    /// Checks everything that needs more than one key; no I/O. Problems are
    /// added to `problems`; the result is meaningful only if none were.
    /// Relative plugin and TLS paths are resolved against `base`.
    pub(super) fn validate(&self, base: &Path, problems: &mut Vec<Invalid>) -> ValidPipeline {
        let mut p = Problems(problems);
        let mut stores = self.validate_stores(&mut p, base);
        let resolved = self.resolved(base);
        let routes = resolved.validate_routes(&mut p);
        let processors = resolved.validate_processors(&mut p);
        // A processor's `reconnect` is the older place of its amqp store's.
        for (name, c) in &self.processors {
            let Some(r) = &c.reconnect else { continue };
            let key = format!("processors.{name}.reconnect");
            let retry = write_retry(&mut p, &key, r);
            let store_sets_it = self
                .stores
                .get(&c.store)
                .is_some_and(|s| s.settings.contains_key("reconnect"));
            match stores
                .get_mut(&c.store)
                .and_then(|s| s.backend.reconnect_mut())
            {
                Some(_) if store_sets_it => p.add(
                    key,
                    format!(
                        "stores.{}.reconnect is set too: set it in one place (on the store)",
                        c.store
                    ),
                ),
                Some(reconnect) => *reconnect = retry,
                // Unused for stores without a broker connection, as it always was.
                None => {}
            }
        }
        ValidPipeline {
            stores,
            routes,
            processors,
        }
    }

    fn validate_stores(
        &self,
        p: &mut Problems<'_>,
        base: &Path,
    ) -> BTreeMap<String, StoreSettings> {
        let mut out = BTreeMap::new();
        for (name, s) in &self.stores {
            let key = format!("stores.{name}");
            if !valid_name(name) {
                p.add(
                    &key,
                    "a store name may use letters, digits, '-' and '_' only",
                );
            }
            let table = own_keys(p, &key, s);
            let backend = s.backend.validate(p, &key, name, &table, base);
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
            let retry = match &s.retry {
                None => WriteRetry::NONE,
                Some(r) => write_retry(p, &format!("{key}.retry"), r),
            };
            out.insert(
                name.clone(),
                StoreSettings {
                    name: name.clone(),
                    retry,
                    secondary: s.secondary.clone(),
                    backend,
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

    fn validate_routes(&self, p: &mut Problems<'_>) -> Vec<RouteSettings> {
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
            if let Some(auth) = &r.auth {
                match (&auth.bearer_env, auth.tenant_tokens) {
                    (Some(var), false) if var.is_empty() => p.add(
                        format!("{key}.auth.bearer_env"),
                        "must name an environment variable",
                    ),
                    (Some(_), false) | (None, true) => {}
                    _ => p.add(
                        format!("{key}.auth"),
                        "takes one of bearer_env = \"NAME\" or tenant_tokens = true",
                    ),
                }
            }
            out.push(RouteSettings {
                path: r.path.clone(),
                methods,
                consumes,
                store: r.store.clone(),
                max_body,
                bearer_env: r.auth.as_ref().and_then(|a| a.bearer_env.clone()),
                tenant_tokens: r.auth.as_ref().is_some_and(|a| a.tenant_tokens),
            });
        }
        out
    }

    fn validate_processors(&self, p: &mut Problems<'_>) -> BTreeMap<String, ProcessorSettings> {
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
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some_and(|h| !h.is_empty()) =>
                {
                    uri
                }
                _ => {
                    p.add(
                        format!("{key}.endpoint"),
                        format!("{:?} is not an http:// or https:// URL", c.endpoint),
                    );
                    http::Uri::from_static("http://invalid/")
                }
            };
            let tls = endpoint_tls(p, &key, &endpoint, c.tls.as_ref());
            let proxy = c.proxy.as_ref().and_then(|proxy| {
                proxy_problem(proxy)
                    .map(|why| p.add(format!("{key}.proxy"), format!("{proxy:?} {why}")))
                    .is_none()
                    .then(|| http::Uri::from_str(proxy).ok())
                    .flatten()
            });
            let signing = c.signing.as_ref().map(|s| signing(p, &key, s));
            let order_key = c.order_key.as_ref().and_then(|k| match OrderKey::parse(k) {
                Ok(key) => Some(key),
                Err(why) => {
                    p.add(format!("{key}.order_key"), format!("{k:?}: {why}"));
                    None
                }
            });
            let concurrency = match c.concurrency {
                None => 1,
                Some(n) if (1..=defaults::MAX_CONCURRENCY).contains(&n) => n as usize,
                Some(_) => {
                    p.add(
                        format!("{key}.concurrency"),
                        format!("must be 1..={}", defaults::MAX_CONCURRENCY),
                    );
                    1
                }
            };
            if c.disable_after.is_some_and(|d| d.is_zero()) {
                p.add(format!("{key}.disable_after"), "must be more than 0");
            }
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
                    tls,
                    proxy,
                    signing,
                    order_key,
                    concurrency,
                    disable_after: c.disable_after,
                    deactivate_on_gone: c.deactivate_on_gone.unwrap_or(false),
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

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn socket_addr(p: &mut Problems<'_>, key: &str, text: &str) -> SocketAddr {
    SocketAddr::from_str(text).unwrap_or_else(|_| {
        p.add(
            key,
            format!("{text:?} is not an address such as \"127.0.0.1:9091\""),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

/// A `{ count, interval, backoff_factor, max_wait }` block at `key`, checked.
pub fn write_retry(p: &mut Problems<'_>, key: &str, r: &RetryConfig) -> WriteRetry {
    WriteRetry {
        retries: retry_count(p, &format!("{key}.count"), r.count),
        backoff: backoff(p, key, r),
    }
}

fn retry_count(p: &mut Problems<'_>, key: &str, count: i64) -> Option<u64> {
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

fn backoff(p: &mut Problems<'_>, key: &str, r: &RetryConfig) -> Backoff {
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
    p: &mut Problems<'_>,
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

/// The keys of store `key` that its backend takes; every other one is a
/// problem, named with the backend it belongs to (or the keys it could be).
fn own_keys(p: &mut Problems<'_>, key: &str, s: &StoreConfig) -> BackendTable {
    let own = s.backend.keys();
    let mut table = BackendTable::new();
    for (field, value) in &s.settings {
        if own.contains(&field.as_str()) {
            table.insert(field.clone(), value.clone());
            continue;
        }
        let owner = Backend::ALL
            .into_iter()
            .find(|b| b.keys().contains(&field.as_str()));
        let reason = match (owner, s.backend.instead_of(field)) {
            (Some(owner), Some(hint)) => {
                format!("only for backend = \"{}\" ({hint})", owner.name())
            }
            (Some(owner), None) => format!("only for backend = \"{}\"", owner.name()),
            (None, _) => {
                let known: Vec<String> = StoreConfig::KEYS
                    .iter()
                    .chain(own)
                    .map(|k| format!("`{k}`"))
                    .collect();
                format!(
                    "unknown key; a store of backend = \"{}\" takes {}",
                    s.backend.name(),
                    known.join(", ")
                )
            }
        };
        p.add(format!("{key}.{field}"), reason);
    }
    table
}

/// The field names a serde struct `T` reads: what its `deny_unknown_fields`
/// accepts. Tests compare them with a backend's `KEYS`.
#[cfg(test)]
pub(crate) fn serde_fields<T: serde::de::DeserializeOwned>() -> Vec<&'static str> {
    struct Fields(Vec<&'static str>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fields read")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Stop {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = fields.to_vec();
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields = Fields(Vec::new());
    let _ = T::deserialize(&mut fields);
    fields.0
}

/// The `tls` block of processor `key`: only for `https://`, a client
/// certificate with its key, a server name that can be verified.
fn endpoint_tls(
    p: &mut Problems<'_>,
    key: &str,
    endpoint: &http::Uri,
    tls: Option<&crate::config::EndpointTlsConfig>,
) -> EndpointTls {
    let Some(tls) = tls else {
        return EndpointTls::default();
    };
    if endpoint.scheme_str() != Some("https") {
        p.add(format!("{key}.tls"), "only for an https:// endpoint");
    }
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        p.add(
            format!("{key}.tls"),
            "cert_file and key_file go together: a client certificate and its key",
        );
    }
    if let Some(name) = &tls.server_name
        && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        p.add(
            format!("{key}.tls.server_name"),
            format!("{name:?} is not a DNS name or an IP address"),
        );
    }
    EndpointTls {
        files: crate::config::TlsFiles {
            ca_file: tls.ca_file.clone(),
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
        },
        server_name: tls.server_name.clone(),
    }
}

/// What is wrong with a proxy URL, if anything (`http://host:port` only).
pub fn proxy_problem(proxy: &str) -> Option<&'static str> {
    match http::Uri::from_str(proxy) {
        Ok(uri)
            if uri.scheme_str() == Some("http") && uri.host().is_some_and(|h| !h.is_empty()) =>
        {
            None
        }
        Ok(uri) if uri.scheme().is_some() && uri.scheme_str() != Some("http") => Some(
            "is not supported: only http:// proxies (https:// endpoints go through them with CONNECT)",
        ),
        _ => Some("is not a proxy URL like http://host:port"),
    }
}

fn signing(p: &mut Problems<'_>, key: &str, s: &crate::config::SigningConfig) -> Signing {
    use crate::config::SigningScheme;
    let key = format!("{key}.signing");
    if s.secret_env.is_empty() {
        p.add(
            format!("{key}.secret_env"),
            "must name an environment variable",
        );
    }
    if s.scheme == SigningScheme::StandardWebhooks {
        for field in [
            ("header", s.header.is_some()),
            ("prefix", s.prefix.is_some()),
        ] {
            if field.1 {
                p.add(
                    format!("{key}.{}", field.0),
                    "only for scheme = \"hmac-sha256\" (standard-webhooks has its own headers)",
                );
            }
        }
    }
    let header = match &s.header {
        None => http::HeaderName::from_static(defaults::SIGNATURE_HEADER),
        Some(name) => http::HeaderName::from_str(name).unwrap_or_else(|_| {
            p.add(
                format!("{key}.header"),
                format!("{name:?} is not a header name"),
            );
            http::HeaderName::from_static(defaults::SIGNATURE_HEADER)
        }),
    };
    let prefix = s.prefix.clone().unwrap_or_default();
    if http::HeaderValue::from_str(&prefix).is_err() {
        p.add(format!("{key}.prefix"), "must be printable ASCII");
    }
    Signing {
        scheme: s.scheme,
        secret_env: s.secret_env.clone(),
        header,
        prefix,
    }
}
