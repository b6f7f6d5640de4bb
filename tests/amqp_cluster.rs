//! Several `wharf` processes on one RabbitMQ queue, and crashes: the real
//! binary, the real broker, `kill -9`.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::broker::{Queues, URL, broker_up};
use support::{Backend, Reply, WharfProcess, wait_all};

const ROUTE: &str = "/in";

fn write_config(dir: &Path, name: &str, queue: &str, endpoint: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
data_dir = {data:?}

[stores.s]
backend = "amqp"
url = "{URL}"
queue = "{queue}"
retry = {{ count = 20, interval = "50ms", backoff_factor = 1.5, max_wait = "1s" }}

[[routes]]
path = "{ROUTE}"
store = "s"

[processors.p]
store = "s"
endpoint = "{endpoint}"
retry_interval = "50ms"
reconnect = {{ count = -1, interval = "100ms", backoff_factor = 2.0, max_wait = "1s" }}
"#,
        data = dir.join(format!("data-{name}")).display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn forwarded(client: &reqwest::Client, wharf: &WharfProcess) -> u64 {
    let v = wharf.admin_get(client, "/api/v1/processors").await;
    v[0]["forwarded"].as_u64().unwrap()
}

#[tokio::test]
async fn standby_instance_takes_over_after_kill_9_keeping_order() {
    if !broker_up("standby_instance_takes_over_after_kill_9_keeping_order") {
        return;
    }
    let q = Queues::new("sac", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(200).after(Duration::from_millis(5))).await;
    let a_config = write_config(dir.path(), "a", q.get(0), &backend.url());
    let b_config = write_config(dir.path(), "b", q.get(0), &backend.url());
    let a = WharfProcess::spawn(&a_config, &dir.path().join("a.log"));
    let b = WharfProcess::spawn(&b_config, &dir.path().join("b.log"));
    let client = reqwest::Client::new();

    let mut ids = Vec::new();
    for i in 0..300 {
        let via = if i % 2 == 0 { &a } else { &b };
        ids.push(
            via.accept(&client, ROUTE, format!("{{\"i\":{i}}}"))
                .await
                .expect("202"),
        );
    }
    backend.wait_for(50, Duration::from_secs(20)).await;
    let (fa, fb) = (forwarded(&client, &a).await, forwarded(&client, &b).await);
    assert!(
        fa == 0 || fb == 0,
        "single active consumer: only one instance forwards ({fa}, {fb})"
    );
    let (active, standby) = if fa > 0 { (a, b) } else { (b, a) };
    active.signal("KILL");
    drop(active);

    let all: BTreeSet<String> = ids.iter().cloned().collect();
    let (order, duplicates) = wait_all(&backend, &all, Duration::from_secs(30)).await;
    assert_eq!(
        order, ids,
        "first arrivals keep the store order across the takeover"
    );
    assert!(
        forwarded(&client, &standby).await > 0,
        "the standby took over"
    );
    println!(
        "takeover: {} messages, {duplicates} delivered twice (in flight at the kill)",
        ids.len()
    );
}

#[tokio::test]
async fn kill_9_under_load_on_amqp_loses_no_accepted_message() {
    if !broker_up("kill_9_under_load_on_amqp_loses_no_accepted_message") {
        return;
    }
    let q = Queues::new("crash", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let config = write_config(dir.path(), "w", q.get(0), &backend.url());
    let client = reqwest::Client::new();
    let accepted = Arc::new(Mutex::new(Vec::new()));

    for round in 0..2 {
        let wharf = WharfProcess::spawn(&config, &dir.path().join(format!("run{round}.log")));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = wharf.load(&client, ROUTE, 8, stop.clone(), accepted.clone());
        tokio::time::sleep(Duration::from_millis(800 + 400 * round)).await;
        wharf.signal("KILL");
        drop(wharf);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }
    let _wharf = WharfProcess::spawn(&config, &dir.path().join("final.log"));
    let all: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    assert!(
        all.len() > 100,
        "load too light to prove anything: {}",
        all.len()
    );
    let (_, duplicates) = wait_all(&backend, &all, Duration::from_secs(60)).await;
    println!(
        "amqp crash test: {} accepted, all delivered, {duplicates} duplicate deliveries",
        all.len()
    );
}

#[tokio::test]
async fn url_env_takes_the_broker_url_from_the_environment() {
    if !broker_up("url_env_takes_the_broker_url_from_the_environment") {
        return;
    }
    let q = Queues::new("env", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let config = write_config(dir.path(), "w", q.get(0), &backend.url());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("url = \"{URL}\""),
        "url_env = \"WHARF_TEST_AMQP_URL\"",
    );
    std::fs::write(&config, text).unwrap();

    let wharf = WharfProcess::spawn_with_env(
        &config,
        &dir.path().join("w.log"),
        &[("WHARF_TEST_AMQP_URL", URL)],
    );
    let client = reqwest::Client::new();
    let id = wharf
        .accept(&client, ROUTE, "{}".into())
        .await
        .expect("202");
    let got = backend.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got[0].header("idempotency-key"), id);
    drop(wharf);

    // Without the variable, startup fails and says which one is missing.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("run")
        .arg(&config)
        .env_remove("WHARF_TEST_AMQP_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WHARF_TEST_AMQP_URL is not set"),
        "{stderr}"
    );
}
