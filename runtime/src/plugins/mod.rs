//! WebAssembly plugins: the only module that touches wasmtime.
//!
//! A plugin is a component of a world in `wit/plugin.wit`. This step runs
//! response handlers (`world response-handler`); failure policies, deploy,
//! hot swap and versions come next.
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

use crate::processor::forwarder::ForwardResponse;
use crate::processor::handler::{HandlerOutcome, ResponseHandler};
use crate::store::Message;

mod bindings {
    wasmtime::component::bindgen!({
        world: "response-handler",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
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

    /// Compiles and links a response handler from a `.wasm` file.
    pub fn load_response_handler(
        &self,
        path: &Path,
        processor: &str,
        limits: Limits,
    ) -> Result<PluginHandler, PluginError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: shown.clone(),
            source,
        })?;
        let invalid = |e: wasmtime::Error| PluginError::Invalid {
            path: shown.clone(),
            world: "wharf:plugin/response-handler@0.1.0",
            reason: format!("{e:#}"),
        };
        let component = Component::new(&self.engine, &bytes).map_err(invalid)?;
        let mut linker: Linker<CallState> = Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(invalid)?;
        bindings::ResponseHandler::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(invalid)?;
        let pre = linker.instantiate_pre(&component).map_err(invalid)?;
        let pre = bindings::ResponseHandlerPre::new(pre).map_err(invalid)?;
        let name = path
            .file_stem()
            .map_or_else(|| shown.clone(), |s| s.to_string_lossy().into_owned());
        Ok(PluginHandler {
            name,
            processor: processor.to_owned(),
            engine: self.engine.clone(),
            pre: Arc::new(pre),
            limits,
        })
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

/// A response handler plugin, ready to call.
pub struct PluginHandler {
    name: String,
    processor: String,
    engine: Engine,
    pre: Arc<bindings::ResponseHandlerPre<CallState>>,
    limits: Limits,
}

fn headers(map: &http::HeaderMap) -> Vec<types::Header> {
    map.iter()
        .map(|(name, value)| types::Header {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

impl PluginHandler {
    /// One call, in a fresh store, within the limits.
    pub async fn call(
        &self,
        message: &Message,
        attempt: u32,
        response: &ForwardResponse,
    ) -> Result<HandlerOutcome, PluginError> {
        let failed = |reason: String| PluginError::Call {
            plugin: self.name.clone(),
            reason,
        };
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

        let wit_message = types::Message {
            id: message.id.clone(),
            processor: self.processor.clone(),
            method: message.method.as_str().to_owned(),
            path: message.path.clone(),
            headers: headers(&message.headers),
            body: message.body.to_vec(),
            attempt,
        };
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
            .map_err(|e| failed(describe(&e, self.limits)))?;
        let outcome = instance
            .call_handle_response(&mut store, &wit_message, &wit_response)
            .await
            .map_err(|e| failed(describe(&e, self.limits)))?;
        Ok(match outcome {
            types::Outcome::Ack => HandlerOutcome::Ack,
            types::Outcome::Retry(reason) => HandlerOutcome::Retry(reason),
            types::Outcome::Fail(reason) => HandlerOutcome::Fail(reason),
        })
    }
}

/// A call error in words a user can act on.
fn describe(e: &wasmtime::Error, limits: Limits) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            format!("ran past its deadline of {:?}", limits.deadline)
        }
        Some(wasmtime::Trap::HeapMisaligned | wasmtime::Trap::MemoryOutOfBounds) => {
            format!("trapped: {e:#}")
        }
        Some(trap) if e.to_string().contains("memory") || format!("{e:#}").contains("grow") => {
            format!(
                "hit its memory limit of {} MiB ({trap})",
                limits.memory >> 20
            )
        }
        Some(trap) => format!("trapped: {trap}"),
        None if format!("{e:#}").contains("memory") => {
            format!("hit its memory limit of {} MiB: {e:#}", limits.memory >> 20)
        }
        None => format!("{e:#}"),
    }
}

#[async_trait]
impl ResponseHandler for PluginHandler {
    fn name(&self) -> &str {
        &self.name
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
                tracing::warn!(processor = %self.processor, message_id = %message.id, "{e}");
                HandlerOutcome::Retry(e.to_string())
            }
        }
    }
}
