//! Message stores: where a message lives between its 202 and its delivery.
//!
//! # The `Store` seam
//!
//! Every backend implements [`Store`]; the ingress and the processors only see
//! the trait. A store is a FIFO of [`Message`]s with one consumer:
//!
//! - [`Store::append`] returns only once the message is durable. That is what
//!   makes a 202 mean "not lost".
//! - [`Store::lease`] hands the consumer the next messages in store order. A
//!   leased message stays in the store: it is invisible to further leases but
//!   is still counted and still peeked.
//! - [`Store::ack`] removes a leased message. The processor calls it only once
//!   the message's fate is final (forwarded and handled, copied to the
//!   dead-letter store, or dropped by policy).
//! - [`Store::release`] gives a leased message, and every message leased after
//!   it, back to the head; the next lease starts there again. Deactivation and
//!   shutdown use it, so a message that was not delivered keeps its place.
//!
//! Moving a message to another store (dead-lettering) is
//! [`chain::StoreChain::move_from`]: append to the target, then ack in the
//! source, so the copy is durable before the original goes. A crash between
//! the two leaves the message in both; at-least-once allows that, losing it
//! would not.
//!
//! # Backends
//!
//! - [`embedded`]: SQLite files under `data_dir`, group-committed; its module
//!   doc states the record format, what is fsynced when and crash recovery.
//! - [`amqp`]: a RabbitMQ queue through lapin, publisher-confirmed; its
//!   module doc states how order is kept across retries, reconnects and
//!   deactivation.
//! - [`activemq`]: an ActiveMQ Classic queue over STOMP 1.2 (a codec of
//!   Wharf's own), receipted; its module doc states the same for it.
//!
//! [`chain::StoreChain`] adds the per-store write retry and the fail-over to a
//! `secondary` store on top of any backend.

pub mod activemq;
pub mod amqp;
pub mod broker;
pub mod chain;
pub mod embedded;
mod held;
mod message;
pub mod trail;

use std::sync::Arc;

use async_trait::async_trait;

use std::path::Path;

use crate::config::{BackendTable, Problems, StoreSettings, WriteRetry};

pub use message::{Message, MessageId};

/// Why a store refused or failed an operation. The variant is the kind:
/// whether trying the same operation again may succeed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store holds `max_messages` already; acks may make room.
    #[error("store {store:?} is full ({max} messages)")]
    Full { store: String, max: u64 },
    /// A failure a later try may not meet: connection lost, broker down or
    /// restarting, a timeout, a busy or full disk.
    #[error("store {store:?}: {reason}")]
    Transient { store: String, reason: String },
    /// A failure no retry can fix: an untrusted certificate, a missing
    /// environment variable, a file written by another version.
    #[error("store {store:?}: {reason}")]
    Permanent { store: String, reason: String },
    /// The store has been closed (shutdown, or removed from the pipeline).
    #[error("store {store:?} is closed")]
    Closed { store: String },
    /// What this backend does not do, or not for this store (a store its
    /// processor consumes, a queue too deep to hold): asking again is no use.
    #[error("store {store:?}: {reason}")]
    Unsupported { store: String, reason: String },
    /// A cursor (position) this store did not give out.
    #[error("store {store:?}: {position:?} is not a position in this store")]
    BadPosition { store: String, position: String },
}

impl StoreError {
    /// Whether the same operation, tried again later, may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Transient { .. } | StoreError::Full { .. })
    }
}

/// Identifies a leased message to the store that leased it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Receipt(pub u64);

/// A message handed to the consumer, with the receipt to ack or release it.
#[derive(Debug, Clone)]
pub struct Leased {
    pub receipt: Receipt,
    pub message: Message,
}

/// Where a browsed message sits in its store: the backend's own handle
/// (the embedded store's `seq`), opaque to everyone else.
pub type Position = String;

/// A message seen by [`Store::browse`], with its position.
#[derive(Debug, Clone)]
pub struct Browsed {
    pub position: Position,
    pub message: Message,
    /// Whether a processor holds it (leased, in flight) as it was seen.
    pub leased: bool,
}

/// What [`Store::remove`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Messages removed for good.
    pub removed: u64,
    /// Messages left because a processor holds them (leased, in flight).
    pub in_flight: u64,
}

/// A durable FIFO of messages with one consumer (see the module doc).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The store's configured name.
    fn name(&self) -> &str;

    /// `"embedded"`, `"amqp"` or `"activemq"`, for the admin API.
    fn backend(&self) -> &'static str;

    /// Whether the backend is reachable (always true for a local file).
    fn connected(&self) -> bool {
        true
    }

    /// Stores `message`; returns once it is durable. (Shared, so that a retry
    /// or a fail-over does not copy the body.)
    async fn append(&self, message: Arc<Message>) -> Result<(), StoreError>;

    /// Up to `max` messages that follow the last leased one, oldest first.
    async fn lease(&self, max: usize) -> Result<Vec<Leased>, StoreError>;

    /// Removes a leased message for good.
    async fn ack(&self, receipt: Receipt) -> Result<(), StoreError>;

    /// Removes several leased messages for good (one round trip where the backend allows).
    async fn ack_many(&self, receipts: Vec<Receipt>) -> Result<(), StoreError> {
        for receipt in receipts {
            self.ack(receipt).await?;
        }
        Ok(())
    }

    /// Puts `receipt` and every message leased after it back at the head, in order.
    async fn release(&self, receipt: Receipt) -> Result<(), StoreError>;

    /// Messages in the store, leased ones included.
    async fn depth(&self) -> Result<u64, StoreError>;

    /// The bodies' bytes of the messages in the store, where the backend
    /// can tell (a tenant's stored quota counts them); may scan the store.
    async fn body_bytes(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Up to `limit` messages from the head, oldest first, without leasing them.
    async fn peek(&self, limit: usize) -> Result<Vec<Message>, StoreError>;

    /// Up to `limit` messages after `after` (from the head when `None`), in
    /// store order, leased ones included, with their positions; nothing is
    /// leased or moved. The dead-letter API pages through a store with it.
    ///
    /// The default is [`browse_by_peek`].
    async fn browse(
        &self,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<Vec<Browsed>, StoreError> {
        browse_by_peek(self, after, limit).await
    }

    /// How many messages one [`Store::browse`] may be asked for: where each
    /// page re-reads the store from its head, larger pages cost less.
    fn browse_page(&self) -> usize {
        crate::dead_letters::BATCH
    }

    /// Whether a position stays valid after [`Store::remove`] removes the
    /// messages before it. Where it does not (positions count from the
    /// head), a job that removes starts again from the head.
    fn stable_positions(&self) -> bool {
        true
    }

    /// Removes the messages at `positions` for good (purge, or the second
    /// half of a replay's move) and returns once that is durable. A message a
    /// processor has leased stays: it is in flight, and counted as such.
    async fn remove(&self, _positions: &[Position]) -> Result<Removed, StoreError> {
        Err(self.cannot("remove messages"))
    }

    /// Appends `messages` in their order; returns once all are durable (a
    /// replay's first half). The default appends one at a time.
    async fn append_all(&self, messages: Vec<Arc<Message>>) -> Result<(), StoreError> {
        for message in messages {
            self.append(message).await?;
        }
        Ok(())
    }

    /// Moves the messages at the positions of `batch` into `target`, each
    /// as its copy in `batch`: every copy is durable in `target` before its
    /// message leaves this store (a replay). The default appends all the
    /// copies, then removes; a backend that can hold messages first moves
    /// only those it holds, so one it cannot reach is not copied.
    async fn move_into(
        &self,
        batch: Vec<(Position, Arc<Message>)>,
        target: &dyn Store,
    ) -> Result<Removed, StoreError> {
        let (positions, copies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        target.append_all(copies).await?;
        self.remove(&positions).await
    }

    /// The refusal of an operation this backend does not offer.
    fn cannot(&self, what: &str) -> StoreError {
        StoreError::Unsupported {
            store: self.name().to_owned(),
            reason: format!("the {} backend cannot {what} yet", self.backend()),
        }
    }

    /// Resolves when messages may have been appended since the last call.
    async fn appended(&self);

    /// Flushes pending work and stops; later calls fail with [`StoreError::Closed`].
    async fn close(&self);

    /// Takes changed `settings` of this store without reopening it, if the
    /// backend can; false when the store must be reopened for them.
    fn reconfigure(&self, _settings: &StoreSettings) -> bool {
        false
    }
}

/// [`Store::browse`] through [`Store::peek`]: positions are ordinals from
/// the head, each page re-reads the ones before it, nothing shows as leased.
pub async fn browse_by_peek<S: Store + ?Sized>(
    store: &S,
    after: Option<&Position>,
    limit: usize,
) -> Result<Vec<Browsed>, StoreError> {
    let skip = match after {
        None => 0,
        Some(p) => {
            p.parse::<usize>()
                .map_err(|_| not_a_position(store.name(), p))?
                + 1
        }
    };
    let peeked = store.peek(skip.saturating_add(limit)).await?;
    Ok(peeked
        .into_iter()
        .enumerate()
        .skip(skip)
        .map(|(n, message)| Browsed {
            position: n.to_string(),
            message,
            leased: false,
        })
        .collect())
}

/// The position of the message `id`, `ordinal`-th from the head, where a
/// backend counts positions from the head (the brokers): `"{ordinal}/{id}"`.
/// Removing only moves messages towards the head, so the message of a
/// position is at its ordinal or before it.
pub fn ordinal_position(ordinal: usize, id: &str) -> Position {
    format!("{ordinal}/{id}")
}

/// A page after a cursor, built from a read of the store from its head,
/// where positions are [`ordinal_position`]s: it collects once the cursor's
/// message has passed, or its ordinal (the message is gone).
pub struct PageAfter<'c> {
    after: Option<(usize, &'c str)>,
    collecting: bool,
    limit: usize,
    page: Vec<Browsed>,
}

impl<'c> PageAfter<'c> {
    /// Up to `limit` messages after `after` (from the head when `None`).
    pub fn new(
        store: &str,
        after: Option<&'c Position>,
        limit: usize,
    ) -> Result<PageAfter<'c>, StoreError> {
        let after = after.map(|p| read_ordinal_position(store, p)).transpose()?;
        Ok(PageAfter {
            after,
            collecting: after.is_none(),
            limit,
            page: Vec::new(),
        })
    }

    /// How many messages from the head a read must reach to fill the page.
    pub fn reach(&self) -> usize {
        self.after
            .map_or(0, |(n, _)| n + 1)
            .saturating_add(self.limit)
    }

    /// Takes the message read `ordinal`-th from the head.
    pub fn offer(&mut self, ordinal: usize, message: Message) {
        if let Some((n, id)) = self.after
            && !self.collecting
        {
            if message.id == id {
                self.collecting = true;
                return;
            }
            self.collecting = ordinal >= n;
        }
        if self.collecting && self.page.len() < self.limit {
            self.page.push(Browsed {
                position: ordinal_position(ordinal, &message.id),
                message,
                leased: false,
            });
        }
    }

    pub fn into_page(self) -> Vec<Browsed> {
        self.page
    }
}

/// The ids the positions name (how many times each: a message delivered
/// twice may be in the queue twice), and how deep the deepest is.
pub struct Wanted {
    ids: std::collections::BTreeMap<String, usize>,
    /// The deepest ordinal among them.
    pub deepest: usize,
}

impl Wanted {
    /// The messages at [`ordinal_position`]s `positions`.
    pub fn at(store: &str, positions: &[Position]) -> Result<Wanted, StoreError> {
        let mut ids = std::collections::BTreeMap::new();
        let mut deepest = 0;
        for p in positions {
            let (n, id) = read_ordinal_position(store, p)?;
            deepest = deepest.max(n);
            *ids.entry(id.to_owned()).or_insert(0) += 1;
        }
        Ok(Wanted { ids, deepest })
    }

    /// How many messages are wanted still.
    pub fn len(&self) -> usize {
        self.ids.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `id` is wanted (once more); it then is wanted once less.
    pub fn take(&mut self, id: &str) -> bool {
        match self.ids.get_mut(id) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.ids.remove(id);
                }
                true
            }
            None => false,
        }
    }
}

/// The ordinal and id of an [`ordinal_position`].
pub fn read_ordinal_position<'p>(
    store: &str,
    position: &'p str,
) -> Result<(usize, &'p str), StoreError> {
    position
        .split_once('/')
        .and_then(|(n, id)| Some((n.parse().ok()?, id)))
        .filter(|(_, id)| !id.is_empty())
        .ok_or_else(|| not_a_position(store, position))
}

/// The refusal of a cursor this store did not give out.
pub fn not_a_position(store: &str, position: &str) -> StoreError {
    StoreError::BadPosition {
        store: store.to_owned(),
        position: position.to_owned(),
    }
}

/// Stores by name.
pub type Stores = std::collections::BTreeMap<String, Arc<dyn Store>>;

// Each backend is a folder (`store/<backend>/`) with its `Store` and a
// `config.rs` (its keys, their serde shape, their pure checks, its settings
// type). The matches below are the one place backends are listed: adding
// one adds its folder, a variant to `Backend` and `BackendSettings`, and
// an arm to each match here.

/// `backend = "..."` of a store: which implementation keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite under `data_dir`, group-committed and fsynced.
    #[default]
    Embedded,
    /// RabbitMQ through lapin: a durable queue, publisher confirms, manual acks.
    Amqp,
    /// ActiveMQ Classic over STOMP 1.2: receipted persistent sends, individual acks.
    #[serde(rename = "activemq")]
    ActiveMq,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Embedded, Backend::Amqp, Backend::ActiveMq];

    /// The name `backend = "..."` takes.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Amqp => "amqp",
            Backend::ActiveMq => "activemq",
        }
    }

    /// The store keys only this backend takes.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Backend::Embedded => embedded::config::KEYS,
            Backend::Amqp => amqp::config::KEYS,
            Backend::ActiveMq => activemq::config::KEYS,
        }
    }

    /// What to say of another backend's `key` on a store of this backend.
    pub fn instead_of(self, key: &str) -> Option<&'static str> {
        match self {
            Backend::Embedded => None,
            Backend::Amqp => amqp::config::instead_of(key),
            Backend::ActiveMq => activemq::config::instead_of(key),
        }
    }

    /// Checks this backend's own keys of store `key` (named `name`), given
    /// as written; relative file paths are resolved against `base`.
    pub fn validate(
        self,
        p: &mut Problems<'_>,
        key: &str,
        name: &str,
        table: &BackendTable,
        base: &Path,
    ) -> BackendSettings {
        match self {
            Backend::Embedded => {
                BackendSettings::Embedded(embedded::config::validate(p, key, table))
            }
            Backend::Amqp => {
                BackendSettings::Amqp(amqp::config::validate(p, key, name, table, base))
            }
            Backend::ActiveMq => {
                BackendSettings::ActiveMq(activemq::config::validate(p, key, name, table, base))
            }
        }
    }
}

/// A backend's own settings, checked; each backend's `config.rs` defines its type.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendSettings {
    Embedded(embedded::config::EmbeddedSettings),
    Amqp(amqp::config::AmqpSettings),
    ActiveMq(activemq::config::ActiveMqSettings),
}

impl BackendSettings {
    /// Which backend.
    pub fn kind(&self) -> Backend {
        match self {
            BackendSettings::Embedded(_) => Backend::Embedded,
            BackendSettings::Amqp(_) => Backend::Amqp,
            BackendSettings::ActiveMq(_) => Backend::ActiveMq,
        }
    }

    /// Names a store of tenant `tenant` takes on a shared broker: a queue
    /// the document did not name (`written` are its keys as written) is
    /// prefixed `{tenant}.`, so that two tenants' stores of one name never
    /// share a queue.
    pub fn scope_to_tenant(&mut self, tenant: &str, written: &BackendTable) {
        match self {
            BackendSettings::Embedded(_) => {}
            BackendSettings::Amqp(amqp) => {
                if !written.contains_key("queue") {
                    amqp.queue = format!("{tenant}.{}", amqp.queue);
                }
            }
            BackendSettings::ActiveMq(activemq) => {
                if !written.contains_key("queue") {
                    activemq.queue = format!("{tenant}.{}", activemq.queue);
                }
            }
        }
    }

    /// The broker queue a store keeps its messages in (`None` for a local store).
    pub fn queue(&self) -> Option<&str> {
        match self {
            BackendSettings::Embedded(_) => None,
            BackendSettings::Amqp(amqp) => Some(&amqp.queue),
            BackendSettings::ActiveMq(activemq) => Some(&activemq.queue),
        }
    }

    /// Reads and checks the files a store of these settings opens with
    /// (TLS certificates), as opening it would (`wharf check`).
    pub fn check_files(&self, store: &str) -> Result<(), StoreError> {
        match self {
            BackendSettings::Embedded(_) => Ok(()),
            BackendSettings::Amqp(amqp) => amqp::check_tls(store, &amqp.tls),
            BackendSettings::ActiveMq(activemq) => activemq::check_tls(store, &activemq.tls),
        }
    }

    /// The consumer's reconnect policy, for a backend with a broker connection.
    pub fn reconnect_mut(&mut self) -> Option<&mut WriteRetry> {
        match self {
            BackendSettings::Embedded(_) => None,
            BackendSettings::Amqp(amqp) => Some(&mut amqp.reconnect),
            BackendSettings::ActiveMq(activemq) => Some(&mut activemq.reconnect),
        }
    }
}

/// Opens the store `settings` describe.
pub fn open(
    settings: &StoreSettings,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn Store>, StoreError> {
    let name = &settings.name;
    Ok(match &settings.backend {
        BackendSettings::Embedded(embedded) => Arc::new(embedded::EmbeddedStore::open(
            data_dir,
            name,
            embedded.max_messages,
        )?),
        BackendSettings::Amqp(amqp) => Arc::new(amqp::AmqpStore::open(name, amqp)?),
        BackendSettings::ActiveMq(activemq) => {
            Arc::new(activemq::ActiveMqStore::open(name, activemq)?)
        }
    })
}
