//! Browsing and removing the messages of a queue that no processor here
//! consumes (a dead-letter store), for the dead-letter API.
//!
//! RabbitMQ cannot show a message without delivering it, so a browse is a
//! short-lived consumer of its own: it opens a connection, takes deliveries
//! from the head with manual acks and acks none of them, then closes the
//! connection, which returns every delivery to the queue at its place.
//! A remove does the same and acks the messages it was asked to remove.
//! Either reads the queue from its head each time: a page deep in the queue
//! costs every delivery before it.
//!
//! Where the returned messages go decides how much is read. A classic queue
//! puts them back at their places, so a browse reads up to the end of its
//! page and a remove up to the last message it removes. A quorum queue (seen
//! on RabbitMQ 3.10) puts them at the tail, which would rotate the queue, so
//! every browse and remove of one reads the whole queue and returns all of
//! it, in order; a dead letter that arrives in the moment between the read
//! and the return lands before the returned ones. Either is refused past
//! [`MAX_DEPTH`] messages (what it must hold unacked).
//!
//! What it disturbs: while it runs, it is the queue's (single active)
//! consumer, so it refuses to start when the queue has a consumer already
//! (another instance's processor, a client), and a consumer that arrives
//! meanwhile waits for it. Returned messages are marked redelivered, and a
//! quorum queue counts each browse as a delivery (`x-delivery-count`): with a
//! `delivery-limit` policy a message browsed that many times would be dropped
//! or dead-lettered by the broker, so a dead-letter store on a quorum queue
//! must have no delivery limit (see the README).
//!
//! A position is an [`ordinal_position`](crate::store::ordinal_position);
//! if its message is gone, the page after it starts at its ordinal.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::config::QueueType;
use super::{AmqpStore, error, lapin_error, mapping, open_channel, within};
use crate::store::{Browsed, PageAfter, Position, Removed, StoreError, Wanted};

/// How long a browse waits for the next delivery before it takes what it has
/// (the broker delivers a ready queue at once; this covers a busy broker).
const BROWSE_WAIT: Duration = Duration::from_secs(2);

/// How long a session waits, when it ends, for its returned messages to be ready again.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// The deepest a browse reaches: every delivery before a page is held
/// unacked, and AMQP's prefetch count is 16 bits.
pub const MAX_DEPTH: usize = u16::MAX as usize;

/// The queue's counts (messages ready, consumers), by a passive declare.
async fn read_queue(store: &AmqpStore, channel: &Channel) -> Result<lapin::Queue, StoreError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declare = channel.queue_declare(
        store.settings.queue.as_str().into(),
        passive,
        FieldTable::default(),
    );
    within(&store.name, "reading the queue", declare).await
}

/// A consumer on the queue, for one browse or remove.
struct Session {
    connection: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
    /// Deliveries to read: to the end of what was asked, or the whole queue.
    reach: usize,
    /// Whether the queue puts returned messages back at their places.
    in_place: bool,
    /// Messages ready when the session began.
    ready: usize,
}

impl Session {
    /// Opens a session that reads the first `need` messages (more on a
    /// queue that does not return them in place).
    async fn open(store: &AmqpStore, need: usize) -> Result<Session, StoreError> {
        let name = &store.name;
        let (connection, channel) =
            open_channel(&store.url, &store.tls, &store.settings, name).await?;
        let queue = read_queue(store, &channel).await?;
        if queue.consumer_count() > 0 {
            let _ = connection.close(200, "wharf: queue busy".into()).await;
            return Err(error(
                name,
                "browsing",
                format_args!(
                    "queue {:?} has a consumer (a processor of another instance, or a client); \
                     it can be browsed only while nothing consumes it",
                    store.settings.queue
                ),
            ));
        }
        let ready = queue.message_count() as usize;
        let in_place = store.settings.queue_type == QueueType::Classic;
        let reach = if in_place { ready.min(need) } else { ready };
        if reach > MAX_DEPTH {
            let _ = connection.close(200, "wharf: queue too deep".into()).await;
            return Err(too_deep(store));
        }
        let prefetch = u16::try_from(reach.max(1)).unwrap_or(u16::MAX);
        let qos = channel.basic_qos(prefetch, BasicQosOptions::default());
        within(name, "setting prefetch", qos).await?;
        let consume = channel.basic_consume(
            store.settings.queue.as_str().into(),
            format!("wharf-browse-{name}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let consumer = within(name, "starting a browsing consumer", consume).await?;
        Ok(Session {
            connection,
            channel,
            consumer,
            reach,
            in_place,
            ready,
        })
    }

    /// The next delivery, or `None` when none comes within [`BROWSE_WAIT`].
    async fn next(&mut self, store: &str) -> Result<Option<Delivery>, StoreError> {
        match tokio::time::timeout(BROWSE_WAIT, self.consumer.next()).await {
            Err(_) | Ok(None) => Ok(None),
            Ok(Some(Ok(delivery))) => Ok(Some(delivery)),
            Ok(Some(Err(e))) => Err(lapin_error(store, "browsing", &e)),
        }
    }

    /// Closes the channel, then waits until the broker has the returned
    /// deliveries ready again (all but the `removed`), then closes the
    /// connection. (Returns are asynchronous, a quorum queue's through its
    /// log: without the wait, the next browse could count the queue short.)
    async fn close(self, store: &AmqpStore, removed: usize) -> Result<(), StoreError> {
        let name = &store.name;
        let closed = self.channel.close(200, "wharf: browsed".into()).await;
        let settled = async {
            closed.map_err(|e| lapin_error(name, "closing the browsing channel", &e))?;
            let expected = self.ready.saturating_sub(removed);
            let channel =
                within(name, "opening a channel", self.connection.create_channel()).await?;
            let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
            loop {
                let queue = read_queue(store, &channel).await?;
                if queue.message_count() as usize >= expected {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    // Someone else took some meanwhile; nothing is lost either way.
                    tracing::debug!(store = %name, expected, ready = queue.message_count(), "the browsed queue did not settle");
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let settled = settled.await;
        let _ = self.connection.close(200, "wharf: browsed".into()).await;
        settled
    }
}

/// Up to `limit` messages after `after`, read from the head (see the module doc).
pub(super) async fn browse(
    store: &AmqpStore,
    after: Option<&Position>,
    limit: usize,
) -> Result<Vec<Browsed>, StoreError> {
    let mut page = PageAfter::new(&store.name, after, limit)?;
    let _one = store.browsing.lock().await;
    let mut session = Session::open(store, page.reach()).await?;
    let mut seen = 0;
    while seen < session.reach {
        let Some(delivery) = session.next(&store.name).await? else {
            break;
        };
        page.offer(seen, mapping::message(&delivery.properties, delivery.data));
        seen += 1;
    }
    session.close(store, 0).await?;
    Ok(page.into_page())
}

/// Removes the messages at `positions` (see the module doc).
pub(super) async fn remove(
    store: &AmqpStore,
    positions: &[Position],
) -> Result<Removed, StoreError> {
    let mut wanted = Wanted::at(&store.name, positions)?;
    if wanted.is_empty() {
        return Ok(Removed::default());
    }
    let _one = store.browsing.lock().await;
    let mut session = Session::open(store, wanted.deepest.saturating_add(1)).await?;
    let mut removed = 0;
    let mut seen = 0;
    // Each message is at its ordinal or before it.
    while seen < session.reach && !(session.in_place && wanted.is_empty()) {
        let Some(mut delivery) = session.next(&store.name).await? else {
            break;
        };
        seen += 1;
        // With its body: a message published without an id has one made of its content.
        let body = std::mem::take(&mut delivery.data);
        let message = mapping::message(&delivery.properties, body);
        if wanted.take(&message.id) {
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| error(&store.name, "removing a message", e))?;
            removed += 1;
        }
    }
    session.close(store, removed as usize).await?;
    Ok(Removed {
        removed,
        in_flight: 0,
    })
}

fn too_deep(store: &AmqpStore) -> StoreError {
    StoreError::Unsupported {
        store: store.name.clone(),
        reason: format!(
            "the amqp backend cannot browse past the first {MAX_DEPTH} messages of a queue \
             (of a quorum queue, one deeper than that); replay or purge some first"
        ),
    }
}
