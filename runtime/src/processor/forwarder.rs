//! The HTTP forwarder: one attempt to hand a message to the endpoint.
//!
//! A processor sends one request at a time (that is what keeps order), so a
//! forwarder keeps exactly one keep-alive connection to its endpoint and
//! drives it directly, without a pool. A connection the server closed while
//! idle is replaced before use; a request that was never written goes out
//! once more on a fresh connection; after a timeout or an error the
//! connection is dropped, since a late response could still arrive on it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

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

/// The forwarding seam: one attempt to hand a message over. [`Forwarder`]
/// does it over HTTP; tests put a scripted one in its place to prove the
/// processor's timing under a paused clock.
#[async_trait::async_trait]
pub trait Forward: Send + Sync {
    async fn forward(&self, message: &Message) -> Result<ForwardResponse, ForwardError>;
}

#[async_trait::async_trait]
impl Forward for Forwarder {
    async fn forward(&self, message: &Message) -> Result<ForwardResponse, ForwardError> {
        Forwarder::forward(self, message).await
    }
}

/// Forwards messages to one endpoint over one keep-alive connection.
pub struct Forwarder {
    endpoint: Uri,
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header: the endpoint's authority.
    host: HeaderValue,
    /// The request target: the endpoint's path and query.
    target: Uri,
    method: Option<Method>,
    timeout: Duration,
    connection: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl Forwarder {
    /// `endpoint` is an `http://` URL with a host (validated config).
    pub fn new(endpoint: Uri, method: Option<Method>, timeout: Duration) -> Forwarder {
        let host_name = endpoint.host().unwrap_or("localhost");
        let address = format!("{host_name}:{}", endpoint.port_u16().unwrap_or(80));
        let authority = endpoint.authority().map_or(host_name, |a| a.as_str());
        let target = endpoint
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        Forwarder {
            host: HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("localhost")),
            address,
            target,
            endpoint,
            method,
            timeout,
            connection: Mutex::new(None),
        }
    }

    pub fn endpoint(&self) -> &Uri {
        &self.endpoint
    }

    /// The request an attempt sends: body byte for byte, original headers less
    /// hop-by-hop ones, `Host` of the endpoint, `Idempotency-Key: <message id>`.
    /// hyper sets `Content-Length` from the body.
    pub fn request(&self, message: &Message) -> Request<Full<Bytes>> {
        let mut headers = HeaderMap::with_capacity(message.headers.len() + 2);
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
        headers.insert(header::HOST, self.host.clone());
        if let Ok(id) = HeaderValue::from_str(&message.id) {
            headers.insert(IDEMPOTENCY_KEY.clone(), id);
        }
        let mut request = Request::new(Full::new(message.body.clone()));
        *request.method_mut() = self
            .method
            .clone()
            .unwrap_or_else(|| message.method.clone());
        *request.uri_mut() = self.target.clone();
        *request.headers_mut() = headers;
        request
    }

    /// One attempt, bounded by the timeout (connecting and the response body included).
    pub async fn forward(&self, message: &Message) -> Result<ForwardResponse, ForwardError> {
        let started = Instant::now();
        let request = self.request(message);
        let attempt = async {
            let mut connection = self.connection.lock().await;
            let result = self.exchange(&mut connection, request).await;
            if result.is_err() {
                *connection = None;
            }
            result
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result.map(|(status, headers, body)| ForwardResponse {
                status,
                headers,
                body,
                elapsed: started.elapsed(),
            }),
            Err(_) => {
                *self.connection.lock().await = None;
                Err(ForwardError::Timeout(self.timeout))
            }
        }
    }

    async fn exchange(
        &self,
        connection: &mut Option<SendRequest<Full<Bytes>>>,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ForwardError> {
        let response = self.send(connection, request).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| ForwardError::Transport(format!("reading response body: {e}")))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    async fn send(
        &self,
        connection: &mut Option<SendRequest<Full<Bytes>>>,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ForwardError> {
        if connection.as_ref().is_some_and(SendRequest::is_closed) {
            *connection = None;
        }
        let mut request = request;
        // A second round only for a request that was never written.
        for round in 0..2 {
            let sender = match connection {
                Some(sender) => sender,
                None => connection.insert(self.connect().await?),
            };
            if sender.ready().await.is_err() {
                *connection = None;
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut e) => {
                    *connection = None;
                    match e.take_message() {
                        Some(unsent) if round == 0 => request = unsent,
                        _ => return Err(ForwardError::Transport(error_chain(e.error()))),
                    }
                }
            }
        }
        Err(ForwardError::Transport(
            "connection closed before the request was sent".into(),
        ))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ForwardError> {
        let transport = |e: &dyn std::error::Error| {
            ForwardError::Transport(format!(
                "connecting to {}: {}",
                self.address,
                error_chain(e)
            ))
        };
        let stream = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| transport(&e))?;
        stream.set_nodelay(true).map_err(|e| transport(&e))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transport(&e))?;
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%endpoint, error = %e, "connection to endpoint ended");
            }
        });
        Ok(sender)
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
        assert_eq!(r.uri(), "/x");
        assert_eq!(r.headers()["host"], "127.0.0.1:1");
        assert_eq!(r.headers()["company"], "WSO2");
        assert_eq!(r.headers()["idempotency-key"], m.id.as_str());
        for gone in ["connection", "x-private", "content-length"] {
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
