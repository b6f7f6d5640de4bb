//! The admin API's request and response types, as they go over the wire.
//!
//! The server answers with these, and the CLI (`admin::client`) reads them
//! back as the same structs, so the two cannot drift apart. (Types that
//! belong to their module stay there and go over the wire as they are:
//! `pipeline::Applied`, `plugins::registry::{PluginView, Deployed}`.)
//! Each derives `utoipa::ToSchema`, so the OpenAPI description
//! (`admin::openapi`) is made from these very types.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::Message;
use crate::store::trail::{FailureKind, Trail};

/// The response header that carries the cursor of the next page of
/// `GET .../stores/{s}/messages`; absent on the last page.
pub const NEXT_CURSOR: &str = "wharf-next-cursor";

/// Milliseconds since the Unix epoch as RFC 3339 (UTC, milliseconds).
pub fn time(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A stored message; the body is text when it is UTF-8, else base64 with
/// `body_base64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    pub id: String,
    pub received_at: Option<String>,
    pub method: String,
    pub path: String,
    /// Each header once; repeated ones joined with `", "`.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub body_base64: bool,
    /// Why it was dead-lettered (dead letters only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureView>,
}

impl MessageView {
    pub fn of(m: &Message) -> MessageView {
        let mut headers = BTreeMap::new();
        for name in m.headers.keys() {
            let values: Vec<String> = m
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            headers.insert(name.as_str().to_owned(), values.join(", "));
        }
        let (body, body_base64) = match std::str::from_utf8(&m.body) {
            Ok(text) => (text.to_owned(), false),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(&m.body),
                true,
            ),
        };
        MessageView {
            id: m.id.clone(),
            received_at: time(m.received_at),
            method: m.method.as_str().to_owned(),
            path: m.path.clone(),
            headers,
            body,
            body_base64,
            failure: m.trail.as_deref().map(FailureView::of),
        }
    }
}

/// A dead letter's failure trail (see `store::trail` for the limits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FailureView {
    pub processor: String,
    /// The store it was dead-lettered from.
    pub store: String,
    pub endpoint: String,
    pub dead_lettered_at: Option<String>,
    pub attempts: u32,
    pub kind: FailureKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    pub last_error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_response_body: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub last_response_truncated: bool,
    pub attempt_log: Vec<AttemptView>,
}

impl FailureView {
    fn of(t: &Trail) -> FailureView {
        FailureView {
            processor: t.processor.clone(),
            store: t.store.clone(),
            endpoint: t.endpoint.clone(),
            dead_lettered_at: time(t.dead_lettered_at),
            attempts: t.attempts,
            kind: t.kind,
            last_status: t.last_status,
            last_error: t.last_error.clone(),
            last_response_body: t.last_response_body.clone(),
            last_response_truncated: t.last_response_truncated,
            attempt_log: t
                .attempt_log
                .iter()
                .map(|a| AttemptView {
                    at: time(a.at),
                    status: a.status,
                    error: a.error.clone(),
                })
                .collect(),
        }
    }
}

/// One attempt of a dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub error: String,
}

/// The body of `POST .../replay` and `DELETE .../messages`: which messages a replay or purge takes: `ids`, a filter, or `all`.
/// Filters combine (all must match); `status` is a comma-separated list
/// (any may match) of statuses (`503`), classes (`5xx`), `transport`,
/// `handler`; `since` (inclusive) and `until` (exclusive) are RFC 3339
/// times or durations ago (`"30m"`), read against the dead-lettered time of
/// a dead letter and the received time of any other message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<String>,
    /// Every message in the store (needed when nothing else is given).
    #[serde(default, skip_serializing_if = "is_false")]
    pub all: bool,
    /// Replay only: where the messages go; default: the store each was
    /// dead-lettered from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_store: Option<String>,
}

/// What a `dry_run` replay or purge would touch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DryRun {
    /// Messages that match now.
    pub matched: u64,
    /// Of those, how many would go to each store (replay only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, u64>,
    /// Of those, how many a processor holds now (they would be left).
    pub in_flight: u64,
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Replay,
    Purge,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// A replay or purge, as `GET .../jobs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub kind: JobKind,
    pub store: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_store: Option<String>,
    pub state: JobState,
    /// Messages that matched when the job started (`None` while counting).
    pub total: Option<u64>,
    /// Messages moved (replay) or removed (purge) so far.
    pub done: u64,
    /// Matching messages left because a processor held them.
    pub in_flight: u64,
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `DELETE .../stores/{s}/messages/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Purged {
    pub removed: u64,
}

/// A key a processor holds back after its final failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlockedKeyView {
    /// `None` for the messages without a key.
    pub key: Option<String>,
    pub reason: String,
    pub since: String,
}

/// `GET .../processors`: one processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProcessorView {
    pub name: String,
    pub store: String,
    /// `waiting`, `running`, `deactivated` or `draining`.
    pub state: String,
    pub deactivated_reason: Option<String>,
    pub deactivated_since: Option<String>,
    pub waiting_for: Vec<String>,
    /// The first 100 of `blocked_key_count`.
    pub blocked_keys: Vec<BlockedKeyView>,
    pub blocked_key_count: usize,
    pub last_failure: Option<String>,
    pub endpoint: String,
    pub trigger: String,
    pub response_handler: String,
    pub failure_policy: Option<String>,
    pub concurrency: usize,
    pub order_key: Option<String>,
    pub forwarded: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
}

/// `GET .../stores`: one store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoreView {
    pub name: String,
    pub backend: Option<String>,
    pub connected: Option<bool>,
    /// `None` while the backend cannot tell (a broker out of reach).
    pub depth: Option<u64>,
}

/// `GET /api/v1/tenants`: one tenant, and how its routes are reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    pub name: String,
    /// `"/acme"` when its routes are under a path prefix (never for `default`).
    pub prefix: Option<String>,
    pub hosts: Vec<String>,
    /// Its live pipeline revision.
    pub revision: u64,
    pub stores: usize,
    pub processors: usize,
}

/// `POST .../tokens`: the token made, with its secret (answered only here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub name: String,
    pub role: crate::tenant::Role,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub tenant: String,
    pub secret: String,
}

/// `GET .../tokens`: one token, never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub name: String,
    pub role: crate::tenant::Role,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// `GET .../pipeline`: the live revision and its document (as JSON; a
/// document is free-form, so it stays a JSON value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PipelineView {
    pub revision: u64,
    pub document: serde_json::Value,
}

/// `GET .../usage`: a tenant's quotas (each unset one is `[server.quotas]`'s)
/// and what it uses against them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    pub tenant: String,
    pub quotas: crate::config::Quotas,
    pub usage: Usage,
}

/// What a tenant uses now, and what its quotas refused since the start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub routes: usize,
    pub stores: usize,
    pub processors: usize,
    /// Deployed plugins with a live version.
    pub plugins: usize,
    /// Messages and body bytes its stores hold, as the stored quota counts them.
    pub stored_messages: u64,
    pub stored_bytes: u64,
    /// The sum of its stores' depths, as the stores report them.
    pub stores_depth: u64,
    /// Stores that cannot tell their depth now (a broker out of reach).
    pub stores_without_depth: Vec<String>,
    pub plugin_instances: u64,
    pub ingest_refused_over_quota: u64,
    pub ingest_refused_stored_quota: u64,
    pub plugin_calls_refused_no_instance: u64,
}

/// `DELETE /api/v1/tenants/{t}`: the tenant gone, and where its data went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantDeleted {
    pub deleted: String,
    pub data_moved_to: String,
}

/// `POST .../tokens`: the token to make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// 1 to 64 letters, digits, `-`, `_` or `.`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    pub role: crate::tenant::Role,
    /// e.g. `"30d"`; none: the token does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
}

/// `DELETE .../tokens/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenRevoked {
    pub revoked: String,
}

/// `GET /healthz` once the instance is ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `"ok"`.
    pub status: String,
}

/// A refusal: `{"error": "..."}`, the reason in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `422 {"errors": [...]}`: every problem of a document or spec, with its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problems {
    pub errors: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

/// The words of a refusal body, whichever of the two shapes it has.
pub fn refusal_text(body: &serde_json::Value) -> Option<String> {
    if let Ok(e) = ErrorBody::deserialize(body) {
        return Some(e.error);
    }
    let problems = Problems::deserialize(body).ok()?;
    Some(
        problems
            .errors
            .iter()
            .map(|p| format!("\n  {}: {}", p.key, p.reason))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_as_its_words_in_either_shape() {
        let one = serde_json::json!({"error": "no tenant named \"x\""});
        assert_eq!(refusal_text(&one).as_deref(), Some("no tenant named \"x\""));
        let many = serde_json::json!({"errors": [
            {"key": "processors.x.store", "reason": "no store named \"s\""},
            {"key": "routes[0].path", "reason": "must start with /"},
        ]});
        assert_eq!(
            refusal_text(&many).as_deref(),
            Some(
                "\n  processors.x.store: no store named \"s\"\n  routes[0].path: must start with /"
            )
        );
        assert_eq!(refusal_text(&serde_json::json!("Bad Gateway")), None);
    }
}
