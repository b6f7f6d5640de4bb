//! The guide's scenarios on ActiveMQ stores (`backend = "activemq"`, STOMP
//! 1.2), against the project's own broker instance at 127.0.0.1:61613
//! (`.ci/activemq` installs and starts it): in-process instances for the
//! scenarios, the real binary for `kill -9`, takeover and a broker restart.
//! Every test uses queues of its own, emptied afterwards. Without the broker
//! the tests skip loudly; under `CI=true` they fail.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::activemq::{BROKER, Queues, Stomp, URL, activemq_up, restart_broker};
use support::{Backend, Reply, Wharf, WharfProcess, eventually, wait_all};
use wharf::store::activemq::frame::Frame;

const ROUTE: &str = "/healthcare/appointment";
const WAIT: Duration = Duration::from_secs(20);

/// The guide's setup with myStore and myDLCStore on ActiveMQ.
fn guide(q: &Queues, endpoint: &str, extra: &str) -> String {
    format!(
        r#"
[stores.myStore]
backend = "activemq"
url = "{URL}"
queue = "{}"
retry = {{ count = 10, interval = "50ms", backoff_factor = 1.5, max_wait = "1s" }}
reconnect = {{ count = -1, interval = "100ms", backoff_factor = 2.0, max_wait = "1s" }}

[stores.myDLCStore]
backend = "activemq"
url = "{URL}"
queue = "{}"

[[routes]]
path = "{ROUTE}"
consumes = ["application/json"]
store = "myStore"

[processors.appointments]
store = "myStore"
endpoint = "{endpoint}"
{extra}
"#,
        q.get(0),
        q.get(1)
    )
}

fn keys(got: &[support::Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.header("idempotency-key").to_owned())
        .collect()
}

#[tokio::test]
async fn activemq_per_key_lanes_pass_a_key_under_retry_and_keep_each_keys_order() {
    if !activemq_up("activemq_per_key_lanes_pass_a_key_under_retry_and_keep_each_keys_order") {
        return;
    }
    let _broker = BROKER.read().await;
    let q = Queues::new("keys", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    support::keys::holds_a_until_the_others_arrived(&backend, 10);
    let extra = "order_key = \"json:/customer/id\"\nconcurrency = 4\nretry_interval = \"50ms\"\nmax_redeliveries = 200";
    let wharf = Wharf::start(&guide(&q, &backend.url(), extra), dir.path()).await;
    let url = format!("http://{}{ROUTE}", wharf.ingress);
    let sent = support::keys::post_keyed(&wharf.client, &url, &["A", "B", "C"], 5).await;
    assert_eq!(sent, 15);
    // A's head fails at least 3 times: wait for every message, not a count of requests.
    let got = support::keys::wait_for_keyed(&backend, 15, WAIT).await;
    support::keys::assert_others_finished_first(&got, 5);
    eventually(WAIT, "queue drained", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn activemq_happy_path_forwards_every_message_once_in_order_with_its_headers() {
    if !activemq_up("activemq_happy_path_forwards_every_message_once_in_order_with_its_headers") {
        return;
    }
    let _broker = BROKER.read().await;
    let q = Queues::new("happy", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&guide(&q, &backend.url(), ""), dir.path()).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let r = reqwest::Client::new()
            .post(format!("http://{}{ROUTE}?n={i}", wharf.ingress))
            .header("content-type", "application/json")
            // STOMP escapes `:`, `\` and line ends in header values; they must come back as sent.
            .header("x-odd", "a:b\\c")
            .header("x-multi", "one")
            .header("x-multi", "two")
            .body(format!("{{\"i\":{i}}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let got = backend.wait_for(30, WAIT).await;
    assert_eq!(keys(&got), ids, "once each, in order");
    assert_eq!(got[3].text(), "{\"i\":3}");
    assert_eq!(got[3].header("content-type"), "application/json");
    assert_eq!(got[3].header("x-odd"), "a:b\\c");
    let multi: Vec<_> = got[3].headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    eventually(WAIT, "queue drained", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    let stores = wharf.admin_get("/api/v1/stores").await;
    assert!(
        stores
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["backend"] == "activemq"),
        "{stores}"
    );
    let my_store = stores
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "myStore")
        .unwrap();
    assert_eq!(my_store["connected"], true, "{stores}");
    wharf.stop().await;
}

#[tokio::test]
async fn activemq_backend_500_gets_six_attempts_then_moves_to_a_dlc_store_that_peeks_without_consuming()
 {
    if !activemq_up(
        "activemq_backend_500_gets_six_attempts_then_moves_to_a_dlc_store_that_peeks_without_consuming",
    ) {
        return;
    }
    let _broker = BROKER.read().await;
    let q = Queues::new("dlc", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(500)).await;
    let extra =
        "retry_interval = \"30ms\"\nmax_redeliveries = 5\ndead_letter_store = \"myDLCStore\"";
    let wharf = Wharf::start(&guide(&q, &backend.url(), extra), dir.path()).await;
    let first = wharf
        .accept(&format!("{ROUTE}?from=guide"), "{\"Status\":\"SUCCESS\"}")
        .await;
    let second = wharf.accept(ROUTE, "{\"Status\":\"AGAIN\"}").await;
    eventually(WAIT, "both messages in the DLC queue", || async {
        wharf.depth("myDLCStore").await == 2
    })
    .await;
    assert_eq!(backend.received().len(), 12, "six attempts each");
    eventually(WAIT, "source queue empty", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    // Peeking browses: twice the same, in order, nothing consumed.
    for _ in 0..2 {
        let peeked = wharf.peek("myDLCStore", 10).await;
        let ids: Vec<&str> = peeked.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [first.as_str(), second.as_str()], "{peeked:?}");
    }
    let head = wharf.peek("myDLCStore", 1).await;
    assert_eq!(head.len(), 1);
    assert_eq!(head[0]["path"], format!("{ROUTE}?from=guide"), "{head:?}");
    assert_eq!(wharf.depth("myDLCStore").await, 2);
    wharf.stop().await;
}

#[tokio::test]
async fn activemq_deactivate_holds_the_head_unacked_until_activated() {
    if !activemq_up("activemq_deactivate_holds_the_head_unacked_until_activated") {
        return;
    }
    let _broker = BROKER.read().await;
    let q = Queues::new("deact", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(500)).await;
    let extra = "retry_interval = \"20ms\"\nmax_redeliveries = 2\non_failure = \"deactivate\"";
    let wharf = Wharf::start(&guide(&q, &backend.url(), extra), dir.path()).await;
    let first = wharf.accept(ROUTE, "{\"n\":1}").await;
    eventually(WAIT, "deactivated", || async {
        wharf.processor("appointments").await["state"] == "deactivated"
    })
    .await;
    let second = wharf.accept(ROUTE, "{\"n\":2}").await;
    eventually(WAIT, "both messages counted", || async {
        wharf.depth("myStore").await == 2
    })
    .await;
    assert_eq!(backend.received().len(), 3, "no attempts while deactivated");
    let head = wharf.peek("myStore", 10).await;
    assert_eq!(
        head[0]["id"],
        first.as_str(),
        "the failed message is still at the head"
    );

    backend.script(|_, _| Reply::status(200));
    wharf
        .admin_post("/api/v1/processors/appointments/activate")
        .await;
    let got = backend.wait_for(5, WAIT).await;
    assert_eq!(keys(&got[3..]), [first, second]);
    eventually(WAIT, "drained", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn activemq_failing_head_holds_back_the_messages_behind_it() {
    if !activemq_up("activemq_failing_head_holds_back_the_messages_behind_it") {
        return;
    }
    let _broker = BROKER.read().await;
    let q = Queues::new("order", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|r, n| {
        Reply::status(if r.text().contains("\"A\"") && n < 3 {
            503
        } else {
            200
        })
    })
    .await;
    let wharf = Wharf::start(
        &guide(&q, &backend.url(), "retry_interval = \"50ms\""),
        dir.path(),
    )
    .await;
    for name in ["A", "B", "C"] {
        wharf
            .accept(ROUTE, &format!("{{\"name\":\"{name}\"}}"))
            .await;
    }
    let got = backend.wait_for(6, WAIT).await;
    let order: Vec<String> = got.iter().map(|r| r.text()[9..10].to_owned()).collect();
    assert_eq!(order, ["A", "A", "A", "A", "B", "C"]);
    wharf.stop().await;
}

#[tokio::test]
async fn activemq_primary_fails_over_to_an_embedded_store_and_embedded_dead_letters_into_activemq()
{
    if !activemq_up(
        "activemq_primary_fails_over_to_an_embedded_store_and_embedded_dead_letters_into_activemq",
    ) {
        return;
    }
    let _broker = BROKER.read().await;
    let q = Queues::new("mixed", &["dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(500)).await;
    // `down` points at a port nothing listens on: an ActiveMQ primary that is away.
    let config = format!(
        r#"
[stores.down]
backend = "activemq"
url = "stomp://127.0.0.1:1"
retry = {{ count = 1, interval = "10ms" }}
secondary = "local"

[stores.local]

[stores.myDLCStore]
backend = "activemq"
url = "{URL}"
queue = "{}"

[[routes]]
path = "{ROUTE}"
store = "down"

[processors.appointments]
store = "local"
endpoint = "{}"
retry_interval = "10ms"
max_redeliveries = 1
dead_letter_store = "myDLCStore"
"#,
        q.get(0),
        backend.url()
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    let id = wharf.accept(ROUTE, "{}").await;
    eventually(WAIT, "dead-lettered into ActiveMQ", || async {
        wharf.depth("myDLCStore").await == 1
    })
    .await;
    assert_eq!(backend.received().len(), 2);
    assert_eq!(wharf.depth("local").await, 0);
    assert_eq!(wharf.peek("myDLCStore", 5).await[0]["id"], id.as_str());
    let stores = wharf.admin_get("/api/v1/stores").await;
    let down = stores
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "down")
        .unwrap();
    assert_eq!(down["connected"], false, "{stores}");
    assert_eq!(down["depth"], serde_json::Value::Null);
    wharf.stop().await;
}

#[tokio::test]
async fn unreachable_activemq_without_secondary_answers_500_naming_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[stores.primary]\nbackend = \"activemq\"\nurl = \"stomp://127.0.0.1:1\"\n\n[[routes]]\npath = \"{ROUTE}\"\nstore = \"primary\"\n"
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    let r = wharf.post_json(ROUTE, "{}").await;
    assert_eq!(r.status(), 500);
    let body = r.json::<serde_json::Value>().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("\"primary\"") && error.contains("127.0.0.1:1"),
        "{error}"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn messages_of_another_producer_and_poison_headers_are_forwarded_with_defaults_without_stalling()
 {
    if !activemq_up(
        "messages_of_another_producer_and_poison_headers_are_forwarded_with_defaults_without_stalling",
    ) {
        return;
    }
    let _broker = BROKER.read().await;
    let q = Queues::new("foreign", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&guide(&q, &backend.url(), ""), dir.path()).await;
    let mut other = Stomp::connect().await;
    let destination = format!("/queue/{}", q.get(0));
    // A plain text message, as any STOMP client would send it.
    other
        .send_persistent(
            Frame::new("SEND")
                .header("destination", destination.clone())
                .header("content-type", "text/plain")
                .body(&b"plain text"[..]),
        )
        .await;
    // One that looks like Wharf's but is not well-formed.
    other
        .send_persistent(
            Frame::new("SEND")
                .header("destination", destination.clone())
                .header("wharf-method", "NOT A METHOD")
                .header("wharf-path", "no-slash")
                .header("wharf-received-at", "yesterday")
                .header("wharf-headers-bin", "%%%")
                .body(&b"poison?"[..]),
        )
        .await;
    let behind = wharf.accept(ROUTE, "{\"behind\":true}").await;
    let got = backend.wait_for(3, WAIT).await;
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].text(), "plain text");
    assert_eq!(got[0].header("content-type"), "text/plain");
    assert!(
        got[0].header("idempotency-key").starts_with("ID:"),
        "the broker's message-id"
    );
    assert_eq!(
        (got[1].method.as_str(), got[1].text()),
        ("POST", "poison?".to_owned())
    );
    assert_eq!(
        got[2].header("idempotency-key"),
        behind,
        "the queue did not stall"
    );
    wharf.stop().await;
}

fn write_config(dir: &Path, name: &str, queue: &str, endpoint: &str, secondary: bool) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let (secondary_key, secondary_store) = if secondary {
        ("secondary = \"local\"", "[stores.local]\n")
    } else {
        ("", "")
    };
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
data_dir = {data:?}

[stores.s]
backend = "activemq"
url = "{URL}"
queue = "{queue}"
retry = {{ count = 20, interval = "50ms", backoff_factor = 1.5, max_wait = "1s" }}
reconnect = {{ count = -1, interval = "100ms", backoff_factor = 2.0, max_wait = "1s" }}
{secondary_key}

{secondary_store}

[[routes]]
path = "/in"
store = "s"

[processors.p]
store = "s"
endpoint = "{endpoint}"
retry_interval = "50ms"
{local}
"#,
        data = dir.join(format!("data-{name}")).display().to_string(),
        local = if secondary {
            format!(
                "\n[processors.from_local]\nstore = \"local\"\nendpoint = \"{endpoint}\"\nretry_interval = \"50ms\"\n"
            )
        } else {
            String::new()
        }
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn forwarded(client: &reqwest::Client, wharf: &WharfProcess) -> u64 {
    let v = wharf.admin_get(client, "/api/v1/processors").await;
    v.as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "p")
        .map(|p| p["forwarded"].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn a_standby_instance_takes_over_an_activemq_queue_after_kill_9_keeping_order() {
    if !activemq_up("a_standby_instance_takes_over_an_activemq_queue_after_kill_9_keeping_order") {
        return;
    }
    let _broker = BROKER.read().await;
    let q = Queues::new("takeover", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(200).after(Duration::from_millis(5))).await;
    let a = WharfProcess::spawn(
        &write_config(dir.path(), "a", q.get(0), &backend.url(), false),
        &dir.path().join("a.log"),
    );
    let b = WharfProcess::spawn(
        &write_config(dir.path(), "b", q.get(0), &backend.url(), false),
        &dir.path().join("b.log"),
    );
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..300 {
        let via = if i % 2 == 0 { &a } else { &b };
        ids.push(
            via.accept(&client, "/in", format!("{{\"i\":{i}}}"))
                .await
                .expect("202"),
        );
    }
    backend.wait_for(50, WAIT).await;
    let (fa, fb) = (forwarded(&client, &a).await, forwarded(&client, &b).await);
    assert!(
        fa == 0 || fb == 0,
        "an exclusive subscription: only one instance forwards ({fa}, {fb})"
    );
    let (active, standby) = if fa > 0 { (a, b) } else { (b, a) };
    active.signal("KILL");
    drop(active);
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    let (order, duplicates) = wait_all(&backend, &all, Duration::from_secs(60)).await;
    assert_eq!(
        order, ids,
        "first arrivals keep the store order across the takeover"
    );
    assert!(
        forwarded(&client, &standby).await > 0,
        "the standby took over"
    );
    println!(
        "activemq takeover: {} messages, {duplicates} delivered twice (in flight at the kill)",
        ids.len()
    );
}

#[tokio::test]
async fn kill_9_under_load_on_activemq_loses_no_accepted_message() {
    if !activemq_up("kill_9_under_load_on_activemq_loses_no_accepted_message") {
        return;
    }
    let _broker = BROKER.read().await;
    let q = Queues::new("crash", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let config = write_config(dir.path(), "w", q.get(0), &backend.url(), false);
    let client = reqwest::Client::new();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    for round in 0..2 {
        let wharf = WharfProcess::spawn(&config, &dir.path().join(format!("run{round}.log")));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = wharf.load(&client, "/in", 8, stop.clone(), accepted.clone());
        // Wait for real traffic rather than a wall-clock window.
        let before = accepted.lock().unwrap().len();
        eventually(WAIT, "load flowing", || async {
            accepted.lock().unwrap().len() > before + 150
        })
        .await;
        wharf.signal("KILL");
        drop(wharf);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }
    let _wharf = WharfProcess::spawn(&config, &dir.path().join("final.log"));
    let all: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    let (_, duplicates) = wait_all(&backend, &all, Duration::from_secs(90)).await;
    println!(
        "activemq crash test: {} accepted, all delivered, {duplicates} duplicate deliveries",
        all.len()
    );
}

#[tokio::test]
async fn a_broker_restart_under_load_loses_no_accepted_message_and_the_consumer_reconnects() {
    if !activemq_up(
        "a_broker_restart_under_load_loses_no_accepted_message_and_the_consumer_reconnects",
    ) {
        return;
    }
    let _broker = BROKER.write().await;
    let q = Queues::new("restart", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    // With an embedded secondary, ingest goes on while the broker is away.
    let config = write_config(dir.path(), "w", q.get(0), &backend.url(), true);
    let wharf = WharfProcess::spawn(&config, &dir.path().join("w.log"));
    let client = reqwest::Client::new();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = wharf.load(&client, "/in", 4, stop.clone(), accepted.clone());
    eventually(WAIT, "load flowing", || async {
        accepted.lock().unwrap().len() > 100
    })
    .await;
    let restart = tokio::task::spawn_blocking(restart_broker);
    // While it is down, the store says so.
    eventually(
        Duration::from_secs(60),
        "store shown disconnected",
        || async {
            let stores = wharf.admin_get(&client, "/api/v1/stores").await;
            stores
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "s" && s["connected"] == false)
        },
    )
    .await;
    restart.await.unwrap();
    let during = accepted.lock().unwrap().len();
    eventually(WAIT, "load flowing after the restart", || async {
        accepted.lock().unwrap().len() > during + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let all: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    let (_, duplicates) = wait_all(&backend, &all, Duration::from_secs(90)).await;
    eventually(WAIT, "consumer back", || async {
        let stores = wharf.admin_get(&client, "/api/v1/stores").await;
        stores
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "s" && s["connected"] == true && s["depth"] == 0)
    })
    .await;
    let log = wharf.log_text();
    assert!(!log.contains("panicked"), "{log}");
    println!(
        "activemq broker restart: {} accepted, all delivered, {duplicates} duplicate deliveries",
        all.len()
    );
}

#[tokio::test]
async fn the_activemq_example_delivers_and_dead_letters_as_the_guide_says() {
    if !activemq_up("the_activemq_example_delivers_and_dead_letters_as_the_guide_says") {
        return;
    }
    let _broker = BROKER.read().await;
    let q = Queues::new("example", &["store", "failover", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend =
        Backend::start(|r, _| Reply::status(if r.text().contains("FAIL") { 500 } else { 200 }))
            .await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/reliable-delivery/wharf-activemq.toml"
    ))
    .unwrap();
    let (_, rest) = text.split_once("[stores.myStore]").unwrap();
    let config = format!("[stores.myStore]{rest}")
        .replace("queue = \"myStore\"", &format!("queue = \"{}\"", q.get(0)))
        .replace(
            "queue = \"myFailoverStore\"",
            &format!("queue = \"{}\"", q.get(1)),
        )
        .replace(
            "queue = \"myDLCStore\"",
            &format!("queue = \"{}\"", q.get(2)),
        )
        .replace("http://127.0.0.1:9095/testservice/test", &backend.url())
        .replace("schedule = \"0/2 * * * * ?\"", "interval = \"50ms\"")
        .replace("retry_interval = \"3s\"", "retry_interval = \"20ms\"");
    let wharf = Wharf::start(&config, dir.path()).await;
    let ok = wharf.accept(ROUTE, "{\"Status\":\"SUCCESS\"}").await;
    let failing = wharf.accept(ROUTE, "{\"Status\":\"FAIL\"}").await;
    eventually(WAIT, "the failing message dead-lettered", || async {
        wharf.depth("myDLCStore").await == 1
    })
    .await;
    let got = backend.received();
    assert_eq!(got[0].header("idempotency-key"), ok);
    assert_eq!(
        got.len(),
        7,
        "one delivery, then six attempts of the failing message"
    );
    assert_eq!(wharf.peek("myDLCStore", 5).await[0]["id"], failing.as_str());
    wharf.stop().await;
}

// ---------------------------------------------------------------------------
// stomp+ssl:// — TLS to the broker, through a TLS terminator in front of it

fn tls_store(q: &Queues, port: u16, tls: &str, endpoint: &str) -> String {
    format!(
        r#"
[stores.myStore]
backend = "activemq"
url = "stomp+ssl://admin:admin@127.0.0.1:{port}"
queue = "{}"
{tls}

[[routes]]
path = "{ROUTE}"
store = "myStore"

[processors.appointments]
store = "myStore"
endpoint = "{endpoint}"
"#,
        q.get(0)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_ssl_with_a_private_ca_and_client_certificate_stores_and_forwards_over_tls() {
    if !activemq_up(
        "stomp_ssl_with_a_private_ca_and_client_certificate_stores_and_forwards_over_tls",
    ) {
        return;
    }
    let _broker = BROKER.read().await;
    let pki = support::tls::pki();
    let front = support::tls::tls_front(&pki, "127.0.0.1:61613").await;
    let q = Queues::new("tls", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("ca.pem"), &pki.ca).unwrap();
    std::fs::write(certs.join("client.pem"), &pki.client.0).unwrap();
    std::fs::write(certs.join("client.key"), &pki.client.1).unwrap();
    let backend = Backend::ok().await;
    let tls = r#"tls = { ca_file = "certs/ca.pem", cert_file = "certs/client.pem", key_file = "certs/client.key" }"#;
    let config = format!(
        "{}{}",
        support::server_table(&dir.path().join("data"), ""),
        tls_store(&q, front.port, tls, &backend.url())
    );
    let config_path = dir.path().join("wharf.toml");
    std::fs::write(&config_path, config).unwrap();
    let (ok, out, err) = support::wharf_check(&config_path);
    assert!(ok, "{out}{err}");
    let wharf = WharfProcess::spawn(&config_path, &dir.path().join("wharf.log"));
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = wharf.accept(&client, ROUTE, format!("{{\"i\":{i}}}")).await;
        ids.push(id.unwrap_or_else(|| panic!("message {i} refused:\n{}", wharf.log_text())));
    }
    let got = backend.wait_for(10, WAIT).await;
    assert_eq!(keys(&got), ids, "once each, in order");
    assert!(front.handshakes.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert_eq!(front.refused.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_ssl_broker_whose_certificate_is_not_trusted_answers_500_naming_the_certificate() {
    let pki = support::tls::pki();
    // The front's broker side is never reached: the handshake fails first.
    let front = support::tls::tls_front(&pki, "127.0.0.1:61613").await;
    let q = Queues::new("tls-untrusted", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(
        &tls_store(&q, front.port, "", "http://127.0.0.1:9/"),
        dir.path(),
    )
    .await;
    let r = wharf.post_json(ROUTE, "{}").await;
    assert_eq!(r.status(), 500);
    let body = r.json::<serde_json::Value>().await.unwrap();
    let error = body["error"].as_str().unwrap().to_lowercase();
    assert!(
        error.contains("\"mystore\"") && error.contains("certificate"),
        "{error}"
    );
    assert_eq!(
        front.handshakes.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    wharf.stop().await;
}

#[test]
fn stomp_ssl_with_a_missing_key_file_fails_check_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = support::tls::pki();
    std::fs::write(dir.path().join("client.pem"), &pki.client.0).unwrap();
    let q = Queues::new("tls-nokey", &["store"]);
    let tls = r#"tls = { cert_file = "client.pem", key_file = "missing.key" }"#;
    let config = format!(
        "{}{}",
        support::server_table(&dir.path().join("data"), ""),
        tls_store(&q, 61614, tls, "http://127.0.0.1:9/")
    );
    let path = dir.path().join("wharf.toml");
    std::fs::write(&path, config).unwrap();
    let (ok, out, err) = support::wharf_check(&path);
    assert!(!ok, "{out}");
    assert!(
        err.contains("tls.key_file") && err.contains("missing.key"),
        "{err}"
    );
}

#[tokio::test]
async fn activemq_backend_not_available_dead_letters_after_the_retries() {
    if !activemq_up("activemq_backend_not_available_dead_letters_after_the_retries") {
        return;
    }
    let _broker = BROKER.read().await;
    let q = Queues::new("nobackend", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: every attempt is a refused connection.
    let extra =
        "retry_interval = \"20ms\"\nmax_redeliveries = 2\ndead_letter_store = \"myDLCStore\"";
    let wharf = Wharf::start(&guide(&q, "http://127.0.0.1:9/", extra), dir.path()).await;
    let id = wharf.accept(ROUTE, "{}").await;
    eventually(WAIT, "dead-lettered", || async {
        wharf.depth("myDLCStore").await == 1
    })
    .await;
    assert_eq!(wharf.peek("myDLCStore", 1).await[0]["id"], id.as_str());
    let p = wharf.processor("appointments").await;
    assert!(
        p["last_failure"]
            .as_str()
            .unwrap_or_default()
            .contains("refused")
            || p.to_string().contains("refused"),
        "{p}"
    );
    wharf.stop().await;
}

/// A TCP relay to the broker that can be frozen: while frozen it passes
/// nothing either way and keeps the connections open, as a dead network
/// path would.
struct Relay {
    port: u16,
    frozen: Arc<AtomicBool>,
}

async fn relay() -> Relay {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let Ok(broker) = tokio::net::TcpStream::connect("127.0.0.1:61613").await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (br, bw) = broker.into_split();
                let pump = |flag: Arc<AtomicBool>| {
                    move |mut from: tokio::net::tcp::OwnedReadHalf,
                          mut to: tokio::net::tcp::OwnedWriteHalf| async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            let Ok(n) = from.read(&mut buf).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            // Frozen: hold the bytes and the connection forever.
                            while flag.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                if flag.load(Ordering::Relaxed) {
                                    std::future::pending::<()>().await;
                                }
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                };
                let up = tokio::spawn(pump(flag.clone())(cr, bw));
                let down = tokio::spawn(pump(flag)(br, cw));
                let _ = tokio::join!(up, down);
            });
        }
    });
    Relay { port, frozen }
}

#[tokio::test]
async fn a_connection_that_dies_silently_is_noticed_by_heart_beats_and_replaced() {
    if !activemq_up("a_connection_that_dies_silently_is_noticed_by_heart_beats_and_replaced") {
        return;
    }
    let _broker = BROKER.read().await;
    let relay = relay().await;
    let q = Queues::new("heartbeat", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let config = format!(
        r#"
[stores.s]
backend = "activemq"
url = "stomp://127.0.0.1:{}"
queue = "{}"
reconnect = {{ count = -1, interval = "100ms", backoff_factor = 2.0, max_wait = "1s" }}

[[routes]]
path = "{ROUTE}"
store = "s"

[processors.p]
store = "s"
endpoint = "{}"
"#,
        relay.port,
        q.get(0),
        backend.url()
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    let first = wharf.accept(ROUTE, "{\"n\":1}").await;
    backend.wait_for(1, WAIT).await;
    // The first message's ACK must reach the broker before the path dies,
    // or it is (rightly, at-least-once) delivered again after the reconnect.
    eventually(WAIT, "the first message acknowledged", || async {
        wharf.depth("s").await == 0
    })
    .await;
    // The path goes dead without a FIN: only missing heart-beats can tell.
    relay.frozen.store(true, Ordering::Relaxed);
    // No RECEIPT can come back: the request must not get its 202. Once the
    // heart-beats say the connection is dead, it is a 500 (no secondary).
    let during = wharf.post_json(ROUTE, "{\"n\":0}").await;
    assert_eq!(during.status(), 500, "a 202 without the broker's receipt");
    eventually(
        Duration::from_secs(40),
        "the store shown disconnected",
        || async {
            let stores = wharf.admin_get("/api/v1/stores").await;
            stores[0]["connected"] == false
        },
    )
    .await;
    relay.frozen.store(false, Ordering::Relaxed);
    let second = wharf.accept(ROUTE, "{\"n\":2}").await;
    let got = backend.wait_for(2, Duration::from_secs(40)).await;
    assert_eq!(keys(&got), [first, second]);
    wharf.stop().await;
}
