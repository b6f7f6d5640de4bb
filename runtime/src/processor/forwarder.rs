//! The HTTP forwarder: one attempt to hand a message to the endpoint.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::store::Message;

/// Largest response body read back (and given to the response handler).
pub const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1),
/// plus the ones set for the endpoint.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "idempotency-key",
];

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The endpoint's answer to one attempt.
#[derive(Debug, Clone)]
pub struct ForwardResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub elapsed: Duration,
}

/// Why an attempt got no response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("transport error: {0}")]
    Transport(String),
}

/// Forwards messages to one endpoint over a keep-alive connection pool.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: Uri,
    method: Option<Method>,
    timeout: Duration,
}

impl Forwarder {
    pub fn new(endpoint: Uri, method: Option<Method>, timeout: Duration) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Forwarder {
            client,
            endpoint,
            method,
            timeout,
        }
    }

    pub fn endpoint(&self) -> &Uri {
        &self.endpoint
    }

    /// The request an attempt sends: body byte for byte, original headers less
    /// hop-by-hop ones, `Idempotency-Key: <message id>`. Host and Content-Length
    /// are set by the client for the endpoint.
    pub fn request(&self, message: &Message) -> Request<Full<Bytes>> {
        let mut headers = HeaderMap::with_capacity(message.headers.len() + 1);
        let listed_in_connection: Vec<String> = message
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .collect();
        for (name, value) in &message.headers {
            let n = name.as_str();
            if NOT_FORWARDED.contains(&n) || listed_in_connection.iter().any(|l| l == n) {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if let Ok(id) = HeaderValue::from_str(&message.id) {
            headers.insert(IDEMPOTENCY_KEY.clone(), id);
        }
        let mut request = Request::new(Full::new(message.body.clone()));
        *request.method_mut() = self
            .method
            .clone()
            .unwrap_or_else(|| message.method.clone());
        *request.uri_mut() = self.endpoint.clone();
        *request.headers_mut() = headers;
        request
    }

    /// One attempt, bounded by the timeout (response body included).
    pub async fn forward(&self, message: &Message) -> Result<ForwardResponse, ForwardError> {
        let started = Instant::now();
        let request = self.request(message);
        let attempt = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ForwardError::Transport(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BODY)
                .collect()
                .await
                .map_err(|e| ForwardError::Transport(format!("reading response body: {e}")))?
                .to_bytes();
            Ok(ForwardResponse {
                status: parts.status,
                headers: parts.headers,
                body,
                elapsed: started.elapsed(),
            })
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ForwardError::Timeout(self.timeout)),
        }
    }
}

/// "a: b: c" from an error and its sources (hyper's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The wait a `Retry-After` header asks for (seconds or an HTTP date).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_drops_hop_by_hop_headers_and_adds_idempotency_key() {
        let mut headers = HeaderMap::new();
        headers.insert("company", "WSO2".parse().unwrap());
        headers.insert("connection", "keep-alive, x-private".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert("host", "ingress:9091".parse().unwrap());
        headers.insert("content-length", "2".parse().unwrap());
        headers.insert("idempotency-key", "client-chosen".parse().unwrap());
        let m = Message::new(
            Method::PUT,
            "/a?b=c".into(),
            headers,
            Bytes::from_static(b"{}"),
        );
        let f = Forwarder::new(
            "http://127.0.0.1:1/x".parse().unwrap(),
            None,
            Duration::from_secs(1),
        );
        let r = f.request(&m);
        assert_eq!(r.method(), Method::PUT);
        assert_eq!(r.headers()["company"], "WSO2");
        assert_eq!(r.headers()["idempotency-key"], m.id.as_str());
        for gone in ["connection", "x-private", "host", "content-length"] {
            assert!(!r.headers().contains_key(gone), "{gone} forwarded");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
