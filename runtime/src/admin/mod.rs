//! The admin API: health, metrics, processors, stores and plugins (JSON), on its own listener.
//!
//! `/healthz` and `/metrics` are always open; `/api/v1/*` needs
//! `Authorization: Bearer <admin_token>` when a token is configured.

pub mod client;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{Config, Document, Format, ServerSettings};
use crate::metrics::Metrics;
use crate::pipeline::{Applied, ApplyError, Options, Pipeline};
use crate::plugins::registry::{DeployError, MAX_COMPONENT, Registry};
use crate::processor::{ActivateError, ProcessorHandle, State as ProcessorState};
use crate::store::{Message, Stores};

/// Most messages one peek returns.
pub const MAX_PEEK: usize = 1000;
const DEFAULT_PEEK: usize = 10;

/// What the admin API reads and controls.
pub struct AdminState {
    /// The live pipeline: its stores and processors, and applies.
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    pub plugins: Arc<Registry>,
    pub token: Option<String>,
    /// The config file `wharf reload` re-reads (none for an instance started without one).
    pub config_file: Option<PathBuf>,
    /// The server settings the instance started with.
    pub server: ServerSettings,
    /// Set once routes are bound and processors started.
    pub ready: AtomicBool,
}

/// The admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/processors", get(list_processors))
        .route("/processors/{name}/activate", post(activate))
        .route("/processors/{name}/deactivate", post(deactivate))
        .route("/stores", get(list_stores))
        .route("/stores/{name}/messages", get(peek_messages))
        .route("/plugins", get(list_plugins))
        .route("/plugins/{name}", put(deploy_plugin).get(get_plugin))
        .route("/plugins/{name}/rollback", post(rollback_plugin))
        .route("/pipeline", put(apply_pipeline).get(get_pipeline))
        .route("/pipeline/revisions", get(list_revisions))
        .route("/pipeline/rollback", post(rollback_pipeline))
        .route("/pipeline/reload", post(reload_pipeline))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .nest("/api/v1", api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .with_state(state)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "admin API needs Authorization: Bearer <admin_token>",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        axum::Json(json!({ "status": "ok" })).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn depths(stores: &Stores) -> Vec<(String, Option<u64>)> {
    let mut out = Vec::with_capacity(stores.len());
    for (name, store) in stores {
        out.push((name.clone(), store.depth().await.ok()));
    }
    out
}

async fn prometheus(State(state): State<Arc<AdminState>>) -> Response {
    let view = state.pipeline.view();
    let depths: Vec<(String, u64)> = depths(&view.stores)
        .await
        .into_iter()
        .filter_map(|(name, d)| d.map(|d| (name, d)))
        .collect();
    let states: Vec<(String, &'static str)> = view
        .processors
        .iter()
        .map(|p| (p.labels.name.clone(), p.state().name()))
        .collect();
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

fn processor_json(p: &ProcessorHandle) -> Value {
    let state = p.state();
    let (reason, since) = match &state {
        ProcessorState::Deactivated(d) => (Some(d.reason.clone()), Some(d.since.clone())),
        _ => (None, None),
    };
    let waiting_for = match &state {
        ProcessorState::Waiting { plugins } => plugins.clone(),
        _ => Vec::new(),
    };
    json!({
        "name": p.labels.name,
        "store": p.labels.store,
        "state": state.name(),
        "deactivated_reason": reason,
        "deactivated_since": since,
        "waiting_for": waiting_for,
        "last_failure": p.last_failure(),
        "endpoint": p.labels.endpoint,
        "trigger": p.labels.trigger,
        "response_handler": p.labels.handler,
        "failure_policy": p.labels.policy,
        "forwarded": p.metrics.forwarded.get(),
        "retried": p.metrics.retried.get(),
        "dead_lettered": p.metrics.dead_lettered.get(),
        "dropped": p.metrics.dropped.get(),
    })
}

async fn list_processors(State(state): State<Arc<AdminState>>) -> Response {
    let view = state.pipeline.view();
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
    state: &AdminState,
    name: &str,
    change: impl FnOnce(&ProcessorHandle) -> Result<(), ActivateError>,
) -> Response {
    let view = state.pipeline.view();
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

async fn activate(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    with_processor(&state, &name, |p| p.activate().map(|_| ()))
}

async fn deactivate(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    with_processor(&state, &name, |p| {
        p.deactivate("deactivated through the admin API");
        Ok(())
    })
}

async fn list_stores(State(state): State<Arc<AdminState>>) -> Response {
    let view = state.pipeline.view();
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
struct PeekQuery {
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

async fn peek_messages(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    Query(query): Query<PeekQuery>,
) -> Response {
    let view = state.pipeline.view();
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
fn used_by(state: &AdminState, name: &str) -> Vec<String> {
    state
        .pipeline
        .view()
        .processors
        .iter()
        .filter(|p| p.labels.handler == name || p.labels.policy.as_deref() == Some(name))
        .map(|p| p.labels.name.clone())
        .collect()
}

async fn list_plugins(State(state): State<Arc<AdminState>>) -> Response {
    axum::Json(state.plugins.list()).into_response()
}

async fn get_plugin(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    match state.plugins.get(&name) {
        Some(view) => {
            let mut out = json!(view);
            out["used_by"] = json!(used_by(&state, &name));
            axum::Json(out).into_response()
        }
        None => deploy_error(&DeployError::Unknown(name)),
    }
}

/// `PUT /api/v1/plugins/{name}` with the component's bytes as the body.
async fn deploy_plugin(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
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
    let registry = state.plugins.clone();
    let deploy = to_the_end(async move { registry.deploy(&name, bytes.to_vec()).await }).await;
    match deploy {
        Ok(deployed) => {
            let status = if deployed.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(json!(deployed))).into_response()
        }
        Err(e) => deploy_error(&e),
    }
}

#[derive(Deserialize)]
struct RollbackQuery {
    version: Option<u32>,
}

/// `POST /api/v1/plugins/{name}/rollback[?version=N]`: the version before the live one, or N.
async fn rollback_plugin(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    Query(query): Query<RollbackQuery>,
) -> Response {
    let registry = state.plugins.clone();
    let rollback = to_the_end(async move { registry.rollback(&name, query.version).await }).await;
    match rollback {
        Ok(live) => axum::Json(json!(live)).into_response(),
        Err(e) => deploy_error(&e),
    }
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
pub struct TaskFailed(String);

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

/// Largest pipeline document an apply takes.
pub const MAX_DOCUMENT: usize = 16 << 20;

#[derive(Deserialize)]
struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
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
        Ok(applied) => axum::Json(json!(applied)).into_response(),
        Err(ApplyError::Invalid(problems)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({
                "errors": problems
                    .iter()
                    .map(|p| json!({"key": p.key, "reason": p.reason}))
                    .collect::<Vec<_>>()
            })),
        )
            .into_response(),
        Err(e @ ApplyError::Conflict(_)) => error(StatusCode::CONFLICT, e),
        Err(e @ ApplyError::Storage(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `PUT /api/v1/pipeline[?dry_run=true][&force=true]`: a TOML or JSON document.
async fn apply_pipeline(
    State(state): State<Arc<AdminState>>,
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
    let pipeline = state.pipeline.clone();
    let options = query.options();
    applied(to_the_end(async move { pipeline.apply(document, "api", options).await }).await)
}

async fn get_pipeline(State(state): State<Arc<AdminState>>) -> Response {
    let view = state.pipeline.view();
    let (revision, document) = (view.revision, view.document.clone());
    axum::Json(json!({"revision": revision, "document": document})).into_response()
}

async fn list_revisions(State(state): State<Arc<AdminState>>) -> Response {
    match state.pipeline.revisions() {
        Ok(list) => axum::Json(json!(list)).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
struct RollbackPipelineQuery {
    revision: Option<u64>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    force: bool,
}

/// `POST /api/v1/pipeline/rollback?revision=N`: applies revision N again, as a new revision.
async fn rollback_pipeline(
    State(state): State<Arc<AdminState>>,
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
    let pipeline = state.pipeline.clone();
    let rolled = to_the_end(async move { pipeline.rollback(revision, options).await }).await;
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
    let applied = state
        .pipeline
        .apply(config.document, "file", options)
        .await?;
    Ok((applied, notes))
}

/// `POST /api/v1/pipeline/reload[?dry_run=true][&force=true]`.
async fn reload_pipeline(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<ApplyQuery>,
) -> Response {
    let options = query.options();
    let reloaded = to_the_end(async move { reload_with(&state, options).await }).await;
    match reloaded {
        Ok((applied, notes)) => {
            let mut out = json!(applied);
            out["notes"] = json!(notes);
            axum::Json(out).into_response()
        }
        Err(e) => applied(Err(e)),
    }
}
