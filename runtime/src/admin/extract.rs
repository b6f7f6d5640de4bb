//! axum's extractors with the admin API's refusals: a path, query or body
//! that does not read is `{"error": "..."}` with axum's status (400, 413,
//! ...), like every other refusal, instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::Response;
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::error;

/// [`axum::extract::Path`], refused as JSON.
pub(super) struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(t)| Path(t))
            .map_err(|r| error(r.status(), format_args!("the path: {}", r.body_text())))
    }
}

/// [`axum::extract::Query`], refused as JSON.
pub(super) struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(t)| Query(t))
            .map_err(|r| error(r.status(), r.body_text()))
    }
}

/// The request body as bytes (up to axum's default limit, 2 MiB), refused as JSON.
pub(super) struct Body(pub axum::body::Bytes);

impl<S> FromRequest<S> for Body
where
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        axum::body::Bytes::from_request(request, state)
            .await
            .map(Body)
            .map_err(|r| error(r.status(), format_args!("the body: {}", r.body_text())))
    }
}
