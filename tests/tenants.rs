//! Tenants from outside: declared in the file and created over the admin
//! API, each with its own routes (under a prefix or on host names), stores,
//! processors, metrics and data; overlaps refused; deletes that would strand
//! messages refused; everything back after a `kill -9`.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Backend, Wharf, WharfProcess, eventually, server_table};

const WAIT: Duration = Duration::from_secs(20);

/// One store, one route `/in`, one processor to `endpoint`: the same names in every tenant.
fn pipeline(endpoint: &str) -> String {
    format!(
        "[stores.s]\n\n[[routes]]\npath = \"/in\"\nstore = \"s\"\n\n[processors.p]\nstore = \"s\"\nendpoint = \"{endpoint}\"\nretry_interval = \"20ms\"\n"
    )
}

/// The same pipeline as `[tenants.NAME]` tables.
fn declared(name: &str, endpoint: &str) -> String {
    format!(
        "[tenants.{name}.stores.s]\n\n[[tenants.{name}.routes]]\npath = \"/in\"\nstore = \"s\"\n\n[tenants.{name}.processors.p]\nstore = \"s\"\nendpoint = \"{endpoint}\"\nretry_interval = \"20ms\"\n"
    )
}

async fn post(wharf: &Wharf, path: &str, host: Option<&str>, body: &str) -> u16 {
    let mut request = wharf
        .client
        .post(format!("http://{}{path}", wharf.ingress))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(host) = host {
        request = request.header("host", host);
    }
    request.send().await.unwrap().status().as_u16()
}

fn bodies(backend: &Backend) -> Vec<String> {
    backend.received().iter().map(|r| r.text()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_serves_its_own_routes_under_its_prefix_or_hosts_and_keeps_its_own_objects() {
    let dir = tempfile::tempdir().unwrap();
    let (default_backend, acme_backend, globex_backend) = (
        Backend::ok().await,
        Backend::ok().await,
        Backend::ok().await,
    );
    let config = format!(
        "{}\n{}",
        pipeline(&default_backend.url()),
        declared("acme", &acme_backend.url())
    );
    let wharf = Wharf::start(&config, dir.path()).await;

    // A tenant made over the API, reached on its host name only.
    let (status, answer) = wharf
        .admin_send(
            Method::PUT,
            "/api/v1/tenants/globex",
            Some(br#"{"hosts": ["Globex.Test"]}"#.to_vec()),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["hosts"], json!(["globex.test"]));
    assert_eq!(answer["prefix"], Value::Null);
    let (status, answer) = wharf
        .apply_to("globex", &pipeline(&globex_backend.url()), "")
        .await;
    assert_eq!(status, 200, "{answer}");
    // Putting the same spec again changes nothing.
    let (status, _) = wharf
        .admin_send(
            Method::PUT,
            "/api/v1/tenants/globex",
            Some(br#"{"hosts": ["globex.test"]}"#.to_vec()),
        )
        .await;
    assert_eq!(status, 200);

    assert_eq!(post(&wharf, "/in", None, "\"to default\"").await, 202);
    assert_eq!(post(&wharf, "/acme/in", None, "\"to acme\"").await, 202);
    assert_eq!(
        post(&wharf, "/in", Some("globex.test:8080"), "\"to globex\"").await,
        202
    );
    assert_eq!(post(&wharf, "/globex/in", None, "{}").await, 404);
    assert_eq!(post(&wharf, "/acme/other", None, "{}").await, 404);
    for (backend, body) in [
        (&default_backend, "\"to default\""),
        (&acme_backend, "\"to acme\""),
        (&globex_backend, "\"to globex\""),
    ] {
        backend.wait_for(1, WAIT).await;
        assert_eq!(bodies(backend), vec![body.to_owned()]);
    }

    // Each tenant's objects under its own path; names repeat across tenants.
    let tenants = wharf.admin_get("/api/v1/tenants").await;
    let names: Vec<&str> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "acme", "globex"]);
    let acme = wharf.admin_get("/api/v1/tenants/acme").await;
    assert_eq!(acme["prefix"], "/acme");
    for tenant in ["acme", "globex"] {
        let processors = wharf
            .admin_get(&format!("/api/v1/tenants/{tenant}/processors"))
            .await;
        assert_eq!(processors[0]["name"], "p", "{processors}");
        assert_eq!(processors[0]["forwarded"], 1, "{processors}");
    }
    let (status, _) = wharf
        .admin_send(Method::GET, "/api/v1/tenants/nobody/processors", None)
        .await;
    assert_eq!(status, 404);
    assert!(dir.path().join("tenants/acme/stores").exists());
    assert!(dir.path().join("tenants/globex/tenant.json").exists());

    let metrics = wharf.metrics().await;
    for tenant in ["default", "acme", "globex"] {
        let line = format!("wharf_forwarded_total{{tenant=\"{tenant}\",processor=\"p\"}} 1");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_prefixes_hosts_and_routes_that_clash_are_refused_naming_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start(&pipeline(&backend.url()), dir.path()).await;
    let put = |name: &str, spec: &str| {
        let path = format!("/api/v1/tenants/{name}");
        let body = spec.as_bytes().to_vec();
        let wharf = &wharf;
        async move { wharf.admin_send(Method::PUT, &path, Some(body)).await }
    };

    let (status, answer) = put("Not_A_Slug", "").await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("lower-case"));
    let (status, answer) = put("acme", r#"{"prefix": "/a/b", "quotas": {}}"#).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer.to_string().contains("unknown field `quotas`"),
        "{answer}"
    );
    let (status, answer) = put("acme", r#"{"prefix": "/a/b"}"#).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["errors"][0]["key"], "tenant.prefix");

    assert_eq!(put("acme", "").await.0, 201);
    assert_eq!(
        put("initech", r#"{"hosts": ["initech.test"]}"#).await.0,
        201
    );
    let (status, answer) = put("umbrella", r#"{"prefix": "/acme"}"#).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer
            .to_string()
            .contains("already tenant \\\"acme\\\"'s prefix"),
        "{answer}"
    );
    let (status, answer) = put("umbrella", r#"{"hosts": ["INITECH.test"]}"#).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.to_string().contains("initech"), "{answer}");
    // A tenant prefix over a default route, and a default route under a tenant prefix.
    let (status, answer) = put("in", "").await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer.to_string().contains("default tenant's route /in"),
        "{answer}"
    );
    let clash = format!(
        "{}\n[[routes]]\npath = \"/acme/x\"\nstore = \"s\"\n",
        pipeline(&backend.url())
    );
    let (status, answer) = wharf.apply(&clash, "").await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["errors"][0]["key"], "routes[1].path", "{answer}");
    assert!(
        answer
            .to_string()
            .contains("tenant \\\"acme\\\"'s prefix /acme"),
        "{answer}"
    );
    let (status, _) = wharf
        .admin_send(Method::DELETE, "/api/v1/tenants/default", None)
        .await;
    assert_eq!(status, 409);
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_that_holds_messages_needs_force_and_keeps_its_data_aside() {
    let dir = tempfile::tempdir().unwrap();
    let wharf = Wharf::start("", dir.path()).await;
    let (status, _) = wharf
        .admin_send(Method::PUT, "/api/v1/tenants/acme", None)
        .await;
    assert_eq!(status, 201);
    // Its processor cannot deliver: the message stays in its store.
    let (status, answer) = wharf
        .apply_to("acme", &pipeline("http://127.0.0.1:1/"), "")
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(post(&wharf, "/acme/in", None, "{}").await, 202);

    let (status, answer) = wharf
        .admin_send(Method::DELETE, "/api/v1/tenants/acme", None)
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("s holds 1 message"),
        "{answer}"
    );
    assert_eq!(post(&wharf, "/acme/in", None, "{}").await, 202);

    let (status, answer) = wharf
        .admin_send(Method::DELETE, "/api/v1/tenants/acme?force=true", None)
        .await;
    assert_eq!(status, 200, "{answer}");
    let aside = std::path::PathBuf::from(answer["data_moved_to"].as_str().unwrap());
    assert!(aside.starts_with(dir.path().join("deleted-tenants")));
    assert!(aside.join("stores").exists());
    assert!(!dir.path().join("tenants/acme").exists());
    assert_eq!(post(&wharf, "/acme/in", None, "{}").await, 404);
    let (status, _) = wharf
        .admin_send(Method::GET, "/api/v1/tenants/acme", None)
        .await;
    assert_eq!(status, 404);
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_their_pipelines_and_their_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| support::Reply::status(503)).await;
    let config = dir.path().join("wharf.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            server_table(&dir.path().join("data"), ""),
            declared("acme", &backend.url())
        ),
    )
    .unwrap();
    let log = dir.path().join("wharf.log");
    let mut wharf = WharfProcess::spawn(&config, &log);
    let client = reqwest::Client::new();
    eventually(WAIT, "healthy", || async {
        client
            .get(format!("http://{}/healthz", wharf.admin))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let admin = format!("http://{}", wharf.admin);
    let put = client
        .put(format!("{admin}/api/v1/tenants/globex"))
        .body(r#"{"prefix": "/g"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let apply = client
        .put(format!("{admin}/api/v1/tenants/globex/pipeline"))
        .header("content-type", "application/toml")
        .body(pipeline(&backend.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(apply.status(), 200);
    for path in ["/acme/in", "/g/in"] {
        let r = client
            .post(format!("http://{}{path}", wharf.ingress))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{path}");
    }
    wharf.signal("KILL");
    wharf.wait(WAIT);

    let mut wharf = WharfProcess::spawn(&config, &log);
    eventually(WAIT, "healthy again", || async {
        client
            .get(format!("http://{}/healthz", wharf.admin))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let tenants = wharf.admin_get(&client, "/api/v1/tenants").await;
    assert_eq!(tenants.as_array().unwrap().len(), 3, "{tenants}");
    let globex = wharf.admin_get(&client, "/api/v1/tenants/globex").await;
    assert_eq!(globex["prefix"], "/g");
    for tenant in ["acme", "globex"] {
        let stores = wharf
            .admin_get(&client, &format!("/api/v1/tenants/{tenant}/stores"))
            .await;
        assert_eq!(stores[0]["depth"], 1, "{tenant}: {stores}");
    }

    // The CLI, scoped with --tenant.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(args)
            .args(["--admin", &format!("http://{}", wharf.admin)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = cli(&["tenants"]);
    assert!(
        listed.contains("globex: revision 1, 1 store(s), 1 processor(s); /g/...")
            && listed.contains("default: revision 1, 0 store(s)"),
        "{listed}"
    );
    let one: Value = serde_json::from_str(&cli(&["tenants", "acme", "--json"])).unwrap();
    assert_eq!(one["prefix"], "/acme");
    let doc = dir.path().join("globex.toml");
    std::fs::write(&doc, "").unwrap();
    let dry = cli(&[
        "apply",
        "--tenant",
        "globex",
        doc.to_str().unwrap(),
        "--dry-run",
        "--force",
    ]);
    assert!(dry.contains("- route /in"), "{dry}");
    wharf.signal("TERM");
    assert!(wharf.wait(WAIT).success());
}
