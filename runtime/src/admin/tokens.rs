//! A tenant's tokens: create (the secret is answered once), list, revoke.

use std::sync::Arc;

use axum::Extension;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{Named, error};
use crate::tenant::{Role, Tenant, TokenError};

fn token_error(e: &TokenError) -> Response {
    let status = match e {
        TokenError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        TokenError::Exists(_) => StatusCode::CONFLICT,
        TokenError::Unknown(_) => StatusCode::NOT_FOUND,
        TokenError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

/// `POST .../tokens` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    name: String,
    role: Role,
    /// e.g. `"30d"`; none: the token does not expire.
    #[serde(default)]
    expires_in: Option<String>,
}

pub(super) async fn create_token(
    Extension(tenant): Extension<Arc<Tenant>>,
    body: axum::body::Bytes,
) -> Response {
    // A read token's POST was refused by the scope layer.
    let new: NewToken = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format_args!(
                    "a token is {{\"name\", \"role\": \"admin\" | \"read\" | \"ingress\", \"expires_in\"?}}: {e}"
                ),
            );
        }
    };
    let expires_in = match new.expires_in.as_deref().map(crate::config::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format_args!("expires_in: {e}"),
            );
        }
    };
    match tenant.tokens.create(&new.name, new.role, expires_in) {
        Ok((record, secret)) => {
            let created = crate::api::TokenCreated {
                name: record.name,
                role: record.role,
                created_at: record.created_at,
                expires_at: record.expires_at,
                tenant: tenant.name.clone(),
                secret,
            };
            (StatusCode::CREATED, axum::Json(created)).into_response()
        }
        Err(e) => token_error(&e),
    }
}

pub(super) async fn list_tokens(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    axum::Json(tenant.tokens.list()).into_response()
}

pub(super) async fn revoke_token(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
) -> Response {
    match tenant.tokens.revoke(&name) {
        Ok(()) => axum::Json(json!({"revoked": name})).into_response(),
        Err(e) => token_error(&e),
    }
}
