//! Wiring: opens stores, builds routes and processors, serves, and shuts down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState, metrics::Metrics};
use crate::config::{Backend, PluginRef, ProcessorSettings, ValidConfig, WriteRetry};
use crate::ingress;
use crate::plugins;
use crate::plugins::registry::Registry;
use crate::processor::Processor;
use crate::processor::handler::{self, ResponseHandler};
use crate::processor::policy::FailurePolicy;
use crate::store::amqp::AmqpStore;
use crate::store::chain::StoreChain;
use crate::store::embedded::EmbeddedStore;
use crate::store::{Store, StoreError, Stores};

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
    Store(#[from] StoreError),
    #[error("processors.{processor}.{key}: {reason}")]
    Plugin {
        processor: String,
        key: &'static str,
        reason: String,
    },
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

/// Opens every configured store.
pub fn open_stores(config: &ValidConfig) -> Result<Stores, StoreError> {
    let mut stores = Stores::new();
    for (name, s) in &config.stores {
        let store: Arc<dyn Store> = match s.backend {
            Backend::Embedded => Arc::new(EmbeddedStore::open(
                &config.server.data_dir,
                name,
                s.max_messages,
            )?),
            Backend::Amqp => {
                let settings = s.amqp.as_ref().ok_or_else(|| StoreError::Backend {
                    store: name.clone(),
                    reason: "amqp settings missing".into(),
                })?;
                // The consumer reconnects as its processor's `reconnect` says.
                let reconnect = config
                    .processors
                    .values()
                    .find(|p| &p.store == name)
                    .map_or(WriteRetry::NONE, |p| p.reconnect.clone());
                Arc::new(AmqpStore::open(name, settings, reconnect)?)
            }
        };
        stores.insert(name.clone(), store);
    }
    Ok(stores)
}

/// A processor's plugin: ready, or waiting for a deploy of that name.
pub struct Resolved<T> {
    pub plugin: T,
    /// The deployed plugin it names, when no version of it is live yet.
    pub waiting_for: Option<String>,
}

/// Resolves a processor's `key` (a plugin path or a deployed plugin's name) to the slot it calls.
fn plugin_slot(
    p: &ProcessorSettings,
    key: &'static str,
    value: &str,
    world: plugins::World,
    registry: Option<&Registry>,
) -> Result<(&'static plugins::Host, Resolved<Arc<plugins::Slot>>), RunError> {
    let fail = |reason: String| RunError::Plugin {
        processor: p.name.clone(),
        key,
        reason,
    };
    let host = plugins::Host::shared().map_err(|e| fail(e.to_string()))?;
    let slot = match (PluginRef::of(value), registry) {
        (PluginRef::Deployed(name), Some(registry)) => registry.slot(name, world).map_err(fail)?,
        (PluginRef::Deployed(name), None) => {
            return Err(fail(format!(
                "{name:?} names a deployed plugin, and there is no plugin registry here"
            )));
        }
        _ => host
            .load_file(std::path::Path::new(value), world)
            .map_err(|e| fail(e.to_string()))?,
    };
    let waiting_for = slot.current().is_none().then(|| slot.name().to_owned());
    Ok((
        host,
        Resolved {
            plugin: slot,
            waiting_for,
        },
    ))
}

/// The handler a processor's `response_handler` names: built in, a deployed
/// plugin, or a `.wasm` component.
pub fn response_handler(
    p: &ProcessorSettings,
    registry: Option<&Registry>,
) -> Result<Resolved<Arc<dyn ResponseHandler>>, RunError> {
    if let Some(builtin) = handler::builtin(&p.response_handler) {
        return Ok(Resolved {
            plugin: builtin,
            waiting_for: None,
        });
    }
    let world = plugins::World::ResponseHandler;
    let (host, slot) = plugin_slot(p, "response_handler", &p.response_handler, world, registry)?;
    Ok(Resolved {
        plugin: Arc::new(host.handler(slot.plugin, &p.name, p.plugin_limits)),
        waiting_for: slot.waiting_for,
    })
}

/// The failure policy a processor's `failure_policy` names, if any.
pub fn failure_policy(
    p: &ProcessorSettings,
    registry: Option<&Registry>,
) -> Result<Option<Resolved<Arc<dyn FailurePolicy>>>, RunError> {
    let Some(value) = &p.failure_policy else {
        return Ok(None);
    };
    let world = plugins::World::FailurePolicy;
    let (host, slot) = plugin_slot(p, "failure_policy", value, world, registry)?;
    Ok(Some(Resolved {
        plugin: Arc::new(host.policy(slot.plugin, &p.name, p.plugin_limits)),
        waiting_for: slot.waiting_for,
    }))
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

    let metrics = Arc::new(Metrics::new());
    let stores = open_stores(&config)?;
    let registry = Arc::new(open_registry(data_dir)?);

    let routes = config
        .routes
        .iter()
        .map(|r| {
            (
                r.clone(),
                StoreChain::new(&r.store, &stores, &config.stores, &metrics),
            )
        })
        .collect();
    let ingress_router = ingress::router(routes, metrics.clone());

    let mut processors = Vec::new();
    for p in config.processors.values() {
        let handler = response_handler(p, Some(&registry))?;
        let policy = failure_policy(p, Some(&registry))?;
        let waiting_for: Vec<String> = handler
            .waiting_for
            .iter()
            .chain(policy.as_ref().and_then(|p| p.waiting_for.as_ref()))
            .cloned()
            .collect();
        let dead_letter = p
            .dead_letter_store
            .as_ref()
            .map(|name| StoreChain::new(name, &stores, &config.stores, &metrics));
        let store = stores
            .get(&p.store)
            .cloned()
            .ok_or_else(|| StoreError::Backend {
                store: p.store.clone(),
                reason: format!("processors.{}: no such store", p.name),
            })?;
        let processor = Processor::new(
            p.clone(),
            store,
            dead_letter,
            handler.plugin,
            policy.map(|p| p.plugin),
            metrics.clone(),
        );
        // It starts once its plugins are deployed; the deploy activates it.
        for name in waiting_for {
            processor.handle().wait_for_plugin(&name);
        }
        processors.push(processor);
    }

    let admin_state = Arc::new(AdminState {
        stores: stores.clone(),
        processors: processors.iter().map(Processor::handle).collect(),
        metrics: metrics.clone(),
        plugins: registry.clone(),
        token: config.server.admin_token.clone(),
        ready: Default::default(),
    });

    let stop_ingress = CancellationToken::new();
    let stop_processors = CancellationToken::new();
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
    let processor_tasks: Vec<_> = processors
        .into_iter()
        .map(|p| tokio::spawn(p.run(stop_processors.clone())))
        .collect();
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
    stop_processors.cancel();
    for task in processor_tasks {
        let _ = task.await;
    }
    for store in stores.values() {
        store.close().await;
    }
    registry.settle().await;
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
