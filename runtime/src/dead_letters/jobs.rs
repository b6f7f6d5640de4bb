//! Replays and purges as jobs: started by the admin API, run in a task of
//! their own, watched through `GET .../jobs/{id}`, cancelled between batches.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::{BATCH, Filter, check_target, each_match, find, replayed, target};
use crate::api::{JobKind, JobState, JobView, time};
use crate::store::{Position, Store, StoreError, Stores};

/// Finished jobs a tenant keeps to be looked at (the oldest go first).
pub const KEEP_FINISHED: usize = 100;

/// One replay or purge.
pub struct Job {
    id: String,
    kind: JobKind,
    store: String,
    to_store: Option<String>,
    started_at: i64,
    total: Mutex<Option<u64>>,
    done: AtomicU64,
    in_flight: AtomicU64,
    cancel: CancellationToken,
    /// Set once, when it ends: the state, the error, the time.
    end: Mutex<Option<(JobState, Option<String>, i64)>>,
}

impl Job {
    pub fn view(&self) -> JobView {
        let end = self.end.lock().unwrap_or_else(|p| p.into_inner()).clone();
        JobView {
            id: self.id.clone(),
            kind: self.kind,
            store: self.store.clone(),
            to_store: self.to_store.clone(),
            state: end.as_ref().map_or(JobState::Running, |e| e.0),
            total: *self.total.lock().unwrap_or_else(|p| p.into_inner()),
            done: self.done.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            started_at: time(self.started_at),
            finished_at: end.as_ref().and_then(|e| time(e.2)),
            error: end.and_then(|e| e.1),
        }
    }

    fn finish(&self, state: JobState, error: Option<String>) {
        *self.end.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((state, error, chrono::Utc::now().timestamp_millis()));
    }

    fn running(&self) -> bool {
        self.end.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }
}

/// A tenant's jobs: running ones and the latest finished.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
}

/// What a job is asked to do.
pub struct Work {
    pub kind: JobKind,
    /// The pipeline's stores when the job started.
    pub stores: Stores,
    pub store: String,
    pub filter: Filter,
    pub to_store: Option<String>,
    /// Told of each message purged (its body bytes): the tenant's stored count.
    pub left: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Jobs {
    /// Starts `work` in a task of its own and returns its job.
    pub fn start(&self, work: Work) -> Arc<Job> {
        let job = Arc::new(Job {
            id: uuid::Uuid::now_v7().to_string(),
            kind: work.kind,
            store: work.store.clone(),
            to_store: work.to_store.clone(),
            started_at: chrono::Utc::now().timestamp_millis(),
            total: Mutex::new(None),
            done: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            end: Mutex::new(None),
        });
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let finished: Vec<String> = jobs
                .iter()
                .filter(|(_, j)| !j.running())
                .map(|(id, _)| id.clone())
                .collect();
            let extra = finished.len().saturating_sub(KEEP_FINISHED - 1);
            for id in finished.into_iter().take(extra) {
                jobs.remove(&id);
            }
            jobs.insert(job.id.clone(), job.clone());
        }
        let running = job.clone();
        tokio::spawn(async move {
            let kind = running.kind;
            let outcome = run(&running, work).await;
            match outcome {
                Ok(()) if running.cancel.is_cancelled() => {
                    running.finish(JobState::Cancelled, None);
                }
                Ok(()) => running.finish(JobState::Succeeded, None),
                Err(e) => {
                    tracing::warn!(job = %running.id, store = %running.store, error = %e, "{kind:?} job failed; what it had not moved is where it was");
                    running.finish(JobState::Failed, Some(e));
                }
            }
        });
        job
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every job kept, oldest first.
    pub fn list(&self) -> Vec<JobView> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|j| j.view())
            .collect()
    }

    /// Asks job `id` to stop after its current batch; false if there is no such job.
    pub fn cancel(&self, id: &str) -> bool {
        match self.get(id) {
            Some(job) => {
                job.cancel.cancel();
                true
            }
            None => false,
        }
    }
}

fn store_of<'a>(stores: &'a Stores, name: &str) -> Result<&'a Arc<dyn Store>, String> {
    stores
        .get(name)
        .ok_or_else(|| format!("store {name:?} is no longer in the pipeline"))
}

/// How many messages of `store` match `filter`.
async fn count(store: &dyn Store, filter: &Filter) -> Result<u64, StoreError> {
    let mut total = 0;
    let counted: Result<(), std::convert::Infallible> = each_match(store, filter, |_| {
        total += 1;
        Ok(())
    })
    .await?;
    let Ok(()) = counted;
    Ok(total)
}

async fn run(job: &Job, work: Work) -> Result<(), String> {
    let source = store_of(&work.stores, &work.store)?.clone();
    let said = |e: StoreError| e.to_string();
    // The count first, so that progress has a total (and an ETA). A store
    // that cannot be read to its end (a RabbitMQ queue past what one
    // consumer may hold) is moved without one, from its head.
    match count(&*source, &work.filter).await {
        Ok(total) => *job.total.lock().unwrap_or_else(|p| p.into_inner()) = Some(total),
        Err(e) if !e.retryable() => {
            tracing::info!(store = %work.store, error = %e, "moving without a total: the store cannot be counted");
        }
        Err(e) => return Err(said(e)),
    }

    // Batches no larger than one read of the backend (ActiveMQ's are smaller).
    let batch = BATCH.min(source.browse_page().max(1));
    let mut after: Option<Position> = None;
    loop {
        if job.cancel.is_cancelled() {
            return Ok(());
        }
        let page = find(&*source, &work.filter, after.clone(), batch)
            .await
            .map_err(said)?;
        if page.found.is_empty() {
            return Ok(());
        }
        // A removed message's position is not seen again; a message left
        // (in flight) is passed by the cursor. Where positions count from
        // the head, removing shifts them: after a page that removed some,
        // the next starts at the head again.
        let last = page.found.last().map(|b| b.position.clone());
        let done_before = job.done.load(Ordering::Relaxed);
        let (held, free): (Vec<_>, Vec<_>) = page.found.into_iter().partition(|b| b.leased);
        job.in_flight
            .fetch_add(held.len() as u64, Ordering::Relaxed);
        if work.kind == JobKind::Replay {
            // Runs of messages for one target, in store order, each durable there first.
            let mut start = 0;
            while start < free.len() {
                let to = target(&free[start].message, work.to_store.as_deref())?;
                check_target(&work.stores, &work.store, to)?;
                let mut end = start + 1;
                while end < free.len()
                    && target(&free[end].message, work.to_store.as_deref())? == to
                {
                    end += 1;
                }
                let batch = free[start..end]
                    .iter()
                    .map(|b| (b.position.clone(), replayed(&b.message)))
                    .collect();
                let target = store_of(&work.stores, to)?;
                let removed = source
                    .move_into(batch, &**target)
                    .await
                    .map_err(|e| format!("replay into {to:?}: {e}"))?;
                job.done.fetch_add(removed.removed, Ordering::Relaxed);
                // Leased since it was read (in both now: at-least-once), or
                // where the backend holds first, not reached and left.
                job.in_flight
                    .fetch_add(removed.in_flight, Ordering::Relaxed);
                start = end;
            }
        } else {
            let positions: Vec<Position> = free.iter().map(|b| b.position.clone()).collect();
            let removed = source.remove(&positions).await.map_err(said)?;
            if removed.in_flight == 0 {
                for b in &free {
                    (work.left)(b.message.body.len() as u64);
                }
            }
            job.done.fetch_add(removed.removed, Ordering::Relaxed);
            job.in_flight
                .fetch_add(removed.in_flight, Ordering::Relaxed);
        }
        let removed_some = job.done.load(Ordering::Relaxed) > done_before;
        after = if source.stable_positions() || !removed_some {
            last
        } else {
            // A new pass from the head meets again what the passes before
            // left: it counts them anew rather than twice.
            job.in_flight.store(0, Ordering::Relaxed);
            None
        };
    }
}
