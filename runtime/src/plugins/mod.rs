//! WebAssembly plugins: the only module that touches wasmtime.
//!
//! A plugin is a component of a world in `wit/plugin.wit`: response handlers
//! (`world response-handler`) and forwarding-failure policies (`world
//! failure-policy`). A processor names one by path (a `.wasm` file) or by the
//! name it was deployed under ([`registry`]: versions, live pointer, rollback,
//! compiled-artefact cache, all under `data_dir/plugins`). Files: this one
//! holds the bindings, [`World`], [`Loaded`] and [`Slot`]; `host.rs` the
//! engine; `call.rs` a call and the two kinds of plugin; `resolve.rs` what a
//! processor's keys name.
//!
//! - One engine for the process ([`Host`]): component model, async, epoch
//!   interruption, fuel, the pooling instance allocator. A thread ticks the
//!   epoch every [`TICK`]. One linker per world, built with it.
//! - Per plugin version: the component compiled once and linked once into an
//!   `InstancePre` ([`Loaded`]); linking fails if the component's imports
//!   cannot be satisfied or its exports do not have the world's types.
//! - A [`Slot`] holds a plugin's live version. Swapping it is atomic: a call
//!   takes the version that is live when it starts and finishes on it; the
//!   next call takes the new one.
//! - Per call: a fresh `Store` (instances are cheap from the pool) under the
//!   processor's [`Limits`]: memory, an epoch deadline, and fuel when set.
//!   A response handler's instance is made while the processor's request is
//!   in flight ([`crate::processor::handler::ResponseHandler::prepare`]), so the call itself waits only
//!   for the call; an instance is never called twice. A
//!   trap, a deadline or a limit hit fails that call only, with the reason;
//!   the processor treats it like a failed forwarding attempt.
//! - A plugin can only log (`wharf:plugin/log`). It is linked with WASI p2,
//!   because guest standard libraries import it, but with an empty context:
//!   no files, no environment, no arguments, no network, stdout and stderr
//!   discarded.

mod call;
pub mod gate;
mod host;
pub mod registry;
mod resolve;

pub use call::{PluginHandler, PolicyPlugin};
pub use host::Host;
pub use resolve::{Lookup, ResolveError, Resolved, resolve};

use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use crate::config::PluginLimits as Limits;
use call::CallState;

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

/// How often the epoch advances; deadlines are counted in these ticks.
pub const TICK: Duration = Duration::from_millis(10);

/// The worlds a plugin can implement.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
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
