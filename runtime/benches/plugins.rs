//! Plugin benchmark: what a response-handler plugin costs, in one run.
//! A program that prints figures; it asserts nothing about time.
//!
//! Run: `cargo bench -p wharf --bench plugins`.
//!
//! - (a) per call, in this process: the built-in `log-response` handler
//!   versus the `log-response` component (fresh pooled instance per call),
//!   1 KiB message and response body; and the plugin call alone, its fresh
//!   instance made beforehand, as the processor does while the request is in
//!   flight.
//! - (b) deploy to live: `PUT /api/v1/plugins/handler` on a `wharf run`
//!   process, timed from the request to the `201` (compile, link, files
//!   fsynced, live pointer swapped), alternating two Rust components so that
//!   every deploy is a new version.
//! - (c) in-order forward: four stores filled with the same number of 1 KiB
//!   messages, drained one after the other (built-in, plugin, built-in,
//!   plugin) by continuous processors with the built-in handler or the
//!   deployed plugin, to the same backend.
//! - (d) the Python and JavaScript `json-error` guests, where their build
//!   tools are installed: deploy time (compiling 12-18 MB), then the time a
//!   restart takes to become healthy with every live version loaded from
//!   its cached artefact.
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
use http::{HeaderMap, Method, StatusCode, header};
use wharf::plugins::{Host, Limits, World};
use wharf::processor::forwarder::ForwardResponse;
use wharf::processor::handler::{LogResponse, ResponseHandler};
use wharf::store::Message;
use wharf_plugin_artifacts as artifacts;

use common::{
    Forward, Mode, Sink, Wharf, env_or, json_body, percentile, rate, run_load, send, store_depth,
    text,
};

/// Forward runs per handler, interleaved.
const ROUNDS: [u32; 2] = [1, 2];

/// Both handlers log each response at INFO; neither may be slowed by logging.
const LOG: &str = "warn,wharf=info,wharf::processor::handler=warn,wharf::plugins=warn";

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
    let (builtin_call, plugin_call, prepared_call) = per_call(calls).await?;
    let compile_ms = compile_times(5)?;
    if std::env::var("WHARF_BENCH_ONLY_CALLS").is_ok() {
        println!(
            "per call built-in {:.2} us, plugin p50 {:.2} p99 {:.2} mean {:.2} us, prepared mean {:.2} us; compile+link {compile_ms:.1} ms",
            builtin_call.mean,
            plugin_call.p50,
            plugin_call.p99,
            plugin_call.mean,
            prepared_call.mean
        );
        return Ok(());
    }

    let tmp = tempfile::tempdir()?;
    let (sink_addr, sink) = Sink::start().await?;
    let mut wharf = Wharf::start(tmp.path(), &config(tmp.path(), sink_addr), LOG).await?;
    // The built-in processor must not drain its store while it is filled; the
    // plugin one waits for its plugin.
    for round in ROUNDS {
        let path = format!("/api/v1/processors/builtin{round}/deactivate");
        admin(wharf.admin, Method::POST, &path, None).await?;
    }

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
    for round in ROUNDS {
        let path = format!("/api/v1/processors/plugin{round}/deactivate");
        admin(wharf.admin, Method::POST, &path, None).await?;
    }
    // Deploys alternate: even ones are log-response, odd ones json-error.
    let by_component = |parity: usize| {
        let mut ms: Vec<f64> = deploy_ms.iter().skip(parity).step_by(2).copied().collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let (log_deploys, json_deploys) = (by_component(0), by_component(1));

    eprintln!("(c) forward: filling four stores with {messages} messages each ...");
    for round in ROUNDS {
        for kind in ["builtin", "plugin"] {
            // run_load takes a 'static path; four short strings for the whole run.
            let route: &'static str = format!("/{kind}{round}").leak();
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
    }
    // Interleaved, so that a slow phase of the machine does not favour one side.
    let mut forward = Vec::new();
    for round in ROUNDS {
        for kind in ["builtin", "plugin"] {
            let processor = format!("{kind}{round}");
            eprintln!("(c) forward: {processor} ...");
            sink.reset();
            let activated = Instant::now();
            let path = format!("/api/v1/processors/{processor}/activate");
            admin(wharf.admin, Method::POST, &path, None).await?;
            sink.wait_for(messages, Duration::from_secs(300)).await?;
            let f = Forward::from_arrivals(&sink.take(), messages, activated);
            let deadline = Instant::now() + Duration::from_secs(30);
            while store_depth(wharf.admin, &processor).await? > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            forward.push((kind, f));
        }
    }
    let mean_rate = |which: &str| {
        let rates: Vec<f64> = forward
            .iter()
            .filter(|(k, _)| *k == which)
            .map(|(_, f)| f.per_sec())
            .collect();
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    let (builtin_rate, plugin_rate) = (mean_rate("builtin"), mean_rate("plugin"));
    // (d) the Python and JavaScript guests, where their tools are installed:
    // deploy (compile) time, then a restart that loads every cached artefact.
    let mut polyglot = Vec::new();
    for (name, script) in [
        ("json-error-py", "plugins/python/json-error/build.sh"),
        ("json-error-js", "plugins/js/json-error/build.sh"),
    ] {
        let wasm = tmp.path().join(format!("{name}.wasm"));
        let built = std::process::Command::new("bash")
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join(script),
            )
            .arg(&wasm)
            .stderr(std::process::Stdio::null())
            .status()?;
        if !built.success() {
            eprintln!("(d) {name}: not built ({built}); skipped");
            continue;
        }
        let bytes = std::fs::read(&wasm)?;
        let size = bytes.len();
        eprintln!("(d) deploying {name} ({size} bytes) ...");
        let started = Instant::now();
        let (status, body) = admin(
            wharf.admin,
            Method::PUT,
            &format!("/api/v1/plugins/{name}"),
            Some(bytes),
        )
        .await?;
        ensure!(
            status == StatusCode::CREATED,
            "deploy {name}: {status} {}",
            text(&body)
        );
        polyglot.push((name, size, started.elapsed()));
    }
    wharf.stop().await?;
    let started = Instant::now();
    let mut wharf = Wharf::start(tmp.path(), &config(tmp.path(), sink_addr), LOG).await?;
    let restart = started.elapsed();
    wharf.stop().await?;

    let ratio = plugin_rate / builtin_rate;
    println!();
    println!(
        "== Wharf plugin benchmark ({cores} cores, release; {calls} calls, {deploys} deploys, {messages} messages per forward run, {} runs per handler)",
        ROUNDS.len()
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
        "per call      plugin, instance made beforehand (as while the request is in flight): p50 {:>6.2} us  p99 {:>6.2} us  mean {:>6.2} us",
        prepared_call.p50, prepared_call.p99, prepared_call.mean
    );
    println!(
        "compile       read + compile + link of log-response ({} bytes): {compile_ms:.1} ms",
        std::fs::metadata(artifacts::LOG_RESPONSE)?.len()
    );
    for (name, ms, size) in [
        ("log-response", &log_deploys, components[0].len()),
        ("json-error", &json_deploys, components[1].len()),
    ] {
        let max = ms.last().copied().unwrap_or(f64::NAN);
        println!(
            "deploy->live  {name} ({size} bytes): p50 {:.1} ms, max {max:.1} ms over {} deploys (goal < 100 ms) {}",
            percentile(ms, 0.5).unwrap_or(f64::NAN),
            ms.len(),
            common::verdict(max < 100.0)
        );
    }
    let runs: Vec<String> = forward
        .iter()
        .map(|(kind, f)| {
            format!(
                "{kind} {} (gap p50 {:.3} ms)",
                rate(f.per_sec()),
                f.gap(0.5)
            )
        })
        .collect();
    println!("forward runs  {}", runs.join(", "));
    println!(
        "forward       built-in {:>7} msg/s | plugin {:>7} msg/s | plugin/built-in {:.2} (goal >= 0.90) {}",
        rate(builtin_rate),
        rate(plugin_rate),
        ratio,
        common::verdict(ratio >= 0.90)
    );
    for (name, size, compile) in &polyglot {
        println!(
            "deploy        {name}: {:.1} MB, deploy (compile + store) {:.1} s",
            *size as f64 / 1e6,
            compile.as_secs_f64()
        );
    }
    println!(
        "restart       to healthy with {} deployed plugins loaded from cached artefacts: {} ms",
        1 + polyglot.len(),
        restart.as_millis()
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

/// Mean time to read, compile and link the Rust `log-response` component.
fn compile_times(runs: u32) -> Result<f64> {
    let host = Host::shared()?;
    let started = Instant::now();
    for _ in 0..runs {
        host.load_file(Path::new(artifacts::LOG_RESPONSE), World::ResponseHandler)?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e3 / f64::from(runs))
}

/// (a): the same message and response through both handlers, one call at a time.
async fn per_call(calls: usize) -> Result<(CallTimes, CallTimes, CallTimes)> {
    let host = Host::shared()?;
    let slot = host.load_file(Path::new(artifacts::LOG_RESPONSE), World::ResponseHandler)?;
    let plugin = host.handler(slot, "bench", Limits::default(), None);
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
        trail: None,
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
    // What the processor waits for: the instance is made while its request is in flight.
    let mut us = Vec::with_capacity(calls);
    for _ in 0..calls {
        plugin.prepare().await;
        let started = Instant::now();
        let handled = plugin.handle(&message, 1, &response).await;
        us.push(started.elapsed().as_secs_f64() * 1e6);
        assert_eq!(handled.outcome.label(), "ack");
    }
    Ok((builtin_times, plugin_times, times(us)))
}

/// One admin request with an optional body; a request without one must succeed.
async fn admin(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes)> {
    let expect_success = body.is_none();
    let (status, answer) = send(addr, method, path, Bytes::from(body.unwrap_or_default())).await?;
    ensure!(
        !expect_success || status.is_success(),
        "{path}: {status} {}",
        text(&answer)
    );
    Ok((status, answer))
}

fn config(dir: &Path, backend: SocketAddr) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
        dir.join("data").display()
    );
    for round in ROUNDS {
        for (kind, handler) in [("builtin", "log-response"), ("plugin", "handler")] {
            let name = format!("{kind}{round}");
            text.push_str(&format!(
                r#"
[stores.{name}]

[[routes]]
path = "/{name}"
store = "{name}"

[processors.{name}]
store = "{name}"
endpoint = "http://{backend}/forward"
response_handler = "{handler}"
"#
            ));
        }
    }
    text
}
