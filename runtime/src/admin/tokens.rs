//! A tenant's tokens: create (the secret is answered once), list, revoke.

use std::sync::Arc;

use axum::Extension;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::extract::{Body, Path};
use super::{Named, error};
use crate::api::{ErrorBody, NewToken, TokenCreated, TokenRevoked, TokenView};
use crate::tenant::{Tenant, TokenError};

fn token_error(e: &TokenError) -> Response {
    let status = match e {
        TokenError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        TokenError::Exists(_) => StatusCode::CONFLICT,
        TokenError::Unknown(_) => StatusCode::NOT_FOUND,
        TokenError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

/// Makes a token of the tenant; its secret is answered only here (it is
/// kept as a SHA-256).
#[utoipa::path(post, path = "/tokens", tag = "tokens",
    request_body(content = NewToken, content_type = "application/json"),
    responses(
        (status = 201, body = TokenCreated),
        (status = 409, body = ErrorBody, description = "a token of that name exists"),
        (status = 422, body = ErrorBody, description = "a body that does not read, a bad name or a bad expires_in"),
    ))]
pub(super) async fn create_token(
    Extension(tenant): Extension<Arc<Tenant>>,
    Body(body): Body,
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
            let created = TokenCreated {
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

/// The tenant's tokens, never their secrets.
#[utoipa::path(get, path = "/tokens", tag = "tokens", responses((status = 200, body = Vec<TokenView>)))]
pub(super) async fn list_tokens(Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    let tokens: Vec<TokenView> = tenant
        .tokens
        .list()
        .into_iter()
        .map(|t| TokenView {
            name: t.name,
            role: t.role,
            created_at: t.created_at,
            expires_at: t.expires_at,
        })
        .collect();
    axum::Json(tokens).into_response()
}

/// Revokes a token: it opens nothing from now on.
#[utoipa::path(delete, path = "/tokens/{name}", tag = "tokens",
    params(("name" = String, Path, description = "the token")),
    responses(
        (status = 200, body = TokenRevoked),
        (status = 404, body = ErrorBody, description = "no such token"),
    ))]
pub(super) async fn revoke_token(
    Extension(tenant): Extension<Arc<Tenant>>,
    Path(Named { name }): Path<Named>,
) -> Response {
    match tenant.tokens.revoke(&name) {
        Ok(()) => axum::Json(TokenRevoked { revoked: name }).into_response(),
        Err(e) => token_error(&e),
    }
}
