//! Ingress answers and store fail-over, seen from an HTTP client.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use support::Wharf;

const ROUTE: &str = "/in";

fn config(extra_store: &str, route_extra: &str) -> String {
    format!(
        r#"
[stores.primary]
{extra_store}

[stores.backup]

[[routes]]
path = "{ROUTE}"
methods = ["POST"]
consumes = ["application/json", "text/plain"]
store = "primary"
{route_extra}
"#
    )
}

#[tokio::test]
async fn refusals_answer_404_405_415_and_413_with_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(&config("", "max_body = \"1KiB\""), dir.path()).await;
    let url = |p: &str| format!("http://{}{p}", wharf.ingress);

    let r = wharf
        .client
        .post(url("/nowhere"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("/nowhere")
    );

    let r = wharf.client.get(url(ROUTE)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");

    let r = wharf
        .client
        .post(url(ROUTE))
        .header("content-type", "application/xml")
        .body("<a/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = wharf
        .client
        .post(url(ROUTE))
        .body("no content type")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // Parameters and case do not matter.
    let r = wharf
        .client
        .post(url(ROUTE))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let big = "x".repeat(1025);
    let r = wharf
        .client
        .post(url(ROUTE))
        .header("content-type", "text/plain")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Chunked, with no Content-Length to check up front.
    let stream = futures_stream(big.into_bytes());
    let r = wharf
        .client
        .post(url(ROUTE))
        .header("content-type", "text/plain")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = wharf
        .client
        .post(url(ROUTE))
        .header("content-type", "text/plain")
        .body("x".repeat(1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "exactly max_body is accepted");

    assert_eq!(
        wharf.depth("primary").await,
        2,
        "refused requests store nothing"
    );
    wharf.stop().await;
}

fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    struct Chunks(Vec<Vec<u8>>);
    impl futures_core::Stream for Chunks {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(if self.0.is_empty() {
                None
            } else {
                Some(Ok(self.0.remove(0)))
            })
        }
    }
    Chunks(bytes.chunks(100).map(<[u8]>::to_vec).collect())
}

#[tokio::test]
async fn stored_message_keeps_method_path_query_headers_and_binary_body() {
    let dir = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(
        &config("", "consumes = [\"application/octet-stream\"]")
            .replace("consumes = [\"application/json\", \"text/plain\"]\n", ""),
        dir.path(),
    )
    .await;
    let body: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xc3]).collect();
    let r = wharf
        .client
        .post(format!("http://{}{ROUTE}?a=1&b=%20x", wharf.ingress))
        .header("content-type", "application/octet-stream")
        .header("x-trace", "t-1")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let m = &wharf.peek("primary", 1).await[0];
    assert_eq!(m["method"], "POST");
    assert_eq!(m["path"], "/in?a=1&b=%20x");
    assert_eq!(m["headers"]["x-trace"], "t-1");
    assert_eq!(m["body_base64"], true);
    let stored = base64::engine::general_purpose::STANDARD
        .decode(m["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(stored, body);
    wharf.stop().await;
}

#[tokio::test]
async fn full_primary_fails_over_to_secondary() {
    let dir = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(
        &config("max_messages = 2\nsecondary = \"backup\"", ""),
        dir.path(),
    )
    .await;
    for i in 0..5 {
        wharf.accept(ROUTE, &format!("{{\"i\":{i}}}")).await;
    }
    assert_eq!(wharf.depth("primary").await, 2);
    assert_eq!(wharf.depth("backup").await, 3);
    let metrics = wharf.metrics().await;
    assert!(
        metrics.contains("wharf_stored_total{tenant=\"default\",store=\"backup\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wharf_accepted_total{tenant=\"default\",route=\"/in\"} 5"),
        "{metrics}"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn store_retries_before_failing_over() {
    let dir = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(
        &config(
            "max_messages = 1\nsecondary = \"backup\"\nretry = { count = 2, interval = \"150ms\", backoff_factor = 2.0 }",
            "",
        ),
        dir.path(),
    )
    .await;
    wharf.accept(ROUTE, "{}").await;
    let started = Instant::now();
    wharf.accept(ROUTE, "{}").await;
    let took = started.elapsed();
    // Two retries: 150ms + 300ms, then the secondary.
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    assert_eq!(wharf.depth("backup").await, 1);
    wharf.stop().await;
}

#[tokio::test]
async fn every_store_refusing_answers_500_and_names_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let text = config("max_messages = 1\nsecondary = \"backup\"", "")
        .replace("[stores.backup]", "[stores.backup]\nmax_messages = 1");
    let wharf = Wharf::start(&text, dir.path()).await;
    wharf.accept(ROUTE, "{}").await;
    wharf.accept(ROUTE, "{}").await;
    let r = wharf.post_json(ROUTE, "{}").await;
    assert_eq!(r.status(), 500);
    let error = r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains("\"primary\" is full") && error.contains("\"backup\" is full"),
        "{error}"
    );
    wharf.stop().await;
}

#[tokio::test]
async fn concurrent_posts_are_all_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let wharf = Wharf::start(&config("", ""), dir.path()).await;
    let mut tasks = Vec::new();
    for c in 0..16 {
        let client = wharf.client.clone();
        let url = format!("http://{}{ROUTE}", wharf.ingress);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50 {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(format!("{{\"c\":{c},\"i\":{i}}}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                ids.push(
                    r.json::<serde_json::Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            ids
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    assert_eq!(ids.len(), 800, "ids are unique");
    assert_eq!(wharf.depth("primary").await, 800);
    let stored: std::collections::BTreeSet<String> = wharf
        .peek("primary", 1000)
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, ids);
    wharf.stop().await;
}
