//! The reliable-delivery example, as shipped: its config (ports moved to free
//! ones) and its backend test service.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::time::Duration;

use support::{Wharf, eventually};

const ROUTE: &str = "/healthcare/appointment";
const WAIT: Duration = Duration::from_secs(10);

/// The example config, pointed at `backend` and free ports, with faster retries.
fn example_config(backend: std::net::SocketAddr) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/reliable-delivery/wharf.toml"
    ))
    .unwrap();
    let (_, rest) = text.split_once("[stores.myStore]").unwrap();
    format!("[stores.myStore]{rest}")
        .replace("127.0.0.1:9095", &backend.to_string())
        .replace("schedule = \"0/2 * * * * ?\"", "interval = \"50ms\"")
        .replace("retry_interval = \"3s\"", "retry_interval = \"50ms\"")
}

async fn start_backend(status: u16) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = test_backend::Options {
        listen: addr,
        status,
        quiet: false,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        test_backend::serve(listener, &options, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop)
}

#[tokio::test]
async fn example_happy_path_delivers_to_the_test_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _stop) = start_backend(202).await;
    let wharf = Wharf::start(&example_config(backend), dir.path()).await;
    let r = wharf
        .client
        .post(format!("http://{}{ROUTE}", wharf.ingress))
        .header("content-type", "application/json")
        .header("company", "WSO2")
        .body(r#"{"Status":"SUCCESS"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually(Duration::from_secs(10), "forwarded", || async {
        wharf.processor("appointments").await["forwarded"] == 1
    })
    .await;
    eventually(WAIT, "source store empty", || async {
        wharf.depth("myStore").await == 0
    })
    .await;
    wharf.stop().await;
}

#[tokio::test]
async fn example_backend_500_ends_in_the_dlc_store() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _stop) = start_backend(500).await;
    let wharf = Wharf::start(&example_config(backend), dir.path()).await;
    wharf.accept(ROUTE, r#"{"Status":"SUCCESS"}"#).await;
    eventually(Duration::from_secs(10), "dead-lettered", || async {
        wharf.depth("myDLCStore").await == 1
    })
    .await;
    assert_eq!(wharf.processor("appointments").await["retried"], 5);
    wharf.stop().await;
}

#[tokio::test]
async fn example_backend_rejects_invalid_json_like_the_guide() {
    let (backend, _stop) = start_backend(202).await;
    let client = reqwest::Client::new();
    let url = format!("http://{backend}/testservice/test");
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["Message"],
        "This is Test Service"
    );
    let r = client.post(&url).body("not json").send().await.unwrap();
    assert_eq!(r.status(), 500);
}
