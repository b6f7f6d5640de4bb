//! Tenants: each one a pipeline, a plugin registry and metrics of its own,
//! in one process.
//!
//! # Layout
//!
//! The top-level config is the `default` tenant: its data stays directly
//! under `data_dir` (`pipeline/`, `plugins/`, `stores/`), its objects keep
//! the bare admin paths and its routes the bare ingress paths. Every other
//! tenant lives under `data_dir/tenants/{name}/` with the same layout, plus
//! `tenant.json` (its spec: prefix and hosts), written durably (temporary
//! file, fsync, rename) before the tenant starts. At start, every directory
//! with a `tenant.json` is a tenant; `[tenants.NAME]` in the file creates or
//! updates one, and its tables are that tenant's file revision (as the
//! top-level tables are the default tenant's).
//!
//! # Routing
//!
//! A tenant's routes are served under its prefix (one path segment, default
//! `/{name}`) and on its `hosts`. No two tenants may claim the same prefix
//! or host, and no route of the default tenant may start with a tenant's
//! prefix: both are refused (`422`, naming both sides) when a tenant is put
//! and when the default tenant applies a pipeline.
//!
//! # Deleting
//!
//! A tenant whose stores hold messages is only deleted when forced. Its
//! processors stop, its stores close, and its directory moves to
//! `data_dir/deleted-tenants/{name}-{unix ms}/`: nothing is destroyed, and an
//! operator can bring the messages back by hand.
//!
//! [`Tenants`] is the one list of tenants: the admin API looks a tenant up
//! in it, and it keeps the ingress [`Dispatch`] in step with it.

use crate::dead_letters::jobs::Jobs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{
    DEFAULT_TENANT, Document, Invalid, Problems, Quotas, TenantDeclaration, TenantSpec,
    ValidPipeline, tenant_name_problem, validate_spec,
};
use crate::ingress::{Dispatch, DispatchTable};
use crate::metrics::Metrics;
use crate::pipeline::{Context, Guard, Pipeline, StartError};
use crate::plugins::registry::Registry;
pub use tokens::{Role, TokenError, TokenRecord, Tokens};

pub mod quota;
pub mod tokens;

pub use quota::{Limits, OverQuota};

/// The tenant the top-level config describes.
pub const DEFAULT: &str = DEFAULT_TENANT;

/// Why a tenant could not start. (The `default` tenant's errors read as
/// they did before there were tenants.)
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// (Shown whole: not a `source`, so that `{:#}` does not say it twice.)
    #[error("{}{error}", of(tenant))]
    Pipeline { tenant: String, error: StartError },
    #[error("{}{reason}", of(tenant))]
    Data { tenant: String, reason: String },
}

fn of(tenant: &str) -> String {
    if tenant == DEFAULT {
        String::new()
    } else {
        format!("tenant {tenant:?}: ")
    }
}

/// Why a tenant change was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Not a tenant name (400).
    #[error("{0}")]
    Name(String),
    /// The spec is wrong or claims what another tenant has (422).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Invalid>),
    /// No such tenant (404).
    #[error("no tenant named {0:?}")]
    Unknown(String),
    /// Would strand messages, or touches the default tenant (409).
    #[error("{0}")]
    Conflict(String),
    /// The tenant's data could not be written or opened (500).
    #[error(transparent)]
    Failed(#[from] TenantError),
}

/// One tenant's running objects.
pub struct Tenant {
    pub name: String,
    pub spec: TenantSpec,
    pub pipeline: Arc<Pipeline>,
    pub plugins: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub tokens: Arc<Tokens>,
    /// Its quotas in force (its own, else the server's defaults).
    pub limits: Arc<Limits>,
    /// Its replays and purges (`dead_letters::jobs`).
    pub jobs: Arc<Jobs>,
}

/// What every tenant shares.
pub struct Instance {
    pub data_dir: PathBuf,
    /// What relative plugin and TLS paths in documents are relative to.
    pub base: PathBuf,
    /// The instance's metrics; each tenant has its handle.
    pub metrics: Arc<Metrics>,
    /// `[server.quotas]`: every tenant's but `default`'s, where it sets none.
    pub quotas: Quotas,
}

impl Instance {
    /// The quotas in force for tenant `name` with `own`.
    fn quotas_of(&self, name: &str, own: &Quotas) -> Quotas {
        if name == DEFAULT {
            Quotas::default()
        } else {
            own.or(&self.quotas)
        }
    }
}

impl Instance {
    /// Where tenant `name`'s durable data lives.
    pub fn tenant_dir(&self, name: &str) -> PathBuf {
        if name == DEFAULT {
            self.data_dir.clone()
        } else {
            self.data_dir.join("tenants").join(name)
        }
    }
}

/// Who claims which path prefix and host name: what the routing checks read.
#[derive(Debug, Clone, Default)]
struct Claims {
    /// Prefix segment -> tenant.
    prefixes: BTreeMap<String, String>,
    /// Host -> tenant.
    hosts: BTreeMap<String, String>,
    /// The first path segment of each default route -> that route.
    default_routes: BTreeMap<String, String>,
}

impl Claims {
    /// Problems of tenant `name` claiming what `spec` names.
    fn check(&self, key: &str, name: &str, spec: &TenantSpec) -> Vec<Invalid> {
        let mut out = Vec::new();
        if let Some(prefix) = spec.prefix_segment(name) {
            if let Some(other) = self.prefixes.get(&prefix).filter(|o| *o != name) {
                out.push(Invalid {
                    key: format!("{key}.prefix"),
                    reason: format!("/{prefix} is already tenant {other:?}'s prefix"),
                });
            }
            if let Some(route) = self.default_routes.get(&prefix) {
                out.push(Invalid {
                    key: format!("{key}.prefix"),
                    reason: format!(
                        "/{prefix} overlaps the default tenant's route {route} (tenant {name:?} would take its requests)"
                    ),
                });
            }
        }
        for host in spec.host_names() {
            if let Some(other) = self.hosts.get(&host).filter(|o| *o != name) {
                out.push(Invalid {
                    key: format!("{key}.hosts"),
                    reason: format!("{host} is already tenant {other:?}'s host"),
                });
            }
        }
        out
    }

    /// Problems of the default tenant's routes under the tenants' prefixes.
    fn check_default(&self, pipeline: &ValidPipeline) -> Vec<Invalid> {
        pipeline
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, route)| {
                let tenant = self.prefixes.get(first_segment(&route.path))?;
                Some(Invalid {
                    key: format!("routes[{i}].path"),
                    reason: format!(
                        "{} overlaps tenant {tenant:?}'s prefix /{} (that tenant would take its requests)",
                        route.path,
                        first_segment(&route.path)
                    ),
                })
            })
            .collect()
    }
}

fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or("")
}

/// The tenants of an instance.
pub struct Tenants {
    instance: Instance,
    default: Arc<Tenant>,
    /// Every other tenant.
    map: ArcSwap<BTreeMap<String, Arc<Tenant>>>,
    claims: Arc<ArcSwap<Claims>>,
    dispatch: Arc<Dispatch>,
    /// One tenant change (put, delete) at a time.
    changing: tokio::sync::Mutex<()>,
}

impl Tenants {
    /// Starts the `default` tenant from the config file's pipeline, every
    /// tenant found under `data_dir/tenants`, and those the file declares.
    pub async fn start(
        instance: Instance,
        document: &Document,
        declared: &BTreeMap<String, TenantDeclaration>,
    ) -> Result<Tenants, TenantError> {
        let mut specs = stored_specs(&instance)?;
        // Only a declared spec that differs from the stored one is written.
        let mut changed = Vec::new();
        for (name, d) in declared {
            if specs.get(name) != Some(&d.spec) {
                changed.push(name.clone());
            }
            specs.insert(name.clone(), d.spec.clone());
        }
        // Two tenants (of the file, or one stored and one declared) must not
        // claim the same prefix or host.
        let mut seen = Claims::default();
        for (name, spec) in &specs {
            let problems = seen.check(&format!("tenants.{name}"), name, spec);
            if !problems.is_empty() {
                return Err(TenantError::Data {
                    tenant: name.clone(),
                    reason: problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
            if let Some(prefix) = spec.prefix_segment(name) {
                seen.prefixes.insert(prefix, name.clone());
            }
            for host in spec.host_names() {
                seen.hosts.insert(host, name.clone());
            }
        }
        let mut all = BTreeMap::new();
        for (name, spec) in &specs {
            let file = declared.get(name).map(|d| &d.pipeline);
            if changed.contains(name) {
                write_spec(&instance, name, spec)?;
            }
            let tenant = start_tenant(&instance, name, spec.clone(), file, None).await?;
            all.insert(name.clone(), Arc::new(tenant));
        }
        let claims = Arc::new(ArcSwap::from_pointee(claims_of(None, &all)));
        let guard: Guard = {
            let claims = claims.clone();
            Arc::new(move |pipeline: &ValidPipeline| claims.load().check_default(pipeline))
        };
        let default = Arc::new(
            start_tenant(
                &instance,
                DEFAULT,
                TenantSpec::default(),
                Some(document),
                Some(guard),
            )
            .await?,
        );
        let tenants = Tenants {
            instance,
            default,
            map: ArcSwap::from_pointee(all),
            claims,
            dispatch: Arc::new(Dispatch::default()),
            changing: tokio::sync::Mutex::new(()),
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

    /// The tenant and role of a tenant token's secret, if it is a live one.
    pub fn authenticate(&self, secret: &str) -> Option<(String, Role)> {
        let tenant = self.get(tokens::tenant_of(secret)?)?;
        let role = tenant.tokens.check(secret)?;
        Some((tenant.name.clone(), role))
    }

    /// Held while tenant `name`'s routes change, if they take part in the
    /// routing checks (the default tenant's bare routes, against every
    /// tenant's prefix): a tenant `PUT` and a default apply then never
    /// check against each other's state from before the other.
    pub async fn routes_changing(&self, name: &str) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match name == DEFAULT_TENANT {
            true => Some(self.changing.lock().await),
            false => None,
        }
    }

    /// Creates tenant `name` or changes its spec; true when it was created.
    pub async fn put(&self, name: &str, spec: TenantSpec) -> Result<bool, ChangeError> {
        if let Some(why) = tenant_name_problem(name) {
            return Err(ChangeError::Name(format!("{name:?}: {why}")));
        }
        let _one = self.changing.lock().await;
        let mut problems = Vec::new();
        validate_spec(&mut Problems::new(&mut problems), "tenant", name, &spec);
        if problems.is_empty() {
            problems = self.claims_now().check("tenant", name, &spec);
        }
        if !problems.is_empty() {
            return Err(ChangeError::Invalid(problems));
        }
        let existing = self.get(name);
        if let Some(tenant) = &existing
            && tenant.spec == spec
        {
            return Ok(false);
        }
        write_spec(&self.instance, name, &spec)?;
        let quotas = self.instance.quotas_of(name, &spec.quotas);
        let tenant = match existing {
            // A new spec only changes how the tenant is reached: the same
            // running pipeline, registry and metrics, under a new entry.
            Some(old) => Tenant {
                name: old.name.clone(),
                spec,
                pipeline: old.pipeline.clone(),
                plugins: old.plugins.clone(),
                metrics: old.metrics.clone(),
                tokens: old.tokens.clone(),
                limits: {
                    old.limits.set(quotas);
                    old.limits.clone()
                },
                jobs: old.jobs.clone(),
            },
            None => start_tenant(&self.instance, name, spec, None, None).await?,
        };
        let created = !self.map.load().contains_key(name);
        let mut map = BTreeMap::clone(&self.map.load());
        map.insert(name.to_owned(), Arc::new(tenant));
        self.map.store(Arc::new(map));
        self.publish();
        if created {
            tracing::info!(tenant = %name, "tenant created");
        }
        Ok(created)
    }

    /// Deletes tenant `name`: refused while its stores hold messages unless
    /// `force` (see the module doc).
    pub async fn delete(&self, name: &str, force: bool) -> Result<PathBuf, ChangeError> {
        if name == DEFAULT {
            return Err(ChangeError::Conflict(
                "the default tenant cannot be deleted".into(),
            ));
        }
        let _one = self.changing.lock().await;
        let Some(tenant) = self.map.load().get(name).cloned() else {
            return Err(ChangeError::Unknown(name.to_owned()));
        };
        if !force {
            let mut holding = Vec::new();
            for (store_name, store) in &tenant.pipeline.view().stores {
                match store.depth().await {
                    Ok(0) => {}
                    Ok(n) => holding.push(format!("{store_name} holds {n} message(s)")),
                    Err(e) => holding.push(format!("{store_name}: depth unknown ({e})")),
                }
            }
            if !holding.is_empty() {
                return Err(ChangeError::Conflict(format!(
                    "tenant {name:?}: {}; delete with force to do it anyway (its data moves to data_dir/deleted-tenants/)",
                    holding.join(", ")
                )));
            }
        }
        let mut map = BTreeMap::clone(&self.map.load());
        map.remove(name);
        self.map.store(Arc::new(map));
        self.publish();
        tenant.pipeline.stop_processors().await;
        tenant.pipeline.close_stores().await;
        tenant.plugins.settle().await;
        let millis = chrono::Utc::now().timestamp_millis();
        let aside = self
            .instance
            .data_dir
            .join("deleted-tenants")
            .join(format!("{name}-{millis}"));
        let moved = std::fs::create_dir_all(aside.parent().unwrap_or(Path::new(".")))
            .and_then(|()| std::fs::rename(self.instance.tenant_dir(name), &aside));
        if let Err(e) = moved {
            return Err(ChangeError::Failed(TenantError::Data {
                tenant: name.to_owned(),
                reason: format!(
                    "stopped, but its data could not be moved to {}: {e}",
                    aside.display()
                ),
            }));
        }
        tracing::info!(tenant = %name, moved_to = %aside.display(), "tenant deleted");
        Ok(aside)
    }

    /// The claims of every tenant and of the default tenant's live routes.
    fn claims_now(&self) -> Claims {
        claims_of(Some(&self.default), &self.map.load())
    }

    /// Makes ingress serve the tenants as they are now, and the routing
    /// checks see them.
    fn publish(&self) {
        let map = self.map.load();
        let mut table = DispatchTable {
            default: Some(self.default.pipeline.routes()),
            ..DispatchTable::default()
        };
        for (name, tenant) in map.iter() {
            if let Some(prefix) = tenant.spec.prefix_segment(name) {
                table.prefixes.insert(prefix, tenant.pipeline.routes());
            }
            for host in tenant.spec.host_names() {
                table.hosts.insert(host, tenant.pipeline.routes());
            }
        }
        self.dispatch.swap(table);
        self.claims.store(Arc::new(self.claims_now()));
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

fn claims_of(default: Option<&Arc<Tenant>>, tenants: &BTreeMap<String, Arc<Tenant>>) -> Claims {
    let mut claims = Claims::default();
    for (name, tenant) in tenants {
        if let Some(prefix) = tenant.spec.prefix_segment(name) {
            claims.prefixes.insert(prefix, name.clone());
        }
        for host in tenant.spec.host_names() {
            claims.hosts.insert(host, name.clone());
        }
    }
    if let Some(default) = default {
        let view = default.pipeline.view();
        if let Some(routes) = view.document.get("routes").and_then(|r| r.as_array()) {
            for path in routes.iter().filter_map(|r| r.get("path")?.as_str()) {
                claims
                    .default_routes
                    .insert(first_segment(path).to_owned(), path.to_owned());
            }
        }
    }
    claims
}

/// The specs of the tenants under `data_dir/tenants`.
fn stored_specs(instance: &Instance) -> Result<BTreeMap<String, TenantSpec>, TenantError> {
    let dir = instance.data_dir.join("tenants");
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(TenantError::Data {
                tenant: "(all)".into(),
                reason: format!("{}: {e}", dir.display()),
            });
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let file = entry.path().join("tenant.json");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let spec = serde_json::from_str::<TenantSpec>(&text).map_err(|e| TenantError::Data {
            tenant: name.clone(),
            reason: format!("{}: {e}", file.display()),
        })?;
        out.insert(name, spec);
    }
    Ok(out)
}

/// Writes `tenant.json` durably.
fn write_spec(instance: &Instance, name: &str, spec: &TenantSpec) -> Result<(), TenantError> {
    let dir = instance.tenant_dir(name);
    let data_error = |e: std::io::Error| TenantError::Data {
        tenant: name.to_owned(),
        reason: format!("{}: {e}", dir.display()),
    };
    std::fs::create_dir_all(&dir).map_err(data_error)?;
    let text = serde_json::to_vec_pretty(spec).unwrap_or_default();
    crate::durable::write(&dir.join("tenant.json"), &text).map_err(data_error)
}

/// Opens tenant `name`'s registry and starts its pipeline from `file` (or
/// its live revision; see `pipeline`).
async fn start_tenant(
    instance: &Instance,
    name: &str,
    spec: TenantSpec,
    file: Option<&Document>,
    guard: Option<Guard>,
) -> Result<Tenant, TenantError> {
    let data_dir = instance.tenant_dir(name);
    let data_error = |reason: String| TenantError::Data {
        tenant: name.to_owned(),
        reason,
    };
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| data_error(format!("{}: {e}", data_dir.display())))?;
    let host = crate::plugins::Host::shared().map_err(|e| data_error(format!("plugins: {e}")))?;
    let plugins =
        Arc::new(Registry::open(host, &data_dir).map_err(|e| data_error(format!("plugins: {e}")))?);
    let metrics = Arc::new(instance.metrics.for_tenant(name));
    let tokens = Arc::new(
        Tokens::open(name, data_dir.join("tokens.json")).map_err(|e| data_error(e.to_string()))?,
    );
    let limits = Arc::new(Limits::new(
        name,
        instance.quotas_of(name, &spec.quotas),
        plugins.instances().clone(),
    ));
    // Every apply is checked against the object quotas, and the routing
    // check when there is one.
    let guard: Guard = {
        let limits = limits.clone();
        Arc::new(move |pipeline: &ValidPipeline| {
            let mut problems = limits.check_pipeline(pipeline);
            if let Some(routing) = &guard {
                problems.extend(routing(pipeline));
            }
            problems
        })
    };
    let context = Context {
        tenant: name.to_owned(),
        data_dir,
        base: instance.base.clone(),
        registry: plugins.clone(),
        metrics: metrics.clone(),
        guard: Some(guard),
        limits: limits.clone(),
        tokens: tokens.clone(),
    };
    let pipeline = Pipeline::start(context, file)
        .await
        .map_err(|error| TenantError::Pipeline {
            tenant: name.to_owned(),
            error,
        })?;
    Ok(Tenant {
        name: name.to_owned(),
        spec,
        pipeline: Arc::new(pipeline),
        plugins,
        metrics,
        tokens,
        limits,
        jobs: Arc::default(),
    })
}
