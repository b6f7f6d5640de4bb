//! The consumer task: keeps an exclusive `client-individual` subscription
//! open with `prefetch` messages in flight, hands them to the store, and
//! reconnects per the store's `reconnect` (see the order rules in the
//! module doc).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::config::ActiveMqSettings;
use super::connection::{Connection, Target};
use super::frame::Frame;
use super::{Event, SUBSCRIPTION};
use crate::store::StoreError;

pub(super) struct Consumer {
    pub(super) store: String,
    pub(super) target: Target,
    pub(super) destination: String,
    pub(super) settings: ActiveMqSettings,
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
                Ok((connection, mut messages)) => {
                    failures = 0;
                    self.up.store(true, Ordering::Relaxed);
                    tracing::info!(store = %self.store, queue = %self.settings.queue, "consuming");
                    let stopped = loop {
                        tokio::select! {
                            _ = self.stop.cancelled() => break true,
                            _ = connection.ended() => break false,
                            next = messages.recv() => match next {
                                Some(frame) => {
                                    let _ = self.events.send(Event::Delivery(frame, connection.clone()));
                                    self.delivered.notify_one();
                                }
                                None => break false,
                            }
                        }
                    };
                    self.up.store(false, Ordering::Relaxed);
                    if !stopped {
                        tracing::warn!(store = %self.store, reason = %connection.why(), "consumer connection lost; reconnecting");
                    }
                    let _ = self.events.send(Event::Reset);
                    self.delivered.notify_one();
                    // Disconnecting gives every unacked message back to the
                    // queue, at its place; the broker may be gone already.
                    connection.disconnect().await;
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

    async fn open(&self) -> Result<(Arc<Connection>, mpsc::UnboundedReceiver<Frame>), StoreError> {
        let connection = Connection::open(&self.store, &self.target).await?;
        let messages = connection.route(SUBSCRIPTION);
        let subscribe = Frame::new("SUBSCRIBE")
            .header("id", SUBSCRIPTION)
            .header("destination", self.destination.clone())
            .header("ack", "client-individual")
            .header("activemq.prefetchSize", self.settings.prefetch.to_string())
            // One consumer of the queue at a time, across Wharf instances.
            .header("activemq.exclusive", "true");
        connection.send_receipted(subscribe).await?;
        Ok((connection, messages))
    }
}
