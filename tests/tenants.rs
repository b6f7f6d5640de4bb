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

/// Runs the CLI against a running instance; its output (the run must succeed).
fn cli(wharf: &WharfProcess, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .args(["--admin", &format!("http://{}", wharf.admin)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// A POST to the ingress, answered as it is.
async fn post_raw(wharf: &Wharf, path: &str, body: &str) -> reqwest::Response {
    wharf
        .client
        .post(format!("http://{}{path}", wharf.ingress))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// `PUT /api/v1/tenants/{name}` with `body`, which must create it.
async fn create_tenant(wharf: &Wharf, name: &str, body: &str) {
    let path = format!("/api/v1/tenants/{name}");
    let (status, answer) = wharf
        .admin_send(Method::PUT, &path, Some(body.as_bytes().to_vec()))
        .await;
    assert_eq!(status, 201, "{answer}");
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
    let (status, answer) = put("acme", r#"{"prefix": "/a/b", "quota": {}}"#).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer.to_string().contains("unknown field `quota`"),
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

/// The test pipelines' retry interval, and one that keeps a failed message
/// in its store (under retry) for the length of a test.
const HURRIED: &str = "retry_interval = \"20ms\"";
const PATIENT: &str = "retry_interval = \"1h\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_their_pipelines_plugins_tokens_quotas_and_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| support::Reply::status(503)).await;
    let config = dir.path().join("wharf.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            server_table(&dir.path().join("data"), ""),
            declared("acme", &backend.url()).replace(HURRIED, PATIENT)
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
        .body(r#"{"prefix": "/g", "quotas": {"stored_messages": 5, "plugin_instances": 2}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let apply = client
        .put(format!("{admin}/api/v1/tenants/globex/pipeline"))
        .header("content-type", "application/toml")
        .body(pipeline(&backend.url()).replace(HURRIED, PATIENT))
        .send()
        .await
        .unwrap();
    assert_eq!(apply.status(), 200);
    let deployed = client
        .put(format!("{admin}/api/v1/tenants/globex/plugins/handler"))
        .body(std::fs::read(wharf_plugin_artifacts::LOG_RESPONSE).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(deployed.status(), 201);
    for path in ["/acme/in", "/g/in"] {
        let r = client
            .post(format!("http://{}{path}", wharf.ingress))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{path}");
    }
    let made = cli(
        &wharf,
        &[
            "tokens", "create", "ci", "--role", "read", "--tenant", "globex",
        ],
    );
    let secret = made.lines().last().unwrap().trim().to_owned();
    assert!(secret.starts_with("wharf_globex_"), "{made}");
    assert!(made.contains("token ci (read) of tenant globex"), "{made}");
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
    let usage = wharf
        .admin_get(&client, "/api/v1/tenants/globex/usage")
        .await;
    assert_eq!(
        usage["quotas"],
        json!({"stored_messages": 5, "plugin_instances": 2}),
        "{usage}"
    );
    assert_eq!(usage["usage"]["stored_messages"], 1, "{usage}");
    let plugins = wharf
        .admin_get(&client, "/api/v1/tenants/globex/plugins")
        .await;
    assert_eq!(plugins[0]["name"], "handler", "{plugins}");
    assert_eq!(plugins[0]["live"], 1, "{plugins}");
    for tenant in ["acme", "globex"] {
        let stores = wharf
            .admin_get(&client, &format!("/api/v1/tenants/{tenant}/stores"))
            .await;
        assert_eq!(stores[0]["depth"], 1, "{tenant}: {stores}");
    }

    // The token made before the kill still works, on its own tenant only.
    for (path, expected) in [
        ("/api/v1/tenants/globex/stores", 200),
        ("/api/v1/tenants/acme/stores", 404),
    ] {
        let r = client
            .get(format!("http://{}{path}", wharf.admin))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expected, "{path}");
    }
    let cli = |args: &[&str]| cli(&wharf, args);
    assert!(cli(&["tokens", "list", "--tenant", "globex"]).contains("ci (read)"));
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

/// Every admin endpoint of a tenant, `{t}` for the tenant: method, path, body.
const TENANT_ENDPOINTS: &[(&str, &str, &str)] = &[
    ("GET", "/api/v1/tenants/{t}", ""),
    ("PUT", "/api/v1/tenants/{t}", "{}"),
    ("DELETE", "/api/v1/tenants/{t}?force=true", ""),
    ("GET", "/api/v1/tenants/{t}/processors", ""),
    ("POST", "/api/v1/tenants/{t}/processors/p/activate", ""),
    ("POST", "/api/v1/tenants/{t}/processors/p/deactivate", ""),
    ("GET", "/api/v1/tenants/{t}/stores", ""),
    ("GET", "/api/v1/tenants/{t}/stores/s/messages", ""),
    ("GET", "/api/v1/tenants/{t}/plugins", ""),
    ("PUT", "/api/v1/tenants/{t}/plugins/x", "not wasm"),
    ("GET", "/api/v1/tenants/{t}/plugins/x", ""),
    ("POST", "/api/v1/tenants/{t}/plugins/x/rollback", ""),
    ("PUT", "/api/v1/tenants/{t}/pipeline", ""),
    ("PUT", "/api/v1/tenants/{t}/pipeline?dry_run=true", ""),
    ("GET", "/api/v1/tenants/{t}/pipeline", ""),
    ("GET", "/api/v1/tenants/{t}/pipeline/revisions", ""),
    (
        "POST",
        "/api/v1/tenants/{t}/pipeline/rollback?revision=1",
        "",
    ),
    (
        "POST",
        "/api/v1/tenants/{t}/tokens",
        r#"{"name": "x", "role": "admin"}"#,
    ),
    ("GET", "/api/v1/tenants/{t}/tokens", ""),
    ("DELETE", "/api/v1/tenants/{t}/tokens/x", ""),
    ("GET", "/api/v1/tenants/{t}/usage", ""),
];

/// The default tenant's bare endpoints and the instance's own.
const BARE_ENDPOINTS: &[(&str, &str, &str)] = &[
    ("GET", "/api/v1/processors", ""),
    ("POST", "/api/v1/processors/p/deactivate", ""),
    ("GET", "/api/v1/stores", ""),
    ("GET", "/api/v1/plugins", ""),
    ("PUT", "/api/v1/pipeline", ""),
    ("GET", "/api/v1/pipeline", ""),
    (
        "POST",
        "/api/v1/tokens",
        r#"{"name": "x", "role": "admin"}"#,
    ),
];

async fn call(wharf: &Wharf, token: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let r = wharf
        .client
        .request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            format!("http://{}{path}", wharf.admin),
        )
        .bearer_auth(token)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// What the operator sees of tenant `t`: its pipeline, processors, stores and tokens.
async fn state_of(wharf: &Wharf, t: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for what in [
        "",
        "/pipeline",
        "/processors",
        "/stores",
        "/tokens",
        "/plugins",
    ] {
        let (status, v) = call(
            wharf,
            "op",
            "GET",
            &format!("/api/v1/tenants/{t}{what}"),
            "",
        )
        .await;
        assert_eq!(status, 200, "{what}");
        out.push(v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_reaches_only_its_own_tenant_and_a_read_token_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let config = format!(
        "{}{}",
        declared("alpha", &backend.url()),
        declared("beta", &backend.url())
    );
    let wharf = Wharf::start_with_server(&config, dir.path(), "admin_token = \"op\"").await;
    let mut secrets = std::collections::BTreeMap::new();
    for (tenant, name, role) in [
        ("alpha", "ops", "admin"),
        ("alpha", "dash", "read"),
        ("beta", "ops", "admin"),
    ] {
        let body = json!({"name": name, "role": role, "expires_in": "30d"}).to_string();
        let (status, answer) = call(
            &wharf,
            "op",
            "POST",
            &format!("/api/v1/tenants/{tenant}/tokens"),
            &body,
        )
        .await;
        assert_eq!(status, 201, "{answer}");
        let secret = answer["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with(&format!("wharf_{tenant}_")));
        secrets.insert((tenant, name), secret);
    }
    let alpha_admin = &secrets[&("alpha", "ops")];
    let alpha_read = &secrets[&("alpha", "dash")];
    // Listed without secrets or hashes.
    let (_, listed) = call(
        &wharf,
        alpha_admin,
        "GET",
        "/api/v1/tenants/alpha/tokens",
        "",
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(!listed.to_string().contains("secret") && !listed.to_string().contains("sha256"));

    let beta_before = state_of(&wharf, "beta").await;
    let default_before = call(&wharf, "op", "GET", "/api/v1/pipeline", "").await;
    for token in [alpha_admin, alpha_read] {
        for (method, path, body) in TENANT_ENDPOINTS {
            let (status, answer) =
                call(&wharf, token, method, &path.replace("{t}", "beta"), body).await;
            // The same caller asking for a tenant that does not exist.
            let (nobody_status, nobody) =
                call(&wharf, token, method, &path.replace("{t}", "nobody"), body).await;
            assert_eq!(
                (status, nobody_status),
                (404, 404),
                "{method} {path}: {answer}"
            );
            assert_eq!(
                answer["error"].as_str().unwrap().replace("beta", "nobody"),
                nobody["error"].as_str().unwrap(),
                "{method} {path}: another tenant looks like one that does not exist"
            );
        }
        for (method, path, body) in BARE_ENDPOINTS {
            let (status, answer) = call(&wharf, token, method, path, body).await;
            assert_eq!(status, 404, "{method} {path}: {answer}");
        }
        let (status, _) = call(&wharf, token, "POST", "/api/v1/pipeline/reload", "").await;
        assert_eq!(status, 403);
        let (_, listed) = call(&wharf, token, "GET", "/api/v1/tenants", "").await;
        assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
        assert_eq!(listed[0]["name"], "alpha");
    }
    assert_eq!(state_of(&wharf, "beta").await, beta_before);
    assert_eq!(
        call(&wharf, "op", "GET", "/api/v1/pipeline", "").await,
        default_before
    );

    // The read token reads its own tenant and changes nothing there.
    let alpha_before = state_of(&wharf, "alpha").await;
    for (method, path, body) in TENANT_ENDPOINTS {
        let (status, answer) = call(
            &wharf,
            alpha_read,
            method,
            &path.replace("{t}", "alpha"),
            body,
        )
        .await;
        if *method == "GET" {
            assert_ne!(status, 403, "{method} {path}: {answer}");
            assert_ne!(status, 401, "{method} {path}: {answer}");
        } else {
            assert_eq!(status, 403, "{method} {path}: {answer}");
        }
    }
    assert_eq!(state_of(&wharf, "alpha").await, alpha_before);

    // The admin token changes its own tenant, but not the tenant itself.
    let (status, answer) = call(
        &wharf,
        alpha_admin,
        "PUT",
        "/api/v1/tenants/alpha/pipeline",
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = call(&wharf, alpha_admin, "PUT", "/api/v1/tenants/alpha", "{}").await;
    assert_eq!(status, 403);

    // No token, a wrong one, a revoked one: 401.
    for token in ["", "wrong", "wharf_alpha_forged"] {
        let (status, _) = call(&wharf, token, "GET", "/api/v1/tenants/alpha/stores", "").await;
        assert_eq!(status, 401, "{token:?}");
    }
    let (status, _) = call(
        &wharf,
        "op",
        "DELETE",
        "/api/v1/tenants/alpha/tokens/dash",
        "",
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &wharf,
        alpha_read,
        "GET",
        "/api/v1/tenants/alpha/stores",
        "",
    )
    .await;
    assert_eq!(status, 401);
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_auth_takes_only_requests_with_its_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let guarded = declared("acme", &backend.url()).replace(
        "store = \"s\"\n\n[tenants.acme.processors.p]",
        "store = \"s\"\nauth = { bearer_env = \"ACME_INGRESS_TOKEN\" }\n\n[tenants.acme.processors.p]",
    );
    let config = dir.path().join("wharf.toml");
    std::fs::write(
        &config,
        format!("{}{guarded}", server_table(&dir.path().join("data"), "")),
    )
    .unwrap();
    let mut wharf = WharfProcess::spawn_with_env(
        &config,
        &dir.path().join("wharf.log"),
        &[("ACME_INGRESS_TOKEN", "s3cret")],
    );
    let client = reqwest::Client::new();
    let ingress = wharf.ingress;
    let post = |token: Option<&'static str>| {
        let mut request = client.post(format!("http://{ingress}/acme/in")).body("{}");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.map_or(0, |r| r.status().as_u16()) }
    };
    eventually(WAIT, "serving", || async {
        post(Some("s3cret")).await == 202
    })
    .await;
    assert_eq!(post(None).await, 401);
    assert_eq!(post(Some("s3cre")).await, 401);
    assert_eq!(post(Some("s3cret!")).await, 401);
    backend.wait_for(1, WAIT).await;
    assert_eq!(
        backend.received().len(),
        1,
        "only the authorised message got through"
    );

    // An apply naming a variable that is not set is refused, naming the key.
    let doc = pipeline(&backend.url()).replace(
        "store = \"s\"\n\n[processors.p]",
        "store = \"s\"\nauth = { bearer_env = \"NOT_SET_ANYWHERE\" }\n\n[processors.p]",
    );
    let r = client
        .put(format!(
            "http://{}/api/v1/tenants/acme/pipeline",
            wharf.admin
        ))
        .header("content-type", "application/toml")
        .body(doc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["errors"][0]["key"], "routes[0].auth.bearer_env",
        "{answer}"
    );
    assert_eq!(
        post(Some("s3cret")).await,
        202,
        "the running pipeline is unchanged"
    );
    wharf.signal("TERM");
    assert!(wharf.wait(WAIT).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quota_refuses_with_its_answer_stores_nothing_beyond_it_and_shows_in_usage() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| support::Reply::status(503)).await;
    // Server-wide: two stores per tenant; acme's own: one route, and a
    // message per 1000 s (a bucket of one: the second is refused however
    // slow the machine is).
    let wharf = Wharf::start_with_server("", dir.path(), "quotas = { stores = 2 }").await;
    let (status, answer) = wharf
        .admin_send(
            Method::PUT,
            "/api/v1/tenants/acme",
            Some(br#"{"quotas": {"ingest_rate": 0.001, "routes": 1, "plugins": 0}}"#.to_vec()),
        )
        .await;
    assert_eq!(status, 201, "{answer}");

    let two_routes = format!(
        "{}\n[[routes]]\npath = \"/also\"\nstore = \"s\"\n",
        pipeline(&backend.url())
    );
    let (status, answer) = wharf.apply_to("acme", &two_routes, "").await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["errors"][0]["key"], "routes");
    assert!(answer.to_string().contains("at most 1"), "{answer}");
    let three_stores = format!("{}\n[stores.t]\n[stores.u]\n", pipeline(&backend.url()));
    let (status, answer) = wharf.apply_to("acme", &three_stores, "").await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["errors"][0]["key"], "stores");
    let (status, answer) = wharf.apply_to("acme", &pipeline(&backend.url()), "").await;
    assert_eq!(status, 200, "{answer}");

    // The first message is stored, the next is not.
    assert_eq!(post(&wharf, "/acme/in", None, "{}").await, 202);
    let r = post_raw(&wharf, "/acme/in", "{}").await;
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (900..=1000).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    let refusal: Value = r.json().await.unwrap();
    assert!(
        refusal["error"]
            .as_str()
            .unwrap()
            .contains("ingest quota of 0.001 messages/s"),
        "{refusal}"
    );
    // The default tenant has no quotas.
    let default = pipeline(&backend.url());
    assert_eq!(wharf.apply(&default, "").await.0, 200);
    for _ in 0..5 {
        assert_eq!(post(&wharf, "/in", None, "{}").await, 202);
    }

    // A plugin over the plugin quota is refused before its bytes are read.
    let (status, answer) = wharf
        .admin_send(
            Method::PUT,
            "/api/v1/tenants/acme/plugins/handler",
            Some(b"not even wasm".to_vec()),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("quota"),
        "{answer}"
    );

    let usage = wharf.admin_get("/api/v1/tenants/acme/usage").await;
    assert_eq!(
        usage["quotas"],
        json!({"ingest_rate": 0.001, "routes": 1, "stores": 2, "plugins": 0}),
        "{usage}"
    );
    let u = &usage["usage"];
    assert_eq!(
        (
            u["routes"].as_u64(),
            u["stores"].as_u64(),
            u["stored_messages"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{usage}"
    );
    assert_eq!(u["ingest_refused_over_quota"], 1, "{usage}");
    assert_eq!(u["plugins"], 0, "{usage}");
    wharf.stop().await;
}

/// A tenant pipeline of stores `s` and `t`, routes `/in` and `/also`, and
/// processors `p` and `q` to `endpoint`, each `extra` added.
fn two_lanes(endpoint: &str, extra: &str) -> String {
    let mut doc = String::new();
    for (store, path, processor) in [("s", "/in", "p"), ("t", "/also", "q")] {
        doc.push_str(&format!(
            "[stores.{store}]\n[[routes]]\npath = \"{path}\"\nstore = \"{store}\"\n[processors.{processor}]\nstore = \"{store}\"\nendpoint = \"{endpoint}\"\nretry_interval = \"20ms\"\n{extra}\n"
        ));
    }
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_quota_answers_507_until_deliveries_make_room_and_nothing_beyond_it_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start(|_, _| support::Reply::status(503)).await;
    let wharf = Wharf::start("", dir.path()).await;
    create_tenant(
        &wharf,
        "acme",
        r#"{"quotas": {"stored_messages": 3, "stored_bytes": "1000B"}}"#,
    )
    .await;
    let (status, answer) = wharf
        .apply_to("acme", &two_lanes(&backend.url(), ""), "")
        .await;
    assert_eq!(status, 200, "{answer}");

    // The backend fails: messages stay. Three fit across both stores.
    assert_eq!(post(&wharf, "/acme/in", None, "1").await, 202);
    assert_eq!(post(&wharf, "/acme/also", None, "2").await, 202);
    assert_eq!(post(&wharf, "/acme/in", None, "3").await, 202);
    let r = post_raw(&wharf, "/acme/also", "4").await;
    assert_eq!(r.status(), 507);
    let refusal: Value = r.json().await.unwrap();
    assert!(
        refusal["error"]
            .as_str()
            .unwrap()
            .contains("over its stored quota"),
        "{refusal}"
    );
    let depths = |stores: Value| -> u64 {
        stores
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["depth"].as_u64().unwrap())
            .sum()
    };
    let stores = wharf.admin_get("/api/v1/tenants/acme/stores").await;
    assert_eq!(depths(stores), 3, "nothing stored beyond the quota");
    let usage = wharf.admin_get("/api/v1/tenants/acme/usage").await;
    assert_eq!(usage["usage"]["stored_messages"], 3, "{usage}");
    assert_eq!(usage["usage"]["stored_bytes"], 3, "{usage}");
    assert_eq!(usage["usage"]["ingest_refused_stored_quota"], 1, "{usage}");

    // Deliveries make room: the count goes back to zero.
    backend.script(|_, _| support::Reply::status(200));
    eventually(
        WAIT,
        "the three delivered and the count back to 0",
        || async {
            let usage = wharf.admin_get("/api/v1/tenants/acme/usage").await;
            usage["usage"]["stored_messages"] == 0 && usage["usage"]["stored_bytes"] == 0
        },
    )
    .await;

    // Bytes: 900 fit, 200 more would not.
    backend.script(|_, _| support::Reply::status(503));
    assert_eq!(post(&wharf, "/acme/in", None, &"x".repeat(900)).await, 202);
    assert_eq!(
        post(&wharf, "/acme/also", None, &"y".repeat(200)).await,
        507
    );
    assert_eq!(
        post(&wharf, "/acme/also", None, &"y".repeat(100)).await,
        202
    );
    let stores = wharf.admin_get("/api/v1/tenants/acme/stores").await;
    assert_eq!(depths(stores), 2);

    // After a restart the count is taken from the stores.
    wharf.stop().await;
    let wharf = Wharf::start("", dir.path()).await;
    let usage = wharf.admin_get("/api/v1/tenants/acme/usage").await;
    assert_eq!(usage["usage"]["stored_messages"], 2, "{usage}");
    assert_eq!(usage["usage"]["stored_bytes"], 1000, "{usage}");
    assert_eq!(post(&wharf, "/acme/in", None, "z").await, 507);
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_processors_share_its_forward_rate() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start("", dir.path()).await;
    create_tenant(&wharf, "acme", r#"{"quotas": {"forward_rate": 20}}"#).await;
    let (status, answer) = wharf
        .apply_to("acme", &two_lanes(&backend.url(), ""), "")
        .await;
    assert_eq!(status, 200, "{answer}");
    // Both processors wait while the messages go in.
    let switch = |action: &'static str| {
        let wharf = &wharf;
        async move {
            for p in ["p", "q"] {
                let path = format!("/api/v1/tenants/acme/processors/{p}/{action}");
                let (status, answer) = wharf.admin_send(Method::POST, &path, None).await;
                assert_eq!(status, 200, "{action} {p}: {answer}");
            }
        }
    };
    switch("deactivate").await;
    for i in 0..20 {
        assert_eq!(post(&wharf, "/acme/in", None, &format!("s{i}")).await, 202);
        assert_eq!(
            post(&wharf, "/acme/also", None, &format!("t{i}")).await,
            202
        );
    }
    switch("activate").await;
    let got = backend.wait_for(40, WAIT).await;
    // 40 attempts at 20/s together: the last at least 39/20 s after the
    // first (a rate can only make it slower, so the bound holds on a
    // loaded machine). Each processor alone would take 20 in a second.
    let span = got.last().unwrap().at - got.first().unwrap().at;
    assert!(span >= Duration::from_millis(1900), "{span:?}");
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_limits_above_the_tenants_ceilings_are_refused_and_its_instances_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start("", dir.path()).await;
    create_tenant(&wharf, "acme", r#"{"quotas": {"plugin_deadline": "2s", "plugin_memory": "32MiB", "plugin_fuel": 100000000000, "plugin_instances": 1}}"#).await;
    for (name, file) in [
        ("spin", wharf_plugin_artifacts::SPIN),
        ("log", wharf_plugin_artifacts::LOG_RESPONSE),
    ] {
        let bytes = std::fs::read(file).unwrap();
        let (status, answer) = wharf
            .admin_send(
                Method::PUT,
                &format!("/api/v1/tenants/acme/plugins/{name}"),
                Some(bytes),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
    }
    // The defaults (64 MiB, unlimited fuel) and a longer deadline are over.
    let over = "response_handler = \"log\"\nplugin_limits = { deadline = \"5s\" }\n";
    let (status, answer) = wharf
        .apply_to("acme", &two_lanes(&backend.url(), over), "")
        .await;
    assert_eq!(status, 422, "{answer}");
    let keys: Vec<&str> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    for key in ["deadline", "memory", "fuel"] {
        assert!(
            keys.contains(&format!("processors.p.plugin_limits.{key}").as_str()),
            "{answer}"
        );
    }
    assert!(answer.to_string().contains("plugin_deadline"), "{answer}");

    // p spins to its deadline on every call and holds the tenant's one
    // instance; q's calls wait their 100 ms for it and fail saying why.
    let limits = |handler: &str, deadline: &str| {
        format!(
            "response_handler = \"{handler}\"\nplugin_limits = {{ deadline = \"{deadline}\", memory = \"32MiB\", fuel = 100000000000 }}\nmax_redeliveries = 1000\n"
        )
    };
    let doc = two_lanes(&backend.url(), "")
        .replacen(
            "retry_interval = \"20ms\"\n",
            &format!("retry_interval = \"20ms\"\n{}", limits("spin", "2s")),
            1,
        )
        .replacen(
            "[processors.q]\nstore = \"t\"\n",
            &format!("[processors.q]\nstore = \"t\"\n{}", limits("log", "100ms")),
            1,
        );
    let (status, answer) = wharf.apply_to("acme", &doc, "").await;
    assert_eq!(status, 200, "{answer}\n{doc}");
    assert_eq!(post(&wharf, "/acme/in", None, "spin").await, 202);
    eventually(WAIT, "p's plugin holds the instance", || async {
        let usage = wharf.admin_get("/api/v1/tenants/acme/usage").await;
        usage["usage"]["plugin_instances"] == 1
    })
    .await;
    assert_eq!(post(&wharf, "/acme/also", None, "log").await, 202);
    eventually(WAIT, "q's call refused for want of an instance", || async {
        let all = wharf.admin_get("/api/v1/tenants/acme/processors").await;
        let q = all
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "q")
            .cloned();
        q.is_some_and(|q| {
            q["last_failure"]
                .as_str()
                .unwrap_or("")
                .contains("plugin_instances quota of 1")
        })
    })
    .await;
    let usage = wharf.admin_get("/api/v1/tenants/acme/usage").await;
    assert!(
        usage["usage"]["plugin_calls_refused_no_instance"].as_u64() >= Some(1),
        "{usage}"
    );
    assert!(
        usage["usage"]["plugin_instances"].as_u64() <= Some(1),
        "{usage}"
    );
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_tenant_tokens_takes_only_the_tenants_live_ingress_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::ok().await;
    let wharf = Wharf::start("", dir.path()).await;
    for tenant in ["acme", "globex"] {
        create_tenant(&wharf, tenant, "{}").await;
    }
    let guarded = pipeline(&backend.url()).replace(
        "store = \"s\"\n\n[processors.p]",
        "store = \"s\"\nauth = { tenant_tokens = true }\n\n[processors.p]",
    );
    assert_eq!(wharf.apply_to("acme", &guarded, "").await.0, 200);
    let token = |tenant: &'static str, name: &'static str, role: &'static str| {
        let wharf = &wharf;
        async move {
            let body = json!({"name": name, "role": role}).to_string().into_bytes();
            let path = format!("/api/v1/tenants/{tenant}/tokens");
            let (status, answer) = wharf.admin_send(Method::POST, &path, Some(body)).await;
            assert_eq!(status, 201, "{answer}");
            answer["secret"].as_str().unwrap().to_owned()
        }
    };
    let producer = token("acme", "producer", "ingress").await;
    let admin = token("acme", "deployer", "admin").await;
    let other = token("globex", "producer", "ingress").await;
    let send = |secret: Option<String>| {
        let wharf = &wharf;
        async move {
            let mut request = wharf
                .client
                .post(format!("http://{}/acme/in", wharf.ingress))
                .body("{}");
            if let Some(secret) = secret {
                request = request.bearer_auth(secret);
            }
            request.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(send(Some(producer.clone())).await, 202);
    assert_eq!(send(None).await, 401);
    assert_eq!(send(Some(admin.clone())).await, 401, "only ingress tokens");
    assert_eq!(send(Some(other)).await, 401, "another tenant's token");
    assert_eq!(send(Some(format!("{producer}x"))).await, 401);
    backend.wait_for(1, WAIT).await;
    assert_eq!(backend.received().len(), 1, "only the authorised message");

    // An ingress token reaches no admin endpoint, not even its tenant's.
    let (status, answer) = call(&wharf, &producer, "GET", "/api/v1/tenants/acme/stores", "").await;
    assert_eq!(status, 403, "{answer}");
    // Revoked, it no longer sends.
    let (status, answer) = call(
        &wharf,
        &admin,
        "DELETE",
        "/api/v1/tenants/acme/tokens/producer",
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(send(Some(producer)).await, 401);

    // auth takes one of its two ways, not both.
    let both = guarded.replace(
        "auth = { tenant_tokens = true }",
        "auth = { tenant_tokens = true, bearer_env = \"HOME\" }",
    );
    let (status, answer) = wharf.apply_to("acme", &both, "").await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["errors"][0]["key"], "routes[0].auth", "{answer}");
    wharf.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_neighbour_does_not_stop_another_tenants_messages_arriving_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a_backend = Backend::ok().await;
    let b_backend = Backend::ok().await;
    let wharf = Wharf::start("", dir.path()).await;
    let quotas = r#"{"quotas": {"ingest_rate": 50, "plugin_instances": 2}}"#;
    create_tenant(&wharf, "a", quotas).await;
    create_tenant(&wharf, "b", "{}").await;
    let bytes = std::fs::read(wharf_plugin_artifacts::SPIN).unwrap();
    let (status, answer) = wharf
        .admin_send(Method::PUT, "/api/v1/tenants/a/plugins/spin", Some(bytes))
        .await;
    assert_eq!(status, 201, "{answer}");
    // A misbehaves three ways: its handler runs to its deadline on every
    // call, one of its endpoints is dead (retried for ever), and it is
    // flooded far past its ingest quota.
    let a = format!(
        "[stores.spun]\n[stores.dead]\n\
         [[routes]]\npath = \"/in\"\nstore = \"spun\"\n\
         [[routes]]\npath = \"/dead\"\nstore = \"dead\"\n\
         [processors.spin]\nstore = \"spun\"\nendpoint = \"{}\"\nretry_interval = \"20ms\"\n\
         response_handler = \"spin\"\nplugin_limits = {{ deadline = \"100ms\" }}\n\
         [processors.dead]\nstore = \"dead\"\nendpoint = \"http://127.0.0.1:9/\"\nretry_interval = \"20ms\"\nmax_redeliveries = 1000000\n",
        a_backend.url()
    );
    let (status, answer) = wharf.apply_to("a", &a, "").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        wharf.apply_to("b", &pipeline(&b_backend.url()), "").await.0,
        200
    );

    let done = tokio_util::sync::CancellationToken::new();
    let flood = |path: &'static str| {
        let (client, ingress, done) = (wharf.client.clone(), wharf.ingress, done.clone());
        tokio::spawn(async move {
            let mut refused = 0u64;
            while !done.is_cancelled() {
                let r = client
                    .post(format!("http://{ingress}/a{path}"))
                    .body("flood")
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 429) {
                    refused += 1;
                }
            }
            refused
        })
    };
    let floods = [flood("/in"), flood("/in"), flood("/dead")];

    const N: usize = 200;
    for i in 0..N {
        assert_eq!(post(&wharf, "/b/in", None, &i.to_string()).await, 202);
    }
    let got = b_backend.wait_for(N, Duration::from_secs(60)).await;
    done.cancel();
    let mut refused = 0;
    for f in floods {
        refused += f.await.unwrap();
    }
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    let bodies: Vec<String> = got.iter().map(|r| r.text()).collect();
    assert_eq!(bodies, expected, "B's messages all arrive, in order, once");
    assert!(refused > 0, "A was flooded past its quota");
    let a_spin = wharf.admin_get("/api/v1/tenants/a/processors").await;
    let failures: Vec<String> = a_spin
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["last_failure"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        failures.iter().any(|f| f.contains("deadline")),
        "A's plugin did hit its deadline: {failures:?}"
    );
    wharf.stop().await;
}
