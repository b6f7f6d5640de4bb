//! Dead letters as the people on call handle them: find, replay, purge.
//!
//! Everything here works on any store through [`Store::browse`],
//! [`Store::append_all`] and [`Store::remove`]; a dead-letter store is a
//! store like any other, its messages carrying their failure trail.
//!
//! - [`Filter`] is a selection (`ids`, `since`, `until`, `status`,
//!   `processor`) read once and matched against each message.
//! - [`find`] pages through a store, oldest first, from a cursor (the
//!   position of the last message of the page before).
//! - A replay moves matching messages, in store order and in batches of
//!   [`BATCH`], to the store each was dead-lettered from (or `to_store`):
//!   each batch is durable in the target (`append_all`) before it is removed
//!   from the source (`remove`), so a crash in the middle loses nothing and
//!   at worst leaves one batch in both. The copy is the message as it was
//!   accepted (same id, so `Idempotency-Key` is unchanged), without its trail.
//! - A purge removes matching messages in batches.
//! - Both run as a [`jobs::Job`] of the tenant's, with progress and cancel
//!   (between batches); jobs live in memory, so after a restart a job is
//!   gone and what it had not moved is still where it was.
//!
//! A message a processor holds (leased, in flight) is neither moved nor
//! removed; it is counted as `in_flight`.

pub mod jobs;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api::{DryRun, Selection};
use crate::store::trail::StatusFilter;
use crate::store::{Browsed, Message, Position, Store, StoreError, Stores};

/// Messages read, moved or removed per step.
pub const BATCH: usize = 500;

/// A selection, read (see [`Selection`] for what each part means).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub ids: Option<BTreeSet<String>>,
    /// Milliseconds since the epoch, inclusive.
    pub since: Option<i64>,
    /// Milliseconds since the epoch, exclusive.
    pub until: Option<i64>,
    /// Any of these (empty: any status).
    pub status: Vec<StatusFilter>,
    pub processor: Option<String>,
}

/// A time filter: RFC 3339, or a duration ago (`"30m"`).
fn read_time(key: &str, text: &str, now: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.timestamp_millis());
    }
    match humantime::parse_duration(text.trim()) {
        Ok(ago) => Ok(now.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))),
        Err(_) => Err(format!(
            "{key} {text:?} is neither an RFC 3339 time (2026-12-03T08:00:00Z) nor a duration ago (30m)"
        )),
    }
}

impl Filter {
    /// Reads the filter parts of a request; the error names the part.
    pub fn read(
        ids: Option<&[String]>,
        since: Option<&str>,
        until: Option<&str>,
        status: Option<&str>,
        processor: Option<&str>,
    ) -> Result<Filter, String> {
        let now = chrono::Utc::now().timestamp_millis();
        let status = match status {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(str::parse)
                .collect::<Result<_, _>>()?,
        };
        Ok(Filter {
            ids: ids.map(|ids| ids.iter().cloned().collect()),
            since: since.map(|t| read_time("since", t, now)).transpose()?,
            until: until.map(|t| read_time("until", t, now)).transpose()?,
            status,
            processor: processor.map(str::to_owned),
        })
    }

    /// The filter of a replay or purge body; it must name its messages
    /// (`ids`, a filter, or `all`), so that `{}` touches nothing.
    pub fn of_selection(s: &Selection) -> Result<Filter, String> {
        let filter = Filter::read(
            s.ids.as_deref(),
            s.since.as_deref(),
            s.until.as_deref(),
            s.status.as_deref(),
            s.processor.as_deref(),
        )?;
        if filter.is_everything() && !s.all {
            return Err(
                "say which messages: \"ids\", a filter (since, until, status, processor), or \"all\": true"
                    .into(),
            );
        }
        Ok(filter)
    }

    fn is_everything(&self) -> bool {
        self.ids.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.status.is_empty()
            && self.processor.is_none()
    }

    pub fn matches(&self, m: &Message) -> bool {
        if let Some(ids) = &self.ids
            && !ids.contains(&m.id)
        {
            return false;
        }
        let time = m.filter_time();
        if self.since.is_some_and(|since| time < since) || self.until.is_some_and(|u| time >= u) {
            return false;
        }
        if let Some(processor) = &self.processor
            && m.trail.as_ref().is_none_or(|t| &t.processor != processor)
        {
            return false;
        }
        self.status.is_empty()
            || m.trail
                .as_ref()
                .is_some_and(|t| self.status.iter().any(|s| t.matches_status(s)))
    }
}

/// One page of [`find`].
#[derive(Debug)]
pub struct Page {
    pub found: Vec<Browsed>,
    /// Where the next page starts, if more may follow.
    pub next: Option<Position>,
}

/// Up to `limit` messages of `store` after `after` that match `filter`, oldest first.
pub async fn find(
    store: &dyn Store,
    filter: &Filter,
    mut after: Option<Position>,
    limit: usize,
) -> Result<Page, StoreError> {
    let mut found = Vec::new();
    // Ask for what is missing first, then for more each round (a filter
    // that matches few), up to the backend's page.
    let most = store.browse_page().max(1);
    let mut want = limit.clamp(1, most);
    loop {
        let page = store.browse(after.as_ref(), want).await?;
        let Some(last) = page.last() else {
            return Ok(Page { found, next: None });
        };
        let exhausted = page.len() < want;
        after = Some(last.position.clone());
        for browsed in page {
            if filter.matches(&browsed.message) {
                found.push(browsed);
                if found.len() == limit {
                    let next = found.last().map(|b| b.position.clone());
                    return Ok(Page { found, next });
                }
            }
        }
        if exhausted {
            return Ok(Page { found, next: None });
        }
        want = want.saturating_mul(2).min(most);
    }
}

/// Where a replayed message goes: `to_store`, else the store it was dead-lettered from.
pub fn target<'a>(m: &'a Message, to_store: Option<&'a str>) -> Result<&'a str, String> {
    to_store
        .or_else(|| m.trail.as_ref().map(|t| t.store.as_str()))
        .ok_or_else(|| {
            format!(
                "message {} has no failure trail naming the store it came from: give \"to_store\"",
                m.id
            )
        })
}

/// Checks a replay's targets before anything moves: each exists, and none
/// is the source (a replay into its own store would meet its copies again).
pub fn check_target(stores: &Stores, source: &str, target: &str) -> Result<(), String> {
    if target == source {
        return Err(format!(
            "cannot replay store {source:?} into itself: give another \"to_store\""
        ));
    }
    if !stores.contains_key(target) {
        return Err(format!("no store named {target:?} to replay into"));
    }
    Ok(())
}

/// Calls `each` with every message of `store` that matches `filter`, in
/// store order, until it answers an error.
pub async fn each_match<E>(
    store: &dyn Store,
    filter: &Filter,
    mut each: impl FnMut(&Browsed) -> Result<(), E>,
) -> Result<Result<(), E>, StoreError> {
    if !store.stable_positions() {
        // Every page would read the store again from its head: one read of
        // all of it instead (a broker refuses one too deep to hold).
        let depth = usize::try_from(store.depth().await?).unwrap_or(usize::MAX);
        for b in store.browse(None, depth.saturating_add(BATCH)).await? {
            if filter.matches(&b.message)
                && let Err(e) = each(&b)
            {
                return Ok(Err(e));
            }
        }
        return Ok(Ok(()));
    }
    let mut after = None;
    loop {
        let page = find(store, filter, after, BATCH).await?;
        for b in &page.found {
            if let Err(e) = each(b) {
                return Ok(Err(e));
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(Ok(())),
        }
    }
}

/// What a replay (with `to_store` `Some(..)` or the trails' stores) or a
/// purge (`replay` false) would touch now.
pub async fn dry_run(
    stores: &Stores,
    source: &str,
    store: &dyn Store,
    filter: &Filter,
    replay: Option<Option<&str>>,
) -> Result<Result<DryRun, String>, StoreError> {
    let mut matched = 0;
    let mut in_flight = 0;
    let mut targets = BTreeMap::new();
    let walked = each_match(store, filter, |b| {
        matched += 1;
        if b.leased {
            in_flight += 1;
        }
        if let Some(to_store) = replay {
            let target = target(&b.message, to_store)?;
            check_target(stores, source, target)?;
            *targets.entry(target.to_owned()).or_insert(0) += 1;
        }
        Ok(())
    })
    .await?;
    if let Err(e) = walked {
        return Ok(Err(e));
    }
    Ok(Ok(DryRun {
        matched,
        targets,
        in_flight,
    }))
}

/// A message as a replay appends it: as accepted, without its trail.
pub fn replayed(m: &Message) -> Arc<Message> {
    Arc::new(Message {
        trail: None,
        ..m.clone()
    })
}
