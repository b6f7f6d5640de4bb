//! Tenants benchmark: a noisy neighbour, and 100 tenants in one process,
//! against a real `wharf run` process. A program that prints figures; it
//! asserts nothing about time (it does check that every message arrived).
//!
//! Run: `cargo bench -p wharf --bench tenants`.
//!
//! **Noisy neighbour.** Tenant `b` forwards in order from an embedded store
//! to a fast local backend. After a warm-up it is measured alone and while
//! tenant `a` misbehaves, in turn, alone first and last; the figures are
//! the medians of each. Each measurement is
//! - the drain rate: `WHARF_BENCH_MESSAGES` messages stored while `b`'s
//!   processor is deactivated, then activated and timed until the last one
//!   arrives (each must arrive once, the first 1000 in store order);
//! - the latency at a steady `WHARF_BENCH_RATE` messages/s for 5 s, from
//!   sending the request to its arrival at the backend (p50, p99).
//!
//! Tenant `a`, with quotas `ingest_rate = 200`, `forward_rate = 10`,
//! `plugin_deadline = "50ms"`, `plugin_instances = 2`, misbehaves the ways
//! `WHARF_BENCH_NOISE` names (default `flood,spin,dead`): `flood`, four
//! clients post to it at 2000/s in all (10x its ingest quota); `spin`, its
//! response handler is the `spin` fixture, which runs to its deadline on
//! every call (10 calls/s under its forward rate); `dead`, another of its
//! processors forwards to a closed port and retries every 20 ms for ever.
//! `burn` is no tenant: a thread of this process spinning 50 ms of every
//! 100 ms, the CPU `spin` may take, as a control.
//!
//! **Scale.** 100 tenants x 3 pipelines (store, route, continuous processor
//! each) in one process: the time to create them, RSS and idle CPU (10 s
//! after the last apply), the apply latency of one tenant's change (p50,
//! p99 of 50 applies alternating one processor's endpoint), and ingest for
//! 5 s from 16 clients to one tenant's route versus spread over all 300
//! routes.
//!
//! Options: `WHARF_BENCH_MESSAGES` (default 20000), `WHARF_BENCH_RATE`
//! (default 500), `WHARF_BENCH_ROUNDS` (noisy runs, default 2),
//! `WHARF_BENCH_NOISE`, `WHARF_BENCH_PLUGIN` (`spin`, or `log` for the
//! `log-response` component), `WHARF_BENCH_SPIN_DEADLINE` (default 50ms),
//! `WHARF_BENCH_SPIN_FUEL` (unset: unlimited), `WHARF_BENCH_PARTS`
//! (`noisy,scale`), `WHARF_BENCH_TENANTS` (default 100),
//! `WHARF_BENCH_DIR`, `WHARF_BENCH_RUST_LOG`, `WHARF_BENCH_BINARY` (see
//! `common`).
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark program: a step that cannot go on should stop it loudly"
)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;

use common::{
    DEFAULT_LOG, Mode, Sink, Wharf, connect, cpu_seconds, env_or, json_body, percentile, post,
    proc_status_kib, rate, run_load, send, text,
};

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

fn server_table(data_dir: &std::path::Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n",
        data_dir.display().to_string()
    )
}

/// An admin call that must answer `expected`; its JSON.
async fn admin(
    wharf: &Wharf,
    method: Method,
    path: &str,
    body: impl Into<Bytes>,
    expected: StatusCode,
) -> Result<serde_json::Value> {
    let (status, body) = send(wharf.admin, method.clone(), path, body.into()).await?;
    ensure!(
        status == expected,
        "{method} {path}: {status} {}",
        text(&body)
    );
    Ok(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

fn tmpdir(parent: &Option<PathBuf>) -> Result<tempfile::TempDir> {
    Ok(match parent {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn bench() -> Result<()> {
    let parent = std::env::var_os("WHARF_BENCH_DIR").map(PathBuf::from);
    let rust_log: String = env_or("WHARF_BENCH_RUST_LOG", DEFAULT_LOG.to_owned())?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release"
    };
    println!("== Wharf tenants benchmark ({cores} cores, {profile})");
    let parts: String = env_or("WHARF_BENCH_PARTS", "noisy,scale".to_owned())?;
    if parts.contains("noisy") {
        noisy_neighbour(&parent, &rust_log).await?;
    }
    if parts.contains("scale") {
        scale(&parent, &rust_log).await?;
    }
    Ok(())
}

/// What one measurement of tenant `b` gave.
struct Measured {
    drain_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn noisy_neighbour(parent: &Option<PathBuf>, rust_log: &str) -> Result<()> {
    let messages: usize = env_or("WHARF_BENCH_MESSAGES", 20_000)?;
    let steady: u64 = env_or("WHARF_BENCH_RATE", 500)?;
    let rounds: usize = env_or("WHARF_BENCH_ROUNDS", 2)?;
    let noise_kinds: Vec<String> = env_or("WHARF_BENCH_NOISE", "flood,spin,dead".to_owned())?
        .split(',')
        .map(str::to_owned)
        .collect();
    println!(
        "-- noisy neighbour: b drains {messages} messages, then takes {steady}/s for 5 s; alone and beside a noisy a ({}) in turn, {rounds} rounds",
        noise_kinds.join("+")
    );
    let tmp = tmpdir(parent)?;
    let (b_addr, b_sink) = Sink::start().await?;
    let (a_addr, _a_sink) = Sink::start().await?;
    let config = server_table(&tmp.path().join("data"));
    let wharf = Wharf::start(tmp.path(), &config, rust_log).await?;

    admin(
        &wharf,
        Method::PUT,
        "/api/v1/tenants/b",
        "{}",
        StatusCode::CREATED,
    )
    .await?;
    let b = format!(
        "[stores.s]\n[[routes]]\npath = \"/in\"\nstore = \"s\"\n[processors.p]\nstore = \"s\"\nendpoint = \"http://{b_addr}/b\"\n"
    );
    admin(
        &wharf,
        Method::PUT,
        "/api/v1/tenants/b/pipeline",
        b,
        StatusCode::OK,
    )
    .await?;

    let deadline: String = env_or("WHARF_BENCH_SPIN_DEADLINE", "50ms".to_owned())?;
    let fuel = match std::env::var("WHARF_BENCH_SPIN_FUEL") {
        Ok(fuel) => format!(", fuel = {fuel}"),
        Err(_) => String::new(),
    };
    let quotas = format!(
        r#"{{"quotas": {{"ingest_rate": 200, "forward_rate": 10, "plugin_deadline": "{deadline}", "plugin_instances": 2}}}}"#
    );
    admin(
        &wharf,
        Method::PUT,
        "/api/v1/tenants/a",
        quotas,
        StatusCode::CREATED,
    )
    .await?;
    let plugin = match env_or("WHARF_BENCH_PLUGIN", "spin".to_owned())?.as_str() {
        "log" => wharf_plugin_artifacts::LOG_RESPONSE,
        _ => wharf_plugin_artifacts::SPIN,
    };
    let spin = std::fs::read(plugin)?;
    admin(
        &wharf,
        Method::PUT,
        "/api/v1/tenants/a/plugins/spin",
        spin,
        StatusCode::CREATED,
    )
    .await?;
    let a = format!(
        "[stores.spun]\n[stores.dead]\n\
         [[routes]]\npath = \"/in\"\nstore = \"spun\"\n\
         [[routes]]\npath = \"/dead\"\nstore = \"dead\"\n\
         [processors.spin]\nstore = \"spun\"\nendpoint = \"http://{a_addr}/a\"\nretry_interval = \"20ms\"\nmax_redeliveries = 1000000\n\
         response_handler = \"spin\"\nplugin_limits = {{ deadline = \"{deadline}\"{fuel} }}\n\
         [processors.dead]\nstore = \"dead\"\nendpoint = \"http://127.0.0.1:9/\"\nretry_interval = \"20ms\"\nmax_redeliveries = 1000000\n"
    );
    admin(
        &wharf,
        Method::PUT,
        "/api/v1/tenants/a/pipeline",
        a,
        StatusCode::OK,
    )
    .await?;
    // a's processors stay deactivated (idle) while b runs alone.
    switch_a(&wharf, "deactivate").await?;
    for path in ["/a/in", "/a/dead"] {
        for _ in 0..5 {
            let (status, body) = send(wharf.ingress, Method::POST, path, json_body(0, 0)).await?;
            ensure!(
                status == StatusCode::ACCEPTED,
                "{path}: {status} {}",
                text(&body)
            );
        }
    }

    // Warm-up, then alone and noisy in turn, alone first and last.
    measure_b(&wharf, &b_sink, messages, steady).await?;
    let mut alone = Vec::new();
    let mut noisy = Vec::new();
    for round in 0..rounds {
        let m = measure_b(&wharf, &b_sink, messages, steady).await?;
        show(&format!("b alone ({})", round + 1), &m, None);
        alone.push(m);
        let noise = Noise::start(&wharf, &noise_kinds).await?;
        let m = measure_b(&wharf, &b_sink, messages, steady).await?;
        show(&format!("b beside noisy a ({})", round + 1), &m, None);
        noisy.push(m);
        let said = noise.stop(&wharf).await?;
        println!("     a meanwhile: {said}");
    }
    let m = measure_b(&wharf, &b_sink, messages, steady).await?;
    show(&format!("b alone ({})", rounds + 1), &m, None);
    alone.push(m);
    let (alone, noisy) = (median(&alone), median(&noisy));
    show("median alone", &alone, None);
    show("median beside noisy a", &noisy, Some(&alone));
    let mut wharf = wharf;
    wharf.stop().await?;
    Ok(())
}

async fn switch_a(wharf: &Wharf, action: &str) -> Result<()> {
    for p in ["spin", "dead"] {
        let path = format!("/api/v1/tenants/a/processors/{p}/{action}");
        admin(wharf, Method::POST, &path, "", StatusCode::OK).await?;
    }
    Ok(())
}

/// Each figure's median over the runs.
fn median(runs: &[Measured]) -> Measured {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Measured {
        drain_per_sec: mid(runs.iter().map(|m| m.drain_per_sec).collect()),
        p50: Duration::from_secs_f64(mid(runs.iter().map(|m| m.p50.as_secs_f64()).collect())),
        p99: Duration::from_secs_f64(mid(runs.iter().map(|m| m.p99.as_secs_f64()).collect())),
    }
}

/// Tenant `a` misbehaving, the ways `kinds` names.
struct Noise {
    kinds: Vec<String>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    flood: Vec<tokio::task::JoinHandle<Result<()>>>,
    started: Instant,
}

impl Noise {
    async fn start(wharf: &Wharf, kinds: &[String]) -> Result<Noise> {
        for p in ["spin", "dead"] {
            if kinds.iter().any(|k| k == p) {
                let path = format!("/api/v1/tenants/a/processors/{p}/activate");
                admin(wharf, Method::POST, &path, "", StatusCode::OK).await?;
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut flood = Vec::new();
        let clients = if kinds.iter().any(|k| k == "flood") {
            4
        } else {
            0
        };
        for client in 0..clients {
            let (stop, accepted, refused) = (stop.clone(), accepted.clone(), refused.clone());
            let ingress = wharf.ingress;
            flood.push(tokio::spawn(async move {
                let host = HeaderValue::from_str(&ingress.to_string())?;
                let mut sender = connect(ingress).await?;
                // 500/s per client, 2000/s in all.
                let mut tick = tokio::time::interval(Duration::from_millis(2));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    seq += 1;
                    sender.ready().await?;
                    let response = sender
                        .send_request(post("/a/in", &host, json_body(client, seq), None))
                        .await?;
                    let status = response.status();
                    response.into_body().collect().await?;
                    match status {
                        StatusCode::ACCEPTED => accepted.fetch_add(1, Ordering::Relaxed),
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
                anyhow::Ok(())
            }));
        }
        // Not tenant a: a thread of this process burning the CPU that a's
        // spinning plugin may (50 ms of every 100 ms), to tell what any
        // busy neighbour costs on this machine from what Wharf lets a do.
        if kinds.iter().any(|k| k == "burn") {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let mut n = 1u64;
                    while start.elapsed() < Duration::from_millis(50) {
                        n = std::hint::black_box(
                            n.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        Ok(Noise {
            kinds: kinds.to_vec(),
            stop,
            accepted,
            refused,
            flood,
            started: Instant::now(),
        })
    }

    /// Stops it; what it did, in words.
    async fn stop(self, wharf: &Wharf) -> Result<String> {
        self.stop.store(true, Ordering::Relaxed);
        for f in self.flood {
            f.await??;
        }
        let secs = self.started.elapsed().as_secs_f64();
        let usage = admin(
            wharf,
            Method::GET,
            "/api/v1/tenants/a/usage",
            "",
            StatusCode::OK,
        )
        .await?;
        let processors = admin(
            wharf,
            Method::GET,
            "/api/v1/tenants/a/processors",
            "",
            StatusCode::OK,
        )
        .await?;
        switch_a(wharf, "deactivate").await?;
        let (accepted, refused) = (
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        );
        let failures: Vec<String> = processors
            .as_array()
            .context("processors")?
            .iter()
            .map(|p| {
                format!(
                    "{} {}, last failure {}",
                    p["name"], p["retried"], p["last_failure"]
                )
            })
            .collect();
        Ok(format!(
            "{} for {secs:.1} s: offered {}/s, accepted {}/s, refused {}/s; stored {}; {}",
            self.kinds.join("+"),
            rate((accepted + refused) as f64 / secs),
            rate(accepted as f64 / secs),
            rate(refused as f64 / secs),
            usage["usage"]["stored_messages"],
            failures.join("; ")
        ))
    }
}

fn show(what: &str, m: &Measured, baseline: Option<&Measured>) {
    let ratio = |v: f64, b: f64| format!(" ({:+.1}%)", (v / b - 1.0) * 100.0);
    let (r, p50, p99) = match baseline {
        Some(b) => (
            ratio(m.drain_per_sec, b.drain_per_sec),
            ratio(m.p50.as_secs_f64(), b.p50.as_secs_f64()),
            ratio(m.p99.as_secs_f64(), b.p99.as_secs_f64()),
        ),
        None => Default::default(),
    };
    println!(
        "   {what:<20} drain {}{r} | steady latency p50 {}{p50}  p99 {}{p99}",
        rate(m.drain_per_sec),
        ms(m.p50),
        ms(m.p99),
    );
}

/// Drain rate, then latency at a steady rate, of tenant `b`.
async fn measure_b(wharf: &Wharf, sink: &Sink, messages: usize, steady: u64) -> Result<Measured> {
    let deactivate = "/api/v1/tenants/b/processors/p/deactivate";
    admin(wharf, Method::POST, deactivate, "", StatusCode::OK).await?;
    let load = run_load(wharf.ingress, "/b/in", 8, Mode::Count(messages), None, true).await?;
    ensure!(
        load.accepted == messages as u64,
        "b: {} of {messages} accepted: {:?}",
        load.accepted,
        load.first_error
    );
    let (status, body) = send(
        wharf.admin,
        Method::GET,
        "/api/v1/tenants/b/stores/s/messages?limit=1000",
        Bytes::new(),
    )
    .await?;
    ensure!(status == StatusCode::OK, "peek: {status}");
    let head: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)?
        .as_array()
        .context("peek")?
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    sink.reset();
    let activate = "/api/v1/tenants/b/processors/p/activate";
    let started = Instant::now();
    admin(wharf, Method::POST, activate, "", StatusCode::OK).await?;
    sink.wait_for(messages, Duration::from_secs(300)).await?;
    let arrivals = sink.take();
    let last = arrivals.iter().map(|(t, _)| *t).max().unwrap_or(started);
    let drain_per_sec = messages as f64 / last.duration_since(started).as_secs_f64();
    let keys: Vec<String> = arrivals
        .iter()
        .filter_map(|(_, k)| k.as_ref().and_then(|k| k.to_str().ok()).map(str::to_owned))
        .collect();
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    ensure!(
        distinct.len() == messages && keys.len() == messages,
        "b: {} arrivals, {} distinct, of {messages}",
        keys.len(),
        distinct.len()
    );
    ensure!(
        keys[..head.len()] == head[..],
        "b: the head arrived out of store order"
    );

    // Steady: one request every 1/steady s, each timed to its arrival.
    let every = Duration::from_secs_f64(1.0 / steady as f64);
    let total = (steady * 5) as usize;
    let host = HeaderValue::from_str(&wharf.ingress.to_string())?;
    let mut sender = connect(wharf.ingress).await?;
    let mut sent_at: HashMap<String, Instant> = HashMap::with_capacity(total);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 0..total {
        tick.tick().await;
        sender.ready().await?;
        let t0 = Instant::now();
        let response = sender
            .send_request(post("/b/in", &host, json_body(99, seq as u64), None))
            .await?;
        ensure!(
            response.status() == StatusCode::ACCEPTED,
            "b steady: {}",
            response.status()
        );
        let body = response.into_body().collect().await?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        sent_at.insert(v["id"].as_str().context("id")?.to_owned(), t0);
    }
    sink.wait_for(total, Duration::from_secs(60)).await?;
    let mut latencies: Vec<Duration> = sink
        .take()
        .iter()
        .filter_map(|(t, k)| {
            let key = k.as_ref()?.to_str().ok()?;
            Some(t.duration_since(*sent_at.get(key)?))
        })
        .collect();
    ensure!(
        latencies.len() == total,
        "b steady: {} of {total} matched",
        latencies.len()
    );
    latencies.sort();
    Ok(Measured {
        drain_per_sec,
        p50: percentile(&latencies, 0.50).unwrap_or_default(),
        p99: percentile(&latencies, 0.99).unwrap_or_default(),
    })
}

/// Tenant `t`'s three pipelines; pipeline 0's processor forwards to `?v={version}`.
fn tenant_document(sink: SocketAddr, version: usize) -> String {
    let mut out = String::new();
    for j in 0..3 {
        let query = if j == 0 {
            format!("?v={version}")
        } else {
            String::new()
        };
        out.push_str(&format!(
            "[stores.s{j}]\n[[routes]]\npath = \"/r{j}\"\nstore = \"s{j}\"\n[processors.p{j}]\nstore = \"s{j}\"\nendpoint = \"http://{sink}/sink{query}\"\n\n"
        ));
    }
    out
}

/// `clients` keep-alive connections posting for `secs` seconds, each
/// going round `paths` from its own starting point; accepted per second.
async fn spread(
    ingress: SocketAddr,
    paths: Arc<Vec<String>>,
    clients: usize,
    secs: u64,
) -> Result<f64> {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let paths = paths.clone();
        tasks.push(tokio::spawn(async move {
            let host = HeaderValue::from_str(&ingress.to_string())?;
            let mut sender = connect(ingress).await?;
            let mut accepted = 0u64;
            let mut i = client;
            while Instant::now() < until {
                let path = &paths[i % paths.len()];
                i += 1;
                sender.ready().await?;
                let response = sender
                    .send_request(post(path, &host, json_body(client, i as u64), None))
                    .await?;
                let status = response.status();
                response.into_body().collect().await?;
                ensure!(status == StatusCode::ACCEPTED, "{path}: {status}");
                accepted += 1;
            }
            anyhow::Ok(accepted)
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await??;
    }
    Ok(accepted as f64 / secs as f64)
}

async fn scale(parent: &Option<PathBuf>, rust_log: &str) -> Result<()> {
    let tenants: usize = env_or("WHARF_BENCH_TENANTS", 100)?;
    println!("-- scale: {tenants} tenants x 3 pipelines (store, route, continuous processor)");
    let tmp = tmpdir(parent)?;
    let (sink_addr, sink) = Sink::start().await?;
    let config = server_table(&tmp.path().join("data"));
    let mut wharf = Wharf::start(tmp.path(), &config, rust_log).await?;
    let rss_empty = proc_status_kib(wharf.pid, "VmRSS").unwrap_or(0);

    let started = Instant::now();
    let mut creates = Vec::with_capacity(tenants);
    for i in 0..tenants {
        let t0 = Instant::now();
        admin(
            &wharf,
            Method::PUT,
            &format!("/api/v1/tenants/t{i}"),
            "{}",
            StatusCode::CREATED,
        )
        .await?;
        let path = format!("/api/v1/tenants/t{i}/pipeline");
        admin(
            &wharf,
            Method::PUT,
            &path,
            tenant_document(sink_addr, 0),
            StatusCode::OK,
        )
        .await?;
        creates.push(t0.elapsed());
    }
    let setup = started.elapsed();
    creates.sort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_0 = cpu_seconds(&wharf.pid.to_string()).unwrap_or(0.0);
    let idle_0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = (cpu_seconds(&wharf.pid.to_string()).unwrap_or(0.0) - cpu_0)
        / idle_0.elapsed().as_secs_f64();
    let rss = proc_status_kib(wharf.pid, "VmRSS").unwrap_or(0);
    let threads = proc_status_kib(wharf.pid, "Threads").unwrap_or(0);
    println!(
        "   set-up {:.1} s (tenant + pipeline each: p50 {}, p99 {}) | idle CPU {:.2}% of a core | RSS {:.1} MiB (empty {:.1} MiB), {threads} threads",
        setup.as_secs_f64(),
        ms(percentile(&creates, 0.5).unwrap_or_default()),
        ms(percentile(&creates, 0.99).unwrap_or_default()),
        idle_cpu * 100.0,
        rss as f64 / 1024.0,
        rss_empty as f64 / 1024.0
    );

    let mut applies = Vec::with_capacity(50);
    for v in 1..=50 {
        let t0 = Instant::now();
        let answer = admin(
            &wharf,
            Method::PUT,
            "/api/v1/tenants/t0/pipeline",
            tenant_document(sink_addr, v % 2),
            StatusCode::OK,
        )
        .await?;
        applies.push(t0.elapsed());
        let changed = &answer["diff"]["processors"]["changed"];
        ensure!(
            changed.as_array().map(Vec::len) == Some(1) && changed[0]["name"] == "p0",
            "unexpected diff: {answer}"
        );
    }
    applies.sort();
    println!(
        "   apply of one tenant's change (one processor of 3, among {} processors): p50 {}, p99 {}, max {}",
        tenants * 3,
        ms(percentile(&applies, 0.5).unwrap_or_default()),
        ms(percentile(&applies, 0.99).unwrap_or_default()),
        ms(*applies.last().unwrap())
    );

    let one = Arc::new(vec!["/t0/r0".to_owned()]);
    let all: Arc<Vec<String>> = Arc::new(
        (0..tenants)
            .flat_map(|i| (0..3).map(move |j| format!("/t{i}/r{j}")))
            .collect(),
    );
    sink.reset();
    let one_rate = spread(wharf.ingress, one, 16, 5).await?;
    let all_rate = spread(wharf.ingress, all, 16, 5).await?;
    let rss_after = proc_status_kib(wharf.pid, "VmRSS").unwrap_or(0);
    println!(
        "   ingest, 16 clients, 5 s each: one tenant's route {} | spread over all {} routes {} ({:.2}x) | RSS after {:.1} MiB",
        rate(one_rate),
        tenants * 3,
        rate(all_rate),
        all_rate / one_rate,
        rss_after as f64 / 1024.0
    );
    let exit = wharf.stop().await?;
    println!("   exit {exit}");
    Ok(())
}
