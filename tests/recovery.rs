//! Stops and crashes of the real `wharf` binary: SIGTERM, restart, `kill -9`.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Backend, Reply, WharfProcess};

const ROUTE: &str = "/in";

fn write_config(dir: &Path, endpoint: &str, processor_extra: &str) -> std::path::PathBuf {
    let path = dir.join("wharf.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
data_dir = {data:?}

[stores.s]

[[routes]]
path = "{ROUTE}"
store = "s"

[processors.p]
store = "s"
endpoint = "{endpoint}"
{processor_extra}
"#,
        data = dir.join("data").display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn depth(client: &reqwest::Client, wharf: &WharfProcess) -> Option<u64> {
    let v: serde_json::Value = client
        .get(format!("http://{}/api/v1/stores", wharf.admin))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v[0]["depth"].as_u64()
}

#[tokio::test]
async fn sigterm_exits_zero_and_a_restart_delivers_every_stored_message_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Backend::ok().await;
    let addr = backend.addr;
    backend.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let config = write_config(
        dir.path(),
        &backend.url(),
        "retry_interval = \"1s\"\nmax_redeliveries = 100",
    );
    let client = reqwest::Client::new();

    let mut wharf = WharfProcess::spawn(&config, &dir.path().join("run1.log"));
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            wharf
                .accept(&client, ROUTE, format!("{{\"i\":{i}}}"))
                .await
                .expect("202"),
        );
    }
    // The head is now under retry against a dead backend; stop in the middle of that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    wharf.signal("TERM");
    let status = wharf.wait(Duration::from_secs(10));
    assert!(status.success(), "exit {status}:\n{}", wharf.log_text());
    assert!(wharf.log_text().contains("stopped"));

    let backend = Backend::start_at(addr, |_, _| Reply::status(200)).await;
    let wharf = WharfProcess::spawn(&config, &dir.path().join("run2.log"));
    let got = backend.wait_for(20, Duration::from_secs(20)).await;
    let keys: Vec<String> = got
        .iter()
        .map(|r| r.header("idempotency-key").to_owned())
        .collect();
    assert_eq!(
        keys, ids,
        "all 20, once each, in the order they were stored"
    );
    let _ = depth(&client, &wharf).await;
}

#[tokio::test]
async fn message_in_flight_at_kill_9_is_delivered_again_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The first attempt hangs; the process dies while waiting for it.
    let backend = Backend::start(|_, n| {
        if n == 0 {
            Reply::status(200).after(Duration::from_secs(30))
        } else {
            Reply::status(200)
        }
    })
    .await;
    let config = write_config(dir.path(), &backend.url(), "timeout = \"60s\"");
    let client = reqwest::Client::new();
    let wharf = WharfProcess::spawn(&config, &dir.path().join("run1.log"));
    let id = wharf
        .accept(&client, ROUTE, "{}".into())
        .await
        .expect("202");
    backend.wait_for(1, Duration::from_secs(10)).await;
    wharf.signal("KILL");
    drop(wharf);

    let wharf = WharfProcess::spawn(&config, &dir.path().join("run2.log"));
    let got = backend.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(
        got[1].header("idempotency-key"),
        id,
        "same message, same key"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while depth(&client, &wharf).await != Some(0) {
        assert!(Instant::now() < deadline, "store not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn kill_9_under_load_loses_no_accepted_message() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let config = write_config(dir.path(), &backend.url(), "");
    let client = reqwest::Client::new();
    let accepted = Arc::new(Mutex::new(Vec::new()));

    for round in 0..3 {
        let wharf = WharfProcess::spawn(&config, &dir.path().join(format!("run{round}.log")));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = wharf.load(&client, ROUTE, 8, stop.clone(), accepted.clone());
        // Kill at a different moment each round, while clients post and the processor forwards.
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        wharf.signal("KILL");
        drop(wharf);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }

    let wharf = WharfProcess::spawn(&config, &dir.path().join("final.log"));
    let accepted: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    assert!(
        accepted.len() > 100,
        "the load was too light to prove anything: {}",
        accepted.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (delivered, missing) = loop {
        let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
        for r in backend.received() {
            *delivered
                .entry(r.header("idempotency-key").to_owned())
                .or_default() += 1;
        }
        let missing: Vec<&String> = accepted
            .iter()
            .filter(|id| !delivered.contains_key(*id))
            .collect();
        if missing.is_empty() {
            break (delivered, 0);
        }
        if Instant::now() > deadline {
            break (delivered, missing.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    let unacknowledged = delivered
        .keys()
        .filter(|id| !accepted.contains(*id))
        .count();
    println!(
        "crash test: {} accepted (202), {} delivered, {} duplicate deliveries, {} delivered without a 202 reaching the client, {} missing",
        accepted.len(),
        delivered.len(),
        duplicates,
        unacknowledged,
        missing
    );
    assert_eq!(missing, 0, "accepted messages lost after kill -9");
    let _ = depth(&client, &wharf).await;
}
