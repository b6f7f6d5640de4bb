//! RabbitMQ benchmark: ingest onto and in-order forwarding from amqp stores
//! (`backend = "amqp"`) of a real `wharf run` process, against raw lapin on
//! the same broker in the same run, for classic and quorum queues, plus the
//! process's peak memory. A program that prints figures; it asserts nothing
//! about time.
//!
//! Run: `cargo bench -p wharf --bench amqp` (needs RabbitMQ, by default at
//! 127.0.0.1:5672 as guest/guest). Every queue it uses is named
//! `wharf-bench-<run>-<type>-<role>` and deleted at the end, also when a step
//! fails.
//!
//! Phases, for each queue type, all in one run:
//! - (a) ingest: `clients` keep-alive HTTP/1.1 connections POST 1 KiB JSON for
//!   a fixed time to a route on an amqp store with no processor, versus raw
//!   lapin in this process: one channel in confirm mode publishing persistent
//!   1 KiB messages (no `mandatory` flag, which Wharf sets; it costs the
//!   broker a few per cent) to a durable queue of the same type with
//!   [`CONFIRM_WINDOW`] publishes awaiting their confirm (the amqp store's own
//!   limit, which `clients` = [`CONFIRM_WINDOW`] connections fill). Queues are
//!   purged or deleted after each run so that depth does not build up.
//! - (b) forward: an amqp store filled through Wharf's ingress with
//!   `messages` messages while its continuous processor is deactivated is
//!   drained to a hyper backend in this process, versus raw lapin in its own
//!   process (this program re-executed as `raw-forward`, like Wharf's
//!   forwarder not sharing a runtime with the backend): consume with manual
//!   acks and the same prefetch, POST each delivery to the same backend one at
//!   a time over one keep-alive connection, then ack it. Checks: every
//!   Idempotency-Key arrives exactly once, Wharf's prefetched head arrives
//!   first and in order, and both queues are empty afterwards.
//! - (c) memory: VmRSS of the wharf process after each phase, VmHWM (peak
//!   RSS) at the end.
//!
//! Besides the rates it prints, per phase, the CPU of Wharf (by thread), of the
//! load generator or raw client, of the broker (`beam.smp`, when found in
//! /proc) and of the whole machine, and for forwarding the stalls: gaps of at
//! least 0.5 ms between two arrivals at the backend.
//!
//! Options (environment variables):
//! - `WHARF_BENCH_SECONDS` measured seconds of each ingest run (default 10)
//! - `WHARF_BENCH_WARMUP` unmeasured seconds before each ingest run (default 1)
//! - `WHARF_BENCH_MESSAGES` messages forwarded in (b) (default 20000)
//! - `WHARF_BENCH_CLIENTS` concurrent ingest connections (default
//!   [`CONFIRM_WINDOW`]); raw lapin keeps [`CONFIRM_WINDOW`] confirms
//!   outstanding whatever this says
//! - `WHARF_BENCH_QUEUE_TYPES` which queue types, in order (default
//!   `classic,quorum`)
//! - `WHARF_BENCH_AMQP_URL` the broker (default
//!   `amqp://guest:guest@127.0.0.1:5672/%2f`)
//! - `WHARF_BENCH_RUST_LOG` log filter of the wharf process (default as the
//!   delivery benchmark: the listening addresses are read from its INFO lines)
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark program: a step that cannot go on should stop it loudly"
)]

mod common;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures_lite::StreamExt;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use wharf::config::defaults::PREFETCH;
use wharf::store::amqp::CONFIRM_WINDOW;

use common::{
    DEFAULT_LOG, DeliveryCheck, Forward, Helper, LoadStats, Mode, Sink, Snapshot, Usage, Wharf,
    admin_json, call, connect, cpu_seconds, env_or, json_body, percentile, post, proc_status_kib,
    rate, run_load, show_cpu, show_machine, show_mib, show_threads, store_depth, text, verdict,
};

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Goal for both ratios (wharf / raw lapin).
const GOAL: f64 = 0.80;
/// A gap between two arrivals at the backend this long counts as a stall.
const STALL_US: u64 = 500;

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; the benchmark ignores its arguments
    // except the ones that make it the raw forwarding process.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("raw-forward") {
        return raw_forward(&args[2..]);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

/// The two RabbitMQ queue types an amqp store can use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }

    /// Wharf's route to the ingest-only store.
    fn ingest_path(self) -> &'static str {
        match self {
            QueueType::Classic => "/classic/ingest",
            QueueType::Quorum => "/quorum/ingest",
        }
    }

    /// Wharf's route to the processor's store.
    fn outbox_path(self) -> &'static str {
        match self {
            QueueType::Classic => "/classic/outbox",
            QueueType::Quorum => "/quorum/outbox",
        }
    }
}

impl FromStr for QueueType {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<QueueType> {
        match s.trim() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => bail!("unknown queue type {other:?} (classic or quorum)"),
        }
    }
}

struct Options {
    seconds: f64,
    warmup: f64,
    messages: usize,
    clients: usize,
    types: Vec<QueueType>,
    url: String,
    rust_log: String,
}

impl Options {
    fn from_env() -> Result<Options> {
        let types: String = env_or("WHARF_BENCH_QUEUE_TYPES", "classic,quorum".to_owned())?;
        let o = Options {
            seconds: env_or("WHARF_BENCH_SECONDS", 10.0)?,
            warmup: env_or("WHARF_BENCH_WARMUP", 1.0)?,
            messages: env_or("WHARF_BENCH_MESSAGES", 20_000)?,
            clients: env_or("WHARF_BENCH_CLIENTS", CONFIRM_WINDOW)?,
            types: types
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<QueueType>>>()?,
            url: env_or("WHARF_BENCH_AMQP_URL", DEFAULT_URL.to_owned())?,
            rust_log: env_or("WHARF_BENCH_RUST_LOG", DEFAULT_LOG.to_owned())?,
        };
        ensure!(o.seconds > 0.0, "WHARF_BENCH_SECONDS must be > 0");
        ensure!(o.warmup >= 0.0, "WHARF_BENCH_WARMUP must be >= 0");
        ensure!(o.messages >= 2, "WHARF_BENCH_MESSAGES must be >= 2");
        ensure!(o.clients >= 1, "WHARF_BENCH_CLIENTS must be >= 1");
        ensure!(!o.types.is_empty(), "WHARF_BENCH_QUEUE_TYPES is empty");
        Ok(o)
    }
}

// ---------------------------------------------------------------------------
// The whole run

/// The figures of one queue type.
struct Figures {
    queue_type: QueueType,
    raw_in: Publish,
    raw_in_broker: Option<f64>,
    wharf_in: LoadStats,
    wharf_in_broker: Option<f64>,
    fill: LoadStats,
    wharf_fwd: Forward,
    wharf_fwd_usage: Usage,
    wharf_fwd_broker: Option<f64>,
    check: DeliveryCheck,
    raw_fill: Publish,
    raw_fwd: Forward,
    raw_fwd_usage: Usage,
    raw_fwd_broker: Option<f64>,
    raw_fwd_cpu: Option<f64>,
    raw_check: DeliveryCheck,
    /// VmRSS of wharf after its ingest run, after the fill, after forwarding.
    rss: [Option<u64>; 3],
}

async fn bench() -> Result<()> {
    let opt = Options::from_env()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let broker = Broker::connect(&opt.url)
        .await
        .with_context(|| format!("RabbitMQ at {} (set WHARF_BENCH_AMQP_URL)", opt.url))?;
    let broker_pid = broker_pid();
    let run = uuid::Uuid::now_v7().simple().to_string();
    // Declared before `wharf`, so dropped after it: no consumer re-declares a deleted queue.
    let queues = Queues::new(&opt.url, &run[20..]);
    let tmp = tempfile::tempdir()?;
    eprintln!(
        "amqp bench: {} s ingest (+{} s warm-up) x {} clients, raw window {CONFIRM_WINDOW}, {} forwarded messages, prefetch {PREFETCH}; queues wharf-bench-{}-*; broker pid {}",
        opt.seconds,
        opt.warmup,
        opt.clients,
        opt.messages,
        queues.run,
        broker_pid.map_or_else(
            || "unknown (no broker CPU figures)".to_owned(),
            |p| p.to_string()
        )
    );

    let (sink_addr, sink) = Sink::start().await?;
    let config = wharf_config(&opt, &queues, tmp.path(), sink_addr);
    let mut wharf = Wharf::start(tmp.path(), &config, &opt.rust_log).await?;
    // The processors must not drain their stores while they are filled.
    for t in &opt.types {
        let path = format!("/api/v1/processors/forward-{}/deactivate", t.as_str());
        let (status, body) = call(wharf.admin, Method::POST, &path).await?;
        ensure!(status == StatusCode::OK, "{path}: {status} {}", text(&body));
    }
    eprintln!(
        "wharf pid {} ingress {} admin {}; backend {sink_addr}",
        wharf.pid, wharf.ingress, wharf.admin
    );

    let mut figures = Vec::new();
    for &t in &opt.types {
        let f = bench_queue_type(
            &opt, t, &broker, broker_pid, &queues, &wharf, &sink, sink_addr,
        )
        .await?;
        figures.push(f);
    }

    // (c) memory, then stop; then the queues go.
    let hwm = proc_status_kib(wharf.pid, "VmHWM");
    let rss_end = proc_status_kib(wharf.pid, "VmRSS");
    let stopped = Instant::now();
    let wharf_exit = wharf.stop().await?;
    let stop_time = stopped.elapsed();
    let (log_warnings, log_tail) = wharf.log_summary();
    drop(wharf);
    broker.close().await;
    let deleted = queues.delete_all();

    // The report.
    println!();
    println!(
        "== Wharf amqp benchmark ({cores} cores, release; {} s x {} clients ingest, raw window {CONFIRM_WINDOW}, {} messages forwarded, prefetch {PREFETCH})",
        opt.seconds, opt.clients, opt.messages
    );
    for f in &figures {
        report(f, cores);
    }
    println!(
        "peak RSS wharf {} (VmHWM over the whole run; VmRSS at the end {})",
        show_mib(hwm),
        show_mib(rss_end)
    );
    println!(
        "wharf exit     {wharf_exit} after SIGTERM ({} ms); {log_warnings} WARN/ERROR log line(s); queues deleted {deleted}",
        stop_time.as_millis()
    );
    if log_warnings > 0 || !wharf_exit.success() {
        println!("wharf log tail:");
        for line in log_tail {
            println!("  {line}");
        }
    }
    for f in &figures {
        if !f.check.ok() || !f.raw_check.ok() {
            bail!(
                "{}: delivery check failed: wharf {}; raw {}",
                f.queue_type.as_str(),
                f.check.summary(),
                f.raw_check.summary()
            );
        }
        ensure!(
            f.wharf_in.non_202 == 0 && f.fill.non_202 == 0,
            "{}: wharf answered {} non-202 (first: {})",
            f.queue_type.as_str(),
            f.wharf_in.non_202 + f.fill.non_202,
            f.wharf_in
                .first_error
                .as_deref()
                .or(f.fill.first_error.as_deref())
                .unwrap_or("?")
        );
    }
    Ok(())
}

#[allow(
    clippy::too_many_arguments,
    reason = "the run's shared pieces, passed down once"
)]
async fn bench_queue_type(
    opt: &Options,
    t: QueueType,
    broker: &Broker,
    broker_pid: Option<u32>,
    queues: &Queues,
    wharf: &Wharf,
    sink: &Sink,
    sink_addr: SocketAddr,
) -> Result<Figures> {
    let name = t.as_str();
    let timed = Mode::Timed {
        warmup: Duration::from_secs_f64(opt.warmup),
        measure: Duration::from_secs_f64(opt.seconds),
    };

    // (a) ingest: raw first, then wharf.
    let raw_queue = queues.name(t, "raw-ingest");
    broker.declare(&raw_queue, t).await?;
    eprintln!("[{name}] (a) ingest: raw lapin, confirmed publishing ...");
    let b = BrokerCpu::start(broker_pid);
    let raw_in = publish(&opt.url, &raw_queue, CONFIRM_WINDOW, timed).await?;
    let raw_in_broker = b.cores();
    eprintln!("    {}", raw_in.summary());
    broker.delete(&raw_queue).await?;

    eprintln!("[{name}] (a) ingest: wharf ...");
    let b = BrokerCpu::start(broker_pid);
    let wharf_in = run_load(
        wharf.ingress,
        t.ingest_path(),
        opt.clients,
        timed,
        Some(wharf.pid),
        false,
    )
    .await?;
    let wharf_in_broker = b.cores();
    eprintln!("    {}", wharf_in.summary());
    let rss_after_ingest = proc_status_kib(wharf.pid, "VmRSS");
    broker.purge(&queues.name(t, "ingest")).await?;

    // (b) fill the deactivated processor's store through the ingress.
    let store = format!("outbox-{name}");
    eprintln!(
        "[{name}] (b) fill: {} messages into the deactivated processor's store ...",
        opt.messages
    );
    let fill = run_load(
        wharf.ingress,
        t.outbox_path(),
        opt.clients,
        Mode::Count(opt.messages),
        Some(wharf.pid),
        true,
    )
    .await?;
    eprintln!("    {}", fill.summary());
    ensure!(
        fill.non_202 == 0,
        "{store}: {} non-202 during the fill, first: {}",
        fill.non_202,
        fill.first_error.as_deref().unwrap_or("?")
    );
    // The consumer opened at the processor's first lease holds up to `prefetch`
    // deliveries; depth counts them once they have arrived.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let depth = store_depth(wharf.admin, &store).await?;
        if depth == opt.messages as u64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{store}: depth {depth} after {} 202s",
            fill.accepted
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_after_fill = proc_status_kib(wharf.pid, "VmRSS");
    // What Wharf holds (prefetched, in queue order) must arrive first.
    let head = held_ids(wharf.admin, &store).await?;

    // (b) forward: wharf, from activation until the backend has them all.
    eprintln!("[{name}] (b) forward: wharf continuous processor ...");
    sink.reset();
    let b = BrokerCpu::start(broker_pid);
    let before = Snapshot::take(Some(wharf.pid));
    let activated = before.at;
    let path = format!("/api/v1/processors/forward-{name}/activate");
    let (status, body) = call(wharf.admin, Method::POST, &path).await?;
    ensure!(status == StatusCode::OK, "{path}: {status} {}", text(&body));
    sink.wait_for(opt.messages, Duration::from_secs(300))
        .await?;
    let wharf_fwd_usage = Usage::between(&before, &Snapshot::take(Some(wharf.pid)));
    let wharf_fwd_broker = b.cores();
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    let final_depth = loop {
        let d = store_depth(wharf.admin, &store).await?;
        if d == 0 || Instant::now() > drain_deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Anything delivered twice would show up in this grace period.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after_forward = proc_status_kib(wharf.pid, "VmRSS");
    let arrivals = sink.take();
    let wharf_fwd = Forward::from_arrivals(&arrivals, opt.messages, activated);
    let check = DeliveryCheck::new(&arrivals, &fill.ids, &head, final_depth);
    eprintln!(
        "    {} msg/s; {}",
        rate(wharf_fwd.per_sec()),
        check.summary()
    );

    // (b) forward baseline: raw fill, then raw consume + forward + ack.
    let raw_queue = queues.name(t, "raw-forward");
    broker.declare(&raw_queue, t).await?;
    eprintln!(
        "[{name}] (b) fill: {} messages with raw lapin ...",
        opt.messages
    );
    let raw_fill = publish(
        &opt.url,
        &raw_queue,
        CONFIRM_WINDOW,
        Mode::Count(opt.messages),
    )
    .await?;
    eprintln!("    {}", raw_fill.summary());
    let ready = broker.ready(&raw_queue).await?;
    ensure!(
        ready == opt.messages as u64,
        "{raw_queue}: {ready} ready after publishing {}",
        opt.messages
    );
    eprintln!("[{name}] (b) forward: raw lapin consume + POST + ack (own process) ...");
    sink.reset();
    let mut client = Helper::start(&[
        "raw-forward".to_owned(),
        opt.url.clone(),
        raw_queue.clone(),
        sink_addr.to_string(),
        opt.messages.to_string(),
        PREFETCH.to_string(),
    ])?;
    let b = BrokerCpu::start(broker_pid);
    let started = client.go()?;
    let before = Snapshot::take(None);
    sink.wait_for(opt.messages, Duration::from_secs(300))
        .await?;
    let raw_fwd_usage = Usage::between(&before, &Snapshot::take(None));
    let raw_fwd_broker = b.cores();
    let client_cpu = client.finish()?;
    // Acks are settled asynchronously (a quorum queue applies them through
    // its log): wait as for Wharf's store.
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    let raw_depth = loop {
        let d = broker.ready(&raw_queue).await?;
        if d == 0 || Instant::now() > drain_deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let raw_arrivals = sink.take();
    let raw_fwd = Forward::from_arrivals(&raw_arrivals, opt.messages, started);
    let raw_check = DeliveryCheck::new(&raw_arrivals, &raw_fill.ids, &[], raw_depth);
    eprintln!(
        "    {} msg/s; {}",
        rate(raw_fwd.per_sec()),
        raw_check.summary()
    );
    broker.delete(&raw_queue).await?;
    let raw_fwd_cpu = client_cpu.map(|c| c / raw_fwd.elapsed.as_secs_f64());

    Ok(Figures {
        queue_type: t,
        raw_in,
        raw_in_broker,
        wharf_in,
        wharf_in_broker,
        fill,
        wharf_fwd,
        wharf_fwd_usage,
        wharf_fwd_broker,
        check,
        raw_fill,
        raw_fwd,
        raw_fwd_usage,
        raw_fwd_broker,
        raw_fwd_cpu,
        raw_check,
        rss: [rss_after_ingest, rss_after_fill, rss_after_forward],
    })
}

fn report(f: &Figures, cores: usize) {
    let t = f.queue_type.as_str();
    let ingest_ratio = f.wharf_in.per_sec() / f.raw_in.per_sec();
    let forward_ratio = f.wharf_fwd.per_sec() / f.raw_fwd.per_sec();
    println!("-- queue_type = {t}");
    println!(
        "ingest   wharf {:>7} msg/s  p50 {:>6.2} ms  p99 {:>6.2} ms | raw lapin   {:>7} msg/s  p50 {:>6.2} ms  p99 {:>6.2} ms | ratio {:.2} (goal >= {GOAL:.2}) {}",
        rate(f.wharf_in.per_sec()),
        f.wharf_in.latency(0.50),
        f.wharf_in.latency(0.99),
        rate(f.raw_in.per_sec()),
        f.raw_in.latency(0.50),
        f.raw_in.latency(0.99),
        ingest_ratio,
        verdict(ingest_ratio >= GOAL)
    );
    println!(
        "forward  wharf {:>7} msg/s  gap p50 {:>5.3} ms p99 {:>5.3} ms | raw lapin   {:>7} msg/s  gap p50 {:>5.3} ms p99 {:>5.3} ms | ratio {:.2} (goal >= {GOAL:.2}) {}",
        rate(f.wharf_fwd.per_sec()),
        f.wharf_fwd.gap(0.50),
        f.wharf_fwd.gap(0.99),
        rate(f.raw_fwd.per_sec()),
        f.raw_fwd.gap(0.50),
        f.raw_fwd.gap(0.99),
        forward_ratio,
        verdict(forward_ratio >= GOAL)
    );
    println!(
        "checks         ingest: {} answers, {} non-202{}; raw: {} confirmed, {} nacked",
        f.wharf_in.sent,
        f.wharf_in.non_202,
        f.wharf_in
            .first_error
            .as_deref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default(),
        f.raw_in.confirmed,
        f.raw_in.nacked
    );
    println!(
        "               fill: wharf {} messages at {} msg/s, {} non-202; raw {} at {} msg/s",
        f.fill.accepted,
        rate(f.fill.per_sec()),
        f.fill.non_202,
        f.raw_fill.confirmed,
        rate(f.raw_fill.per_sec()),
    );
    println!("               forward wharf: {}", f.check.summary());
    println!("               forward raw:   {}", f.raw_check.summary());
    println!(
        "CPU (cores)    ingest: wharf {} + load generator {} + broker {}, raw publisher {} + broker {}; forward: wharf {} + backend {} + broker {}, raw consumer {} + backend {} + broker {}",
        show_cpu(f.wharf_in.usage.server),
        show_cpu(f.wharf_in.usage.this),
        show_cpu(f.wharf_in_broker),
        show_cpu(f.raw_in.usage.this),
        show_cpu(f.raw_in_broker),
        show_cpu(f.wharf_fwd_usage.server),
        show_cpu(f.wharf_fwd_usage.this),
        show_cpu(f.wharf_fwd_broker),
        show_cpu(f.raw_fwd_cpu),
        show_cpu(f.raw_fwd_usage.this),
        show_cpu(f.raw_fwd_broker)
    );
    println!(
        "machine CPU    ingest: wharf {}, raw {}; forward: wharf {}, raw {}",
        show_machine(f.wharf_in.usage.machine, cores),
        show_machine(f.raw_in.usage.machine, cores),
        show_machine(f.wharf_fwd_usage.machine, cores),
        show_machine(f.raw_fwd_usage.machine, cores)
    );
    println!(
        "wharf threads  ingest: {}; forward: {}",
        show_threads(&f.wharf_in.usage.threads),
        show_threads(&f.wharf_fwd_usage.threads)
    );
    println!(
        "forward stalls wharf {}; raw {}",
        stalls(&f.wharf_fwd),
        stalls(&f.raw_fwd)
    );
    println!(
        "RSS wharf      after ingest {}, after fill {}, after forward {}",
        show_mib(f.rss[0]),
        show_mib(f.rss[1]),
        show_mib(f.rss[2])
    );
}

/// Gaps between arrivals of at least [`STALL_US`]: how many, and their share of the run.
fn stalls(f: &Forward) -> String {
    let long: Vec<u64> = f
        .gaps_us
        .iter()
        .copied()
        .filter(|g| *g >= STALL_US)
        .collect();
    let total_us: u64 = long.iter().sum();
    format!(
        "{} gaps >= {:.1} ms, {:.0} ms in all ({:.0}% of the run)",
        long.len(),
        STALL_US as f64 / 1000.0,
        total_us as f64 / 1000.0,
        total_us as f64 / 1e4 / f.elapsed.as_secs_f64()
    )
}

/// The configuration of the `wharf run` process: per queue type an
/// ingest-only store and a processor's store, both on RabbitMQ.
fn wharf_config(
    opt: &Options,
    queues: &Queues,
    dir: &std::path::Path,
    backend: SocketAddr,
) -> String {
    let mut config = format!(
        r#"[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
data_dir = "{}"
"#,
        dir.join("data").display()
    );
    for &t in &opt.types {
        let name = t.as_str();
        config.push_str(&format!(
            r#"
# (a) ingest only: no processor takes from this store.
[stores.ingest-{name}]
backend = "amqp"
url = "{url}"
queue = "{ingest}"
queue_type = "{name}"

# (b) drained by the continuous processor below.
[stores.outbox-{name}]
backend = "amqp"
url = "{url}"
queue = "{outbox}"
queue_type = "{name}"

[[routes]]
path = "{ingest_path}"
consumes = ["application/json"]
store = "ingest-{name}"

[[routes]]
path = "{outbox_path}"
consumes = ["application/json"]
store = "outbox-{name}"

[processors.forward-{name}]
store = "outbox-{name}"
endpoint = "http://{backend}/sink"
"#,
            url = opt.url,
            ingest = queues.name(t, "ingest"),
            outbox = queues.name(t, "outbox"),
            ingest_path = t.ingest_path(),
            outbox_path = t.outbox_path(),
        ));
    }
    config
}

/// Ids of the messages the store holds (for an amqp store: the prefetched
/// head of the queue, in order).
async fn held_ids(admin: SocketAddr, store: &str) -> Result<Vec<String>> {
    let limit = usize::from(PREFETCH);
    let messages = admin_json(
        admin,
        &format!("/api/v1/stores/{store}/messages?limit={limit}"),
    )
    .await?;
    let ids: Vec<String> = messages
        .as_array()
        .context("messages is not an array")?
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    ensure!(!ids.is_empty(), "{store} holds no message after the fill");
    Ok(ids)
}

// ---------------------------------------------------------------------------
// RabbitMQ: queues, raw publishing, broker CPU

/// The run's queue names; deletes them when dropped, even after a failed step.
struct Queues {
    url: String,
    run: String,
    names: std::sync::Mutex<Vec<String>>,
}

impl Queues {
    fn new(url: &str, run: &str) -> Queues {
        Queues {
            url: url.to_owned(),
            run: run.to_owned(),
            names: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The name of a queue of this run, remembered for deletion.
    fn name(&self, t: QueueType, role: &str) -> String {
        let name = format!("wharf-bench-{}-{}-{role}", self.run, t.as_str());
        let mut names = self.names.lock().unwrap();
        if !names.contains(&name) {
            names.push(name.clone());
        }
        name
    }

    /// Deletes every queue of the run (on its own connection and thread, so
    /// that it also works while unwinding); says how many of how many.
    fn delete_all(&self) -> String {
        let names = std::mem::take(&mut *self.names.lock().unwrap());
        if names.is_empty() {
            return "0 of 0".to_owned();
        }
        let url = self.url.clone();
        let total = names.len();
        let deleted = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let broker = Broker::connect(&url).await.ok()?;
                let mut deleted = 0;
                for name in names {
                    if broker.delete(&name).await.is_ok() {
                        deleted += 1;
                    } else {
                        eprintln!("!!! could not delete queue {name}");
                    }
                }
                broker.close().await;
                Some(deleted)
            })
        })
        .join()
        .ok()
        .flatten();
        match deleted {
            Some(n) => format!("{n} of {total}"),
            None => format!("NONE of {total} (broker unreachable)"),
        }
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        if !self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            let deleted = self.delete_all();
            eprintln!("queues of the run deleted: {deleted}");
        }
    }
}

/// A connection for declaring, purging, counting and deleting queues.
struct Broker {
    connection: Connection,
    channel: Channel,
}

impl Broker {
    async fn connect(url: &str) -> Result<Broker> {
        let connection = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| anyhow!("no answer within 5 s"))??;
        let channel = connection.create_channel().await?;
        Ok(Broker {
            connection,
            channel,
        })
    }

    /// A durable queue declared as Wharf's amqp store declares its own.
    async fn declare(&self, queue: &str, t: QueueType) -> Result<()> {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(t.as_str().into()),
        );
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(queue.into(), options, args)
            .await
            .with_context(|| format!("declaring {queue}"))?;
        Ok(())
    }

    /// Messages ready in `queue`.
    async fn ready(&self, queue: &str) -> Result<u64> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = self
            .channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .with_context(|| format!("counting {queue}"))?;
        Ok(u64::from(q.message_count()))
    }

    async fn purge(&self, queue: &str) -> Result<()> {
        self.channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .with_context(|| format!("purging {queue}"))?;
        Ok(())
    }

    async fn delete(&self, queue: &str) -> Result<()> {
        self.channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting {queue}"))?;
        Ok(())
    }

    async fn close(&self) {
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

/// Broker CPU in cores from now until [`BrokerCpu::cores`].
struct BrokerCpu {
    pid: Option<u32>,
    at: Instant,
    cpu: Option<f64>,
}

impl BrokerCpu {
    fn start(pid: Option<u32>) -> BrokerCpu {
        BrokerCpu {
            pid,
            at: Instant::now(),
            cpu: pid.and_then(|p| cpu_seconds(&p.to_string())),
        }
    }

    fn cores(&self) -> Option<f64> {
        let now = cpu_seconds(&self.pid?.to_string())?;
        Some((now - self.cpu?) / self.at.elapsed().as_secs_f64())
    }
}

/// The RabbitMQ node on this machine (`beam.smp` running rabbit), if any.
fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (comm.trim() == "beam.smp" && String::from_utf8_lossy(&cmdline).contains("rabbit"))
            .then_some(pid)
    })
}

/// Raw confirmed publishing: counts, confirm latencies, ids, usage.
struct Publish {
    confirmed: u64,
    nacked: u64,
    in_window: u64,
    window: Duration,
    latencies_us: Vec<u32>,
    ids: Vec<String>,
    usage: Usage,
}

impl Publish {
    fn per_sec(&self) -> f64 {
        self.in_window as f64 / self.window.as_secs_f64()
    }

    /// Publish-to-confirm latency in ms.
    fn latency(&self, q: f64) -> f64 {
        percentile(&self.latencies_us, q).map_or(f64::NAN, |us| f64::from(us) / 1000.0)
    }

    fn summary(&self) -> String {
        format!(
            "{} msg/s, p50 {:.2} ms, p99 {:.2} ms, {} confirmed, {} nacked, CPU publisher {}, machine {}",
            rate(self.per_sec()),
            self.latency(0.50),
            self.latency(0.99),
            self.confirmed,
            self.nacked,
            show_cpu(self.usage.this),
            show_machine(self.usage.machine, 0)
        )
    }
}

#[derive(Default)]
struct PublisherStats {
    confirmed: u64,
    nacked: u64,
    in_window: u64,
    latencies_us: Vec<u32>,
    ids: Vec<String>,
}

/// Publishes persistent 1 KiB messages to `queue` on one channel in confirm
/// mode, with `window` publishes awaiting their confirm: `window` tasks that
/// each publish, wait for the confirm, and publish again. Windows as in
/// [`run_load`].
async fn publish(url: &str, queue: &str, window: usize, mode: Mode) -> Result<Publish> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let start = Instant::now();
    let (window_start, window_end) = match mode {
        Mode::Timed { warmup, measure } => (start + warmup, Some(start + warmup + measure)),
        Mode::Count(_) => (start, None),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(window);
    for publisher in 0..window {
        let next = next.clone();
        let channel = channel.clone();
        let queue = queue.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut stats = PublisherStats::default();
            let mut own_seq = 0u64;
            loop {
                let seq = match mode {
                    Mode::Timed { .. } => {
                        if window_end.is_some_and(|end| Instant::now() >= end) {
                            break;
                        }
                        own_seq += 1;
                        own_seq
                    }
                    Mode::Count(n) => {
                        let s = next.fetch_add(1, Ordering::Relaxed);
                        if s >= n {
                            break;
                        }
                        s as u64
                    }
                };
                let id = format!("raw-{publisher}-{seq}");
                let properties = BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2);
                let body = json_body(publisher, seq);
                let t0 = Instant::now();
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await?
                    .await?;
                let t1 = Instant::now();
                match confirm {
                    Confirmation::Ack(_) => {
                        stats.confirmed += 1;
                        if window_end.is_none() {
                            stats.ids.push(id);
                        }
                    }
                    Confirmation::Nack(_) | Confirmation::NotRequested => stats.nacked += 1,
                }
                if t1 >= window_start && window_end.is_none_or(|end| t1 <= end) {
                    stats.in_window += 1;
                    if t0 >= window_start {
                        let us = t1.duration_since(t0).as_micros();
                        stats
                            .latencies_us
                            .push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                }
            }
            anyhow::Ok(stats)
        }));
    }
    let (before, after_window) = match window_end {
        Some(end) => {
            tokio::time::sleep_until(window_start.into()).await;
            let before = Snapshot::take(None);
            tokio::time::sleep_until(end.into()).await;
            (before, Some(Snapshot::take(None)))
        }
        None => (Snapshot::take(None), None),
    };
    let mut total = Publish {
        confirmed: 0,
        nacked: 0,
        in_window: 0,
        window: Duration::ZERO,
        latencies_us: Vec::new(),
        ids: Vec::new(),
        usage: Usage::default(),
    };
    for task in tasks {
        let s = task.await??;
        total.confirmed += s.confirmed;
        total.nacked += s.nacked;
        total.in_window += s.in_window;
        total.latencies_us.extend(s.latencies_us);
        total.ids.extend(s.ids);
    }
    let after = after_window.unwrap_or_else(|| Snapshot::take(None));
    total.window = after.at - before.at;
    total.usage = Usage::between(&before, &after);
    total.latencies_us.sort_unstable();
    let _ = connection.close(200, "published".into()).await;
    Ok(total)
}

// ---------------------------------------------------------------------------
// The raw forwarding baseline (this program, re-executed)

/// `raw-forward URL QUEUE BACKEND N PREFETCH`: connects to the broker and the
/// backend, says `ready`, waits for `go` on stdin, then consumes QUEUE with
/// manual acks and PREFETCH deliveries in flight, POSTs each delivery to the
/// backend one at a time over one keep-alive connection (Idempotency-Key: the
/// message id), acks it, and after N says `done CPU_SECONDS`. Same runtime
/// flavour as `wharf run`.
fn raw_forward(args: &[String]) -> Result<()> {
    const USAGE: &str = "raw-forward URL QUEUE BACKEND N PREFETCH";
    let url = args.first().context(USAGE)?.clone();
    let queue = args.get(1).context(USAGE)?.clone();
    let backend: SocketAddr = args.get(2).context(USAGE)?.parse()?;
    let n: usize = args.get(3).context(USAGE)?.parse()?;
    let prefetch: u16 = args.get(4).context(USAGE)?.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let host = HeaderValue::from_str(&backend.to_string())?;
        let mut sender = connect(backend).await?;
        println!("ready");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        ensure!(line.trim() == "go", "expected go, got {line:?}");
        // On a worker thread, as Wharf's processor task is.
        let channel = tokio::spawn(async move {
            let mut consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "wharf-bench-raw".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            for _ in 0..n {
                let delivery = consumer.next().await.context("consumer ended early")??;
                let key = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned());
                let request = post("/sink", &host, Bytes::from(delivery.data), key);
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                ensure!(status == StatusCode::OK, "backend answered {status}");
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            anyhow::Ok(channel)
        })
        .await??;
        // The channel's close-ok comes after the broker took every ack sent
        // before it; closing only the connection once left 42 of them unsettled.
        channel.close(200, "raw forward done".into()).await?;
        let _ = connection.close(200, "raw forward done".into()).await;
        println!("done {}", cpu_seconds("self").unwrap_or(f64::NAN));
        Ok(())
    })
}
