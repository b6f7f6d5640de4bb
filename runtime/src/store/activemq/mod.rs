//! The activemq store: an ActiveMQ Classic queue over STOMP 1.2 (the
//! guide's own broker).
//!
//! # Writes
//!
//! [`Store::append`] SENDs the message (see [`mapping`]) with
//! `persistent:true` and a `receipt` header, and returns after the broker's
//! RECEIPT: ActiveMQ sends it once the message is in its persistent store,
//! and only then may a 202 go out. Waiting for a receipt holds nothing, so
//! concurrent requests keep up to [`RECEIPT_WINDOW`] SENDs in flight on one
//! connection, written out together. A write that fails (broker down,
//! connection lost, an ERROR frame) drops the publishing connection; the next
//! write opens a new one, and the store's `retry` and `secondary` decide what
//! the request sees meanwhile.
//!
//! # Consuming, and why order holds
//!
//! Nothing consumes until the store's processor leases for the first time (a
//! dead-letter store is never consumed). Then a task keeps a subscription
//! open with `ack:client-individual`, `activemq.prefetchSize` = `prefetch`
//! and `activemq.exclusive:true`: among several Wharf instances one consumes
//! and the others stand by, and the broker hands the queue to a standby when
//! the active one goes away (`consume.rs`; reconnects per `reconnect`).
//!
//! Messages wait in a local queue until leased. A message is acked (an ACK of
//! its own `ack` id) only when its fate is final: forwarded and handled,
//! copied to the dead-letter store, or dropped. Wharf never sends NACK:
//! ActiveMQ takes a STOMP NACK as a poison ack and moves the message to its
//! own DLQ at once. A message under retry, or a deactivated processor's
//! head, is simply not acked; [`Store::release`] (deactivation, shutdown)
//! puts leased messages back at the front of the local queue, still unacked
//! at the broker, so nothing can overtake them. When the connection drops,
//! ActiveMQ gives every unacked message back to the queue at its place, and
//! the local queue is emptied; the next consumer (this instance after
//! reconnecting, or a standby) gets them first, in order, marked
//! `redelivered` (a message whose response was being handled may be
//! delivered twice: at-least-once).
//!
//! # Depth and peek
//!
//! Both browse the queue: a `browser:true` subscription, on a connection of
//! its own, that lists the queue in order without consuming it or changing
//! a delivery count, and ends with a `browser:end` frame. Peek stops after
//! `limit` messages. Depth counts the whole queue (messages held unacked by
//! any consumer included), so it costs a transfer of the queue, bodies and
//! all; it is kept for [`DEPTH_FRESH`] so that `/metrics` and the admin API
//! do not browse more than once a second. (ActiveMQ's statistics plugin
//! would answer in one frame, but its reply is a MapMessage, which Debian's
//! broker cannot turn into STOMP without the XStream/Jettison jars it does
//! not ship.) A browser sees the first `maxBrowsePageSize` messages of a
//! queue (400 by ActiveMQ's default policy), so depth counts at most that
//! many. The dead-letter API browses, replays and purges a store no
//! processor here consumes (`browse.rs`).
//!
//! # TLS
//!
//! A `stomp+ssl://` URL connects through rustls, checking the broker's
//! certificate against the system's CAs plus `tls.ca_file`, and sends a
//! client certificate if `tls.cert_file` and `tls.key_file` are set; the
//! files are read when the store opens.
//!
//! Why a codec of Wharf's own (`frame`): of the STOMP crates on crates.io,
//! `tokio-stomp-2` is built on nom 4 and does not claim STOMP 1.2 header
//! escaping, and `iridium-stomp` says it is in early development and
//! reconnects and resubscribes by itself, which would fight the store's own
//! reconnect and ack rules. The frame format is small; `frame.rs` states it.

mod browse;
pub mod config;
mod connection;
mod consume;
pub mod frame;
pub mod mapping;
mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::held::Holding;
use super::{Leased, Message, Receipt, Store, StoreError};
use crate::config::TlsFiles;
use config::{ActiveMqSettings, url_problem};
use connection::{Connection, Target};
use consume::Consumer;
use frame::Frame;

/// SENDs awaiting their receipt, at most.
pub const RECEIPT_WINDOW: usize = 256;
/// How long a depth answer is reused.
pub const DEPTH_FRESH: Duration = Duration::from_secs(1);
/// After a failed connect, depth and peek answer "unreachable" for this long
/// without trying again, so `/metrics` stays quick while the broker is away.
const DEPTH_QUIET: Duration = Duration::from_secs(1);
/// A browse that takes longer than this is abandoned.
const BROWSE_LIMIT: Duration = Duration::from_secs(30);
/// The consumer's subscription id.
const SUBSCRIPTION: &str = "wharf";

/// Whether the TLS files of store `store` can be read and hold what they should.
pub fn check_tls(store: &str, tls: &TlsFiles) -> Result<(), StoreError> {
    if *tls == TlsFiles::default() {
        return Ok(());
    }
    tls::connector(store, tls, "localhost").map(|_| ())
}

enum Event {
    Delivery(Frame, Arc<Connection>),
    /// The consumer's connection is gone: held messages are void (the broker gave them back).
    Reset,
    /// Reconnecting gave up (the `reconnect.count` ran out).
    GaveUp(String),
}

/// How to ack a held message: the `ack` header of its MESSAGE frame, on the
/// connection it came on (an ACK only means something there).
struct AckId {
    id: String,
    connection: Arc<Connection>,
}

#[derive(Default)]
struct Local {
    held: Holding<AckId>,
    events: Option<mpsc::UnboundedReceiver<Event>>,
    gave_up: Option<String>,
}

/// A connection opened on first use and again after it broke.
struct Lazy {
    what: &'static str,
    slot: tokio::sync::Mutex<Option<Arc<Connection>>>,
    cached: Mutex<Option<Arc<Connection>>>,
    up: AtomicBool,
    failed_at: Mutex<Option<Instant>>,
}

impl Lazy {
    fn new(what: &'static str) -> Lazy {
        Lazy {
            what,
            slot: tokio::sync::Mutex::new(None),
            cached: Mutex::new(None),
            up: AtomicBool::new(false),
            failed_at: Mutex::new(None),
        }
    }

    async fn get(&self, store: &str, target: &Target) -> Result<Arc<Connection>, StoreError> {
        if let Some(c) = &*lock(&self.cached)
            && c.alive()
        {
            return Ok(c.clone());
        }
        let mut slot = self.slot.lock().await;
        if let Some(c) = &*slot
            && c.alive()
        {
            return Ok(c.clone());
        }
        match Connection::open(store, target).await {
            Ok(c) => {
                *slot = Some(c.clone());
                *lock(&self.cached) = Some(c.clone());
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(store, server = %c.server, "connected to the broker ({})", self.what);
                }
                Ok(c)
            }
            Err(e) => {
                *slot = None;
                *lock(&self.cached) = None;
                *lock(&self.failed_at) = Some(Instant::now());
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(store, error = %e, "broker connection lost ({})", self.what);
                }
                Err(e)
            }
        }
    }

    /// Whether it failed to connect a moment ago (and is not up since).
    fn quiet(&self) -> bool {
        !self.up.load(Ordering::Relaxed)
            && lock(&self.failed_at).is_some_and(|t| t.elapsed() < DEPTH_QUIET)
    }

    fn alive(&self) -> bool {
        self.up.load(Ordering::Relaxed) && lock(&self.cached).as_ref().is_some_and(|c| c.alive())
    }

    async fn close(&self) {
        *lock(&self.cached) = None;
        let c = self.slot.lock().await.take();
        if let Some(c) = c {
            c.disconnect().await;
        }
        self.up.store(false, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A store on an ActiveMQ queue (see the module doc).
pub struct ActiveMqStore {
    name: String,
    settings: ActiveMqSettings,
    target: Target,
    destination: String,
    publisher: Lazy,
    browser: Lazy,
    window: Semaphore,
    consumer_up: Arc<AtomicBool>,
    consuming: AtomicBool,
    consumer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    local: Mutex<Local>,
    delivered: Arc<Notify>,
    stop: CancellationToken,
    /// The last browse count: when, messages, body bytes.
    counted: tokio::sync::Mutex<Option<(Instant, u64, u64)>>,
    /// Held by a remove or move, so that two in one instance take turns.
    removing: tokio::sync::Mutex<()>,
}

fn error(store: &str, doing: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Transient {
        store: store.to_owned(),
        reason: format!("{doing}: {why}"),
    }
}

/// Where `url` points, with its credentials (percent-decoded).
fn target(name: &str, url: &str, tls: &TlsFiles) -> Result<Target, StoreError> {
    let bad = |why: String| StoreError::Permanent {
        store: name.to_owned(),
        reason: why,
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(format!("the url is not a URL ({e})")))?;
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let decode = |s: &str| {
        percent_decode(s).map_err(|_| bad("the url's credentials are not UTF-8".to_owned()))
    };
    let login = (!parsed.username().is_empty())
        .then(|| decode(parsed.username()))
        .transpose()?;
    let passcode = parsed.password().map(decode).transpose()?;
    let secure = parsed.scheme() != "stomp";
    let port = parsed.port().unwrap_or(if secure { 61614 } else { 61613 });
    let tls = if secure {
        Some(tls::connector(name, tls, &host)?)
    } else {
        None
    };
    Ok(Target {
        host,
        port,
        login,
        passcode,
        tls,
    })
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
}

impl ActiveMqStore {
    /// A store on `settings.queue`; connects on first use.
    pub fn open(name: &str, settings: &ActiveMqSettings) -> Result<ActiveMqStore, StoreError> {
        let url = settings.url.read(name)?;
        if let Some((field, why)) = url_problem(&url, settings.tls != TlsFiles::default()) {
            return Err(StoreError::Permanent {
                store: name.to_owned(),
                reason: match field {
                    "url" => format!("the url {why}"),
                    _ => format!("{field}: {why}"),
                },
            });
        }
        Ok(ActiveMqStore {
            name: name.to_owned(),
            target: target(name, &url, &settings.tls)?,
            destination: format!("/queue/{}", settings.queue),
            settings: settings.clone(),
            publisher: Lazy::new("sending"),
            browser: Lazy::new("browsing"),
            window: Semaphore::new(RECEIPT_WINDOW),
            consumer_up: Arc::new(AtomicBool::new(false)),
            consuming: AtomicBool::new(false),
            consumer_task: Mutex::new(None),
            local: Mutex::new(Local::default()),
            delivered: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            counted: tokio::sync::Mutex::new(None),
            removing: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether a processor here consumes the queue.
    fn consuming(&self) -> bool {
        self.consuming.load(Ordering::Acquire)
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            store: self.name.clone(),
        }
    }

    fn start_consuming(&self) {
        if self.consuming.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.local).events = Some(rx);
        let consumer = Consumer {
            store: self.name.clone(),
            target: self.target.clone(),
            destination: self.destination.clone(),
            settings: self.settings.clone(),
            events: tx,
            delivered: self.delivered.clone(),
            up: self.consumer_up.clone(),
            stop: self.stop.clone(),
        };
        *lock(&self.consumer_task) = Some(tokio::spawn(consumer.run()));
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
                Event::Delivery(frame, connection) => {
                    let Some(ack) = frame.get("ack").map(str::to_owned) else {
                        // Not ours to ack (ActiveMQ always sets it for client-individual).
                        tracing::warn!(store = %self.name, "a MESSAGE without an ack header; ignoring it");
                        continue;
                    };
                    let ack = AckId {
                        id: ack,
                        connection,
                    };
                    local.held.push(mapping::message(frame), ack);
                }
                Event::Reset => local.held.clear(),
                Event::GaveUp(reason) => local.gave_up = Some(reason),
            }
        }
    }

    fn send_ack(&self, ack: &AckId) {
        // On a connection that is gone the ack means nothing: the broker
        // gave the message back and delivers it again.
        if ack.connection.alive() {
            let frame = Frame::new("ACK").header("id", ack.id.clone());
            if let Err(e) = ack.connection.send(frame) {
                tracing::debug!(store = %self.name, error = %e, "ack not sent; the message comes again");
            }
        }
    }

    /// Browses the queue from its head: up to `limit` messages (all with
    /// `None`), or only their count and bytes when `keep` is false.
    async fn read_queue(
        &self,
        limit: Option<usize>,
        keep: bool,
    ) -> Result<(Vec<Message>, u64, u64), StoreError> {
        if self.browser.quiet() {
            return Err(error(
                &self.name,
                "browsing the queue",
                "the broker is unreachable",
            ));
        }
        let connection = self.browser.get(&self.name, &self.target).await?;
        let id = connection.next_id("browse-");
        let mut frames = connection.route(&id);
        let prefetch = limit.map_or(1000, |l| l.clamp(1, 1000));
        let subscribe = Frame::new("SUBSCRIBE")
            .header("id", id.clone())
            .header("destination", self.destination.clone())
            .header("browser", "true")
            .header("ack", "auto")
            .header("activemq.prefetchSize", prefetch.to_string());
        let browsing = async {
            connection.send(subscribe)?;
            let (mut kept, mut count, mut bytes) = (Vec::new(), 0u64, 0u64);
            while limit.is_none_or(|l| (count as usize) < l) {
                let Some(frame) = frames.recv().await else {
                    return Err(error(&self.name, "browsing the queue", connection.why()));
                };
                if frame.get("browser") == Some("end") {
                    break;
                }
                count += 1;
                bytes += frame.body.len() as u64;
                if keep {
                    kept.push(mapping::message(frame));
                }
            }
            Ok((kept, count, bytes))
        };
        let result = tokio::time::timeout(BROWSE_LIMIT, browsing).await;
        connection.unroute(&id);
        let _ = connection.send(Frame::new("UNSUBSCRIBE").header("id", id));
        match result {
            Ok(r) => r,
            Err(_) => Err(error(
                &self.name,
                "browsing the queue",
                format!("not done within {BROWSE_LIMIT:?}"),
            )),
        }
    }

    /// Messages and body bytes on the queue, from a browse at most [`DEPTH_FRESH`] old.
    async fn count(&self) -> Result<(u64, u64), StoreError> {
        let mut counted = self.counted.lock().await;
        if let Some((at, messages, bytes)) = *counted
            && at.elapsed() < DEPTH_FRESH
        {
            return Ok((messages, bytes));
        }
        let (_, messages, bytes) = self.read_queue(None, false).await?;
        *counted = Some((Instant::now(), messages, bytes));
        Ok((messages, bytes))
    }
}

#[async_trait]
impl Store for ActiveMqStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        "activemq"
    }

    fn connected(&self) -> bool {
        let consuming = self.consuming.load(Ordering::Relaxed);
        self.publisher.alive()
            || self.browser.alive()
            || (consuming && self.consumer_up.load(Ordering::Relaxed))
    }

    async fn append(&self, message: Arc<Message>) -> Result<(), StoreError> {
        if self.stop.is_cancelled() {
            return Err(self.closed());
        }
        let _permit = self.window.acquire().await.map_err(|_| self.closed())?;
        let connection = self.publisher.get(&self.name, &self.target).await?;
        connection
            .send_receipted(mapping::send_frame(&self.destination, &message))
            .await
            .map_err(|e| match e {
                StoreError::Transient { reason, .. } => error(&self.name, "sending", reason),
                other => other,
            })
    }

    async fn lease(&self, max: usize) -> Result<Vec<Leased>, StoreError> {
        if self.stop.is_cancelled() {
            return Err(self.closed());
        }
        self.start_consuming();
        let mut local = lock(&self.local);
        self.receive(&mut local);
        if local.held.nothing_ready()
            && let Some(reason) = &local.gave_up
        {
            return Err(error(&self.name, "consuming", reason));
        }
        Ok(local.held.lease(max))
    }

    async fn ack(&self, receipt: Receipt) -> Result<(), StoreError> {
        self.ack_many(vec![receipt]).await
    }

    async fn ack_many(&self, receipts: Vec<Receipt>) -> Result<(), StoreError> {
        let taken = lock(&self.local).held.take(&receipts);
        for held in &taken {
            self.send_ack(&held.ack);
        }
        Ok(())
    }

    async fn release(&self, receipt: Receipt) -> Result<(), StoreError> {
        lock(&self.local).held.release(receipt);
        Ok(())
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        self.count().await.map(|(messages, _)| messages)
    }

    async fn body_bytes(&self) -> Result<Option<u64>, StoreError> {
        self.count().await.map(|(_, bytes)| Some(bytes))
    }

    async fn peek(&self, limit: usize) -> Result<Vec<Message>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read_queue(Some(limit), true)
            .await
            .map(|(kept, _, _)| kept)
    }

    async fn browse(
        &self,
        after: Option<&super::Position>,
        limit: usize,
    ) -> Result<Vec<super::Browsed>, StoreError> {
        browse::browse(self, after, limit).await
    }

    fn browse_page(&self) -> usize {
        browse::BATCH
    }

    fn stable_positions(&self) -> bool {
        false
    }

    async fn remove(&self, positions: &[super::Position]) -> Result<super::Removed, StoreError> {
        browse::remove(self, positions).await
    }

    async fn move_into(
        &self,
        batch: Vec<(super::Position, Arc<Message>)>,
        target: &dyn Store,
    ) -> Result<super::Removed, StoreError> {
        browse::move_into(self, batch, target).await
    }

    async fn appended(&self) {
        self.delivered.notified().await;
    }

    fn reconfigure(&self, settings: &crate::config::StoreSettings) -> bool {
        // Every activemq setting is in the connection or the subscription: a change reopens.
        settings.backend == crate::config::BackendSettings::ActiveMq(self.settings.clone())
    }

    async fn close(&self) {
        self.stop.cancel();
        let consumer = lock(&self.consumer_task).take();
        if let Some(task) = consumer {
            // It disconnects, which gives unacked messages back to the queue.
            let _ = tokio::time::timeout(connection::CONNECT_TIMEOUT, task).await;
        }
        // (The consumer's DISCONNECT went after its last ACKs, on the same
        // connection, so the broker has processed them by its receipt.)
        self.publisher.close().await;
        self.browser.close().await;
        lock(&self.local).held.clear();
    }
}
