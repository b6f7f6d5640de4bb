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

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use common::{
    DEFAULT_LOG, DeliveryCheck, Forward, Helper, Mode, Sink, Snapshot, Usage, Wharf, call, connect,
    cpu_seconds, env_or, filesystem_of, json_body, mib, peek_ids, per_message, post,
    proc_status_kib, rate, run_load, show_cpu, show_machine, show_mib, show_threads, store_depth,
    text, verdict,
};

/// What the bare server answers: the same shape and size as Wharf's 202.
const BARE_REPLY: &[u8] = br#"{"id":"0190f3a2-7b1c-7d4e-9a55-3c2b1a0f9e8d"}"#;
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
    let mut wharf = Wharf::start(
        tmp.path(),
        &wharf_config(tmp.path(), sink_addr),
        &opt.rust_log,
    )
    .await?;
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
    let mut client = Helper::start(&[
        "bare-client".to_owned(),
        sink_addr.to_string(),
        opt.messages.to_string(),
    ])?;
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

/// The configuration of the `wharf run` process under test.
fn wharf_config(dir: &Path, backend: SocketAddr) -> String {
    let data = dir.join("data");
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
    )
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
