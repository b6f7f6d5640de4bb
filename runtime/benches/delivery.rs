//! Delivery benchmark: ingest and in-order forwarding of a real `wharf run`
//! process against bare hyper baselines on the same machine, plus the
//! process's memory. A program that prints figures; it asserts nothing about time.
//!
//! Run: `cargo bench -p wharf --bench delivery`.
//!
//! Phases, all in one run:
//! - (a) ingest: `clients` keep-alive HTTP/1.1 connections POST 1 KiB JSON for
//!   a fixed time to a route on an embedded store with no processor, versus a
//!   bare hyper server (this program re-executed as `bare-server`) that
//!   answers 202 as soon as it has read the body.
//! - (b) forward: a store filled with `messages` messages is drained by a
//!   continuous processor to a hyper backend in this process, versus one bare
//!   client (this program re-executed as `bare-client`, so that it does not
//!   share a runtime with the backend) POSTing the same number of 1 KiB bodies
//!   one at a time over one keep-alive connection to the same backend.
//! - (c) memory: VmRSS after ingest and after the fill, VmHWM at the end.
//!
//! Options (environment variables):
//! - `WHARF_BENCH_SECONDS` measured seconds of each ingest run (default 10)
//! - `WHARF_BENCH_WARMUP` unmeasured seconds before each ingest run (default 1)
//! - `WHARF_BENCH_MESSAGES` messages forwarded in (b) (default 20000)
//! - `WHARF_BENCH_CLIENTS` concurrent ingest connections (default 64)
//! - `WHARF_BENCH_DIR` parent of the data directory (default: the system temp dir)
//! - `WHARF_BENCH_RUST_LOG` log filter of the wharf process (default
//!   `warn,wharf=info,wharf::processor::handler=warn`: the listening addresses
//!   are read from wharf's INFO lines, and the built-in `log-response` handler
//!   would log every forwarded message at INFO)
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark program: a step that cannot go on should stop it loudly"
)]

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const BODY_SIZE: usize = 1024;
/// What the bare server answers: the same shape and size as Wharf's 202.
const BARE_REPLY: &[u8] = br#"{"id":"0190f3a2-7b1c-7d4e-9a55-3c2b1a0f9e8d"}"#;
const DEFAULT_LOG: &str = "warn,wharf=info,wharf::processor::handler=warn";
/// The admin API shows at most this many messages at once (`admin::MAX_PEEK`).
const ORDER_CHECKED: usize = 1000;

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; the benchmark ignores its arguments
    // except the ones that make it a bare baseline process.
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("bare-server") => return bare_server(),
        Some("bare-client") => return bare_client(&args[2..]),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

struct Options {
    seconds: f64,
    warmup: f64,
    messages: usize,
    clients: usize,
    dir: Option<PathBuf>,
    rust_log: String,
}

fn env_or<T: FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

impl Options {
    fn from_env() -> Result<Options> {
        let o = Options {
            seconds: env_or("WHARF_BENCH_SECONDS", 10.0)?,
            warmup: env_or("WHARF_BENCH_WARMUP", 1.0)?,
            messages: env_or("WHARF_BENCH_MESSAGES", 20_000)?,
            clients: env_or("WHARF_BENCH_CLIENTS", 64)?,
            dir: std::env::var_os("WHARF_BENCH_DIR").map(PathBuf::from),
            rust_log: env_or("WHARF_BENCH_RUST_LOG", DEFAULT_LOG.to_owned())?,
        };
        ensure!(o.seconds > 0.0, "WHARF_BENCH_SECONDS must be > 0");
        ensure!(o.warmup >= 0.0, "WHARF_BENCH_WARMUP must be >= 0");
        ensure!(o.messages >= 2, "WHARF_BENCH_MESSAGES must be >= 2");
        ensure!(o.clients >= 1, "WHARF_BENCH_CLIENTS must be >= 1");
        Ok(o)
    }
}

// ---------------------------------------------------------------------------
// The whole run

async fn bench() -> Result<()> {
    let opt = Options::from_env()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let tmp = match &opt.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    eprintln!(
        "delivery bench: {} s ingest (+{} s warm-up) x {} clients, {} forwarded messages, data in {} ({})",
        opt.seconds,
        opt.warmup,
        opt.clients,
        opt.messages,
        tmp.path().display(),
        filesystem_of(tmp.path())
    );

    let (sink_addr, sink) = Sink::start().await?;
    let mut wharf = Wharf::start(tmp.path(), sink_addr, &opt.rust_log).await?;
    // The processor must not drain the store while it is filled.
    let (status, body) = call(
        wharf.admin,
        Method::POST,
        "/api/v1/processors/forward/deactivate",
    )
    .await?;
    ensure!(
        status == StatusCode::OK,
        "deactivate: {status} {}",
        text(&body)
    );
    eprintln!(
        "wharf pid {} ingress {} admin {}; backend {sink_addr}",
        wharf.pid, wharf.ingress, wharf.admin
    );

    // (a) ingest: bare first, then wharf.
    let timed = Mode::Timed {
        warmup: Duration::from_secs_f64(opt.warmup),
        measure: Duration::from_secs_f64(opt.seconds),
    };
    let mut bare = BareServer::start()?;
    eprintln!("(a) ingest: bare hyper server {} ...", bare.addr);
    let bare_in = run_load(
        bare.addr,
        "/ingest",
        opt.clients,
        timed,
        Some(bare.pid()),
        false,
    )
    .await?;
    let bare_exit = bare.stop()?;
    eprintln!("    {}", bare_in.summary());
    eprintln!("(a) ingest: wharf ...");
    let wharf_in = run_load(
        wharf.ingress,
        "/ingest",
        opt.clients,
        timed,
        Some(wharf.pid),
        false,
    )
    .await?;
    eprintln!("    {}", wharf_in.summary());
    let rss_after_ingest = proc_status_kib(wharf.pid, "VmRSS");

    // (b) fill the processor's store.
    eprintln!(
        "(b) fill: {} messages into the deactivated processor's store ...",
        opt.messages
    );
    let fill = run_load(
        wharf.ingress,
        "/outbox",
        opt.clients,
        Mode::Count(opt.messages),
        Some(wharf.pid),
        true,
    )
    .await?;
    eprintln!("    {}", fill.summary());
    let rss_after_fill = proc_status_kib(wharf.pid, "VmRSS");
    let depth = store_depth(wharf.admin, "outbox").await?;
    ensure!(
        depth == opt.messages as u64 && fill.non_202 == 0,
        "outbox depth {depth} after {} 202s ({} non-202) for {} messages",
        fill.accepted,
        fill.non_202,
        opt.messages
    );
    let head = peek_ids(wharf.admin, "outbox", opt.messages.min(ORDER_CHECKED)).await?;

    // (b) forward: wharf, from activation until the backend has them all.
    eprintln!("(b) forward: wharf continuous processor ...");
    sink.reset();
    let before = Snapshot::take(Some(wharf.pid));
    let activated = before.at;
    let (status, body) = call(
        wharf.admin,
        Method::POST,
        "/api/v1/processors/forward/activate",
    )
    .await?;
    ensure!(
        status == StatusCode::OK,
        "activate: {status} {}",
        text(&body)
    );
    sink.wait_for(opt.messages, Duration::from_secs(300))
        .await?;
    let fwd_usage = Usage::between(&before, &Snapshot::take(Some(wharf.pid)));
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    let final_depth = loop {
        let d = store_depth(wharf.admin, "outbox").await?;
        if d == 0 || Instant::now() > drain_deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Anything delivered twice would show up in this grace period.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let arrivals = sink.take();
    let wharf_fwd = Forward::from_arrivals(&arrivals, opt.messages, activated);
    let check = DeliveryCheck::new(&arrivals, &fill.ids, &head, final_depth);
    eprintln!(
        "    {} msg/s; {}",
        rate(wharf_fwd.per_sec()),
        check.summary()
    );

    // (b) forward baseline: one bare client, one request at a time.
    eprintln!("(b) forward: bare sequential client (own process) ...");
    sink.reset();
    let mut client = BareClient::start(sink_addr, opt.messages)?;
    let started = client.go()?;
    let before = Snapshot::take(None);
    sink.wait_for(opt.messages, Duration::from_secs(120))
        .await?;
    let bare_fwd_usage = Usage::between(&before, &Snapshot::take(None));
    let client_cpu = client.finish()?;
    let bare_arrivals = sink.take();
    let bare_fwd = Forward::from_arrivals(&bare_arrivals, opt.messages, started);
    let client_cores = client_cpu.map(|c| c / bare_fwd.elapsed.as_secs_f64());
    eprintln!("    {} req/s", rate(bare_fwd.per_sec()));

    // (c) memory, then stop.
    let hwm = proc_status_kib(wharf.pid, "VmHWM");
    let rss_end = proc_status_kib(wharf.pid, "VmRSS");
    let stopped = Instant::now();
    let wharf_exit = wharf.stop().await?;
    let stop_time = stopped.elapsed();
    let (log_warnings, log_tail) = wharf.log_summary();

    // The report.
    let ingest_ratio = wharf_in.per_sec() / bare_in.per_sec();
    let forward_ratio = wharf_fwd.per_sec() / bare_fwd.per_sec();
    let hwm_mib = hwm.map(mib);
    println!();
    println!(
        "== Wharf delivery benchmark ({cores} cores, release; {} s x {} clients ingest, {} messages forwarded)",
        opt.seconds, opt.clients, opt.messages
    );
    println!(
        "ingest   wharf {:>7} msg/s  p50 {:>6.2} ms  p99 {:>6.2} ms | bare hyper  {:>7} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms | ratio {:.2} (goal >= 0.70) {}",
        rate(wharf_in.per_sec()),
        wharf_in.latency(0.50),
        wharf_in.latency(0.99),
        rate(bare_in.per_sec()),
        bare_in.latency(0.50),
        bare_in.latency(0.99),
        ingest_ratio,
        verdict(ingest_ratio >= 0.70)
    );
    println!(
        "forward  wharf {:>7} msg/s  gap p50 {:>5.3} ms p99 {:>5.3} ms | bare client {:>7} req/s  gap p50 {:>5.3} ms p99 {:>5.3} ms | ratio {:.2} (goal >= 0.60) {}",
        rate(wharf_fwd.per_sec()),
        wharf_fwd.gap(0.50),
        wharf_fwd.gap(0.99),
        rate(bare_fwd.per_sec()),
        bare_fwd.gap(0.50),
        bare_fwd.gap(0.99),
        forward_ratio,
        verdict(forward_ratio >= 0.60)
    );
    println!(
        "peak RSS wharf {} (goal <= 60 MiB) {}",
        show_mib(hwm),
        verdict(hwm_mib.is_some_and(|m| m <= 60.0))
    );
    println!(
        "RSS wharf      after ingest {}, after fill {}, at the end {}",
        show_mib(rss_after_ingest),
        show_mib(rss_after_fill),
        show_mib(rss_end)
    );
    println!(
        "checks         ingest: {} answers, {} non-202 (wharf), {} non-202 (bare){}",
        wharf_in.sent,
        wharf_in.non_202,
        bare_in.non_202,
        wharf_in
            .first_error
            .as_deref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default()
    );
    println!(
        "               fill: {} messages at {} msg/s, {} non-202; forward: {}",
        fill.accepted,
        rate(fill.per_sec()),
        fill.non_202,
        check.summary()
    );
    println!(
        "CPU (cores)    ingest: wharf {} + load generator {}, bare {} + load generator {}; forward: wharf {} + backend {}, bare client {} + backend {}",
        show_cpu(wharf_in.usage.server),
        show_cpu(wharf_in.usage.this),
        show_cpu(bare_in.usage.server),
        show_cpu(bare_in.usage.this),
        show_cpu(fwd_usage.server),
        show_cpu(fwd_usage.this),
        show_cpu(client_cores),
        show_cpu(bare_fwd_usage.this)
    );
    println!(
        "machine CPU    ingest: wharf {}, bare {}; forward: wharf {}, bare {}",
        show_machine(wharf_in.usage.machine, cores),
        show_machine(bare_in.usage.machine, cores),
        show_machine(fwd_usage.machine, cores),
        show_machine(bare_fwd_usage.machine, cores)
    );
    println!(
        "wharf threads  ingest: {}; forward: {}",
        show_threads(&wharf_in.usage.threads),
        show_threads(&fwd_usage.threads)
    );
    println!(
        "wharf storage  ingest: {} written per message; forward: {} per message",
        per_message(wharf_in.usage.written, wharf_in.in_window),
        per_message(fwd_usage.written, opt.messages as u64)
    );
    println!(
        "wharf exit     {wharf_exit} after SIGTERM ({} ms); bare server {bare_exit}; {log_warnings} WARN/ERROR log line(s)",
        stop_time.as_millis()
    );
    if log_warnings > 0 || !wharf_exit.success() {
        println!("wharf log tail:");
        for line in log_tail {
            println!("  {line}");
        }
    }
    if !check.ok() {
        bail!("delivery check failed: {}", check.summary());
    }
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

fn rate(per_sec: f64) -> String {
    format!("{per_sec:.0}")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn show_mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".to_owned(), |k| format!("{:.1} MiB", mib(k)))
}

fn per_message(bytes: Option<u64>, messages: u64) -> String {
    match bytes {
        Some(b) if messages > 0 => format!("{:.1} KiB", b as f64 / 1024.0 / messages as f64),
        _ => "n/a".to_owned(),
    }
}

fn show_cpu(cores: Option<f64>) -> String {
    cores.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}"))
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// Nearest-rank percentile of sorted values.
fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// 1 KiB of JSON that says who sent it.
fn json_body(client: usize, seq: u64) -> Bytes {
    let mut s = format!("{{\"client\":{client},\"seq\":{seq},\"pad\":\"");
    let pad = BODY_SIZE.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    Bytes::from(s)
}

// ---------------------------------------------------------------------------
// HTTP client side (hyper's connection API: no pool, no extra tasks per request)

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn post(path: &str, host: &HeaderValue, body: Bytes, key: Option<String>) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, host.clone())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(Full::new(body)).unwrap()
}

/// One request on a fresh connection (admin API calls).
async fn call(addr: SocketAddr, method: Method, path: &str) -> Result<(StatusCode, Bytes)> {
    let mut sender = connect(addr).await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn admin_json(admin: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (status, body) = call(admin, Method::GET, path).await?;
    ensure!(
        status == StatusCode::OK,
        "GET {path}: {status} {}",
        text(&body)
    );
    Ok(serde_json::from_slice(&body)?)
}

async fn store_depth(admin: SocketAddr, store: &str) -> Result<u64> {
    let stores = admin_json(admin, "/api/v1/stores").await?;
    stores
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == store))
        .and_then(|s| s["depth"].as_u64())
        .ok_or_else(|| anyhow!("no depth for store {store} in {stores}"))
}

/// Ids of the first `limit` messages in store order.
async fn peek_ids(admin: SocketAddr, store: &str, limit: usize) -> Result<Vec<String>> {
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
    ensure!(ids.len() == limit, "peeked {} of {limit} ids", ids.len());
    Ok(ids)
}

#[derive(Clone, Copy)]
enum Mode {
    /// Every client sends until warm-up plus measure is over; only the measure window counts.
    Timed { warmup: Duration, measure: Duration },
    /// The clients share this many requests; all of them count.
    Count(usize),
}

#[derive(Default)]
struct ClientStats {
    sent: u64,
    accepted: u64,
    non_202: u64,
    in_window: u64,
    latencies_us: Vec<u32>,
    ids: Vec<String>,
    first_error: Option<String>,
}

struct LoadStats {
    sent: u64,
    accepted: u64,
    non_202: u64,
    in_window: u64,
    window: Duration,
    latencies_us: Vec<u32>,
    ids: Vec<String>,
    first_error: Option<String>,
    /// What the server, the load generator and the machine used over the window.
    usage: Usage,
}

impl LoadStats {
    fn per_sec(&self) -> f64 {
        self.in_window as f64 / self.window.as_secs_f64()
    }

    /// Client-side request latency in ms.
    fn latency(&self, q: f64) -> f64 {
        percentile(&self.latencies_us, q).map_or(f64::NAN, |us| f64::from(us) / 1000.0)
    }

    fn summary(&self) -> String {
        format!(
            "{} req/s, p50 {:.2} ms, p99 {:.2} ms, {} answers, {} non-202, CPU server {} + load generator {}, machine {}",
            rate(self.per_sec()),
            self.latency(0.50),
            self.latency(0.99),
            self.sent,
            self.non_202,
            show_cpu(self.usage.server),
            show_cpu(self.usage.this),
            show_machine(self.usage.machine, 0)
        )
    }
}

/// `clients` keep-alive connections POSTing 1 KiB JSON to `path`, one request
/// in flight each. `server` is the pid whose CPU time is measured alongside.
async fn run_load(
    addr: SocketAddr,
    path: &'static str,
    clients: usize,
    mode: Mode,
    server: Option<u32>,
    collect_ids: bool,
) -> Result<LoadStats> {
    let start = Instant::now();
    let (window_start, window_end) = match mode {
        Mode::Timed { warmup, measure } => (start + warmup, Some(start + warmup + measure)),
        Mode::Count(_) => (start, None),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let host = HeaderValue::from_str(&addr.to_string())?;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let next = next.clone();
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = ClientStats::default();
            let mut sender = connect(addr).await?;
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
                let request = post(path, &host, json_body(client, seq), None);
                sender.ready().await?;
                let t0 = Instant::now();
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                let t1 = Instant::now();
                stats.sent += 1;
                if status == StatusCode::ACCEPTED {
                    stats.accepted += 1;
                    if collect_ids {
                        let v: serde_json::Value = serde_json::from_slice(&body)?;
                        let id = v["id"].as_str().context("202 without an id")?;
                        stats.ids.push(id.to_owned());
                    }
                } else {
                    stats.non_202 += 1;
                    if stats.first_error.is_none() {
                        stats.first_error = Some(format!("{status} {}", text(&body)));
                    }
                }
                let in_window = t1 >= window_start && window_end.is_none_or(|end| t1 <= end);
                if in_window {
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
            let before = Snapshot::take(server);
            tokio::time::sleep_until(end.into()).await;
            (before, Some(Snapshot::take(server)))
        }
        None => (Snapshot::take(server), None),
    };
    let mut total = LoadStats {
        sent: 0,
        accepted: 0,
        non_202: 0,
        in_window: 0,
        window: Duration::ZERO,
        latencies_us: Vec::new(),
        ids: Vec::new(),
        first_error: None,
        usage: Usage::default(),
    };
    for task in tasks {
        let s = task.await??;
        total.sent += s.sent;
        total.accepted += s.accepted;
        total.non_202 += s.non_202;
        total.in_window += s.in_window;
        total.latencies_us.extend(s.latencies_us);
        total.ids.extend(s.ids);
        total.first_error = total.first_error.or(s.first_error);
    }
    let after = after_window.unwrap_or_else(|| Snapshot::take(server));
    total.window = after.at - before.at;
    total.usage = Usage::between(&before, &after);
    total.latencies_us.sort_unstable();
    Ok(total)
}

/// CPU and storage counters of the server process, this process and the machine.
struct Snapshot {
    at: Instant,
    server: Option<f64>,
    this: Option<f64>,
    machine: Option<(f64, f64)>,
    threads: Vec<(String, String, f64)>,
    written: Option<u64>,
}

impl Snapshot {
    fn take(server: Option<u32>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            server: server.and_then(|p| cpu_seconds(&p.to_string())),
            this: cpu_seconds("self"),
            machine: machine_cpu(),
            threads: server.map(thread_cpu).unwrap_or_default(),
            written: server.and_then(|p| proc_io(p, "write_bytes")),
        }
    }
}

/// What was used between two snapshots; CPU in cores (CPU seconds per second).
#[derive(Default)]
struct Usage {
    server: Option<f64>,
    this: Option<f64>,
    /// The whole machine: (busy, I/O wait).
    machine: Option<(f64, f64)>,
    /// The server's CPU by thread name, busiest first.
    threads: Vec<(String, f64)>,
    /// Bytes the server caused to be written to storage.
    written: Option<u64>,
}

impl Usage {
    fn between(a: &Snapshot, b: &Snapshot) -> Usage {
        let secs = (b.at - a.at).as_secs_f64();
        let cores = |x: Option<f64>, y: Option<f64>| Some((y? - x?) / secs);
        Usage {
            server: cores(a.server, b.server),
            this: cores(a.this, b.this),
            machine: a
                .machine
                .zip(b.machine)
                .map(|((b0, w0), (b1, w1))| ((b1 - b0) / secs, (w1 - w0) / secs)),
            threads: thread_share(&a.threads, &b.threads, secs),
            written: a.written.zip(b.written).map(|(x, y)| y.saturating_sub(x)),
        }
    }
}

fn show_machine(m: Option<(f64, f64)>, cores: usize) -> String {
    m.map_or_else(
        || "n/a".to_owned(),
        |(busy, iowait)| {
            if cores > 0 {
                format!("{busy:.2} of {cores} cores busy, {iowait:.2} I/O wait")
            } else {
                format!("{busy:.2} busy, {iowait:.2} I/O wait")
            }
        },
    )
}

// ---------------------------------------------------------------------------
// The forwarding backend (in this process)

struct Sink {
    count: AtomicUsize,
    log: Mutex<Vec<(Instant, Option<HeaderValue>)>>,
}

impl Sink {
    async fn start() -> Result<(SocketAddr, Arc<Sink>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sink = Arc::new(Sink {
            count: AtomicUsize::new(0),
            log: Mutex::new(Vec::with_capacity(64 * 1024)),
        });
        let shared = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let sink = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let at = Instant::now();
                            let key = request.headers().get("idempotency-key").cloned();
                            request.into_body().collect().await?;
                            sink.log.lock().unwrap().push((at, key));
                            sink.count.fetch_add(1, Ordering::Release);
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(StatusCode::OK)
                                    .header(header::CONTENT_TYPE, "text/plain")
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok((addr, sink))
    }

    fn reset(&self) {
        let mut log = self.log.lock().unwrap();
        log.clear();
        self.count.store(0, Ordering::Release);
    }

    fn take(&self) -> Vec<(Instant, Option<HeaderValue>)> {
        let mut log = self.log.lock().unwrap();
        self.count.store(0, Ordering::Release);
        std::mem::take(&mut *log)
    }

    async fn wait_for(&self, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.count.load(Ordering::Acquire) < n {
            ensure!(
                Instant::now() < deadline,
                "backend got {} of {n} requests within {limit:?}",
                self.count.load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// Rate and inter-arrival gaps of one forwarding run, as the backend saw it.
struct Forward {
    elapsed: Duration,
    n: usize,
    gaps_us: Vec<u64>,
}

impl Forward {
    /// Time from `started` until the `n`-th arrival.
    fn from_arrivals(
        arrivals: &[(Instant, Option<HeaderValue>)],
        n: usize,
        started: Instant,
    ) -> Forward {
        let mut times: Vec<Instant> = arrivals.iter().map(|(t, _)| *t).collect();
        times.sort_unstable();
        let last = times.get(n.saturating_sub(1)).copied().unwrap_or(started);
        let mut gaps_us: Vec<u64> = times
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).as_micros() as u64)
            .collect();
        gaps_us.sort_unstable();
        Forward {
            elapsed: last.duration_since(started),
            n,
            gaps_us,
        }
    }

    fn per_sec(&self) -> f64 {
        self.n as f64 / self.elapsed.as_secs_f64()
    }

    /// Inter-arrival gap in ms.
    fn gap(&self, q: f64) -> f64 {
        percentile(&self.gaps_us, q).map_or(f64::NAN, |us| us as f64 / 1000.0)
    }
}

/// Exactly once, and in store order for the head of the store.
struct DeliveryCheck {
    received: usize,
    distinct: usize,
    duplicates: usize,
    missing: usize,
    unknown: usize,
    without_key: usize,
    head_checked: usize,
    head_in_order: bool,
    final_depth: u64,
}

impl DeliveryCheck {
    fn new(
        arrivals: &[(Instant, Option<HeaderValue>)],
        accepted: &[String],
        head: &[String],
        final_depth: u64,
    ) -> DeliveryCheck {
        let keys: Vec<&str> = arrivals
            .iter()
            .filter_map(|(_, k)| k.as_ref().and_then(|k| k.to_str().ok()))
            .collect();
        let distinct: HashSet<&str> = keys.iter().copied().collect();
        let accepted: HashSet<&str> = accepted.iter().map(String::as_str).collect();
        DeliveryCheck {
            received: arrivals.len(),
            distinct: distinct.len(),
            duplicates: keys.len() - distinct.len(),
            missing: accepted.difference(&distinct).count(),
            unknown: distinct.difference(&accepted).count(),
            without_key: arrivals.len() - keys.len(),
            head_checked: head.len(),
            head_in_order: keys.len() >= head.len() && keys[..head.len()] == *head,
            final_depth,
        }
    }

    fn ok(&self) -> bool {
        self.duplicates == 0
            && self.missing == 0
            && self.unknown == 0
            && self.without_key == 0
            && self.head_in_order
            && self.final_depth == 0
    }

    fn summary(&self) -> String {
        format!(
            "{} received, {} distinct Idempotency-Keys, {} duplicate, {} missing, {} unknown, {} without key; first {} in store order: {}; depth after drain {} -> {}",
            self.received,
            self.distinct,
            self.duplicates,
            self.missing,
            self.unknown,
            self.without_key,
            self.head_checked,
            if self.head_in_order { "yes" } else { "NO" },
            self.final_depth,
            if self.ok() { "OK" } else { "FAILED" }
        )
    }
}

// ---------------------------------------------------------------------------
// The wharf process

struct Wharf {
    child: Child,
    pid: u32,
    ingress: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<LogTail>>,
}

#[derive(Default)]
struct LogTail {
    lines: VecDeque<String>,
    warnings: usize,
}

impl Wharf {
    async fn start(dir: &Path, backend: SocketAddr, rust_log: &str) -> Result<Wharf> {
        let data = dir.join("data");
        let config = dir.join("wharf.toml");
        std::fs::write(
            &config,
            format!(
                r#"[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
data_dir = "{data}"

# (a) ingest only: no processor takes from this store.
[stores.ingest]

# (b) drained by the continuous processor below.
[stores.outbox]

[[routes]]
path = "/ingest"
consumes = ["application/json"]
store = "ingest"

[[routes]]
path = "/outbox"
consumes = ["application/json"]
store = "outbox"

[processors.forward]
store = "outbox"
endpoint = "http://{backend}/sink"
"#,
                data = data.display()
            ),
        )?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("run")
            .arg(&config)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start wharf")?;
        let pid = child.id();
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new(Mutex::new(LogTail::default()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                // Drains stderr for the process's whole life so that it never blocks on a full pipe.
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    for what in ["ingress listening on ", "admin listening on "] {
                        if let Some(addr) = line.split(what).nth(1) {
                            let _ = tx.send((what, addr.trim().to_owned()));
                        }
                    }
                    let mut log = log.lock().unwrap();
                    if line.contains(" WARN ") || line.contains(" ERROR ") {
                        log.warnings += 1;
                    }
                    log.lines.push_back(line);
                    if log.lines.len() > 40 {
                        log.lines.pop_front();
                    }
                }
            });
        }
        let mut ingress = None;
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while ingress.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((what, addr)) => {
                    let addr: SocketAddr = addr.parse().with_context(|| format!("{what}{addr}"))?;
                    if what.starts_with("ingress") {
                        ingress = Some(addr);
                    } else {
                        admin = Some(addr);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait()?;
                    let tail: Vec<String> = log.lock().unwrap().lines.iter().cloned().collect();
                    bail!(
                        "wharf did not log its addresses ({status}; the log filter must keep wharf=info):\n{}",
                        tail.join("\n")
                    );
                }
            }
        }
        let wharf = Wharf {
            child,
            pid,
            ingress: ingress.unwrap(),
            admin: admin.unwrap(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((StatusCode::OK, _)) = call(wharf.admin, Method::GET, "/healthz").await {
                break;
            }
            ensure!(Instant::now() < deadline, "wharf not ready after 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(wharf)
    }

    /// SIGTERM, then wait for the exit.
    async fn stop(&mut self) -> Result<ExitStatus> {
        let kill = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()?;
        ensure!(kill.success(), "kill -TERM {} failed: {kill}", self.pid);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "wharf still running 60 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_summary(&self) -> (usize, Vec<String>) {
        let log = self.log.lock().unwrap();
        (log.warnings, log.lines.iter().cloned().collect())
    }
}

impl Drop for Wharf {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The bare baseline server (this program, re-executed)

struct BareServer {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
}

impl BareServer {
    fn start() -> Result<BareServer> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("bare-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the bare server")?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("bare listening on ")
            .with_context(|| format!("bare server said {line:?}"))?
            .parse()?;
        Ok(BareServer { child, stdin, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closing its stdin tells it to exit.
    fn stop(&mut self) -> Result<ExitStatus> {
        drop(self.stdin.take());
        Ok(self.child.wait()?)
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The bare sequential client, in its own process like Wharf's forwarder.
struct BareClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl BareClient {
    /// Starts it; it connects and waits for [`BareClient::go`].
    fn start(backend: SocketAddr, n: usize) -> Result<BareClient> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("bare-client")
            .arg(backend.to_string())
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the bare client")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        ensure!(line.trim() == "ready", "bare client said {line:?}");
        Ok(BareClient {
            child,
            stdin,
            stdout,
        })
    }

    /// Lets it send; returns when.
    fn go(&mut self) -> Result<Instant> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        let now = Instant::now();
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(now)
    }

    /// Waits for the end; returns the CPU seconds it used.
    fn finish(&mut self) -> Result<Option<f64>> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        drop(self.stdin.take());
        let status = self.child.wait()?;
        ensure!(status.success(), "bare client failed: {status}");
        Ok(line
            .trim()
            .strip_prefix("done ")
            .and_then(|cpu| cpu.parse().ok()))
    }
}

impl Drop for BareClient {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `bare-client ADDR N`: connects, says `ready`, waits for `go` on stdin, then
/// POSTs N bodies of 1 KiB one at a time over one keep-alive connection, and
/// says `done CPU_SECONDS`. Same runtime flavour as `wharf run`.
fn bare_client(args: &[String]) -> Result<()> {
    let addr: SocketAddr = args.first().context("bare-client ADDR N")?.parse()?;
    let n: usize = args.get(1).context("bare-client ADDR N")?.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let host = HeaderValue::from_str(&addr.to_string())?;
        let mut sender = connect(addr).await?;
        println!("ready");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        ensure!(line.trim() == "go", "expected go, got {line:?}");
        // On a worker thread, as Wharf's processor task is: from block_on's
        // thread every request would cost cross-thread wake-ups.
        tokio::spawn(async move {
            for i in 0..n {
                let request = post(
                    "/sink",
                    &host,
                    json_body(0, i as u64),
                    Some(format!("bare-{i}")),
                );
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                ensure!(status == StatusCode::OK, "backend answered {status}");
            }
            anyhow::Ok(())
        })
        .await??;
        println!("done {}", cpu_seconds("self").unwrap_or(f64::NAN));
        Ok(())
    })
}

/// Answers every request 202 with a small JSON body once it has read the body,
/// on the same kind of runtime as `wharf run` (multi-thread, one worker per
/// core) and, like axum's `serve`, without TCP_NODELAY. Exits when stdin closes.
fn bare_server() -> Result<()> {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("bare listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    request.into_body().collect().await?;
                    Ok::<_, hyper::Error>(
                        Response::builder()
                            .status(StatusCode::ACCEPTED)
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from_static(BARE_REPLY)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

// ---------------------------------------------------------------------------
// /proc

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Seconds all CPUs spent busy and in I/O wait since boot (`/proc/stat`).
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3)?;
    let iowait = f.get(4)?;
    let ticks = clock_ticks();
    Some((
        (total - idle - iowait) as f64 / ticks,
        *iowait as f64 / ticks,
    ))
}

/// A counter of `/proc/PID/io` (`write_bytes`: bytes sent to storage).
fn proc_io(pid: u32, key: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User plus system CPU seconds of a process (`pid` or `"self"`).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// CPU seconds of each thread of `pid`: (tid, name, seconds).
fn thread_cpu(pid: u32) -> Vec<(String, String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let tid = t.ok()?.file_name().to_string_lossy().into_owned();
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            let cpu = cpu_seconds(&format!("{pid}/task/{tid}"))?;
            Some((tid, name.trim().to_owned(), cpu))
        })
        .collect()
}

/// CPU in cores by thread name between two [`thread_cpu`] snapshots, busiest first.
fn thread_share(
    before: &[(String, String, f64)],
    after: &[(String, String, f64)],
    secs: f64,
) -> Vec<(String, f64)> {
    let mut by_name: Vec<(String, f64)> = Vec::new();
    for (tid, name, cpu) in after {
        let was = before
            .iter()
            .find(|(t, _, _)| t == tid)
            .map_or(0.0, |(_, _, c)| *c);
        let used = (cpu - was) / secs;
        match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total += used,
            None => by_name.push((name.clone(), used)),
        }
    }
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    by_name
}

fn show_threads(threads: &[(String, f64)]) -> String {
    let shown: Vec<String> = threads
        .iter()
        .filter(|(_, c)| *c >= 0.005)
        .map(|(n, c)| format!("{n} {c:.2}"))
        .collect();
    if shown.is_empty() {
        "n/a".to_owned()
    } else {
        shown.join(", ")
    }
}

fn filesystem_of(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "filesystem unknown".to_owned();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1])).then(|| (f[1].len(), f[2].to_owned()))
        })
        .max()
        .map_or_else(|| "filesystem unknown".to_owned(), |(_, fs)| fs)
}
