//! Browsing, removing and moving the messages of a queue that no processor
//! here consumes (a dead-letter store), for the dead-letter API.
//!
//! A browse lists the queue through a browser subscription (see the module
//! doc of [`super`]): nothing is consumed or redelivered. A position is an
//! [`ordinal_position`](crate::store::ordinal_position) (the browse order,
//! and Wharf's id), so a page after a cursor whose message has gone starts
//! at its ordinal.
//!
//! A remove is a short-lived consumer of Wharf's own, on a connection of
//! its own: it subscribes with `ack:client-individual` and a prefetch that
//! reaches the deepest message asked for, reads from the head, ACKs the
//! messages it was asked to remove and UNSUBSCRIBEs, which gives every other
//! delivery back to the queue at its place (marked redelivered, its
//! redelivery counter one up). A move (replay) holds the messages it found
//! unacked, appends their copies to the target and only then ACKs them, so a
//! message it could not reach is not copied either.
//!
//! What ActiveMQ lets one consumer reach: it hands a consumer at most
//! `maxPageSize` (a destination policy, 200 by default) unacknowledged
//! messages at once and the next ones only much later, and a browser sees the
//! first `maxBrowsePageSize` (400). So replay and purge work through a deep
//! queue from its head, [`BATCH`] messages at a time (each batch removes the
//! head; the job then starts again from it); a message they ask for and do
//! not get within [`WAIT`] is left, and counted in flight. A subscription
//! never gets messages that another consumer holds (another instance's
//! processor, a client): a remove that gets nothing while the queue is not
//! empty answers that the queue is busy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::connection::Connection;
use super::frame::Frame;
use super::{ActiveMqStore, error, mapping};
use crate::store::{Browsed, Message, PageAfter, Position, Removed, Store, StoreError, Wanted};

/// Messages per page a replay or purge job asks for: well inside what
/// ActiveMQ hands one consumer unacknowledged by default (200).
pub const BATCH: usize = 100;

/// How long a remove waits for the next delivery before it takes what it has.
pub const WAIT: Duration = Duration::from_secs(2);

/// How long a remove waits for the broker to confirm its acks.
const ACK_LIMIT: Duration = Duration::from_secs(30);

/// Up to `limit` messages after `after`, from a browse of the queue.
pub(super) async fn browse(
    store: &ActiveMqStore,
    after: Option<&Position>,
    limit: usize,
) -> Result<Vec<Browsed>, StoreError> {
    let mut page = PageAfter::new(&store.name, after, limit)?;
    let (listed, _, _) = store.read_queue(Some(page.reach()), true).await?;
    for (ordinal, message) in listed.into_iter().enumerate() {
        page.offer(ordinal, message);
    }
    Ok(page.into_page())
}

/// Removes the messages at `positions` (see the module doc).
pub(super) async fn remove(
    store: &ActiveMqStore,
    positions: &[Position],
) -> Result<Removed, StoreError> {
    let wanted = wanted(store, positions)?;
    let asked = wanted.len() as u64;
    let _one = store.removing.lock().await;
    let held = Held::take(store, wanted).await?;
    let removed = held.ack_all().await?;
    Ok(Removed {
        removed,
        in_flight: asked - removed,
    })
}

/// Moves the messages of `batch` into `target` (see the module doc).
pub(super) async fn move_into(
    store: &ActiveMqStore,
    batch: Vec<(Position, Arc<Message>)>,
    target: &dyn Store,
) -> Result<Removed, StoreError> {
    let positions: Vec<Position> = batch.iter().map(|(p, _)| p.clone()).collect();
    let wanted = wanted(store, &positions)?;
    let asked = wanted.len() as u64;
    let _one = store.removing.lock().await;
    let held = Held::take(store, wanted).await?;
    // A copy for each message held: twice for an id held twice, none for one not reached.
    let mut holding: BTreeMap<String, usize> = held
        .acks
        .iter()
        .map(|(id, acks)| (id.clone(), acks.len()))
        .collect();
    let copies: Vec<Arc<Message>> = batch
        .into_iter()
        .filter(|(_, copy)| match holding.get_mut(&copy.id) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        })
        .map(|(_, copy)| copy)
        .collect();
    if let Err(e) = target.append_all(copies).await {
        // Not acked: the broker gives them all back.
        held.give_back().await;
        return Err(e);
    }
    let removed = held.ack_all().await?;
    Ok(Removed {
        removed,
        in_flight: asked - removed,
    })
}

fn wanted(store: &ActiveMqStore, positions: &[Position]) -> Result<Wanted, StoreError> {
    if store.consuming() {
        return Err(StoreError::Unsupported {
            store: store.name.clone(),
            reason: "the activemq backend cannot remove messages from a store a processor \
                     here consumes: they are the processor's to deliver"
                .into(),
        });
    }
    Wanted::at(&store.name, positions)
}

/// Messages taken from the queue by a subscription of Wharf's own, unacked.
struct Held {
    store: String,
    connection: Option<Arc<Connection>>,
    subscription: String,
    /// Wharf id → the `ack` headers of its deliveries.
    acks: BTreeMap<String, Vec<String>>,
}

impl Held {
    /// Reads the queue from its head until every wanted message has come,
    /// the deepest position has passed, or nothing comes within [`WAIT`].
    async fn take(store: &ActiveMqStore, mut wanted: Wanted) -> Result<Held, StoreError> {
        let mut held = Held {
            store: store.name.clone(),
            connection: None,
            subscription: String::new(),
            acks: BTreeMap::new(),
        };
        if wanted.is_empty() {
            return Ok(held);
        }
        let connection = Connection::open(&store.name, &store.target).await?;
        let id = connection.next_id("remove-");
        let mut frames = connection.route(&id);
        let prefetch = wanted.deepest.saturating_add(1).min(i32::MAX as usize);
        let subscribe = Frame::new("SUBSCRIBE")
            .header("id", id.clone())
            .header("destination", store.destination.clone())
            .header("ack", "client-individual")
            .header("activemq.prefetchSize", prefetch.to_string());
        held.connection = Some(connection.clone());
        held.subscription = id;
        if let Err(e) = connection.send(subscribe) {
            held.give_back().await;
            return Err(e);
        }
        let mut seen = 0;
        while seen < prefetch && !wanted.is_empty() {
            let frame = match tokio::time::timeout(WAIT, frames.recv()).await {
                Err(_) => break,
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    let why = connection.why();
                    held.give_back().await;
                    return Err(error(&store.name, "removing messages", why));
                }
            };
            seen += 1;
            let Some(ack) = frame.get("ack").map(str::to_owned) else {
                continue;
            };
            let message = mapping::message(frame);
            if wanted.take(&message.id) {
                held.acks.entry(message.id).or_default().push(ack);
            }
        }
        if seen == 0 {
            // Nothing came: the queue is empty, or another consumer holds it.
            held.give_back().await;
            let (_, left, _) = store.read_queue(Some(1), false).await?;
            if left > 0 {
                return Err(error(
                    &store.name,
                    "removing messages",
                    format_args!(
                        "{} gave Wharf's consumer nothing: another consumer (a processor of \
                         another instance, a client) holds the queue; try again once it has gone",
                        store.destination
                    ),
                ));
            }
            return Ok(Held {
                store: store.name.clone(),
                connection: None,
                subscription: String::new(),
                acks: BTreeMap::new(),
            });
        }
        Ok(held)
    }

    /// ACKs every held message, then gives the rest back; returns once the
    /// broker has taken the ACKs (a receipt after them).
    async fn ack_all(mut self) -> Result<u64, StoreError> {
        let Some(connection) = self.connection.take() else {
            return Ok(0);
        };
        let acked = self.acks.values().map(Vec::len).sum::<usize>() as u64;
        let acking = async {
            for ack in std::mem::take(&mut self.acks).into_values().flatten() {
                connection.send(Frame::new("ACK").header("id", ack))?;
            }
            connection
                .send_receipted(Frame::new("UNSUBSCRIBE").header("id", self.subscription.clone()))
                .await
        };
        // Bounded: a broker that stops answering must not hold the store's lock.
        let result = match tokio::time::timeout(ACK_LIMIT, acking).await {
            Ok(result) => result,
            Err(_) => Err(error(
                &self.store,
                "removing messages",
                format_args!("the broker did not confirm the acks within {ACK_LIMIT:?}"),
            )),
        };
        connection.unroute(&self.subscription);
        connection.disconnect().await;
        result?;
        Ok(acked)
    }

    /// Gives every held message back to the queue (nothing acked).
    async fn give_back(mut self) {
        if let Some(connection) = self.connection.take() {
            connection.unroute(&self.subscription);
            connection.disconnect().await;
        }
    }
}
