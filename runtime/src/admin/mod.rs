//! The admin API: health, metrics, and each tenant's processors, stores,
//! plugins and pipeline (JSON), on its own listener.
//!
//! `/healthz` and `/metrics` are always open; `/api/v1/*` needs
//! `Authorization: Bearer <admin_token>` when a token is configured.
//!
//! Every tenant's objects are under `/api/v1/tenants/{tenant}/...`; the
//! `default` tenant's are also at the bare `/api/v1/...` paths. A scope
//! layer puts the tenant a request is about in its extensions, so each
//! handler sees one tenant and nothing else. `objects.rs` holds processors
//! and stores, `messages.rs` a store's messages and jobs, `plugins.rs`
//! plugins, `pipeline.rs` applies and reloads, `tenants.rs` the tenants
//! themselves, `tokens.rs` their tokens.
//!
//! Each handler is registered through `utoipa_axum::routes!` with its
//! `#[utoipa::path]`, so the router and the OpenAPI description
//! (`openapi.rs`, at `/api/v1/openapi.json`) come from the same list;
//! `extract.rs` makes axum's own refusals JSON like the rest.

pub mod client;
mod console;
mod extract;
mod messages;
mod objects;
pub mod openapi;
mod pipeline;
mod plugins;
mod tenants;
mod tokens;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use http::{StatusCode, header};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use extract::Path;

use crate::config::ServerSettings;
use crate::metrics::Metrics;
use crate::pipeline::ApplyError;
use crate::plugins::registry::DeployError;
use crate::processor::State as ProcessorState;
use crate::tenant::{DEFAULT, Role, Tenants};

pub use messages::MAX_PAGE;
pub use pipeline::{MAX_DOCUMENT, reload};

/// What the admin API reads and controls.
pub struct AdminState {
    /// Every tenant: its pipeline, plugins and metrics.
    pub tenants: Arc<Tenants>,
    pub metrics: Arc<Metrics>,
    pub token: Option<String>,
    /// The config file `wharf reload` re-reads (none for an instance started without one).
    pub config_file: Option<PathBuf>,
    /// The server settings the instance started with.
    pub server: ServerSettings,
    /// Set once routes are bound and processors started.
    pub ready: AtomicBool,
}

/// The `{name}` of a path (a processor, store or plugin), beside `{tenant}`.
#[derive(Deserialize)]
pub(super) struct Named {
    pub(super) name: String,
}

/// The endpoints of one tenant's objects; the scope layer says which tenant.
fn tenant_api() -> OpenApiRouter<Arc<AdminState>> {
    OpenApiRouter::new()
        .routes(routes!(objects::list_processors))
        .routes(routes!(objects::activate))
        .routes(routes!(objects::deactivate))
        .routes(routes!(objects::list_stores))
        .routes(routes!(messages::list, messages::purge))
        .routes(routes!(messages::get_one, messages::delete_one))
        .routes(routes!(messages::replay))
        .routes(routes!(messages::list_jobs))
        .routes(routes!(messages::get_job, messages::cancel_job))
        .routes(routes!(plugins::list_plugins))
        .routes(routes!(plugins::deploy_plugin, plugins::get_plugin))
        .routes(routes!(plugins::rollback_plugin))
        .routes(routes!(pipeline::apply_pipeline, pipeline::get_pipeline))
        .routes(routes!(pipeline::list_revisions))
        .routes(routes!(pipeline::rollback_pipeline))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(tenants::usage))
}

/// The admin routes, and the OpenAPI description of what they serve.
fn routes(state: &Arc<AdminState>) -> (Router<Arc<AdminState>>, utoipa::openapi::OpenApi) {
    let api = OpenApiRouter::new()
        .merge(
            tenant_api().route_layer(middleware::from_fn_with_state(state.clone(), default_scope)),
        )
        .nest(
            "/tenants/{tenant}",
            tenant_api().route_layer(middleware::from_fn_with_state(state.clone(), tenant_scope)),
        )
        .routes(routes!(pipeline::reload_pipeline))
        .routes(routes!(tenants::list_tenants))
        .routes(routes!(
            tenants::get_tenant,
            tenants::put_tenant,
            tenants::delete_tenant
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(prometheus))
        .nest("/api/v1", api)
        .split_for_parts()
}

/// The admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    let (routes, api) = routes(&state);
    // Made once: the description is the same for every request.
    let description: Arc<str> = match openapi::finish(api).to_json() {
        Ok(json) => json.into(),
        Err(e) => {
            tracing::error!(error = %e, "cannot write the OpenAPI description");
            r#"{"error": "the OpenAPI description could not be written"}"#.into()
        }
    };
    routes
        .route(
            openapi::PATH,
            get(move || {
                let description = description.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        description.to_string(),
                    )
                }
            }),
        )
        .route("/console", get(console::index))
        .route("/console/", get(console::index))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .with_state(state)
}

/// Bare `/api/v1/...` paths are the `default` tenant's.
async fn default_scope(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    mut request: Request,
    next: Next,
) -> Response {
    if !principal.sees(DEFAULT) {
        return error(StatusCode::NOT_FOUND, "no such admin endpoint");
    }
    if let Some(refused) = principal.refusal(request.method()) {
        return refused;
    }
    let tenant = state.tenants.default_tenant().clone();
    request.extensions_mut().insert(tenant);
    next.run(request).await
}

/// `/api/v1/tenants/{tenant}/...`: that tenant's, or 404 (for a tenant
/// token, any other tenant's is a name that does not exist).
async fn tenant_scope(
    State(state): State<Arc<AdminState>>,
    Extension(principal): Extension<Principal>,
    Path(params): Path<BTreeMap<String, String>>,
    mut request: Request,
    next: Next,
) -> Response {
    let name = params.get("tenant").map_or("", String::as_str);
    let tenant = state.tenants.get(name).filter(|_| principal.sees(name));
    let Some(tenant) = tenant else {
        return unknown_tenant(name);
    };
    if let Some(refused) = principal.refusal(request.method()) {
        return refused;
    }
    request.extensions_mut().insert(tenant);
    next.run(request).await
}

fn unknown_tenant(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format_args!("no tenant named {name:?}"),
    )
}

/// `422 {"errors": [{"key", "reason"}, ...]}`: every problem with its key.
fn invalid(problems: &[crate::config::Invalid]) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(crate::api::Problems {
            errors: problems
                .iter()
                .map(|p| crate::api::Problem {
                    key: p.key.clone(),
                    reason: p.reason.clone(),
                })
                .collect(),
        }),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let body = crate::api::ErrorBody {
        error: message.to_string(),
    };
    (status, axum::Json(body)).into_response()
}

/// Who is calling: the operator (`server.admin_token`, or anyone when it
/// is not set) or a tenant's token.
#[derive(Debug, Clone)]
pub(super) enum Principal {
    Operator,
    Tenant { tenant: String, role: Role },
}

impl Principal {
    /// Whether this caller may see tenant `tenant` at all; a tenant token
    /// sees only its own, and anything else looks like a name that does not exist.
    fn sees(&self, tenant: &str) -> bool {
        match self {
            Principal::Operator => true,
            Principal::Tenant { tenant: own, .. } => own == tenant,
        }
    }

    /// The refusal (403) of a read token's change, if this is one.
    fn refusal(&self, method: &http::Method) -> Option<Response> {
        match self {
            Principal::Tenant {
                role: Role::Read, ..
            } if method != http::Method::GET && method != http::Method::HEAD => Some(error(
                StatusCode::FORBIDDEN,
                "a read token cannot change anything",
            )),
            _ => None,
        }
    }
}

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Puts the caller's [`Principal`] in the request, or answers 401.
async fn authenticate(
    State(state): State<Arc<AdminState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let given = bearer(&request);
    let operator = match (&state.token, given) {
        (Some(token), Some(given)) => bool::from(token.as_bytes().ct_eq(given.as_bytes())),
        (Some(_), None) => false,
        (None, _) => true,
    };
    let tenant = given.and_then(|g| state.tenants.authenticate(g));
    let principal = match (tenant, operator) {
        (Some((_, Role::Ingress)), _) => {
            return error(
                StatusCode::FORBIDDEN,
                "an ingress token only sends messages to its tenant's routes; the admin API needs an admin or read token",
            );
        }
        // A tenant token is a tenant token even where the API is open.
        (Some((tenant, role)), _) => Principal::Tenant { tenant, role },
        (None, true) => Principal::Operator,
        (None, false) => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "admin API needs Authorization: Bearer <admin_token or tenant token>",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Whether the instance takes traffic: routes bound, processors started.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses(
        (status = 200, body = crate::api::Health),
        (status = 503, body = crate::api::ErrorBody, description = "starting"),
    ))]
async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        axum::Json(crate::api::Health {
            status: "ok".into(),
        })
        .into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// Prometheus metrics of every tenant.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
async fn prometheus(State(state): State<Arc<AdminState>>) -> Response {
    let mut depths = Vec::new();
    let mut states = Vec::new();
    for tenant in state.tenants.all() {
        let view = tenant.pipeline.view();
        let label = tenant.metrics.tenant_label();
        for (name, depth) in objects::depths(&view.stores).await {
            if let Some(depth) = depth {
                depths.push((label.clone(), name, depth));
            }
        }
        for p in &view.processors {
            states.push((label.clone(), p.labels.name.clone(), p.state().name()));
        }
    }
    let text = state
        .metrics
        .encode(&depths, &states, &ProcessorState::NAMES);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Runs a change to its end in a task of its own: hyper drops a handler's
/// future when the client goes away, and a change cut in the middle (a
/// revision recorded, processors stopped, not yet started again) must not
/// happen. The task's own failure (a panic) is a 500.
async fn to_the_end<T, E>(
    work: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<TaskFailed> + Send + 'static,
{
    tokio::spawn(work)
        .await
        .unwrap_or_else(|e| Err(E::from(TaskFailed(e.to_string()))))
}

/// A change's task ended without an answer.
#[derive(Debug)]
pub struct TaskFailed(pub(crate) String);

impl From<TaskFailed> for ApplyError {
    fn from(e: TaskFailed) -> ApplyError {
        ApplyError::Storage(crate::pipeline::revisions::RevisionError {
            path: "(apply)".into(),
            reason: format!("the apply failed: {}", e.0),
        })
    }
}

impl From<TaskFailed> for DeployError {
    fn from(e: TaskFailed) -> DeployError {
        DeployError::Io {
            path: "(deploy)".into(),
            reason: format!("the deploy failed: {}", e.0),
        }
    }
}
