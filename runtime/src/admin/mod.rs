//! The admin API: health, metrics, processors and stores (JSON), on its own listener.
//!
//! `/healthz` and `/metrics` are always open; `/api/v1/*` needs
//! `Authorization: Bearer <admin_token>` when a token is configured.

pub mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

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
