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
    Pki {
        ca: ca.pem(),
        ca_der: ca.der().clone(),
        server: (
            server.der().clone(),
            PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
        ),
        client: (client.pem(), client_key.serialize_pem()),
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
