//! The processor's timing, proved exactly under a paused clock: a scripted
//! [`Forward`] in place of HTTP, an in-memory [`Store`] fake in place of a
//! file, and `tokio::time::pause`. (The black-box tests in `tests/` prove
//! the same over real HTTP and SQLite, with loose bounds; these prove the
//! arithmetic to the millisecond.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::forwarder::{Forward, ForwardError, ForwardResponse};
use super::handler::LogResponse;
use super::{Deactivations, Processor};
use crate::config::{Document, Format};
use crate::metrics::Metrics;
use crate::store::{Leased, Message, Receipt, Store, StoreError};

/// A store in memory: the trait's contract, nothing durable.
#[derive(Default)]
struct MemoryStore {
    inner: Mutex<Inner>,
    appended: Notify,
}

#[derive(Default)]
struct Inner {
    messages: BTreeMap<u64, Message>,
    cursor: u64,
    next: u64,
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &str {
        "memory"
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn append(&self, message: Arc<Message>) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.next += 1;
        let seq = inner.next;
        inner.messages.insert(seq, (*message).clone());
        self.appended.notify_one();
        Ok(())
    }

    async fn lease(&self, max: usize) -> Result<Vec<Leased>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let leased: Vec<Leased> = inner
            .messages
            .range(inner.cursor + 1..)
            .take(max)
            .map(|(seq, m)| Leased {
                receipt: Receipt(*seq),
                message: m.clone(),
            })
            .collect();
        if let Some(last) = leased.last() {
            inner.cursor = last.receipt.0;
        }
        Ok(leased)
    }

    async fn ack(&self, receipt: Receipt) -> Result<(), StoreError> {
        self.inner.lock().unwrap().messages.remove(&receipt.0);
        Ok(())
    }

    async fn release(&self, receipt: Receipt) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.cursor = inner.cursor.min(receipt.0.saturating_sub(1));
        Ok(())
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        Ok(self.inner.lock().unwrap().messages.len() as u64)
    }

    async fn peek(&self, limit: usize) -> Result<Vec<Message>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner.messages.values().take(limit).cloned().collect())
    }

    async fn appended(&self) {
        self.appended.notified().await;
    }

    async fn close(&self) {}
}

/// Answers each attempt as `reply` says (given how many came before) and
/// records when it came and for which message.
struct Scripted {
    attempts: Arc<Mutex<Vec<(Instant, String)>>>,
    reply: fn(usize) -> (u16, Option<&'static str>),
}

#[async_trait]
impl Forward for Scripted {
    async fn forward(&self, message: &Message) -> Result<ForwardResponse, ForwardError> {
        let n = {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push((Instant::now(), message.id.clone()));
            attempts.len() - 1
        };
        let (status, retry_after) = (self.reply)(n);
        let mut headers = HeaderMap::new();
        if let Some(after) = retry_after {
            headers.insert(http::header::RETRY_AFTER, after.parse().unwrap());
        }
        Ok(ForwardResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: Bytes::new(),
            elapsed: Duration::ZERO,
        })
    }
}

struct Run {
    store: Arc<MemoryStore>,
    attempts: Arc<Mutex<Vec<(Instant, String)>>>,
    ids: Vec<String>,
    started: Instant,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Run {
    /// A processor `p` with the keys `extra`, `messages` stored before it starts.
    async fn start(
        extra: &str,
        messages: usize,
        reply: fn(usize) -> (u16, Option<&'static str>),
    ) -> Run {
        let text = format!(
            "[stores.s]\n[processors.p]\nstore = \"s\"\nendpoint = \"http://127.0.0.1:1/\"\n{extra}\n"
        );
        let pipeline = Document::parse(&text, Format::Toml)
            .unwrap()
            .validate(std::path::Path::new("."))
            .unwrap();
        let settings = pipeline.processors["p"].clone();
        let store = Arc::new(MemoryStore::default());
        let mut ids = Vec::new();
        for n in 0..messages {
            let m = Message::new(
                http::Method::POST,
                "/in".into(),
                HeaderMap::new(),
                Bytes::from(format!("{n}")),
            );
            ids.push(m.id.clone());
            store.append(Arc::new(m)).await.unwrap();
        }
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let processor = Processor::new(
            settings,
            store.clone(),
            None,
            Arc::new(LogResponse),
            None,
            Arc::new(Metrics::new()),
            None,
            Arc::new(Deactivations::in_memory()),
        )
        .with_forward(Box::new(Scripted {
            attempts: attempts.clone(),
            reply,
        }));
        let stop = CancellationToken::new();
        let started = Instant::now();
        let task = tokio::spawn(processor.run(stop.clone()));
        Run {
            store,
            attempts,
            ids,
            started,
            stop,
            task,
        }
    }

    /// Waits (in paused time) until the store is empty; the attempts' times
    /// from the start, in milliseconds, and their message ids.
    async fn until_empty(self) -> (Vec<u128>, Vec<String>) {
        while self.store.depth().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.stop.cancel();
        self.task.await.unwrap();
        let attempts = self.attempts.lock().unwrap().clone();
        (
            attempts
                .iter()
                .map(|(at, _)| (*at - self.started).as_millis())
                .collect(),
            attempts.into_iter().map(|(_, id)| id).collect(),
        )
    }
}

#[tokio::test(start_paused = true)]
async fn retry_waits_grow_by_the_backoff_factor_up_to_the_cap() {
    let run = Run::start(
        "retry_interval = \"200ms\"\nbackoff_factor = 2.0\nmax_retry_interval = \"500ms\"\nmax_redeliveries = 3\non_failure = \"drop\"",
        1,
        |_| (503, None),
    )
    .await;
    let (times, _) = run.until_empty().await;
    // 200 ms, 400 ms, then 800 ms capped at 500 ms; then dropped.
    assert_eq!(times, [0, 200, 600, 1100]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_of_a_503_replaces_the_retry_interval() {
    let run = Run::start("retry_interval = \"1s\"", 1, |n| match n {
        0 => (503, Some("7")),
        _ => (200, None),
    })
    .await;
    let (times, _) = run.until_empty().await;
    assert_eq!(times, [0, 7000]);
}

#[tokio::test(start_paused = true)]
async fn max_rate_spaces_attempts_evenly() {
    let run = Run::start("max_rate = 4.0", 5, |_| (200, None)).await;
    let (times, _) = run.until_empty().await;
    assert_eq!(times, [0, 250, 500, 750, 1000]);
}

#[tokio::test(start_paused = true)]
async fn an_interval_round_takes_batch_messages() {
    let run = Run::start("interval = \"1s\"\nbatch = 2", 5, |_| (200, None)).await;
    let (times, ids) = run.until_empty().await;
    assert_eq!(times, [0, 0, 1000, 1000, 2000]);
    assert_eq!(ids.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_message_under_retry_holds_back_the_ones_behind_it() {
    let run = Run::start("retry_interval = \"300ms\"", 3, |n| match n {
        0 | 1 => (500, None),
        _ => (200, None),
    })
    .await;
    let expected = run.ids.clone();
    let (times, ids) = run.until_empty().await;
    assert_eq!(times, [0, 300, 600, 600, 600]);
    assert_eq!(
        ids,
        [
            expected[0].clone(),
            expected[0].clone(),
            expected[0].clone(),
            expected[1].clone(),
            expected[2].clone()
        ]
    );
}
