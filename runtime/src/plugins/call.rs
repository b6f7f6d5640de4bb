//! One plugin call: a fresh store under the processor's limits, the host
//! functions a guest may call (logging), and the two kinds of plugin a
//! processor calls: [`PluginHandler`] and [`PolicyPlugin`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::wharf::plugin::{log, types};
use super::gate::{Gate, Permit};
use super::{Host, Limits, Loaded, PluginError, Pre, Slot, TICK, World, bindings};
use crate::processor::forwarder::{ForwardError, ForwardResponse};
use crate::processor::handler::{Handled, HandlerOutcome, ResponseHandler};
use crate::processor::policy::{Decided, FailurePolicy, PolicyDecision};
use crate::processor::retry::Failure;
use crate::store::Message;

impl Host {
    /// A response handler calling the live version of `slot` for `processor`.
    /// Its instances count against `gate` when there is one.
    pub fn handler(
        &self,
        slot: Arc<Slot>,
        processor: &str,
        limits: Limits,
        gate: Option<Arc<Gate>>,
    ) -> PluginHandler {
        PluginHandler {
            slot,
            call: self.call_context(processor, limits, gate),
            ready: std::sync::Mutex::new(None),
            spent: std::sync::Mutex::new(None),
        }
    }

    /// A failure policy calling the live version of `slot` for `processor`.
    pub fn policy(
        &self,
        slot: Arc<Slot>,
        processor: &str,
        limits: Limits,
        gate: Option<Arc<Gate>>,
    ) -> PolicyPlugin {
        PolicyPlugin {
            slot,
            call: self.call_context(processor, limits, gate),
        }
    }

    fn call_context(
        &self,
        processor: &str,
        limits: Limits,
        gate: Option<Arc<Gate>>,
    ) -> CallContext {
        CallContext {
            processor: processor.to_owned(),
            engine: self.engine.clone(),
            limits,
            gate,
        }
    }
}

/// What one call's `Store` holds.
pub(super) struct CallState {
    plugin: Arc<str>,
    version: u32,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: CallLimits,
    /// The instance's place under its tenant's cap, held as long as the store.
    _permit: Option<Permit>,
}

/// wasmtime's store limits, remembering whether they refused a memory grow,
/// so that a failed call can say it hit its memory limit without reading
/// the error's text.
struct CallLimits {
    limits: StoreLimits,
    memory_refused: bool,
}

impl wasmtime::ResourceLimiter for CallLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.memory_refused = true;
        }
        allowed
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
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

/// What every call for one processor shares: the processor, its limits and
/// its tenant's instance cap.
struct CallContext {
    processor: String,
    engine: Engine,
    limits: Limits,
    gate: Option<Arc<Gate>>,
}

/// Whether making an instance may wait for the tenant's cap.
#[derive(Clone, Copy, PartialEq)]
enum Wait {
    /// Up to the call's deadline (a call).
    Deadline,
    /// Not at all (an instance made ahead of a call).
    No,
}

impl CallContext {
    /// A place under the tenant's instance cap, if it has one.
    async fn permit(&self, loaded: &Loaded, wait: Wait) -> Result<Option<Permit>, PluginError> {
        let Some(gate) = &self.gate else {
            return Ok(None);
        };
        let permit = match wait {
            Wait::No => gate.try_take(),
            Wait::Deadline => gate.take(self.limits.deadline).await,
        };
        match permit {
            Some(permit) => Ok(Some(permit)),
            None => Err(PluginError::Call {
                plugin: describe_plugin(loaded),
                reason: format!(
                    "no plugin instance free within {:?}: its tenant's plugin_instances quota of {} is in use",
                    self.limits.deadline,
                    gate.cap().unwrap_or(u64::MAX)
                ),
            }),
        }
    }

    /// A fresh store for one call of `loaded`, with the limits set.
    fn store(
        &self,
        loaded: &Loaded,
        permit: Option<Permit>,
    ) -> Result<Store<CallState>, PluginError> {
        let state = CallState {
            plugin: loaded.name.clone(),
            version: loaded.version,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: CallLimits {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.limits.memory)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_refused: false,
            },
            _permit: permit,
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
            .map_err(|e| self.failed(loaded, store, &e))
    }

    /// A failed call of `loaded` in `store`, in words a user can act on.
    fn failed(
        &self,
        loaded: &Loaded,
        store: &Store<CallState>,
        e: &wasmtime::Error,
    ) -> PluginError {
        PluginError::Call {
            plugin: describe_plugin(loaded),
            reason: describe(e, self.limits, store.data().limits.memory_refused),
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

/// A call error in words a user can act on; `memory_refused` says whether
/// the call's limiter refused a memory grow.
fn describe(e: &wasmtime::Error, limits: Limits, memory_refused: bool) -> String {
    let text = format!("{e:#}");
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            format!("ran past its deadline of {:?}", limits.deadline)
        }
        Some(wasmtime::Trap::OutOfFuel) => format!(
            "ran out of fuel ({} units)",
            limits.fuel.unwrap_or(u64::MAX)
        ),
        _ if memory_refused => {
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
    async fn instantiate(&self, loaded: Arc<Loaded>, wait: Wait) -> Result<Ready, PluginError> {
        let Pre::Handler(pre) = &loaded.pre else {
            return Err(PluginError::NotDeployed(self.slot.name.clone()));
        };
        let permit = self.call.permit(&loaded, wait).await?;
        let mut store = self.call.store(&loaded, permit)?;
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.call.failed(&loaded, &store, &e))?;
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
        // A failure here shows again, with its reason, when the call
        // instantiates (and waits for a free instance if need be).
        if let Ok(ready) = self.instantiate(loaded, Wait::No).await {
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
            None => self.instantiate(loaded.clone(), Wait::Deadline).await?,
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
        let outcome = called.map_err(|e| self.call.failed(loaded, &ready.store, &e));
        // Under a cap the instance goes back at once, so that a processor
        // waiting to retry does not hold a place another one could use.
        let capped = self.call.gate.as_ref().is_some_and(|g| g.cap().is_some());
        if !capped {
            *self.spent.lock().unwrap_or_else(|p| p.into_inner()) = Some(ready);
        }
        let outcome = outcome?;
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
        let permit = self.call.permit(loaded, Wait::Deadline).await?;
        let mut store = self.call.store(loaded, permit)?;
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
            .map_err(|e| self.call.failed(loaded, &store, &e))?;
        let decision = instance
            .call_on_failure(&mut store, &wit_message, &wit_failure, attempt)
            .await
            .map_err(|e| self.call.failed(loaded, &store, &e))?;
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
