//! A tenant's processors (state, activate, deactivate) and stores (depth, peek).

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Named, error};
use crate::processor::{ActivateError, ProcessorHandle, State as ProcessorState};
use crate::store::{Message, Stores};
use crate::tenant::Tenant;

/// Most messages one peek returns.
pub const MAX_PEEK: usize = 1000;
const DEFAULT_PEEK: usize = 10;
/// Most blocked keys a processor's view lists (`blocked_key_count` has them all).
const MAX_BLOCKED_SHOWN: usize = 100;

pub(super) async fn depths(stores: &Stores) -> Vec<(String, Option<u64>)> {
    let mut out = Vec::with_capacity(stores.len());
    for (name, store) in stores {
        out.push((name.clone(), store.depth().await.ok()));
    }
    out
}

pub(super) fn processor_json(p: &ProcessorHandle) -> Value {
    let state = p.state();
    let (reason, since) = match &state {
        ProcessorState::Deactivated(d) => (Some(d.reason.clone()), Some(d.since.clone())),
        _ => (None, None),
    };
    let waiting_for = match &state {
        ProcessorState::Waiting { plugins } => plugins.clone(),
        _ => Vec::new(),
    };
    let blocked = p.blocked_keys();
    let blocked_keys: Vec<Value> = blocked
        .iter()
        .take(MAX_BLOCKED_SHOWN)
        .map(|(key, d)| json!({"key": key, "reason": d.reason, "since": d.since}))
        .collect();
    json!({
        "name": p.labels.name,
        "store": p.labels.store,
        "state": state.name(),
        "deactivated_reason": reason,
        "deactivated_since": since,
        "waiting_for": waiting_for,
        "blocked_keys": blocked_keys,
        "blocked_key_count": blocked.len(),
        "last_failure": p.last_failure(),
        "endpoint": p.labels.endpoint,
        "trigger": p.labels.trigger,
        "response_handler": p.labels.handler,
        "failure_policy": p.labels.policy,
        "concurrency": p.labels.concurrency,
        "order_key": p.labels.order_key,
        "forwarded": p.metrics.forwarded.get(),
        "retried": p.metrics.retried.get(),
        "dead_lettered": p.metrics.dead_lettered.get(),
        "dropped": p.metrics.dropped.get(),
    })
}

pub(super) async fn list_processors(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    let view = tenant.pipeline.view();
    axum::Json(
        view.processors
            .iter()
            .map(processor_json)
            .collect::<Vec<_>>(),
    )
    .into_response()
}

/// Applies `change` to the processor `name` and answers its new view; a
/// change it refuses answers 409 with the reason.
fn with_processor(
    tenant: &Tenant,
    name: &str,
    change: impl FnOnce(&ProcessorHandle) -> Result<(), ActivateError>,
) -> Response {
    let view = tenant.pipeline.view();
    match view.processors.iter().find(|p| p.labels.name == name) {
        Some(p) => match change(p) {
            Ok(()) => axum::Json(processor_json(p)).into_response(),
            Err(e) => error(StatusCode::CONFLICT, e),
        },
        None => error(
            StatusCode::NOT_FOUND,
            format_args!("no processor named {name:?}"),
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct ActivateQuery {
    /// Activate only this blocked key (empty: the messages without a key).
    key: Option<String>,
}

pub(super) async fn activate(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
    Query(query): Query<ActivateQuery>,
) -> Response {
    let Some(key) = query.key else {
        return with_processor(&tenant, &name, |p| p.activate().map(|_| ()));
    };
    let view = tenant.pipeline.view();
    let Some(p) = view.processors.iter().find(|p| p.labels.name == name) else {
        return error(
            StatusCode::NOT_FOUND,
            format_args!("no processor named {name:?}"),
        );
    };
    let key = Some(key).filter(|k| !k.is_empty());
    if p.activate_key(key.as_deref()) {
        axum::Json(processor_json(p)).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format_args!("processor {name:?} has no blocked key {key:?}"),
        )
    }
}

pub(super) async fn deactivate(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
) -> Response {
    with_processor(&tenant, &name, |p| {
        p.deactivate("deactivated through the admin API");
        Ok(())
    })
}

pub(super) async fn list_stores(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    let view = tenant.pipeline.view();
    let mut out = Vec::new();
    for (name, depth) in depths(&view.stores).await {
        let store = view.stores.get(&name);
        out.push(json!({
            "name": name,
            "backend": store.map(|s| s.backend()),
            "connected": store.map(|s| s.connected()),
            "depth": depth,
        }));
    }
    axum::Json(out).into_response()
}

#[derive(Deserialize)]
pub(super) struct PeekQuery {
    limit: Option<usize>,
}

/// A message as the admin API shows it; the body is text when it is UTF-8.
pub fn message_json(m: &Message) -> Value {
    let mut headers = serde_json::Map::new();
    for name in m.headers.keys() {
        let values: Vec<String> = m
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    let mut out = json!({
        "id": m.id,
        "received_at": chrono::DateTime::from_timestamp_millis(m.received_at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "method": m.method.as_str(),
        "path": m.path,
        "headers": headers,
    });
    match std::str::from_utf8(&m.body) {
        Ok(text) => out["body"] = Value::String(text.to_owned()),
        Err(_) => {
            out["body"] = Value::String(base64::engine::general_purpose::STANDARD.encode(&m.body));
            out["body_base64"] = Value::Bool(true);
        }
    }
    out
}

pub(super) async fn peek_messages(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
    Query(query): Query<PeekQuery>,
) -> Response {
    let view = tenant.pipeline.view();
    let Some(store) = view.stores.get(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format_args!("no store named {name:?}"),
        );
    };
    let limit = query.limit.unwrap_or(DEFAULT_PEEK);
    if limit == 0 || limit > MAX_PEEK {
        return error(
            StatusCode::BAD_REQUEST,
            format_args!("limit must be 1..={MAX_PEEK}"),
        );
    }
    match store.peek(limit).await {
        Ok(messages) => {
            axum::Json(messages.iter().map(message_json).collect::<Vec<_>>()).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
