//! Deployed plugins: versions, the live pointer, rollback, and the
//! compiled-artefact cache, under `data_dir/plugins`.
//!
//! ```text
//! data_dir/plugins/<name>/
//!   v1.wasm    the component as uploaded
//!   v1.json    {"version", "world", "size", "sha256", "deployed_at"}
//!   v1.cwasm   the compiled artefact: engine key (8 bytes), SHA-256 of
//!              the rest (32 bytes), wasmtime's serialized component
//!   live       the live version's number
//! ```
//!
//! A deploy compiles and links the bytes first (nothing invalid is written),
//! then writes the version's files, then the live pointer, each durably
//! (temporary file, fsync, rename, fsync of the directory), and only then
//! swaps the plugin's [`Slot`]; the compiled artefact is written after that,
//! off the deploy's path. A crash before the pointer is renamed leaves
//! the old version live; a version file without a pointer to it is listed
//! and can be rolled to.
//!
//! The cached artefact is used only if its engine key matches this engine's
//! (wasmtime's precompile compatibility hash) and its digest matches its
//! bytes; otherwise the `.wasm` is compiled again and the cache rewritten.
//! That makes restarts and rollbacks quick: a large component (Python, JS)
//! takes seconds to compile, its artefact milliseconds to load.
//!
//! Deploys and rollbacks take a lock, one at a time; calls never wait on it.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::gate::Gate;
use super::{Host, Loaded, Slot, World};
use crate::config::{BUILTIN_HANDLERS, plugin_name_problem};

/// Largest component a deploy takes.
pub const MAX_COMPONENT: usize = 64 << 20;

/// Why a deploy or rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The name is not a valid plugin name.
    #[error("{0}")]
    Name(String),
    /// The name belongs to a built-in handler.
    #[error("{0:?} is the name of a built-in handler; deploy under another name")]
    Reserved(String),
    #[error("component of {size} bytes is over the limit of {MAX_COMPONENT} bytes")]
    TooLarge { size: usize },
    /// The bytes are not a component of the plugin's world.
    #[error("{0}")]
    Invalid(String),
    #[error("no plugin named {0:?}")]
    Unknown(String),
    #[error("plugin {name:?} has no version {version}")]
    NoVersion { name: String, version: u32 },
    #[error("plugin {0:?} has no version before its live one to roll back to")]
    NothingToRollBackTo(String),
    #[error("plugin store under {path}: {reason}")]
    Io { path: String, reason: String },
}

/// One stored version, as `v<N>.json` has it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    pub version: u32,
    pub world: World,
    pub size: u64,
    pub sha256: String,
    pub deployed_at: String,
}

/// A plugin as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginView {
    pub name: String,
    pub world: World,
    pub live: Option<u32>,
    pub versions: Vec<VersionInfo>,
    /// The processors that call it (`GET .../plugins/{name}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<Vec<String>>,
}

/// What a deploy or rollback left live.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deployed {
    pub name: String,
    pub version: u32,
    pub world: World,
    /// False when the bytes were those of the live version already.
    #[serde(skip)]
    pub created: bool,
}

struct Entry {
    versions: Vec<VersionInfo>,
    slot: Arc<Slot>,
}

/// The deployed plugins of one instance (see the module doc).
pub struct Registry {
    files: Arc<Files>,
    entries: Mutex<BTreeMap<String, Entry>>,
    changing: tokio::sync::Mutex<()>,
    /// Artefact writes started by deploys and not known to be done.
    caching: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The instances its plugins' calls hold, under its tenant's cap.
    instances: Arc<Gate>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dir", &self.files.dir)
            .finish()
    }
}

/// The files under `data_dir/plugins`, and the engine that compiles them.
struct Files {
    host: &'static Host,
    dir: PathBuf,
}

fn io(path: &Path, e: impl std::fmt::Display) -> DeployError {
    DeployError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), DeployError> {
    crate::durable::write(path, bytes).map_err(|e| io(path, e))
}

impl Registry {
    /// Opens `data_dir/plugins` and loads every plugin's live version.
    /// A version that cannot be loaded is logged and left not live.
    pub fn open(host: &'static Host, data_dir: &Path) -> Result<Registry, DeployError> {
        let dir = data_dir.join("plugins");
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let files = Files {
            host,
            dir: dir.clone(),
        };
        let listing = std::fs::read_dir(&dir).map_err(|e| io(&dir, e))?;
        let mut entries = BTreeMap::new();
        for item in listing {
            let item = item.map_err(|e| io(&dir, e))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if plugin_name_problem(&name).is_some() || !item.path().is_dir() {
                continue;
            }
            let versions = files.read_versions(&name)?;
            let Some(first) = versions.first() else {
                continue;
            };
            let slot = Slot::empty(&name, first.world);
            if let Some(live) = files.read_live(&name)? {
                match versions.iter().find(|v| v.version == live) {
                    Some(info) => match files.load_version(&name, info) {
                        Ok(loaded) => slot.swap(Arc::new(loaded)),
                        Err(e) => {
                            tracing::error!(plugin = %name, version = live, error = %e, "cannot load the live version; the plugin is not live")
                        }
                    },
                    None => {
                        tracing::error!(plugin = %name, version = live, "the live version's files are missing; the plugin is not live")
                    }
                }
            }
            entries.insert(name, Entry { versions, slot });
        }
        Ok(Registry {
            files: Arc::new(files),
            entries: Mutex::new(entries),
            changing: tokio::sync::Mutex::new(()),
            caching: Mutex::new(Vec::new()),
            instances: Arc::default(),
        })
    }

    /// The gate every call of these plugins takes an instance through.
    pub fn instances(&self) -> &Arc<Gate> {
        &self.instances
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of plugin `name`, which a processor uses as `world`. A name
    /// not deployed yet gets an empty slot, which a deploy fills.
    pub fn slot(&self, name: &str, world: World) -> Result<Arc<Slot>, String> {
        if let Some(problem) = plugin_name_problem(name) {
            return Err(problem);
        }
        let mut entries = self.entries();
        let entry = entries.entry(name.to_owned()).or_insert_with(|| Entry {
            versions: Vec::new(),
            slot: Slot::empty(name, world),
        });
        if entry.slot.world != world {
            return Err(format!(
                "plugin {name:?} is a {}, not a {world}",
                entry.slot.world
            ));
        }
        Ok(entry.slot.clone())
    }

    pub fn list(&self) -> Vec<PluginView> {
        self.entries()
            .iter()
            .map(|(name, e)| view(name, e))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<PluginView> {
        self.entries().get(name).map(|e| view(name, e))
    }

    /// Validates `bytes` as a component of the plugin's world (any of
    /// Wharf's worlds for a new name), stores it as the next version and
    /// makes it live.
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>) -> Result<Deployed, DeployError> {
        if let Some(problem) = plugin_name_problem(name) {
            return Err(DeployError::Name(problem));
        }
        if BUILTIN_HANDLERS.contains(&name) {
            return Err(DeployError::Reserved(name.to_owned()));
        }
        if bytes.len() > MAX_COMPONENT {
            return Err(DeployError::TooLarge { size: bytes.len() });
        }
        let _one_at_a_time = self.changing.lock().await;
        let sha256 = hex(&Sha256::digest(&bytes));
        let (world, next, live_same) = {
            let entries = self.entries();
            let entry = entries.get(name);
            let live = entry.and_then(|e| e.slot.current());
            let live_same = live.as_ref().and_then(|l| {
                entry?
                    .versions
                    .iter()
                    .find(|v| v.version == l.version && v.sha256 == sha256)
                    .cloned()
            });
            let next = entry
                .and_then(|e| e.versions.last())
                .map_or(1, |v| v.version + 1);
            (entry.map(|e| e.slot.world), next, live_same)
        };
        if let Some(info) = live_same {
            return Ok(Deployed {
                name: name.to_owned(),
                version: info.version,
                world: info.world,
                created: false,
            });
        }

        // Compiling is CPU work of up to seconds: off the async threads.
        let files = self.files.clone();
        let owned_name = name.to_owned();
        let (loaded, info, component) = tokio::task::spawn_blocking(move || {
            files.store_new(&owned_name, next, world, sha256, &bytes)
        })
        .await
        .map_err(|e| DeployError::Invalid(format!("compiling failed: {e}")))??;
        let live = self.make_live(name, info, loaded, true).await?;
        // The artefact only speeds up later loads: written after the swap.
        let (files, owned_name) = (self.files.clone(), name.to_owned());
        let caching =
            tokio::task::spawn_blocking(move || files.cache(&owned_name, next, &component));
        let mut pending = self.caching.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|task| !task.is_finished());
        pending.push(caching);
        Ok(live)
    }

    /// Waits for artefacts still being cached (at shutdown: so that the next
    /// start loads them instead of compiling again).
    pub async fn settle(&self) {
        let pending = std::mem::take(&mut *self.caching.lock().unwrap_or_else(|p| p.into_inner()));
        for task in pending {
            let _ = task.await;
        }
    }

    /// Makes an earlier version live: `to`, or the one before the live one.
    pub async fn rollback(&self, name: &str, to: Option<u32>) -> Result<Deployed, DeployError> {
        let _one_at_a_time = self.changing.lock().await;
        let info = {
            let entries = self.entries();
            let entry = entries
                .get(name)
                .filter(|e| !e.versions.is_empty())
                .ok_or_else(|| DeployError::Unknown(name.to_owned()))?;
            match to {
                Some(version) => entry
                    .versions
                    .iter()
                    .find(|v| v.version == version)
                    .cloned()
                    .ok_or(DeployError::NoVersion {
                        name: name.to_owned(),
                        version,
                    })?,
                None => {
                    let live = entry.slot.live_version().unwrap_or(u32::MAX);
                    entry
                        .versions
                        .iter()
                        .rev()
                        .find(|v| v.version < live)
                        .cloned()
                        .ok_or_else(|| DeployError::NothingToRollBackTo(name.to_owned()))?
                }
            }
        };
        // Loading reads the cache or compiles: off the async threads.
        let (files, owned_name, owned_info) = (self.files.clone(), name.to_owned(), info.clone());
        let loaded =
            tokio::task::spawn_blocking(move || files.load_version(&owned_name, &owned_info))
                .await
                .map_err(|e| io(&self.files.dir, e))??;
        self.make_live(name, info, loaded, false).await
    }

    /// Writes the live pointer, then swaps the slot.
    async fn make_live(
        &self,
        name: &str,
        info: VersionInfo,
        loaded: Loaded,
        new_version: bool,
    ) -> Result<Deployed, DeployError> {
        let pointer = self.files.plugin_dir(name).join("live");
        let version = info.version;
        tokio::task::spawn_blocking(move || {
            write_durably(&pointer, format!("{version}\n").as_bytes())
        })
        .await
        .map_err(|e| io(&self.files.dir, e))??;
        let world = info.world;
        let mut entries = self.entries();
        let entry = entries.entry(name.to_owned()).or_insert_with(|| Entry {
            versions: Vec::new(),
            slot: Slot::empty(name, world),
        });
        if new_version {
            entry.versions.push(info);
        }
        entry.slot.swap(Arc::new(loaded));
        tracing::info!(plugin = name, version, world = %world, "plugin version live");
        Ok(Deployed {
            name: name.to_owned(),
            version,
            world,
            created: new_version,
        })
    }
}

impl Files {
    /// Compiles and links a new version (as `world`, or as whichever world
    /// it implements), then writes its files. Nothing is written for bytes
    /// that do not load.
    fn store_new(
        &self,
        name: &str,
        version: u32,
        world: Option<World>,
        sha256: String,
        bytes: &[u8],
    ) -> Result<(Loaded, VersionInfo, Component), DeployError> {
        let component = self
            .host
            .compile(bytes)
            .map_err(|e| DeployError::Invalid(format!("not a valid WebAssembly component: {e}")))?;
        let loaded = self
            .host
            .load(name, version, &component, world)
            .map_err(|e| match world {
                Some(world) => DeployError::Invalid(format!(
                    "plugin {name:?} is a {world}, fixed by its first version: {e}"
                )),
                None => DeployError::Invalid(e),
            })?;
        let info = VersionInfo {
            version,
            world: loaded.world(),
            size: bytes.len() as u64,
            sha256,
            deployed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        let dir = self.plugin_dir(name);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        write_durably(&dir.join(format!("v{version}.wasm")), bytes)?;
        let record = serde_json::to_vec_pretty(&info).map_err(|e| io(&dir, e))?;
        write_durably(&dir.join(format!("v{version}.json")), &record)?;
        Ok((loaded, info, component))
    }

    /// Caches a version's compiled artefact; a failure only costs a compile later.
    fn cache(&self, name: &str, version: u32, component: &Component) {
        let path = self.plugin_dir(name).join(format!("v{version}.cwasm"));
        if let Err(e) = self.write_cache(&path, component) {
            tracing::warn!(plugin = name, error = %e, "cannot cache the compiled artefact");
        }
    }

    fn plugin_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read_versions(&self, name: &str) -> Result<Vec<VersionInfo>, DeployError> {
        let dir = self.plugin_dir(name);
        let mut versions = Vec::new();
        for item in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let path = item.map_err(|e| io(&dir, e))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read(&path).map_err(|e| io(&path, e))?;
            match serde_json::from_slice::<VersionInfo>(&text) {
                Ok(info) if path.with_extension("wasm").exists() => versions.push(info),
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "version without its .wasm; skipped")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable version record; skipped")
                }
            }
        }
        versions.sort_by_key(|v| v.version);
        Ok(versions)
    }

    fn read_live(&self, name: &str) -> Result<Option<u32>, DeployError> {
        let path = self.plugin_dir(name).join("live");
        match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| io(&path, format!("not a version number: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// This engine's key for compiled artefacts.
    fn engine_key(&self) -> [u8; 8] {
        let mut hasher = DefaultHasher::new();
        self.host
            .engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        hasher.finish().to_le_bytes()
    }

    /// The cached artefact of a version, if it is this engine's and intact.
    fn cached(&self, path: &Path) -> Option<Component> {
        let bytes = std::fs::read(path).ok()?;
        let (key, rest) = bytes.split_at_checked(8)?;
        let (digest, artefact) = rest.split_at_checked(32)?;
        if key != self.engine_key() || digest != Sha256::digest(artefact).as_slice() {
            return None;
        }
        // Deserializing runs native code compiled earlier, so it is unsafe in
        // wasmtime's terms: the bytes must be an artefact wasmtime produced.
        // These were: this module wrote them with `Component::serialize` for
        // an engine of the same compatibility key, and the digest shows they
        // are unchanged since (wasmtime checks the version and config again).
        #[allow(
            unsafe_code,
            reason = "the compiled-artefact cache; see the comment above"
        )]
        let component = unsafe { Component::deserialize(&self.host.engine, artefact) };
        component
            .inspect_err(|e| tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cached artefact refused; compiling again"))
            .ok()
    }

    fn write_cache(&self, path: &Path, component: &Component) -> Result<(), DeployError> {
        let artefact = component
            .serialize()
            .map_err(|e| io(path, format!("{e:#}")))?;
        let mut bytes = Vec::with_capacity(40 + artefact.len());
        bytes.extend_from_slice(&self.engine_key());
        bytes.extend_from_slice(&Sha256::digest(&artefact));
        bytes.extend_from_slice(&artefact);
        write_durably(path, &bytes)
    }

    /// Loads a stored version: from the cache when it can, else compiled
    /// from its `.wasm` (and the cache rewritten).
    fn load_version(&self, name: &str, info: &VersionInfo) -> Result<Loaded, DeployError> {
        let dir = self.plugin_dir(name);
        let cache = dir.join(format!("v{}.cwasm", info.version));
        let component = match self.cached(&cache) {
            Some(component) => component,
            None => {
                let wasm = dir.join(format!("v{}.wasm", info.version));
                let bytes = std::fs::read(&wasm).map_err(|e| io(&wasm, e))?;
                let component = self.host.compile(&bytes).map_err(DeployError::Invalid)?;
                self.cache(name, info.version, &component);
                component
            }
        };
        self.host
            .load(name, info.version, &component, Some(info.world))
            .map_err(DeployError::Invalid)
    }
}

fn view(name: &str, e: &Entry) -> PluginView {
    PluginView {
        name: name.to_owned(),
        world: e.slot.world,
        live: e.slot.live_version(),
        versions: e.versions.clone(),
        used_by: None,
    }
}
