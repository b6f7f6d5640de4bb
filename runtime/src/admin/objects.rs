//! A tenant's processors (state, activate, deactivate) and stores (depth).

use std::sync::Arc;

use axum::Extension;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;

use super::extract::{Path, Query};
use super::{Named, error};
use crate::api::{BlockedKeyView, ErrorBody, ProcessorView, StoreView};
use crate::processor::{ActivateError, ProcessorHandle, State as ProcessorState};
use crate::store::Stores;
use crate::tenant::Tenant;

/// Most blocked keys a processor's view lists (`blocked_key_count` has them all).
const MAX_BLOCKED_SHOWN: usize = 100;

pub(super) async fn depths(stores: &Stores) -> Vec<(String, Option<u64>)> {
    let mut out = Vec::with_capacity(stores.len());
    for (name, store) in stores {
        out.push((name.clone(), store.depth().await.ok()));
    }
    out
}

pub(super) fn processor_view(p: &ProcessorHandle) -> ProcessorView {
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
    let blocked_keys = blocked
        .iter()
        .take(MAX_BLOCKED_SHOWN)
        .map(|(key, d)| BlockedKeyView {
            key: key.clone(),
            reason: d.reason.clone(),
            since: d.since.clone(),
        })
        .collect();
    let labels = &p.labels;
    ProcessorView {
        name: labels.name.clone(),
        store: labels.store.clone(),
        state: state.name().to_owned(),
        deactivated_reason: reason,
        deactivated_since: since,
        waiting_for,
        blocked_keys,
        blocked_key_count: blocked.len(),
        last_failure: p.last_failure(),
        endpoint: labels.endpoint.clone(),
        trigger: labels.trigger.clone(),
        response_handler: labels.handler.clone(),
        failure_policy: labels.policy.clone(),
        concurrency: labels.concurrency,
        order_key: labels.order_key.clone(),
        forwarded: p.metrics.forwarded.get(),
        retried: p.metrics.retried.get(),
        dead_lettered: p.metrics.dead_lettered.get(),
        dropped: p.metrics.dropped.get(),
    }
}

/// The tenant's processors: state, why deactivated, blocked keys, last
/// failure and counts.
#[utoipa::path(get, path = "/processors", tag = "processors",
    responses((status = 200, body = Vec<ProcessorView>)))]
pub(super) async fn list_processors(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    let view = tenant.pipeline.view();
    axum::Json(
        view.processors
            .iter()
            .map(processor_view)
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
            Ok(()) => axum::Json(processor_view(p)).into_response(),
            Err(e) => error(StatusCode::CONFLICT, e),
        },
        None => error(
            StatusCode::NOT_FOUND,
            format_args!("no processor named {name:?}"),
        ),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ActivateQuery {
    /// Activate only this blocked key (empty: the messages without a key).
    key: Option<String>,
}

/// Starts a deactivated processor again (its head message first), or lets
/// one blocked key go (`?key=K`).
#[utoipa::path(post, path = "/processors/{name}/activate", tag = "processors",
    params(("name" = String, Path, description = "the processor"), ActivateQuery),
    responses(
        (status = 200, body = ProcessorView, description = "its state now"),
        (status = 404, body = ErrorBody, description = "no such processor, or no such blocked key"),
        (status = 409, body = ErrorBody, description = "it cannot be activated now (e.g. waiting for a plugin)"),
    ))]
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
        axum::Json(processor_view(p)).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format_args!("processor {name:?} has no blocked key {key:?}"),
        )
    }
}

/// Stops a processor after the attempt in flight; its messages stay, and
/// it stays deactivated across a restart.
#[utoipa::path(post, path = "/processors/{name}/deactivate", tag = "processors",
    params(("name" = String, Path, description = "the processor")),
    responses(
        (status = 200, body = ProcessorView, description = "its state now"),
        (status = 404, body = ErrorBody, description = "no such processor"),
    ))]
pub(super) async fn deactivate(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
) -> Response {
    with_processor(&tenant, &name, |p| {
        p.deactivate("deactivated through the admin API");
        Ok(())
    })
}

/// The tenant's stores: backend, connected, depth.
#[utoipa::path(get, path = "/stores", tag = "stores",
    responses((status = 200, body = Vec<StoreView>)))]
pub(super) async fn list_stores(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    let view = tenant.pipeline.view();
    let mut out = Vec::new();
    for (name, depth) in depths(&view.stores).await {
        let store = view.stores.get(&name);
        out.push(StoreView {
            name,
            backend: store.map(|s| s.backend().to_owned()),
            connected: store.map(|s| s.connected()),
            depth,
        });
    }
    axum::Json(out).into_response()
}
