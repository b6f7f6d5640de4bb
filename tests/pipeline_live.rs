//! Live pipelines from outside: SIGHUP, `wharf reload` and `wharf apply`
//! against the real binary, `kill -9` while applies run, and an apply
//! storm under continuous load with nothing lost, duplicated by an
//! unchanged processor, or reordered.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::{Backend, Wharf, WharfProcess, eventually, server_table};

const WAIT: Duration = Duration::from_secs(20);

/// Routes `/r0 .. /rN` (as `routes` says), each with its store and a processor to `endpoint`.
fn pipeline(routes: &[&str], endpoint: &str) -> String {
    let mut out = String::new();
    for r in routes {
        out.push_str(&format!(
            "[stores.{r}]\n\n[[routes]]\npath = \"/{r}\"\nstore = \"{r}\"\n\n[processors.{r}-out]\nstore = \"{r}\"\nendpoint = \"{endpoint}\"\nretry_interval = \"20ms\"\n\n"
        ));
    }
    out
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("wharf.toml");
    std::fs::write(
        &path,
        format!("{}{body}", server_table(&dir.join("data"), "")),
    )
    .unwrap();
    path
}

/// Runs the CLI against a running instance; exit status and output.
fn cli(wharf: &WharfProcess, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .arg("--admin")
        .arg(format!("http://{}", wharf.admin))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn status_of(client: &reqwest::Client, wharf: &WharfProcess, path: &str) -> u16 {
    client
        .post(format!("http://{}{path}", wharf.ingress))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_wharf_reload_apply_the_edited_file_and_a_broken_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let config = write_config(dir.path(), &pipeline(&["a"], &backend.url()));
    let mut wharf = WharfProcess::spawn(&config, &dir.path().join("wharf.log"));
    let client = reqwest::Client::new();
    eventually(WAIT, "healthy", || async {
        status_of(&client, &wharf, "/a").await == 202
    })
    .await;
    assert_eq!(status_of(&client, &wharf, "/b").await, 404);

    // SIGHUP after an edit adds /b.
    write_config(dir.path(), &pipeline(&["a", "b"], &backend.url()));
    wharf.signal("HUP");
    eventually(WAIT, "/b served after SIGHUP", || async {
        status_of(&client, &wharf, "/b").await == 202
    })
    .await;

    // `wharf apply --dry-run` shows, changes nothing. Store b must be empty
    // first: a dry run that removes a store holding messages answers 409.
    eventually(WAIT, "store b forwarded", || async {
        let stores = wharf.admin_get(&client, "/api/v1/stores").await;
        stores
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "b" && s["depth"] == 0)
    })
    .await;
    let doc = dir.path().join("only-a.toml");
    std::fs::write(&doc, pipeline(&["a"], &backend.url())).unwrap();
    let (ok, out) = cli(&wharf, &["apply", doc.to_str().unwrap(), "--dry-run"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("dry run") && out.contains("- route /b"),
        "{out}"
    );
    assert_eq!(status_of(&client, &wharf, "/b").await, 202);

    // `wharf reload` after the file lost /b again.
    write_config(dir.path(), &pipeline(&["a"], &backend.url()));
    let (ok, out) = cli(&wharf, &["reload", "--force"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("- route /b") && out.contains("- processor b-out"),
        "{out}"
    );
    assert_eq!(status_of(&client, &wharf, "/b").await, 404);

    // A broken file is refused by both; the running pipeline keeps serving.
    write_config(
        dir.path(),
        "[processors.x]\nstore = \"nowhere\"\nendpoint = \"http://127.0.0.1:1/\"\n",
    );
    let (ok, out) = cli(&wharf, &["reload"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("processors.x.store: no store named \"nowhere\""),
        "{out}"
    );
    wharf.signal("HUP");
    eventually(WAIT, "the refusal logged", || async {
        wharf.log_text().contains("reload refused")
    })
    .await;
    assert_eq!(status_of(&client, &wharf, "/a").await, 202);

    // `wharf apply` of a document with its own route.
    let doc = dir.path().join("c.json");
    let json = serde_json::json!({
        "stores": {"a": {}, "c": {}},
        "routes": [{"path": "/a", "store": "a"}, {"path": "/c", "store": "c"}],
        "processors": {"a-out": {"store": "a", "endpoint": backend.url(), "retry_interval": "20ms"}}
    });
    std::fs::write(&doc, json.to_string()).unwrap();
    let (ok, out) = cli(&wharf, &["apply", doc.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("+ route /c"), "{out}");
    assert_eq!(status_of(&client, &wharf, "/c").await, 202);

    wharf.signal("TERM");
    assert!(wharf.wait(WAIT).success());
}

/// The route paths a document names.
fn routes_of(document: &Value) -> Vec<String> {
    let mut routes: Vec<String> = document["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    routes.sort();
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_applies_leaves_a_whole_revision_live_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let url = backend.url();
    let config = write_config(dir.path(), &pipeline(&["a"], &url));
    let client = reqwest::Client::new();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    // The documents the applies alternate between: /a always, /b and /c coming and going.
    let documents = [
        pipeline(&["a", "b"], &url),
        pipeline(&["a", "c"], &url),
        pipeline(&["a", "b", "c"], &url),
        pipeline(&["a"], &url),
    ];
    for round in 0..3 {
        let log = dir.path().join(format!("wharf-{round}.log"));
        let wharf = WharfProcess::spawn(&config, &log);
        eventually(WAIT, "healthy", || async {
            status_of(&client, &wharf, "/a").await == 202
        })
        .await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = wharf.load(&client, "/a", 4, stop.clone(), accepted.clone());
        let admin = format!("http://{}/api/v1/pipeline?force=true", wharf.admin);
        // Applies one after the other; the kill lands during one of them.
        let applier = {
            let (client, documents) = (client.clone(), documents.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let _ = client
                        .put(&admin)
                        .header("content-type", "application/toml")
                        .body(documents[(n + round) % documents.len()].clone())
                        .send()
                        .await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(400 + 150 * round as u64)).await;
        wharf.signal("KILL");
        stop.store(true, Ordering::Relaxed);
        applier.abort();
        for task in load {
            let _ = task.await;
        }
        drop(wharf);

        // After the restart a whole revision is live: its routes are the ones served.
        let wharf = WharfProcess::spawn(&config, &dir.path().join(format!("restart-{round}.log")));
        eventually(WAIT, "healthy after kill", || async {
            status_of(&client, &wharf, "/a").await == 202
        })
        .await;
        let live = wharf.admin_get(&client, "/api/v1/pipeline").await;
        let routes = routes_of(&live["document"]);
        assert!(
            documents
                .iter()
                .chain(std::iter::once(&pipeline(&["a"], &url)))
                .any(|d| routes_of(
                    &wharf::config::Document::parse(d, wharf::config::Format::Toml)
                        .unwrap()
                        .value
                ) == routes),
            "revision {} is not one of the applied documents: {routes:?}",
            live["revision"]
        );
        for path in ["/b", "/c"] {
            let served = status_of(&client, &wharf, path).await == 202;
            assert_eq!(
                served,
                routes.contains(&path.to_owned()),
                "{path} in {routes:?}"
            );
        }
        wharf.signal("TERM");
        drop(wharf);
    }

    // Every 202 on /a is delivered (the last instance drains /a).
    let wharf = WharfProcess::spawn(&config, &dir.path().join("final.log"));
    let ids: HashSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    assert!(ids.len() > 50, "only {} accepted", ids.len());
    eventually(
        Duration::from_secs(60),
        "every accepted message delivered",
        || async {
            let seen: HashSet<String> = backend
                .received()
                .iter()
                .map(|r| r.header("idempotency-key").to_owned())
                .collect();
            ids.is_subset(&seen)
        },
    )
    .await;
    wharf.signal("TERM");
}

/// The storm's documents: stores/routes/processors `a` (never changed), `b`
/// (its endpoint, retries and handler change), `c` (comes and goes).
fn storm(n: usize, endpoints: &[String; 3]) -> String {
    let b_endpoint = &endpoints[1 + n % 2];
    let handler = if n.is_multiple_of(3) {
        "log-response"
    } else {
        "log"
    };
    let mut out = format!(
        r#"
[stores.a]
[stores.b]

[[routes]]
path = "/a"
store = "a"

[[routes]]
path = "/b"
store = "b"

[processors.a]
store = "a"
endpoint = "{}"

[processors.b]
store = "b"
endpoint = "{b_endpoint}"
retry_interval = "{}ms"
max_redeliveries = {}
response_handler = "{handler}"
"#,
        endpoints[0],
        10 + n,
        5 + n % 3,
    );
    if n.is_multiple_of(2) {
        out.push_str(&format!(
            "\n[stores.c]\n\n[[routes]]\npath = \"/c\"\nstore = \"c\"\n\n[processors.c]\nstore = \"c\"\nendpoint = \"{}\"\n",
            endpoints[0]
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_under_load_lose_nothing_and_keep_each_store_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let backends = [
        Backend::ok().await,
        Backend::ok().await,
        Backend::ok().await,
    ];
    let endpoints = [backends[0].url(), backends[1].url(), backends[2].url()];
    let wharf = Wharf::start(&storm(0, &endpoints), dir.path()).await;
    let (status, deployed) = wharf
        .deploy("log", wharf_plugin_artifacts::LOG_RESPONSE)
        .await;
    assert_eq!(status, 201, "{deployed}");

    // One client per route posts in turn, so its 202s come in store order.
    const MESSAGES: usize = 10_500;
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let posted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = ["a", "b", "c", "a", "b"]
        .into_iter()
        .enumerate()
        .map(|(i, route)| {
            let (stop, accepted, posted) = (stop.clone(), accepted.clone(), posted.clone());
            // Two clients on one route would interleave: each route's second
            // client posts to its own route key so order is checked per client.
            let key = format!("{route}#{i}");
            let url = format!("http://{}/{route}", wharf.ingress);
            let client = reqwest::Client::new();
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && posted.load(Ordering::Relaxed) < MESSAGES {
                    n += 1;
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(format!("{{\"n\":{n}}}"))
                        .send()
                        .await
                        .unwrap();
                    if r.status() == 202 {
                        let id = r.json::<Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned();
                        accepted
                            .lock()
                            .unwrap()
                            .entry(key.clone())
                            .or_default()
                            .push(id);
                        posted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // /c answers 404 while it is removed.
                        assert_eq!(r.status(), 404, "{}", r.text().await.unwrap());
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            })
        })
        .collect();

    let mut applies = 0;
    while posted.load(Ordering::Relaxed) < MESSAGES || applies < 24 {
        applies += 1;
        let (status, answer) = wharf
            .apply(&storm(applies, &endpoints), "?force=true")
            .await;
        assert_eq!(status, 200, "apply {applies}: {answer}");
        assert_eq!(
            answer["diff"]["processors"]["changed"]
                .as_array()
                .map(|c| c.iter().any(|c| c["name"] == "a")),
            Some(false),
            "a never changes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    // End on a revision that has every store, so that /c's messages go out too.
    let last = if applies % 2 == 0 {
        applies + 2
    } else {
        applies + 1
    };
    wharf.applied(&storm(last, &endpoints)).await;

    let accepted = accepted.lock().unwrap().clone();
    let total: usize = accepted.values().map(Vec::len).sum();
    assert!(total >= 10_000, "only {total} accepted");
    eventually(
        Duration::from_secs(120),
        "every accepted message delivered",
        || async {
            let seen: HashSet<String> = backends
                .iter()
                .flat_map(|b| b.received())
                .map(|r| r.header("idempotency-key").to_owned())
                .collect();
            accepted.values().flatten().all(|id| seen.contains(id))
        },
    )
    .await;

    // Per store, first deliveries in store order; `a` (unchanged) never twice.
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    for b in &backends {
        for r in b.received() {
            *deliveries
                .entry(r.header("idempotency-key").to_owned())
                .or_default() += 1;
        }
    }
    let mut first_seen: Vec<(std::time::Instant, String)> = backends
        .iter()
        .flat_map(|b| b.received())
        .map(|r| (r.at, r.header("idempotency-key").to_owned()))
        .collect();
    first_seen.sort();
    let mut position = BTreeMap::new();
    for (i, (_, id)) in first_seen.iter().enumerate() {
        position.entry(id.clone()).or_insert(i);
    }
    for (key, ids) in &accepted {
        let order: Vec<usize> = ids.iter().map(|id| position[id]).collect();
        // Each client's ids were accepted one after the other into one store.
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "{key}: first deliveries out of store order");
        if key.starts_with("a#") {
            let twice = ids.iter().filter(|id| deliveries[*id] > 1).count();
            assert_eq!(
                twice, 0,
                "{key}: the unchanged processor delivered {twice} message(s) twice"
            );
        }
    }
    println!("{total} messages accepted and delivered across {applies} applies");
    wharf.stop().await;
}
