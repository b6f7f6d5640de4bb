//! Replay benchmark: how fast a replay moves dead letters out of an
//! embedded dead-letter store, against the store's own ingest rate in the
//! same run. A program that prints figures; it asserts nothing about time.
//!
//! Run: `cargo bench -p wharf --bench dead_letters`.
//!
//! Phases, all against one `wharf run` process:
//! - (a) ingest baseline: `clients` keep-alive connections POST `messages`
//!   1 KiB JSON bodies to a route on an embedded store with no processor.
//! - (b) fill: the same number to a route whose processor's endpoint refuses
//!   connections (no retry, `concurrency = 16`), so each becomes a dead letter
//!   with its trail; timed until the dead-letter store holds them all.
//! - (c) replay: `POST /api/v1/stores/dlq/replay {"all": true, "to_store":
//!   "parking"}` (a store without a processor, so only the move is timed),
//!   polled until the job ends; the time includes its first pass that counts
//!   the matches. Checked: every message moved, the first 1000 in order.
//!
//! With `WHARF_BENCH_BACKEND=amqp` every store is a RabbitMQ classic queue
//! (`wharf-bench-dlq-<run>-<store>`, deleted at the end) on
//! `WHARF_BENCH_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`),
//! and (a) is the ingest rate of such a store. The replay then reads the
//! dead-letter queue with Wharf's short-lived consumers, a batch of 500 from
//! the head each time, and moves it without a total past 65,535 messages.
//!
//! Options (environment variables):
//! - `WHARF_BENCH_BACKEND` `embedded` (default) or `amqp`
//! - `WHARF_BENCH_MESSAGES` dead letters replayed (default 100000)
//! - `WHARF_BENCH_CLIENTS` concurrent ingest connections (default 64)
//! - `WHARF_BENCH_DIR` parent of the data directory (default: the system temp dir)
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark program: a step that cannot go on should stop it loudly"
)]

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};

use common::{
    DEFAULT_LOG, Mode, Wharf, admin_json, env_or, peek_ids, rate, run_load, send, store_depth, text,
};

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

async fn bench() -> Result<()> {
    let messages: usize = env_or("WHARF_BENCH_MESSAGES", 100_000)?;
    let clients: usize = env_or("WHARF_BENCH_CLIENTS", 64)?;
    let parent = std::env::var_os("WHARF_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(parent)?;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")?;
    let endpoint = format!("http://{}/gone", refused.local_addr()?);
    drop(refused);
    let backend: String = env_or("WHARF_BENCH_BACKEND", "embedded".to_owned())?;
    let amqp_url: String = env_or(
        "WHARF_BENCH_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
    )?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let queues: Vec<String> = ["plain", "in", "dlq", "parking"]
        .iter()
        .map(|s| format!("wharf-bench-dlq-{}-{s}", &run[20..]))
        .collect();
    let stores: String = match backend.as_str() {
        "embedded" => "[stores.plain]\n[stores.in]\n[stores.dlq]\n[stores.parking]\n".to_owned(),
        "amqp" => ["plain", "in", "dlq", "parking"]
            .iter()
            .zip(&queues)
            .map(|(store, queue)| {
                format!(
                    "[stores.{store}]\nbackend = \"amqp\"\nurl = {amqp_url:?}\nqueue = {queue:?}\nqueue_type = \"classic\"\n"
                )
            })
            .collect(),
        other => anyhow::bail!("WHARF_BENCH_BACKEND={other:?}: embedded or amqp"),
    };
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
data_dir = {:?}

{stores}

[[routes]]
path = "/plain"
store = "plain"

[[routes]]
path = "/in"
store = "in"

[processors.p]
store = "in"
endpoint = "{endpoint}"
concurrency = 16
max_redeliveries = 0
dead_letter_store = "dlq"
"#,
        dir.path().join("data").display().to_string()
    );
    let result = measure(&backend, dir.path(), &config, messages, clients).await;
    if backend == "amqp" {
        delete_queues(&amqp_url, &queues).await;
    }
    result
}

/// The three phases against one instance of `config`.
async fn measure(
    backend: &str,
    dir: &std::path::Path,
    config: &str,
    messages: usize,
    clients: usize,
) -> Result<()> {
    let store = if backend == "amqp" {
        "a RabbitMQ classic queue"
    } else {
        "an embedded store"
    };
    let mut wharf = Wharf::start(dir, config, DEFAULT_LOG).await?;
    println!(
        "replay benchmark ({backend}): {messages} messages of 1 KiB, {clients} ingest clients"
    );

    let ingest = run_load(
        wharf.ingress,
        "/plain",
        clients,
        Mode::Count(messages),
        Some(wharf.pid),
        false,
    )
    .await?;
    println!("(a) ingest into {store}: {} msg/s", rate(ingest.per_sec()));

    let started = Instant::now();
    run_load(
        wharf.ingress,
        "/in",
        clients,
        Mode::Count(messages),
        Some(wharf.pid),
        false,
    )
    .await?;
    while store_depth(wharf.admin, "dlq").await? < messages as u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fill = started.elapsed();
    println!(
        "(b) {messages} dead letters (ingest, refused forward, move with trail) in {:.1} s: {} msg/s",
        fill.as_secs_f64(),
        rate(messages as f64 / fill.as_secs_f64())
    );
    let head = peek_ids(wharf.admin, "dlq", messages.min(1000)).await?;

    let started = Instant::now();
    let (status, body) = send(
        wharf.admin,
        Method::POST,
        "/api/v1/stores/dlq/replay",
        Bytes::from_static(br#"{"all": true, "to_store": "parking"}"#),
    )
    .await?;
    ensure!(
        status == StatusCode::ACCEPTED,
        "replay: {status} {}",
        text(&body)
    );
    let job: serde_json::Value = serde_json::from_slice(&body)?;
    let path = format!("/api/v1/jobs/{}", job["id"].as_str().unwrap_or_default());
    let done = loop {
        let view = admin_json(wharf.admin, &path).await?;
        if view["state"] != "running" {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    ensure!(done["state"] == "succeeded", "the replay ended {done}");
    let moved = done["done"].as_u64().unwrap_or(0);
    let replay_rate = moved as f64 / took.as_secs_f64();
    println!(
        "(c) replay of {moved} dead letters to another such store in {:.1} s: {} msg/s ({:.2} of the ingest rate)",
        took.as_secs_f64(),
        rate(replay_rate),
        replay_rate / ingest.per_sec()
    );
    let parked = store_depth(wharf.admin, "parking").await?;
    let left = store_depth(wharf.admin, "dlq").await?;
    let order = peek_ids(wharf.admin, "parking", head.len()).await? == head;
    println!(
        "    checked: parking holds {parked} (expected {messages}), dlq {left}, first {} in order: {}",
        head.len(),
        if order { "yes" } else { "NO" }
    );
    ensure!(
        parked == messages as u64 && left == 0 && order,
        "the replay lost or reordered messages"
    );
    wharf.stop().await?;
    Ok(())
}

/// Deletes the bench's queues (what a failed run left included).
async fn delete_queues(url: &str, queues: &[String]) {
    let Ok(connection) =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await
    else {
        eprintln!("could not reach {url} to delete the queues {queues:?}");
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        for queue in queues {
            if let Err(e) = channel
                .queue_delete(
                    queue.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await
            {
                eprintln!("deleting {queue}: {e}");
            }
        }
    }
    let _ = connection.close(200, "bench done".into()).await;
}
