//! WebAssembly plugins: the only module that touches wasmtime.
//!
//! A plugin is a component of a world in `wit/plugin.wit`: response handlers
//! (`world response-handler`) and forwarding-failure policies (`world
//! failure-policy`). A processor names one by path (a `.wasm` file) or by the
//! name it was deployed under ([`registry`]: versions, live pointer, rollback,
//! compiled-artefact cache, all under `data_dir/plugins`).
//!
//! - One [`Engine`] for the process: component model, async, epoch
//!   interruption, fuel, the pooling instance allocator. A thread ticks the
//!   epoch every [`TICK`]. One [`Linker`] per world, built with it.
//! - Per plugin version: the component compiled once and linked once into an
//!   `InstancePre` ([`Loaded`]); linking fails if the component's imports
//!   cannot be satisfied or its exports do not have the world's types.
//! - A [`Slot`] holds a plugin's live version. Swapping it is atomic: a call
//!   takes the version that is live when it starts and finishes on it; the
//!   next call takes the new one.
//! - Per call: a fresh `Store` (instances are cheap from the pool) under the
//!   processor's [`Limits`]: memory, an epoch deadline, and fuel when set.
//!   A response handler's instance is made while the processor's request is
//!   in flight ([`ResponseHandler::prepare`]), so the call itself waits only
//!   for the call; an instance is never called twice. A
//!   trap, a deadline or a limit hit fails that call only, with the reason;
//!   the processor treats it like a failed forwarding attempt.
//! - A plugin can only log (`wharf:plugin/log`). It is linked with WASI p2,
//!   because guest standard libraries import it, but with an empty context:
//!   no files, no environment, no arguments, no network, stdout and stderr
//!   discarded.

pub mod registry;
mod resolve;

pub use resolve::{Lookup, ResolveError, Resolved, resolve};

use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::MAX_PLUGIN_MEMORY;
pub use crate::config::PluginLimits as Limits;
use crate::processor::forwarder::{ForwardError, ForwardResponse};
use crate::processor::handler::{Handled, HandlerOutcome, ResponseHandler};
use crate::processor::policy::{Decided, FailurePolicy, PolicyDecision};
use crate::processor::retry::Failure;
use crate::store::Message;

mod bindings {
    wasmtime::component::bindgen!({
        world: "response-handler",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
    });
}

/// The failure-policy world; its interfaces are the ones above, not copies.
mod policy_bindings {
    wasmtime::component::bindgen!({
        world: "failure-policy",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
        with: {
            "wharf:plugin/types": super::bindings::wharf::plugin::types,
            "wharf:plugin/log": super::bindings::wharf::plugin::log,
        },
    });
}

use bindings::wharf::plugin::{log, types};

/// How often the epoch advances; deadlines are counted in these ticks.
pub const TICK: Duration = Duration::from_millis(10);
/// Component instances the pool holds at once. A processor forwarding
/// through a response-handler plugin holds up to two (the next call's and
/// the last call's) while it works through its messages, none while idle.
const POOL_INSTANCES: u32 = 512;
/// Bytes of each pooled memory kept resident between calls.
const KEEP_RESIDENT: usize = 1 << 20;

/// The worlds a plugin can implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    ResponseHandler,
    FailurePolicy,
}

impl World {
    pub const ALL: [World; 2] = [World::ResponseHandler, World::FailurePolicy];

    pub fn as_str(self) -> &'static str {
        match self {
            World::ResponseHandler => "response-handler",
            World::FailurePolicy => "failure-policy",
        }
    }

    fn qualified(self) -> &'static str {
        match self {
            World::ResponseHandler => "wharf:plugin/response-handler@0.1.0",
            World::FailurePolicy => "wharf:plugin/failure-policy@0.1.0",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a plugin could not be loaded or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid component for world {world}: {reason}")]
    Invalid {
        path: String,
        world: &'static str,
        reason: String,
    },
    #[error("plugin {plugin} failed: {reason}")]
    Call { plugin: String, reason: String },
    #[error("plugin {0} is not deployed")]
    NotDeployed(String),
}

/// The process's plugin engine (see the module doc).
pub struct Host {
    engine: Engine,
    handler_linker: Linker<CallState>,
    policy_linker: Linker<CallState>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("plugins::Host")
    }
}

impl Host {
    /// The shared host; the engine and its epoch thread start on first use.
    pub fn shared() -> Result<&'static Host, PluginError> {
        static HOST: OnceLock<Result<Host, String>> = OnceLock::new();
        HOST.get_or_init(|| Host::new().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|reason| PluginError::Call {
                plugin: "(engine)".into(),
                reason: reason.clone(),
            })
    }

    fn new() -> wasmtime::Result<Host> {
        let slot = usize::try_from(MAX_PLUGIN_MEMORY).unwrap_or(usize::MAX);
        let mut pool = PoolingAllocationConfig::default();
        // A Rust component has a few core instances; a Python one, 14.
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 8)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 2)
            .total_stacks(POOL_INSTANCES)
            .max_memory_size(slot)
            // Reset the pages a call dirtied (found with PAGEMAP_SCAN where
            // the kernel has it) with memset rather than madvise: the next
            // instance takes no page faults. 28 -> 11 us a call (BENCHMARKS.md).
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT / 16)
            .decommit_batch_size(16)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(true)
            .memory_reservation(1 << 30)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })?;
        let wasi_linker = || -> wasmtime::Result<Linker<CallState>> {
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
            Ok(linker)
        };
        let mut handler_linker = wasi_linker()?;
        bindings::ResponseHandler::add_to_linker::<_, HasSelf<CallState>>(
            &mut handler_linker,
            |s| s,
        )?;
        let mut policy_linker = wasi_linker()?;
        policy_bindings::FailurePolicy::add_to_linker::<_, HasSelf<CallState>>(
            &mut policy_linker,
            |s| s,
        )?;
        Ok(Host {
            engine,
            handler_linker,
            policy_linker,
        })
    }

    /// Compiles component bytes (slow: call off the async threads for big components).
    fn compile(&self, bytes: &[u8]) -> Result<Component, String> {
        Component::new(&self.engine, bytes).map_err(|e| format!("{e:#}"))
    }

    /// Links a compiled component as `world`.
    fn link(&self, component: &Component, world: World) -> Result<Pre, String> {
        let linked = match world {
            World::ResponseHandler => self
                .handler_linker
                .instantiate_pre(component)
                .and_then(bindings::ResponseHandlerPre::new)
                .map(Pre::Handler),
            World::FailurePolicy => self
                .policy_linker
                .instantiate_pre(component)
                .and_then(policy_bindings::FailurePolicyPre::new)
                .map(Pre::Policy),
        };
        linked.map_err(|e| format!("{e:#}"))
    }

    /// Links `component` as `world`, or, without one, as whichever world it implements.
    fn load(
        &self,
        name: &str,
        version: u32,
        component: &Component,
        world: Option<World>,
    ) -> Result<Loaded, String> {
        let pre = match world {
            Some(world) => self
                .link(component, world)
                .map_err(|e| format!("not a component of world {}: {e}", world.qualified()))?,
            None => {
                let mut reasons = Vec::new();
                let mut found = None;
                for world in World::ALL {
                    match self.link(component, world) {
                        Ok(pre) => {
                            found = Some(pre);
                            break;
                        }
                        Err(e) => reasons.push(format!("{}: {e}", world.qualified())),
                    }
                }
                found.ok_or_else(|| {
                    format!(
                        "the component implements none of Wharf's worlds ({})",
                        reasons.join("; ")
                    )
                })?
            }
        };
        Ok(Loaded {
            name: Arc::from(name),
            version,
            pre,
        })
    }

    /// Compiles and links a component file of `world` (a plugin named by path).
    pub fn load_file(&self, path: &Path, world: World) -> Result<Arc<Slot>, PluginError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: shown.clone(),
            source,
        })?;
        let invalid = |reason| PluginError::Invalid {
            path: shown.clone(),
            world: world.qualified(),
            reason,
        };
        let component = self.compile(&bytes).map_err(invalid)?;
        let name = path
            .file_stem()
            .map_or_else(|| shown.clone(), |s| s.to_string_lossy().into_owned());
        let loaded = self
            .load(&name, 0, &component, Some(world))
            .map_err(invalid)?;
        Ok(Slot::fixed(loaded))
    }

    /// A response handler calling the live version of `slot` for `processor`.
    pub fn handler(&self, slot: Arc<Slot>, processor: &str, limits: Limits) -> PluginHandler {
        PluginHandler {
            slot,
            call: self.call_context(processor, limits),
            ready: std::sync::Mutex::new(None),
            spent: std::sync::Mutex::new(None),
        }
    }

    /// A failure policy calling the live version of `slot` for `processor`.
    pub fn policy(&self, slot: Arc<Slot>, processor: &str, limits: Limits) -> PolicyPlugin {
        PolicyPlugin {
            slot,
            call: self.call_context(processor, limits),
        }
    }

    fn call_context(&self, processor: &str, limits: Limits) -> CallContext {
        CallContext {
            processor: processor.to_owned(),
            engine: self.engine.clone(),
            limits,
        }
    }
}

/// A linked component of one of the worlds.
enum Pre {
    Handler(bindings::ResponseHandlerPre<CallState>),
    Policy(policy_bindings::FailurePolicyPre<CallState>),
}

/// One version of a plugin, compiled and linked: ready to instantiate.
pub struct Loaded {
    name: Arc<str>,
    /// 0 for a plugin named by path (it has no versions).
    version: u32,
    pre: Pre,
}

impl Loaded {
    pub fn world(&self) -> World {
        match self.pre {
            Pre::Handler(_) => World::ResponseHandler,
            Pre::Policy(_) => World::FailurePolicy,
        }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The version as metrics show it: none for a plugin named by path.
    fn deployed_version(&self) -> Option<u32> {
        (self.version > 0).then_some(self.version)
    }
}

/// A plugin's live version; see the module doc for how swapping works.
pub struct Slot {
    name: String,
    world: World,
    live: RwLock<Option<Arc<Loaded>>>,
    /// Whether a version is live: processors waiting for the plugin watch it.
    deployed: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("name", &self.name)
            .field("world", &self.world)
            .field("live", &self.live_version())
            .finish()
    }
}

impl Slot {
    /// A slot waiting for its first version.
    pub(crate) fn empty(name: &str, world: World) -> Arc<Slot> {
        Arc::new(Slot {
            name: name.to_owned(),
            world,
            live: RwLock::new(None),
            deployed: tokio::sync::watch::channel(false).0,
        })
    }

    /// A slot that always holds `loaded`.
    fn fixed(loaded: Loaded) -> Arc<Slot> {
        Arc::new(Slot {
            name: loaded.name.to_string(),
            world: loaded.world(),
            live: RwLock::new(Some(Arc::new(loaded))),
            deployed: tokio::sync::watch::channel(true).0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn world(&self) -> World {
        self.world
    }

    /// The version calls start on now.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn live_version(&self) -> Option<u32> {
        self.current().map(|l| l.version)
    }

    /// Makes `loaded` live; calls in flight keep the version they started on.
    fn swap(&self, loaded: Arc<Loaded>) {
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
        self.deployed.send_replace(true);
    }

    /// Resolves once a version is live.
    pub async fn deployed(&self) {
        let mut deployed = self.deployed.subscribe();
        // The sender lives as long as the slot, which `self` holds.
        let _ = deployed.wait_for(|live| *live).await;
    }
}

/// What one call's `Store` holds.
struct CallState {
    plugin: Arc<str>,
    version: u32,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for CallState {}

impl log::Host for CallState {
    async fn log(&mut self, level: log::Level, message: String) {
        let (plugin, version) = (&*self.plugin, self.version);
        match level {
            log::Level::Trace => tracing::trace!(plugin, version, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, version, "{message}"),
            log::Level::Info => tracing::info!(plugin, version, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, version, "{message}"),
            log::Level::Error => tracing::error!(plugin, version, "{message}"),
        }
    }
}

/// What every call for one processor shares: the processor and its limits.
struct CallContext {
    processor: String,
    engine: Engine,
    limits: Limits,
}

impl CallContext {
    /// A fresh store for one call of `loaded`, with the limits set.
    fn store(&self, loaded: &Loaded) -> Result<Store<CallState>, PluginError> {
        let state = CallState {
            plugin: loaded.name.clone(),
            version: loaded.version,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory)
                .trap_on_grow_failure(true)
                .build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        self.start_call(&mut store, loaded)?;
        Ok(store)
    }

    /// Sets the deadline and the fuel of what runs next in `store`.
    fn start_call(&self, store: &mut Store<CallState>, loaded: &Loaded) -> Result<(), PluginError> {
        let ticks = self
            .limits
            .deadline
            .as_millis()
            .div_ceil(TICK.as_millis())
            .max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store
            .set_fuel(self.limits.fuel.unwrap_or(u64::MAX))
            .map_err(|e| self.failed(loaded, &e))
    }

    fn failed(&self, loaded: &Loaded, e: &wasmtime::Error) -> PluginError {
        PluginError::Call {
            plugin: describe_plugin(loaded),
            reason: describe(e, self.limits),
        }
    }

    fn message(&self, message: &Message, attempt: u32) -> types::Message {
        types::Message {
            id: message.id.clone(),
            processor: self.processor.clone(),
            method: message.method.as_str().to_owned(),
            path: message.path.clone(),
            headers: headers(&message.headers),
            body: message.body.to_vec(),
            attempt,
        }
    }
}

fn describe_plugin(loaded: &Loaded) -> String {
    match loaded.deployed_version() {
        Some(version) => format!("{} v{version}", loaded.name),
        None => loaded.name.to_string(),
    }
}

fn headers(map: &http::HeaderMap) -> Vec<types::Header> {
    map.iter()
        .map(|(name, value)| types::Header {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

/// A call error in words a user can act on.
fn describe(e: &wasmtime::Error, limits: Limits) -> String {
    let text = format!("{e:#}");
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            format!("ran past its deadline of {:?}", limits.deadline)
        }
        Some(wasmtime::Trap::OutOfFuel) => format!(
            "ran out of fuel ({} units)",
            limits.fuel.unwrap_or(u64::MAX)
        ),
        _ if text.contains("memory") || text.contains("grow") => {
            format!(
                "hit its memory limit of {} MiB: {text}",
                limits.memory >> 20
            )
        }
        Some(trap) => format!("trapped: {trap}"),
        None => text,
    }
}

/// The live version of `slot`, or why there is none / it does not fit.
fn live(slot: &Slot, world: World) -> Result<Arc<Loaded>, PluginError> {
    let loaded = slot
        .current()
        .ok_or_else(|| PluginError::NotDeployed(slot.name.clone()))?;
    if loaded.world() != world {
        return Err(PluginError::Call {
            plugin: describe_plugin(&loaded),
            reason: format!("is a {}, not a {world}", loaded.world()),
        });
    }
    Ok(loaded)
}

/// A response handler plugin for one processor, ready to call.
pub struct PluginHandler {
    slot: Arc<Slot>,
    call: CallContext,
    /// A fresh instance made while a request was in flight, for the next call.
    ready: std::sync::Mutex<Option<Ready>>,
    /// The last call's store, freed while the next request is in flight.
    spent: std::sync::Mutex<Option<Ready>>,
}

/// A fresh store and instance of one version, not called yet.
struct Ready {
    loaded: Arc<Loaded>,
    store: Store<CallState>,
    instance: bindings::ResponseHandler,
}

impl PluginHandler {
    /// One call of the live version, in a fresh store, within the limits.
    pub async fn call(
        &self,
        message: &Message,
        attempt: u32,
        response: &ForwardResponse,
    ) -> (Result<HandlerOutcome, PluginError>, Option<u32>) {
        let loaded = match live(&self.slot, World::ResponseHandler) {
            Ok(loaded) => loaded,
            Err(e) => return (Err(e), None),
        };
        let version = loaded.deployed_version();
        (
            self.call_on(&loaded, message, attempt, response).await,
            version,
        )
    }

    /// A fresh store and instance of `loaded`.
    async fn instantiate(&self, loaded: Arc<Loaded>) -> Result<Ready, PluginError> {
        let Pre::Handler(pre) = &loaded.pre else {
            return Err(PluginError::NotDeployed(self.slot.name.clone()));
        };
        let mut store = self.call.store(&loaded)?;
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.call.failed(&loaded, &e))?;
        Ok(Ready {
            loaded,
            store,
            instance,
        })
    }

    /// Makes the instance the next call will use, unless there is one.
    pub async fn prepare(&self) {
        // Let the request go out first: its connection's task writes it.
        tokio::task::yield_now().await;
        // Returning the last call's slots to the pool costs a few microseconds.
        drop(self.spent.lock().unwrap_or_else(|p| p.into_inner()).take());
        let prepared = self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if prepared {
            return;
        }
        let Ok(loaded) = live(&self.slot, World::ResponseHandler) else {
            return;
        };
        // A failure here shows again, with its reason, when the call instantiates.
        if let Ok(ready) = self.instantiate(loaded).await {
            *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(ready);
        }
    }

    async fn call_on(
        &self,
        loaded: &Arc<Loaded>,
        message: &Message,
        attempt: u32,
        response: &ForwardResponse,
    ) -> Result<HandlerOutcome, PluginError> {
        // The prepared instance, if it is of the version live now; never one
        // that was called before.
        let prepared = self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .filter(|r| Arc::ptr_eq(&r.loaded, loaded));
        let mut ready = match prepared {
            Some(ready) => ready,
            None => self.instantiate(loaded.clone()).await?,
        };
        // The call's own limits start now, whenever the instance was made.
        self.call.start_call(&mut ready.store, loaded)?;
        let wit_message = self.call.message(message, attempt);
        let wit_response = types::Response {
            status: response.status.as_u16(),
            headers: headers(&response.headers),
            body: response.body.to_vec(),
            elapsed_ms: u64::try_from(response.elapsed.as_millis()).unwrap_or(u64::MAX),
        };
        let called = ready
            .instance
            .call_handle_response(&mut ready.store, &wit_message, &wit_response)
            .await;
        *self.spent.lock().unwrap_or_else(|p| p.into_inner()) = Some(ready);
        let outcome = called.map_err(|e| self.call.failed(loaded, &e))?;
        Ok(match outcome {
            types::Outcome::Ack => HandlerOutcome::Ack,
            types::Outcome::Retry(reason) => HandlerOutcome::Retry(reason),
            types::Outcome::Fail(reason) => HandlerOutcome::Fail(reason),
        })
    }
}

#[async_trait]
impl ResponseHandler for PluginHandler {
    fn name(&self) -> &str {
        &self.slot.name
    }

    async fn prepare(&self) {
        PluginHandler::prepare(self).await;
    }

    fn discard(&self) {
        drop(self.ready.lock().unwrap_or_else(|p| p.into_inner()).take());
        drop(self.spent.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    async fn handle(&self, message: &Message, attempt: u32, response: &ForwardResponse) -> Handled {
        let (result, version) = self.call(message, attempt, response).await;
        let outcome = match result {
            Ok(outcome) => outcome,
            // A failed call is a failed attempt: retried like one.
            Err(e) => {
                tracing::warn!(processor = %self.call.processor, message_id = %message.id, "{e}");
                HandlerOutcome::Retry(e.to_string())
            }
        };
        Handled { outcome, version }
    }
}

/// A failure-policy plugin for one processor, ready to call.
pub struct PolicyPlugin {
    slot: Arc<Slot>,
    call: CallContext,
}

impl PolicyPlugin {
    /// One call of the live version, in a fresh store, within the limits.
    pub async fn call(
        &self,
        message: &Message,
        failure: &Failure,
        attempt: u32,
    ) -> (Result<PolicyDecision, PluginError>, Option<u32>) {
        let loaded = match live(&self.slot, World::FailurePolicy) {
            Ok(loaded) => loaded,
            Err(e) => return (Err(e), None),
        };
        let version = loaded.deployed_version();
        (
            self.call_on(&loaded, message, failure, attempt).await,
            version,
        )
    }

    async fn call_on(
        &self,
        loaded: &Loaded,
        message: &Message,
        failure: &Failure,
        attempt: u32,
    ) -> Result<PolicyDecision, PluginError> {
        let Pre::Policy(pre) = &loaded.pre else {
            return Err(PluginError::NotDeployed(self.slot.name.clone()));
        };
        let mut store = self.call.store(loaded)?;
        let wit_message = self.call.message(message, attempt);
        let kind = match failure {
            Failure::Status { status, .. } => types::FailureKind::Status(*status),
            Failure::Forward(ForwardError::Timeout(_)) => types::FailureKind::Timeout,
            Failure::Forward(ForwardError::Transport(_)) => types::FailureKind::Transport,
            Failure::Handler { .. } => types::FailureKind::Handler,
        };
        let wit_failure = types::Failure {
            kind,
            reason: failure.to_string(),
        };
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.call.failed(loaded, &e))?;
        let decision = instance
            .call_on_failure(&mut store, &wit_message, &wit_failure, attempt)
            .await
            .map_err(|e| self.call.failed(loaded, &e))?;
        Ok(match decision {
            types::Decision::RetryAfter(ms) => {
                PolicyDecision::RetryAfter(Duration::from_millis(ms))
            }
            types::Decision::DeadLetter(reason) => PolicyDecision::DeadLetter(reason),
            types::Decision::Drop(reason) => PolicyDecision::Drop(reason),
            types::Decision::Deactivate(reason) => PolicyDecision::Deactivate(reason),
            types::Decision::Default => PolicyDecision::Default,
        })
    }
}

#[async_trait]
impl FailurePolicy for PolicyPlugin {
    fn name(&self) -> &str {
        &self.slot.name
    }

    async fn decide(&self, message: &Message, failure: &Failure, attempt: u32) -> Decided {
        let (result, version) = self.call(message, failure, attempt).await;
        let decision = match result {
            Ok(decision) => decision,
            // A failed policy call decides nothing: the processor's config does.
            Err(e) => {
                tracing::warn!(processor = %self.call.processor, message_id = %message.id, "{e}; applying the processor's config");
                PolicyDecision::Default
            }
        };
        Decided { decision, version }
    }
}
