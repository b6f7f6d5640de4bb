//! The guide's scenarios and the processor's promises, end to end: real HTTP
//! on 127.0.0.1, real SQLite files, a whole Wharf instance per test.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::time::Duration;

use support::{Backend, Reply, Wharf, eventually};

const ROUTE: &str = "/healthcare/appointment";
const WAIT: Duration = Duration::from_secs(10);

/// The guide's setup: myStore with a route, myDLCStore, one processor; `extra` adds processor keys.
fn guide(endpoint: &str, extra: &str) -> String {
    format!(
        r#"
[stores.myStore]
[stores.myDLCStore]

[[routes]]
path = "{ROUTE}"
methods = ["POST", "PUT"]
consumes = ["application/json"]
store = "myStore"

[processors.appointments]
store = "myStore"
endpoint = "{endpoint}"
{extra}
"#
    )
}

#[tokio::test]
async fn happy_path_forwards_body_and_headers_with_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&guide(&backend.url(), ""), dir.path()).await;

    let body = "{\"Status\":\"SUCCESS\",\"emoji\":\"\u{1F6A2}\",\"spaces\":  [1, 2]}";
    let r = wharf
        .client
        .post(format!("http://{}{ROUTE}?source=web", wharf.ingress))
        .header("content-type", "application/json")
        .header("company", "WSO2")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let got = backend.wait_for(1, WAIT).await;
    let hit = &got[0];
    assert_eq!(hit.method, "POST");
    assert_eq!(hit.path, "/testservice/test");
    assert_eq!(hit.body, body.as_bytes(), "body must arrive byte for byte");
    assert_eq!(hit.header("company"), "WSO2");
    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!(hit.header("idempotency-key"), id);
    assert_eq!(hit.header("host"), backend.addr.to_string());
    assert_eq!(hit.header("content-length"), body.len().to_string());

    eventually(WAIT, "store empty and forwarded counted", || async {
        wharf.depth("myStore").await == 0 && wharf.processor("appointments").await["forwarded"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        backend.received().len(),
        1,
        "a healthy backend gets each message exactly once"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn backend_500_gets_six_attempts_then_message_moves_to_dlc_store() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(500)).await;
    let config = guide(
        &backend.url(),
        r#"retry_interval = "50ms"
retry_statuses = [500, 400]
max_redeliveries = 5
on_failure = "dead-letter"
dead_letter_store = "myDLCStore""#,
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    let id = wharf.accept(ROUTE, r#"{"Status":"SUCCESS"}"#).await;

    eventually(WAIT, "message in the DLC store", || async {
        wharf.depth("myDLCStore").await == 1
    })
    .await;
    let attempts = backend.received();
    assert_eq!(attempts.len(), 6, "max_redeliveries = 5 means 6 attempts");
    assert!(
        attempts.iter().all(|a| a.header("idempotency-key") == id),
        "same key on every attempt"
    );
    eventually(WAIT, "source store empty", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    let dlc = wharf.peek("myDLCStore", 10).await;
    assert_eq!(dlc[0]["id"], id.as_str());
    assert_eq!(dlc[0]["body"], r#"{"Status":"SUCCESS"}"#);
    let p = wharf.processor("appointments").await;
    assert_eq!(
        (p["retried"].as_u64(), p["dead_lettered"].as_u64()),
        (Some(5), Some(1))
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backend.received().len(),
        6,
        "no attempt after dead-lettering"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn retries_are_spaced_by_retry_interval_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(503)).await;
    let config = guide(
        &backend.url(),
        r#"retry_interval = "200ms"
backoff_factor = 2.0
max_retry_interval = "500ms"
max_redeliveries = 3
on_failure = "drop""#,
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    wharf.accept(ROUTE, "{}").await;
    let got = backend.wait_for(4, WAIT).await;
    let gaps: Vec<u128> = got
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect();
    // 200ms, 400ms, then 800ms capped at 500ms: no wait is shorter. (The
    // exact waits are proved under a paused clock in processor::tests.)
    for (gap, want) in gaps.iter().zip([200u128, 400, 500]) {
        assert!(
            *gap >= want,
            "gaps {gaps:?}, expected at least [200, 400, 500]"
        );
    }
    eventually(WAIT, "dropped", || async {
        wharf.processor("appointments").await["dropped"] == 1
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn backend_down_dead_letters_after_retries() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Backend::ok().await;
    let url = backend.url();
    backend.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let config = guide(
        &url,
        r#"retry_interval = "20ms"
max_redeliveries = 2
dead_letter_store = "myDLCStore""#,
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    let id = wharf.accept(ROUTE, "{}").await;
    eventually(WAIT, "message in the DLC store", || async {
        wharf.depth("myDLCStore").await == 1
    })
    .await;
    assert_eq!(wharf.peek("myDLCStore", 1).await[0]["id"], id.as_str());
    let p = wharf.processor("appointments").await;
    assert_eq!(p["retried"], 2);
    wharf.stop().await;
}

#[tokio::test]
async fn deactivate_leaves_message_at_head_until_activated() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(500)).await;
    let config = guide(
        &backend.url(),
        r#"retry_interval = "20ms"
max_redeliveries = 2
on_failure = "deactivate""#,
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    let first = wharf.accept(ROUTE, r#"{"n":1}"#).await;
    eventually(WAIT, "processor deactivated", || async {
        wharf.processor("appointments").await["state"] == "deactivated"
    })
    .await;
    let second = wharf.accept(ROUTE, r#"{"n":2}"#).await;
    let third = wharf.accept(ROUTE, r#"{"n":3}"#).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.received().len(), 3, "no attempts while deactivated");
    let head: Vec<_> = wharf
        .peek("myStore", 10)
        .await
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(
        head,
        [first.as_str(), second.as_str(), third.as_str()],
        "failed message stays at the head"
    );
    let p = wharf.processor("appointments").await;
    assert!(p["deactivated_reason"].as_str().unwrap().contains(&first));

    backend.script(|_, _| Reply::status(200));
    let p = wharf
        .admin_post("/api/v1/processors/appointments/activate")
        .await;
    assert_eq!(p["state"], "running");
    let got = backend.wait_for(6, WAIT).await;
    let keys: Vec<_> = got[3..]
        .iter()
        .map(|r| r.header("idempotency-key").to_owned())
        .collect();
    assert_eq!(
        keys,
        [first, second, third],
        "delivery resumes in store order"
    );
    eventually(WAIT, "store drained", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn admin_deactivate_stops_forwarding_and_activate_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&guide(&backend.url(), ""), dir.path()).await;
    wharf
        .admin_post("/api/v1/processors/appointments/deactivate")
        .await;
    let id = wharf.accept(ROUTE, "{}").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(backend.received().is_empty());
    assert_eq!(wharf.depth("myStore").await, 1);
    wharf
        .admin_post("/api/v1/processors/appointments/activate")
        .await;
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("idempotency-key"), id);
    wharf.stop().await;
}

#[tokio::test]
async fn drop_removes_the_failed_message_and_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let backend =
        Backend::start(|r, _| Reply::status(if r.text().contains("bad") { 500 } else { 200 }))
            .await;
    let config = guide(
        &backend.url(),
        r#"retry_interval = "20ms"
max_redeliveries = 1
on_failure = "drop""#,
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    wharf.accept(ROUTE, r#"{"bad":1}"#).await;
    wharf.accept(ROUTE, r#"{"good":1}"#).await;
    let got = backend.wait_for(3, WAIT).await;
    assert_eq!(
        got.iter().map(|r| r.text()).collect::<Vec<_>>(),
        [r#"{"bad":1}"#, r#"{"bad":1}"#, r#"{"good":1}"#]
    );
    eventually(WAIT, "counts", || async {
        let p = wharf.processor("appointments").await;
        p["dropped"] == 1 && p["forwarded"] == 1
    })
    .await;
    // Acks reach the store in groups, a moment after the counters move.
    eventually(WAIT, "store empty", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    assert_eq!(wharf.depth("myDLCStore").await, 0);
    wharf.stop().await;
}

#[tokio::test]
async fn failing_head_holds_back_the_messages_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    // The first message fails three times, then succeeds.
    let backend = Backend::start(|r, n| {
        Reply::status(if r.text().contains("\"A\"") && n < 3 {
            500
        } else {
            200
        })
    })
    .await;
    let config = guide(&backend.url(), r#"retry_interval = "100ms""#);
    let wharf = Wharf::start(&config, dir.path()).await;
    for name in ["A", "B", "C", "D"] {
        wharf
            .accept(ROUTE, &format!(r#"{{"name":"{name}"}}"#))
            .await;
    }
    let got = backend.wait_for(7, WAIT).await;
    let order: Vec<String> = got.iter().map(|r| r.text()[9..10].to_owned()).collect();
    assert_eq!(order, ["A", "A", "A", "A", "B", "C", "D"]);
    wharf.stop().await;
}

#[tokio::test]
async fn statuses_outside_retry_statuses_count_as_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(404)).await;
    let config = guide(
        &backend.url(),
        "retry_statuses = [500]\nretry_interval = \"20ms\"",
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    wharf.accept(ROUTE, "{}").await;
    eventually(WAIT, "forwarded", || async {
        wharf.processor("appointments").await["forwarded"] == 1
    })
    .await;
    assert_eq!(backend.received().len(), 1);
    wharf.stop().await;
}

#[tokio::test]
async fn without_retry_statuses_any_non_2xx_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, n| Reply::status(if n == 0 { 404 } else { 201 })).await;
    let wharf = Wharf::start(
        &guide(&backend.url(), "retry_interval = \"20ms\""),
        dir.path(),
    )
    .await;
    wharf.accept(ROUTE, "{}").await;
    backend.wait_for(2, WAIT).await;
    eventually(WAIT, "forwarded", || async {
        wharf.processor("appointments").await["forwarded"] == 1
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn retry_after_on_503_replaces_retry_interval() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, n| {
        if n == 0 {
            Reply::status(503).header("retry-after", "1")
        } else {
            Reply::status(200)
        }
    })
    .await;
    let wharf = Wharf::start(
        &guide(&backend.url(), "retry_interval = \"10s\""),
        dir.path(),
    )
    .await;
    wharf.accept(ROUTE, "{}").await;
    let got = backend.wait_for(2, WAIT).await;
    // Retry-After (1 s) replaced the 10 s retry_interval: with the interval
    // the second attempt would come after WAIT, and wait_for would fail.
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(950), "gap {gap:?}");
    wharf.stop().await;
}

#[tokio::test]
async fn attempt_over_timeout_is_a_failure_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, n| {
        let reply = Reply::status(200);
        if n == 0 {
            reply.after(Duration::from_secs(3))
        } else {
            reply
        }
    })
    .await;
    let config = guide(
        &backend.url(),
        "timeout = \"200ms\"\nretry_interval = \"20ms\"",
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    wharf.accept(ROUTE, "{}").await;
    let got = backend.wait_for(2, WAIT).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(220) && gap < Duration::from_secs(2),
        "gap {gap:?}"
    );
    eventually(WAIT, "forwarded", || async {
        wharf.processor("appointments").await["forwarded"] == 1
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn max_rate_throttles_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&guide(&backend.url(), "max_rate = 20"), dir.path()).await;
    wharf
        .admin_post("/api/v1/processors/appointments/deactivate")
        .await;
    for i in 0..21 {
        wharf.accept(ROUTE, &format!("{{\"i\":{i}}}")).await;
    }
    wharf
        .admin_post("/api/v1/processors/appointments/activate")
        .await;
    let got = backend.wait_for(21, WAIT).await;
    let span = got[20].at - got[0].at;
    // 20 intervals of 50ms at least (the exact spacing is proved under a
    // paused clock in processor::tests).
    assert!(
        span >= Duration::from_millis(990),
        "21 messages took {span:?}"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn cron_schedule_forwards_batch_messages_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    // Every second, one message per tick (the guide's batch default).
    let wharf = Wharf::start(
        &guide(&backend.url(), "schedule = \"* * * * * ?\""),
        dir.path(),
    )
    .await;
    for i in 0..3 {
        wharf.accept(ROUTE, &format!("{{\"i\":{i}}}")).await;
    }
    let got = backend.wait_for(3, Duration::from_secs(6)).await;
    for w in got.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= Duration::from_millis(850) && gap < Duration::from_millis(1500),
            "gap {gap:?}"
        );
    }
    wharf.stop().await;
}

#[tokio::test]
async fn guide_cron_expression_runs_every_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let config = guide(&backend.url(), "schedule = \"0/2 * * * * ?\"");
    let wharf = Wharf::start(&config, dir.path()).await;
    wharf.accept(ROUTE, "{\"i\":0}").await;
    wharf.accept(ROUTE, "{\"i\":1}").await;
    let got = backend.wait_for(2, Duration::from_secs(7)).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1850) && gap < Duration::from_millis(2500),
        "gap {gap:?}"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn interval_trigger_takes_batch_messages_per_round() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(
        &guide(&backend.url(), "interval = \"600ms\"\nbatch = 2"),
        dir.path(),
    )
    .await;
    wharf
        .admin_post("/api/v1/processors/appointments/deactivate")
        .await;
    for i in 0..4 {
        wharf.accept(ROUTE, &format!("{{\"i\":{i}}}")).await;
    }
    wharf
        .admin_post("/api/v1/processors/appointments/activate")
        .await;
    let got = backend.wait_for(4, WAIT).await;
    assert!(
        got[1].at - got[0].at < Duration::from_millis(200),
        "one round takes two"
    );
    let between = got[2].at - got[1].at;
    assert!(
        between >= Duration::from_millis(400),
        "next two wait for the next round: {between:?}"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn continuous_processor_forwards_without_polling_delay() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&guide(&backend.url(), ""), dir.path()).await;
    // Let the processor go idle first, so the message has to wake it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = std::time::Instant::now();
    wharf.accept(ROUTE, "{}").await;
    let got = backend.wait_for(1, WAIT).await;
    let latency = got[0].at - sent;
    assert!(
        latency < Duration::from_millis(300),
        "forwarded {latency:?} after the POST"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn method_is_kept_unless_the_processor_sets_one() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&guide(&backend.url(), ""), dir.path()).await;
    let r = wharf
        .client
        .put(format!("http://{}{ROUTE}", wharf.ingress))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(backend.wait_for(1, WAIT).await[0].method, "PUT");
    wharf.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&guide(&backend.url(), "method = \"PATCH\""), dir.path()).await;
    wharf.accept(ROUTE, "{}").await;
    assert_eq!(backend.wait_for(1, WAIT).await[0].method, "PATCH");
    wharf.stop().await;
}

#[tokio::test]
async fn endpoint_closing_every_connection_costs_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(200).header("connection", "close")).await;
    let wharf = Wharf::start(
        &guide(&backend.url(), "retry_interval = \"20ms\""),
        dir.path(),
    )
    .await;
    for i in 0..5 {
        wharf.accept(ROUTE, &format!("{{\"i\":{i}}}")).await;
    }
    backend.wait_for(5, WAIT).await;
    eventually(WAIT, "all forwarded", || async {
        wharf.processor("appointments").await["forwarded"] == 5
    })
    .await;
    assert_eq!(wharf.processor("appointments").await["retried"], 0);
    assert_eq!(backend.received().len(), 5);
    wharf.stop().await;
}

#[tokio::test]
async fn endpoint_restart_between_messages_reconnects_without_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = Backend::ok().await;
    let addr = backend.addr;
    let wharf = Wharf::start(
        &guide(&backend.url(), "retry_interval = \"20ms\""),
        dir.path(),
    )
    .await;
    wharf.accept(ROUTE, "{\"i\":1}").await;
    backend.wait_for(1, WAIT).await;
    backend.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let backend = Backend::start_at(addr, |_, _| Reply::status(200)).await;
    wharf.accept(ROUTE, "{\"i\":2}").await;
    backend.wait_for(1, WAIT).await;
    eventually(WAIT, "both forwarded", || async {
        wharf.processor("appointments").await["forwarded"] == 2
    })
    .await;
    assert_eq!(wharf.processor("appointments").await["retried"], 0);
    wharf.stop().await;
}
