//! ActiveMQ benchmark: ingest onto and in-order forwarding from activemq
//! stores (`backend = "activemq"`, STOMP 1.2) of a real `wharf run` process,
//! against a raw STOMP client on the same broker in the same run, plus the
//! process's peak memory and what a depth (a browse of the whole queue)
//! costs. A program that prints figures; it asserts nothing about time.
//!
//! Run: `.ci/activemq && cargo bench -p wharf --bench activemq` (the
//! project's broker instance, STOMP at 127.0.0.1:61613). Queues are named
//! `wharf-bench.<run>.<role>` and drained at the end.
//!
//! The raw client speaks STOMP through Wharf's own frame codec (the wire
//! format is the same for both; what differs is everything else):
//! - (a) ingest: `clients` keep-alive HTTP/1.1 connections POST 1 KiB JSON
//!   for a fixed time to a route on an activemq store with no processor,
//!   versus the raw client sending persistent 1 KiB SENDs with a receipt each
//!   and [`RECEIPT_WINDOW`] receipts outstanding (the store's own window,
//!   which `clients` = [`RECEIPT_WINDOW`] connections fill).
//! - (b) forward: a store filled through Wharf's ingress with `messages`
//!   messages while its continuous processor is deactivated is drained to a
//!   hyper backend in this process, versus the raw client on a thread and
//!   runtime of its own: subscribe with `ack:client-individual` and the same
//!   prefetch, POST each message to the same backend one at a time over one
//!   keep-alive connection, then ACK it. Checks: every Idempotency-Key
//!   arrives exactly once, the head arrives first and in order, and the
//!   queue is empty afterwards.
//! - depth: the time of one `GET /api/v1/stores` depth of the full store
//!   (a browse of `messages` messages).
//! - memory: VmHWM (peak RSS) of the wharf process.
//!
//! Options: `WHARF_BENCH_SECONDS` (default 10), `WHARF_BENCH_WARMUP` (1),
//! `WHARF_BENCH_MESSAGES` (20000), `WHARF_BENCH_CLIENTS` ([`RECEIPT_WINDOW`]),
//! `WHARF_BENCH_RUST_LOG`.
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark program: a step that cannot go on should stop it loudly"
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::{Bytes, BytesMut};
use futures_lite::StreamExt;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::{Encoder, FramedRead};
use wharf::config::defaults::PREFETCH;
use wharf::store::activemq::RECEIPT_WINDOW;
use wharf::store::activemq::frame::{Codec, Frame, Item};

use common::{
    BODY_SIZE, DEFAULT_LOG, DeliveryCheck, Forward, Mode, Sink, Wharf, call, connect, env_or, post,
    proc_status_kib, rate, run_load, show_mib, store_depth, text,
};

const STOMP: &str = "127.0.0.1:61613";
const GOAL: f64 = 0.80;

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

struct Stomp {
    write: tokio::net::tcp::OwnedWriteHalf,
    read: FramedRead<tokio::net::tcp::OwnedReadHalf, Codec>,
}

impl Stomp {
    async fn connect() -> Result<Stomp> {
        let tcp = TcpStream::connect(STOMP).await.with_context(|| {
            format!("ActiveMQ's STOMP port {STOMP} (start it with .ci/activemq)")
        })?;
        tcp.set_nodelay(true)?;
        let (read, write) = tcp.into_split();
        let mut s = Stomp {
            write,
            read: FramedRead::new(read, Codec::default()),
        };
        s.send(&[Frame::new("CONNECT")
            .header("accept-version", "1.2")
            .header("host", "localhost")])
            .await?;
        let connected = s.next().await?;
        ensure!(connected.command == "CONNECTED", "{connected:?}");
        Ok(s)
    }

    async fn send(&mut self, frames: &[Frame]) -> Result<()> {
        let mut buf = BytesMut::new();
        for f in frames {
            Codec::default().encode(f.clone(), &mut buf)?;
        }
        self.write.write_all(&buf).await?;
        Ok(())
    }

    async fn next(&mut self) -> Result<Frame> {
        loop {
            match self.read.next().await.context("broker closed")?? {
                Item::Frame(f) => return Ok(f),
                Item::HeartBeat => {}
            }
        }
    }
}

fn body(seq: u64) -> Bytes {
    let mut b = format!("{{\"raw\":{seq},\"pad\":\"").into_bytes();
    b.resize(BODY_SIZE - 2, b'x');
    b.extend_from_slice(b"\"}");
    Bytes::from(b)
}

/// Persistent SENDs with receipts, `window` outstanding: for `mode`. Returns
/// (sent in the measured window, its length, the ids sent).
async fn raw_publish(queue: &str, mode: Mode) -> Result<(u64, Duration, Vec<String>)> {
    let conn = Stomp::connect().await?;
    let (mut read, mut write) = (conn.read, conn.write);
    let window = Arc::new(Semaphore::new(RECEIPT_WINDOW));
    let receipts = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(item) = read.next().await {
                if let Ok(Item::Frame(f)) = item {
                    ensure!(f.command == "RECEIPT", "{f:?}");
                    window.add_permits(1);
                    n += 1;
                }
            }
            Ok::<u64, anyhow::Error>(n)
        })
    };
    let start = Instant::now();
    let (from, until, count) = match mode {
        Mode::Timed { warmup, measure } => (start + warmup, Some(start + warmup + measure), None),
        Mode::Count(n) => (start, None, Some(n as u64)),
    };
    let destination = format!("/queue/{queue}");
    let (mut seq, mut measured, mut ids) = (0u64, 0u64, Vec::new());
    loop {
        let now = Instant::now();
        if until.is_some_and(|u| now >= u) || count.is_some_and(|c| seq >= c) {
            break;
        }
        window.acquire().await?.forget();
        seq += 1;
        let id = format!("raw-{queue}-{seq}");
        let frame = Frame::new("SEND")
            .header("destination", destination.clone())
            .header("persistent", "true")
            .header("wharf-id", id.clone())
            .header("receipt", seq.to_string())
            .body(body(seq));
        let mut buf = BytesMut::new();
        Codec::default().encode(frame, &mut buf)?;
        write.write_all(&buf).await?;
        if Instant::now() >= from {
            measured += 1;
        }
        if count.is_some() {
            ids.push(id);
        }
    }
    // All receipts in before the clock stops.
    let _ = window.acquire_many(RECEIPT_WINDOW as u32).await?;
    let elapsed = Instant::now() - from;
    drop(write);
    receipts.abort();
    Ok((measured, elapsed, ids))
}

/// Consumes `n` messages with client-individual acks, POSTing each to `sink`
/// before acking it; on a runtime of its own. Returns when all are acked.
fn raw_forward(
    queue: String,
    sink: SocketAddr,
    n: usize,
) -> std::thread::JoinHandle<Result<Instant>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut s = Stomp::connect().await?;
            let mut http = connect(sink).await?;
            let host = HeaderValue::from_str(&sink.to_string())?;
            let started = Instant::now();
            s.send(&[Frame::new("SUBSCRIBE")
                .header("id", "raw")
                .header("destination", format!("/queue/{queue}"))
                .header("ack", "client-individual")
                .header("activemq.prefetchSize", PREFETCH.to_string())])
                .await?;
            for _ in 0..n {
                let m = s.next().await?;
                ensure!(m.command == "MESSAGE", "{m:?}");
                let key = m.get("wharf-id").map(str::to_owned);
                http.ready().await?;
                let r = http
                    .send_request(post("/sink", &host, m.body.clone(), key))
                    .await?;
                ensure!(r.status() == StatusCode::OK, "backend {}", r.status());
                r.into_body().collect().await?;
                s.send(&[Frame::new("ACK").header("id", m.get("ack").unwrap_or_default())])
                    .await?;
            }
            // The last ACK is processed before this receipt.
            s.send(&[Frame::new("DISCONNECT").header("receipt", "bye")])
                .await?;
            let _ = s.next().await;
            Ok(started)
        })
    })
}

/// Empties `queue` (auto acks until it stays quiet).
async fn drain(queue: &str) -> Result<u64> {
    let mut s = Stomp::connect().await?;
    s.send(&[Frame::new("SUBSCRIBE")
        .header("id", "drain")
        .header("destination", format!("/queue/{queue}"))
        .header("ack", "auto")
        .header("activemq.prefetchSize", "1000")])
        .await?;
    let mut n = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), s.next()).await {
        n += 1;
    }
    Ok(n)
}

async fn bench() -> Result<()> {
    let seconds: f64 = env_or("WHARF_BENCH_SECONDS", 10.0)?;
    let warmup: f64 = env_or("WHARF_BENCH_WARMUP", 1.0)?;
    let messages: usize = env_or("WHARF_BENCH_MESSAGES", 20_000)?;
    let clients: usize = env_or("WHARF_BENCH_CLIENTS", RECEIPT_WINDOW)?;
    let rust_log: String = env_or("WHARF_BENCH_RUST_LOG", DEFAULT_LOG.to_owned())?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let run = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let q = |role: &str| format!("wharf-bench.{run}.{role}");
    let timed = Mode::Timed {
        warmup: Duration::from_secs_f64(warmup),
        measure: Duration::from_secs_f64(seconds),
    };
    let tmp = tempfile::tempdir()?;
    let (sink_addr, sink) = Sink::start().await?;
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
data_dir = "{data}"

[stores.ingest]
backend = "activemq"
url = "stomp://{STOMP}"
queue = "{ingest}"

[stores.outbox]
backend = "activemq"
url = "stomp://{STOMP}"
queue = "{outbox}"

[[routes]]
path = "/ingest"
store = "ingest"

[[routes]]
path = "/outbox"
store = "outbox"

[processors.forward]
store = "outbox"
endpoint = "http://{sink_addr}/sink"
"#,
        data = tmp.path().join("data").display(),
        ingest = q("ingest"),
        outbox = q("outbox"),
    );
    let mut wharf = Wharf::start(tmp.path(), &config, &rust_log).await?;
    let (status, b) = call(
        wharf.admin,
        Method::POST,
        "/api/v1/processors/forward/deactivate",
    )
    .await?;
    ensure!(
        status == StatusCode::OK,
        "deactivate: {status} {}",
        text(&b)
    );
    eprintln!(
        "activemq bench: {seconds} s ingest x {clients} clients, window {RECEIPT_WINDOW}, {messages} forwarded, prefetch {PREFETCH}; queues wharf-bench.{run}.*"
    );

    eprintln!("(a) ingest: raw STOMP ...");
    let (raw_n, raw_t, _) = raw_publish(&q("raw-ingest"), timed).await?;
    let raw_in = raw_n as f64 / raw_t.as_secs_f64();
    eprintln!("    {} msg/s", rate(raw_in));
    drain(&q("raw-ingest")).await?;
    eprintln!("(a) ingest: wharf ...");
    let wharf_in = run_load(
        wharf.ingress,
        "/ingest",
        clients,
        timed,
        Some(wharf.pid),
        false,
    )
    .await?;
    eprintln!("    {}", wharf_in.summary());
    drain(&q("ingest")).await?;

    eprintln!("(b) fill: {messages} through wharf ...");
    let fill = run_load(
        wharf.ingress,
        "/outbox",
        clients,
        Mode::Count(messages),
        Some(wharf.pid),
        true,
    )
    .await?;
    ensure!(fill.non_202 == 0, "{} non-202 in the fill", fill.non_202);
    // Depth browses the whole queue: its cost, uncached (the cache holds 1 s).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = Instant::now();
    let depth = store_depth(wharf.admin, "outbox").await?;
    let depth_ms = t.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        depth == messages as u64,
        "depth {depth} after {messages} 202s"
    );
    let head = common::peek_ids(wharf.admin, "outbox", usize::from(PREFETCH)).await?;

    eprintln!("(b) forward: wharf ...");
    sink.reset();
    let activated = Instant::now();
    let (status, b) = call(
        wharf.admin,
        Method::POST,
        "/api/v1/processors/forward/activate",
    )
    .await?;
    ensure!(status == StatusCode::OK, "activate: {status} {}", text(&b));
    sink.wait_for(messages, Duration::from_secs(600)).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let final_depth = store_depth(wharf.admin, "outbox").await?;
    let arrivals = sink.take();
    let wharf_fwd = Forward::from_arrivals(&arrivals, messages, activated);
    let check = DeliveryCheck::new(&arrivals, &fill.ids, &head, final_depth);
    eprintln!(
        "    {} msg/s; {}",
        rate(wharf_fwd.per_sec()),
        check.summary()
    );

    eprintln!("(b) fill + forward: raw STOMP ...");
    let (_, _, raw_ids) = raw_publish(&q("raw-forward"), Mode::Count(messages)).await?;
    sink.reset();
    let started = raw_forward(q("raw-forward"), sink_addr, messages)
        .join()
        .unwrap()?;
    let raw_arrivals = sink.take();
    let raw_fwd = Forward::from_arrivals(&raw_arrivals, messages, started);
    let raw_check = DeliveryCheck::new(&raw_arrivals, &raw_ids, &raw_ids[..PREFETCH as usize], 0);
    eprintln!(
        "    {} msg/s; {}",
        rate(raw_fwd.per_sec()),
        raw_check.summary()
    );
    let left = drain(&q("raw-forward")).await?;

    let hwm = proc_status_kib(wharf.pid, "VmHWM");
    let exit = wharf.stop().await?;
    let (warnings, tail) = wharf.log_summary();

    println!();
    println!(
        "== Wharf activemq benchmark ({cores} cores, release; ActiveMQ Classic over STOMP; {seconds} s x {clients} clients ingest, window {RECEIPT_WINDOW}, {messages} forwarded, prefetch {PREFETCH})"
    );
    let ratio_in = wharf_in.per_sec() / raw_in;
    let ratio_fwd = wharf_fwd.per_sec() / raw_fwd.per_sec();
    let verdict = |r: f64| if r >= GOAL { "goal met" } else { "goal MISSED" };
    println!(
        "ingest   raw STOMP {:>8} msg/s   wharf {:>8} msg/s (p50 {:.2} ms, p99 {:.2} ms)   ratio {ratio_in:.2} ({} >= {GOAL})",
        rate(raw_in),
        rate(wharf_in.per_sec()),
        wharf_in.latency(0.5),
        wharf_in.latency(0.99),
        verdict(ratio_in)
    );
    println!(
        "forward  raw STOMP {:>8} msg/s   wharf {:>8} msg/s   ratio {ratio_fwd:.2} ({} >= {GOAL}); wharf: {}; raw: {}",
        rate(raw_fwd.per_sec()),
        rate(wharf_fwd.per_sec()),
        verdict(ratio_fwd),
        check.summary(),
        raw_check.summary()
    );
    println!("depth    one browse of {messages} messages: {depth_ms:.0} ms (kept 1 s)");
    println!("peak RSS wharf {}", show_mib(hwm));
    println!("wharf exit {exit}; {warnings} WARN/ERROR log line(s); raw-forward queue left {left}");
    if warnings > 0 {
        for line in tail {
            println!("  {line}");
        }
    }
    ensure!(check.ok() && raw_check.ok(), "delivery check failed");
    Ok(())
}
