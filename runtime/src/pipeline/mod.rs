//! Live pipelines: the desired state as a document, and the one owner that
//! makes the running stores, routes and processors match it.
//!
//! # Documents and revisions
//!
//! A pipeline document is the config without `[server]` (TOML, or JSON with
//! the same keys). Every applied document is a revision, numbered from 1.
//! The config file is the first; `PUT /api/v1/pipeline`, `wharf apply`,
//! `wharf reload` (and SIGHUP) and rollbacks add more.
//!
//! ```text
//! data_dir/pipeline/
//!   r1.json, r2.json ...  {"revision", "applied_at", "source", "digest", "document"}
//!   live                  the live revision's number
//!   deactivated.json      processors deactivated, with reason and since
//! ```
//!
//! The newest [`revisions::KEPT`] revisions are kept, and always the live
//! one and the newest from the file; older files are deleted after a commit.
//!
//! # What is written when
//!
//! An apply validates the document (pure), diffs it against the live one,
//! refuses what would strand messages (409), and opens what it needs (new
//! and reopened stores, plugins named by path); nothing has changed yet, and
//! any failure so far closes what it opened. Then it writes `rN.json`
//! (temporary file, fsync, rename, fsync of the directory), then the `live`
//! pointer the same way, and only then changes what runs. So a `kill -9` at
//! any moment leaves, after the restart, either the old revision live (the
//! pointer was not renamed yet) or the new one, whole.
//!
//! # Restart
//!
//! At start the live revision is the one the pointer names. The file is
//! only the first revision: if it is unchanged since it was last applied
//! (same digest as the newest `file` revision), the pointer's revision
//! stays live, whatever the API applied since. If the file was edited, it
//! is applied as a new revision, as `wharf reload` would. Without a pointer,
//! the file becomes revision 1.
//!
//! # Reconciling
//!
//! Only what differs is touched, in this order:
//!
//! 1. Processors that change or go are drained: state `draining`, their
//!    attempt in flight finishes (a retry wait is cut short), and every
//!    message they leased goes back to its store's head. A processor is
//!    also restarted when its store is reopened.
//! 2. The store map, the chains (retry and fail-over) and the route table
//!    are swapped whole. Ingress and dead-lettering read snapshots, never a
//!    lock: a request in flight finishes on the table it started with.
//!    A kept store whose settings changed in ways it can take in place
//!    (an embedded store's `max_messages`) is told so; one whose backend
//!    settings changed is reopened as a new store object.
//! 3. New and changed processors start, from the store's head: nothing is
//!    skipped (leased messages were returned), nothing is delivered twice
//!    (acks were sent before the old one stopped), order is kept.
//! 4. Stores that were removed or reopened are closed once no request holds
//!    the old route table or chains (bounded by [`DRAIN`]).
//!
//! An unchanged processor is not touched: no restart, no reconnect, no
//! redelivery. Removing a store that holds messages, or changing its
//! backend or queue, is refused with `409` unless the apply is forced; a
//! forced removal leaves the messages where they are (the file under
//! `data_dir/stores`, or the queue), and adding the store back serves them.

pub mod diff;
pub mod revisions;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{
    BackendSettings, ConfigError, Document, Invalid, ProcessorSettings, StoreSettings,
    ValidPipeline,
};
use crate::ingress::{RouteTable, Routes};
use crate::metrics::Metrics;
use crate::plugins::registry::Registry;
use crate::plugins::{self, Lookup, Resolved};
use crate::processor::{Deactivations, DeadLetter, PluginsReady, Processor, ProcessorHandle};
use crate::store::chain::{ChainSet, chains};
use crate::store::{self, Store, Stores};
use diff::Diff;
use revisions::{Revision, RevisionError, RevisionInfo, Revisions};

/// How long retiring stores wait for requests in flight on the old route table.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Why an apply was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The document is not valid (422): every problem with its key.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Invalid>),
    /// The apply would strand messages or clash with the running state (409).
    #[error("{}", .0.join("\n"))]
    Conflict(Vec<String>),
    /// Revisions could not be read or written (500).
    #[error(transparent)]
    Storage(#[from] RevisionError),
}

impl From<ConfigError> for ApplyError {
    fn from(e: ConfigError) -> ApplyError {
        match e {
            ConfigError::Invalid(problems) => ApplyError::Invalid(problems),
            other => ApplyError::Invalid(vec![Invalid {
                key: "document".into(),
                reason: other.to_string(),
            }]),
        }
    }
}

/// How to apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Answer the diff, change nothing.
    pub dry_run: bool,
    /// Remove (or change the backend or queue of) stores that hold messages;
    /// the messages stay in the store's file or queue.
    pub force: bool,
}

/// What an apply did (or, dry, would do).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Applied {
    /// The live revision afterwards (unchanged by a dry run).
    pub revision: u64,
    pub diff: Diff,
    pub dry_run: bool,
    /// A reload's notes on `[server]` keys it cannot take live (`reload` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<Vec<String>>,
}

/// What the pipeline's owner needs from the instance.
pub struct Context {
    /// The tenant whose pipeline this is.
    pub tenant: String,
    pub data_dir: PathBuf,
    /// What relative plugin and TLS paths in documents are relative to.
    pub base: PathBuf,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Checks that need more than the document (the tenants' routing); its
    /// problems refuse an apply like the document's own.
    pub guard: Option<Guard>,
    /// The tenant's quotas, which ingress asks before storing.
    pub limits: Arc<crate::tenant::Limits>,
    /// The tenant's tokens, which routes with `tenant_tokens` check.
    pub tokens: Arc<crate::tenant::Tokens>,
}

/// A check of a valid pipeline against the rest of the instance.
pub type Guard = Arc<dyn Fn(&ValidPipeline) -> Vec<Invalid> + Send + Sync>;

/// A processor that runs, and how to stop it.
struct Running {
    settings: ProcessorSettings,
    handle: ProcessorHandle,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What runs now; changed only by an apply, one at a time.
struct Live {
    revision: u64,
    document: Document,
    pipeline: ValidPipeline,
    stores: Stores,
    processors: BTreeMap<String, Running>,
}

/// What the admin API reads: a snapshot of the live pipeline.
#[derive(Clone, Default)]
pub struct View {
    pub revision: u64,
    /// The live document, as JSON.
    pub document: serde_json::Value,
    pub stores: Stores,
    pub processors: Vec<ProcessorHandle>,
}

/// The owner of one pipeline's running objects (see the module doc).
pub struct Pipeline {
    ctx: Context,
    live: tokio::sync::Mutex<Live>,
    routes: Arc<Routes>,
    chains: Arc<ChainSet>,
    view: ArcSwap<View>,
    revisions: Revisions,
    deactivations: Arc<Deactivations>,
}

/// The plan of one apply: what is opened, stopped, started and closed.
struct Plan {
    diff: Diff,
    /// Stores opened anew: added ones, and reopened ones.
    open: Vec<String>,
    /// Kept stores whose settings changed (told in place).
    reconfigure: Vec<String>,
    /// Store objects closed afterwards: removed ones, and the old objects of reopened ones.
    retire: Vec<String>,
    /// Processors stopped (changed, removed, or on a reopened store).
    stop: Vec<String>,
    /// Processors started (added, changed, or on a reopened store).
    start: Vec<String>,
}

impl Pipeline {
    /// Starts the pipeline of `file` (the config file's revision) or, if the
    /// file is unchanged since it was last applied, the live revision under
    /// `data_dir` (see the module doc).
    /// Without a file (a tenant created through the API), the live revision
    /// starts, or nothing at revision 0.
    pub async fn start(ctx: Context, file: Option<&Document>) -> Result<Pipeline, StartError> {
        let dir = ctx.data_dir.join("pipeline");
        let revisions = Revisions::open(dir.clone())?;
        let deactivations = Deactivations::open(dir.join("deactivated.json")).map_err(|e| {
            StartError::Revision(RevisionError {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })
        })?;
        let pipeline = Pipeline {
            live: tokio::sync::Mutex::new(Live {
                revision: 0,
                document: Document::empty(),
                pipeline: ValidPipeline::default(),
                stores: Stores::new(),
                processors: BTreeMap::new(),
            }),
            routes: Arc::new(Routes::new(RouteTable::empty(
                &ctx.metrics,
                &ctx.limits,
                &ctx.tokens,
            ))),
            chains: Arc::new(ChainSet::new(Default::default())),
            view: ArcSwap::from_pointee(View::default()),
            revisions,
            deactivations: Arc::new(deactivations),
            ctx,
        };
        let from_file = pipeline.revisions.last_from_file()?;
        let live = pipeline.revisions.live()?;
        let Some(file) = file else {
            let (document, revision) = match live {
                Some(live) => (
                    Document::from_value(live.document).map_err(|e| StartError::Invalid {
                        revision: live.revision,
                        dir: dir.clone(),
                        reason: e.to_string(),
                    })?,
                    live.revision,
                ),
                None => (Document::empty(), 0),
            };
            return match pipeline.boot(document, revision).await {
                Ok(_) => Ok(pipeline),
                Err(ApplyError::Storage(e)) => Err(StartError::Revision(e)),
                Err(e) => Err(StartError::Invalid {
                    revision,
                    dir,
                    reason: e.to_string(),
                }),
            };
        };
        let (document, record) = match live {
            Some(live) if from_file.is_some_and(|f| f.digest == file.digest()) => {
                let document =
                    Document::from_value(live.document).map_err(|e| StartError::Invalid {
                        revision: live.revision,
                        dir: dir.clone(),
                        reason: e.to_string(),
                    })?;
                if live.source != "file" {
                    tracing::info!(revision = live.revision, source = %live.source, "the live revision was applied after the config file; it stays live");
                }
                (document, Some(live.revision))
            }
            Some(live) => {
                tracing::info!(
                    revision = live.revision,
                    "the config file changed since it was last applied: applying it as a new revision"
                );
                (file.clone(), None)
            }
            None => (file.clone(), None),
        };
        let applied = match record {
            Some(revision) => pipeline.boot(document, revision).await,
            None => pipeline.apply(document, "file", Options::default()).await,
        };
        match (applied, record) {
            (Ok(_), _) => Ok(pipeline),
            (Err(ApplyError::Storage(e)), _) => Err(StartError::Revision(e)),
            (Err(e), Some(revision)) => Err(StartError::Invalid {
                revision,
                dir,
                reason: e.to_string(),
            }),
            (Err(e), None) => Err(StartError::File(e.to_string())),
        }
    }

    /// Starts a stored revision without recording it again.
    async fn boot(&self, document: Document, revision: u64) -> Result<Applied, ApplyError> {
        let mut live = self.live.lock().await;
        self.reconcile(&mut live, document, Options::default(), |_| Ok(revision))
            .await
    }

    /// The route table ingress serves.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    /// A snapshot of what runs, for the admin API.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    pub fn revisions(&self) -> Result<Vec<RevisionInfo>, RevisionError> {
        self.revisions.list()
    }

    /// Validates `document` and, unless dry, makes it the live revision.
    pub async fn apply(
        &self,
        document: Document,
        source: &str,
        options: Options,
    ) -> Result<Applied, ApplyError> {
        let mut live = self.live.lock().await;
        self.reconcile(&mut live, document.clone(), options, |revisions| {
            let revision = Revision {
                revision: revisions.next_number()?,
                applied_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                source: source.to_owned(),
                digest: document.digest(),
                document: document.value.clone(),
            };
            revisions.commit(&revision)?;
            Ok(revision.revision)
        })
        .await
    }

    /// Applies stored revision `revision` again, as a new revision.
    pub async fn rollback(&self, revision: u64, options: Options) -> Result<Applied, ApplyError> {
        let Some(stored) = self.revisions.get(revision)? else {
            return Err(ApplyError::Conflict(vec![format!(
                "there is no revision {revision}"
            )]));
        };
        let document = Document::from_value(stored.document)?;
        self.apply(document, &format!("rollback of {revision}"), options)
            .await
    }

    /// Validates, plans, opens, records (through `record`, which returns the
    /// new revision's number) and reconciles. Nothing changes before
    /// `record` succeeds.
    async fn reconcile(
        &self,
        live: &mut Live,
        document: Document,
        options: Options,
        record: impl FnOnce(&Revisions) -> Result<u64, RevisionError>,
    ) -> Result<Applied, ApplyError> {
        let mut pipeline = document.validate(&self.ctx.base)?;
        if self.ctx.tenant != crate::config::DEFAULT_TENANT {
            for (name, store) in &mut pipeline.stores {
                if let Some(written) = document.config.stores.get(name) {
                    store
                        .backend
                        .scope_to_tenant(&self.ctx.tenant, &written.settings);
                }
            }
        }
        if let Some(guard) = &self.ctx.guard {
            let problems = guard(&pipeline);
            if !problems.is_empty() {
                return Err(ApplyError::Invalid(problems));
            }
        }
        let plan = plan(live, &document, &pipeline);
        self.refuse_stranding(live, &plan, &pipeline, options)
            .await?;
        if options.dry_run {
            return Ok(Applied {
                revision: live.revision,
                diff: plan.diff,
                dry_run: true,
                notes: None,
            });
        }

        // Everything that can fail, before anything changes.
        let mut opened = Stores::new();
        let mut problems = Vec::new();
        for name in &plan.open {
            let settings = &pipeline.stores[name];
            match store::open(settings, &self.ctx.data_dir) {
                Ok(store) => {
                    opened.insert(name.clone(), store);
                }
                Err(e) => problems.push(Invalid {
                    key: format!("stores.{name}"),
                    reason: e.to_string(),
                }),
            }
        }
        // Routes' bearer tokens, from the environment at each apply.
        let mut bearers = BTreeMap::new();
        for (i, route) in pipeline.routes.iter().enumerate() {
            let Some(var) = &route.bearer_env else {
                continue;
            };
            match std::env::var(var) {
                Ok(token) if !token.is_empty() => {
                    bearers.insert(route.path.clone(), token);
                }
                _ => problems.push(Invalid {
                    key: format!("routes[{i}].auth.bearer_env"),
                    reason: format!("the environment variable {var} is not set (or empty)"),
                }),
            }
        }
        let mut resolved = BTreeMap::new();
        for name in &plan.start {
            let p = &pipeline.processors[name];
            match plugins::resolve(p, Lookup::Registry(&self.ctx.registry)) {
                Ok(r) => {
                    resolved.insert(name.clone(), r);
                }
                Err(e) => problems.push(Invalid {
                    key: format!("processors.{}.{}", e.processor, e.key),
                    reason: e.reason,
                }),
            }
        }
        let recorded = if problems.is_empty() {
            record(&self.revisions).map_err(ApplyError::Storage)
        } else {
            Err(ApplyError::Invalid(problems))
        };
        let revision = match recorded {
            Ok(revision) => revision,
            Err(e) => {
                for store in opened.values() {
                    store.close().await;
                }
                return Err(e);
            }
        };

        // 1. Drain what stops.
        let mut stopping = Vec::new();
        for name in &plan.stop {
            if let Some(running) = live.processors.remove(name) {
                running.handle.drain();
                running.stop.cancel();
                stopping.push(running);
            }
        }
        for running in stopping {
            let _ = running.task.await;
        }

        // 2. Swap stores, chains and routes.
        let mut retired = Vec::new();
        for name in &plan.retire {
            if let Some(store) = live.stores.remove(name) {
                retired.push(store);
            }
        }
        for name in &plan.reconfigure {
            if let Some(store) = live.stores.get(name)
                && !store.reconfigure(&pipeline.stores[name])
            {
                tracing::warn!(store = %name, "store did not take its new settings in place");
            }
        }
        live.stores.extend(opened);
        let new_chains = chains(&live.stores, &pipeline.stores, &self.ctx.metrics);
        let table = RouteTable::new(
            &pipeline.routes,
            &new_chains,
            &self.ctx.metrics,
            &bearers,
            &self.ctx.limits,
            &self.ctx.tokens,
        );
        let old_chains = self.chains.swap(new_chains);
        let old_routes = self.routes.swap(table);
        if !plan.open.is_empty() || !plan.retire.is_empty() {
            self.recount(&live.stores).await;
        }

        // 3. Start what is new or changed.
        for name in &plan.start {
            let (Some(p), Some(r), Some(store)) = (
                pipeline.processors.get(name),
                resolved.remove(name),
                pipeline
                    .processors
                    .get(name)
                    .and_then(|p| live.stores.get(&p.store)),
            ) else {
                continue;
            };
            let running = self.start_processor(p, r, store.clone());
            live.processors.insert(name.clone(), running);
        }
        self.deactivations
            .retain(|name| pipeline.processors.contains_key(name));
        live.revision = revision;
        live.document = document;
        live.pipeline = pipeline;
        self.publish(live);

        // 4. Close what was retired, once nothing uses it.
        if !retired.is_empty() {
            let deadline = tokio::time::Instant::now() + DRAIN;
            while (Arc::strong_count(&old_routes) > 1 || Arc::strong_count(&old_chains) > 1)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            drop((old_routes, old_chains));
            for store in retired {
                store.close().await;
            }
        }
        if !plan.diff.is_empty() {
            tracing::info!(revision, "pipeline revision live");
        }
        Ok(Applied {
            revision,
            diff: plan.diff,
            dry_run: false,
            notes: None,
        })
    }

    /// Sets the tenant's stored count from `stores` (see [`crate::tenant::quota`]).
    /// A store that cannot tell its bytes counts only what is stored from now on.
    async fn recount(&self, stores: &Stores) {
        let (mut messages, mut bytes) = (0u64, 0u64);
        for store in stores.values() {
            match store.depth().await {
                Ok(depth) => messages += depth,
                Err(e) => {
                    tracing::warn!(store = store.name(), error = %e, "cannot count the store's messages for the stored quota")
                }
            }
            if let Ok(Some(b)) = store.body_bytes().await {
                bytes += b;
            }
        }
        self.ctx.limits.recount(messages, bytes);
    }

    /// Refuses to remove, or move to another backend or queue, a store that
    /// holds messages (unless forced).
    async fn refuse_stranding(
        &self,
        live: &Live,
        plan: &Plan,
        pipeline: &ValidPipeline,
        options: Options,
    ) -> Result<(), ApplyError> {
        if options.force {
            return Ok(());
        }
        let mut conflicts = Vec::new();
        for name in &plan.retire {
            let (Some(store), Some(old)) = (live.stores.get(name), live.pipeline.stores.get(name))
            else {
                continue;
            };
            let what = match pipeline.stores.get(name) {
                None => "removing it",
                Some(new) if new.backend.kind() != old.backend.kind() => "changing its backend",
                Some(new) if queue_of(new) != queue_of(old) => "changing its queue",
                // A new URL or TLS files reach the same queue: nothing is stranded.
                Some(_) => continue,
            };
            match store.depth().await {
                Ok(0) => {}
                Ok(depth) => conflicts.push(format!(
                    "stores.{name}: holds {depth} message(s); {what} would leave them undelivered (apply with force to do it anyway: they stay in the store's file or queue)"
                )),
                Err(e) => conflicts.push(format!(
                    "stores.{name}: cannot tell whether it holds messages ({e}); {what} could leave them undelivered (apply with force to do it anyway)"
                )),
            }
        }
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::Conflict(conflicts))
        }
    }

    fn start_processor(
        &self,
        p: &ProcessorSettings,
        resolved: Resolved,
        store: Arc<dyn Store>,
    ) -> Running {
        let waiting = (!resolved.waiting.is_empty()).then(|| {
            let ready: PluginsReady = Box::pin(resolved.ready());
            (resolved.waiting_names(), ready)
        });
        let dead_letter = p.dead_letter_store.clone().map(|store| DeadLetter {
            store,
            chains: self.chains.clone(),
        });
        let processor = Processor::new(
            p.clone(),
            store,
            dead_letter,
            Box::new(resolved.forwarder),
            resolved.handler,
            resolved.policy,
            self.ctx.metrics.clone(),
            waiting,
            self.deactivations.clone(),
        )
        .with_shared_rate(self.ctx.limits.forward_rate().clone())
        .on_left({
            let limits = self.ctx.limits.clone();
            Arc::new(move |bytes| limits.left(bytes))
        });
        let handle = processor.handle();
        let stop = CancellationToken::new();
        let task = tokio::spawn(processor.run(stop.clone()));
        Running {
            settings: p.clone(),
            handle,
            stop,
            task,
        }
    }

    fn publish(&self, live: &Live) {
        self.view.store(Arc::new(View {
            revision: live.revision,
            document: live.document.value.clone(),
            stores: live.stores.clone(),
            processors: live.processors.values().map(|r| r.handle.clone()).collect(),
        }));
    }

    /// Stops every processor (attempts in flight finish; leased messages go
    /// back to their store's head).
    pub async fn stop_processors(&self) {
        let mut live = self.live.lock().await;
        let running: Vec<Running> = std::mem::take(&mut live.processors).into_values().collect();
        for r in &running {
            r.stop.cancel();
        }
        for r in running {
            let _ = r.task.await;
        }
    }

    /// Closes every store (pending writes are committed).
    pub async fn close_stores(&self) {
        let live = self.live.lock().await;
        for store in live.stores.values() {
            store.close().await;
        }
    }
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("pipeline revisions: {0}")]
    Revision(#[from] RevisionError),
    /// The config file's pipeline cannot start (a store that cannot open,
    /// a plugin file that does not load).
    #[error("{0}")]
    File(String),
    #[error(
        "pipeline revision {revision} cannot start: {reason}\n(to start from the config file instead, remove {}/live)",
        dir.display()
    )]
    Invalid {
        revision: u64,
        dir: PathBuf,
        reason: String,
    },
}

/// A broker store's queue (`None` for a local store).
fn queue_of(s: &StoreSettings) -> Option<&str> {
    s.backend.queue()
}

/// Whether a kept store must be reopened for its new settings: another
/// backend, or other broker settings (URL, queue, TLS, its consumer's
/// reconnect). An embedded store takes a new `max_messages` in place.
fn reopens(old: &StoreSettings, new: &StoreSettings) -> bool {
    match (&old.backend, &new.backend) {
        (BackendSettings::Embedded(_), BackendSettings::Embedded(_)) => false,
        (old, new) => old != new,
    }
}

fn plan(live: &Live, document: &Document, next: &ValidPipeline) -> Plan {
    let mut diff = Diff::between(&live.document.value, &document.value);
    let mut open = Vec::new();
    let mut reconfigure = Vec::new();
    let mut retire = Vec::new();
    let mut reopened = BTreeSet::new();
    for (name, new) in &next.stores {
        match live.pipeline.stores.get(name) {
            None => open.push(name.clone()),
            Some(old) if reopens(old, new) => {
                open.push(name.clone());
                retire.push(name.clone());
                reopened.insert(name.clone());
            }
            Some(old) if old != new => reconfigure.push(name.clone()),
            Some(_) => {}
        }
    }
    retire.extend(
        live.pipeline
            .stores
            .keys()
            .filter(|name| !next.stores.contains_key(*name))
            .cloned(),
    );
    let mut stop = Vec::new();
    let mut start = Vec::new();
    for (name, p) in &next.processors {
        let changed = diff.processors.added.contains(name)
            || diff.processors.changed.iter().any(|c| &c.name == name);
        if reopened.contains(&p.store) && !changed {
            diff.restart(name, format!("its store {:?} is reopened", p.store));
        }
        if changed || reopened.contains(&p.store) {
            start.push(name.clone());
            if live.processors.contains_key(name) {
                stop.push(name.clone());
            }
        }
    }
    stop.extend(
        live.processors
            .keys()
            .filter(|name| !next.processors.contains_key(*name))
            .cloned(),
    );
    // A processor whose store is retired stops before the store closes.
    for (name, running) in &live.processors {
        if retire.contains(&running.settings.store) && !stop.contains(name) {
            stop.push(name.clone());
        }
    }
    Plan {
        diff,
        open,
        reconfigure,
        retire,
        stop,
        start,
    }
}
