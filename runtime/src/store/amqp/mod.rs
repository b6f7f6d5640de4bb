//! The amqp store: a durable RabbitMQ queue through lapin.
//!
//! # Writes
//!
//! [`Store::append`] publishes a persistent message (see [`mapping`]) to a
//! durable queue on a channel in confirm mode and returns after the broker's
//! confirm: that is when a 202 may go out. Publishing happens under a short
//! lock; waiting for the confirm does not, so concurrent requests keep up to
//! [`CONFIRM_WINDOW`] publishes in flight on one channel. A write that fails
//! (broker down, connection lost, nack) drops the publishing connection; the
//! next write opens a new one, and the store's `retry` and `secondary` decide
//! what the request sees meanwhile.
//!
//! # Consuming, and why order holds
//!
//! Nothing consumes until the store's processor leases for the first time (a
//! dead-letter store is never consumed). Then a task keeps a consumer open
//! with manual acks and `prefetch` deliveries in flight, and reconnects with
//! the store's `reconnect` policy (`consume.rs`). The queue is declared with
//! `x-single-active-consumer`, so among several Wharf instances one consumes
//! and the others stand by; the broker hands the queue, in order, to a
//! standby when the active one goes away.
//!
//! Deliveries wait in a local queue until leased. A message is acked only
//! when its fate is final. [`Store::release`] (deactivation, shutdown) puts
//! leased messages back at the front of the local queue, still unacked at the
//! broker: nothing is requeued, so nothing can overtake them. When the
//! connection drops, the broker requeues every unacked message at its place
//! in the queue and the local queue is emptied; after reconnecting, the same
//! messages come again in the same order, marked redelivered (a message
//! whose response was being handled may be delivered twice: at-least-once).
//!
//! # TLS
//!
//! An `amqps://` URL connects through rustls. The broker's certificate is
//! checked against the system's CAs plus the store's `tls.ca_file`, and a
//! client certificate is sent if `tls.cert_file` and `tls.key_file` are set.
//! The files are read and checked when the store opens, so a wrong path is
//! a startup error and not a stream of failed connects.
//!
//! # Depth, peek and browse
//!
//! Depth is the broker's ready count (a passive `queue.declare`) plus the
//! messages this instance holds unacked. Peek lists only what this instance
//! holds (leased first, then prefetched), oldest first: RabbitMQ cannot show
//! a message without delivering it, and a `basic.get` + requeue would disturb
//! the order and the delivery count.
//!
//! A store nobody consumes here (a dead-letter store) is browsed, and its
//! messages removed, by a short-lived consumer of its own that returns what
//! it does not remove (`browse.rs`, where the cost and what it disturbs are
//! described). A store a processor here consumes browses what the processor
//! holds, and cannot remove.

mod browse;
pub mod config;
mod consume;
pub mod mapping;
mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};

use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::held::Holding;
use super::{Browsed, Leased, Message, Position, Receipt, Removed, Store, StoreError};
use crate::config::TlsFiles;
use config::{AmqpSettings, url_problem};
use consume::Consumer;
use tls::tls_config;
pub(crate) use tls::tls_refused;

/// Whether the TLS files of store `store` can be read and hold what they
/// should (`wharf check`).
pub fn check_tls(store: &str, tls: &TlsFiles) -> Result<(), StoreError> {
    tls_config(store, tls).map(|_| ())
}

/// Publishes awaiting their confirm, at most.
pub const CONFIRM_WINDOW: usize = 256;
/// Messages one browse of a queue nobody consumes here is asked for: each
/// browse reads from the head, so pages are large.
const BROWSE_PAGE: usize = 5_000;
/// Limit of one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Frame size asked for unless the URL says otherwise. lapin buffers 32
/// frames each way per connection: at RabbitMQ's default of 128 KiB that is
/// 8 MiB a connection; at 16 KiB, 1 MiB, for the same throughput.
const FRAME_MAX: u32 = 16 * 1024;
/// How often an idle consumer checks that its connection is still up.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);
/// After a failed connect, depth queries answer "disconnected" for this long
/// without trying again, so `/metrics` stays quick while the broker is away.
const DEPTH_QUIET: Duration = Duration::from_secs(1);

enum Event {
    Delivery(Box<Delivery>),
    /// The consumer's channel is gone: held deliveries are void (the broker requeued them).
    Reset,
    /// Reconnecting gave up (the `reconnect.count` ran out).
    GaveUp(String),
}

#[derive(Default)]
struct Local {
    held: Holding<Acker>,
    events: Option<mpsc::UnboundedReceiver<Event>>,
    gave_up: Option<String>,
}

/// A store on a RabbitMQ queue (see the module doc).
pub struct AmqpStore {
    name: String,
    url: String,
    settings: AmqpSettings,
    /// Certificates for `amqps://`, read from the files when the store opened.
    tls: OwnedTLSConfig,
    /// The publishing connection; locked only to (re)connect.
    publisher: tokio::sync::Mutex<Option<(Connection, Channel)>>,
    /// Its channel, for the common case: connected, no async lock needed.
    publish_channel: Mutex<Option<Channel>>,
    /// When connecting last failed.
    connect_failed_at: Mutex<Option<std::time::Instant>>,
    window: Semaphore,
    publisher_up: AtomicBool,
    consumer_up: Arc<AtomicBool>,
    consuming: AtomicBool,
    consumer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    local: Mutex<Local>,
    delivered: Arc<Notify>,
    stop: CancellationToken,
    /// One browse or remove at a time (each is the queue's consumer while it runs).
    browsing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AmqpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpStore")
            .field("name", &self.name)
            .field("queue", &self.settings.queue)
            .finish()
    }
}

/// A failure that a later try may not meet (the broker away, a connection lost).
fn error(store: &str, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Transient {
        store: store.to_owned(),
        reason: format!("{what}: {e}"),
    }
}

/// A lapin error, with its kind: what the broker or the TLS handshake
/// refused for good is permanent, the rest (I/O, timeouts, a closing
/// connection) transient.
fn lapin_error(store: &str, what: &str, e: &lapin::Error) -> StoreError {
    let permanent = match e.kind() {
        lapin::ErrorKind::IOError(io) => tls_refused(io),
        lapin::ErrorKind::InvalidProtocolVersion(_) | lapin::ErrorKind::AuthProviderError(_) => {
            true
        }
        _ => false,
    };
    if permanent {
        StoreError::Permanent {
            store: store.to_owned(),
            reason: format!("{what}: {e}"),
        }
    } else {
        error(store, what, e)
    }
}

/// The queue's arguments; every declaration must use the same ones.
fn queue_arguments(settings: &AmqpSettings) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(settings.queue_type.as_str().into()),
    );
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args
}

/// Runs one step of setting up a connection, within [`CONNECT_TIMEOUT`]: a
/// broker that is still starting may accept a connection and not answer.
async fn within<T>(
    store: &str,
    what: &str,
    step: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(CONNECT_TIMEOUT, step)
        .await
        .map_err(|_| {
            error(
                store,
                what,
                format_args!("no answer within {CONNECT_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| lapin_error(store, what, &e))
}

async fn open_channel(
    url: &str,
    tls: &OwnedTLSConfig,
    settings: &AmqpSettings,
    store: &str,
) -> Result<(Connection, Channel), StoreError> {
    let runtime = lapin::runtime::default_runtime().map_err(|e| error(store, "connecting", e))?;
    let connect =
        Connection::connect_with_config(url, ConnectionProperties::default(), tls.clone(), runtime);
    let connection = within(store, "connecting", connect).await?;
    let channel = within(store, "opening a channel", connection.create_channel()).await?;
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declare = channel.queue_declare(
        settings.queue.as_str().into(),
        options,
        queue_arguments(settings),
    );
    within(
        store,
        &format!("declaring queue {:?}", settings.queue),
        declare,
    )
    .await?;
    Ok((connection, channel))
}

impl AmqpStore {
    /// A store on `settings.queue`; connects on first use.
    pub fn open(name: &str, settings: &AmqpSettings) -> Result<AmqpStore, StoreError> {
        let mut url = settings.url.read(name)?;
        // A literal URL passed this at validation; one from the environment is checked now.
        if let Some((field, why)) = url_problem(&url, settings.tls != TlsFiles::default()) {
            return Err(StoreError::Permanent {
                store: name.to_owned(),
                reason: match field {
                    "url" => format!("the url {why}"),
                    _ => format!("{field}: {why}"),
                },
            });
        }
        let tls = tls_config(name, &settings.tls)?;
        if !url.contains("frame_max=") {
            let separator = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{separator}frame_max={FRAME_MAX}");
        }
        Ok(AmqpStore {
            name: name.to_owned(),
            url,
            settings: settings.clone(),
            tls,
            publisher: tokio::sync::Mutex::new(None),
            publish_channel: Mutex::new(None),
            connect_failed_at: Mutex::new(None),
            window: Semaphore::new(CONFIRM_WINDOW),
            publisher_up: AtomicBool::new(false),
            consumer_up: Arc::new(AtomicBool::new(false)),
            consuming: AtomicBool::new(false),
            consumer_task: Mutex::new(None),
            local: Mutex::new(Local::default()),
            delivered: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            browsing: tokio::sync::Mutex::new(()),
        })
    }

    /// The confirm-mode channel, opened if needed.
    async fn publish_channel(&self) -> Result<Channel, StoreError> {
        {
            let cached = self
                .publish_channel
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(channel) = &*cached
                && channel.status().connected()
            {
                return Ok(channel.clone());
            }
        }
        let mut slot = self.publisher.lock().await;
        if let Some((_, channel)) = &*slot
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *slot = None;
        let opened = async {
            let (connection, channel) =
                open_channel(&self.url, &self.tls, &self.settings, &self.name).await?;
            let confirms = channel.confirm_select(ConfirmSelectOptions::default());
            within(&self.name, "enabling publisher confirms", confirms).await?;
            Ok::<_, StoreError>((connection, channel))
        }
        .await;
        match opened {
            Ok((connection, channel)) => {
                *slot = Some((connection, channel.clone()));
                *self
                    .publish_channel
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(channel.clone());
                if !self.publisher_up.swap(true, Ordering::Relaxed) {
                    tracing::info!(store = %self.name, queue = %self.settings.queue, "connected to the broker");
                }
                Ok(channel)
            }
            Err(e) => {
                *self
                    .connect_failed_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
                if self.publisher_up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(store = %self.name, error = %e, "broker connection lost");
                }
                Err(e)
            }
        }
    }

    /// Publishes `message` persistent and mandatory to the queue; the confirm is to come.
    async fn publish(
        &self,
        channel: &Channel,
        message: &Message,
    ) -> Result<lapin::PublisherConfirm, lapin::Error> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        channel
            .basic_publish(
                "".into(),
                self.settings.queue.as_str().into(),
                options,
                &message.body,
                mapping::properties(message),
            )
            .await
    }

    /// What the broker's answer to a publish means.
    async fn confirmed(
        &self,
        confirm: Result<Confirmation, lapin::Error>,
    ) -> Result<(), StoreError> {
        match confirm {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err(error(
                &self.name,
                "publishing",
                "unroutable: the queue does not exist",
            )),
            Ok(Confirmation::Nack(_)) => Err(error(
                &self.name,
                "publishing",
                "the broker refused the message (nack)",
            )),
            Ok(Confirmation::NotRequested) => {
                Err(error(&self.name, "publishing", "no publisher confirm"))
            }
            Err(e) => {
                self.drop_publisher().await;
                Err(lapin_error(&self.name, "publishing", &e))
            }
        }
    }

    async fn drop_publisher(&self) {
        *self
            .publish_channel
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        *self.publisher.lock().await = None;
        self.publisher_up.store(false, Ordering::Relaxed);
    }

    fn start_consuming(&self) {
        if self.consuming.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.local.lock().unwrap_or_else(|p| p.into_inner()).events = Some(rx);
        let consumer = Consumer {
            store: self.name.clone(),
            url: self.url.clone(),
            tls: self.tls.clone(),
            settings: self.settings.clone(),
            events: tx,
            delivered: self.delivered.clone(),
            up: self.consumer_up.clone(),
            stop: self.stop.clone(),
        };
        let task = tokio::spawn(consumer.run());
        *self.consumer_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    fn receive(&self, local: &mut Local) {
        let Some(events) = local.events.as_mut() else {
            return;
        };
        let mut incoming = Vec::new();
        while let Ok(event) = events.try_recv() {
            incoming.push(event);
        }
        for event in incoming {
            match event {
                Event::Delivery(delivery) => {
                    let delivery = *delivery;
                    let message = mapping::message(&delivery.properties, delivery.data);
                    local.held.push(message, delivery.acker);
                }
                Event::Reset => local.held.clear(),
                Event::GaveUp(reason) => local.gave_up = Some(reason),
            }
        }
    }
}

#[async_trait]
impl Store for AmqpStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        "amqp"
    }

    fn connected(&self) -> bool {
        let consuming = self.consuming.load(Ordering::Relaxed);
        self.publisher_up.load(Ordering::Relaxed)
            || (consuming && self.consumer_up.load(Ordering::Relaxed))
    }

    async fn append(&self, message: Arc<Message>) -> Result<(), StoreError> {
        if self.stop.is_cancelled() {
            return Err(StoreError::Closed {
                store: self.name.clone(),
            });
        }
        let _permit = self
            .window
            .acquire()
            .await
            .map_err(|_| StoreError::Closed {
                store: self.name.clone(),
            })?;
        let channel = self.publish_channel().await?;
        let published = self.publish(&channel, &message).await;
        let confirm = match published {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };
        self.confirmed(confirm).await
    }

    async fn append_all(&self, messages: Vec<Arc<Message>>) -> Result<(), StoreError> {
        // Published one after another on one channel (so in order), and
        // confirmed a window at a time rather than one round trip each.
        for chunk in messages.chunks(CONFIRM_WINDOW) {
            if self.stop.is_cancelled() {
                return Err(StoreError::Closed {
                    store: self.name.clone(),
                });
            }
            let _permits = self
                .window
                .acquire_many(u32::try_from(chunk.len()).unwrap_or(u32::MAX))
                .await
                .map_err(|_| StoreError::Closed {
                    store: self.name.clone(),
                })?;
            let channel = self.publish_channel().await?;
            let mut confirms = Vec::with_capacity(chunk.len());
            for message in chunk {
                match self.publish(&channel, message).await {
                    Ok(confirm) => confirms.push(confirm),
                    Err(e) => return self.confirmed(Err(e)).await,
                }
            }
            for confirm in confirms {
                self.confirmed(confirm.await).await?;
            }
        }
        Ok(())
    }

    async fn browse(
        &self,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<Vec<Browsed>, StoreError> {
        if self.consuming.load(Ordering::Acquire) {
            // Its processor holds the head: what it holds is all there is to see here.
            return super::browse_by_peek(self, after, limit).await;
        }
        browse::browse(self, after, limit).await
    }

    fn browse_page(&self) -> usize {
        BROWSE_PAGE
    }

    fn stable_positions(&self) -> bool {
        self.consuming.load(Ordering::Acquire)
    }

    async fn remove(&self, positions: &[Position]) -> Result<Removed, StoreError> {
        if self.consuming.load(Ordering::Acquire) {
            return Err(StoreError::Unsupported {
                store: self.name.clone(),
                reason: "the amqp backend cannot remove messages from a store a processor \
                         here consumes: they are the processor's to deliver"
                    .into(),
            });
        }
        browse::remove(self, positions).await
    }

    async fn lease(&self, max: usize) -> Result<Vec<Leased>, StoreError> {
        self.start_consuming();
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        self.receive(&mut local);
        if local.held.nothing_ready()
            && let Some(reason) = &local.gave_up
        {
            return Err(error(&self.name, "consuming", reason));
        }
        Ok(local.held.lease(max))
    }

    async fn ack(&self, receipt: Receipt) -> Result<(), StoreError> {
        let held = {
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            local.held.take(&[receipt]).pop()
        };
        // Not held any more: the channel dropped and the broker will deliver it again.
        let Some(held) = held else {
            return Ok(());
        };
        held.ack
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| error(&self.name, "acking", e))
    }

    async fn ack_many(&self, receipts: Vec<Receipt>) -> Result<(), StoreError> {
        let (front, singles) = {
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            match local.held.take_front(&receipts) {
                // Everything delivered before the front of the leased ones is
                // acked already, so one `multiple` ack covers exactly these.
                Some(mut front) => (front.pop(), Vec::new()),
                None => (None, local.held.take(&receipts)),
            }
        };
        if let Some(last) = front {
            let options = BasicAckOptions { multiple: true };
            last.ack
                .ack(options)
                .await
                .map_err(|e| error(&self.name, "acking", e))?;
        }
        for held in singles {
            held.ack
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| error(&self.name, "acking", e))?;
        }
        Ok(())
    }

    async fn release(&self, receipt: Receipt) -> Result<(), StoreError> {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local.held.release(receipt);
        Ok(())
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        let failed_at = *self
            .connect_failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !self.publisher_up.load(Ordering::Relaxed)
            && failed_at.is_some_and(|t| t.elapsed() < DEPTH_QUIET)
        {
            return Err(error(
                &self.name,
                "reading the queue depth",
                "the broker is unreachable",
            ));
        }
        let channel = self.publish_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(
                self.settings.queue.as_str().into(),
                options,
                FieldTable::default(),
            )
            .await;
        let queue = match queue {
            Ok(queue) => queue,
            Err(e) => {
                self.drop_publisher().await;
                return Err(error(&self.name, "reading the queue depth", e));
            }
        };
        let held = {
            let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            self.receive(&mut local);
            local.held.len() as u64
        };
        Ok(u64::from(queue.message_count()) + held)
    }

    async fn peek(&self, limit: usize) -> Result<Vec<Message>, StoreError> {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        self.receive(&mut local);
        Ok(local.held.messages().take(limit).cloned().collect())
    }

    async fn appended(&self) {
        self.delivered.notified().await;
    }

    fn reconfigure(&self, settings: &crate::config::StoreSettings) -> bool {
        // Every amqp setting is in the connection or the queue: a change reopens.
        settings.backend == crate::config::BackendSettings::Amqp(self.settings.clone())
    }

    async fn close(&self) {
        self.stop.cancel();
        let consumer = self
            .consumer_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = consumer {
            // It closes its connection, which returns unacked deliveries to the queue.
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, task).await;
        }
        *self
            .publish_channel
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        let publisher = self.publisher.lock().await.take();
        if let Some((connection, _)) = publisher {
            let _ = connection.close(200, "wharf stopping".into()).await;
        }
    }
}
