//! A tenant's quotas as enforced: the ingest token bucket (messages and
//! bytes per second) and the stored count (messages and bytes across its
//! stores) that ingress asks before it stores a message; the forward rate
//! its processors share; the cap on its plugin instances; and the object
//! counts and plugin ceilings an apply or a deploy is checked against.
//!
//! The stored count is kept here, not asked of the stores on each request:
//! ingress reserves a message's place before it writes (so concurrent
//! requests cannot overshoot), gives it back if the write fails, and a
//! processor gives it back when the message leaves for good. A move to a
//! dead-letter store keeps it: the message is still the tenant's. It is
//! set from the stores themselves at start and after each apply
//! ([`Limits::recount`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::config::{Invalid, PluginRef, Quotas, ValidPipeline};
use crate::plugins::gate::Gate;
use crate::processor::schedule::SharedRate;

/// Why ingress refused a message: which quota, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub enum OverQuota {
    /// An ingest rate (`429` with `Retry-After`).
    Rate {
        reason: String,
        retry_after: Duration,
    },
    /// What its stores hold (`507`): only deliveries make room.
    Stored { reason: String },
}

impl OverQuota {
    pub fn reason(&self) -> &str {
        match self {
            OverQuota::Rate { reason, .. } | OverQuota::Stored { reason } => reason,
        }
    }
}

/// Tokens left of each rate; a bucket holds one second's worth (and at
/// least one message).
#[derive(Debug, Default)]
struct Bucket {
    messages: f64,
    bytes: f64,
    last: Option<Instant>,
}

impl Bucket {
    /// Takes one message of `bytes` at `now`, or says how long until it fits.
    fn take(&mut self, now: Instant, q: &Quotas, bytes: u64) -> Result<(), OverQuota> {
        let elapsed = self
            .last
            .map_or(f64::INFINITY, |last| now.duration_since(last).as_secs_f64());
        self.last = Some(now);
        let message_rate = q.ingest_rate;
        let byte_rate = q.ingest_bytes_rate.map(|b| b.0 as f64);
        if let Some(rate) = message_rate {
            self.messages = (self.messages + elapsed * rate).min(rate.max(1.0));
        }
        if let Some(rate) = byte_rate {
            self.bytes = (self.bytes + elapsed * rate).min(rate);
        }
        if let Some(rate) = message_rate
            && self.messages < 1.0
        {
            return Err(OverQuota::Rate {
                reason: format!("over its ingest quota of {rate} messages/s"),
                retry_after: Duration::from_secs_f64((1.0 - self.messages) / rate),
            });
        }
        // A body larger than a second's worth passes once the bucket is
        // full, and the bucket goes below zero: the rate still holds.
        let needed = byte_rate.map(|rate| (bytes as f64).min(rate));
        if let (Some(rate), Some(needed)) = (byte_rate, needed)
            && self.bytes < needed
        {
            return Err(OverQuota::Rate {
                reason: format!("over its ingest quota of {rate} bytes/s"),
                retry_after: Duration::from_secs_f64((needed - self.bytes) / rate),
            });
        }
        if message_rate.is_some() {
            self.messages -= 1.0;
        }
        if byte_rate.is_some() {
            self.bytes -= bytes as f64;
        }
        Ok(())
    }
}

/// What a tenant's stores hold, as counted (see the module doc).
#[derive(Debug, Default)]
struct Stored {
    messages: AtomicU64,
    bytes: AtomicU64,
}

/// Adds one to `counter` unless that passes `max`; whether it did.
fn add_within(counter: &AtomicU64, amount: u64, max: Option<u64>) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            let after = n.saturating_add(amount);
            max.is_none_or(|max| after <= max).then_some(after)
        })
        .is_ok()
}

fn subtract(counter: &AtomicU64, amount: u64) {
    // Never below zero: a broker's queue may have lost messages we counted.
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        Some(n.saturating_sub(amount))
    });
}

/// A tenant's quotas, live (a tenant `PUT` changes them in place).
pub struct Limits {
    tenant: String,
    quotas: ArcSwap<Quotas>,
    bucket: Mutex<Bucket>,
    refused: AtomicU64,
    refused_stored: AtomicU64,
    stored: Stored,
    forward: Arc<SharedRate>,
    instances: Arc<Gate>,
}

impl Limits {
    /// `instances` is the gate of the tenant's plugin registry.
    pub fn new(tenant: &str, quotas: Quotas, instances: Arc<Gate>) -> Limits {
        let limits = Limits {
            tenant: tenant.to_owned(),
            quotas: ArcSwap::from_pointee(quotas),
            bucket: Mutex::new(Bucket::default()),
            refused: AtomicU64::new(0),
            refused_stored: AtomicU64::new(0),
            stored: Stored::default(),
            forward: Arc::default(),
            instances,
        };
        limits.set(quotas);
        limits
    }

    /// The quotas in force.
    pub fn quotas(&self) -> Quotas {
        **self.quotas.load()
    }

    pub fn set(&self, quotas: Quotas) {
        self.quotas.store(Arc::new(quotas));
        self.forward.set(quotas.forward_rate);
        self.instances.set_cap(quotas.plugin_instances);
    }

    /// Messages refused for the ingest quota since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Messages refused for the stored quota since start.
    pub fn refused_stored(&self) -> u64 {
        self.refused_stored.load(Ordering::Relaxed)
    }

    /// The forward rate the tenant's processors share.
    pub fn forward_rate(&self) -> &Arc<SharedRate> {
        &self.forward
    }

    /// The gate of its plugin instances.
    pub fn instances(&self) -> &Arc<Gate> {
        &self.instances
    }

    /// Messages and body bytes its stores hold, as counted.
    pub fn stored(&self) -> (u64, u64) {
        (
            self.stored.messages.load(Ordering::Acquire),
            self.stored.bytes.load(Ordering::Acquire),
        )
    }

    /// Sets the stored count from the stores themselves.
    pub fn recount(&self, messages: u64, bytes: u64) {
        self.stored.messages.store(messages, Ordering::Release);
        self.stored.bytes.store(bytes, Ordering::Release);
    }

    /// Reserves the place of one message of `bytes` in the tenant's
    /// stores, or refuses it; [`Limits::left`] gives the place back.
    pub fn reserve(&self, bytes: u64) -> Result<(), OverQuota> {
        let q = self.quotas.load();
        let refuse = |what: String| {
            self.refused_stored.fetch_add(1, Ordering::Relaxed);
            Err(OverQuota::Stored {
                reason: format!(
                    "tenant {:?} is over its stored quota: {what}; deliveries make room",
                    self.tenant
                ),
            })
        };
        if !add_within(&self.stored.messages, 1, q.stored_messages) {
            let max = q.stored_messages.unwrap_or(u64::MAX);
            return refuse(format!("its stores hold {max} messages, its most"));
        }
        let max_bytes = q.stored_bytes.map(|b| b.0);
        if !add_within(&self.stored.bytes, bytes, max_bytes) {
            subtract(&self.stored.messages, 1);
            let max = max_bytes.unwrap_or(u64::MAX);
            return refuse(format!(
                "{bytes} more body bytes would pass its most of {max}"
            ));
        }
        Ok(())
    }

    /// A message of `bytes` left the tenant's stores (or its write failed).
    pub fn left(&self, bytes: u64) {
        subtract(&self.stored.messages, 1);
        subtract(&self.stored.bytes, bytes);
    }

    /// Ingress asks this before storing a message of `bytes`; without an
    /// ingest quota it costs one snapshot load.
    pub fn admit(&self, bytes: u64) -> Result<(), OverQuota> {
        let quotas = self.quotas.load();
        if quotas.ingest_rate.is_none() && quotas.ingest_bytes_rate.is_none() {
            return Ok(());
        }
        let taken = self.bucket.lock().unwrap_or_else(|p| p.into_inner()).take(
            Instant::now(),
            &quotas,
            bytes,
        );
        taken.map_err(|e| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            match e {
                OverQuota::Rate {
                    reason,
                    retry_after,
                } => OverQuota::Rate {
                    reason: format!("tenant {:?} is {reason}", self.tenant),
                    retry_after,
                },
                stored => stored,
            }
        })
    }

    /// Problems of `pipeline` against the object quotas and the plugin ceilings.
    pub fn check_pipeline(&self, pipeline: &ValidPipeline) -> Vec<Invalid> {
        let q = self.quotas();
        let mut problems: Vec<Invalid> = [
            ("routes", pipeline.routes.len(), q.routes),
            ("stores", pipeline.stores.len(), q.stores),
            ("processors", pipeline.processors.len(), q.processors),
        ]
        .into_iter()
        .filter_map(|(what, count, max)| {
            let max = max?;
            (count as u64 > max).then(|| Invalid {
                key: what.to_owned(),
                reason: format!(
                    "{count} {what}, but tenant {:?} may have at most {max} (its quota)",
                    self.tenant
                ),
            })
        })
        .collect();
        for p in pipeline.processors.values() {
            let plugin = p.failure_policy.is_some()
                || !matches!(PluginRef::of(&p.response_handler), PluginRef::Builtin(_));
            if !plugin {
                continue;
            }
            let l = p.plugin_limits;
            let over = |what: &str, given: String, max: String| Invalid {
                key: format!("processors.{}.plugin_limits.{what}", p.name),
                reason: format!(
                    "{given} is more than tenant {:?}'s quota of {max} (plugin_{what}); set it to at most that",
                    self.tenant
                ),
            };
            if let Some(max) = q.plugin_memory
                && l.memory as u64 > max.0
            {
                problems.push(over(
                    "memory",
                    format!("{} bytes", l.memory),
                    format!("{} bytes", max.0),
                ));
            }
            if let Some(max) = q.plugin_deadline
                && l.deadline > max
            {
                problems.push(over(
                    "deadline",
                    format!("{:?}", l.deadline),
                    format!("{max:?}"),
                ));
            }
            if let Some(max) = q.plugin_fuel
                && l.fuel.is_none_or(|f| f > max)
            {
                let given = l
                    .fuel
                    .map_or("unlimited fuel".to_owned(), |f| f.to_string());
                problems.push(over("fuel", given, max.to_string()));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn retry_after(over: &OverQuota) -> Duration {
        match over {
            OverQuota::Rate { retry_after, .. } => *retry_after,
            OverQuota::Stored { .. } => panic!("not a rate: {over:?}"),
        }
    }

    fn quotas(rate: Option<f64>, bytes: Option<u64>) -> Quotas {
        Quotas {
            ingest_rate: rate,
            ingest_bytes_rate: bytes.map(ByteSize),
            ..Quotas::default()
        }
    }

    #[test]
    fn the_bucket_holds_one_seconds_worth_and_refills_at_the_rate() {
        let q = quotas(Some(10.0), None);
        let mut bucket = Bucket::default();
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(bucket.take(start, &q, 1), Ok(()));
        }
        let over = bucket.take(start, &q, 1).unwrap_err();
        assert_eq!(retry_after(&over), Duration::from_millis(100));
        // 250 ms later, two fit again, not three.
        let later = start + Duration::from_millis(250);
        assert!(bucket.take(later, &q, 1).is_ok());
        assert!(bucket.take(later, &q, 1).is_ok());
        assert!(bucket.take(later, &q, 1).is_err());
        // A long pause refills to one second's worth only.
        let much_later = later + Duration::from_secs(60);
        let taken = (0..20)
            .filter(|_| bucket.take(much_later, &q, 1).is_ok())
            .count();
        assert_eq!(taken, 10);
    }

    #[test]
    fn the_stored_count_refuses_past_either_ceiling_and_gives_back() {
        let q = Quotas {
            stored_messages: Some(2),
            stored_bytes: Some(ByteSize(100)),
            ..Quotas::default()
        };
        let limits = Limits::new("a", q, Arc::default());
        assert!(limits.reserve(40).is_ok());
        assert!(limits.reserve(40).is_ok());
        let full = limits.reserve(1).unwrap_err();
        assert!(full.reason().contains("hold 2 messages"), "{full:?}");
        limits.left(40);
        // One place is free, but 70 more bytes would make 110.
        let bytes = limits.reserve(70).unwrap_err();
        assert!(bytes.reason().contains("most of 100"), "{bytes:?}");
        // A refusal took nothing.
        assert_eq!(limits.stored(), (1, 40));
        assert!(limits.reserve(60).is_ok());
        assert_eq!(limits.stored(), (2, 100));
        assert_eq!(limits.refused_stored(), 2);
        // Giving back never goes below zero.
        for _ in 0..5 {
            limits.left(100);
        }
        assert_eq!(limits.stored(), (0, 0));
    }

    #[test]
    fn bytes_are_counted_and_a_large_body_waits_for_a_full_bucket() {
        let q = quotas(None, Some(1000));
        let mut bucket = Bucket::default();
        let start = Instant::now();
        assert!(bucket.take(start, &q, 600).is_ok());
        let over = bucket.take(start, &q, 600).unwrap_err();
        assert_eq!(retry_after(&over), Duration::from_millis(200));
        assert!(over.reason().contains("1000 bytes/s"));
        // A 5000-byte body passes on a full bucket, then the debt is paid first.
        let full = start + Duration::from_secs(2);
        assert!(bucket.take(full, &q, 5000).is_ok());
        let after = bucket
            .take(full + Duration::from_secs(1), &q, 10)
            .unwrap_err();
        assert!(retry_after(&after) >= Duration::from_secs(3), "{after:?}");
    }
}
