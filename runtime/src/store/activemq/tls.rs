//! TLS for `stomp+ssl://`: rustls with the system's CAs plus the store's
//! `tls.ca_file`, and a client certificate when `tls.cert_file` and
//! `tls.key_file` are set. The files are read when the store opens.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::TlsFiles;
use crate::store::StoreError;

/// The connector and the name the broker's certificate must carry.
pub(super) fn connector(
    store: &str,
    tls: &TlsFiles,
    host: &str,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), StoreError> {
    let bad = |reason: String| StoreError::Permanent {
        store: store.to_owned(),
        reason,
    };
    let certificates = |key: &str, path: &std::path::Path| {
        let pem =
            std::fs::read(path).map_err(|e| bad(format!("tls.{key} {}: {e}", path.display())))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                bad(format!(
                    "tls.{key} {}: not PEM certificates: {e}",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(bad(format!(
                "tls.{key} {}: holds no PEM certificate",
                path.display()
            )));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &tls.ca_file {
        for cert in certificates("ca_file", path)? {
            roots
                .add(cert)
                .map_err(|e| bad(format!("tls.ca_file {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("cert_file", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                bad(format!(
                    "tls.key_file {}: no unencrypted PEM private key: {e}",
                    key.display()
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad(format!("tls.cert_file and tls.key_file: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(host.to_owned()).map_err(|e| {
        bad(format!(
            "the url's host {host:?} is not a TLS server name: {e}"
        ))
    })?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// Whether a failed handshake was refused on a certificate or a protocol
/// mismatch, which trying again cannot change.
pub(super) fn refused(io: &std::io::Error) -> bool {
    crate::store::amqp::tls_refused(io)
}
