//! A tenant's own settings (how its routes are reached), as `[tenants.NAME]`
//! in the file or the body of `PUT /api/v1/tenants/{name}`, and their
//! pure checks.

use serde::{Deserialize, Serialize};

use super::Problems;

/// The tenant the top-level config describes.
pub const DEFAULT_TENANT: &str = "default";

/// `[tenants.NAME]` beside its pipeline tables, or an API body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl TenantSpec {
    /// The keys of a tenant that are not its pipeline's.
    pub const KEYS: &[&str] = &["prefix", "hosts"];

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
    if name == DEFAULT_TENANT && (spec.prefix.is_some() || !spec.hosts.is_empty()) {
        p.add(
            key,
            "the default tenant's routes keep their bare paths: it takes no prefix or hosts",
        );
    }
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
