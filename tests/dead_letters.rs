//! Dead letters as the people on call see them: the failure trail, the
//! filtered and paged list, replay and purge (as jobs, with dry runs), and a
//! `kill -9` in the middle of a replay. Embedded stores, real HTTP.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::activemq;
use support::broker::{Queues, URL, broker_up};
use support::{Backend, Reply, Wharf, WharfProcess, eventually};

const ROUTE: &str = "/orders";
const WAIT: Duration = Duration::from_secs(20);

/// Stores `in`, `dlq` and `parking`, all embedded.
const EMBEDDED: &str = "[stores.in]\n[stores.dlq]\n[stores.parking]\n";

/// Store `in` with a route and processor `p` (2 retries, 10 ms apart) that
/// dead-letters into `dlq`; store `parking` takes replays of its own.
fn config(endpoint: &str, extra: &str) -> String {
    config_on(EMBEDDED, endpoint, extra)
}

/// [`config`] with the stores `stores` (`in`, `dlq`, `parking`).
fn config_on(stores: &str, endpoint: &str, extra: &str) -> String {
    format!(
        r#"
{stores}

[[routes]]
path = "{ROUTE}"
store = "in"

[processors.p]
store = "in"
endpoint = "{endpoint}"
retry_interval = "10ms"
max_redeliveries = 2
dead_letter_store = "dlq"
{extra}
"#
    )
}

fn failing() -> impl Fn(&support::Received, usize) -> Reply + Send + Sync + 'static {
    |_, _| Reply::status(503).body("{\"error\":\"busy\"}")
}

/// Every message of `store` matching `query`, following the cursor a page of `page` at a time.
async fn all_pages(wharf: &Wharf, store: &str, query: &str, page: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!(
            "http://{}/api/v1/stores/{store}/messages?limit={page}{query}",
            wharf.admin
        );
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = wharf.client.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        cursor = r
            .headers()
            .get("wharf-next-cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        let messages: Vec<Value> = r.json().await.unwrap();
        assert!(messages.len() <= page);
        out.extend(messages);
        if cursor.is_none() {
            return out;
        }
    }
}

fn ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Sends a replay or purge; the job (or dry run) it answers, with the status.
async fn send(wharf: &Wharf, method: Method, path: &str, body: Value) -> (u16, Value) {
    wharf
        .admin_send(method, path, Some(body.to_string().into_bytes()))
        .await
}

/// Waits for job `job` to end; its final view.
async fn finished(wharf: &Wharf, job: &Value) -> Value {
    let id = job["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let view = wharf.admin_get(&format!("/api/v1/jobs/{id}")).await;
        if view["state"] != "running" {
            return view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job never ended: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An instance whose endpoint answers 503, and `n` messages (`{"n": i}`)
/// posted and dead-lettered; their ids in order.
async fn dead_letters(n: usize) -> (tempfile::TempDir, Backend, Wharf, Vec<String>) {
    dead_letters_on(EMBEDDED, n).await
}

/// [`dead_letters`] with the stores `stores`.
async fn dead_letters_on(
    stores: &str,
    n: usize,
) -> (tempfile::TempDir, Backend, Wharf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(failing()).await;
    let wharf = Wharf::start(&config_on(stores, &backend.url(), ""), dir.path()).await;
    let mut posted = Vec::new();
    for i in 0..n {
        posted.push(wharf.accept(ROUTE, &format!("{{\"n\":{i}}}")).await);
    }
    eventually(WAIT, "all dead-lettered", || async {
        wharf.depth("dlq").await == n as u64
    })
    .await;
    (dir, backend, wharf, posted)
}

#[tokio::test]
async fn a_dead_letter_carries_its_failure_trail_on_peek_and_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(failing()).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let extra = format!(
        r#"
[stores.in2]

[[routes]]
path = "/refused"
store = "in2"

[processors.q]
store = "in2"
endpoint = "http://127.0.0.1:{dead_port}/gone"
retry_interval = "10ms"
max_redeliveries = 0
dead_letter_store = "dlq"
"#
    );
    let wharf = Wharf::start(&config(&backend.url(), &extra), dir.path()).await;
    let before = chrono::Utc::now();
    let id = wharf.accept(ROUTE, "{\"order\":1}").await;
    eventually(WAIT, "the message dead-lettered", || async {
        wharf.depth("dlq").await == 1
    })
    .await;
    let refused = wharf.accept("/refused", "{\"order\":2}").await;
    eventually(WAIT, "the second dead-lettered", || async {
        wharf.depth("dlq").await == 2
    })
    .await;

    let peeked = wharf.peek("dlq", 10).await;
    assert_eq!(ids(&peeked), [id.clone(), refused.clone()]);
    let failure = &peeked[0]["failure"];
    assert_eq!(failure["processor"], "p");
    assert_eq!(failure["store"], "in");
    assert_eq!(failure["endpoint"], backend.url());
    assert_eq!(failure["attempts"], 3);
    assert_eq!(failure["kind"], "status");
    assert_eq!(failure["last_status"], 503);
    assert_eq!(failure["last_error"], "endpoint answered 503");
    assert_eq!(failure["last_response_body"], "{\"error\":\"busy\"}");
    let log = failure["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 3);
    let times: Vec<chrono::DateTime<chrono::Utc>> = log
        .iter()
        .map(|a| a["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times[0] >= before - chrono::Duration::seconds(1));
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(log.iter().all(|a| a["status"] == 503));
    let dead_lettered: chrono::DateTime<chrono::Utc> = failure["dead_lettered_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(dead_lettered >= times[2]);
    // The original request is kept as it was.
    assert_eq!(peeked[0]["body"], "{\"order\":1}");
    assert_eq!(peeked[0]["path"], ROUTE);

    let transport = &peeked[1]["failure"];
    assert_eq!(transport["kind"], "transport");
    assert_eq!(transport["processor"], "q");
    assert_eq!(transport["attempts"], 1);
    assert!(transport.get("last_status").is_none(), "{transport}");
    assert!(
        transport["last_error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{transport}"
    );

    let one = wharf
        .admin_get(&format!("/api/v1/stores/dlq/messages/{id}"))
        .await;
    assert_eq!(one, peeked[0]);
    let (status, _) = wharf
        .admin_send(Method::GET, "/api/v1/stores/dlq/messages/nope", None)
        .await;
    assert_eq!(status, 404);
    // A message that was never dead-lettered has no trail.
    let (_, messages) = wharf
        .admin_send(Method::GET, "/api/v1/stores/in/messages", None)
        .await;
    assert_eq!(messages, json!([]));
    wharf.stop().await;
}

#[tokio::test]
async fn filters_and_the_cursor_find_dead_letters_and_replay_moves_them_back_in_order() {
    find_replay_and_purge(EMBEDDED).await;
}

/// The stores `in`, `dlq` and `parking` on RabbitMQ queues of their own
/// (of `queue_type`), deleted afterwards.
fn on_rabbitmq(q: &Queues, queue_type: &str) -> String {
    let mut stores = String::new();
    for (i, name) in ["in", "dlq", "parking"].iter().enumerate() {
        stores.push_str(&format!(
            "[stores.{name}]\nbackend = \"amqp\"\nurl = \"{URL}\"\nqueue = \"{}\"\nqueue_type = \"{queue_type}\"\n",
            q.get(i)
        ));
    }
    stores
}

// A quorum queue returns browsed messages at its tail, a classic one in place:
// both must keep every message, in order.
#[tokio::test]
async fn a_rabbitmq_quorum_dead_letter_store_is_filtered_paged_replayed_and_purged_in_order() {
    if !broker_up("a_rabbitmq_quorum_dead_letter_store_is_filtered_paged_replayed_and_purged") {
        return;
    }
    let q = Queues::new("dlq-api-quorum", &["in", "dlq", "parking"]);
    find_replay_and_purge(&on_rabbitmq(&q, "quorum")).await;
}

#[tokio::test]
async fn a_rabbitmq_classic_dead_letter_store_is_filtered_paged_replayed_and_purged_in_order() {
    if !broker_up("a_rabbitmq_classic_dead_letter_store_is_filtered_paged_replayed_and_purged") {
        return;
    }
    let q = Queues::new("dlq-api-classic", &["in", "dlq", "parking"]);
    find_replay_and_purge(&on_rabbitmq(&q, "classic")).await;
}

/// The stores `in`, `dlq` and `parking` on ActiveMQ queues of their own, emptied afterwards.
fn on_activemq(q: &activemq::Queues) -> String {
    let mut stores = String::new();
    for (i, name) in ["in", "dlq", "parking"].iter().enumerate() {
        stores.push_str(&format!(
            "[stores.{name}]\nbackend = \"activemq\"\nurl = \"{}\"\nqueue = \"{}\"\n",
            activemq::URL,
            q.get(i)
        ));
    }
    stores
}

#[tokio::test]
async fn an_activemq_dead_letter_store_is_filtered_paged_replayed_and_purged_in_order() {
    if !activemq::activemq_up("an_activemq_dead_letter_store_is_filtered_paged_replayed_and_purged")
    {
        return;
    }
    let q = activemq::Queues::new("dlq-api", &["in", "dlq", "parking"]);
    find_replay_and_purge(&on_activemq(&q)).await;
}

/// An instance whose `dlq` is an ActiveMQ queue holding `ids` (sent there
/// by another producer, bodies `{"n": i}`), and `in` and `parking` embedded.
async fn activemq_dlq_holding(q: &activemq::Queues, ids: &[String]) -> (tempfile::TempDir, Wharf) {
    let stores = format!(
        "[stores.in]\n[stores.parking]\n[stores.dlq]\nbackend = \"activemq\"\nurl = \"{}\"\nqueue = \"{}\"\n",
        activemq::URL,
        q.get(0)
    );
    let mut stomp = activemq::Stomp::connect().await;
    for (i, id) in ids.iter().enumerate() {
        stomp
            .send_persistent(
                wharf::store::activemq::frame::Frame::new("SEND")
                    .header("destination", format!("/queue/{}", q.get(0)))
                    .header("wharf-id", id.clone())
                    .body(format!("{{\"n\":{i}}}")),
            )
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(&config_on(&stores, "http://127.0.0.1:9/", ""), dir.path()).await;
    (dir, wharf)
}

/// Replays all of `dlq` into `parking`; the finished job.
async fn replay_all_to_parking(wharf: &Wharf) -> Value {
    let (status, job) = send(
        wharf,
        Method::POST,
        "/api/v1/stores/dlq/replay",
        json!({"all": true, "to_store": "parking"}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let done = finished(wharf, &job).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    done
}

// A message delivered twice may be dead-lettered twice: both copies move, once each.
#[tokio::test]
async fn a_replay_moves_each_of_two_activemq_dead_letters_with_one_id_once() {
    if !activemq::activemq_up("a_replay_moves_each_of_two_activemq_dead_letters_with_one_id") {
        return;
    }
    let q = activemq::Queues::new("dlq-twice", &["dlq"]);
    let sent: Vec<String> = ["twice", "other", "twice"].map(String::from).to_vec();
    let (_dir, wharf) = activemq_dlq_holding(&q, &sent).await;
    assert_eq!(replay_all_to_parking(&wharf).await["done"], 3);
    assert_eq!(ids(&all_pages(&wharf, "parking", "", 10).await), sent);
    assert!(all_pages(&wharf, "dlq", "", 10).await.is_empty());
    wharf.stop().await;
}

// ActiveMQ hands one consumer 200 unacknowledged messages at a time and a
// browser 400 (its default policy): a replay works through a deeper
// dead-letter queue from the head, and moves every message, in order.
#[tokio::test]
async fn a_replay_moves_every_message_of_an_activemq_dead_letter_store_deeper_than_activemq_hands_one_consumer()
 {
    if !activemq::activemq_up("a_replay_moves_every_message_of_a_deep_activemq_dead_letter_store") {
        return;
    }
    const DEEP: usize = 450;
    let q = activemq::Queues::new("dlq-deep", &["dlq"]);
    let expected: Vec<String> = (0..DEEP).map(|i| format!("deep-{i:03}")).collect();
    let (_dir, wharf) = activemq_dlq_holding(&q, &expected).await;
    assert_eq!(replay_all_to_parking(&wharf).await["done"], DEEP);
    assert_eq!(ids(&all_pages(&wharf, "parking", "", 100).await), expected);
    assert!(all_pages(&wharf, "dlq", "", 100).await.is_empty());
    wharf.stop().await;
}

#[tokio::test]
async fn an_activemq_dead_letter_store_another_consumer_holds_lists_but_answers_503_to_a_purge() {
    if !activemq::activemq_up("an_activemq_dead_letter_store_another_consumer_holds") {
        return;
    }
    let q = activemq::Queues::new("dlq-busy", &["in", "dlq", "parking"]);
    let (_dir, _backend, wharf, posted) = dead_letters_on(&on_activemq(&q), 2).await;
    // Another application consumes the dead-letter queue and acks nothing.
    let mut other = activemq::Stomp::connect().await;
    other
        .send(
            wharf::store::activemq::frame::Frame::new("SUBSCRIBE")
                .header("id", "someone-else")
                .header("destination", format!("/queue/{}", q.get(1)))
                .header("ack", "client-individual"),
        )
        .await;
    assert!(
        other.next_within(WAIT).await.is_some(),
        "the other consumer got nothing"
    );
    // A browser sees what it holds; a purge cannot take it.
    assert_eq!(ids(&all_pages(&wharf, "dlq", "", 10).await), posted);
    let one = format!("/api/v1/stores/dlq/messages/{}", posted[0]);
    let (status, answer) = wharf.admin_send(Method::DELETE, &one, None).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("another consumer"),
        "{answer}"
    );
    drop(other);
    eventually(
        WAIT,
        "the purge takes it once the other has gone",
        || async {
            wharf.admin_send(Method::DELETE, &one, None).await == (200, json!({"removed": 1}))
        },
    )
    .await;
    assert_eq!(ids(&all_pages(&wharf, "dlq", "", 10).await), posted[1..]);
    wharf.stop().await;
}

#[tokio::test]
async fn a_rabbitmq_dead_letter_store_another_consumer_holds_answers_503_and_loses_nothing() {
    if !broker_up("a_rabbitmq_dead_letter_store_another_consumer_holds_answers_503") {
        return;
    }
    let q = Queues::new("dlq-busy", &["in", "dlq", "parking"]);
    let (_dir, _backend, wharf, posted) = dead_letters_on(&on_rabbitmq(&q, "classic"), 2).await;
    // Another application consumes the dead-letter queue and acks nothing.
    let other = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = other.create_channel().await.unwrap();
    let _consumer = channel
        .basic_consume(
            q.get(1).into(),
            "someone-else".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    for (method, path) in [
        (Method::GET, "/api/v1/stores/dlq/messages".to_owned()),
        (
            Method::DELETE,
            format!("/api/v1/stores/dlq/messages/{}", posted[0]),
        ),
    ] {
        let (status, answer) = wharf.admin_send(method, &path, None).await;
        assert_eq!(status, 503, "{path}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("has a consumer"),
            "{answer}"
        );
    }
    // Once it has gone, both are there, in order.
    other.close(200, "done".into()).await.unwrap();
    eventually(WAIT, "both dead letters listed again", || async {
        let (status, listed) = wharf
            .admin_send(Method::GET, "/api/v1/stores/dlq/messages", None)
            .await;
        status == 200 && ids(listed.as_array().unwrap()) == posted
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn a_message_another_application_left_in_a_rabbitmq_dead_letter_store_without_an_id_keeps_one_id_and_can_be_purged()
 {
    if !broker_up("a_message_another_application_left_without_an_id_keeps_one_id") {
        return;
    }
    let q = Queues::new("dlq-foreign", &["in", "dlq", "parking"]);
    let (_dir, _backend, wharf, posted) = dead_letters_on(&on_rabbitmq(&q, "quorum"), 1).await;
    // Published straight to the queue, with no message_id (and nothing else of Wharf's).
    let other = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = other.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            q.get(1).into(),
            lapin::options::BasicPublishOptions::default(),
            b"from the ERP",
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    other.close(200, "done".into()).await.unwrap();

    let listed = all_pages(&wharf, "dlq", "", 10).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let foreign = listed[1]["id"].as_str().unwrap().to_owned();
    assert_eq!(ids(&listed[..1]), posted);
    assert_eq!(listed[1]["body"], "from the ERP");
    // The same id on every read (each read is a new delivery), and by id.
    for _ in 0..2 {
        assert_eq!(ids(&all_pages(&wharf, "dlq", "", 1).await)[1], foreign);
    }
    let (status, one) = wharf
        .admin_send(
            Method::GET,
            &format!("/api/v1/stores/dlq/messages/{foreign}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["body"], "from the ERP");
    let (status, removed) = wharf
        .admin_send(
            Method::DELETE,
            &format!("/api/v1/stores/dlq/messages/{foreign}"),
            None,
        )
        .await;
    assert_eq!((status, removed), (200, json!({"removed": 1})));
    assert_eq!(ids(&all_pages(&wharf, "dlq", "", 10).await), posted);
    wharf.stop().await;
}

/// Browsing repeatedly keeps every message, in order; dry runs count what
/// then moves; replay by ids and by time window, purge by id and by status,
/// on the stores `stores`.
async fn find_replay_and_purge(stores: &str) {
    let (_dir, backend, wharf, posted) = dead_letters_on(stores, 7).await;

    // Paging by 2 gives every one, once, oldest first.
    let all = all_pages(&wharf, "dlq", "", 2).await;
    assert_eq!(ids(&all), posted);
    for (query, expected) in [
        ("&status=503", 7),
        ("&status=5xx", 7),
        ("&status=4xx,transport", 0),
        ("&processor=p", 7),
        ("&processor=other", 0),
        ("&since=2099-01-01T00:00:00Z", 0),
        ("&until=1h", 0),
        ("&since=1h", 7),
    ] {
        assert_eq!(
            all_pages(&wharf, "dlq", query, 3).await.len(),
            expected,
            "{query}"
        );
    }
    // A time window: from the fifth's dead-lettering on.
    let fifth = all[4]["failure"]["dead_lettered_at"].as_str().unwrap();
    let window = format!("&since={fifth}");
    assert_eq!(
        ids(&all_pages(&wharf, "dlq", &window, 10).await),
        posted[4..]
    );
    for (query, why) in [
        ("?status=9xx", "status"),
        ("?since=yesterday", "since"),
        ("?limit=0", "limit"),
        ("?cursor=nonsense", "cursor"),
    ] {
        let (status, answer) = wharf
            .admin_send(
                Method::GET,
                &format!("/api/v1/stores/dlq/messages{query}"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(why), "{answer}");
    }

    // Dry runs count what a replay would move, and where.
    let (status, dry) = send(
        &wharf,
        Method::POST,
        "/api/v1/stores/dlq/replay?dry_run=true",
        json!({"since": fifth}),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["matched"], 3);
    assert_eq!(dry["targets"], json!({"in": 3}));
    // (A broker counts returned messages back within moments.)
    eventually(WAIT, "a dry run moves nothing", || async {
        wharf.depth("dlq").await == 7
    })
    .await;

    // The endpoint is fixed: replay two by id, then the window.
    backend.script(|_, _| Reply::status(200));
    let (status, job) = send(
        &wharf,
        Method::POST,
        "/api/v1/stores/dlq/replay",
        json!({"ids": [posted[1], posted[0]]}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["kind"], "replay");
    let done = finished(&wharf, &job).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        (done["total"].as_u64(), done["done"].as_u64()),
        (Some(2), Some(2))
    );
    let delivered = |n: usize| {
        let backend = &backend;
        async move {
            backend
                .wait_for(21 + n, WAIT)
                .await
                .iter()
                .skip(21)
                .map(|r| r.header("idempotency-key").to_owned())
                .collect::<Vec<_>>()
        }
    };
    // 7 messages × 3 failed attempts came first; then the replayed, in store order.
    assert_eq!(delivered(2).await, posted[..2]);

    let (_, job) = send(
        &wharf,
        Method::POST,
        "/api/v1/stores/dlq/replay",
        json!({"since": fifth}),
    )
    .await;
    let done = finished(&wharf, &job).await;
    assert_eq!(done["done"], dry["matched"], "the dry run's count moved");
    assert_eq!(delivered(5).await[2..], posted[4..]);
    assert_eq!(ids(&all_pages(&wharf, "dlq", "", 10).await), posted[2..4]);
    // A replayed message went back as it was accepted, without its trail.
    let last = backend.received().last().unwrap().clone();
    assert_eq!(last.text(), "{\"n\":6}");
    assert!(last.header("wharf-trail").is_empty());

    // Purge: a dry run, then one by id, then the rest.
    let (_, dry) = send(
        &wharf,
        Method::DELETE,
        "/api/v1/stores/dlq/messages?dry_run=true",
        json!({"all": true}),
    )
    .await;
    assert_eq!(dry, json!({"matched": 2, "in_flight": 0}));
    let (status, one) = wharf
        .admin_send(
            Method::DELETE,
            &format!("/api/v1/stores/dlq/messages/{}", posted[2]),
            None,
        )
        .await;
    assert_eq!((status, one), (200, json!({"removed": 1})));
    let (status, job) = send(
        &wharf,
        Method::DELETE,
        "/api/v1/stores/dlq/messages",
        json!({"status": "503"}),
    )
    .await;
    assert_eq!(status, 202);
    let done = finished(&wharf, &job).await;
    assert_eq!(
        (done["kind"].as_str(), done["done"].as_u64()),
        (Some("purge"), Some(1))
    );
    eventually(WAIT, "the purge emptied dlq", || async {
        wharf.depth("dlq").await == 0
    })
    .await;
    let jobs = wharf.admin_get("/api/v1/jobs").await;
    assert_eq!(jobs.as_array().unwrap().len(), 3);
    wharf.stop().await;
}

#[tokio::test]
async fn replay_and_purge_refuse_what_they_cannot_do_and_touch_nothing() {
    let (_dir, _backend, wharf, _) = dead_letters(1).await;
    let replay = "/api/v1/stores/dlq/replay";
    let purge = "/api/v1/stores/dlq/messages";
    for (method, path, body, status, words) in [
        (Method::POST, replay, json!({}), 422, "say which messages"),
        (
            Method::POST,
            replay,
            json!({"all": true, "to_store": "dlq"}),
            422,
            "into itself",
        ),
        (
            Method::POST,
            replay,
            json!({"all": true, "to_store": "nope"}),
            422,
            "no store named",
        ),
        (
            Method::POST,
            replay,
            json!({"all": true, "colour": "red"}),
            422,
            "colour",
        ),
        (
            Method::POST,
            replay,
            json!({"status": "teapot"}),
            422,
            "status",
        ),
        (
            Method::POST,
            "/api/v1/stores/nope/replay",
            json!({"all": true}),
            404,
            "nope",
        ),
        (
            Method::DELETE,
            purge,
            json!({"all": true, "to_store": "in"}),
            422,
            "to_store",
        ),
        (Method::DELETE, purge, json!({}), 422, "say which messages"),
    ] {
        let (got, answer) = send(&wharf, method.clone(), path, body.clone()).await;
        assert_eq!(got, status, "{method} {path} {body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(words), "{body}: {answer}");
    }
    let (status, _) = wharf
        .admin_send(Method::POST, replay, Some(b"not json".to_vec()))
        .await;
    assert_eq!(status, 422);
    for path in ["/api/v1/jobs/nope"] {
        let (status, _) = wharf.admin_send(Method::GET, path, None).await;
        assert_eq!(status, 404);
        let (status, _) = wharf.admin_send(Method::DELETE, path, None).await;
        assert_eq!(status, 404);
    }
    assert_eq!(wharf.depth("dlq").await, 1);
    assert_eq!(wharf.depth("in").await, 0);
    wharf.stop().await;
}

// A broker store that a processor here consumes holds what it delivers:
// it is not Wharf's to purge or replay from (501), and nothing moves.
#[tokio::test]
async fn a_rabbitmq_store_its_processor_consumes_answers_501_to_a_purge_and_keeps_its_message() {
    if !broker_up("a_rabbitmq_store_its_processor_consumes_answers_501_to_a_purge") {
        return;
    }
    let q = Queues::new("dlq-501", &["in", "dlq", "parking"]);
    let backend = Backend::start(|_, _| Reply::status(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(
        &on_rabbitmq(&q, "classic"),
        &backend.url(),
        "on_failure = \"deactivate\"",
    );
    let wharf = Wharf::start(&config, dir.path()).await;
    wharf.accept(ROUTE, "{}").await;
    backend.wait_for(1, WAIT).await;
    eventually(WAIT, "p deactivated", || async {
        wharf.processor("p").await["state"] == "deactivated"
    })
    .await;
    for (method, path) in [
        (Method::DELETE, "/api/v1/stores/in/messages"),
        (Method::POST, "/api/v1/stores/in/replay"),
    ] {
        let body = json!({"all": true, "to_store": "parking"});
        let body = if method == Method::DELETE {
            json!({"all": true})
        } else {
            body
        };
        let (status, answer) = send(&wharf, method.clone(), path, body).await;
        assert_eq!(status, 501, "{method} {path}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot remove messages from a store a processor")),
            "{answer}"
        );
    }
    assert_eq!(wharf.depth("in").await, 1);
    assert_eq!(wharf.depth("parking").await, 0);
    wharf.stop().await;
}

/// Writes the test's config file for the process tests.
/// A config file in `dir` of [`config_on`] with the stores `stores`.
fn config_file(
    dir: &std::path::Path,
    stores: &str,
    endpoint: &str,
    extra: &str,
) -> std::path::PathBuf {
    let text = format!(
        "{}{}",
        support::server_table(&dir.join("data"), ""),
        config_on(stores, endpoint, extra)
    );
    let path = dir.join("wharf.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn admin(
    client: &reqwest::Client,
    wharf: &WharfProcess,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, format!("http://{}{path}", wharf.admin));
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Every id in `store`, in store order (pages of 1000).
async fn store_ids(client: &reqwest::Client, wharf: &WharfProcess, store: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = client
            .get(format!(
                "http://{}/api/v1/stores/{store}/messages?limit=1000{cursor}",
                wharf.admin
            ))
            .send()
            .await
            .unwrap();
        let next = r
            .headers()
            .get("wharf-next-cursor")
            .map(|v| format!("&cursor={}", v.to_str().unwrap()));
        let page: Vec<Value> = r.json().await.unwrap();
        out.extend(ids(&page));
        match next {
            Some(next) => cursor = next,
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_10000_message_replay_loses_nothing_and_keeps_order() {
    kill_9_in_the_middle_of_a_replay(EMBEDDED).await;
}

// A classic queue: the messages a killed replay held go back to their places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_10000_message_replay_out_of_rabbitmq_loses_nothing_and_keeps_order()
 {
    if !broker_up("kill_9_in_the_middle_of_a_10000_message_replay_out_of_rabbitmq") {
        return;
    }
    let q = Queues::new("dlq-kill", &["in", "dlq", "parking"]);
    kill_9_in_the_middle_of_a_replay(&on_rabbitmq(&q, "classic")).await;
}

// ActiveMQ under the policy the README advises for deep dead-letter queues:
// a killed replay's held deliveries go back to their places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_10000_message_replay_out_of_activemq_loses_nothing_and_keeps_order()
 {
    if !activemq::activemq_up("kill_9_in_the_middle_of_a_10000_message_replay_out_of_activemq") {
        return;
    }
    let q = activemq::Queues::deep("dlq-kill", &["in", "dlq", "parking"]);
    kill_9_in_the_middle_of_a_replay(&on_activemq(&q)).await;
}

/// 10,000 dead letters in `dlq` (of `stores`), a replay of all into
/// `parking` killed with SIGKILL once it has moved some, a restart, and a
/// second replay: every message once in `parking` in order (a batch twice
/// at worst), none left.
async fn kill_9_in_the_middle_of_a_replay(stores: &str) {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/gone", dead.local_addr().unwrap());
    drop(dead);
    // Refused at once, no retry, sixteen at a time: dead letters quickly.
    let file = config_file(dir.path(), stores, &endpoint, "concurrency = 16");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("max_redeliveries = 2", "max_redeliveries = 0");
    std::fs::write(&file, text).unwrap();
    let log = dir.path().join("wharf.log");
    let client = reqwest::Client::new();
    let mut wharf = WharfProcess::spawn(&file, &log);

    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let (client, url, accepted) = (
                client.clone(),
                format!("http://{}{ROUTE}", wharf.ingress),
                accepted.clone(),
            );
            tokio::spawn(async move {
                for n in 0..N / 16 + 1 {
                    if c * (N / 16 + 1) + n >= N {
                        break;
                    }
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(format!("{{\"c\":{c},\"n\":{n}}}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 202);
                    let v: Value = r.json().await.unwrap();
                    accepted
                        .lock()
                        .unwrap()
                        .push(v["id"].as_str().unwrap().to_owned());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let accepted: BTreeSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    assert_eq!(accepted.len(), N);
    // Waits on the depth (cheap), then lists the store once (a page costs
    // a read from the head on a broker).
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let stores = wharf.admin_get(&client, "/api/v1/stores").await;
        let depth = stores
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "dlq")
            .and_then(|s| s["depth"].as_u64());
        if depth == Some(N as u64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{depth:?} dead letters"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let order = store_ids(&client, &wharf, "dlq").await;
    assert_eq!(order.iter().cloned().collect::<BTreeSet<_>>(), accepted);

    let (status, job) = admin(
        &client,
        &wharf,
        Method::POST,
        "/api/v1/stores/dlq/replay",
        Some(json!({"all": true, "to_store": "parking"})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/api/v1/jobs/{}", job["id"].as_str().unwrap());
    loop {
        let view = wharf.admin_get(&client, &path).await;
        assert_eq!(view["state"], "running", "ended before the kill: {view}");
        if view["done"].as_u64().unwrap() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wharf.signal("KILL");
    wharf.wait(Duration::from_secs(10));

    let mut wharf = WharfProcess::spawn(&file, &log.with_extension("2.log"));
    let parked = store_ids(&client, &wharf, "parking").await;
    let left = store_ids(&client, &wharf, "dlq").await;
    assert!(!parked.is_empty() && !left.is_empty(), "killed mid-way");
    // The target holds a prefix of the dead letters, in order; the source
    // the rest from at most where that prefix ends (a batch in both at worst).
    assert_eq!(parked, order[..parked.len()]);
    let resumes = order.len() - left.len();
    assert!(resumes <= parked.len(), "a message in neither store");
    assert_eq!(left, order[resumes..]);

    // Replaying the rest finishes the move; first arrivals keep the order.
    let (status, job) = admin(
        &client,
        &wharf,
        Method::POST,
        "/api/v1/stores/dlq/replay",
        Some(json!({"all": true, "to_store": "parking"})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/api/v1/jobs/{}", job["id"].as_str().unwrap());
    eventually(
        Duration::from_secs(300),
        "the second replay done",
        || async { wharf.admin_get(&client, &path).await["state"] == "succeeded" },
    )
    .await;
    let parked = store_ids(&client, &wharf, "parking").await;
    let mut seen = BTreeSet::new();
    let first: Vec<String> = parked
        .iter()
        .filter(|id| seen.insert((*id).clone()))
        .cloned()
        .collect();
    assert_eq!(first, order);
    assert!(parked.len() - N <= 500, "{} duplicates", parked.len() - N);
    assert!(store_ids(&client, &wharf, "dlq").await.is_empty());
    wharf.signal("TERM");
    wharf.wait(Duration::from_secs(20));
}

/// Runs `wharf ARGS --admin URL` against `wharf`; exit success, stdout, stderr.
async fn cli(wharf: &Wharf, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .arg("--admin")
        .arg(format!("http://{}", wharf.admin))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_lists_shows_replays_and_purges_dead_letters_and_asks_first() {
    let (_dir, backend, wharf, posted) = dead_letters(3).await;

    let (ok, table, err) = cli(&wharf, &["dlq", "list", "dlq", "--status", "5xx"]).await;
    assert!(ok, "{err}");
    assert!(table.starts_with("ID "), "{table}");
    for id in &posted {
        let line = table.lines().find(|l| l.starts_with(id.as_str())).unwrap();
        assert!(line.contains("503 after 3 attempt(s) by p"), "{line}");
    }
    let (ok, json, _) = cli(&wharf, &["dlq", "list", "dlq", "--limit", "2", "--json"]).await;
    assert!(ok);
    let page: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest, _) = cli(
        &wharf,
        &["dlq", "list", "dlq", "--cursor", cursor, "--json"],
    )
    .await;
    let rest: Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(rest["messages"][0]["id"], posted[2].as_str());

    let (ok, shown, _) = cli(&wharf, &["dlq", "show", "dlq", &posted[0]]).await;
    assert!(ok);
    assert!(shown.contains("POST /orders"), "{shown}");
    assert!(
        shown.contains("last failure: endpoint answered 503"),
        "{shown}"
    );
    assert!(
        shown.contains("last response body: {\"error\":\"busy\"}"),
        "{shown}"
    );

    // Without a terminal and without --yes nothing moves.
    let (ok, _, err) = cli(&wharf, &["dlq", "replay", "dlq", "--all"]).await;
    assert!(!ok);
    assert!(err.contains("give --yes"), "{err}");
    let (ok, dry, _) = cli(&wharf, &["dlq", "replay", "dlq", "--all", "--dry-run"]).await;
    assert!(ok);
    assert!(
        dry.contains("would touch 3 message(s)") && dry.contains("3 to in"),
        "{dry}"
    );
    assert_eq!(wharf.depth("dlq").await, 3);

    backend.script(|_, _| Reply::status(200));
    let ids = format!("{},{}", posted[0], posted[1]);
    let (ok, out, err) = cli(&wharf, &["dlq", "replay", "dlq", "--ids", &ids, "--yes"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("Succeeded: 2 of 2 moved"), "{out}");
    let got = backend.wait_for(9 + 2, WAIT).await;
    assert_eq!(got[9].header("idempotency-key"), posted[0]);
    assert_eq!(got[10].header("idempotency-key"), posted[1]);

    let (ok, out, err) = cli(&wharf, &["dlq", "purge", "dlq", "--all", "--yes", "--json"]).await;
    assert!(ok, "{err}");
    let job: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (job["state"].as_str(), job["done"].as_u64()),
        (Some("succeeded"), Some(1))
    );
    assert_eq!(wharf.depth("dlq").await, 0);

    let (ok, _, err) = cli(&wharf, &["dlq", "list", "nope"]).await;
    assert!(!ok);
    assert!(
        err.contains("404") && err.contains("no store named \"nope\""),
        "{err}"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn the_cli_shows_status_and_deactivates_and_activates_a_processor() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&config(&backend.url(), ""), dir.path()).await;
    wharf.accept(ROUTE, "{}").await;
    backend.wait_for(1, WAIT).await;

    let (ok, out, err) = cli(&wharf, &["processors", "deactivate", "p"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "p: deactivated");
    let (ok, status, _) = cli(&wharf, &["status"]).await;
    assert!(ok);
    let line = status.lines().find(|l| l.starts_with("p ")).unwrap();
    assert!(line.contains("deactivated"), "{line}");
    assert!(line.contains("deactivated through the admin API"), "{line}");
    let store = status.lines().find(|l| l.starts_with("in ")).unwrap();
    assert!(store.contains("embedded"), "{store}");

    let (ok, json, _) = cli(&wharf, &["status", "--json"]).await;
    assert!(ok);
    let json: Value = serde_json::from_str(&json).unwrap();
    let default = &json["tenants"][0];
    assert_eq!(default["tenant"], "default");
    assert_eq!(default["processors"][0]["forwarded"], 1);
    assert_eq!(default["processors"][0]["state"], "deactivated");
    assert_eq!(default["processors"][0]["forward_rate"], 0);
    assert_eq!(default["stores"][0]["backend"], "embedded");

    // Every tenant the token sees, or the one named.
    let (status, answer) = wharf
        .admin_send(Method::PUT, "/api/v1/tenants/acme", None)
        .await;
    assert_eq!(status, 201, "{answer}");
    let (ok, all, _) = cli(&wharf, &["status"]).await;
    assert!(ok);
    assert!(
        all.contains("tenant default") && all.contains("tenant acme"),
        "{all}"
    );
    let (ok, one, _) = cli(&wharf, &["status", "--tenant", "acme", "--json"]).await;
    assert!(ok);
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["tenants"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["tenants"][0]["tenant"], "acme");

    let (ok, out, _) = cli(&wharf, &["processors", "activate", "p", "--json"]).await;
    assert!(ok);
    let view: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["state"], "running");
    let (ok, _, err) = cli(&wharf, &["processors", "activate", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("no processor named"), "{err}");
    wharf.stop().await;
}
