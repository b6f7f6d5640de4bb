//! A tenant's plugins: deploy, list, show, roll back.

use std::sync::Arc;

use axum::Extension;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::Deserialize;

use super::extract::{Path, Query};
use super::openapi::Binary;
use super::{Named, error, to_the_end};
use crate::api::ErrorBody;
use crate::plugins::registry::{DeployError, Deployed, MAX_COMPONENT, PluginView};
use crate::tenant::Tenant;

fn deploy_error(e: &DeployError) -> Response {
    let status = match e {
        DeployError::Name(_) => StatusCode::BAD_REQUEST,
        DeployError::Reserved(_) | DeployError::NothingToRollBackTo(_) => StatusCode::CONFLICT,
        DeployError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        DeployError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DeployError::Unknown(_) | DeployError::NoVersion { .. } => StatusCode::NOT_FOUND,
        DeployError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

/// The processors that call plugin `name`.
fn used_by(tenant: &Tenant, name: &str) -> Vec<String> {
    tenant
        .pipeline
        .view()
        .processors
        .iter()
        .filter(|p| p.labels.handler == name || p.labels.policy.as_deref() == Some(name))
        .map(|p| p.labels.name.clone())
        .collect()
}

/// The tenant's deployed plugins, their versions and which is live.
#[utoipa::path(get, path = "/plugins", tag = "plugins", responses((status = 200, body = Vec<PluginView>)))]
pub(super) async fn list_plugins(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    axum::Json(tenant.plugins.list()).into_response()
}

/// One plugin, with the processors that call it.
#[utoipa::path(get, path = "/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "the plugin")),
    responses(
        (status = 200, body = PluginView),
        (status = 404, body = ErrorBody, description = "no such plugin"),
    ))]
pub(super) async fn get_plugin(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
) -> Response {
    match tenant.plugins.get(&name) {
        Some(view) => axum::Json(PluginView {
            used_by: Some(used_by(&tenant, &name)),
            ..view
        })
        .into_response(),
        None => deploy_error(&DeployError::Unknown(name)),
    }
}

/// Deploys a WebAssembly component as the plugin's next version, live at
/// once; it is validated against its world first.
#[utoipa::path(put, path = "/plugins/{name}", tag = "plugins",
    params(("name" = String, Path, description = "the plugin")),
    request_body(content = Binary, content_type = "application/octet-stream",
        description = "the component's bytes (any content type is taken; `wharf deploy` sends `application/wasm`)"),
    responses(
        (status = 201, body = Deployed, description = "deployed as a new version, live now"),
        (status = 200, body = Deployed, description = "these are the live version's bytes already"),
        (status = 400, body = ErrorBody, description = "a name that is not a plugin name, or a body that does not read"),
        (status = 409, body = ErrorBody, description = "a reserved name (the built-in handler)"),
        (status = 413, body = ErrorBody, description = "over 64 MiB"),
        (status = 422, body = ErrorBody, description = "not a component of a plugin world, or over the tenant's plugin quota"),
    ))]
pub(super) async fn deploy_plugin(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
    request: Request,
) -> Response {
    // The plugin quota counts deployed plugins; a new version of one is not another.
    if let Some(max) = tenant.limits.quotas().plugins {
        let deployed: Vec<String> = tenant
            .plugins
            .list()
            .into_iter()
            .filter(|p| p.live.is_some())
            .map(|p| p.name)
            .collect();
        if !deployed.contains(&name) && deployed.len() as u64 >= max {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format_args!(
                    "tenant {:?} has {} deployed plugin(s), its quota; {name:?} would be one more",
                    tenant.name,
                    deployed.len()
                ),
            );
        }
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared.filter(|&size| size > MAX_COMPONENT) {
        return deploy_error(&DeployError::TooLarge { size });
    }
    let bytes = match axum::body::to_bytes(request.into_body(), MAX_COMPONENT).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                deploy_error(&DeployError::TooLarge {
                    size: MAX_COMPONENT + 1,
                })
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format_args!("reading the body: {e}"),
                )
            };
        }
    };
    let registry = tenant.plugins.clone();
    let deploy = to_the_end(async move { registry.deploy(&name, bytes.to_vec()).await }).await;
    match deploy {
        Ok(deployed) => {
            let status = if deployed.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(deployed)).into_response()
        }
        Err(e) => deploy_error(&e),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RollbackQuery {
    /// The version to make live (default: the one before the live one).
    version: Option<u32>,
}

/// Makes the version before the live one live again, or version N.
#[utoipa::path(post, path = "/plugins/{name}/rollback", tag = "plugins",
    params(("name" = String, Path, description = "the plugin"), RollbackQuery),
    responses(
        (status = 200, body = Deployed, description = "the version live now"),
        (status = 404, body = ErrorBody, description = "no such plugin, or no such version"),
        (status = 409, body = ErrorBody, description = "there is no version before the live one"),
    ))]
pub(super) async fn rollback_plugin(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
    Query(query): Query<RollbackQuery>,
) -> Response {
    let registry = tenant.plugins.clone();
    let rollback = to_the_end(async move { registry.rollback(&name, query.version).await }).await;
    match rollback {
        Ok(live) => axum::Json(live).into_response(),
        Err(e) => deploy_error(&e),
    }
}
