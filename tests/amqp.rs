//! The guide's scenarios on RabbitMQ stores (`backend = "amqp"`), against the
//! real broker at 127.0.0.1:5672. Every test uses queues of its own, deleted
//! afterwards. Without a broker the tests skip loudly; under `CI=true` they fail.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::broker::{Queues, URL, broker_up};
use support::tls::{pki, tls_front};
use support::{Backend, Reply, Wharf, WharfProcess, eventually};

const ROUTE: &str = "/healthcare/appointment";
const WAIT: Duration = Duration::from_secs(15);

/// The guide's setup with myStore (and optionally myDLCStore) on RabbitMQ.
fn guide(q: &Queues, endpoint: &str, queue_type: &str, extra: &str) -> String {
    format!(
        r#"
[stores.myStore]
backend = "amqp"
url = "{URL}"
queue = "{}"
queue_type = "{queue_type}"
retry = {{ count = 10, interval = "50ms", backoff_factor = 1.5, max_wait = "1s" }}

[stores.myDLCStore]
backend = "amqp"
url = "{URL}"
queue = "{}"
queue_type = "{queue_type}"
retry = {{ count = 10, interval = "50ms", backoff_factor = 1.5, max_wait = "1s" }}

[[routes]]
path = "{ROUTE}"
consumes = ["application/json"]
store = "myStore"

[processors.appointments]
store = "myStore"
endpoint = "{endpoint}"
reconnect = {{ count = -1, interval = "100ms", backoff_factor = 2.0, max_wait = "1s" }}
{extra}
"#,
        q.get(0),
        q.get(1)
    )
}

#[tokio::test]
async fn amqp_per_key_lanes_pass_a_key_under_retry_and_keep_each_keys_order() {
    if !broker_up("amqp_per_key_lanes_pass_a_key_under_retry_and_keep_each_keys_order") {
        return;
    }
    let q = Queues::new("keys", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    support::keys::holds_a_until_the_others_arrived(&backend, 10);
    let extra = "order_key = \"header:X-Order-Key\"\nconcurrency = 4\nretry_interval = \"50ms\"\nmax_redeliveries = 200";
    let wharf = Wharf::start(&guide(&q, &backend.url(), "quorum", extra), dir.path()).await;
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
async fn amqp_happy_path_forwards_every_message_once_in_order() {
    if !broker_up("amqp_happy_path_forwards_every_message_once_in_order") {
        return;
    }
    for queue_type in ["quorum", "classic"] {
        let q = Queues::new("happy", &["store", "dlc"]);
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::ok().await;
        let wharf = Wharf::start(&guide(&q, &backend.url(), queue_type, ""), dir.path()).await;
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(wharf.accept(ROUTE, &format!("{{\"i\":{i}}}")).await);
        }
        let got = backend.wait_for(20, WAIT).await;
        let keys: Vec<&str> = got.iter().map(|r| r.header("idempotency-key")).collect();
        assert_eq!(keys, ids, "{queue_type}: once each, in order");
        assert_eq!(got[3].text(), "{\"i\":3}");
        assert_eq!(got[3].header("content-type"), "application/json");
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
                .all(|s| s["backend"] == "amqp" && s["connected"] == true),
            "{stores}"
        );
        wharf.stop().await;
    }
}

#[tokio::test]
async fn amqp_backend_500_gets_six_attempts_then_moves_to_amqp_dlc_store() {
    if !broker_up("amqp_backend_500_gets_six_attempts_then_moves_to_amqp_dlc_store") {
        return;
    }
    let q = Queues::new("dlc", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(500)).await;
    let extra =
        "retry_interval = \"30ms\"\nmax_redeliveries = 5\ndead_letter_store = \"myDLCStore\"";
    let wharf = Wharf::start(&guide(&q, &backend.url(), "quorum", extra), dir.path()).await;
    let id = wharf.accept(ROUTE, "{\"Status\":\"SUCCESS\"}").await;
    eventually(WAIT, "message in the DLC queue", || async {
        wharf.depth("myDLCStore").await == 1
    })
    .await;
    assert_eq!(backend.received().len(), 6);
    assert!(
        backend
            .received()
            .iter()
            .all(|r| r.header("idempotency-key") == id)
    );
    eventually(WAIT, "store queue empty", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn amqp_deactivate_holds_the_message_at_the_head_until_activated() {
    if !broker_up("amqp_deactivate_holds_the_message_at_the_head_until_activated") {
        return;
    }
    let q = Queues::new("deact", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(500)).await;
    let extra = "retry_interval = \"20ms\"\nmax_redeliveries = 2\non_failure = \"deactivate\"";
    let wharf = Wharf::start(&guide(&q, &backend.url(), "quorum", extra), dir.path()).await;
    let first = wharf.accept(ROUTE, "{\"n\":1}").await;
    eventually(WAIT, "deactivated", || async {
        wharf.processor("appointments").await["state"] == "deactivated"
    })
    .await;
    let second = wharf.accept(ROUTE, "{\"n\":2}").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.received().len(), 3, "no attempts while deactivated");
    eventually(WAIT, "both messages counted", || async {
        wharf.depth("myStore").await == 2
    })
    .await;
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
    let keys: Vec<&str> = got[3..]
        .iter()
        .map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(keys, [first.as_str(), second.as_str()]);
    eventually(WAIT, "drained", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn amqp_failing_head_holds_back_the_messages_behind_it() {
    if !broker_up("amqp_failing_head_holds_back_the_messages_behind_it") {
        return;
    }
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
        &guide(&q, &backend.url(), "quorum", "retry_interval = \"50ms\""),
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
async fn unreachable_broker_fails_over_to_embedded_secondary_and_shows_disconnected() {
    // No broker needed: the primary points at a port nothing listens on.
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[stores.primary]
backend = "amqp"
url = "amqp://guest:guest@127.0.0.1:1/%2f"
queue = "never-declared"
secondary = "local"

[stores.local]

[[routes]]
path = "{ROUTE}"
store = "primary"
"#
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    let id = wharf.accept(ROUTE, "{}").await;
    assert_eq!(wharf.peek("local", 1).await[0]["id"], id.as_str());
    let stores = wharf.admin_get("/api/v1/stores").await;
    let primary = stores
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "primary")
        .unwrap()
        .clone();
    assert_eq!(primary["connected"], false);
    assert_eq!(primary["depth"], serde_json::Value::Null);
    wharf.stop().await;
}

/// POSTs to the route, expecting a 500; its error text.
async fn refused(wharf: &Wharf) -> String {
    let r = wharf.post_json(ROUTE, "{}").await;
    assert_eq!(r.status(), 500);
    let body = r.json::<serde_json::Value>().await.unwrap();
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn unreachable_broker_without_secondary_answers_500_naming_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[stores.primary]\nbackend = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\n\n[[routes]]\npath = \"{ROUTE}\"\nstore = \"primary\"\n"
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    let error = refused(&wharf).await;
    assert!(
        error.contains("\"primary\"") && error.contains("connecting"),
        "{error}"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn embedded_primary_dead_letters_into_an_amqp_store() {
    if !broker_up("embedded_primary_dead_letters_into_an_amqp_store") {
        return;
    }
    let q = Queues::new("mixed", &["dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(500)).await;
    let config = format!(
        r#"
[stores.myStore]

[stores.myDLCStore]
backend = "amqp"
url = "{URL}"
queue = "{}"

[[routes]]
path = "{ROUTE}"
store = "myStore"

[processors.appointments]
store = "myStore"
endpoint = "{}"
retry_interval = "10ms"
max_redeliveries = 1
dead_letter_store = "myDLCStore"
"#,
        q.get(0),
        backend.url()
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    wharf.accept(ROUTE, "{}").await;
    eventually(WAIT, "dead-lettered into RabbitMQ", || async {
        wharf.depth("myDLCStore").await == 1
    })
    .await;
    eventually(WAIT, "source store empty", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn message_from_another_amqp_producer_is_forwarded_with_defaults() {
    if !broker_up("message_from_another_amqp_producer_is_forwarded_with_defaults") {
        return;
    }
    let q = Queues::new("foreign", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&guide(&q, &backend.url(), "quorum", ""), dir.path()).await;
    // Reading the depth declares the queue, so the publish below has somewhere to go.
    assert_eq!(wharf.depth("myStore").await, 0);
    // Publish as some other application would: no Wharf headers.
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let properties = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_message_id("order-42".into());
    channel
        .basic_publish(
            "".into(),
            q.get(0).into(),
            BasicPublishOptions::default(),
            b"plain text",
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let got = backend.wait_for(1, WAIT).await;
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].text(), "plain text");
    assert_eq!(got[0].header("content-type"), "text/plain");
    assert_eq!(got[0].header("idempotency-key"), "order-42");
    conn.close(200, "done".into()).await.unwrap();
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_stores_of_one_name_get_queues_of_their_own() {
    if !broker_up("two_tenants_stores_of_one_name_get_queues_of_their_own") {
        return;
    }
    // Tenant names from unique queue names; the queues Wharf makes are `{tenant}.s`.
    let mut q = Queues::new("tenant", &["a", "b"]);
    let tenants = [q.get(0).to_owned(), q.get(1).to_owned()];
    q.also(tenants.iter().map(|t| format!("{t}.s")));
    let dir = tempfile::tempdir().unwrap();
    let wharf = Wharf::start("", dir.path()).await;
    let backend = Backend::start(|_, _| Reply::status(503)).await;
    for (i, tenant) in tenants.iter().enumerate() {
        let (status, _) = wharf
            .admin_send(
                reqwest::Method::PUT,
                &format!("/api/v1/tenants/{tenant}"),
                None,
            )
            .await;
        assert_eq!(status, 201);
        let doc = format!(
            "[stores.s]\nbackend = \"amqp\"\nurl = \"{URL}\"\n\n[[routes]]\npath = \"/in\"\nstore = \"s\"\n\n[processors.p]\nstore = \"s\"\nendpoint = \"{}\"\nretry_interval = \"1h\"\n",
            backend.url()
        );
        let (status, answer) = wharf.apply_to(tenant, &doc, "").await;
        assert_eq!(status, 200, "{answer}");
        for _ in 0..=i {
            wharf.accept(&format!("/{tenant}/in"), "{}").await;
        }
    }
    // Each tenant's store counts only its own messages: one queue each. (A
    // message on its way from the queue to the consumer is in neither
    // count for a moment: the depth is waited for.)
    for (i, tenant) in tenants.iter().enumerate() {
        let path = format!("/api/v1/tenants/{tenant}/stores");
        eventually(WAIT, &format!("{tenant}'s depth {}", i + 1), || async {
            wharf.admin_get(&path).await[0]["depth"] == i + 1
        })
        .await;
    }
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    for tenant in &tenants {
        let queue = format!("{tenant}.s");
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        assert!(declared.is_ok(), "no queue {queue}: {declared:?}");
    }
    conn.close(200, "done".into()).await.unwrap();
    wharf.stop().await;
}

// ---------------------------------------------------------------------------
// amqps:// — TLS to the broker

fn tls_config(q: &Queues, url: &str, tls: &str, endpoint: &str) -> String {
    format!(
        r#"
[stores.myStore]
backend = "amqp"
url = "{url}"
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
async fn amqps_with_a_private_ca_and_client_certificate_stores_and_forwards_over_tls() {
    if !broker_up("amqps_with_a_private_ca_and_client_certificate_stores_and_forwards_over_tls") {
        return;
    }
    let pki = pki();
    let front = tls_front(&pki, "127.0.0.1:5672").await;
    let front_url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", front.port);
    let q = Queues::new("tls", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    // The files sit beside the config and are named relative to it.
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
        tls_config(&q, &front_url, tls, &backend.url())
    );
    let config_path = dir.path().join("wharf.toml");
    std::fs::write(&config_path, config).unwrap();
    let wharf = WharfProcess::spawn(&config_path, &dir.path().join("wharf.log"));

    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = wharf.accept(&client, ROUTE, format!("{{\"i\":{i}}}")).await;
        ids.push(id.unwrap_or_else(|| panic!("message {i} refused:\n{}", wharf.log_text())));
    }
    let got = backend.wait_for(10, WAIT).await;
    let keys: Vec<&str> = got.iter().map(|r| r.header("idempotency-key")).collect();
    assert_eq!(keys, ids, "once each, in order");
    // Publisher and consumer each came through the TLS front, and nothing was refused.
    assert!(front.handshakes.load(Ordering::Relaxed) >= 2);
    assert_eq!(front.refused.load(Ordering::Relaxed), 0);
    let stores = wharf.admin_get(&client, "/api/v1/stores").await;
    assert_eq!(stores[0]["connected"], true, "{stores}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_broker_whose_certificate_is_not_trusted_answers_500_naming_the_certificate() {
    if !broker_up(
        "amqps_broker_whose_certificate_is_not_trusted_answers_500_naming_the_certificate",
    ) {
        return;
    }
    let pki = pki();
    let front = tls_front(&pki, "127.0.0.1:5672").await;
    let front_url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", front.port);
    let q = Queues::new("tls-untrusted", &["store"]);
    let dir = tempfile::tempdir().unwrap();
    // No ca_file: only the system's CAs, which do not know this one.
    let config = tls_config(&q, &front_url, "", "http://127.0.0.1:9/");
    let wharf = Wharf::start(&config, dir.path()).await;
    let error = refused(&wharf).await.to_lowercase();
    assert!(
        error.contains("\"mystore\"") && error.contains("certificate"),
        "{error}"
    );
    assert_eq!(front.handshakes.load(Ordering::Relaxed), 0);
    wharf.stop().await;
}

#[test]
fn amqps_with_a_missing_key_file_fails_check_and_run_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    std::fs::write(dir.path().join("client.pem"), &pki.client.0).unwrap();
    let q = Queues::new("tls-nokey", &["store"]);
    let tls = r#"tls = { cert_file = "client.pem", key_file = "missing.key" }"#;
    let config = format!(
        "{}{}",
        support::server_table(&dir.path().join("data"), ""),
        tls_config(
            &q,
            "amqps://guest:guest@127.0.0.1:5671/%2f",
            tls,
            "http://127.0.0.1:9/"
        )
    );
    let config_path = dir.path().join("wharf.toml");
    std::fs::write(&config_path, config).unwrap();
    for command in ["check", "run"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg(command)
            .arg(&config_path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "wharf {command}: {stderr}");
        assert!(
            stderr.contains("tls.key_file") && stderr.contains("missing.key"),
            "wharf {command}: {stderr}"
        );
    }
}

#[tokio::test]
async fn amqp_store_reopened_for_a_new_url_while_messages_flow_loses_nothing_and_keeps_order() {
    if !broker_up(
        "amqp_store_reopened_for_a_new_url_while_messages_flow_loses_nothing_and_keeps_order",
    ) {
        return;
    }
    let q = Queues::new("reopen", &["store", "dlc"]);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| Reply::status(200).after(Duration::from_millis(3))).await;
    let before = guide(&q, &backend.url(), "classic", "");
    let wharf = Wharf::start(&before, dir.path()).await;
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push(wharf.accept(ROUTE, &format!("{{\"i\":{i}}}")).await);
    }
    backend.wait_for(10, WAIT).await;
    // The same broker under another URL: the store is reopened, its processor restarted.
    let after = before.replacen(
        &format!("url = \"{URL}\""),
        &format!("url = \"{URL}?heartbeat=30\""),
        1,
    );
    let (status, answer) = wharf.apply(&after, "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["diff"]["stores"]["changed"][0]["name"], "myStore");
    assert_eq!(
        answer["diff"]["stores"]["changed"][0]["keys"],
        serde_json::json!(["url"])
    );
    assert_eq!(
        answer["diff"]["processors"]["changed"][0]["because"],
        "its store \"myStore\" is reopened"
    );
    for i in 150..300 {
        ids.push(wharf.accept(ROUTE, &format!("{{\"i\":{i}}}")).await);
    }
    eventually(WAIT, "every message delivered", || async {
        let seen: std::collections::HashSet<String> = backend
            .received()
            .iter()
            .map(|r| r.header("idempotency-key").to_owned())
            .collect();
        ids.iter().all(|id| seen.contains(id))
    })
    .await;
    let mut first = Vec::new();
    for r in backend.received() {
        let id = r.header("idempotency-key").to_owned();
        if !first.contains(&id) {
            first.push(id);
        }
    }
    assert_eq!(
        first, ids,
        "first deliveries in store order across the reopen"
    );
    eventually(WAIT, "queue drained", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    wharf.stop().await;
}

/// A TCP relay to the broker whose connections can be cut (both sockets
/// closed at once), as a network failure or a broker-side close would.
struct Cutter {
    port: u16,
    live: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cutter {
    async fn start() -> Cutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = live.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                });
                tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        Cutter { port, live }
    }

    fn url(&self) -> String {
        URL.replace("127.0.0.1:5672", &format!("127.0.0.1:{}", self.port))
    }

    /// Closes every connection through the relay; new ones are let through.
    fn cut(&self) {
        for task in self.live.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// 30 messages in a queue deeper than the processor's prefetch (4); its
/// head fails until the connection is cut; then every message arrives,
/// first deliveries in store order.
async fn a_cut_connection_keeps_store_order(queue_type: &str) {
    let q = Queues::new(&format!("cut-{queue_type}"), &["store", "dlc"]);
    let cutter = Cutter::start().await;
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fail = failing.clone();
    let backend = Backend::start(move |_, _| {
        if fail.load(Ordering::Relaxed) {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    })
    .await;
    let config = guide(
        &q,
        &backend.url(),
        queue_type,
        "retry_interval = \"50ms\"\nmax_redeliveries = 10000",
    )
    .replacen(URL, &cutter.url(), 1)
    .replace(
        &format!("queue_type = \"{queue_type}\"\nretry"),
        &format!("queue_type = \"{queue_type}\"\nprefetch = 4\nretry"),
    );
    let dir = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(&config, dir.path()).await;
    let mut sent = Vec::new();
    for n in 0..30 {
        sent.push(wharf.accept(ROUTE, &format!("{{\"n\":{n}}}")).await);
    }
    backend.wait_for(3, WAIT).await;
    cutter.cut();
    failing.store(false, Ordering::Relaxed);
    eventually(WAIT, "every message delivered", || async {
        let ok: std::collections::BTreeSet<String> = backend
            .received()
            .iter()
            .map(|r| r.header("idempotency-key").to_owned())
            .collect();
        sent.iter().all(|id| ok.contains(id))
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    let first: Vec<String> = backend
        .received()
        .iter()
        .map(|r| r.header("idempotency-key").to_owned())
        .filter(|id| seen.insert(id.clone()))
        .collect();
    assert_eq!(first, sent, "first deliveries out of store order");
    wharf.stop().await;
}

#[tokio::test]
async fn a_cut_connection_keeps_store_order_on_a_quorum_queue_deeper_than_prefetch() {
    if !broker_up("a_cut_connection_keeps_store_order_on_a_quorum_queue_deeper_than_prefetch") {
        return;
    }
    a_cut_connection_keeps_store_order("quorum").await;
}

#[tokio::test]
async fn a_cut_connection_keeps_store_order_on_a_classic_queue_deeper_than_prefetch() {
    if !broker_up("a_cut_connection_keeps_store_order_on_a_classic_queue_deeper_than_prefetch") {
        return;
    }
    a_cut_connection_keeps_store_order("classic").await;
}
