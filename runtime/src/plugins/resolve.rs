//! The one place a processor's `response_handler` and `failure_policy` are
//! turned into what it calls, and its forwarder made (TLS files, proxy and
//! signing secrets read): `wharf run`, `wharf check` and a pipeline apply
//! all come here.

use std::sync::Arc;

use super::gate::Gate;
use super::registry::Registry;
use super::{Host, Slot, World};
use crate::config::{PluginRef, ProcessorSettings};
use crate::processor::forwarder::Forwarder;
use crate::processor::handler::{self, ResponseHandler};
use crate::processor::policy::FailurePolicy;

/// Where deployed plugins are looked up.
#[derive(Clone, Copy)]
pub enum Lookup<'a> {
    /// The running instance's registry; a name not deployed yet gets a slot
    /// that a deploy fills.
    Registry(&'a Registry),
    /// `wharf check`: the registry under `data_dir` if there is one, and
    /// nothing is created; a name not deployed there is reported as waiting.
    Check(Option<&'a Registry>),
}

impl Lookup<'_> {
    /// The instance cap of the registry's tenant; none for a check.
    fn gate(self) -> Option<Arc<Gate>> {
        match self {
            Lookup::Registry(registry) => Some(registry.instances().clone()),
            Lookup::Check(_) => None,
        }
    }
}

/// A processor's handler and policy, the deployed plugins it waits for,
/// and its forwarder.
pub struct Resolved {
    pub forwarder: Forwarder,
    pub handler: Arc<dyn ResponseHandler>,
    pub policy: Option<Arc<dyn FailurePolicy>>,
    /// Deployed plugins with no live version yet.
    pub waiting: Vec<Arc<Slot>>,
}

impl Resolved {
    /// The names of the plugins it waits for.
    pub fn waiting_names(&self) -> Vec<String> {
        self.waiting.iter().map(|s| s.name().to_owned()).collect()
    }

    /// Resolves once every plugin it waits for is live.
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let slots = self.waiting.clone();
        async move {
            for slot in slots {
                slot.deployed().await;
            }
        }
    }
}

/// Why a processor's plugin cannot be used; names the key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("processors.{processor}.{key}: {reason}")]
pub struct ResolveError {
    pub processor: String,
    pub key: &'static str,
    pub reason: String,
}

/// The handler and policy processor `p` names (built in, deployed by name,
/// or a `.wasm` path, which is compiled and linked here).
pub fn resolve(p: &ProcessorSettings, lookup: Lookup<'_>) -> Result<Resolved, ResolveError> {
    let forwarder = Forwarder::for_processor(p).map_err(|e| ResolveError {
        processor: p.name.clone(),
        key: e.key,
        reason: e.reason,
    })?;
    let mut waiting = Vec::new();
    let handler: Arc<dyn ResponseHandler> = match handler::builtin(&p.response_handler) {
        Some(builtin) => builtin,
        None => {
            let world = World::ResponseHandler;
            let (host, slot) = slot(p, "response_handler", &p.response_handler, world, lookup)?;
            if slot.current().is_none() {
                waiting.push(slot.clone());
            }
            Arc::new(host.handler(slot, &p.name, p.plugin_limits, lookup.gate()))
        }
    };
    let policy: Option<Arc<dyn FailurePolicy>> = match &p.failure_policy {
        None => None,
        Some(value) => {
            let world = World::FailurePolicy;
            let (host, slot) = slot(p, "failure_policy", value, world, lookup)?;
            if slot.current().is_none() {
                waiting.push(slot.clone());
            }
            Some(Arc::new(host.policy(
                slot,
                &p.name,
                p.plugin_limits,
                lookup.gate(),
            )))
        }
    };
    Ok(Resolved {
        forwarder,
        handler,
        policy,
        waiting,
    })
}

/// The slot processor `p`'s `key` names: a deployed plugin's, or one that
/// holds the compiled `.wasm` file.
fn slot(
    p: &ProcessorSettings,
    key: &'static str,
    value: &str,
    world: World,
    lookup: Lookup<'_>,
) -> Result<(&'static Host, Arc<Slot>), ResolveError> {
    let fail = |reason: String| ResolveError {
        processor: p.name.clone(),
        key,
        reason,
    };
    let host = Host::shared().map_err(|e| fail(e.to_string()))?;
    let slot = match (PluginRef::of(value), lookup) {
        (PluginRef::Deployed(name), Lookup::Registry(registry)) => {
            registry.slot(name, world).map_err(fail)?
        }
        (PluginRef::Deployed(name), Lookup::Check(registry)) => {
            match registry.and_then(|r| r.get(name)) {
                Some(view) if view.world != world => {
                    return Err(fail(format!(
                        "plugin {name:?} is a {}, not a {world}",
                        view.world
                    )));
                }
                Some(_) => registry
                    .map(|r| r.slot(name, world))
                    .transpose()
                    .map_err(fail)?
                    .unwrap_or_else(|| Slot::empty(name, world)),
                None => Slot::empty(name, world),
            }
        }
        _ => host
            .load_file(std::path::Path::new(value), world)
            .map_err(|e| fail(e.to_string()))?,
    };
    Ok((host, slot))
}
