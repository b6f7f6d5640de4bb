//! A tenant's own settings (how its routes are reached), as `[tenants.NAME]`
//! in the file or the body of `PUT /api/v1/tenants/{name}`, and their
//! pure checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::serde_opt_duration;
use super::settings::MIN_PLUGIN_DEADLINE;
use super::{ByteSize, MAX_PLUGIN_MEMORY, Problems};

/// The tenant the top-level config describes.
pub const DEFAULT_TENANT: &str = "default";

/// `[tenants.NAME]` beside its pipeline tables, or an API body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// The path segment its routes are served under (`"/acme"` serves
    /// `/acme/in` for the route `/in`); default `/{name}`, or none when
    /// `hosts` are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Host names its routes are served on (matched on `Host`, without the port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Its own quotas; each one not set here is `[server.quotas]`'s.
    #[serde(default, skip_serializing_if = "Quotas::is_empty")]
    pub quotas: Quotas,
}

/// Ceilings of one tenant; absent: no ceiling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Messages per second its routes take (a token bucket holding one
    /// second's worth, at least one message); beyond it `429` with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_rate: Option<f64>,
    /// Body bytes per second its routes take, the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_bytes_rate: Option<ByteSize>,
    /// Routes, stores, processors and deployed plugins it may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stores: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugins: Option<u64>,
    /// Messages its stores may hold together (leased ones included);
    /// beyond it ingress answers `507` and stores nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_messages: Option<u64>,
    /// Body bytes its stores may hold together, the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<ByteSize>,
    /// Forwarding attempts per second across all its processors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_rate: Option<f64>,
    /// The most a processor's `plugin_limits` may give a call: memory,
    /// deadline and fuel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_memory: Option<ByteSize>,
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "2s")]
    pub plugin_deadline: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_fuel: Option<u64>,
    /// Plugin instances its processors may hold at once (of the process's
    /// shared pool); a call waits up to its deadline for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_instances: Option<u64>,
}

impl Quotas {
    pub fn is_empty(&self) -> bool {
        *self == Quotas::default()
    }

    /// These quotas, each unset one taken from `defaults`.
    pub fn or(&self, defaults: &Quotas) -> Quotas {
        Quotas {
            ingest_rate: self.ingest_rate.or(defaults.ingest_rate),
            ingest_bytes_rate: self.ingest_bytes_rate.or(defaults.ingest_bytes_rate),
            routes: self.routes.or(defaults.routes),
            stores: self.stores.or(defaults.stores),
            processors: self.processors.or(defaults.processors),
            plugins: self.plugins.or(defaults.plugins),
            stored_messages: self.stored_messages.or(defaults.stored_messages),
            stored_bytes: self.stored_bytes.or(defaults.stored_bytes),
            forward_rate: self.forward_rate.or(defaults.forward_rate),
            plugin_memory: self.plugin_memory.or(defaults.plugin_memory),
            plugin_deadline: self.plugin_deadline.or(defaults.plugin_deadline),
            plugin_fuel: self.plugin_fuel.or(defaults.plugin_fuel),
            plugin_instances: self.plugin_instances.or(defaults.plugin_instances),
        }
    }
}

/// Checks quotas; problems are keyed under `key`.
pub fn validate_quotas(p: &mut Problems<'_>, key: &str, q: &Quotas) {
    if q.ingest_rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        p.add(
            format!("{key}.ingest_rate"),
            "must be a number of messages per second above 0",
        );
    }
    if q.forward_rate
        .is_some_and(|r| !(r.is_finite() && r >= super::MIN_RATE))
    {
        p.add(
            format!("{key}.forward_rate"),
            format!(
                "must be a number of attempts per second of at least {}",
                super::MIN_RATE
            ),
        );
    }
    for (name, size) in [
        ("ingest_bytes_rate", q.ingest_bytes_rate),
        ("stored_bytes", q.stored_bytes),
    ] {
        if size.is_some_and(|b| b.0 == 0) {
            p.add(format!("{key}.{name}"), "must be above 0");
        }
    }
    if q.plugin_memory
        .is_some_and(|m| m.0 == 0 || m.0 > MAX_PLUGIN_MEMORY)
    {
        p.add(
            format!("{key}.plugin_memory"),
            format!("must be above 0 and at most {MAX_PLUGIN_MEMORY} bytes (256MiB)"),
        );
    }
    if q.plugin_deadline.is_some_and(|d| d < MIN_PLUGIN_DEADLINE) {
        p.add(format!("{key}.plugin_deadline"), "must be at least 10ms");
    }
    for (name, count) in [
        ("plugin_fuel", q.plugin_fuel),
        ("plugin_instances", q.plugin_instances),
    ] {
        if count == Some(0) {
            p.add(format!("{key}.{name}"), "must be above 0");
        }
    }
}

impl TenantSpec {
    /// The keys of a tenant that are not its pipeline's.
    pub const KEYS: &[&str] = &["prefix", "hosts", "quotas"];

    /// The path segment (without the slash) the tenant is served under, if any.
    pub fn prefix_segment(&self, name: &str) -> Option<String> {
        match &self.prefix {
            Some(prefix) => Some(prefix.trim_start_matches('/').to_owned()),
            None if self.hosts.is_empty() => Some(name.to_owned()),
            None => None,
        }
    }

    /// Host names, lower case.
    pub fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
    }
}

/// What is wrong with a tenant name, if anything: a slug of 1 to 63
/// lower-case letters, digits and '-', starting with a letter or digit.
pub fn tenant_name_problem(name: &str) -> Option<&'static str> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    (!ok).then_some(
        "a tenant name has 1 to 63 lower-case letters, digits and '-', and starts with a letter or digit",
    )
}

/// Checks tenant `name`'s spec; problems are keyed under `key`.
pub fn validate_spec(p: &mut Problems<'_>, key: &str, name: &str, spec: &TenantSpec) {
    if let Some(why) = tenant_name_problem(name) {
        p.add(key, why);
    }
    if name == DEFAULT_TENANT && *spec != TenantSpec::default() {
        p.add(
            key,
            "the default tenant's routes keep their bare paths and it has no quotas: it takes no prefix, hosts or quotas",
        );
    }
    validate_quotas(p, &format!("{key}.quotas"), &spec.quotas);
    if let Some(prefix) = &spec.prefix {
        let segment = prefix.strip_prefix('/').unwrap_or("");
        if segment.is_empty()
            || !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            p.add(
                format!("{key}.prefix"),
                format!(
                    "{prefix:?} is not one path segment such as \"/{name}\" (letters, digits, '-', '_', '.')"
                ),
            );
        }
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            p.add(
                format!("{key}.hosts[{i}]"),
                format!("{host:?} is not a host name (no scheme, port or path)"),
            );
        }
    }
}
