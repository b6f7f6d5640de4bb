//! A RabbitMQ restart (`rabbitmqctl stop_app`, then `start_app`) while clients
//! post and the processor forwards. Its own test binary: no other test may
//! use the broker while it is down.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::broker::{Queues, URL, broker_up};
use support::{Backend, Wharf, eventually};

fn rabbitmqctl(arg: &str) -> bool {
    Command::new("rabbitmqctl")
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn broker_restart_during_load_loses_nothing_and_shows_disconnected() {
    if !broker_up("broker_restart_during_load_loses_nothing_and_shows_disconnected") {
        return;
    }
    if Command::new("rabbitmqctl").arg("status").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "rabbitmqctl is needed under CI=true"
        );
        eprintln!("\n!!! SKIPPED broker restart test: rabbitmqctl not found\n");
        return;
    }
    let q = Queues::new("restart", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let config = format!(
        r#"
[stores.s]
backend = "amqp"
url = "{URL}"
queue = "{}"
retry = {{ count = -1, interval = "100ms", backoff_factor = 2.0, max_wait = "1s" }}

[[routes]]
path = "/in"
store = "s"

[processors.p]
store = "s"
endpoint = "{}"
reconnect = {{ count = -1, interval = "200ms", backoff_factor = 2.0, max_wait = "1s" }}
"#,
        q.get(0),
        backend.url()
    );
    let wharf = Arc::new(Wharf::start(&config, dir.path()).await);
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (wharf, accepted, stop) = (wharf.clone(), accepted.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let r = wharf
                        .post_json("/in", &format!("{{\"c\":{c},\"n\":{n}}}"))
                        .await;
                    if r.status() == 202 {
                        let v: serde_json::Value = r.json().await.unwrap();
                        accepted
                            .lock()
                            .unwrap()
                            .push(v["id"].as_str().unwrap().to_owned());
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(700)).await;
    let restart = tokio::task::spawn_blocking(|| {
        let stopped = rabbitmqctl("stop_app");
        std::thread::sleep(Duration::from_secs(2));
        let started = rabbitmqctl("start_app");
        (stopped, started)
    });
    // While the broker is away, the admin API says so.
    let mut saw_disconnected = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !restart.is_finished() && Instant::now() < deadline {
        let stores = wharf.admin_get("/api/v1/stores").await;
        saw_disconnected |= stores[0]["connected"] == false;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (stopped, started) = restart.await.unwrap();
    assert!(stopped && started, "rabbitmqctl stop_app/start_app failed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        saw_disconnected,
        "the admin API never showed the store as disconnected"
    );

    let all: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    assert!(all.len() > 50, "load too light: {}", all.len());
    eventually(
        Duration::from_secs(60),
        "every accepted message delivered",
        || async {
            let got: BTreeSet<String> = backend
                .received()
                .iter()
                .map(|r| r.header("idempotency-key").to_owned())
                .collect();
            all.is_subset(&got)
        },
    )
    .await;
    let delivered = backend.received().len();
    println!(
        "broker restart: {} accepted, {} deliveries ({} duplicates), none lost",
        all.len(),
        delivered,
        delivered.saturating_sub(all.len())
    );
    let stores = wharf.admin_get("/api/v1/stores").await;
    assert_eq!(stores[0]["connected"], true, "reconnected: {stores}");
}
