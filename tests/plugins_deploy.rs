//! Deployed plugins: the admin API and the CLI deploy, list and roll back
//! versions; a swap under load loses nothing and handles nothing twice; the
//! live version survives a restart.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use support::{Backend, Reply, Wharf, eventually};
use wharf_plugin_artifacts as artifacts;

const WAIT: Duration = Duration::from_secs(30);

/// One store and a processor whose handler is the deployed plugin `handler`.
fn config(endpoint: &str, extra: &str) -> String {
    format!(
        r#"
[stores.s]
[stores.dlc]

[[routes]]
path = "/in"
store = "s"

[processors.p]
store = "s"
endpoint = "{endpoint}"
response_handler = "handler"
retry_interval = "10ms"
dead_letter_store = "dlc"
{extra}
"#
    )
}

/// `wharf_plugin_calls_total` of processor `p`, by version, and whether any call was not an ack.
async fn calls_by_version(wharf: &Wharf) -> (BTreeMap<u32, u64>, bool) {
    let text = wharf.metrics().await;
    let mut by_version = BTreeMap::new();
    let mut other_outcome = false;
    for line in text.lines() {
        let Some(rest) =
            line.strip_prefix("wharf_plugin_calls_total{tenant=\"default\",processor=\"p\",")
        else {
            continue;
        };
        let version: u32 = rest
            .split("version=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        other_outcome |= !rest.contains("outcome=\"ack\"") && count > 0;
        *by_version.entry(version).or_default() += count;
    }
    (by_version, other_outcome)
}

#[tokio::test]
async fn a_processor_waits_for_its_plugin_and_starts_when_it_is_deployed() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&config(&backend.url(), ""), dir.path()).await;
    let p = wharf.processor("p").await;
    assert_eq!(p["state"], "waiting", "{p}");
    assert_eq!(p["waiting_for"], serde_json::json!(["handler"]), "{p}");
    wharf.accept("/in", "{}").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(backend.received().is_empty(), "forwarded without a handler");

    let (status, live) = wharf.deploy("handler", artifacts::LOG_RESPONSE).await;
    assert_eq!(status, 201, "{live}");
    assert_eq!(
        live,
        serde_json::json!({"name": "handler", "version": 1, "world": "response-handler"})
    );
    eventually(
        WAIT,
        "the waiting processor started and forwarded",
        || async { wharf.processor("p").await["forwarded"] == 1 },
    )
    .await;
    assert_eq!(wharf.processor("p").await["state"], "running");

    let list = wharf.admin_get("/api/v1/plugins").await;
    assert_eq!(list[0]["name"], "handler");
    assert_eq!(list[0]["live"], 1);
    let one = wharf.admin_get("/api/v1/plugins/handler").await;
    assert_eq!(one["used_by"], serde_json::json!(["p"]));
    let v1 = &one["versions"][0];
    assert_eq!(v1["version"], 1);
    assert_eq!(
        v1["size"].as_u64().unwrap(),
        std::fs::metadata(artifacts::LOG_RESPONSE).unwrap().len()
    );
    assert_eq!(v1["sha256"].as_str().unwrap().len(), 64);

    // The same bytes again change nothing.
    let (status, again) = wharf.deploy("handler", artifacts::LOG_RESPONSE).await;
    assert_eq!((status, &again["version"]), (200, &serde_json::json!(1)));
    wharf.stop().await;
}

#[tokio::test]
async fn invalid_deploys_are_refused_with_the_reason_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&config(&backend.url(), ""), dir.path()).await;
    let put = |name: &str, body: Vec<u8>| {
        let path = format!("/api/v1/plugins/{name}");
        let wharf = &wharf;
        async move { wharf.admin_send(Method::PUT, &path, Some(body)).await }
    };

    let (status, answer) = put("handler", b"not wasm at all".to_vec()).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not a valid WebAssembly component"),
        "{answer}"
    );

    // `handler` is a response handler (its processor says so): a policy does not fit.
    let policy = std::fs::read(artifacts::BACKOFF_POLICY).unwrap();
    let (status, answer) = put("handler", policy.clone()).await;
    assert_eq!(status, 422, "{answer}");
    let reason = answer["error"].as_str().unwrap();
    assert!(
        reason.contains("is a response-handler") && reason.contains("handle-response"),
        "{reason}"
    );

    // Under a new name, the same component is taken for what it is.
    let (status, answer) = put("backoff", policy).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["world"], "failure-policy");

    let (status, answer) = put("handler", vec![0; 64 * 1024 * 1024 + 1]).await;
    assert_eq!(status, 413, "{answer}");
    let (status, answer) = put("not%20a%20name", b"x".to_vec()).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = put("log-response", b"x".to_vec()).await;
    assert_eq!(status, 409, "{answer}");

    let one = wharf.admin_get("/api/v1/plugins/handler").await;
    assert_eq!(one["live"], serde_json::Value::Null);
    assert_eq!(one["versions"], serde_json::json!([]));
    let (status, _) = wharf
        .admin_send(Method::POST, "/api/v1/plugins/handler/rollback", None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(wharf.processor("p").await["state"], "waiting");
    wharf.stop().await;
}

#[tokio::test]
async fn rollback_restores_the_previous_version_and_the_live_one_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    // An answer that json-error fails and log-response acks shows which one is live.
    let backend = Backend::start(|_, _| Reply::status(200).body(r#"{"error": "rejected"}"#)).await;
    let text = config(&backend.url(), "max_redeliveries = 0");
    let wharf = Wharf::start(&text, dir.path()).await;
    assert_eq!(
        wharf.deploy("handler", artifacts::LOG_RESPONSE).await.0,
        201
    );
    assert_eq!(wharf.deploy("handler", artifacts::JSON_ERROR).await.0, 201);
    wharf.accept("/in", "{}").await;
    eventually(WAIT, "v2 (json-error) dead-lettered it", || async {
        wharf.processor("p").await["dead_lettered"] == 1
    })
    .await;

    let (status, live) = wharf
        .admin_send(Method::POST, "/api/v1/plugins/handler/rollback", None)
        .await;
    assert_eq!((status, &live["version"]), (200, &serde_json::json!(1)));
    wharf.accept("/in", "{}").await;
    eventually(WAIT, "v1 (log-response) acked it", || async {
        wharf.processor("p").await["forwarded"] == 1
    })
    .await;
    let (status, _) = wharf
        .admin_send(Method::POST, "/api/v1/plugins/handler/rollback", None)
        .await;
    assert_eq!(status, 409, "nothing before v1");
    let (status, _) = wharf
        .admin_send(
            Method::POST,
            "/api/v1/plugins/handler/rollback?version=9",
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, live) = wharf
        .admin_send(
            Method::POST,
            "/api/v1/plugins/handler/rollback?version=2",
            None,
        )
        .await;
    assert_eq!((status, &live["version"]), (200, &serde_json::json!(2)));
    wharf.stop().await;

    // The artefacts were cached next to the components (just after each swap).
    let stored = dir.path().join("plugins/handler");
    for file in ["v1.wasm", "v1.cwasm", "v2.wasm", "v2.cwasm", "live"] {
        eventually(WAIT, file, || async { stored.join(file).exists() }).await;
    }
    let wharf = Wharf::start(&text, dir.path()).await;
    let one = wharf.admin_get("/api/v1/plugins/handler").await;
    assert_eq!(one["live"], 2, "{one}");
    assert_eq!(wharf.processor("p").await["state"], "running");
    wharf.accept("/in", "{}").await;
    eventually(WAIT, "v2 is live again after the restart", || async {
        wharf.processor("p").await["dead_lettered"] == 1
    })
    .await;
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_loses_nothing_and_handles_each_message_once() {
    const AT_LEAST: usize = 5000;
    const SWAPS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    // json-error acks a body without "error", like log-response: both ack everything here.
    let backend = Backend::start(|_, _| Reply::status(200).body(r#"{"ok": true}"#)).await;
    let wharf = Arc::new(Wharf::start(&config(&backend.url(), ""), dir.path()).await);
    assert_eq!(
        wharf.deploy("handler", artifacts::LOG_RESPONSE).await.0,
        201
    );

    // Clients post until every swap is done and at least AT_LEAST messages went in.
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let swapped = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (wharf, accepted, swapped) = (wharf.clone(), accepted.clone(), swapped.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    if swapped.load(Ordering::Relaxed) && accepted.lock().unwrap().len() >= AT_LEAST
                    {
                        break;
                    }
                    let id = wharf
                        .accept("/in", &format!("{{\"c\":{c},\"n\":{n}}}"))
                        .await;
                    accepted.lock().unwrap().push(id);
                }
            })
        })
        .collect();

    // Each new version must handle messages before the next swap.
    let plugins = [artifacts::JSON_ERROR, artifacts::LOG_RESPONSE];
    for swap in 0..SWAPS {
        let (status, live) = wharf.deploy("handler", plugins[swap % 2]).await;
        assert_eq!(status, 201, "{live}");
        let version = u32::try_from(swap + 2).unwrap();
        assert_eq!(live["version"], version);
        eventually(WAIT, "the new version handles messages", || async {
            calls_by_version(&wharf).await.0.get(&version).copied() > Some(0)
        })
        .await;
    }
    swapped.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let accepted: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    let total = accepted.len();
    assert!(total >= AT_LEAST);
    eventually(
        Duration::from_secs(120),
        "every message forwarded",
        || async { wharf.processor("p").await["forwarded"] == total as u64 },
    )
    .await;

    let keys: Vec<String> = backend
        .received()
        .iter()
        .map(|r| r.header("idempotency-key").to_owned())
        .collect();
    let unique: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(unique, accepted, "lost or unknown messages");
    assert_eq!(keys.len(), total, "a message was forwarded twice");
    let (by_version, other_outcome) = calls_by_version(&wharf).await;
    assert!(!other_outcome, "a call did not ack: {by_version:?}");
    assert_eq!(
        by_version.values().sum::<u64>(),
        total as u64,
        "handler calls differ from messages: {by_version:?}"
    );
    assert_eq!(by_version.len(), SWAPS + 1, "{by_version:?}");
    println!("hot swap: {total} messages, {SWAPS} swaps, calls by version {by_version:?}");
    Arc::into_inner(wharf).unwrap().stop().await;
}

// The CLI blocks a worker thread while the instance answers on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploys_lists_and_rolls_back_on_a_running_instance() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start_with_server(
        &config(&backend.url(), ""),
        dir.path(),
        "admin_token = \"s3cret\"",
    )
    .await;
    let admin = format!("http://{}", wharf.admin);
    let wharf_cli = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wharf"));
        command.args(args).env("WHARF_ADMIN", &admin);
        match token {
            Some(token) => command.env("WHARF_ADMIN_TOKEN", token),
            None => command.env_remove("WHARF_ADMIN_TOKEN"),
        };
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // The admin token guards deploys.
    let (ok, _, err) = wharf_cli(&["deploy", "handler", artifacts::LOG_RESPONSE], None);
    assert!(!ok && err.contains("401"), "{err}");
    let token = Some("s3cret");
    let (ok, out, err) = wharf_cli(&["deploy", "handler", artifacts::LOG_RESPONSE], token);
    assert!(ok, "{err}");
    assert!(
        out.contains("handler: version 1 (response-handler) live"),
        "{out}"
    );
    let (ok, out, err) = wharf_cli(&["deploy", "handler", artifacts::JSON_ERROR], token);
    assert!(ok && out.contains("version 2"), "{out}{err}");
    let (ok, out, err) = wharf_cli(&["deploy", "handler", artifacts::TRAP], token);
    assert!(ok, "{err}");
    assert!(out.contains("version 3"), "{out}");

    let (ok, out, err) = wharf_cli(&["plugins"], token);
    assert!(ok, "{err}");
    assert!(out.contains("handler (response-handler): live v3"), "{out}");
    let (ok, out, _) = wharf_cli(&["rollback", "handler"], token);
    assert!(ok && out.contains("handler: version 2 live"), "{out}");
    let (ok, out, _) = wharf_cli(&["rollback", "handler", "--version", "1"], token);
    assert!(ok && out.contains("handler: version 1 live"), "{out}");
    let (ok, out, _) = wharf_cli(&["plugins", "handler"], token);
    assert!(
        ok && out.contains("* v1") && out.contains("used by: p"),
        "{out}"
    );

    let (ok, _, err) = wharf_cli(&["deploy", "handler", "/no/such/file.wasm"], token);
    assert!(
        !ok && err.contains("cannot read /no/such/file.wasm"),
        "{err}"
    );
    let (ok, _, err) = wharf_cli(&["rollback", "nothing"], token);
    assert!(
        !ok && err.contains("404") && err.contains("no plugin named"),
        "{err}"
    );
    wharf.stop().await;
}
