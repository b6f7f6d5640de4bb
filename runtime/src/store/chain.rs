//! Writes with retry and fail-over: a store, its `retry` block, its `secondary`, and so on.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;

use crate::config::{StoreSettings, WriteRetry};
use crate::metrics::Metrics;

use super::{Leased, Message, Store, StoreError, Stores};

/// The stores a write to one configured store may end up in, in fail-over order.
#[derive(Clone)]
pub struct StoreChain {
    links: Vec<Link>,
}

#[derive(Clone)]
struct Link {
    store: Arc<dyn Store>,
    retry: WriteRetry,
    /// `wharf_stored_total` of this store.
    stored: Counter,
}

/// Every store in the chain refused the write.
#[derive(Debug, thiserror::Error)]
#[error("no store took the message: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ChainError(pub Vec<StoreError>);

impl StoreChain {
    /// The chain that starts at `name`; `settings` was validated, so names resolve and the chain ends.
    pub fn new(
        name: &str,
        stores: &Stores,
        settings: &BTreeMap<String, StoreSettings>,
        metrics: &Metrics,
    ) -> StoreChain {
        let mut links: Vec<Link> = Vec::new();
        let mut at = Some(name);
        while let Some(name) = at {
            let (Some(store), Some(s)) = (stores.get(name), settings.get(name)) else {
                break;
            };
            if links.iter().any(|l| l.store.name() == name) {
                break;
            }
            links.push(Link {
                store: store.clone(),
                retry: s.retry.clone(),
                stored: metrics.stored(name),
            });
            at = s.secondary.as_deref();
        }
        StoreChain { links }
    }

    /// Appends to the first store that takes the message, after its retries;
    /// returns that store's name.
    pub async fn append(&self, message: &Arc<Message>) -> Result<&str, ChainError> {
        let mut errors = Vec::new();
        for (i, link) in self.links.iter().enumerate() {
            let store = &link.store;
            let mut attempt = 0u32;
            loop {
                match store.append(message.clone()).await {
                    Ok(()) => {
                        link.stored.inc();
                        if i > 0 {
                            tracing::warn!(
                                message_id = %message.id, store = store.name(), primary = self.links[0].store.name(),
                                "message stored in fail-over store"
                            );
                        }
                        return Ok(store.name());
                    }
                    // Only what may succeed is tried again: an untrusted
                    // certificate fails over at once.
                    Err(e) if !e.retryable() => {
                        tracing::warn!(message_id = %message.id, store = store.name(), error = %e, "store write failed; not retried");
                        errors.push(e);
                        break;
                    }
                    Err(e) => {
                        let retries_left =
                            link.retry.retries.is_none_or(|n| u64::from(attempt) < n);
                        if !retries_left {
                            tracing::warn!(message_id = %message.id, store = store.name(), error = %e, "store write failed after retries");
                            errors.push(e);
                            break;
                        }
                        attempt += 1;
                        let wait = link.retry.backoff.delay(attempt);
                        tracing::debug!(store = store.name(), error = %e, ?wait, attempt, "store write failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Err(ChainError(errors))
    }

    /// Moves a leased message from `source` into this chain: the copy is
    /// durable here before the original is acked there. A crash in between
    /// leaves it in both (delivered twice at worst), never in neither.
    pub async fn move_from(
        &self,
        source: &dyn Store,
        leased: &Leased,
        copy: Arc<Message>,
    ) -> Result<&str, ChainError> {
        let taken_by = self.append(&copy).await?;
        if let Err(e) = source.ack(leased.receipt).await {
            // The copy is safe; the original stays and may be processed again.
            tracing::error!(store = source.name(), message_id = %leased.message.id, error = %e, "ack after move failed");
        }
        Ok(taken_by)
    }
}

/// Every store's chain, by the name of the store it starts at.
pub type Chains = BTreeMap<String, StoreChain>;

/// The chains of the pipeline live now. A pipeline change swaps the whole
/// map; readers take a snapshot (no lock) and keep it for one write.
pub struct ChainSet(ArcSwap<Chains>);

impl ChainSet {
    pub fn new(chains: Chains) -> ChainSet {
        ChainSet(ArcSwap::from_pointee(chains))
    }

    /// The chains live now.
    pub fn load(&self) -> Arc<Chains> {
        self.0.load_full()
    }

    /// Makes `chains` live; returns the ones it replaced.
    pub fn swap(&self, chains: Chains) -> Arc<Chains> {
        self.0.swap(Arc::new(chains))
    }
}

/// The chain of every store in `settings`.
pub fn chains(
    stores: &Stores,
    settings: &BTreeMap<String, StoreSettings>,
    metrics: &Metrics,
) -> Chains {
    settings
        .keys()
        .map(|name| {
            (
                name.clone(),
                StoreChain::new(name, stores, settings, metrics),
            )
        })
        .collect()
}
