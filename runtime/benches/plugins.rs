//! Plugin benchmark: what a response-handler plugin costs, in one run.
//! A program that prints figures; it asserts nothing about time.
//!
//! Run: `cargo bench -p wharf --bench plugins`.
//!
//! - (a) per call, in this process: the built-in `log-response` handler
//!   versus the `log-response` component (fresh pooled instance per call),
//!   1 KiB message and response body.
//! - (b) deploy to live: `PUT /api/v1/plugins/handler` on a `wharf run`
//!   process, timed from the request to the `201` (compile, link, files
//!   fsynced, live pointer swapped), alternating two Rust components so that
//!   every deploy is a new version.
//! - (c) in-order forward: two stores filled with the same number of 1 KiB
//!   messages, drained one after the other by a continuous processor with
//!   the built-in handler and one with the deployed plugin, to the same
//!   backend.
//!
//! Options (environment variables): `WHARF_BENCH_MESSAGES` messages per
//! forward run (default 20000), `WHARF_BENCH_CALLS` calls in (a) (default
//! 20000), `WHARF_BENCH_DEPLOYS` deploys in (b) (default 10),
//! `WHARF_BENCH_CLIENTS` fill connections (default 16).
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark program: a step that cannot go on should stop it loudly"
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use wharf::plugins::{Host, Limits, World};
use wharf::processor::forwarder::ForwardResponse;
use wharf::processor::handler::{LogResponse, ResponseHandler};
use wharf::store::Message;
use wharf_plugin_artifacts as artifacts;

use common::{
    DEFAULT_LOG, Forward, Mode, Sink, Wharf, call, connect, env_or, json_body, percentile, rate,
    run_load, store_depth, text,
};

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

async fn bench() -> Result<()> {
    let messages: usize = env_or("WHARF_BENCH_MESSAGES", 20_000)?;
    let calls: usize = env_or("WHARF_BENCH_CALLS", 20_000)?;
    let deploys: usize = env_or("WHARF_BENCH_DEPLOYS", 10)?;
    let clients: usize = env_or("WHARF_BENCH_CLIENTS", 16)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    eprintln!("(a) per call: {calls} calls each ...");
    let (builtin_call, plugin_call) = per_call(calls).await?;

    let tmp = tempfile::tempdir()?;
    let (sink_addr, sink) = Sink::start().await?;
    let mut wharf = Wharf::start(tmp.path(), &config(tmp.path(), sink_addr), DEFAULT_LOG).await?;
    // The built-in processor must not drain its store while it is filled; the
    // plugin one waits for its plugin.
    admin(
        wharf.admin,
        Method::POST,
        "/api/v1/processors/builtin/deactivate",
        None,
    )
    .await?;

    eprintln!("(b) deploy to live: {deploys} deploys ...");
    let components = [
        std::fs::read(artifacts::LOG_RESPONSE)?,
        std::fs::read(artifacts::JSON_ERROR)?,
    ];
    let mut deploy_ms = Vec::new();
    for i in 0..deploys {
        let started = Instant::now();
        let (status, body) = admin(
            wharf.admin,
            Method::PUT,
            "/api/v1/plugins/handler",
            Some(components[i % 2].clone()),
        )
        .await?;
        deploy_ms.push(started.elapsed().as_secs_f64() * 1e3);
        ensure!(
            status == StatusCode::CREATED,
            "deploy: {status} {}",
            text(&body)
        );
    }
    // log-response live for the forward run.
    if deploys.is_multiple_of(2) {
        admin(
            wharf.admin,
            Method::PUT,
            "/api/v1/plugins/handler",
            Some(components[0].clone()),
        )
        .await?;
    }
    admin(
        wharf.admin,
        Method::POST,
        "/api/v1/processors/plugin/deactivate",
        None,
    )
    .await?;
    let first_deploy = deploy_ms[0];
    let mut later = deploy_ms[1..].to_vec();
    later.sort_by(f64::total_cmp);

    eprintln!("(c) forward: filling both stores with {messages} messages ...");
    for route in ["/builtin", "/plugin"] {
        let fill = run_load(
            wharf.ingress,
            route,
            clients,
            Mode::Count(messages),
            None,
            false,
        )
        .await?;
        ensure!(fill.non_202 == 0, "fill {route}: {} non-202", fill.non_202);
    }
    let mut forward = Vec::new();
    for processor in ["builtin", "plugin"] {
        eprintln!("(c) forward: {processor} ...");
        sink.reset();
        let activated = Instant::now();
        admin(
            wharf.admin,
            Method::POST,
            &format!("/api/v1/processors/{processor}/activate"),
            None,
        )
        .await?;
        sink.wait_for(messages, Duration::from_secs(300)).await?;
        let f = Forward::from_arrivals(&sink.take(), messages, activated);
        let depth_deadline = Instant::now() + Duration::from_secs(30);
        while store_depth(wharf.admin, processor).await? > 0 && Instant::now() < depth_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        forward.push(f);
    }
    wharf.stop().await?;

    let ratio = forward[1].per_sec() / forward[0].per_sec();
    println!();
    println!(
        "== Wharf plugin benchmark ({cores} cores, release; {calls} calls, {deploys} deploys, {messages} messages forwarded per handler)"
    );
    println!(
        "per call      built-in log-response p50 {:>6.2} us  mean {:>6.2} us | plugin log-response (fresh instance) p50 {:>6.2} us  p99 {:>6.2} us  mean {:>6.2} us | overhead {:.2} us",
        builtin_call.p50,
        builtin_call.mean,
        plugin_call.p50,
        plugin_call.p99,
        plugin_call.mean,
        plugin_call.mean - builtin_call.mean
    );
    println!(
        "deploy->live  first {:.1} ms; then p50 {:.1} ms, max {:.1} ms (goal < 100 ms) {}",
        first_deploy,
        percentile(&later, 0.5).unwrap_or(f64::NAN),
        later.last().copied().unwrap_or(f64::NAN),
        common::verdict(later.last().is_some_and(|&m| m < 100.0) && first_deploy < 100.0)
    );
    println!(
        "forward       built-in {:>7} msg/s  gap p50 {:>5.3} ms | plugin {:>7} msg/s  gap p50 {:>5.3} ms | plugin/built-in {:.2} (goal >= 0.90) {}",
        rate(forward[0].per_sec()),
        forward[0].gap(0.5),
        rate(forward[1].per_sec()),
        forward[1].gap(0.5),
        ratio,
        common::verdict(ratio >= 0.90)
    );
    Ok(())
}

struct CallTimes {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn times(mut us: Vec<f64>) -> CallTimes {
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    us.sort_by(f64::total_cmp);
    CallTimes {
        p50: percentile(&us, 0.5).unwrap_or(f64::NAN),
        p99: percentile(&us, 0.99).unwrap_or(f64::NAN),
        mean,
    }
}

/// (a): the same message and response through both handlers, one call at a time.
async fn per_call(calls: usize) -> Result<(CallTimes, CallTimes)> {
    let host = Host::shared()?;
    let slot = host.load_file(Path::new(artifacts::LOG_RESPONSE), World::ResponseHandler)?;
    let plugin = host.handler(slot, "bench", Limits::default());
    let builtin = LogResponse;
    let message = Message {
        id: "0190f3a2-7b1c-7d4e-9a55-3c2b1a0f9e8d".into(),
        received_at: 0,
        method: Method::POST,
        path: "/bench".into(),
        headers: {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, "application/json".parse()?);
            h
        },
        body: json_body(0, 0),
    };
    let response = ForwardResponse {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: json_body(1, 1),
        elapsed: Duration::from_millis(1),
    };
    let measure = async |handler: &dyn ResponseHandler| {
        // Warm-up: the pool's slots and the caches.
        for _ in 0..calls / 10 {
            handler.handle(&message, 1, &response).await;
        }
        let mut us = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            let handled = handler.handle(&message, 1, &response).await;
            us.push(started.elapsed().as_secs_f64() * 1e6);
            assert_eq!(handled.outcome.label(), "ack");
        }
        times(us)
    };
    let builtin_times = measure(&builtin).await;
    let plugin_times = measure(&plugin).await;
    Ok((builtin_times, plugin_times))
}

/// One admin request with an optional body.
async fn admin(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes)> {
    if body.is_none() {
        let (status, body) = call(addr, method, path).await?;
        ensure!(status.is_success(), "{path}: {status} {}", text(&body));
        return Ok((status, body));
    }
    let mut sender = connect(addr).await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn config(dir: &Path, backend: SocketAddr) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
data_dir = "{}"

[stores.builtin]
[stores.plugin]

[[routes]]
path = "/builtin"
store = "builtin"

[[routes]]
path = "/plugin"
store = "plugin"

[processors.builtin]
store = "builtin"
endpoint = "http://{backend}/forward"

[processors.plugin]
store = "plugin"
endpoint = "http://{backend}/forward"
response_handler = "handler"
"#,
        dir.join("data").display()
    )
}
