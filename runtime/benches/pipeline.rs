//! Pipeline benchmark: how long an apply takes that changes one processor
//! of a pipeline of 10 and of 100 processors (each with its own embedded
//! store and route), against a real `wharf run` process. A program that
//! prints figures; it asserts nothing about time.
//!
//! Run: `cargo bench -p wharf --bench pipeline`.
//!
//! Per size, after a warm-up, `WHARF_BENCH_APPLIES` applies alternate
//! processor `p0`'s endpoint between two URLs of the same backend; each is
//! timed from the `PUT /api/v1/pipeline` request to its `200`. The answer's
//! diff must name `p0` alone as changed. A no-op apply (the live document
//! again) is timed too: the cost of validating, diffing and recording.
//! While the applies run, a client posts to route `/r1` (an unchanged
//! processor's) and the benchmark checks that each of those messages is
//! forwarded exactly once.
//!
//! Options: `WHARF_BENCH_APPLIES` (default 100), `WHARF_BENCH_DIR`,
//! `WHARF_BENCH_RUST_LOG`, `WHARF_BENCH_BINARY` (see `common`).
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark program: a step that cannot go on should stop it loudly"
)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use http::{Method, StatusCode};

use common::{DEFAULT_LOG, Sink, Wharf, call, env_or, percentile, send, text};

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

/// `n` stores, routes and continuous processors; `p0` forwards to `?v={version}`.
fn document(n: usize, sink: SocketAddr, version: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let query = if i == 0 {
            format!("?v={version}")
        } else {
            String::new()
        };
        out.push_str(&format!(
            "[stores.s{i}]\n\n[[routes]]\npath = \"/r{i}\"\nstore = \"s{i}\"\n\n[processors.p{i}]\nstore = \"s{i}\"\nendpoint = \"http://{sink}/sink{query}\"\n\n"
        ));
    }
    out
}

struct Figures {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn figures(mut times: Vec<Duration>) -> Figures {
    times.sort();
    Figures {
        p50: percentile(&times, 0.50).unwrap_or_default(),
        p99: percentile(&times, 0.99).unwrap_or_default(),
        max: times.last().copied().unwrap_or_default(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn apply(admin: SocketAddr, document: &str) -> Result<(Duration, serde_json::Value)> {
    let started = Instant::now();
    let (status, body) = send(
        admin,
        Method::PUT,
        "/api/v1/pipeline",
        Bytes::from(document.to_owned()),
    )
    .await?;
    let took = started.elapsed();
    ensure!(status == StatusCode::OK, "apply: {status} {}", text(&body));
    Ok((took, serde_json::from_slice(&body)?))
}

async fn bench() -> Result<()> {
    let applies: usize = env_or("WHARF_BENCH_APPLIES", 100)?;
    let rust_log: String = env_or("WHARF_BENCH_RUST_LOG", DEFAULT_LOG.to_owned())?;
    let parent = std::env::var_os("WHARF_BENCH_DIR").map(PathBuf::from);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("== Wharf pipeline benchmark ({cores} cores, release; {applies} applies per size)");
    for n in [10, 100] {
        let tmp = match &parent {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        let (sink_addr, sink) = Sink::start().await?;
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n{}",
            tmp.path().join("data").display().to_string(),
            document(n, sink_addr, 0)
        );
        let mut wharf = Wharf::start(tmp.path(), &config, &rust_log).await?;

        // Messages through an unchanged processor while the applies run.
        let stop = Arc::new(AtomicBool::new(false));
        let poster = {
            let (stop, ingress) = (stop.clone(), wharf.ingress);
            tokio::spawn(async move {
                let mut accepted = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let body = Bytes::from(format!("{{\"n\":{accepted}}}"));
                    if let Ok((StatusCode::ACCEPTED, _)) =
                        send(ingress, Method::POST, "/r1", body).await
                    {
                        accepted += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                accepted
            })
        };

        for warm in 1..=5 {
            apply(wharf.admin, &document(n, sink_addr, warm % 2)).await?;
        }
        let mut changed = Vec::with_capacity(applies);
        for i in 0..applies {
            let (took, answer) = apply(wharf.admin, &document(n, sink_addr, (i + 6) % 2)).await?;
            let diff = &answer["diff"]["processors"];
            ensure!(
                diff["changed"].as_array().map(Vec::len) == Some(1)
                    && diff["changed"][0]["name"] == "p0"
                    && diff["unchanged"].as_array().map(Vec::len) == Some(n - 1),
                "unexpected diff: {diff}"
            );
            changed.push(took);
        }
        let live = document(n, sink_addr, (applies + 5) % 2);
        let mut noop = Vec::with_capacity(applies);
        for _ in 0..applies.min(50) {
            noop.push(apply(wharf.admin, &live).await?.0);
        }
        stop.store(true, Ordering::Relaxed);
        let posted = poster.await?;
        sink.wait_for(posted, Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let arrivals = sink.take();
        let (status, _) = call(wharf.admin, Method::GET, "/healthz").await?;
        ensure!(status == StatusCode::OK, "unhealthy after the applies");
        let exit = wharf.stop().await?;

        let c = figures(changed);
        let o = figures(noop);
        println!(
            "{n:>3} processors: change one  p50 {:>9}  p99 {:>9}  max {:>9} | no-op apply p50 {:>9}  p99 {:>9} | {} messages through an unchanged processor meanwhile, {} arrivals ({}) | exit {exit}",
            ms(c.p50),
            ms(c.p99),
            ms(c.max),
            ms(o.p50),
            ms(o.p99),
            posted,
            arrivals.len(),
            if arrivals.len() == posted {
                "each once"
            } else {
                "MISMATCH"
            }
        );
        ensure!(
            arrivals.len() == posted,
            "{posted} posted, {} arrived",
            arrivals.len()
        );
    }
    Ok(())
}
