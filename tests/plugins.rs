//! Response-handler plugins: real components compiled from `plugins/`, run
//! by a whole Wharf instance; misbehaving ones are contained.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::time::Duration;

use support::{Backend, Reply, Wharf, eventually, wharf_check};
use wharf_plugin_artifacts as artifacts;

const WAIT: Duration = Duration::from_secs(20);

/// Two stores and processors: `p` uses `handler`; `healthy` uses the built-in handler.
fn config(endpoint: &str, handler: &str, extra: &str) -> String {
    format!(
        r#"
[stores.s]
[stores.dlc]
[stores.other]

[[routes]]
path = "/in"
store = "s"

[[routes]]
path = "/other"
store = "other"

[processors.p]
store = "s"
endpoint = "{endpoint}"
response_handler = "{handler}"
retry_interval = "10ms"
dead_letter_store = "dlc"
{extra}

[processors.healthy]
store = "other"
endpoint = "{endpoint}"
"#
    )
}

#[tokio::test]
async fn log_response_plugin_acks_and_the_message_leaves_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(
        &config(&backend.url(), artifacts::LOG_RESPONSE, ""),
        dir.path(),
    )
    .await;
    wharf.accept("/in", "{}").await;
    eventually(WAIT, "forwarded and acked", || async {
        wharf.processor("p").await["forwarded"] == 1 && wharf.depth("s").await == 0
    })
    .await;
    let p = wharf.processor("p").await;
    assert_eq!(p["response_handler"], "log_response");
    assert!(wharf.metrics().await.contains(
        "wharf_plugin_calls_total{tenant=\"default\",processor=\"p\",handler=\"log_response\",version=\"\",outcome=\"ack\"} 1"
    ));
    wharf.stop().await;
}

#[tokio::test]
async fn json_error_plugin_fails_a_200_whose_body_has_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|r, _| {
        if r.text().contains("bad") {
            Reply::status(200).body(r#"{"error": "no such doctor"}"#)
        } else {
            Reply::status(200).body(r#"{"error": null, "ok": true}"#)
        }
    })
    .await;
    let wharf = Wharf::start(
        &config(&backend.url(), artifacts::JSON_ERROR, ""),
        dir.path(),
    )
    .await;
    wharf.accept("/in", r#"{"bad":1}"#).await;
    wharf.accept("/in", r#"{"good":1}"#).await;
    eventually(WAIT, "one dead-lettered, one forwarded", || async {
        let p = wharf.processor("p").await;
        p["dead_lettered"] == 1 && p["forwarded"] == 1
    })
    .await;
    // A failed outcome is final: one attempt, no retries.
    assert_eq!(backend.received().len(), 2);
    assert_eq!(wharf.peek("dlc", 1).await[0]["body"], r#"{"bad":1}"#);
    wharf.stop().await;
}

/// A misbehaving plugin fails its calls with `reason`, retried then
/// dead-lettered, while the other processor keeps forwarding.
async fn contained(fixture: &str, reason: &str) {
    contained_within(fixture, "", reason).await;
}

/// [`contained`], under the processor's own `plugin_limits`.
async fn contained_within(fixture: &str, limits: &str, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let extra = format!("max_redeliveries = 1\n{limits}");
    let wharf = Wharf::start(&config(&backend.url(), fixture, &extra), dir.path()).await;
    wharf.accept("/in", "{}").await;
    for i in 0..5 {
        wharf.accept("/other", &format!("{{\"i\":{i}}}")).await;
    }
    eventually(
        WAIT,
        "misbehaving plugin's message dead-lettered",
        || async { wharf.processor("p").await["dead_lettered"] == 1 },
    )
    .await;
    eventually(
        WAIT,
        "the other pipeline forwarded all of its messages",
        || async { wharf.processor("healthy").await["forwarded"] == 5 },
    )
    .await;
    let calls = wharf.metrics().await;
    assert!(
        calls.contains("outcome=\"retry\"} 2"),
        "both calls failed: {calls}"
    );
    let last = wharf.processor("p").await["last_failure"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(last.contains(reason), "expected {reason:?} in {last:?}");
    assert_eq!(wharf.peek("dlc", 1).await.len(), 1);
    wharf.stop().await;
}

#[tokio::test]
async fn trapping_plugin_fails_only_its_own_calls() {
    contained(artifacts::TRAP, "trapped").await;
}

#[tokio::test]
async fn endless_plugin_is_stopped_at_its_deadline() {
    contained(artifacts::SPIN, "deadline").await;
}

#[tokio::test]
async fn memory_bomb_plugin_is_stopped_at_its_memory_limit() {
    contained(artifacts::MEMORY_BOMB, "memory limit").await;
}

#[tokio::test]
async fn fuel_limit_stops_an_endless_plugin_before_its_deadline() {
    let limits = "plugin_limits = { fuel = 5000000, deadline = \"30s\" }";
    contained_within(artifacts::SPIN, limits, "ran out of fuel (5000000 units)").await;
}

#[tokio::test]
async fn memory_limit_is_set_per_processor() {
    let limits = "plugin_limits = { memory = \"8MiB\" }";
    contained_within(artifacts::MEMORY_BOMB, limits, "memory limit of 8 MiB").await;
}

#[test]
fn wharf_check_rejects_a_file_that_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm but not really").unwrap();
    let config = dir.path().join("wharf.toml");
    std::fs::write(
        &config,
        "[stores.s]\n\n[processors.p]\nstore = \"s\"\nendpoint = \"http://127.0.0.1:9/\"\nresponse_handler = \"garbage.wasm\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = wharf_check(&config);
    assert!(!ok);
    assert!(
        stderr.contains("processors.p.response_handler")
            && stderr.contains("garbage.wasm")
            && stderr.contains("not a valid component"),
        "{stderr}"
    );

    // The same config pointing at a real plugin (relative to the config file) passes.
    std::fs::copy(
        wharf_plugin_artifacts::LOG_RESPONSE,
        dir.path().join("log.wasm"),
    )
    .unwrap();
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("garbage.wasm", "log.wasm"),
    )
    .unwrap();
    let (ok, _, stderr) = wharf_check(&config);
    assert!(ok, "{stderr}");
}

#[tokio::test]
async fn backoff_policy_plugin_chooses_the_waits_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(500)).await;
    // The config alone would make 2 attempts 10 ms apart; the policy decides instead.
    let extra = format!(
        "max_redeliveries = 1\nfailure_policy = \"{}\"",
        artifacts::BACKOFF_POLICY
    );
    let wharf = Wharf::start(&config(&backend.url(), "log-response", &extra), dir.path()).await;
    wharf.accept("/in", "{}").await;
    eventually(WAIT, "dead-lettered by the policy", || async {
        wharf.processor("p").await["dead_lettered"] == 1
    })
    .await;
    let got = backend.received();
    assert_eq!(got.len(), 4, "the policy gives up after 4 attempts");
    let gaps: Vec<u128> = got
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect();
    for (gap, want) in gaps.iter().zip([100u128, 200, 400]) {
        assert!(
            *gap >= want && *gap < want + 250,
            "gaps {gaps:?}, expected about [100, 200, 400]"
        );
    }
    let metrics = wharf.metrics().await;
    for line in [
        "wharf_plugin_calls_total{tenant=\"default\",processor=\"p\",handler=\"backoff_policy\",version=\"\",outcome=\"retry-after\"} 3",
        "wharf_plugin_calls_total{tenant=\"default\",processor=\"p\",handler=\"backoff_policy\",version=\"\",outcome=\"dead-letter\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
    wharf.stop().await;
}

#[test]
fn wharf_check_rejects_a_component_of_the_wrong_world() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wharf.toml");
    std::fs::write(
        &config,
        format!(
            "[stores.s]\n\n[processors.p]\nstore = \"s\"\nendpoint = \"http://127.0.0.1:9/\"\nfailure_policy = \"{}\"\n",
            artifacts::LOG_RESPONSE
        ),
    )
    .unwrap();
    let (ok, _, stderr) = wharf_check(&config);
    assert!(!ok);
    assert!(
        stderr.contains("processors.p.failure_policy")
            && stderr.contains("wharf:plugin/failure-policy"),
        "{stderr}"
    );
}
