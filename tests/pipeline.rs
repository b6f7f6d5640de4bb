//! Live pipelines: documents applied to a running instance over the admin
//! API, the diff and revisions, and what the reconciler touches (real HTTP
//! on 127.0.0.1, real SQLite files, a whole instance per test).

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::{Backend, Reply, Wharf, eventually};

const WAIT: Duration = Duration::from_secs(10);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One store, one route, one processor forwarding to `endpoint`.
fn one(endpoint: &str, extra: &str) -> String {
    format!(
        r#"
[stores.s]

[[routes]]
path = "/in"
store = "s"

[processors.p]
store = "s"
endpoint = "{endpoint}"
{extra}
"#
    )
}

#[tokio::test]
async fn applied_route_and_processor_serve_at_once_and_a_removed_route_answers_404() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&one(&backend.url(), ""), dir.path()).await;
    assert_eq!(wharf.post_json("/more", "{}").await.status(), 404);

    let two = format!(
        "{}\n[stores.t]\n\n[[routes]]\npath = \"/more\"\nstore = \"t\"\n\n[processors.q]\nstore = \"t\"\nendpoint = \"{}\"\n",
        one(&backend.url(), ""),
        backend.url()
    );
    let (status, answer) = wharf.apply(&two, "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["revision"], 2);
    assert_eq!(
        answer["diff"]["routes"]["added"],
        serde_json::json!(["/more"])
    );
    assert_eq!(
        answer["diff"]["processors"]["added"],
        serde_json::json!(["q"])
    );
    assert_eq!(
        answer["diff"]["processors"]["unchanged"],
        serde_json::json!(["p"])
    );
    // Served as soon as the apply answered.
    let id = wharf.accept("/more", r#"{"n":1}"#).await;
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("idempotency-key"), id);

    wharf.applied(&one(&backend.url(), "")).await;
    let r = wharf.post_json("/more", "{}").await;
    assert_eq!(r.status(), 404, "a removed route answers 404");
    let names: Vec<Value> = wharf
        .admin_get("/api/v1/processors")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, ["p"]);
    wharf.stop().await;
}

#[tokio::test]
async fn an_invalid_document_answers_422_with_every_problem_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&one(&backend.url(), ""), dir.path()).await;
    let broken = r#"
[stores.s]
[[routes]]
path = "in"
store = "nowhere"
[processors.p]
store = "s"
endpoint = "ftp://x/"
max_rate = 0.0
"#;
    let (status, answer) = wharf.apply(broken, "").await;
    assert_eq!(status, 422, "{answer}");
    let errors: Vec<(String, String)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "routes[0].path",
            "routes[0].store",
            "processors.p.endpoint",
            "processors.p.max_rate"
        ],
        "{errors:?}"
    );
    assert!(
        errors[1].1.contains("no store named \"nowhere\""),
        "{errors:?}"
    );

    let (status, answer) = wharf
        .apply("[processors.p]\nstore = \"s\"\nendpint = \"x\"\n", "")
        .await;
    assert_eq!(status, 422);
    assert!(
        answer["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown field `endpint`"),
        "{answer}"
    );

    let (status, answer) = wharf
        .apply("[server]\nlisten = \"127.0.0.1:1\"\n", "")
        .await;
    assert_eq!(status, 422);
    assert_eq!(answer["errors"][0]["key"], "server");

    // Nothing changed: revision 1 is live and the route still takes messages.
    let live = wharf.admin_get("/api/v1/pipeline").await;
    assert_eq!(live["revision"], 1);
    wharf.accept("/in", "{}").await;
    backend.wait_for(1, WAIT).await;
    wharf.stop().await;
}

/// Golden dry runs: for each `tests/pipeline/diff/NAME.before.toml` and
/// `NAME.after.toml`, the dry-run answer's diff is `NAME.diff.json` and its
/// rendering (what `wharf apply --dry-run` prints) is `NAME.diff.txt`.
/// `WHARF_BLESS=1` rewrites them.
#[tokio::test]
async fn dry_run_diffs_match_their_golden_files_and_change_nothing() {
    let cases_dir = root().join("tests/pipeline/diff");
    let bless = std::env::var_os("WHARF_BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&cases_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".before.toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 3, "only {} golden diff cases", cases.len());
    let backend = Backend::ok().await;
    let mut failures = Vec::new();
    for before in cases {
        let stem = before
            .to_string_lossy()
            .trim_end_matches(".before.toml")
            .to_owned();
        let read = |suffix: &str| {
            std::fs::read_to_string(format!("{stem}{suffix}"))
                .unwrap_or_default()
                .replace("ENDPOINT", &backend.url())
        };
        let dir = tempfile::tempdir().unwrap();
        let wharf = Wharf::start(&read(".before.toml"), dir.path()).await;
        let (status, answer) = wharf.apply(&read(".after.toml"), "?dry_run=true").await;
        assert_eq!(status, 200, "{stem}: {answer}");
        assert_eq!(answer["dry_run"], true);
        assert_eq!(answer["revision"], 1, "a dry run leaves revision 1 live");
        let diff = serde_json::to_string_pretty(&answer["diff"]).unwrap();
        let rendered =
            serde_json::from_value::<wharf::pipeline::diff::Diff>(answer["diff"].clone())
                .unwrap()
                .render();
        let live = wharf.admin_get("/api/v1/pipeline").await;
        assert_eq!(live["revision"], 1);
        wharf.stop().await;
        if bless {
            std::fs::write(format!("{stem}.diff.json"), format!("{diff}\n")).unwrap();
            std::fs::write(format!("{stem}.diff.txt"), &rendered).unwrap();
            continue;
        }
        if read(".diff.json").trim_end() != diff {
            failures.push(format!(
                "{stem}.diff.json:\n--- want\n{}\n--- got\n{diff}",
                read(".diff.json")
            ));
        }
        if read(".diff.txt") != rendered {
            failures.push(format!(
                "{stem}.diff.txt:\n--- want\n{}\n--- got\n{rendered}",
                read(".diff.txt")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn removing_a_store_that_holds_messages_is_refused_with_409_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let config = format!(
        "{}\n[stores.parked]\n\n[[routes]]\npath = \"/park\"\nstore = \"parked\"\n",
        one(&backend.url(), "")
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    for n in 0..3 {
        wharf.accept("/park", &format!("{{\"n\":{n}}}")).await;
    }
    let without = one(&backend.url(), "");
    let (status, answer) = wharf.apply(&without, "").await;
    assert_eq!(status, 409, "{answer}");
    let reason = answer["error"].as_str().unwrap();
    assert!(
        reason.contains("stores.parked: holds 3 message(s)"),
        "{reason}"
    );
    assert_eq!(wharf.depth("parked").await, 3, "nothing changed");

    // Removing the route only, the store still named by nothing else: fine to name it still.
    let (status, answer) = wharf.apply(&without, "?force=true").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["diff"]["stores"]["removed"],
        serde_json::json!(["parked"])
    );
    // Adding it back serves the messages it kept.
    wharf.applied(&config).await;
    assert_eq!(
        wharf.depth("parked").await,
        3,
        "the forced removal kept the messages in the file"
    );

    // A store named by a route cannot go at all: 422, not 409.
    let dangling = one(&backend.url(), "").replace(
        "store = \"s\"\n\n[processors",
        "store = \"gone\"\n\n[processors",
    );
    let (status, answer) = wharf.apply(&dangling, "").await;
    assert_eq!(status, 422, "{answer}");
    wharf.stop().await;
}

#[tokio::test]
async fn a_changed_processor_goes_on_from_the_same_position_without_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    let first = Backend::start(|_, _| Reply::status(200).after(Duration::from_millis(2))).await;
    let second = Backend::ok().await;
    let wharf = Wharf::start(&one(&first.url(), ""), dir.path()).await;
    let mut ids = Vec::new();
    for n in 0..300 {
        ids.push(wharf.accept("/in", &format!("{{\"n\":{n}}}")).await);
    }
    // Change the endpoint while the first backend is still taking them.
    first.wait_for(20, WAIT).await;
    let (status, answer) = wharf
        .apply(&one(&second.url(), "retry_interval = \"50ms\""), "")
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["diff"]["processors"]["changed"][0]["keys"],
        serde_json::json!(["endpoint", "retry_interval"])
    );
    eventually(WAIT, "every message delivered", || async {
        first.received().len() + second.received().len() >= ids.len()
    })
    .await;
    eventually(WAIT, "store empty", || async {
        wharf.depth("s").await == 0
    })
    .await;
    let seen: Vec<String> = first
        .received()
        .iter()
        .chain(second.received().iter())
        .map(|r| r.header("idempotency-key").to_owned())
        .collect();
    assert_eq!(
        seen, ids,
        "each message once, in store order, across the change"
    );
    assert!(!second.received().is_empty(), "the new endpoint took over");
    wharf.stop().await;
}

#[tokio::test]
async fn an_unchanged_processor_is_not_restarted_by_an_apply() {
    let dir = tempfile::tempdir().unwrap();
    // `p` fails its first attempt and waits an hour before retrying: a
    // restart would cut the wait short and attempt again at once.
    let held = Backend::start(|_, _| Reply::status(500)).await;
    let other = Backend::ok().await;
    let base = one(&held.url(), "retry_interval = \"1h\"");
    let wharf = Wharf::start(&base, dir.path()).await;
    wharf.accept("/in", "{}").await;
    held.wait_for(1, WAIT).await;

    let more = format!(
        "{base}\n[stores.t]\n\n[[routes]]\npath = \"/t\"\nstore = \"t\"\n\n[processors.q]\nstore = \"t\"\nendpoint = \"{}\"\n",
        other.url()
    );
    for n in 1..=3 {
        let (status, answer) = wharf.apply(&more, "").await;
        assert_eq!(status, 200, "{answer}");
        wharf.accept("/t", "{}").await;
        other.wait_for(n, WAIT).await;
        let (status, _) = wharf.apply(&base, "").await;
        assert_eq!(status, 200);
    }
    // q's messages were delivered by q; p was left alone in its retry wait.
    assert_eq!(
        held.received().len(),
        1,
        "the unchanged processor did not attempt again"
    );
    assert_eq!(wharf.processor("p").await["state"], "running");
    wharf.stop().await;
}

#[tokio::test]
async fn the_last_applied_revision_is_live_after_a_restart_and_rollback_reapplies_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = Backend::ok().await;
    let b = Backend::ok().await;
    let file = one(&a.url(), "");
    let wharf = Wharf::start(&file, dir.path()).await;
    assert_eq!(wharf.applied(&one(&b.url(), "")).await, 2);
    wharf.stop().await;

    // Same file, restart: revision 2 (from the API) stays live.
    let wharf = Wharf::start(&file, dir.path()).await;
    let live = wharf.admin_get("/api/v1/pipeline").await;
    assert_eq!(live["revision"], 2, "{live}");
    wharf.accept("/in", "{}").await;
    b.wait_for(1, WAIT).await;
    assert!(a.received().is_empty());

    let revisions = wharf.admin_get("/api/v1/pipeline/revisions").await;
    let listed: Vec<(u64, String, bool)> = revisions
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_u64().unwrap(),
                r["source"].as_str().unwrap().to_owned(),
                r["live"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [(1, "file".into(), false), (2, "api".into(), true)]);

    let (status, answer) = wharf
        .admin_send(
            reqwest::Method::POST,
            "/api/v1/pipeline/rollback?revision=1",
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["revision"], 3);
    wharf.accept("/in", "{}").await;
    a.wait_for(1, WAIT).await;
    let (status, _) = wharf
        .admin_send(
            reqwest::Method::POST,
            "/api/v1/pipeline/rollback?revision=99",
            None,
        )
        .await;
    assert_eq!(status, 404);
    wharf.stop().await;

    // An edited file is applied at start as a new revision.
    let edited = one(&b.url(), "timeout = \"5s\"");
    let wharf = Wharf::start(&edited, dir.path()).await;
    let live = wharf.admin_get("/api/v1/pipeline").await;
    assert_eq!(live["revision"], 4, "{live}");
    assert_eq!(live["document"]["processors"]["p"]["timeout"], "5s");
    wharf.stop().await;
}

#[tokio::test]
async fn activate_answers_409_while_the_processor_waits_for_its_plugin_and_takes_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(
        &one(
            &backend.url(),
            "response_handler = \"not-yet\"\nmax_redeliveries = 0",
        ),
        dir.path(),
    )
    .await;
    let p = wharf.processor("p").await;
    assert_eq!(p["state"], "waiting", "{p}");
    assert_eq!(p["waiting_for"], serde_json::json!(["not-yet"]));
    wharf.accept("/in", "{}").await;
    let (status, answer) = wharf
        .admin_send(reqwest::Method::POST, "/api/v1/processors/p/activate", None)
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("waiting for plugin not-yet"),
        "{answer}"
    );
    let metrics = wharf.metrics().await;
    assert!(
        metrics.contains(
            "wharf_processor_state{tenant=\"default\",processor=\"p\",state=\"waiting\"} 1"
        ),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        backend.received().is_empty(),
        "a waiting processor takes no message"
    );
    assert_eq!(wharf.depth("s").await, 1, "the message was not burnt");

    // The deploy starts it; the message is delivered.
    let (status, _) = wharf
        .deploy("not-yet", wharf_plugin_artifacts::LOG_RESPONSE)
        .await;
    assert_eq!(status, 201);
    backend.wait_for(1, WAIT).await;
    eventually(WAIT, "running", || async {
        wharf.processor("p").await["state"] == "running"
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn deactivation_survives_a_restart_with_its_message_at_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(500)).await;
    let config = one(
        &backend.url(),
        "retry_interval = \"10ms\"\nmax_redeliveries = 1\non_failure = \"deactivate\"",
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    let first = wharf.accept("/in", r#"{"n":1}"#).await;
    eventually(WAIT, "deactivated", || async {
        wharf.processor("p").await["state"] == "deactivated"
    })
    .await;
    let since = wharf.processor("p").await["deactivated_since"].clone();
    assert!(since.is_string());
    wharf.stop().await;
    let attempts = backend.received().len();

    let wharf = Wharf::start(&config, dir.path()).await;
    let p = wharf.processor("p").await;
    assert_eq!(p["state"], "deactivated", "{p}");
    assert_eq!(p["deactivated_since"], since);
    assert!(p["deactivated_reason"].as_str().unwrap().contains(&first));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backend.received().len(),
        attempts,
        "the head is not hammered after a restart"
    );
    assert_eq!(wharf.peek("s", 1).await[0]["id"], first.as_str());

    // An apply that changes it keeps it deactivated too.
    wharf.applied(&config.replace("10ms", "20ms")).await;
    assert_eq!(wharf.processor("p").await["state"], "deactivated");

    backend.script(|_, _| Reply::status(200));
    let p = wharf.admin_post("/api/v1/processors/p/activate").await;
    assert_eq!(p["state"], "running");
    eventually(WAIT, "delivered", || async { wharf.depth("s").await == 0 }).await;
    wharf.stop().await;

    let wharf = Wharf::start(&config, dir.path()).await;
    assert_eq!(
        wharf.processor("p").await["state"],
        "running",
        "activation survives too"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn a_request_in_flight_on_a_removed_route_still_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    // A full store with a patient retry: a write waits for room.
    let config = "[stores.s]\nmax_messages = 1\nretry = { count = 500, interval = \"20ms\" }\n\n[[routes]]\npath = \"/in\"\nstore = \"s\"\n";
    let wharf = Wharf::start(config, dir.path()).await;
    wharf.accept("/in", "{}").await;
    let waiting = {
        let (client, url) = (wharf.client.clone(), format!("http://{}/in", wharf.ingress));
        tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body("{\"late\":1}")
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        })
    };
    // Give the request time to reach the route; it then retries against the
    // full store (500 retries x 20 ms: it cannot end on its own meanwhile).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "the write should still be waiting for room"
    );
    // The route goes; the store stays, with room now (taken in place).
    let (status, answer) = wharf
        .apply(
            "[stores.s]\nmax_messages = 10\nretry = { count = 500, interval = \"20ms\" }\n",
            "",
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["diff"]["routes"]["removed"],
        serde_json::json!(["/in"])
    );
    assert_eq!(
        waiting.await.unwrap(),
        202,
        "the request in flight finished on its route"
    );
    assert_eq!(wharf.post_json("/in", "{}").await.status(), 404);
    assert_eq!(wharf.depth("s").await, 2);
    wharf.stop().await;
}

#[tokio::test]
async fn an_apply_whose_client_goes_away_still_completes_whole() {
    let dir = tempfile::tempdir().unwrap();
    // Each attempt takes 800 ms, so draining the changed processor does too.
    let slow = Backend::start(|_, _| Reply::status(200).after(Duration::from_millis(800))).await;
    let fast = Backend::ok().await;
    let wharf = Wharf::start(&one(&slow.url(), ""), dir.path()).await;
    let first = wharf.accept("/in", r#"{"n":1}"#).await;
    let second = wharf.accept("/in", r#"{"n":2}"#).await;
    slow.wait_for(1, WAIT).await;
    // The client gives up long before the drain ends.
    let gave_up = wharf
        .client
        .put(format!("http://{}/api/v1/pipeline", wharf.admin))
        .header("content-type", "application/toml")
        .body(one(&fast.url(), ""))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client should have timed out");
    eventually(WAIT, "revision 2 live", || async {
        wharf.admin_get("/api/v1/pipeline").await["revision"] == 2
    })
    .await;
    // The attempt in flight finished on the old endpoint; the next went to the new one.
    let got = fast.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("idempotency-key"), second);
    assert_eq!(slow.received()[0].header("idempotency-key"), first);
    assert_eq!(wharf.processor("p").await["state"], "running");
    eventually(WAIT, "store empty", || async {
        wharf.depth("s").await == 0
    })
    .await;
    wharf.stop().await;
}
