//! The consumer task: keeps a consumer open with manual acks and `prefetch`
//! deliveries in flight, hands deliveries to the store, and reconnects per
//! the store's `reconnect` (see the order rules in the module doc).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_lite::StreamExt;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::config::AmqpSettings;
use super::{CONNECT_TIMEOUT, Event, LIVENESS_CHECK, open_channel, within};
use crate::store::StoreError;

/// The task that keeps a consumer open and feeds deliveries to the store.
pub(super) struct Consumer {
    pub(super) store: String,
    pub(super) url: String,
    pub(super) tls: OwnedTLSConfig,
    pub(super) settings: AmqpSettings,
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) delivered: Arc<Notify>,
    pub(super) up: Arc<AtomicBool>,
    pub(super) stop: CancellationToken,
}

impl Consumer {
    pub(super) async fn run(self) {
        let mut failures = 0u32;
        loop {
            match self.open().await {
                Ok((connection, mut consumer)) => {
                    failures = 0;
                    self.up.store(true, Ordering::Relaxed);
                    tracing::info!(store = %self.store, queue = %self.settings.queue, "consuming");
                    let mut watch = tokio::time::interval(LIVENESS_CHECK);
                    let stopped = loop {
                        tokio::select! {
                            _ = self.stop.cancelled() => break true,
                            // The stream should end when the connection does;
                            // this catches a connection that died without telling it.
                            _ = watch.tick() => if !connection.status().connected() {
                                tracing::warn!(store = %self.store, "consumer connection is down; reconnecting");
                                break false;
                            },
                            next = consumer.next() => match next {
                                Some(Ok(delivery)) => {
                                    let _ = self.events.send(Event::Delivery(Box::new(delivery)));
                                    self.delivered.notify_one();
                                }
                                Some(Err(e)) => {
                                    tracing::warn!(store = %self.store, error = %e, "consumer lost its connection; reconnecting");
                                    break false;
                                }
                                None => {
                                    tracing::warn!(store = %self.store, "consumer cancelled by the broker; reconnecting");
                                    break false;
                                }
                            }
                        }
                    };
                    self.up.store(false, Ordering::Relaxed);
                    let _ = self.events.send(Event::Reset);
                    self.delivered.notify_one();
                    // Closing returns unacked deliveries to the queue, in order.
                    // A broker that is going away may never answer the close.
                    let close = connection.close(200, "wharf consumer closing".into());
                    let _ = tokio::time::timeout(CONNECT_TIMEOUT, close).await;
                    if stopped {
                        return;
                    }
                }
                Err(e) => tracing::warn!(store = %self.store, error = %e, "cannot consume"),
            }
            failures += 1;
            let next = crate::store::broker::before_reconnect(
                &self.store,
                &self.settings.reconnect,
                failures,
                &self.stop,
            )
            .await;
            match next {
                Ok(()) => {}
                Err(Some(reason)) => {
                    let _ = self.events.send(Event::GaveUp(reason));
                    self.delivered.notify_one();
                    return;
                }
                Err(None) => return,
            }
        }
    }

    async fn open(&self) -> Result<(Connection, lapin::Consumer), StoreError> {
        let (connection, channel) =
            open_channel(&self.url, &self.tls, &self.settings, &self.store).await?;
        let qos = channel.basic_qos(self.settings.prefetch, BasicQosOptions::default());
        within(&self.store, "setting prefetch", qos).await?;
        let consume = channel.basic_consume(
            self.settings.queue.as_str().into(),
            format!("wharf-{}", self.store).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let consumer = within(&self.store, "starting the consumer", consume).await?;
        Ok((connection, consumer))
    }
}
