//! The admin API: health, metrics, processors, stores and plugins (JSON), on its own listener.
//!
//! `/healthz` and `/metrics` are always open; `/api/v1/*` needs
//! `Authorization: Bearer <admin_token>` when a token is configured.

pub mod client;
pub mod metrics;

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

use crate::plugins::registry::{DeployError, MAX_COMPONENT, Registry};
use crate::processor::ProcessorHandle;
use crate::store::{Message, Stores};
use metrics::Metrics;

/// Most messages one peek returns.
pub const MAX_PEEK: usize = 1000;
const DEFAULT_PEEK: usize = 10;

/// What the admin API reads and controls.
pub struct AdminState {
    pub stores: Stores,
    pub processors: Vec<ProcessorHandle>,
    pub metrics: Arc<Metrics>,
    pub plugins: Arc<Registry>,
    pub token: Option<String>,
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
    let depths: Vec<(String, u64)> = depths(&state.stores)
        .await
        .into_iter()
        .filter_map(|(name, d)| d.map(|d| (name, d)))
        .collect();
    let text = state.metrics.encode(&depths);
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
    json!({
        "name": p.name,
        "store": p.store,
        "state": p.state(),
        "deactivated_reason": p.reason(),
        "last_failure": p.last_failure(),
        "endpoint": p.endpoint,
        "trigger": p.trigger,
        "response_handler": p.handler,
        "failure_policy": p.policy,
        "forwarded": p.metrics.forwarded.get(),
        "retried": p.metrics.retried.get(),
        "dead_lettered": p.metrics.dead_lettered.get(),
        "dropped": p.metrics.dropped.get(),
    })
}

async fn list_processors(State(state): State<Arc<AdminState>>) -> Response {
    axum::Json(
        state
            .processors
            .iter()
            .map(processor_json)
            .collect::<Vec<_>>(),
    )
    .into_response()
}

/// Applies `change` to the processor `name` and answers its new view.
fn with_processor(
    state: &AdminState,
    name: &str,
    change: impl FnOnce(&ProcessorHandle),
) -> Response {
    match state.processors.iter().find(|p| p.name == name) {
        Some(p) => {
            change(p);
            axum::Json(processor_json(p)).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format_args!("no processor named {name:?}"),
        ),
    }
}

async fn activate(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    with_processor(&state, &name, ProcessorHandle::activate)
}

async fn deactivate(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    with_processor(&state, &name, |p| {
        p.deactivate("deactivated through the admin API")
    })
}

async fn list_stores(State(state): State<Arc<AdminState>>) -> Response {
    let mut out = Vec::new();
    for (name, depth) in depths(&state.stores).await {
        let store = state.stores.get(&name);
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
    let Some(store) = state.stores.get(&name) else {
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
        .processors
        .iter()
        .filter(|p| p.handler == name || p.policy.as_deref() == Some(name))
        .map(|p| p.name.clone())
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
    match state.plugins.deploy(&name, bytes.to_vec()).await {
        Ok(deployed) => {
            for p in &state.processors {
                p.plugin_live(&name);
            }
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
    match state.plugins.rollback(&name, query.version).await {
        Ok(live) => {
            for p in &state.processors {
                p.plugin_live(&name);
            }
            axum::Json(json!(live)).into_response()
        }
        Err(e) => deploy_error(&e),
    }
}
