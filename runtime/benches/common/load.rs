//! The load generator (`run_load`) and what it measures: rates, latencies, CPU, machine use.

use super::*;

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
