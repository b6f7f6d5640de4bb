//! The admin API: health, metrics, auth, processors and stores.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use support::{Backend, Wharf, eventually};

const CONFIG: &str = r#"
[stores.s]

[[routes]]
path = "/in"
store = "s"

[processors.p]
store = "s"
endpoint = "ENDPOINT"
"#;

#[tokio::test]
async fn admin_token_guards_the_api_but_not_health_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start_with_server(
        &CONFIG.replace("ENDPOINT", &backend.url()),
        dir.path(),
        "admin_token = \"s3cret\"",
    )
    .await;
    let url = |p: &str| format!("http://{}{p}", wharf.admin);
    let r = wharf
        .client
        .get(url("/api/v1/processors"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = wharf
        .client
        .get(url("/api/v1/stores"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = wharf
        .client
        .post(url("/api/v1/processors/p/deactivate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = wharf
        .client
        .get(url("/api/v1/processors"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        wharf
            .client
            .get(url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        wharf
            .client
            .get(url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    wharf.stop().await;
}

#[tokio::test]
async fn processors_stores_and_metrics_report_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&CONFIG.replace("ENDPOINT", &backend.url()), dir.path()).await;
    wharf.accept("/in", "{}").await;
    backend
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    eventually(
        std::time::Duration::from_secs(10),
        "forwarded and acked",
        || async { wharf.processor("p").await["forwarded"] == 1 && wharf.depth("s").await == 0 },
    )
    .await;

    let p = wharf.processor("p").await;
    assert_eq!(p["store"], "s");
    assert_eq!(p["state"], "running");
    assert_eq!(p["trigger"], "continuous");
    assert_eq!(p["endpoint"], backend.url());
    let stores = wharf.admin_get("/api/v1/stores").await;
    assert_eq!(
        stores,
        serde_json::json!([{"name": "s", "backend": "embedded", "connected": true, "depth": 0}])
    );

    let metrics = wharf.metrics().await;
    for line in [
        "wharf_accepted_total{tenant=\"default\",route=\"/in\"} 1",
        "wharf_stored_total{tenant=\"default\",store=\"s\"} 1",
        "wharf_forwarded_total{tenant=\"default\",processor=\"p\"} 1",
        "wharf_store_depth{tenant=\"default\",store=\"s\"} 0",
        "wharf_forward_latency_seconds_count{tenant=\"default\",processor=\"p\"} 1",
        "wharf_plugin_calls_total{tenant=\"default\",processor=\"p\",handler=\"log-response\",version=\"\",outcome=\"ack\"} 1",
        "wharf_retried_total{tenant=\"default\",processor=\"p\"} 0",
        "wharf_dead_lettered_total{tenant=\"default\",processor=\"p\"} 0",
        "wharf_dropped_total{tenant=\"default\",processor=\"p\"} 0",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    wharf.stop().await;
}

#[tokio::test]
async fn unknown_names_and_bad_limits_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&CONFIG.replace("ENDPOINT", &backend.url()), dir.path()).await;
    let url = |p: &str| format!("http://{}{p}", wharf.admin);
    let r = wharf
        .client
        .post(url("/api/v1/processors/nope/activate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("no processor named \\\"nope\\\"")
    );
    let r = wharf
        .client
        .get(url("/api/v1/stores/nope/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = wharf
        .client
        .get(url("/api/v1/stores/s/messages?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = wharf
        .client
        .get(url("/api/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    wharf.stop().await;
}
