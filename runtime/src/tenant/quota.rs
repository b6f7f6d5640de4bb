//! A tenant's quotas as enforced: the ingest token bucket (messages and
//! bytes per second) that ingress asks before it stores a message, and the
//! object counts an apply or a deploy is checked against.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::config::{Invalid, Quotas, ValidPipeline};

/// Why ingress refused a message: which quota, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct OverQuota {
    pub reason: String,
    pub retry_after: Duration,
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
            return Err(OverQuota {
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
            return Err(OverQuota {
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

/// A tenant's quotas, live (a tenant `PUT` changes them in place).
pub struct Limits {
    tenant: String,
    quotas: ArcSwap<Quotas>,
    bucket: Mutex<Bucket>,
    refused: AtomicU64,
}

impl Limits {
    pub fn new(tenant: &str, quotas: Quotas) -> Limits {
        Limits {
            tenant: tenant.to_owned(),
            quotas: ArcSwap::from_pointee(quotas),
            bucket: Mutex::new(Bucket::default()),
            refused: AtomicU64::new(0),
        }
    }

    /// The quotas in force.
    pub fn quotas(&self) -> Quotas {
        **self.quotas.load()
    }

    pub fn set(&self, quotas: Quotas) {
        self.quotas.store(std::sync::Arc::new(quotas));
    }

    /// Messages refused for the ingest quota since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
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
            OverQuota {
                reason: format!("tenant {:?} is {}", self.tenant, e.reason),
                ..e
            }
        })
    }

    /// Problems of `pipeline` against the object quotas.
    pub fn check_pipeline(&self, pipeline: &ValidPipeline) -> Vec<Invalid> {
        let q = self.quotas();
        [
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
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

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
        assert_eq!(over.retry_after, Duration::from_millis(100));
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
    fn bytes_are_counted_and_a_large_body_waits_for_a_full_bucket() {
        let q = quotas(None, Some(1000));
        let mut bucket = Bucket::default();
        let start = Instant::now();
        assert!(bucket.take(start, &q, 600).is_ok());
        let over = bucket.take(start, &q, 600).unwrap_err();
        assert_eq!(over.retry_after, Duration::from_millis(200));
        assert!(over.reason.contains("1000 bytes/s"));
        // A 5000-byte body passes on a full bucket, then the debt is paid first.
        let full = start + Duration::from_secs(2);
        assert!(bucket.take(full, &q, 5000).is_ok());
        let after = bucket
            .take(full + Duration::from_secs(1), &q, 10)
            .unwrap_err();
        assert!(after.retry_after >= Duration::from_secs(3), "{after:?}");
    }
}
