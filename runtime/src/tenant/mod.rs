//! Tenants: each one a pipeline, a plugin registry and metrics of its own,
//! in one process.
//!
//! The top-level config is the `default` tenant: its data stays directly
//! under `data_dir` (`pipeline/`, `plugins/`, `stores/`), its objects keep
//! the bare admin paths and its routes the bare ingress paths. Every other
//! tenant lives under `data_dir/tenants/{name}/` with the same layout.
//!
//! [`Tenants`] is the one list of tenants: the admin API looks a tenant up
//! in it, and it keeps the ingress [`Dispatch`] (which tenant's routes serve
//! a request) in step with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Document;
use crate::ingress::{Dispatch, DispatchTable};
use crate::metrics::Metrics;
use crate::pipeline::{Context, Pipeline, StartError};
use crate::plugins::registry::{DeployError, Registry};

/// The tenant the top-level config describes.
pub const DEFAULT: &str = "default";

/// Why a tenant could not start. (The `default` tenant's errors read as
/// they did before there were tenants.)
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("{}{source}", of(tenant))]
    Pipeline {
        tenant: String,
        #[source]
        source: StartError,
    },
    #[error("{}plugins: {reason}", of(tenant))]
    Registry { tenant: String, reason: String },
}

fn of(tenant: &str) -> String {
    if tenant == DEFAULT {
        String::new()
    } else {
        format!("tenant {tenant:?}: ")
    }
}

/// One tenant's running objects.
pub struct Tenant {
    pub name: String,
    pub pipeline: Arc<Pipeline>,
    pub plugins: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

impl Tenant {
    /// Where a tenant's durable data lives.
    pub fn data_dir(root: &Path, name: &str) -> PathBuf {
        if name == DEFAULT {
            root.to_owned()
        } else {
            root.join("tenants").join(name)
        }
    }

    /// Opens tenant `name`'s registry and starts its pipeline from `document`
    /// (or its live revision; see `pipeline`).
    async fn start(
        name: &str,
        instance: &Instance,
        document: &Document,
    ) -> Result<Tenant, TenantError> {
        let data_dir = Tenant::data_dir(&instance.data_dir, name);
        let registry_error = |e: DeployError| TenantError::Registry {
            tenant: name.to_owned(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&data_dir).map_err(|e| TenantError::Registry {
            tenant: name.to_owned(),
            reason: format!("{}: {e}", data_dir.display()),
        })?;
        let host = crate::plugins::Host::shared().map_err(|e| TenantError::Registry {
            tenant: name.to_owned(),
            reason: e.to_string(),
        })?;
        let plugins = Arc::new(Registry::open(host, &data_dir).map_err(registry_error)?);
        let metrics = Arc::new(instance.metrics.for_tenant(name));
        let context = Context {
            data_dir,
            base: instance.base.clone(),
            registry: plugins.clone(),
            metrics: metrics.clone(),
        };
        let pipeline =
            Pipeline::start(context, document)
                .await
                .map_err(|source| TenantError::Pipeline {
                    tenant: name.to_owned(),
                    source,
                })?;
        Ok(Tenant {
            name: name.to_owned(),
            pipeline: Arc::new(pipeline),
            plugins,
            metrics,
        })
    }
}

/// What every tenant shares.
pub struct Instance {
    pub data_dir: PathBuf,
    /// What relative plugin and TLS paths in documents are relative to.
    pub base: PathBuf,
    /// The instance's metrics; each tenant has its handle.
    pub metrics: Arc<Metrics>,
}

/// The tenants of an instance.
pub struct Tenants {
    instance: Instance,
    default: Arc<Tenant>,
    /// Every other tenant.
    map: ArcSwap<BTreeMap<String, Arc<Tenant>>>,
    dispatch: Arc<Dispatch>,
}

impl Tenants {
    /// Starts the `default` tenant from the config file's pipeline.
    pub async fn start(instance: Instance, document: &Document) -> Result<Tenants, TenantError> {
        let default = Arc::new(Tenant::start(DEFAULT, &instance, document).await?);
        let tenants = Tenants {
            instance,
            default,
            map: ArcSwap::from_pointee(BTreeMap::new()),
            dispatch: Arc::new(Dispatch::default()),
        };
        tenants.publish();
        Ok(tenants)
    }

    /// What ingress serves.
    pub fn dispatch(&self) -> Arc<Dispatch> {
        self.dispatch.clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Tenant>> {
        if name == DEFAULT {
            Some(self.default.clone())
        } else {
            self.map.load().get(name).cloned()
        }
    }

    /// The `default` tenant, which always exists.
    pub fn default_tenant(&self) -> &Arc<Tenant> {
        &self.default
    }

    /// Every tenant, `default` first, then by name.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        std::iter::once(self.default.clone())
            .chain(self.map.load().values().cloned())
            .collect()
    }

    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Makes ingress serve the tenants as they are now.
    fn publish(&self) {
        let mut table = DispatchTable {
            default: Some(self.default.pipeline.routes()),
            ..DispatchTable::default()
        };
        for (name, tenant) in self.map.load().iter() {
            table
                .prefixes
                .insert(name.clone(), tenant.pipeline.routes());
        }
        self.dispatch.swap(table);
    }

    /// Stops every tenant's processors (an attempt in flight finishes).
    pub async fn stop_processors(&self) {
        for tenant in self.all() {
            tenant.pipeline.stop_processors().await;
        }
    }

    /// Closes every tenant's stores and lets plugin artefacts be written.
    pub async fn close(&self) {
        for tenant in self.all() {
            tenant.pipeline.close_stores().await;
            tenant.plugins.settle().await;
        }
    }
}
