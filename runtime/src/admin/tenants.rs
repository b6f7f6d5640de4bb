//! Tenants: create or change (`PUT`), list, show, delete.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;

use super::extract::{Path, Query};
use super::{AdminState, Principal, error, invalid, to_the_end, unknown_tenant};
use crate::api::{ErrorBody, Problems, TenantDeleted, TenantView, Usage, UsageView};
use crate::config::TenantSpec;
use crate::tenant::{ChangeError, Tenant};

/// Largest tenant spec a `PUT` takes.
const MAX_SPEC: usize = 1 << 20;

/// A tenant as the admin API shows it.
pub(super) fn tenant_view(tenant: &Tenant) -> TenantView {
    let view = tenant.pipeline.view();
    TenantView {
        name: tenant.name.clone(),
        prefix: tenant
            .spec
            .prefix_segment(&tenant.name)
            .filter(|_| tenant.name != crate::tenant::DEFAULT)
            .map(|p| format!("/{p}")),
        hosts: tenant.spec.host_names(),
        revision: view.revision,
        stores: view.stores.len(),
        processors: view.processors.len(),
    }
}

fn change_error(e: &ChangeError) -> Response {
    match e {
        ChangeError::Name(_) => error(StatusCode::BAD_REQUEST, e),
        ChangeError::Unknown(_) => error(StatusCode::NOT_FOUND, e),
        ChangeError::Conflict(_) => error(StatusCode::CONFLICT, e),
        ChangeError::Failed(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        ChangeError::Invalid(problems) => invalid(problems),
    }
}

impl From<super::TaskFailed> for ChangeError {
    fn from(e: super::TaskFailed) -> ChangeError {
        ChangeError::Conflict(format!("the change failed: {}", e.0))
    }
}

/// The tenants the caller sees: all for the operator, its own for a tenant token.
#[utoipa::path(get, path = "/tenants", tag = "tenants", responses((status = 200, body = Vec<TenantView>)))]
pub(super) async fn list_tenants(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
) -> Response {
    axum::Json(
        state
            .tenants
            .all()
            .iter()
            .filter(|t| principal.sees(&t.name))
            .map(|t| tenant_view(t))
            .collect::<Vec<_>>(),
    )
    .into_response()
}

/// Only the operator creates, changes or deletes tenants; for a tenant
/// token another tenant does not exist.
fn not_operator(principal: &Principal, tenant: &str) -> Option<Response> {
    match principal {
        Principal::Operator => None,
        p if !p.sees(tenant) => Some(unknown_tenant(tenant)),
        _ => Some(error(
            StatusCode::FORBIDDEN,
            "only the operator token (server.admin_token) creates, changes or deletes tenants",
        )),
    }
}

#[derive(Deserialize)]
pub(super) struct TenantPath {
    tenant: String,
}

/// One tenant and how its routes are reached.
#[utoipa::path(get, path = "/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "the tenant", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    responses(
        (status = 200, body = TenantView),
        (status = 404, body = ErrorBody, description = "no such tenant (or not the token's)"),
    ))]
pub(super) async fn get_tenant(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(TenantPath { tenant }): Path<TenantPath>,
) -> Response {
    match state
        .tenants
        .get(&tenant)
        .filter(|_| principal.sees(&tenant))
    {
        Some(t) => axum::Json(tenant_view(&t)).into_response(),
        None => change_error(&ChangeError::Unknown(tenant)),
    }
}

/// Creates a tenant or changes how its routes are reached and its quotas
/// (the operator's only); an empty body takes the defaults.
#[utoipa::path(put, path = "/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "the tenant", pattern = "^[a-z0-9][a-z0-9-]{0,62}$")),
    request_body(content = Option<TenantSpec>, content_type = "application/json"),
    responses(
        (status = 201, body = TenantView, description = "created"),
        (status = 200, body = TenantView, description = "changed, or the same"),
        (status = 400, body = ErrorBody, description = "a name that is not a slug"),
        (status = 403, body = ErrorBody, description = "not the operator's token"),
        (status = 409, body = ErrorBody, description = "another change is under way"),
        (status = 413, body = ErrorBody, description = "over 1 MiB"),
        (status = 422, body = Problems, description = "a spec that does not read, or a prefix or host another tenant claims"),
    ))]
pub(super) async fn put_tenant(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(TenantPath { tenant }): Path<TenantPath>,
    request: Request,
) -> Response {
    if let Some(refused) = not_operator(&principal, &tenant) {
        return refused;
    }
    let bytes = match axum::body::to_bytes(request.into_body(), MAX_SPEC).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format_args!("reading the tenant (at most {MAX_SPEC} bytes): {e}"),
            );
        }
    };
    let spec: TenantSpec = if bytes.iter().all(u8::is_ascii_whitespace) {
        TenantSpec::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(spec) => spec,
            Err(e) => {
                return change_error(&ChangeError::Invalid(vec![crate::config::Invalid {
                    key: "tenant".into(),
                    reason: e.to_string(),
                }]));
            }
        }
    };
    let tenants = state.tenants.clone();
    let name = tenant.clone();
    let put = to_the_end(async move { tenants.put(&name, spec).await }).await;
    match (put, state.tenants.get(&tenant)) {
        (Ok(created), Some(t)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(tenant_view(&t))).into_response()
        }
        (Ok(_), None) => change_error(&ChangeError::Unknown(tenant)),
        (Err(e), _) => change_error(&e),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteQuery {
    /// Delete it although its stores hold messages (its data is moved aside).
    #[serde(default)]
    force: bool,
}

/// Deletes a tenant (the operator's only): its pipeline stops and its data
/// is moved aside.
#[utoipa::path(delete, path = "/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "the tenant", pattern = "^[a-z0-9][a-z0-9-]{0,62}$"), DeleteQuery),
    responses(
        (status = 200, body = TenantDeleted),
        (status = 400, body = ErrorBody, description = "a name that is not a slug, or `default`"),
        (status = 403, body = ErrorBody, description = "not the operator's token"),
        (status = 404, body = ErrorBody, description = "no such tenant"),
        (status = 409, body = ErrorBody, description = "its stores hold messages (see `force`)"),
    ))]
pub(super) async fn delete_tenant(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(TenantPath { tenant }): Path<TenantPath>,
    Query(query): Query<DeleteQuery>,
) -> Response {
    if let Some(refused) = not_operator(&principal, &tenant) {
        return refused;
    }
    let tenants = state.tenants.clone();
    let name = tenant.clone();
    let deleted = to_the_end(async move { tenants.delete(&name, query.force).await }).await;
    match deleted {
        Ok(aside) => axum::Json(TenantDeleted {
            deleted: tenant,
            data_moved_to: aside.display().to_string(),
        })
        .into_response(),
        Err(e) => change_error(&e),
    }
}

/// What the tenant uses, against each quota.
#[utoipa::path(get, path = "/usage", tag = "tenants", responses((status = 200, body = UsageView)))]
pub(super) async fn usage(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    let view = tenant.pipeline.view();
    let mut depth = 0u64;
    let mut unknown = Vec::new();
    for (name, d) in super::objects::depths(&view.stores).await {
        match d {
            Some(n) => depth += n,
            None => unknown.push(name),
        }
    }
    let (stored_messages, stored_bytes) = tenant.limits.stored();
    let instances = tenant.limits.instances();
    let routes = view
        .document
        .get("routes")
        .and_then(|r| r.as_array())
        .map_or(0, Vec::len);
    let plugins = tenant
        .plugins
        .list()
        .iter()
        .filter(|p| p.live.is_some())
        .count();
    axum::Json(UsageView {
        tenant: tenant.name.clone(),
        quotas: tenant.limits.quotas(),
        usage: Usage {
            routes,
            stores: view.stores.len(),
            processors: view.processors.len(),
            plugins,
            stored_messages,
            stored_bytes,
            stores_depth: depth,
            stores_without_depth: unknown,
            plugin_instances: instances.in_use(),
            ingest_refused_over_quota: tenant.limits.refused(),
            ingest_refused_stored_quota: tenant.limits.refused_stored(),
            plugin_calls_refused_no_instance: instances.refused(),
        },
    })
    .into_response()
}
