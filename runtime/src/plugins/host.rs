//! The process's one engine: component model, async, epoch interruption,
//! fuel and the pooling allocator, a linker per world, and compiling and
//! linking components into [`Loaded`] versions.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::call::CallState;
use super::{Loaded, PluginError, Pre, Slot, TICK, World, bindings, policy_bindings};
use crate::config::MAX_PLUGIN_MEMORY;

/// Component instances the pool holds at once. A processor forwarding
/// through a response-handler plugin holds up to two (the next call's and
/// the last call's) while it works through its messages, none while idle.
const POOL_INSTANCES: u32 = 512;
/// Bytes of each pooled memory kept resident between calls.
const KEEP_RESIDENT: usize = 1 << 20;

/// The process's plugin engine (see the module doc).
pub struct Host {
    pub(super) engine: Engine,
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
    pub(super) fn compile(&self, bytes: &[u8]) -> Result<Component, String> {
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
    pub(super) fn load(
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
}
