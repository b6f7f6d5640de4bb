//! Processors: take messages from a store in order, forward them, retry, and
//! apply the failure action.
//!
//! One processor owns one store's consumer side. It runs rounds — on a cron
//! schedule, a fixed interval, or continuously — and in each round leases up
//! to `batch` messages (continuously: keeps up to a window leased) and
//! delivers them in lanes ([`lanes`]): by default one lane, one message after
//! the other, where a message under retry holds back the ones behind it;
//! with `order_key` one lane per key, up to `concurrency` at once, so a key
//! under retry holds back only its own later messages. Each message ends in
//! exactly one way:
//! acked after its response was handled, acked after its dead-letter copy is
//! durable, acked when dropped, or released back to the head (deactivation,
//! shutdown) so that it is the next one delivered.

pub mod forwarder;
pub mod handler;
pub mod policy;
pub mod retry;
pub mod schedule;
pub mod signing;

pub mod lanes;
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
use crate::store::trail::{self, FailureKind, Trail, TrailAttempt};
use crate::store::{Leased, Receipt, Store};
use forwarder::Forward;
use futures_util::StreamExt;
use handler::{HandlerOutcome, ResponseHandler};
use lanes::{Lane, Lanes};
use lifecycle::Labels;
pub use lifecycle::{ActivateError, Deactivation, Deactivations, ProcessorHandle, State};
use policy::{FailurePolicy, PolicyDecision};
use retry::{Failure, RetryRules, Verdict};
use schedule::{SharedRate, Throttle, Trigger};

/// The order key of a lane, for a processor with `order_key`.
fn lane_key(lane: &Lane) -> Option<&Option<String>> {
    match lane {
        Lane::Key(key) => Some(key),
        _ => None,
    }
}

/// Messages a continuous processor keeps leased (at least; 4 per lane of
/// its concurrency), not counting the ones of blocked keys ...
const CONTINUOUS_PREFETCH: usize = 256;
/// ... and all in all at most this many: once blocked keys hold that many,
/// the processor takes no more until a key is activated.
const MAX_HELD: usize = 10_000;
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
    /// Its key is deactivated: it waits at the head of its lane.
    Blocked(String),
}

/// Delivered or dropped messages whose ack is not sent yet, and since when.
#[derive(Default)]
struct Acks {
    receipts: Vec<Receipt>,
    since: Option<tokio::time::Instant>,
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
    /// Lanes take turns at the throttle.
    throttle: Option<tokio::sync::Mutex<Throttle>>,
    /// The forward rate its tenant's processors share.
    shared_rate: Option<Arc<SharedRate>>,
    metrics: Arc<Metrics>,
    counters: ProcessorMetrics,
    handle: ProcessorHandle,
    state: watch::Receiver<State>,
    /// Set while the processor waits for its plugins (in a mutex only to
    /// be `Sync`; taken once, when it starts).
    plugins_ready: std::sync::Mutex<Option<PluginsReady>>,
    acks: std::sync::Mutex<Acks>,
    /// Since when every attempt failed (`disable_after`); `None` after a success.
    failing_since: std::sync::Mutex<Option<tokio::time::Instant>>,
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
        forwarder: Box<dyn Forward>,
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
            concurrency: settings.concurrency,
            order_key: settings.order_key.as_ref().map(|k| k.to_string()),
        };
        let (missing, plugins_ready) = match waiting {
            Some((missing, ready)) => (missing, Some(ready)),
            None => (Vec::new(), None),
        };
        let handle = ProcessorHandle::new(labels, missing, deactivations, counters.clone());
        Processor {
            forwarder,
            rules: RetryRules {
                backoff: settings.retry.clone(),
                max_redeliveries: settings.max_redeliveries,
                retry_statuses: settings.retry_statuses.clone(),
            },
            throttle: settings
                .max_rate
                .map(|rate| tokio::sync::Mutex::new(Throttle::new(rate))),
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
            acks: std::sync::Mutex::new(Acks::default()),
            failing_since: std::sync::Mutex::new(None),
            left: None,
        }
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
    pub async fn run(self, shutdown: CancellationToken) {
        let mut trigger = Trigger::new(&self.settings.trigger);
        let continuous = matches!(trigger, Trigger::Continuous);
        let concurrency = self.settings.concurrency.max(1);
        tracing::info!(
            processor = %self.settings.name, store = %self.settings.store, endpoint = %self.settings.endpoint,
            trigger = %self.handle.labels.trigger, concurrency, state = self.handle.state().name(), "processor started"
        );
        let ready = lifecycle::lock(&self.plugins_ready).take();
        if let Some(ready) = ready {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = ready => self.handle.plugins_ready(),
            }
        }
        let mut lanes = Lanes::default();
        let mut state = self.state.clone();
        loop {
            // A plugin gives its instances back to the pool before any wait.
            self.handler.discard();
            // Wait while deactivated.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = state.wait_for(|s| *s == State::Running) => if r.is_err() { break },
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = trigger.tick() => {}
            }
            if self.deactivated() {
                continue;
            }
            let finished = self
                .round(&mut lanes, continuous, concurrency, &shutdown)
                .await;
            // Before waiting for the next round, the store learns what left.
            self.flush_acks().await;
            if shutdown.is_cancelled() || self.deactivated() {
                self.give_back(&mut lanes).await;
                continue;
            }
            if finished == 0 && continuous {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.store.appended() => {}
                    () = self.handle.keys_activated() => {}
                    // Belt and braces: a lost wake-up costs at most this much latency.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        self.flush_acks().await;
        self.give_back(&mut lanes).await;
        tracing::info!(processor = %self.settings.name, "processor stopped");
    }

    /// One round: leases (a round of a schedule takes `batch` messages; a
    /// continuous one keeps a window leased while it delivers) and delivers
    /// in lanes, up to `concurrency` at once, until nothing can start. How
    /// many messages finished.
    async fn round(
        &self,
        lanes: &mut Lanes,
        continuous: bool,
        concurrency: usize,
        shutdown: &CancellationToken,
    ) -> usize {
        let window = if continuous {
            CONTINUOUS_PREFETCH.max(4 * concurrency)
        } else {
            self.settings.batch
        };
        let mut leased_here = 0;
        let mut finished = 0;
        // Whether the store may have more than it gave at the last lease.
        let mut more = true;
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        loop {
            if self.handle.take_keys_changed() {
                let handle = &self.handle;
                lanes.unblock(|lane| match lane {
                    Lane::Key(key) => handle.is_blocked(key),
                    _ => false,
                });
            }
            let stopping = shutdown.is_cancelled() || self.deactivated();
            // A continuous round tops the window up once half of it is free.
            let room = if continuous {
                if lanes.active() <= window / 2 {
                    (window - lanes.active()).min(MAX_HELD.saturating_sub(lanes.held()))
                } else {
                    0
                }
            } else {
                window - leased_here
            };
            if !stopping && more && room > 0 {
                match self.store.lease(room).await {
                    Ok(leased) => {
                        more = leased.len() == room;
                        leased_here += leased.len();
                        for leased in leased {
                            let lane =
                                Lane::of(&leased, self.settings.order_key.as_ref(), concurrency);
                            lanes.push(lane, leased);
                        }
                    }
                    Err(e) => {
                        more = false;
                        tracing::error!(processor = %self.settings.name, error = %e, "cannot take messages from the store");
                        if in_flight.is_empty() && !lanes.has_ready() {
                            tokio::select! {
                                _ = shutdown.cancelled() => {}
                                _ = tokio::time::sleep(STORE_ERROR_PAUSE) => {}
                            }
                            return finished;
                        }
                    }
                }
            }
            if !stopping {
                while in_flight.len() < concurrency {
                    let Some((lane, leased)) = lanes.start() else {
                        break;
                    };
                    in_flight.push(self.deliver_in(lane, leased, shutdown));
                }
            }
            let Some((lane, leased, fate)) = (tokio::select! {
                biased;
                next = in_flight.next(), if !in_flight.is_empty() => next,
                // New messages while the lanes are busy: lease them too.
                _ = self.store.appended(), if continuous && !more && !stopping && !in_flight.is_empty() => {
                    more = true;
                    continue;
                }
                else => None,
            }) else {
                return finished;
            };
            match fate {
                Fate::Done => {
                    finished += 1;
                    lanes.done(lane);
                }
                Fate::Returned => lanes.put_back(lane, leased),
                Fate::Blocked(reason) => {
                    if let Lane::Key(key) = &lane {
                        self.handle.block_key(key.clone(), reason);
                    }
                    lanes.block(lane, leased);
                }
            }
            let flush = {
                let acks = lifecycle::lock(&self.acks);
                acks.receipts.len() >= ACK_BATCH
                    || acks.since.is_some_and(|t| t.elapsed() >= ACK_DELAY)
            };
            if flush {
                self.flush_acks().await;
            }
        }
    }

    /// Gives every message the lanes hold back to the store's head, in order.
    async fn give_back(&self, lanes: &mut Lanes) {
        // An activation starts `disable_after`'s clock afresh.
        *lifecycle::lock(&self.failing_since) = None;
        let Some(oldest) = lanes.take_all() else {
            return;
        };
        self.handle.forget_keys();
        if let Err(e) = self.store.release(oldest).await {
            tracing::error!(processor = %self.settings.name, error = %e, "cannot return messages to the store head");
        }
    }

    async fn deliver_in(
        &self,
        lane: Lane,
        leased: Leased,
        shutdown: &CancellationToken,
    ) -> (Lane, Leased, Fate) {
        let fate = self.deliver(&leased, lane_key(&lane), shutdown).await;
        (lane, leased, fate)
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

    /// Attempts until the message is delivered, gives up, or the processor
    /// stops. `key` is its order key's lane, if the processor has one.
    async fn deliver(
        &self,
        leased: &Leased,
        key: Option<&Option<String>>,
        shutdown: &CancellationToken,
    ) -> Fate {
        let message = &leased.message;
        let mut attempt = 0u32;
        let mut trail = Attempts::default();
        loop {
            attempt += 1;
            let started = chrono::Utc::now().timestamp_millis();
            if let Some(throttle) = &self.throttle {
                let mut state = self.state.clone();
                tokio::select! {
                    _ = async { throttle.lock().await.acquire().await } => {}
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
            let mut answered = None;
            let failure = match forwarded {
                Ok(response) => {
                    answered = Some((response.status.as_u16(), response.body.clone()));
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
                                *lifecycle::lock(&self.failing_since) = None;
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
            trail.record(started, &failure, answered);
            self.handle
                .record_failure(format!("message {}: {failure}", message.id));
            if let Some(why) = self.unhealthy(&failure) {
                tracing::warn!(processor = %self.settings.name, message_id = %message.id, "{why}. Message forwarding is stopped for {}", self.settings.endpoint);
                self.handle.deactivate(why);
                return Fate::Returned;
            }
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
                Verdict::GiveUp => {
                    return self
                        .give_up(leased, key, &failure, attempt, action, trail)
                        .await;
                }
            }
        }
    }

    /// Why the endpoint counts as gone or failing for too long after
    /// `failure` (`deactivate_on_gone`, `disable_after`), if it does.
    fn unhealthy(&self, failure: &Failure) -> Option<String> {
        if self.settings.deactivate_on_gone
            && matches!(failure, Failure::Status { status: 410, .. })
        {
            return Some(format!(
                "the endpoint answered 410 Gone (deactivate_on_gone): {failure}"
            ));
        }
        let after = self.settings.disable_after?;
        let now = tokio::time::Instant::now();
        let since = *lifecycle::lock(&self.failing_since).get_or_insert(now);
        (now.duration_since(since) >= after).then(|| {
            format!(
                "every attempt failed for {} (disable_after); last: {failure}",
                humantime::format_duration(after)
            )
        })
    }

    /// Marks a message as gone; the store hears of it at the next [`Self::flush_acks`].
    fn ack(&self, leased: &Leased) {
        if let Some(left) = &self.left {
            left(leased.message.body.len() as u64);
        }
        let mut acks = lifecycle::lock(&self.acks);
        acks.receipts.push(leased.receipt);
        acks.since.get_or_insert_with(tokio::time::Instant::now);
    }

    async fn flush_acks(&self) {
        let acks = {
            let mut acks = lifecycle::lock(&self.acks);
            acks.since = None;
            std::mem::take(&mut acks.receipts)
        };
        if acks.is_empty() {
            return;
        }
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
        &self,
        leased: &Leased,
        key: Option<&Option<String>>,
        failure: &Failure,
        attempts: u32,
        action: OnFailure,
        trail: Attempts,
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
            OnFailure::Deactivate if key.is_some() => {
                let key = key.cloned().flatten();
                tracing::warn!(processor = %name, message_id = %id, key = ?key, "{why}. Message forwarding is stopped for this key");
                Fate::Blocked(format!("message {id}: {failure}"))
            }
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
                let copy = Message {
                    trail: Some(Arc::new(trail.into_trail(
                        &self.settings,
                        self.store.name(),
                        failure,
                        attempts,
                    ))),
                    ..leased.message.clone()
                };
                match chain.move_from(&*self.store, leased, Arc::new(copy)).await {
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

/// What a message's attempts left for its failure trail (see
/// [`crate::store::trail`]): the latest records and the last response body.
#[derive(Default)]
struct Attempts {
    log: Vec<TrailAttempt>,
    last: Option<(u16, bytes::Bytes)>,
}

impl Attempts {
    /// Records one failed attempt that started at `started` (ms), with the
    /// status and body of the response, if one came.
    fn record(&mut self, started: i64, failure: &Failure, answered: Option<(u16, bytes::Bytes)>) {
        if self.log.len() == trail::MAX_ATTEMPTS_KEPT {
            self.log.remove(0);
        }
        let error = failure.to_string();
        let (error, _) = trail::truncate(&error, trail::MAX_ERROR);
        self.log.push(TrailAttempt {
            at: started,
            status: answered.as_ref().map(|(status, _)| *status),
            error: error.to_owned(),
        });
        self.last = answered;
    }

    /// The trail of a message given up after `attempts` attempts, the last failing with `failure`.
    fn into_trail(
        self,
        settings: &ProcessorSettings,
        store: &str,
        failure: &Failure,
        attempts: u32,
    ) -> Trail {
        let kind = match failure {
            Failure::Status { .. } => FailureKind::Status,
            Failure::Forward(_) => FailureKind::Transport,
            Failure::Handler { .. } => FailureKind::Handler,
        };
        let (body, truncated) = self
            .last
            .as_ref()
            .map_or((None, false), |(_, body)| Trail::response_body(body));
        let mut trail = Trail {
            processor: settings.name.clone(),
            store: store.to_owned(),
            endpoint: settings.endpoint.to_string(),
            dead_lettered_at: chrono::Utc::now().timestamp_millis(),
            attempts,
            kind,
            last_status: self.last.as_ref().map(|(status, _)| *status),
            last_error: failure.to_string(),
            last_response_body: body,
            last_response_truncated: truncated,
            attempt_log: self.log,
        };
        trail.fit();
        trail
    }
}
