//! A small client of the admin API, for the CLI commands that talk to a
//! running instance (`wharf deploy`, `wharf plugins`, `wharf rollback`,
//! `wharf status`, `wharf dlq`, ...).

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a call to the admin API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("admin URL {0:?}: expected http://HOST:PORT")]
    Url(String),
    #[error("cannot reach the admin API at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
}

/// Where a running instance's admin API is, and its token.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    authority: String,
    token: Option<String>,
}

impl AdminClient {
    pub fn new(url: &str, token: Option<String>) -> Result<AdminClient, ClientError> {
        let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.to_owned()))?;
        let authority = match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(authority)) if authority.port().is_some() => authority.to_string(),
            _ => return Err(ClientError::Url(url.to_owned())),
        };
        Ok(AdminClient {
            base: url.trim_end_matches('/').to_owned(),
            authority,
            token,
        })
    }

    /// Sends one request without a body, or a component's bytes.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, serde_json::Value), ClientError> {
        self.send(method, path, body.map(|b| ("application/wasm", b)))
            .await
    }

    /// Sends one request with a body of the given content type; a non-2xx
    /// answer is an error carrying the API's message (each problem of a 422
    /// on a line of its own).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let (status, _, value) = self.send_with_headers(method, path, body).await?;
        Ok((status, value))
    }

    /// Like [`AdminClient::send`], with the answer's headers (a page's cursor).
    pub async fn send_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, http::HeaderMap, serde_json::Value), ClientError> {
        let connect_error = |reason: String| ClientError::Connect {
            url: self.base.clone(),
            reason,
        };
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| connect_error(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| connect_error(e.to_string()))?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
        if status.is_success() {
            Ok((status, headers, value))
        } else {
            let message = crate::api::refusal_text(&value).unwrap_or_else(|| value.to_string());
            Err(ClientError::Refused { status, message })
        }
    }
}
