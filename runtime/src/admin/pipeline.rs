//! A tenant's pipeline: apply (dry or not), the live document, revisions,
//! rollback; and the reload of the config file.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::Deserialize;

use super::extract::Query;
use super::openapi::PipelineDocument;
use super::{AdminState, error, invalid, to_the_end};
use crate::api::{ErrorBody, PipelineView, Problems};
use crate::config::{Config, Document, Format};
use crate::pipeline::revisions::RevisionInfo;
use crate::pipeline::{Applied, ApplyError, Options};
use crate::tenant::Tenant;

/// Largest pipeline document an apply takes.
pub const MAX_DOCUMENT: usize = 16 << 20;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ApplyQuery {
    /// Only answer what would change.
    #[serde(default)]
    dry_run: bool,
    /// Go ahead although stores with messages would be removed (their
    /// data is moved aside).
    #[serde(default)]
    force: bool,
}

impl ApplyQuery {
    fn options(&self) -> Options {
        Options {
            dry_run: self.dry_run,
            force: self.force,
        }
    }
}

/// The answer to an apply: 200 with the revision and the diff, 422 with
/// every problem, 409 with what would be stranded, 500 if the revision
/// could not be written.
fn applied(result: Result<Applied, ApplyError>) -> Response {
    match result {
        Ok(applied) => axum::Json(applied).into_response(),
        Err(ApplyError::Invalid(problems)) => invalid(&problems),
        Err(e @ ApplyError::Conflict(_)) => error(StatusCode::CONFLICT, e),
        Err(e @ ApplyError::Storage(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Applies a pipeline document (the config file's tables without
/// `[server]`, TOML or JSON): only what differs is started, changed or
/// stopped, and the document becomes the next revision.
#[utoipa::path(put, path = "/pipeline", tag = "pipeline",
    params(ApplyQuery),
    request_body(description = "a pipeline document: the config file's tables without `[server]`",
        content((String = "application/toml"), (PipelineDocument = "application/json"))),
    responses(
        (status = 200, body = Applied, description = "the revision live now (or, dry, the one that stays) and the diff"),
        (status = 409, body = ErrorBody, description = "it would strand stored messages (see `force`)"),
        (status = 413, body = ErrorBody, description = "over 16 MiB"),
        (status = 422, body = Problems, description = "every problem of the document, with its key"),
    ))]
pub(super) async fn apply_pipeline(
    State(state): State<Arc<AdminState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    Query(query): Query<ApplyQuery>,
    request: Request,
) -> Response {
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.contains("json"));
    let bytes = match axum::body::to_bytes(request.into_body(), MAX_DOCUMENT).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format_args!("reading the document (at most {MAX_DOCUMENT} bytes): {e}"),
            );
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return applied(Err(ApplyError::Invalid(vec![crate::config::Invalid {
            key: "document".into(),
            reason: "is not UTF-8 text".into(),
        }])));
    };
    let format = match json {
        Some(true) => Format::Json,
        Some(false) if !text.trim_start().starts_with('{') => Format::Toml,
        _ => Format::sniff(text),
    };
    let document = match Document::parse(text, format) {
        Ok(document) => document,
        Err(e) => return applied(Err(e.into())),
    };
    let options = query.options();
    let tenants = state.tenants.clone();
    applied(
        to_the_end(async move {
            let _routes = tenants.routes_changing(&tenant.name).await;
            tenant.pipeline.apply(document, "api", options).await
        })
        .await,
    )
}

/// The live revision and its document (as JSON).
#[utoipa::path(get, path = "/pipeline", tag = "pipeline", responses((status = 200, body = PipelineView)))]
pub(super) async fn get_pipeline(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    let view = tenant.pipeline.view();
    let (revision, document) = (view.revision, view.document.clone());
    axum::Json(crate::api::PipelineView { revision, document }).into_response()
}

/// Every revision kept, oldest first, and which is live.
#[utoipa::path(get, path = "/pipeline/revisions", tag = "pipeline",
    responses((status = 200, body = Vec<RevisionInfo>)))]
pub(super) async fn list_revisions(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    match tenant.pipeline.revisions() {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RollbackPipelineQuery {
    /// The revision to apply again (required).
    revision: Option<u64>,
    /// Only answer what would change.
    #[serde(default)]
    dry_run: bool,
    /// Go ahead although stores with messages would be removed.
    #[serde(default)]
    force: bool,
}

/// Applies revision N again, as a new revision.
#[utoipa::path(post, path = "/pipeline/rollback", tag = "pipeline",
    params(RollbackPipelineQuery),
    responses(
        (status = 200, body = Applied),
        (status = 400, body = ErrorBody, description = "no revision named"),
        (status = 404, body = ErrorBody, description = "no such revision"),
        (status = 409, body = ErrorBody, description = "it would strand stored messages (see `force`)"),
        (status = 422, body = Problems, description = "the revision is no longer valid here (e.g. a plugin it names is gone)"),
    ))]
pub(super) async fn rollback_pipeline(
    State(state): State<Arc<AdminState>>,
    Extension(tenant): Extension<Arc<Tenant>>,
    Query(query): Query<RollbackPipelineQuery>,
) -> Response {
    let Some(revision) = query.revision else {
        return error(
            StatusCode::BAD_REQUEST,
            "name the revision to roll back to: ?revision=N (see GET /api/v1/pipeline/revisions)",
        );
    };
    let options = Options {
        dry_run: query.dry_run,
        force: query.force,
    };
    let tenants = state.tenants.clone();
    let rolled = to_the_end(async move {
        let _routes = tenants.routes_changing(&tenant.name).await;
        tenant.pipeline.rollback(revision, options).await
    })
    .await;
    match rolled {
        Err(ApplyError::Conflict(reasons))
            if reasons
                .iter()
                .any(|r| r.starts_with("there is no revision")) =>
        {
            error(StatusCode::NOT_FOUND, reasons.join("; "))
        }
        result => applied(result),
    }
}

/// Re-reads the config file and applies its pipeline; returns notes about
/// what a reload cannot change (server settings take effect at restart).
pub async fn reload(state: &AdminState) -> Result<(Applied, Vec<String>), ApplyError> {
    reload_with(state, Options::default()).await
}

async fn reload_with(
    state: &AdminState,
    options: Options,
) -> Result<(Applied, Vec<String>), ApplyError> {
    let Some(file) = &state.config_file else {
        return Err(ApplyError::Conflict(vec![
            "this instance was started without a config file; apply a document with PUT /api/v1/pipeline".into(),
        ]));
    };
    let config = Config::load(file)?;
    let mut notes = Vec::new();
    if config.server != state.server {
        notes.push(format!(
            "[server] in {} differs from the running instance's; server settings take effect at restart",
            file.display()
        ));
    }
    // Every tenant the file declares applies on its own (the whole file was
    // validated first); the first refusal stops the reload and names it.
    for (name, declared) in config.tenants {
        let in_tenant = |e: ApplyError| match e {
            ApplyError::Invalid(problems) => ApplyError::Invalid(
                problems
                    .into_iter()
                    .map(|i| crate::config::Invalid {
                        key: format!("tenants.{name}.{}", i.key),
                        reason: i.reason,
                    })
                    .collect(),
            ),
            ApplyError::Conflict(reasons) => ApplyError::Conflict(
                reasons
                    .into_iter()
                    .map(|r| format!("tenants.{name}: {r}"))
                    .collect(),
            ),
            other => other,
        };
        if state.tenants.get(&name).is_none() && options.dry_run {
            notes.push(format!("tenants.{name}: would be created"));
            continue;
        }
        if !options.dry_run
            && let Err(e) = state.tenants.put(&name, declared.spec).await
        {
            return Err(in_tenant(ApplyError::Conflict(vec![e.to_string()])));
        }
        let Some(tenant) = state.tenants.get(&name) else {
            continue;
        };
        let applied = tenant
            .pipeline
            .apply(declared.pipeline, "file", options)
            .await
            .map_err(in_tenant)?;
        if !applied.diff.is_empty() {
            notes.push(format!(
                "tenants.{name}: revision {}\n{}",
                applied.revision,
                applied.diff.render()
            ));
        }
    }
    let default = state.tenants.default_tenant();
    let _routes = state.tenants.routes_changing(&default.name).await;
    let applied = default
        .pipeline
        .apply(config.document, "file", options)
        .await?;
    Ok((applied, notes))
}

/// Re-reads the config file (the operator's only) and applies each
/// tenant's pipeline in it; `notes` say what a reload cannot change.
#[utoipa::path(post, path = "/pipeline/reload", tag = "pipeline",
    params(ApplyQuery),
    responses(
        (status = 200, body = Applied),
        (status = 403, body = ErrorBody, description = "not the operator's token"),
        (status = 409, body = ErrorBody, description = "started without a config file, or it would strand stored messages"),
        (status = 422, body = Problems, description = "every problem of the file, with its key"),
    ))]
pub(super) async fn reload_pipeline(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<super::Principal>,
    Query(query): Query<ApplyQuery>,
) -> Response {
    if !matches!(principal, super::Principal::Operator) {
        return error(
            StatusCode::FORBIDDEN,
            "only the operator token (server.admin_token) reloads the config file",
        );
    }
    let options = query.options();
    let reloaded = to_the_end(async move { reload_with(&state, options).await }).await;
    match reloaded {
        Ok((applied, notes)) => axum::Json(Applied {
            notes: Some(notes),
            ..applied
        })
        .into_response(),
        Err(e) => applied(Err(e)),
    }
}
