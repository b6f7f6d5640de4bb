//! TLS for `amqps://`: the certificate files a store is configured with,
//! read and checked when it opens, and how a refused handshake is told
//! from a lost connection.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;
use crate::store::StoreError;

/// Reads the PEM files of `tls` and checks that they hold what they should,
/// so that a wrong file is a startup error rather than failing connects.
pub(super) fn tls_config(store: &str, tls: &TlsFiles) -> Result<OwnedTLSConfig, StoreError> {
    let bad = |key: &str, path: &std::path::Path, what: &str| StoreError::Permanent {
        store: store.to_owned(),
        reason: format!("tls.{key} {}: {what}", path.display()),
    };
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| bad(key, path, &e.to_string()))
    };
    let certificates = |key: &str, path: &std::path::Path| {
        let pem = read(key, path)?;
        let count = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(key, path, &format!("not PEM certificates: {e}")))?
            .len();
        if count == 0 {
            return Err(bad(key, path, "holds no PEM certificate"));
        }
        Ok(pem)
    };
    let cert_chain = match &tls.ca_file {
        Some(path) => {
            let pem = certificates("ca_file", path)?;
            Some(String::from_utf8(pem).map_err(|_| bad("ca_file", path, "not text"))?)
        }
        None => None,
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let pem = certificates("cert_file", cert)?;
            let key_pem = read("key_file", key)?;
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                bad(
                    "key_file",
                    key,
                    &format!("no unencrypted PEM private key: {e}"),
                )
            })?;
            Some(OwnedIdentity::PKCS8 { pem, key: key_pem })
        }
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Whether an I/O error is a TLS handshake that failed on a certificate or
/// a protocol mismatch, which trying again cannot change.
pub(crate) fn tls_refused(io: &std::io::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = io.get_ref().map(|e| e as _);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::PeerIncompatible(_)
                    | rustls::Error::AlertReceived(_)
            );
        }
        source = e.source();
    }
    false
}
