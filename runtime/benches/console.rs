//! Console benchmark: how long the console's overview takes to first render
//! in headless Chromium with 100 processors, against the same page with 1
//! processor in the same run. A program that prints figures; it asserts
//! nothing about time.
//!
//! Run: `cargo bench -p wharf --bench console` (it runs `.ci/chromium`
//! first, which installs Debian's Chromium and ChromeDriver if missing).
//!
//! For each instance (1 processor, then 100; each with a store of its own,
//! an endpoint that refuses connections, `on_failure = "deactivate"`, so the
//! page shows deactivated processors with their last failure), `loads`
//! times: a fresh navigation to `/console` (no admin token: it opens
//! without asking), then the time from the navigation's start to the
//! console's `wharf-overview-rendered` mark (the first overview render:
//! both API calls answered and every row in the page). Also: one
//! `GET /api/v1/processors` as the server answers it.
//!
//! Options (environment variables):
//! - `WHARF_BENCH_LOADS` page loads per instance (default 20)
//! - `WHARF_BENCH_PROCESSORS` processors in the large instance (default 100)

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark program: a step that cannot go on should stop it loudly"
)]

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fantoccini::{Client, ClientBuilder};
use serde_json::json;

use common::{DEFAULT_LOG, Wharf, admin_json, env_or, percentile};

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

async fn bench() -> Result<()> {
    let loads: usize = env_or("WHARF_BENCH_LOADS", 20)?;
    let many: usize = env_or("WHARF_BENCH_PROCESSORS", 100)?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/chromium");
    let status = std::process::Command::new("bash").arg(&script).status()?;
    ensure!(status.success(), "{} failed", script.display());

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut driver = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting chromedriver")?;
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            ensure!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }),
        );
        let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await?;
        println!("console benchmark: {loads} loads per instance, headless Chromium");
        let mut baseline = None;
        for processors in [1, many] {
            let median = measure(&browser, processors, loads).await?;
            match baseline {
                None => baseline = Some(median),
                Some(base) => println!(
                    "    {processors} processors vs 1: {:.2}x the time to first render",
                    median / base
                ),
            }
        }
        browser.close().await?;
        Ok(())
    }
    .await;
    let _ = driver.kill();
    let _ = driver.wait();
    result
}

/// Loads the overview of an instance with `processors` processors `loads`
/// times; prints the figures and answers the median time to first render (ms).
async fn measure(browser: &Client, processors: usize, loads: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")?;
    let endpoint = format!("http://{}/gone", refused.local_addr()?);
    drop(refused);
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n",
        dir.path().join("data").display().to_string()
    );
    for i in 0..processors {
        config.push_str(&format!(
            "[stores.s{i}]\n[[routes]]\npath = \"/s{i}\"\nstore = \"s{i}\"\n\
             [processors.p{i}]\nstore = \"s{i}\"\nendpoint = \"{endpoint}\"\n\
             max_redeliveries = 0\non_failure = \"deactivate\"\n\n"
        ));
    }
    let mut wharf = Wharf::start(dir.path(), &config, DEFAULT_LOG).await?;
    // Each deactivates on its first message: the page shows the failure.
    for i in 0..processors {
        common::send(
            wharf.ingress,
            http::Method::POST,
            &format!("/s{i}"),
            bytes::Bytes::from_static(b"{}"),
        )
        .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = admin_json(wharf.admin, "/api/v1/processors").await?;
        let down = list.as_array().map_or(0, |a| {
            a.iter().filter(|p| p["state"] == "deactivated").count()
        });
        if down == processors {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{down} of {processors} deactivated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    admin_json(wharf.admin, "/api/v1/processors").await?;
    let api_ms = started.elapsed().as_secs_f64() * 1000.0;

    let url = format!("http://{}/console", wharf.admin);
    let mut times = Vec::with_capacity(loads);
    let mut last_split = None;
    for _ in 0..loads {
        browser.goto("about:blank").await?;
        browser.goto(&url).await?;
        let rendered = wait_rendered(browser).await?;
        let rows = browser
            .execute(
                "return document.querySelectorAll('#processors tbody tr').length",
                vec![],
            )
            .await?;
        ensure!(
            rows == json!(processors),
            "rendered {rows} rows, not {processors}"
        );
        times.push(rendered);
        let split = browser
            .execute(
                "const n = performance.getEntriesByType('navigation')[0];
                 const api = performance.getEntriesByType('resource')
                   .filter(r => r.name.includes('/api/v1/'))
                   .map(r => [r.name.replace(/^.*\\/api\\/v1/, ''), r.startTime, r.responseEnd]);
                 return [n.responseEnd, n.domContentLoadedEventEnd, api];",
                vec![],
            )
            .await?;
        last_split = Some(split);
    }
    times.sort_by(f64::total_cmp);
    let median = percentile(&times, 0.5).unwrap_or(f64::NAN);
    println!(
        "{processors:>4} processors: first render of the overview p50 {median:.1} ms, p90 {:.1} ms, max {:.1} ms (GET /api/v1/processors {api_ms:.1} ms)",
        percentile(&times, 0.9).unwrap_or(f64::NAN),
        times.last().copied().unwrap_or(f64::NAN),
    );
    if let Some(split) = last_split {
        println!(
            "      last load (ms from navigation start): page received, DOMContentLoaded, then each API call [path, start, end]: {split}"
        );
    }
    wharf.stop().await?;
    Ok(median)
}

/// Milliseconds from the navigation's start to the overview's first render.
async fn wait_rendered(browser: &Client) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mark = browser
            .execute(
                "const m = performance.getEntriesByName('wharf-overview-rendered');
                 return m.length ? m[0].startTime : null;",
                vec![],
            )
            .await?;
        if let Some(ms) = mark.as_f64() {
            return Ok(ms);
        }
        ensure!(Instant::now() < deadline, "the overview never rendered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
