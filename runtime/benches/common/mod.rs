//! What the benchmark programs (`delivery`, `amqp`) share: the load
//! generator, the forwarding backend, the `wharf run` process, delivery
//! checks, helper processes, and CPU/memory figures from `/proc`.
#![allow(
    dead_code,
    reason = "each benchmark program uses part of these helpers"
)]

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
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

pub const BODY_SIZE: usize = 1024;
pub const DEFAULT_LOG: &str = "warn,wharf=info,wharf::processor::handler=warn";

pub fn env_or<T: FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

pub fn rate(per_sec: f64) -> String {
    format!("{per_sec:.0}")
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn show_mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".to_owned(), |k| format!("{:.1} MiB", mib(k)))
}

pub fn per_message(bytes: Option<u64>, messages: u64) -> String {
    match bytes {
        Some(b) if messages > 0 => format!("{:.1} KiB", b as f64 / 1024.0 / messages as f64),
        _ => "n/a".to_owned(),
    }
}

pub fn show_cpu(cores: Option<f64>) -> String {
    cores.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}"))
}

pub fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// Nearest-rank percentile of sorted values.
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// 1 KiB of JSON that says who sent it.
pub fn json_body(client: usize, seq: u64) -> Bytes {
    let mut s = format!("{{\"client\":{client},\"seq\":{seq},\"pad\":\"");
    let pad = BODY_SIZE.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    Bytes::from(s)
}

// ---------------------------------------------------------------------------
// HTTP client side (hyper's connection API: no pool, no extra tasks per request)

pub async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
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

pub fn post(
    path: &str,
    host: &HeaderValue,
    body: Bytes,
    key: Option<String>,
) -> Request<Full<Bytes>> {
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
pub async fn call(addr: SocketAddr, method: Method, path: &str) -> Result<(StatusCode, Bytes)> {
    send(addr, method, path, Bytes::new()).await
}

/// [`call`] with a body.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes)> {
    let mut sender = connect(addr).await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

pub async fn admin_json(admin: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (status, body) = call(admin, Method::GET, path).await?;
    ensure!(
        status == StatusCode::OK,
        "GET {path}: {status} {}",
        text(&body)
    );
    Ok(serde_json::from_slice(&body)?)
}

pub async fn store_depth(admin: SocketAddr, store: &str) -> Result<u64> {
    let stores = admin_json(admin, "/api/v1/stores").await?;
    stores
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == store))
        .and_then(|s| s["depth"].as_u64())
        .ok_or_else(|| anyhow!("no depth for store {store} in {stores}"))
}

/// Ids of the first `limit` messages in store order.
pub async fn peek_ids(admin: SocketAddr, store: &str, limit: usize) -> Result<Vec<String>> {
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
pub enum Mode {
    /// Every client sends until warm-up plus measure is over; only the measure window counts.
    Timed { warmup: Duration, measure: Duration },
    /// The clients share this many requests; all of them count.
    Count(usize),
}

#[derive(Default)]
pub struct ClientStats {
    pub sent: u64,
    pub accepted: u64,
    pub non_202: u64,
    pub in_window: u64,
    pub latencies_us: Vec<u32>,
    pub ids: Vec<String>,
    pub first_error: Option<String>,
}

pub struct LoadStats {
    pub sent: u64,
    pub accepted: u64,
    pub non_202: u64,
    pub in_window: u64,
    pub window: Duration,
    pub latencies_us: Vec<u32>,
    pub ids: Vec<String>,
    pub first_error: Option<String>,
    /// What the server, the load generator and the machine used over the window.
    pub usage: Usage,
}

impl LoadStats {
    pub fn per_sec(&self) -> f64 {
        self.in_window as f64 / self.window.as_secs_f64()
    }

    /// Client-side request latency in ms.
    pub fn latency(&self, q: f64) -> f64 {
        percentile(&self.latencies_us, q).map_or(f64::NAN, |us| f64::from(us) / 1000.0)
    }

    pub fn summary(&self) -> String {
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
pub async fn run_load(
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
pub struct Snapshot {
    pub at: Instant,
    pub server: Option<f64>,
    pub this: Option<f64>,
    pub machine: Option<(f64, f64)>,
    pub threads: Vec<(String, String, f64)>,
    pub written: Option<u64>,
}

impl Snapshot {
    pub fn take(server: Option<u32>) -> Snapshot {
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
pub struct Usage {
    pub server: Option<f64>,
    pub this: Option<f64>,
    /// The whole machine: (busy, I/O wait).
    pub machine: Option<(f64, f64)>,
    /// The server's CPU by thread name, busiest first.
    pub threads: Vec<(String, f64)>,
    /// Bytes the server caused to be written to storage.
    pub written: Option<u64>,
}

impl Usage {
    pub fn between(a: &Snapshot, b: &Snapshot) -> Usage {
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

pub fn show_machine(m: Option<(f64, f64)>, cores: usize) -> String {
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

pub struct Sink {
    pub count: AtomicUsize,
    pub log: Mutex<Vec<(Instant, Option<HeaderValue>)>>,
}

impl Sink {
    pub async fn start() -> Result<(SocketAddr, Arc<Sink>)> {
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

    pub fn reset(&self) {
        let mut log = self.log.lock().unwrap();
        log.clear();
        self.count.store(0, Ordering::Release);
    }

    pub fn take(&self) -> Vec<(Instant, Option<HeaderValue>)> {
        let mut log = self.log.lock().unwrap();
        self.count.store(0, Ordering::Release);
        std::mem::take(&mut *log)
    }

    pub async fn wait_for(&self, n: usize, limit: Duration) -> Result<()> {
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
pub struct Forward {
    pub elapsed: Duration,
    pub n: usize,
    pub gaps_us: Vec<u64>,
}

impl Forward {
    /// Time from `started` until the `n`-th arrival.
    pub fn from_arrivals(
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

    pub fn per_sec(&self) -> f64 {
        self.n as f64 / self.elapsed.as_secs_f64()
    }

    /// Inter-arrival gap in ms.
    pub fn gap(&self, q: f64) -> f64 {
        percentile(&self.gaps_us, q).map_or(f64::NAN, |us| us as f64 / 1000.0)
    }
}

/// Exactly once, and in store order for the head of the store.
pub struct DeliveryCheck {
    pub received: usize,
    pub distinct: usize,
    pub duplicates: usize,
    pub missing: usize,
    pub unknown: usize,
    pub without_key: usize,
    pub head_checked: usize,
    pub head_in_order: bool,
    pub final_depth: u64,
}

impl DeliveryCheck {
    pub fn new(
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

    pub fn ok(&self) -> bool {
        self.duplicates == 0
            && self.missing == 0
            && self.unknown == 0
            && self.without_key == 0
            && self.head_in_order
            && self.final_depth == 0
    }

    pub fn summary(&self) -> String {
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

pub struct Wharf {
    pub child: Child,
    pub pid: u32,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<LogTail>>,
}

#[derive(Default)]
pub struct LogTail {
    pub lines: VecDeque<String>,
    pub warnings: usize,
}

impl Wharf {
    /// Starts `wharf run` on `config` (the configuration's text, written to
    /// `dir/wharf.toml`); returns once its admin API answers.
    pub async fn start(dir: &Path, config: &str, rust_log: &str) -> Result<Wharf> {
        let path = dir.join("wharf.toml");
        std::fs::write(&path, config)?;
        // WHARF_BENCH_BINARY runs another build (e.g. the commit before a
        // change) under the same harness, for before/after figures.
        let binary = std::env::var_os("WHARF_BENCH_BINARY")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wharf")), PathBuf::from);
        let mut child = Command::new(&binary)
            .arg("run")
            .arg(&path)
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
    pub async fn stop(&mut self) -> Result<ExitStatus> {
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

    pub fn log_summary(&self) -> (usize, Vec<String>) {
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
// A helper process (the benchmark re-executed with a role as first argument)

/// A helper in its own process that says `ready`, waits for [`Helper::go`],
/// works, and says `done CPU_SECONDS`.
pub struct Helper {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<std::process::ChildStdout>,
}

impl Helper {
    /// Starts this program with `args` (the role first); returns once it is ready.
    pub fn start(args: &[String]) -> Result<Helper> {
        let role = args.first().map_or("helper", String::as_str);
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {role}"))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        ensure!(line.trim() == "ready", "{role} said {line:?}");
        Ok(Helper {
            child,
            stdin,
            stdout,
        })
    }

    /// Lets it work; returns when.
    pub fn go(&mut self) -> Result<Instant> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        let now = Instant::now();
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(now)
    }

    /// Waits for the end; returns the CPU seconds it used.
    pub fn finish(&mut self) -> Result<Option<f64>> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        drop(self.stdin.take());
        let status = self.child.wait()?;
        ensure!(status.success(), "helper failed: {status}");
        Ok(line
            .trim()
            .strip_prefix("done ")
            .and_then(|cpu| cpu.parse().ok()))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// /proc

pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
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
pub fn machine_cpu() -> Option<(f64, f64)> {
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
pub fn proc_io(pid: u32, key: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
}

pub fn clock_ticks() -> f64 {
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
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// CPU seconds of each thread of `pid`: (tid, name, seconds).
pub fn thread_cpu(pid: u32) -> Vec<(String, String, f64)> {
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
pub fn thread_share(
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

pub fn show_threads(threads: &[(String, f64)]) -> String {
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

pub fn filesystem_of(path: &Path) -> String {
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
