//! When a processor runs: cron, a fixed interval, or continuously; its
//! throttle, and the rate its tenant's processors share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::ProcessorTrigger;

/// Waits for the next round of a scheduled processor.
pub enum Trigger {
    Cron(Box<cron::Schedule>),
    Interval(tokio::time::Interval),
    Continuous,
}

impl Trigger {
    pub fn new(trigger: &ProcessorTrigger) -> Trigger {
        match trigger {
            ProcessorTrigger::Cron(schedule, _) => Trigger::Cron(schedule.clone()),
            ProcessorTrigger::Interval(every) => {
                let mut interval = tokio::time::interval(*every);
                // A round that ran long (retries) does not cause a burst of catch-up rounds.
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                Trigger::Interval(interval)
            }
            ProcessorTrigger::Continuous => Trigger::Continuous,
        }
    }

    /// Resolves at the next round; at once for a continuous processor.
    pub async fn tick(&mut self) {
        match self {
            Trigger::Cron(schedule) => match until_next(schedule, chrono::Local::now()) {
                Some(wait) => tokio::time::sleep(wait).await,
                // A schedule with no future time (a past year) never fires again.
                None => std::future::pending().await,
            },
            Trigger::Interval(interval) => {
                interval.tick().await;
            }
            Trigger::Continuous => {}
        }
    }
}

/// The wait from `now` to the schedule's next time.
pub fn until_next<Tz: TimeZone>(schedule: &cron::Schedule, now: DateTime<Tz>) -> Option<Duration> {
    let next = schedule.after(&now).next()?;
    Some((next - now).to_std().unwrap_or_default())
}

/// Spaces forwarding attempts to at most `rate` per second (a token bucket
/// that holds a few milliseconds' worth of tokens, so timer granularity does
/// not lower the rate).
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    burst: Duration,
    next: Option<Instant>,
}

impl Throttle {
    /// `rate` is validated: at least [`crate::config::MIN_RATE`], finite.
    pub fn new(rate: f64) -> Throttle {
        let every = Duration::from_secs_f64(1.0 / rate);
        Throttle {
            every,
            burst: Duration::from_millis(5).saturating_sub(every),
            next: None,
        }
    }

    /// Waits for the next permit.
    pub async fn acquire(&mut self) {
        let now = Instant::now();
        let floor = now.checked_sub(self.burst).unwrap_or(now);
        let at = self.next.map_or(now, |next| next.max(floor));
        if at > now {
            tokio::time::sleep_until(at).await;
        }
        self.next = Some(at + self.every);
    }
}

/// A rate several processors share (a tenant's `forward_rate`): each
/// attempt reserves the next free instant, so together they keep the rate.
#[derive(Debug, Default)]
pub struct SharedRate {
    /// Nanoseconds between attempts; 0: no rate (nothing is locked).
    every: AtomicU64,
    next: std::sync::Mutex<Option<Instant>>,
}

impl SharedRate {
    /// Sets the rate in attempts per second (validated: at least
    /// [`crate::config::MIN_RATE`]); `None` lifts it.
    pub fn set(&self, rate: Option<f64>) {
        let every = rate.map_or(0, |r| {
            u64::try_from(Duration::from_secs_f64(1.0 / r).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        self.every.store(every, Ordering::Release);
    }

    /// Waits for the next permit.
    pub async fn acquire(&self) {
        let every = self.every.load(Ordering::Acquire);
        if every == 0 {
            return;
        }
        let every = Duration::from_nanos(every);
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let burst = Duration::from_millis(5).saturating_sub(every);
            let floor = now.checked_sub(burst).unwrap_or(now);
            let at = next.map_or(now, |n| n.max(floor));
            *next = Some(at + every);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn guide_cron_fires_on_even_seconds() {
        let s = cron::Schedule::from_str("0/2 * * * * ?").unwrap();
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 1).unwrap();
        assert_eq!(until_next(&s, now), Some(Duration::from_secs(1)));
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 2).unwrap();
        assert_eq!(until_next(&s, now), Some(Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_rate_holds_across_its_users_and_can_be_lifted() {
        let rate = std::sync::Arc::new(SharedRate::default());
        rate.set(Some(50.0));
        let start = Instant::now();
        let users: Vec<_> = (0..4)
            .map(|_| {
                let rate = rate.clone();
                tokio::spawn(async move {
                    for _ in 0..25 {
                        rate.acquire().await;
                    }
                })
            })
            .collect();
        for user in users {
            user.await.unwrap();
        }
        // 100 attempts at 50/s: the last one two seconds after the first.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1970) && took <= Duration::from_millis(2010),
            "{took:?}"
        );
        rate.set(None);
        let lifted = Instant::now();
        for _ in 0..1000 {
            rate.acquire().await;
        }
        assert_eq!(lifted.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_holds_the_rate() {
        let mut t = Throttle::new(100.0);
        let start = Instant::now();
        for _ in 0..201 {
            t.acquire().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1990) && took <= Duration::from_millis(2010),
            "{took:?}"
        );
    }
}
