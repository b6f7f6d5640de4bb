//! A processor's lifecycle: one [`State`], derived from a few facts, and the
//! admin side ([`ProcessorHandle`]) that reads and changes it.
//!
//! The facts are kept apart so that no state means two things:
//!
//! - `deactivation`: set by a final failure with `on_failure = "deactivate"`
//!   or by the admin API, cleared only by an activate. It is operational
//!   state, written to [`Deactivations`] (a file under `data_dir`), so it
//!   survives a restart and a pipeline change.
//! - `missing`: the deployed plugins the processor names that have no live
//!   version yet. The plugin registry tells when they arrive.
//! - `draining`: the pipeline is stopping this processor (changed or
//!   removed); its attempt in flight finishes.
//!
//! From them: `draining` → [`State::Draining`]; else a deactivation →
//! [`State::Deactivated`]; else missing plugins → [`State::Waiting`]; else
//! [`State::Running`]. Only a running processor takes messages.
//!
//! With an `order_key`, a final failure with `on_failure = "deactivate"`
//! blocks only that message's key ([`ProcessorHandle::blocked_keys`]): the
//! processor stays running, the key's messages wait, in order, until the key
//! (or the whole processor) is activated. Blocked keys live in memory: a
//! restart, or deactivating and activating the processor, tries every key
//! again from its head.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::ProcessorMetrics;

/// Locks `m`, taking the value even if a thread panicked while holding it:
/// every value guarded here is whole after each statement.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a processor is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waits for these deployed plugins to have a live version; takes no message.
    Waiting { plugins: Vec<String> },
    /// Takes and forwards messages.
    Running,
    /// Stopped by a final failure or the admin API; its messages stay, the
    /// failed one at the head.
    Deactivated(Deactivation),
    /// Being stopped by a pipeline change: finishing its attempt in flight.
    Draining,
}

impl State {
    /// The name the admin API and the metrics show.
    pub fn name(&self) -> &'static str {
        match self {
            State::Waiting { .. } => "waiting",
            State::Running => "running",
            State::Deactivated(_) => "deactivated",
            State::Draining => "draining",
        }
    }

    /// Every state's name, for the metrics.
    pub const NAMES: [&'static str; 4] = ["waiting", "running", "deactivated", "draining"];
}

/// Why and since when a processor is deactivated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deactivation {
    pub reason: String,
    /// RFC 3339, UTC.
    pub since: String,
}

impl Deactivation {
    pub fn now(reason: impl Into<String>) -> Deactivation {
        Deactivation {
            reason: reason.into(),
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

/// Deactivations by processor name, kept in a file so that they survive a
/// restart (`data_dir/pipeline/deactivated.json`).
#[derive(Debug)]
pub struct Deactivations {
    path: Option<PathBuf>,
    map: Mutex<BTreeMap<String, Deactivation>>,
}

impl Deactivations {
    /// Reads the file at `path` (absent: none deactivated).
    pub fn open(path: PathBuf) -> std::io::Result<Deactivations> {
        let map = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Deactivations {
            path: Some(path),
            map: Mutex::new(map),
        })
    }

    /// Deactivations that live as long as the process (benchmarks, unit tests).
    pub fn in_memory() -> Deactivations {
        Deactivations {
            path: None,
            map: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn get(&self, processor: &str) -> Option<Deactivation> {
        lock(&self.map).get(processor).cloned()
    }

    /// Records (or with `None`, clears) a processor's deactivation, durably.
    pub fn set(&self, processor: &str, deactivation: Option<&Deactivation>) {
        let mut map = lock(&self.map);
        let changed = match deactivation {
            Some(d) => map.insert(processor.to_owned(), d.clone()).as_ref() != Some(d),
            None => map.remove(processor).is_some(),
        };
        let Some(path) = self.path.as_ref().filter(|_| changed) else {
            return;
        };
        // Written under the lock, so that files land in the order of changes.
        let written = serde_json::to_vec_pretty(&*map)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::durable::write(path, &bytes));
        if let Err(e) = written {
            tracing::error!(%processor, path = %path.display(), error = %e, "cannot record the deactivation; it will not survive a restart");
        }
    }

    /// Forgets processors that are no longer in the pipeline.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = lock(&self.map)
            .keys()
            .filter(|name| !keep(name))
            .cloned()
            .collect();
        for name in gone {
            self.set(&name, None);
        }
    }
}

/// Why an activate was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActivateError {
    #[error(
        "processor {processor:?} is waiting for plugin {} to be deployed; it starts by itself then (wharf deploy NAME FILE.wasm)",
        .plugins.join(", ")
    )]
    Waiting {
        processor: String,
        plugins: Vec<String>,
    },
    #[error("processor {0:?} is being stopped by a pipeline change")]
    Draining(String),
}

struct Facts {
    deactivation: Option<Deactivation>,
    missing: Vec<String>,
    draining: bool,
}

impl Facts {
    fn state(&self) -> State {
        if self.draining {
            State::Draining
        } else if let Some(d) = &self.deactivation {
            State::Deactivated(d.clone())
        } else if !self.missing.is_empty() {
            State::Waiting {
                plugins: self.missing.clone(),
            }
        } else {
            State::Running
        }
    }
}

/// What the admin API shows of a processor besides its state.
#[derive(Debug, Clone)]
pub struct Labels {
    pub name: String,
    pub store: String,
    pub endpoint: String,
    pub trigger: String,
    pub handler: String,
    pub policy: Option<String>,
    pub concurrency: usize,
    /// As written (`header:...`, `json:...`).
    pub order_key: Option<String>,
}

/// The admin side of a processor: its state and counters. Clones share them.
#[derive(Clone)]
pub struct ProcessorHandle {
    /// What it is: name, store, endpoint, trigger, handler, policy.
    pub labels: Arc<Labels>,
    facts: Arc<Mutex<Facts>>,
    state: Arc<watch::Sender<State>>,
    deactivations: Arc<Deactivations>,
    last_failure: Arc<Mutex<Option<String>>>,
    /// Keys blocked by a final failure (`None`: the lane of messages without a key).
    blocked: Arc<Mutex<BTreeMap<Option<String>, Deactivation>>>,
    /// Set when keys were activated; the processor's loop takes it.
    keys_changed: Arc<AtomicBool>,
    keys_activated: Arc<tokio::sync::Notify>,
    pub metrics: ProcessorMetrics,
}

impl ProcessorHandle {
    /// A handle whose deactivation (if any) comes from `deactivations`.
    pub fn new(
        labels: Labels,
        missing: Vec<String>,
        deactivations: Arc<Deactivations>,
        metrics: ProcessorMetrics,
    ) -> ProcessorHandle {
        let facts = Facts {
            deactivation: deactivations.get(&labels.name),
            missing,
            draining: false,
        };
        let (state, _) = watch::channel(facts.state());
        ProcessorHandle {
            labels: Arc::new(labels),
            facts: Arc::new(Mutex::new(facts)),
            state: Arc::new(state),
            deactivations,
            last_failure: Arc::new(Mutex::new(None)),
            blocked: Arc::new(Mutex::new(BTreeMap::new())),
            keys_changed: Arc::new(AtomicBool::new(false)),
            keys_activated: Arc::new(tokio::sync::Notify::new()),
            metrics,
        }
    }

    /// The keys that wait for an activate, and why (oldest key first by name).
    pub fn blocked_keys(&self) -> Vec<(Option<String>, Deactivation)> {
        lock(&self.blocked)
            .iter()
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect()
    }

    /// Whether `key` is blocked.
    pub fn is_blocked(&self, key: &Option<String>) -> bool {
        lock(&self.blocked).contains_key(key)
    }

    pub(super) fn block_key(&self, key: Option<String>, reason: String) {
        tracing::warn!(processor = %self.labels.name, key = ?key, %reason, "key deactivated: its messages wait until it is activated");
        lock(&self.blocked).insert(key, Deactivation::now(reason));
    }

    /// Activates one blocked key (`None`: the messages without a key);
    /// whether it was blocked.
    pub fn activate_key(&self, key: Option<&str>) -> bool {
        let was = lock(&self.blocked)
            .remove(&key.map(str::to_owned))
            .is_some();
        if was {
            tracing::info!(processor = %self.labels.name, key = ?key, "key activated");
            self.keys_changed.store(true, Ordering::Release);
            self.keys_activated.notify_one();
        }
        was
    }

    fn activate_all_keys(&self) {
        let mut blocked = lock(&self.blocked);
        if !blocked.is_empty() {
            blocked.clear();
            self.keys_changed.store(true, Ordering::Release);
            self.keys_activated.notify_one();
        }
    }

    /// The processor gave every message back: no key waits any more.
    pub(super) fn forget_keys(&self) {
        lock(&self.blocked).clear();
    }

    /// Whether keys were activated since the last call.
    pub(super) fn take_keys_changed(&self) -> bool {
        self.keys_changed.swap(false, Ordering::AcqRel)
    }

    /// Resolves when a key is activated.
    pub(super) async fn keys_activated(&self) {
        self.keys_activated.notified().await;
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Follows the state (the processor's loop waits on it).
    pub fn watch(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// Why the most recent failed attempt failed.
    pub fn last_failure(&self) -> Option<String> {
        lock(&self.last_failure).clone()
    }

    pub(super) fn record_failure(&self, failure: String) {
        *lock(&self.last_failure) = Some(failure);
    }

    /// Applies `change` to the facts and publishes the state they give.
    fn update(&self, change: impl FnOnce(&mut Facts)) -> State {
        let mut facts = lock(&self.facts);
        let before = facts.state();
        change(&mut facts);
        let after = facts.state();
        if before != after {
            tracing::info!(processor = %self.labels.name, store = %self.labels.store, from = before.name(), to = after.name(), "processor state");
            self.state.send_replace(after.clone());
        }
        after
    }

    /// Clears a deactivation and every blocked key. Refused while the processor waits for a
    /// plugin (it would burn messages on a handler that is not there) or
    /// is being stopped.
    pub fn activate(&self) -> Result<State, ActivateError> {
        let mut refused = None;
        let state = self.update(|facts| {
            if facts.draining {
                refused = Some(ActivateError::Draining(self.labels.name.clone()));
            } else if facts.deactivation.is_none() && !facts.missing.is_empty() {
                refused = Some(ActivateError::Waiting {
                    processor: self.labels.name.clone(),
                    plugins: facts.missing.clone(),
                });
            } else {
                if facts.deactivation.take().is_some() {
                    self.deactivations.set(&self.labels.name, None);
                    tracing::info!(processor = %self.labels.name, store = %self.labels.store, "Activating message processor on store {}", self.labels.store);
                }
                self.activate_all_keys();
            }
        });
        match refused {
            Some(e) => Err(e),
            None => Ok(state),
        }
    }

    /// Deactivates the processor; it stops after the attempt in flight and
    /// stays deactivated, across restarts, until activated.
    pub fn deactivate(&self, reason: impl Into<String>) {
        let deactivation = Deactivation::now(reason);
        self.update(|facts| {
            if facts.deactivation.is_none() {
                tracing::info!(processor = %self.labels.name, store = %self.labels.store, reason = %deactivation.reason, "Deactivating message processor on store {}", self.labels.store);
            }
            self.deactivations.set(&self.labels.name, Some(&deactivation));
            facts.deactivation = Some(deactivation);
        });
    }

    /// Every plugin the processor names has a live version now.
    pub fn plugins_ready(&self) {
        self.update(|facts| facts.missing.clear());
    }

    /// The pipeline is stopping the processor.
    pub fn drain(&self) {
        self.update(|facts| facts.draining = true);
    }
}
