//! TLS for the broker tests: a private CA with server and client
//! certificates, and a TLS terminator in front of a broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// A private CA, and certificates it signed for a TLS server at 127.0.0.1
/// and for a client.
pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub ca: String,
    pub server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    pub client: (String, String),
    pub ca_der: CertificateDer<'static>,
}

pub fn pki() -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "wharf test CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![usage];
        (params.signed_by(&key, &ca).unwrap(), key)
    };
    let (server, server_key) = leaf("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth);
    let (client, client_key) = leaf("wharf-client", ExtendedKeyUsagePurpose::ClientAuth);
    let (ca_pem, ca_der) = (ca.pem(), ca.der().clone());
    Pki {
        issuer: ca,
        ca: ca_pem,
        ca_der,
        server: (
            server.der().clone(),
            PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
        ),
        client: (client.pem(), client_key.serialize_pem()),
    }
}

impl Pki {
    /// A server certificate the CA signed for `name`, expired a day ago if `expired`.
    pub fn server_cert(
        &self,
        name: &str,
        expired: bool,
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(30);
            params.not_after = now - time::Duration::days(1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
    }
}

/// An https server: TLS with `cert` in front of a plain HTTP server at
/// `upstream`, requiring a client certificate of `client_ca` if given.
/// Counts handshakes; [`HttpsFront::stop`] closes it and every connection.
pub struct HttpsFront {
    pub port: u16,
    pub handshakes: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsFront {
    pub async fn start(
        cert: (CertificateDer<'static>, PrivateKeyDer<'static>),
        client_ca: Option<&Pki>,
        upstream: std::net::SocketAddr,
        port: u16,
    ) -> HttpsFront {
        let builder = ServerConfig::builder();
        let builder = match client_ca {
            Some(pki) => {
                let mut roots = RootCertStore::empty();
                roots.add(pki.ca_der.clone()).unwrap();
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder(Arc::new(roots))
                        .build()
                        .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(vec![cert.0], cert.1).unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (done, failed) = (handshakes.clone(), refused.clone());
        let task = tokio::spawn(async move {
            // Dropped with this task: every connection ends with it.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, done, failed) = (acceptor.clone(), done.clone(), failed.clone());
                connections.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    done.fetch_add(1, Ordering::Relaxed);
                    let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        HttpsFront {
            port,
            handshakes,
            refused,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/testservice/test", self.port)
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for HttpsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP proxy on 127.0.0.1: `CONNECT host:port` tunnels, and requests
/// in absolute form passed on to their host. Records each request line and
/// its `Proxy-Authorization`.
/// A request line and its `Proxy-Authorization`, as a proxy saw them.
pub type Seen = (String, Option<String>);

pub struct Proxy {
    pub port: u16,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let record = record.clone();
                connections.spawn(async move {
                    // The request head, byte by byte up to the blank line.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let line = text.lines().next().unwrap_or_default().to_owned();
                    let auth = text
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("proxy-authorization: ")
                                .or_else(|| l.strip_prefix("Proxy-Authorization: "))
                        })
                        .map(str::to_owned);
                    record.lock().unwrap().push((line.clone(), auth));
                    let mut parts = line.split(' ');
                    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let host = if method == "CONNECT" {
                        target.to_owned()
                    } else {
                        let rest = target.strip_prefix("http://").unwrap_or(target);
                        rest.split('/').next().unwrap_or("").to_owned()
                    };
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&host).await else {
                        let _ = client
                            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        return;
                    };
                    if method == "CONNECT" {
                        if client
                            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    } else if upstream.write_all(&head).await.is_err() {
                        return;
                    }
                    // Later requests on a kept-alive proxied connection go to the same host.
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        Proxy { port, seen, task }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS terminator in front of the broker, as a load balancer or stunnel
/// would be. It requires a client certificate signed by the CA, and counts
/// completed and failed handshakes.
pub struct TlsFront {
    pub port: u16,
    pub handshakes: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
}

/// In front of the broker at `broker` (`host:port`).
pub async fn tls_front(pki: &Pki, broker: &str) -> TlsFront {
    let broker = broker.to_owned();
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.0.clone()], pki.server.1.clone_key())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let (done, failed) = (handshakes.clone(), refused.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, done, failed) = (acceptor.clone(), done.clone(), failed.clone());
            let broker = broker.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                done.fetch_add(1, Ordering::Relaxed);
                let Ok(mut broker) = tokio::net::TcpStream::connect(&broker).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    TlsFront {
        port,
        handshakes,
        refused,
    }
}
