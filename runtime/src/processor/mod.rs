//! Processors: take messages from a store in order, forward them, retry, and
//! apply the failure action.
//!
//! One processor owns one store's consumer side. It runs rounds — on a cron
//! schedule, a fixed interval, or continuously — and in each round leases up
//! to `batch` messages and delivers them one after the other. A message under
//! retry holds back the ones behind it. Each message ends in exactly one way:
//! acked after its response was handled, acked after its dead-letter copy is
//! durable, acked when dropped, or released back to the head (deactivation,
//! shutdown) so that it is the next one delivered.

pub mod forwarder;
pub mod handler;
pub mod policy;
pub mod retry;
pub mod schedule;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::metrics::{Metrics, ProcessorMetrics};
use crate::config::{OnFailure, ProcessorSettings, ProcessorTrigger};
use crate::store::Message;
use crate::store::chain::StoreChain;
use crate::store::{Leased, Receipt, Store};
use forwarder::Forwarder;
use handler::{HandlerOutcome, ResponseHandler};
use policy::{FailurePolicy, PolicyDecision};
use retry::{Failure, RetryRules, Verdict};
use schedule::{Throttle, Trigger};

/// Messages leased at a time by a continuous processor.
const CONTINUOUS_PREFETCH: usize = 256;
/// Acks are sent to the store in groups of at most this many ...
const ACK_BATCH: usize = 64;
/// ... and held at most this long (while more messages are being delivered).
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Wait before leasing again after the store failed a lease.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Whether a processor forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Deactivated,
}

/// The admin side of a processor: its state and counters.
#[derive(Clone)]
pub struct ProcessorHandle {
    pub name: String,
    pub store: String,
    pub endpoint: String,
    pub trigger: String,
    pub handler: String,
    pub policy: Option<String>,
    state: watch::Sender<State>,
    reason: Arc<Mutex<Option<String>>>,
    /// Deployed plugins it waits for before it starts.
    waiting_for: Arc<Mutex<Vec<String>>>,
    last_failure: Arc<Mutex<Option<String>>>,
    pub metrics: ProcessorMetrics,
}

impl ProcessorHandle {
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Why the most recent failed attempt failed.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record_failure(&self, failure: String) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
    }

    /// Why the processor was deactivated, while it is.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn activate(&self) {
        self.waiting_for
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if self.state.send_replace(State::Running) == State::Deactivated {
            tracing::info!(processor = %self.name, store = %self.store, "Activating message processor on store {}", self.store);
        }
    }

    pub fn deactivate(&self, reason: impl Into<String>) {
        let reason = reason.into();
        if self.state.send_replace(State::Deactivated) == State::Running {
            tracing::info!(processor = %self.name, store = %self.store, %reason, "Deactivating message processor on store {}", self.store);
        }
        *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }
}

impl ProcessorHandle {
    /// Holds the processor deactivated until plugin `name` has a live version.
    pub fn wait_for_plugin(&self, name: &str) {
        let mut waiting = self.waiting_for.lock().unwrap_or_else(|p| p.into_inner());
        if !waiting.iter().any(|w| w == name) {
            waiting.push(name.to_owned());
        }
        let names = waiting.join(", ");
        drop(waiting);
        self.deactivate(format!(
            "waiting for plugin {names} to be deployed (wharf deploy NAME FILE.wasm); it starts by itself then"
        ));
    }

    /// Plugin `name` has a live version: starts the processor if it waited for nothing else.
    pub fn plugin_live(&self, name: &str) {
        let mut waiting = self.waiting_for.lock().unwrap_or_else(|p| p.into_inner());
        let before = waiting.len();
        waiting.retain(|w| w != name);
        let start = before > 0 && waiting.is_empty();
        drop(waiting);
        if start {
            self.activate();
        }
    }
}

/// How the delivery of one message ended.
enum Fate {
    /// It left the store (delivered, dead-lettered or dropped).
    Done,
    /// It must go back to the head: the processor stopped or was deactivated.
    Returned,
}

/// A running processor (see the module doc).
pub struct Processor {
    settings: ProcessorSettings,
    store: Arc<dyn Store>,
    dead_letter: Option<(String, StoreChain)>,
    forwarder: Forwarder,
    handler: Arc<dyn ResponseHandler>,
    policy: Option<Arc<dyn FailurePolicy>>,
    rules: RetryRules,
    throttle: Option<Throttle>,
    metrics: Arc<Metrics>,
    counters: ProcessorMetrics,
    handle: ProcessorHandle,
    state: watch::Receiver<State>,
    /// Delivered or dropped messages whose ack is not sent yet, and since when.
    acks: Vec<Receipt>,
    acks_since: Option<tokio::time::Instant>,
}

impl Processor {
    pub fn new(
        settings: ProcessorSettings,
        store: Arc<dyn Store>,
        dead_letter: Option<StoreChain>,
        handler: Arc<dyn ResponseHandler>,
        policy: Option<Arc<dyn FailurePolicy>>,
        metrics: Arc<Metrics>,
    ) -> Processor {
        let (state_tx, state) = watch::channel(State::Running);
        let counters = metrics.processor(&settings.name);
        let trigger = match &settings.trigger {
            ProcessorTrigger::Cron(_, expr) => format!("schedule {expr}"),
            ProcessorTrigger::Interval(every) => {
                format!("interval {}", humantime::format_duration(*every))
            }
            ProcessorTrigger::Continuous => "continuous".to_owned(),
        };
        let handle = ProcessorHandle {
            name: settings.name.clone(),
            store: settings.store.clone(),
            endpoint: settings.endpoint.to_string(),
            trigger,
            handler: handler.name().to_owned(),
            policy: policy.as_ref().map(|p| p.name().to_owned()),
            state: state_tx,
            reason: Arc::new(Mutex::new(None)),
            waiting_for: Arc::new(Mutex::new(Vec::new())),
            last_failure: Arc::new(Mutex::new(None)),
            metrics: counters.clone(),
        };
        Processor {
            forwarder: Forwarder::new(
                settings.endpoint.clone(),
                settings.method.clone(),
                settings.timeout,
            ),
            rules: RetryRules {
                backoff: settings.retry.clone(),
                max_redeliveries: settings.max_redeliveries,
                retry_statuses: settings.retry_statuses.clone(),
            },
            throttle: settings.max_rate.map(Throttle::new),
            dead_letter: settings.dead_letter_store.clone().zip(dead_letter),
            settings,
            store,
            handler,
            policy,
            metrics,
            counters,
            handle,
            state,
            acks: Vec::new(),
            acks_since: None,
        }
    }

    pub fn handle(&self) -> ProcessorHandle {
        self.handle.clone()
    }

    /// Runs rounds until `shutdown`; leased messages not delivered go back to the head.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut trigger = Trigger::new(&self.settings.trigger);
        let continuous = matches!(trigger, Trigger::Continuous);
        let max = if continuous {
            CONTINUOUS_PREFETCH
        } else {
            self.settings.batch
        };
        tracing::info!(
            processor = %self.settings.name, store = %self.settings.store, endpoint = %self.settings.endpoint,
            trigger = %self.handle.trigger, "processor started"
        );
        loop {
            // A plugin gives its instances back to the pool before any wait.
            self.handler.discard();
            // Wait while deactivated.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.state.wait_for(|s| *s == State::Running) => if r.is_err() { break },
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = trigger.tick() => {}
            }
            if self.deactivated() {
                continue;
            }
            let leased = match self.store.lease(max).await {
                Ok(leased) => leased,
                Err(e) => {
                    tracing::error!(processor = %self.settings.name, error = %e, "cannot take messages from the store");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(STORE_ERROR_PAUSE) => continue,
                    }
                }
            };
            if leased.is_empty() && continuous {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.store.appended() => {}
                    // Belt and braces: a lost wake-up costs at most this much latency.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            for leased in &leased {
                let fate = if shutdown.is_cancelled() || self.deactivated() {
                    Fate::Returned
                } else {
                    self.deliver(leased, &shutdown).await
                };
                if let Fate::Returned = fate {
                    if let Err(e) = self.store.release(leased.receipt).await {
                        tracing::error!(processor = %self.settings.name, error = %e, "cannot return message to the store head");
                    }
                    break;
                }
                if self.acks.len() >= ACK_BATCH
                    || self.acks_since.is_some_and(|t| t.elapsed() >= ACK_DELAY)
                {
                    self.flush_acks().await;
                }
            }
            // Before waiting for the next round, the store learns what left.
            self.flush_acks().await;
        }
        self.flush_acks().await;
        tracing::info!(processor = %self.settings.name, "processor stopped");
    }

    fn deactivated(&self) -> bool {
        *self.state.borrow() == State::Deactivated
    }

    /// Resolves when the processor should stop what it is doing.
    async fn interrupted(state: &mut watch::Receiver<State>, shutdown: &CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = state.wait_for(|s| *s == State::Deactivated) => {}
        }
    }

    /// Attempts until the message is delivered, gives up, or the processor stops.
    async fn deliver(&mut self, leased: &Leased, shutdown: &CancellationToken) -> Fate {
        let message = &leased.message;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if let Some(throttle) = &mut self.throttle {
                let mut state = self.state.clone();
                tokio::select! {
                    _ = throttle.acquire() => {}
                    _ = Self::interrupted(&mut state, shutdown) => return Fate::Returned,
                }
            }
            // The handler gets ready while the request is in flight.
            let (forwarded, ()) =
                tokio::join!(self.forwarder.forward(message), self.handler.prepare());
            let failure = match forwarded {
                Ok(response) => {
                    self.counters
                        .latency
                        .observe(response.elapsed.as_secs_f64());
                    let status = response.status.as_u16();
                    if self.rules.is_failure(status) {
                        self.handler.discard();
                        Failure::Status {
                            status,
                            retry_after: forwarder::retry_after(&response.headers),
                        }
                    } else {
                        let handled = self.handler.handle(message, attempt, &response).await;
                        let outcome = handled.outcome;
                        self.metrics.handler_call(
                            &self.settings.name,
                            self.handler.name(),
                            handled.version,
                            outcome.label(),
                        );
                        match outcome {
                            HandlerOutcome::Ack => {
                                self.ack(leased);
                                self.counters.forwarded.inc();
                                return Fate::Done;
                            }
                            HandlerOutcome::Retry(reason) => Failure::Handler {
                                reason,
                                retryable: true,
                            },
                            HandlerOutcome::Fail(reason) => Failure::Handler {
                                reason,
                                retryable: false,
                            },
                        }
                    }
                }
                Err(e) => {
                    self.handler.discard();
                    Failure::Forward(e)
                }
            };
            self.handle
                .record_failure(format!("message {}: {failure}", message.id));
            let (verdict, action) = self.next_step(message, &failure, attempt).await;
            match verdict {
                Verdict::RetryAfter(wait) => {
                    tracing::warn!(
                        processor = %self.settings.name, message_id = %message.id, attempt,
                        "forwarding to {} failed: {failure}; retrying in {}",
                        self.settings.endpoint, humantime::format_duration(wait)
                    );
                    self.counters.retried.inc();
                    let mut state = self.state.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = Self::interrupted(&mut state, shutdown) => return Fate::Returned,
                    }
                }
                Verdict::GiveUp => return self.give_up(leased, &failure, attempt, action).await,
            }
        }
    }

    /// Marks a message as gone; the store hears of it at the next [`Self::flush_acks`].
    fn ack(&mut self, leased: &Leased) {
        self.acks.push(leased.receipt);
        self.acks_since
            .get_or_insert_with(tokio::time::Instant::now);
    }

    async fn flush_acks(&mut self) {
        self.acks_since = None;
        if self.acks.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut self.acks);
        let count = acks.len();
        if let Err(e) = self.store.ack_many(acks).await {
            // The messages stay and are delivered again after a restart: at-least-once.
            tracing::error!(processor = %self.settings.name, error = %e, "ack of {count} message(s) failed");
        }
    }

    /// The failure action, after the last attempt.
    /// What follows a failed attempt: the failure policy's decision if there
    /// is a policy and it does not defer, else the config's rules.
    async fn next_step(
        &self,
        message: &Message,
        failure: &Failure,
        attempt: u32,
    ) -> (Verdict, OnFailure) {
        let configured = self.settings.on_failure;
        let Some(policy) = &self.policy else {
            return (self.rules.decide(failure, attempt), configured);
        };
        let decided = policy.decide(message, failure, attempt).await;
        let decision = decided.decision;
        self.metrics.handler_call(
            &self.settings.name,
            policy.name(),
            decided.version,
            decision.label(),
        );
        let give_up = |action: OnFailure, reason: String| {
            tracing::info!(processor = %self.settings.name, message_id = %message.id, policy = policy.name(), "failure policy decided {}: {reason}", decision.label());
            (Verdict::GiveUp, action)
        };
        match decision.clone() {
            PolicyDecision::RetryAfter(wait) => (Verdict::RetryAfter(wait), configured),
            PolicyDecision::DeadLetter(reason) if self.dead_letter.is_some() => {
                give_up(OnFailure::DeadLetter, reason)
            }
            PolicyDecision::DeadLetter(reason) => {
                tracing::warn!(processor = %self.settings.name, "failure policy chose dead-letter ({reason}) but no dead_letter_store is set; applying on_failure");
                (Verdict::GiveUp, configured)
            }
            PolicyDecision::Drop(reason) => give_up(OnFailure::Drop, reason),
            PolicyDecision::Deactivate(reason) => give_up(OnFailure::Deactivate, reason),
            PolicyDecision::Default => (self.rules.decide(failure, attempt), configured),
        }
    }

    async fn give_up(
        &mut self,
        leased: &Leased,
        failure: &Failure,
        attempts: u32,
        action: OnFailure,
    ) -> Fate {
        let id = &leased.message.id;
        let endpoint = &self.settings.endpoint;
        let name = &self.settings.name;
        let why = if failure.retryable() {
            format!(
                "Maximum retries breached when forwarding message {id} to HTTP endpoint {endpoint} ({attempts} attempts, last: {failure})"
            )
        } else {
            format!("Forwarding message {id} to HTTP endpoint {endpoint} failed: {failure}")
        };
        match action {
            OnFailure::Deactivate => {
                tracing::warn!(processor = %name, message_id = %id, "{why}. Message forwarding is stopped for {endpoint}");
                self.handle.deactivate(format!("message {id}: {failure}"));
                Fate::Returned
            }
            OnFailure::DeadLetter => {
                let Some((dls, chain)) = &self.dead_letter else {
                    // validate() guarantees a dead-letter store; never lose the message if not.
                    self.handle.deactivate("no dead-letter store");
                    return Fate::Returned;
                };
                tracing::warn!(processor = %name, message_id = %id, "{why}. Forwarding message to DLC store {dls}");
                match chain.move_from(&*self.store, leased).await {
                    Ok(_) => {
                        self.counters.dead_lettered.inc();
                        Fate::Done
                    }
                    Err(e) => {
                        tracing::error!(
                            processor = %name, message_id = %id, error = %e,
                            "cannot store message in DLC store {dls}; deactivating so that the message stays"
                        );
                        self.handle
                            .deactivate(format!("message {id}: dead-letter store refused it: {e}"));
                        Fate::Returned
                    }
                }
            }
            OnFailure::Drop => {
                tracing::warn!(processor = %name, message_id = %id, "{why}. Dropping the message");
                self.ack(leased);
                self.counters.dropped.inc();
                Fate::Done
            }
        }
    }
}
