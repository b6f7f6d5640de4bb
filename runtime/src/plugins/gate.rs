//! A cap on the plugin instances one tenant's processors hold at once, so
//! that one tenant cannot take the process's whole shared pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Counts the instances alive under one cap (see the module doc).
#[derive(Debug)]
pub struct Gate {
    /// The most at once; `u64::MAX`: no cap.
    cap: AtomicU64,
    in_use: AtomicU64,
    /// Calls that waited longer than their deadline for an instance.
    refused: AtomicU64,
    freed: Notify,
}

/// One instance's place under a gate, given back when dropped.
#[derive(Debug)]
pub struct Permit(Arc<Gate>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            cap: AtomicU64::new(u64::MAX),
            in_use: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            freed: Notify::new(),
        }
    }
}

impl Gate {
    /// Sets the cap (`None`: none); instances above a lowered cap stay
    /// until their calls end.
    pub fn set_cap(&self, cap: Option<u64>) {
        self.cap.store(cap.unwrap_or(u64::MAX), Ordering::Release);
        self.freed.notify_waiters();
    }

    /// The cap, if there is one.
    pub fn cap(&self) -> Option<u64> {
        Some(self.cap.load(Ordering::Acquire)).filter(|&c| c != u64::MAX)
    }

    /// Instances alive now.
    pub fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Acquire)
    }

    /// Calls refused since start because no instance was free in time.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A place if one is free now.
    pub fn try_take(self: &Arc<Self>) -> Option<Permit> {
        let cap = self.cap.load(Ordering::Acquire);
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }

    /// A place, waiting up to `within` for one to be freed.
    pub async fn take(self: &Arc<Self>, within: Duration) -> Option<Permit> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(permit) = self.try_take() {
                return Some(permit);
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_capped_gate_lets_a_waiter_in_when_an_instance_is_freed() {
        let gate = Arc::new(Gate::default());
        gate.set_cap(Some(2));
        let a = gate.try_take().unwrap();
        let _b = gate.try_take().unwrap();
        assert!(gate.try_take().is_none());
        assert_eq!(gate.in_use(), 2);
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.take(Duration::from_secs(1)).await }
        });
        tokio::task::yield_now().await;
        drop(a);
        let _c = waiter.await.unwrap().expect("a place once one was freed");
        // Nothing is freed: the wait ends at its deadline, counted.
        assert!(gate.take(Duration::from_millis(50)).await.is_none());
        assert_eq!(gate.refused(), 1);
        // Raising the cap lets more in at once.
        gate.set_cap(None);
        assert!(gate.try_take().is_some());
    }
}
