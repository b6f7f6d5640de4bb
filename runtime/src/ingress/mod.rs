//! Ingress: the configured routes, each writing accepted requests to its store.
//!
//! Every tenant's pipeline has its own [`Routes`]; the [`Dispatch`] picks
//! the tenant of a request: by its `Host` (a tenant's `hosts`), else by the
//! first path segment (a tenant's prefix, which is stripped), else the
//! `default` tenant with the bare path.
//!
//! A request is answered `202 {"id"}` only after [`StoreChain::append`] returned,
//! which is after the message is durable in some store of the route's chain.
//! Refusals answer JSON `{"error"}`: 404 no route, 401 a route with `auth`
//! and no (or a wrong) bearer token, 429 (with `Retry-After`) over the
//! tenant's ingest quota, 405 method, 415 content
//! type, 413 body too large, 500 no store took it.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prometheus_client::metrics::counter::Counter;

use crate::config::RouteSettings;
use crate::metrics::Metrics;
use crate::store::Message;
use crate::store::chain::{Chains, StoreChain};
use crate::tenant::{Limits, OverQuota, Role, Tokens};

/// Who may send to a route.
enum Auth {
    Open,
    /// `Authorization: Bearer` must carry this token (`bearer_env`).
    Bearer(String),
    /// ... or one of the tenant's live `ingress` tokens (`tenant_tokens`).
    TenantTokens,
}

struct Route {
    settings: RouteSettings,
    auth: Auth,
    chain: StoreChain,
    accepted: Counter,
    allow: HeaderValue,
}

/// The routes of one pipeline revision, by path.
pub struct RouteTable {
    routes: HashMap<String, Route>,
    /// The tenant's metrics.
    metrics: Arc<Metrics>,
    /// The tenant's quotas.
    limits: Arc<Limits>,
    /// The tenant's tokens, for routes with `auth = { tenant_tokens = true }`.
    tokens: Arc<Tokens>,
}

impl RouteTable {
    /// The table for `routes`, each writing through its store's chain.
    /// `bearers` holds the token of each route with `auth`, by path.
    pub fn new(
        routes: &[RouteSettings],
        chains: &Chains,
        metrics: &Arc<Metrics>,
        bearers: &std::collections::BTreeMap<String, String>,
        limits: &Arc<Limits>,
        tokens: &Arc<Tokens>,
    ) -> RouteTable {
        let routes = routes
            .iter()
            .filter_map(|settings| {
                let chain = chains.get(&settings.store)?.clone();
                let allow = settings
                    .methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let auth = match bearers.get(&settings.path) {
                    Some(token) => Auth::Bearer(token.clone()),
                    None if settings.tenant_tokens => Auth::TenantTokens,
                    None => Auth::Open,
                };
                let route = Route {
                    auth,
                    accepted: metrics.accepted(&settings.path),
                    allow: HeaderValue::from_str(&allow)
                        .unwrap_or(HeaderValue::from_static("POST")),
                    settings: settings.clone(),
                    chain,
                };
                Some((route.settings.path.clone(), route))
            })
            .collect();
        RouteTable {
            routes,
            metrics: metrics.clone(),
            limits: limits.clone(),
            tokens: tokens.clone(),
        }
    }

    pub fn empty(metrics: &Arc<Metrics>, limits: &Arc<Limits>, tokens: &Arc<Tokens>) -> RouteTable {
        RouteTable {
            routes: HashMap::new(),
            metrics: metrics.clone(),
            limits: limits.clone(),
            tokens: tokens.clone(),
        }
    }
}

/// The route table live now. A pipeline change swaps it whole; a request
/// holds the snapshot it started with until it is answered, so a request in
/// flight on a removed route still gets its 202 or 500.
pub struct Routes(ArcSwap<RouteTable>);

impl Routes {
    pub fn new(table: RouteTable) -> Routes {
        Routes(ArcSwap::from_pointee(table))
    }

    /// Makes `table` live; returns the one it replaced. Once the returned
    /// `Arc` is the only one left, no request uses the old table any more.
    pub fn swap(&self, table: RouteTable) -> Arc<RouteTable> {
        self.0.swap(Arc::new(table))
    }
}

/// Which tenant's routes serve a request; swapped whole when tenants or
/// their routing change.
#[derive(Clone, Default)]
pub struct DispatchTable {
    /// The `default` tenant's routes: bare paths.
    pub default: Option<Arc<Routes>>,
    /// By path prefix without the slash (`acme` serves `/acme/...`).
    pub prefixes: HashMap<String, Arc<Routes>>,
    /// By lower-case host name, without the port.
    pub hosts: HashMap<String, Arc<Routes>>,
}

impl DispatchTable {
    /// The routes for `host` and `path`, and the path within them.
    fn find<'p>(&self, host: Option<&str>, path: &'p str) -> Option<(&Arc<Routes>, &'p str)> {
        if !self.hosts.is_empty()
            && let Some(host) = host
        {
            let name = host.rsplit_once(':').map_or(host, |(name, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    name
                } else {
                    host
                }
            });
            if let Some(routes) = self.hosts.get(&name.to_ascii_lowercase()) {
                return Some((routes, path));
            }
        }
        if !self.prefixes.is_empty() {
            let rest = path.strip_prefix('/').unwrap_or(path);
            let (first, inner) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if let Some(routes) = self.prefixes.get(first) {
                return Some((routes, if inner.is_empty() { "/" } else { inner }));
            }
        }
        self.default.as_ref().map(|routes| (routes, path))
    }
}

/// The dispatch table live now.
#[derive(Default)]
pub struct Dispatch(ArcSwap<DispatchTable>);

impl Dispatch {
    pub fn new(table: DispatchTable) -> Dispatch {
        Dispatch(ArcSwap::from_pointee(table))
    }

    pub fn swap(&self, table: DispatchTable) {
        self.0.store(Arc::new(table));
    }
}

/// The ingress router: every request goes through the live dispatch table
/// and its tenant's live route table.
pub fn router(dispatch: Arc<Dispatch>) -> Router {
    Router::new().fallback(accept).with_state(dispatch)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": message.to_string() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn accept(State(dispatch): State<Arc<Dispatch>>, request: Request) -> Response {
    let path = request.uri().path();
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    // Two snapshot loads: the tenants' dispatch, then that tenant's routes.
    let found = dispatch
        .0
        .load()
        .find(host, path)
        .map(|(routes, inner)| (routes.0.load_full(), inner));
    let Some((table, inner)) = found else {
        return error(StatusCode::NOT_FOUND, format_args!("no route for {path}"));
    };
    let Some(route) = table.routes.get(inner) else {
        return error(StatusCode::NOT_FOUND, format_args!("no route for {path}"));
    };
    let reject = |status: StatusCode, message: String| {
        table.metrics.reject(&route.settings.path, status.as_u16());
        error(status, message)
    };
    let s = &route.settings;
    let authorized = {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        match &route.auth {
            Auth::Open => true,
            Auth::Bearer(expected) => bool::from(subtle::ConstantTimeEq::ct_eq(
                given.as_bytes(),
                expected.as_bytes(),
            )),
            Auth::TenantTokens => table.tokens.check(given) == Some(Role::Ingress),
        }
    };
    if !authorized {
        let mut response = reject(
            StatusCode::UNAUTHORIZED,
            format!("{} needs Authorization: Bearer <token>", s.path),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    if !s.methods.contains(request.method()) {
        let mut response = reject(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed on {}", request.method(), s.path),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, route.allow.clone());
        return response;
    }
    if let Some(consumes) = &s.consumes {
        let media_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        if !media_type.as_ref().is_some_and(|t| consumes.contains(t)) {
            return reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content type {} not accepted on {}; accepted: {}",
                    media_type.as_deref().unwrap_or("(none)"),
                    s.path,
                    consumes.join(", ")
                ),
            );
        }
    }
    let too_large = || format!("body larger than {} bytes", s.max_body);
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_body) {
        return reject(StatusCode::PAYLOAD_TOO_LARGE, too_large());
    }

    let (parts, body) = request.into_parts();
    let limit = usize::try_from(s.max_body).unwrap_or(usize::MAX);
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return reject(StatusCode::PAYLOAD_TOO_LARGE, too_large());
        }
        Err(e) => return reject(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
    };
    // The tenant's quotas, before anything is written: its ingest rate,
    // then a place in its stores.
    let size = body.len() as u64;
    let admitted = table
        .limits
        .admit(size)
        .and_then(|()| table.limits.reserve(size));
    match admitted {
        Ok(()) => {}
        Err(OverQuota::Rate {
            reason,
            retry_after,
        }) => {
            let mut response = reject(StatusCode::TOO_MANY_REQUESTS, reason);
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        Err(OverQuota::Stored { reason }) => {
            return reject(StatusCode::INSUFFICIENT_STORAGE, reason);
        }
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| s.path.clone(), |pq| pq.as_str().to_owned());
    let message = Arc::new(Message::new(
        parts.method,
        path_and_query,
        parts.headers,
        body,
    ));

    match route.chain.append(&message).await {
        Ok(_) => {
            route.accepted.inc();
            let body = format!("{{\"id\":\"{}\"}}", message.id);
            (
                StatusCode::ACCEPTED,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from(body),
            )
                .into_response()
        }
        Err(e) => {
            table.limits.left(size);
            tracing::error!(route = %s.path, message_id = %message.id, error = %e, "message not accepted: answering 500");
            reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}
