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

pub mod lifecycle;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{OnFailure, ProcessorSettings, ProcessorTrigger};
use crate::metrics::{Metrics, ProcessorMetrics};
use crate::store::Message;
use crate::store::chain::ChainSet;
use crate::store::{Leased, Receipt, Store};
use forwarder::{Forward, Forwarder};
use handler::{HandlerOutcome, ResponseHandler};
use lifecycle::Labels;
pub use lifecycle::{ActivateError, Deactivation, Deactivations, ProcessorHandle, State};
use policy::{FailurePolicy, PolicyDecision};
use retry::{Failure, RetryRules, Verdict};
use schedule::{SharedRate, Throttle, Trigger};

/// Messages leased at a time by a continuous processor.
const CONTINUOUS_PREFETCH: usize = 256;
/// Acks are sent to the store in groups of at most this many ...
const ACK_BATCH: usize = 64;
/// ... and held at most this long (while more messages are being delivered).
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Wait before leasing again after the store failed a lease.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Where a processor puts messages that failed for good: the chain that
/// starts at `store`, looked up when needed, so that a change of the
/// dead-letter store's `retry` or `secondary` does not restart the processor.
#[derive(Clone)]
pub struct DeadLetter {
    pub store: String,
    pub chains: Arc<ChainSet>,
}

/// Resolves once every plugin a waiting processor names is live.
pub type PluginsReady = Pin<Box<dyn Future<Output = ()> + Send>>;

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
    dead_letter: Option<DeadLetter>,
    forwarder: Box<dyn Forward>,
    handler: Arc<dyn ResponseHandler>,
    policy: Option<Arc<dyn FailurePolicy>>,
    rules: RetryRules,
    throttle: Option<Throttle>,
    /// The forward rate its tenant's processors share.
    shared_rate: Option<Arc<SharedRate>>,
    metrics: Arc<Metrics>,
    counters: ProcessorMetrics,
    handle: ProcessorHandle,
    state: watch::Receiver<State>,
    /// Set while the processor waits for its plugins (in a mutex only to
    /// be `Sync`; taken once, when it starts).
    plugins_ready: std::sync::Mutex<Option<PluginsReady>>,
    /// Delivered or dropped messages whose ack is not sent yet, and since when.
    acks: Vec<Receipt>,
    acks_since: Option<tokio::time::Instant>,
    /// Told of each message that leaves the store for good.
    left: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl Processor {
    /// A processor of `settings` on `store`. `missing` names the deployed
    /// plugins it waits for, and `plugins_ready` resolves when they are live;
    /// a deactivation recorded in `deactivations` holds it deactivated.
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts a processor is made of; each is built elsewhere"
    )]
    pub fn new(
        settings: ProcessorSettings,
        store: Arc<dyn Store>,
        dead_letter: Option<DeadLetter>,
        handler: Arc<dyn ResponseHandler>,
        policy: Option<Arc<dyn FailurePolicy>>,
        metrics: Arc<Metrics>,
        waiting: Option<(Vec<String>, PluginsReady)>,
        deactivations: Arc<Deactivations>,
    ) -> Processor {
        let counters = metrics.processor(&settings.name);
        let trigger = match &settings.trigger {
            ProcessorTrigger::Cron(_, expr) => format!("schedule {expr}"),
            ProcessorTrigger::Interval(every) => {
                format!("interval {}", humantime::format_duration(*every))
            }
            ProcessorTrigger::Continuous => "continuous".to_owned(),
        };
        let labels = Labels {
            name: settings.name.clone(),
            store: settings.store.clone(),
            endpoint: settings.endpoint.to_string(),
            trigger,
            handler: handler.name().to_owned(),
            policy: policy.as_ref().map(|p| p.name().to_owned()),
        };
        let (missing, plugins_ready) = match waiting {
            Some((missing, ready)) => (missing, Some(ready)),
            None => (Vec::new(), None),
        };
        let handle = ProcessorHandle::new(labels, missing, deactivations, counters.clone());
        Processor {
            forwarder: Box::new(Forwarder::new(
                settings.endpoint.clone(),
                settings.method.clone(),
                settings.timeout,
            )),
            rules: RetryRules {
                backoff: settings.retry.clone(),
                max_redeliveries: settings.max_redeliveries,
                retry_statuses: settings.retry_statuses.clone(),
            },
            throttle: settings.max_rate.map(Throttle::new),
            shared_rate: None,
            dead_letter,
            state: handle.watch(),
            settings,
            store,
            handler,
            policy,
            metrics,
            counters,
            handle,
            plugins_ready: std::sync::Mutex::new(plugins_ready),
            acks: Vec::new(),
            acks_since: None,
            left: None,
        }
    }

    /// Forwards through `forward` instead of HTTP to the endpoint.
    pub fn with_forward(mut self, forward: Box<dyn Forward>) -> Processor {
        self.forwarder = forward;
        self
    }

    /// Each attempt also waits for `rate`, which other processors share.
    pub fn with_shared_rate(mut self, rate: Arc<SharedRate>) -> Processor {
        self.shared_rate = Some(rate);
        self
    }

    /// Each message that leaves the store for good is reported to `left`
    /// with its body's size (a tenant's stored quota counts them).
    pub fn on_left(mut self, left: Arc<dyn Fn(u64) + Send + Sync>) -> Processor {
        self.left = Some(left);
        self
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
            trigger = %self.handle.labels.trigger, state = self.handle.state().name(), "processor started"
        );
        let ready = lifecycle::lock(&self.plugins_ready).take();
        if let Some(ready) = ready {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = ready => self.handle.plugins_ready(),
            }
        }
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

    /// Whether the processor may not take or forward messages now.
    fn deactivated(&self) -> bool {
        *self.state.borrow() != State::Running
    }

    /// Resolves when the processor should stop what it is doing.
    async fn interrupted(state: &mut watch::Receiver<State>, shutdown: &CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = state.wait_for(|s| *s != State::Running) => {}
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
            if let Some(rate) = &self.shared_rate {
                let mut state = self.state.clone();
                tokio::select! {
                    _ = rate.acquire() => {}
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
        if let Some(left) = &self.left {
            left(leased.message.body.len() as u64);
        }
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
                // The chains of the pipeline live now; held for the move only.
                let chains = self.dead_letter.as_ref().map(|d| (d, d.chains.load()));
                let Some((dls, chain)) = chains
                    .as_ref()
                    .and_then(|(d, chains)| Some((&d.store, chains.get(&d.store)?)))
                else {
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
