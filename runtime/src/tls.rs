//! Client TLS shared by the broker stores (`stomp+ssl://`) and the
//! forwarder (`https://` endpoints): rustls on *ring*, trusting the system's
//! CAs plus a configured `ca_file`, with a client certificate when
//! `cert_file` and `key_file` are set; and what a refused handshake means,
//! said in words.

use std::path::Path;
use std::sync::Arc;

use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// The client configuration `files` describe. Problems name the key and
/// file (`tls.ca_file /etc/ca.pem: ...`).
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &files.ca_file {
        for cert in certificates("ca_file", path)? {
            roots
                .add(cert)
                .map_err(|e| format!("tls.ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("cert_file", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!(
                    "tls.key_file {}: no unencrypted PEM private key: {e}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("tls.cert_file and tls.key_file: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("tls.{key} {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.{key} {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.{key} {}: holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// The rustls error somewhere in `e`'s chain of sources, if any.
pub fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error keeps its inner error as `get_ref`, not always as a source.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = rustls_error(inner)
        {
            return Some(tls);
        }
        source = e.source();
    }
    None
}

/// A handshake refused on a certificate or a protocol mismatch, which
/// trying again cannot change, in words a person can act on.
pub fn refusal(tls: &rustls::Error) -> Option<String> {
    let why = match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet".to_owned()
            }
            CertificateError::UnknownIssuer => {
                "the server's certificate is not signed by a trusted CA (unknown issuer; a private CA goes in tls.ca_file)".to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate is not valid for this host (wrong host; tls.server_name sets the name to check)".to_owned()
            }
            CertificateError::Revoked => "the server's certificate is revoked".to_owned(),
            _ => "the server's certificate is not acceptable".to_owned(),
        },
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::HandshakeFailure,
        ) => "the server refused the handshake (does it require a client certificate? tls.cert_file and tls.key_file set one)".to_owned(),
        rustls::Error::AlertReceived(_) | rustls::Error::PeerIncompatible(_) => {
            "the server refused the handshake".to_owned()
        }
        rustls::Error::NoCertificatesPresented => {
            "the server presented no certificate".to_owned()
        }
        _ => return None,
    };
    Some(format!("{why}: {tls}"))
}
