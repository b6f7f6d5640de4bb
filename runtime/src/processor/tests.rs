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

/// One attempt, as a script sees it.
struct Attempt {
    /// Attempts (of any message) before this one.
    n: usize,
    /// Attempts of this message before this one.
    again: usize,
    body: String,
}

/// What a script answers: a status and a `Retry-After`.
type Reply = fn(Attempt) -> (u16, Option<&'static str>);

/// Answers each attempt as `reply` says, after `delay`, and records when
/// it came and for which message.
struct Scripted {
    attempts: Arc<Mutex<Vec<(Instant, String)>>>,
    reply: Reply,
    delay: Duration,
}

#[async_trait]
impl Forward for Scripted {
    async fn forward(&self, message: &Message) -> Result<ForwardResponse, ForwardError> {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let again = attempts.iter().filter(|(_, id)| *id == message.id).count();
            attempts.push((Instant::now(), message.id.clone()));
            Attempt {
                n: attempts.len() - 1,
                again,
                body: String::from_utf8_lossy(&message.body).into_owned(),
            }
        };
        tokio::time::sleep(self.delay).await;
        let (status, retry_after) = (self.reply)(attempt);
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
    handle: super::ProcessorHandle,
    store: Arc<MemoryStore>,
    attempts: Arc<Mutex<Vec<(Instant, String)>>>,
    ids: Vec<String>,
    started: Instant,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Run {
    /// A processor `p` with the keys `extra`, `messages` stored before it starts.
    async fn start(extra: &str, messages: usize, reply: Reply) -> Run {
        let bodies = (0..messages).map(|n| format!("{n}")).collect();
        Run::with_bodies(extra, bodies, Duration::ZERO, reply).await
    }

    /// A processor `p` with the keys `extra`, these bodies stored before it
    /// starts, an endpoint that answers after `delay`.
    async fn with_bodies(extra: &str, bodies: Vec<String>, delay: Duration, reply: Reply) -> Run {
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
        for body in bodies {
            let m = Message::new(
                http::Method::POST,
                "/in".into(),
                HeaderMap::new(),
                Bytes::from(body),
            );
            ids.push(m.id.clone());
            store.append(Arc::new(m)).await.unwrap();
        }
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let processor = Processor::new(
            settings,
            store.clone(),
            None,
            Box::new(Scripted {
                attempts: attempts.clone(),
                reply,
                delay,
            }),
            Arc::new(LogResponse),
            None,
            Arc::new(Metrics::new()),
            None,
            Arc::new(Deactivations::in_memory()),
        );
        let stop = CancellationToken::new();
        let started = Instant::now();
        let handle = processor.handle();
        let task = tokio::spawn(processor.run(stop.clone()));
        Run {
            handle,
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
    let run = Run::start("retry_interval = \"1s\"", 1, |a| match a.n {
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
    let run = Run::start("retry_interval = \"300ms\"", 3, |a| match a.n {
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

/// `{"k":"A","i":0}`, `{"k":"B","i":0}`, ... : `per_key` messages for each
/// key, interleaved.
fn keyed_bodies(keys: &[&str], per_key: usize) -> Vec<String> {
    (0..per_key)
        .flat_map(|i| {
            keys.iter()
                .map(move |k| format!(r#"{{"k":"{k}","i":{i}}}"#))
        })
        .collect()
}

/// The attempts' times (ms from the start) per body, in the order they came.
fn times_by_body(
    run: &Run,
    times: &[u128],
    ids: &[String],
    bodies: &[String],
) -> BTreeMap<String, Vec<u128>> {
    let mut out: BTreeMap<String, Vec<u128>> = BTreeMap::new();
    for (t, id) in times.iter().zip(ids) {
        let i = run.ids.iter().position(|x| x == id).unwrap();
        out.entry(bodies[i].clone()).or_default().push(*t);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_key_under_retry_holds_back_only_its_own_later_messages() {
    let bodies = keyed_bodies(&["A", "B", "C"], 3);
    let run = Run::with_bodies(
        "retry_interval = \"300ms\"\norder_key = \"json:/k\"\nconcurrency = 4",
        bodies.clone(),
        Duration::from_millis(10),
        |a| match (a.body.as_str(), a.again) {
            (r#"{"k":"A","i":0}"#, 0..=2) => (500, None),
            _ => (200, None),
        },
    )
    .await;
    let attempts = run.attempts.clone();
    let started = run.started;
    let ids = run.ids.clone();
    let stop = run.stop.clone();
    while run.store.depth().await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.cancel();
    let got = attempts.lock().unwrap().clone();
    let times: Vec<u128> = got
        .iter()
        .map(|(t, _)| (*t - started).as_millis())
        .collect();
    let order: Vec<String> = got.iter().map(|(_, id)| id.clone()).collect();
    let by_body = times_by_body(&run, &times, &order, &bodies);
    // B and C go on at 10 ms a message while A's head waits 300 ms between attempts.
    for k in ["B", "C"] {
        for i in 0..3u128 {
            assert_eq!(
                by_body[&format!(r#"{{"k":"{k}","i":{i}}}"#)],
                [i * 10],
                "{k}{i}"
            );
        }
    }
    assert_eq!(by_body[r#"{"k":"A","i":0}"#], [0, 310, 620, 930]);
    assert_eq!(by_body[r#"{"k":"A","i":1}"#], [940]);
    assert_eq!(by_body[r#"{"k":"A","i":2}"#], [950]);
    // Each key's messages came in store order.
    for k in ["A", "B", "C"] {
        let firsts: Vec<usize> = order
            .iter()
            .map(|id| ids.iter().position(|x| x == id).unwrap())
            .filter(|i| bodies[*i].contains(&format!(r#""k":"{k}""#)))
            .collect();
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_eq!(firsts, sorted, "{k} out of order");
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_that_fails_for_good_is_blocked_alone_until_it_is_activated() {
    let bodies = keyed_bodies(&["A", "B"], 3);
    let run = Run::with_bodies(
        "max_redeliveries = 0\non_failure = \"deactivate\"\norder_key = \"json:/k\"\nconcurrency = 2",
        bodies.clone(),
        Duration::ZERO,
        |a| match (a.body.as_str(), a.again) {
            (r#"{"k":"A","i":0}"#, 0) => (500, None),
            _ => (200, None),
        },
    )
    .await;
    // B's three go; A's first fails for good and A's others wait.
    while run.store.depth().await.unwrap() > 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(run.store.depth().await.unwrap(), 3);
    assert_eq!(run.handle.state(), super::State::Running);
    let blocked = run.handle.blocked_keys();
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].0.as_deref(), Some("A"));
    assert!(blocked[0].1.reason.contains("500"), "{:?}", blocked[0].1);
    assert_eq!(run.attempts.lock().unwrap().len(), 4);
    assert!(run.handle.activate_key(Some("A")));
    let ids = run.ids.clone();
    let (_, order) = run.until_empty().await;
    let bodies_in_order: Vec<usize> = order
        .iter()
        .map(|id| ids.iter().position(|x| x == id).unwrap())
        .collect();
    // A's first again, then its second and third, in store order.
    let a: Vec<usize> = bodies_in_order
        .into_iter()
        .filter(|i| bodies[*i].contains(r#""k":"A""#))
        .collect();
    assert_eq!(a, [0, 0, 2, 4]);
}

#[tokio::test(start_paused = true)]
async fn concurrency_without_order_key_delivers_that_many_at_once() {
    let run = Run::with_bodies(
        "concurrency = 4",
        (0..8).map(|n| n.to_string()).collect(),
        Duration::from_millis(100),
        |_| (200, None),
    )
    .await;
    let (times, _) = run.until_empty().await;
    assert_eq!(times, [0, 0, 0, 0, 100, 100, 100, 100]);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_failing_for_disable_after_deactivates_the_processor() {
    let run = Run::start(
        "retry_interval = \"1s\"\nmax_redeliveries = 100\ndisable_after = \"3s\"",
        2,
        |_| (500, None),
    )
    .await;
    let mut state = run.handle.watch();
    let _ = state
        .wait_for(|s| matches!(s, super::State::Deactivated(_)))
        .await;
    let times: Vec<u128> = run
        .attempts
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| (*t - run.started).as_millis())
        .collect();
    assert_eq!(times, [0, 1000, 2000, 3000]);
    let super::State::Deactivated(d) = run.handle.state() else {
        unreachable!()
    };
    assert!(d.reason.contains("disable_after"), "{}", d.reason);
    // Nothing was lost: both messages wait, the failed one at the head.
    run.stop.cancel();
    assert_eq!(run.store.depth().await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn gone_deactivates_at_once_with_deactivate_on_gone() {
    let run = Run::start("deactivate_on_gone = true", 1, |_| (410, None)).await;
    let mut state = run.handle.watch();
    let _ = state
        .wait_for(|s| matches!(s, super::State::Deactivated(_)))
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(run.attempts.lock().unwrap().len(), 1);
    let super::State::Deactivated(d) = run.handle.state() else {
        unreachable!()
    };
    assert!(d.reason.contains("410"), "{}", d.reason);
}

#[tokio::test(start_paused = true)]
async fn an_activation_starts_the_disable_after_clock_afresh() {
    let run = Run::start(
        "retry_interval = \"1s\"\nmax_redeliveries = 100\ndisable_after = \"3s\"",
        1,
        |_| (500, None),
    )
    .await;
    let mut state = run.handle.watch();
    let _ = state
        .wait_for(|s| matches!(s, super::State::Deactivated(_)))
        .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let activated = Instant::now();
    run.handle.activate().unwrap();
    let _ = state.wait_for(|s| *s == super::State::Running).await;
    let _ = state
        .wait_for(|s| matches!(s, super::State::Deactivated(_)))
        .await;
    // Four attempts again (0, 1, 2, 3 s after the activation), not one.
    let after: Vec<u128> = run
        .attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= activated)
        .map(|(t, _)| (*t - activated).as_millis())
        .collect();
    assert_eq!(after, [0, 1000, 2000, 3000]);
    run.stop.cancel();
}
