//! WebAssembly plugins: the only module that touches wasmtime.
//!
//! A plugin is a component of a world in `wit/plugin.wit`: response handlers
//! (`world response-handler`) and forwarding-failure policies (`world
//! failure-policy`). Deploy, hot swap and versions come next.
//!
//! - One [`Engine`] for the process: component model, async, epoch
//!   interruption, the pooling instance allocator. A thread ticks the epoch
//!   every [`TICK`].
//! - Per plugin: the component compiled once and linked once into an
//!   `InstancePre`; loading fails if the component's imports cannot be
//!   satisfied or its exports do not have the world's types.
//! - Per call: a fresh `Store` (instances are cheap from the pool) with a
//!   memory limit ([`Limits::memory`]) and an epoch deadline
//!   ([`Limits::deadline`]). A trap, a deadline or a limit hit fails that
//!   call only, with the reason; the processor treats it like a failed
//!   forwarding attempt.
//! - A plugin can only log (`wharf:plugin/log`). It is linked with WASI p2,
//!   because Rust's standard library imports it, but with an empty context:
//!   no files, no environment, no arguments, no network, stdout and stderr
//!   discarded.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::processor::forwarder::{ForwardError, ForwardResponse};
use crate::processor::handler::{HandlerOutcome, ResponseHandler};
use crate::processor::policy::{FailurePolicy, PolicyDecision};
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
/// Instances the pool holds at once (calls in flight across all plugins).
const POOL_INSTANCES: u32 = 128;

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
}

/// Limits of one call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory a call may grow to.
    pub memory: usize,
    /// Wall time of a call, instantiation included.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 64 << 20,
            deadline: Duration::from_secs(1),
        }
    }
}

/// The process's plugin engine (see the module doc).
pub struct Host {
    engine: Engine,
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
        HOST.get_or_init(|| Host::new().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|reason| PluginError::Call {
                plugin: "(engine)".into(),
                reason: reason.clone(),
            })
    }

    fn new() -> wasmtime::Result<Host> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 2)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 2)
            .total_stacks(POOL_INSTANCES)
            .max_memory_size(Limits::default().memory * 4);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
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
        Ok(Host { engine })
    }

    /// Reads and compiles a component, and a linker with what plugins may import.
    fn prepare(
        &self,
        path: &Path,
        world: &'static str,
    ) -> Result<(Component, Linker<CallState>, String), PluginError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: shown.clone(),
            source,
        })?;
        let component =
            Component::new(&self.engine, &bytes).map_err(|e| invalid(&shown, world, e))?;
        let mut linker: Linker<CallState> = Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| invalid(&shown, world, e))?;
        Ok((component, linker, shown))
    }

    /// Compiles and links a response handler from a `.wasm` file.
    pub fn load_response_handler(
        &self,
        path: &Path,
        processor: &str,
        limits: Limits,
    ) -> Result<PluginHandler, PluginError> {
        const WORLD: &str = "wharf:plugin/response-handler@0.1.0";
        let (component, mut linker, shown) = self.prepare(path, WORLD)?;
        bindings::ResponseHandler::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(|e| invalid(&shown, WORLD, e))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(bindings::ResponseHandlerPre::new)
            .map_err(|e| invalid(&shown, WORLD, e))?;
        Ok(PluginHandler {
            call: self.call_context(path, processor, limits),
            pre: Arc::new(pre),
        })
    }

    /// Compiles and links a failure policy from a `.wasm` file.
    pub fn load_failure_policy(
        &self,
        path: &Path,
        processor: &str,
        limits: Limits,
    ) -> Result<PolicyPlugin, PluginError> {
        const WORLD: &str = "wharf:plugin/failure-policy@0.1.0";
        let (component, mut linker, shown) = self.prepare(path, WORLD)?;
        policy_bindings::FailurePolicy::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(|e| invalid(&shown, WORLD, e))?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(policy_bindings::FailurePolicyPre::new)
            .map_err(|e| invalid(&shown, WORLD, e))?;
        Ok(PolicyPlugin {
            call: self.call_context(path, processor, limits),
            pre: Arc::new(pre),
        })
    }

    fn call_context(&self, path: &Path, processor: &str, limits: Limits) -> CallContext {
        CallContext {
            name: path.file_stem().map_or_else(
                || path.display().to_string(),
                |s| s.to_string_lossy().into_owned(),
            ),
            processor: processor.to_owned(),
            engine: self.engine.clone(),
            limits,
        }
    }
}

fn invalid(path: &str, world: &'static str, e: wasmtime::Error) -> PluginError {
    PluginError::Invalid {
        path: path.to_owned(),
        world,
        reason: format!("{e:#}"),
    }
}

/// What one call's `Store` holds.
struct CallState {
    plugin: Arc<str>,
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
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// What every call of one plugin shares: its name, its processor, its limits.
struct CallContext {
    name: String,
    processor: String,
    engine: Engine,
    limits: Limits,
}

impl CallContext {
    /// A fresh store for one call, with the memory limit and the deadline set.
    fn store(&self) -> Store<CallState> {
        let state = CallState {
            plugin: Arc::from(self.name.as_str()),
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory)
                .trap_on_grow_failure(true)
                .build(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks = self
            .limits
            .deadline
            .as_millis()
            .div_ceil(TICK.as_millis())
            .max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        store
    }

    fn failed(&self, e: &wasmtime::Error) -> PluginError {
        PluginError::Call {
            plugin: self.name.clone(),
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

/// A response handler plugin, ready to call.
pub struct PluginHandler {
    call: CallContext,
    pre: Arc<bindings::ResponseHandlerPre<CallState>>,
}

impl PluginHandler {
    /// One call, in a fresh store, within the limits.
    pub async fn call(
        &self,
        message: &Message,
        attempt: u32,
        response: &ForwardResponse,
    ) -> Result<HandlerOutcome, PluginError> {
        let mut store = self.call.store();
        let wit_message = self.call.message(message, attempt);
        let wit_response = types::Response {
            status: response.status.as_u16(),
            headers: headers(&response.headers),
            body: response.body.to_vec(),
            elapsed_ms: u64::try_from(response.elapsed.as_millis()).unwrap_or(u64::MAX),
        };
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.call.failed(&e))?;
        let outcome = instance
            .call_handle_response(&mut store, &wit_message, &wit_response)
            .await
            .map_err(|e| self.call.failed(&e))?;
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
        &self.call.name
    }

    async fn handle(
        &self,
        message: &Message,
        attempt: u32,
        response: &ForwardResponse,
    ) -> HandlerOutcome {
        match self.call(message, attempt, response).await {
            Ok(outcome) => outcome,
            // A failed call is a failed attempt: retried like one.
            Err(e) => {
                tracing::warn!(processor = %self.call.processor, message_id = %message.id, "{e}");
                HandlerOutcome::Retry(e.to_string())
            }
        }
    }
}

/// A failure-policy plugin, ready to call.
pub struct PolicyPlugin {
    call: CallContext,
    pre: Arc<policy_bindings::FailurePolicyPre<CallState>>,
}

impl PolicyPlugin {
    /// One call, in a fresh store, within the limits.
    pub async fn call(
        &self,
        message: &Message,
        failure: &Failure,
        attempt: u32,
    ) -> Result<PolicyDecision, PluginError> {
        let mut store = self.call.store();
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
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.call.failed(&e))?;
        let decision = instance
            .call_on_failure(&mut store, &wit_message, &wit_failure, attempt)
            .await
            .map_err(|e| self.call.failed(&e))?;
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
        &self.call.name
    }

    async fn decide(&self, message: &Message, failure: &Failure, attempt: u32) -> PolicyDecision {
        match self.call(message, failure, attempt).await {
            Ok(decision) => decision,
            // A failed policy call decides nothing: the processor's config does.
            Err(e) => {
                tracing::warn!(processor = %self.call.processor, message_id = %message.id, "{e}; applying the processor's config");
                PolicyDecision::Default
            }
        }
    }
}
