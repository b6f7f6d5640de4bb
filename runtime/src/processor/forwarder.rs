//! The HTTP forwarder: one attempt to hand a message to the endpoint.
//!
//! A forwarder keeps up to `concurrency` keep-alive connections to its
//! endpoint (one for a processor in strict order) and drives them directly:
//! an attempt takes an idle connection or opens one, and gives it back once
//! the response body is read. A connection the server closed while idle is
//! replaced before use; a request that was never written goes out once more
//! on a fresh connection; after a timeout or an error the connection is
//! dropped, since a late response could still arrive on it.
//!
//! `https://` endpoints go through rustls ([`crate::tls`]): SNI and the
//! certificate check use the URL's host (or `tls.server_name`). A proxy
//! (`proxy`, else `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` minus
//! `NO_PROXY`, as curl reads them, through hyper-util's matcher) gets
//! absolute-form requests for `http://` endpoints and a `CONNECT` tunnel for
//! `https://` ones. `signing` adds its headers to every attempt
//! ([`super::signing`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

use super::signing::Signer;
use crate::config::ProcessorSettings;
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

/// Why a processor's forwarder cannot be made: the key at fault and why.
#[derive(Debug, Clone)]
pub struct SetupError {
    pub key: &'static str,
    pub reason: String,
}

/// TLS to an `https://` endpoint.
struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

/// The proxy requests go through.
struct Proxy {
    /// `host:port` to connect to.
    address: String,
    authorization: Option<HeaderValue>,
}

type Sender = SendRequest<Full<Bytes>>;

/// Forwards messages to one endpoint over keep-alive connections.
pub struct Forwarder {
    endpoint: Uri,
    /// `host:port` of the endpoint.
    address: String,
    /// The `Host` header: the endpoint's authority.
    host: HeaderValue,
    /// The request target: path and query, or the whole URL for a proxy.
    target: Uri,
    method: Option<Method>,
    timeout: Duration,
    tls: Option<Tls>,
    proxy: Option<Proxy>,
    signer: Option<Signer>,
    idle: std::sync::Mutex<Vec<Sender>>,
    /// Most idle connections kept (the processor's concurrency).
    max_idle: usize,
}

impl Forwarder {
    /// A forwarder to an `http://` endpoint, directly, unsigned, one connection.
    pub fn http(endpoint: Uri, method: Option<Method>, timeout: Duration) -> Forwarder {
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
            tls: None,
            proxy: None,
            signer: None,
            idle: std::sync::Mutex::new(Vec::new()),
            max_idle: 1,
        }
    }

    /// The forwarder `settings` describe: TLS files read, the proxy chosen
    /// (configured or from the environment), signing secrets read.
    pub fn for_processor(settings: &ProcessorSettings) -> Result<Forwarder, SetupError> {
        let endpoint = &settings.endpoint;
        let mut f = Forwarder::http(endpoint.clone(), settings.method.clone(), settings.timeout);
        let https = endpoint.scheme_str() == Some("https");
        if https {
            let host = endpoint.host().unwrap_or("localhost");
            f.address = format!("{host}:{}", endpoint.port_u16().unwrap_or(443));
            let bad = |reason| SetupError { key: "tls", reason };
            let config = crate::tls::client_config(&settings.tls.files).map_err(bad)?;
            // An IPv6 literal comes bracketed in the URL.
            let name = settings.tls.server_name.clone().unwrap_or_else(|| {
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            });
            let name = ServerName::try_from(name.clone()).map_err(|e| SetupError {
                key: "tls.server_name",
                reason: format!("{name:?} is not a TLS server name: {e}"),
            })?;
            f.tls = Some(Tls {
                connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
                name,
            });
        }
        let (matcher, from) = match &settings.proxy {
            Some(proxy) => (Matcher::builder().all(proxy.to_string()).build(), "proxy"),
            None => (
                Matcher::from_env(),
                "the environment (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY)",
            ),
        };
        if let Some(intercept) = matcher.intercept(endpoint) {
            let uri = intercept.uri();
            let shown = format!(
                "{}://{}",
                uri.scheme_str().unwrap_or("?"),
                uri.host().unwrap_or("?")
            );
            if let Some(problem) = crate::config::proxy_problem(&uri.to_string()) {
                return Err(SetupError {
                    key: "proxy",
                    reason: format!("the proxy {shown} from {from} {problem}"),
                });
            }
            f.proxy = Some(Proxy {
                address: format!(
                    "{}:{}",
                    uri.host().unwrap_or("localhost"),
                    uri.port_u16().unwrap_or(80)
                ),
                authorization: intercept.basic_auth().cloned(),
            });
            if !https {
                f.target = endpoint.clone();
            }
        }
        if let Some(signing) = &settings.signing {
            f.signer = Some(Signer::from_env(signing).map_err(|reason| SetupError {
                key: "signing",
                reason,
            })?);
        }
        f.max_idle = settings.concurrency.max(1);
        Ok(f)
    }

    pub fn endpoint(&self) -> &Uri {
        &self.endpoint
    }

    /// The request an attempt sends: body byte for byte, original headers less
    /// hop-by-hop ones, `Host` of the endpoint, `Idempotency-Key: <message id>`,
    /// the signing headers. hyper sets `Content-Length` from the body.
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
        if let Some(signer) = &self.signer {
            for (name, value) in signer.headers(message) {
                headers.insert(name, value);
            }
        }
        if self.tls.is_none()
            && let Some(auth) = self.proxy.as_ref().and_then(|p| p.authorization.clone())
        {
            headers.insert(header::PROXY_AUTHORIZATION, auth);
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
        // On a timeout the connection is dropped with the attempt.
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result.map(|(status, headers, body)| ForwardResponse {
                status,
                headers,
                body,
                elapsed: started.elapsed(),
            }),
            Err(_) => Err(ForwardError::Timeout(self.timeout)),
        }
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ForwardError> {
        let (sender, response) = self.send(request).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| {
                ForwardError::Transport(format!("reading response body: {}", self.describe(&*e)))
            })?
            .to_bytes();
        self.give_back(sender);
        Ok((parts.status, parts.headers, body))
    }

    /// An idle connection the server has not closed, if there is one.
    fn take_idle(&self) -> Option<Sender> {
        let mut idle = super::lifecycle::lock(&self.idle);
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(&self, sender: Sender) {
        let mut idle = super::lifecycle::lock(&self.idle);
        if idle.len() < self.max_idle && !sender.is_closed() {
            idle.push(sender);
        }
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(Sender, Response<Incoming>), ForwardError> {
        let mut request = request;
        // A second round only for a request that was never written.
        for round in 0..2 {
            let mut sender = match self.take_idle() {
                Some(sender) => sender,
                None => self.connect().await?,
            };
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((sender, response)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if round == 0 => request = unsent,
                    _ => return Err(ForwardError::Transport(self.describe(e.error()))),
                },
            }
        }
        Err(ForwardError::Transport(
            "connection closed before the request was sent".into(),
        ))
    }

    /// An error in words: a refused TLS handshake said plainly, else the chain.
    fn describe(&self, e: &(dyn std::error::Error + 'static)) -> String {
        match crate::tls::rustls_error(e).and_then(crate::tls::refusal) {
            Some(refusal) => format!("TLS with {}: {refusal}", self.address),
            None => error_chain(e),
        }
    }

    async fn connect(&self) -> Result<Sender, ForwardError> {
        let dial = self.proxy.as_ref().map_or(&self.address, |p| &p.address);
        let via = if self.proxy.is_some() {
            format!(" (proxy for {})", self.address)
        } else {
            String::new()
        };
        let transport = |e: &(dyn std::error::Error + 'static)| {
            ForwardError::Transport(format!("connecting to {dial}{via}: {}", self.describe(e)))
        };
        let stream = tokio::net::TcpStream::connect(dial)
            .await
            .map_err(|e| transport(&e))?;
        stream.set_nodelay(true).map_err(|e| transport(&e))?;
        let Some(tls) = &self.tls else {
            return self.handshake(TokioIo::new(stream)).await;
        };
        let handshake_failed = |e: std::io::Error| {
            ForwardError::Transport(format!(
                "TLS handshake with {}{via} failed: {}",
                self.address,
                crate::tls::rustls_error(&e)
                    .and_then(crate::tls::refusal)
                    .unwrap_or_else(|| error_chain(&e))
            ))
        };
        match &self.proxy {
            None => {
                let stream = tls
                    .connector
                    .connect(tls.name.clone(), stream)
                    .await
                    .map_err(handshake_failed)?;
                self.handshake(TokioIo::new(stream)).await
            }
            Some(proxy) => {
                let tunnel = TokioIo::new(self.tunnel(stream, proxy).await?);
                let stream = tls
                    .connector
                    .connect(tls.name.clone(), tunnel)
                    .await
                    .map_err(handshake_failed)?;
                self.handshake(TokioIo::new(stream)).await
            }
        }
    }

    /// A `CONNECT` tunnel to the endpoint through the proxy on `stream`.
    async fn tunnel(
        &self,
        stream: tokio::net::TcpStream,
        proxy: &Proxy,
    ) -> Result<hyper::upgrade::Upgraded, ForwardError> {
        let failed = |what: &str, e: &(dyn std::error::Error + 'static)| {
            ForwardError::Transport(format!(
                "proxy {} {what} to {}: {}",
                proxy.address,
                self.address,
                error_chain(e)
            ))
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| failed("handshake", &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "proxy tunnel ended");
            }
        });
        let mut connect = Request::new(Empty::new());
        *connect.method_mut() = Method::CONNECT;
        *connect.uri_mut() =
            Uri::try_from(self.address.as_str()).map_err(|e| failed("CONNECT", &e))?;
        let host =
            HeaderValue::try_from(self.address.as_str()).map_err(|e| failed("CONNECT", &e))?;
        connect.headers_mut().insert(header::HOST, host);
        if let Some(auth) = &proxy.authorization {
            connect
                .headers_mut()
                .insert(header::PROXY_AUTHORIZATION, auth.clone());
        }
        let response = sender
            .send_request(connect)
            .await
            .map_err(|e| failed("CONNECT", &e))?;
        if response.status() != StatusCode::OK {
            return Err(ForwardError::Transport(format!(
                "proxy {} refused CONNECT to {}: {}",
                proxy.address,
                self.address,
                response.status()
            )));
        }
        hyper::upgrade::on(response)
            .await
            .map_err(|e| failed("tunnel", &e))
    }

    async fn handshake<T>(&self, io: T) -> Result<Sender, ForwardError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, connection) =
            hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| {
                    ForwardError::Transport(format!(
                        "connecting to {}: {}",
                        self.address,
                        self.describe(&e)
                    ))
                })?;
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
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
        let f = Forwarder::http(
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
