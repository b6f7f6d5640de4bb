//! TLS for `stomp+ssl://`: [`crate::tls`] with the store's `tls` files,
//! read when the store opens.

use std::sync::Arc;

use rustls_pki_types::ServerName;

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
    let config = crate::tls::client_config(tls).map_err(bad)?;
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
