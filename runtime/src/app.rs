//! Wiring: the data dir, the tenants (each a pipeline and plugin registry), the two servers,
//! signals, and an ordered shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::ValidConfig;
use crate::ingress;
use crate::metrics::Metrics;
use crate::plugins;
use crate::plugins::registry::Registry;
use crate::tenant::{Instance, TenantError, Tenants};

/// How long a shutdown waits for requests in flight.
const INGRESS_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data_dir {0} is in use by another Wharf process")]
    Locked(PathBuf),
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error("plugins: {0}")]
    Registry(String),
    #[error("{what} server failed: {source}")]
    Serve {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The two listeners an instance serves.
#[derive(Debug)]
pub struct Listeners {
    pub ingress: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses (port 0 picks a free port).
    pub async fn bind(ingress: SocketAddr, admin: SocketAddr) -> std::io::Result<Listeners> {
        let ingress_listener = TcpListener::bind(ingress)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("server.listen {ingress}: {e}")))?;
        let admin_listener = TcpListener::bind(admin)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("server.admin {admin}: {e}")))?;
        Ok(Listeners {
            ingress: ingress_listener,
            admin: admin_listener,
        })
    }
}

/// The plugin registry under `data_dir`.
pub fn open_registry(data_dir: &std::path::Path) -> Result<Registry, RunError> {
    let host = plugins::Host::shared().map_err(|e| RunError::Registry(e.to_string()))?;
    Registry::open(host, data_dir).map_err(|e| RunError::Registry(e.to_string()))
}

/// Runs an instance until `shutdown` resolves, then stops in order: ingress
/// first (requests in flight finish their writes), then processors (an
/// attempt in flight finishes; undelivered messages go back to their store's
/// head), then stores (pending writes are committed), then the admin API.
pub async fn run(
    config: ValidConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let data_dir = &config.server.data_dir;
    let data_err = |source| RunError::DataDir {
        path: data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(data_err)?;
    // Two instances on one data_dir would deliver every message twice.
    let lock = std::fs::File::create(data_dir.join("wharf.lock")).map_err(data_err)?;
    if lock.try_lock().is_err() {
        return Err(RunError::Locked(data_dir.clone()));
    }

    if config.server.admin_token.is_none() && !config.server.admin.ip().is_loopback() {
        tracing::warn!(admin = %config.server.admin, "the admin API is open to anyone who reaches it (allow_unauthenticated_admin = true, no admin_token)");
    }
    let metrics = Arc::new(Metrics::new());
    let instance = Instance {
        data_dir: data_dir.clone(),
        base: config.base.clone(),
        metrics: metrics.clone(),
        quotas: config.server.quotas,
    };
    let tenants = Arc::new(Tenants::start(instance, &config.document, &config.tenants).await?);
    let ingress_router = ingress::router(tenants.dispatch());

    let admin_state = Arc::new(AdminState {
        tenants: tenants.clone(),
        metrics: metrics.clone(),
        token: config.server.admin_token.clone(),
        config_file: config.file.clone(),
        server: config.server.clone(),
        ready: Default::default(),
    });

    let stop_ingress = CancellationToken::new();
    let stop_admin = CancellationToken::new();

    let admin_server = {
        let stop = stop_admin.clone();
        tokio::spawn(
            axum::serve(listeners.admin, admin::router(admin_state.clone()))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .into_future(),
        )
    };
    let mut ingress_server = {
        let stop = stop_ingress.clone();
        tokio::spawn(
            axum::serve(listeners.ingress, ingress_router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .into_future(),
        )
    };
    // SIGHUP re-reads the config file and applies its pipeline, like `wharf reload`.
    let reloader = config
        .file
        .clone()
        .map(|file| tokio::spawn(reload_on_sighup(admin_state.clone(), file)));
    admin_state.ready.store(true, Ordering::Release);

    let serve_error = tokio::select! {
        _ = shutdown => None,
        r = &mut ingress_server => Some(("ingress", r)),
    };
    tracing::info!("shutting down");
    admin_state.ready.store(false, Ordering::Release);
    stop_ingress.cancel();
    if serve_error.is_none()
        && tokio::time::timeout(INGRESS_DRAIN, &mut ingress_server)
            .await
            .is_err()
    {
        tracing::warn!("requests still open after {INGRESS_DRAIN:?}; closing them");
        ingress_server.abort();
    }
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    tenants.stop_processors().await;
    tenants.close().await;
    stop_admin.cancel();
    let _ = admin_server.await;
    tracing::info!("stopped");
    match serve_error {
        Some((what, Ok(Err(source)))) => Err(RunError::Serve { what, source }),
        Some((what, Err(join))) => Err(RunError::Serve {
            what,
            source: std::io::Error::other(join.to_string()),
        }),
        _ => Ok(()),
    }
}

/// Applies the config file's pipeline on every SIGHUP; a broken file is
/// logged and changes nothing.
async fn reload_on_sighup(state: Arc<AdminState>, file: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; use wharf reload");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        tracing::info!(file = %file.display(), "SIGHUP received: reloading the pipeline");
        match admin::reload(&state).await {
            Ok((applied, notes)) => {
                tracing::info!(
                    revision = applied.revision,
                    "reloaded:\n{}",
                    applied.diff.render()
                );
                for note in notes {
                    tracing::warn!("{note}");
                }
            }
            Err(e) => {
                tracing::error!(file = %file.display(), "reload refused; the running pipeline is unchanged:\n{e}")
            }
        }
    }
}
