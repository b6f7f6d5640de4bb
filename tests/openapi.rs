//! The admin API and its OpenAPI description: served at
//! `/api/v1/openapi.json`, made from the code, and checked against a running
//! instance (dead letters, a deactivated processor, a plugin, a tenant with
//! its own pipeline and token, a job) by a property-based fuzzer,
//! schemathesis from PyPI (installed by `.ci/schemathesis`): no `5xx` and
//! no answer outside the description, in status, content type, headers or
//! body.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Wharf, eventually};

const OPERATOR: &str = "fuzz-operator-token";

/// The checks the fuzzer makes of every answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/schemathesis")
}

/// The `st` command, installed once per test binary; panics under CI=true
/// when it cannot be installed, else skips loudly.
fn schemathesis(test: &str) -> Option<PathBuf> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(script())
            .output()
            .map_err(|e| format!("{}: {e}", script().display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}",
                script().display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    match installed {
        Ok(st) => Some(st.clone()),
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "schemathesis could not be installed and CI=true: {test} must run ({why})"
            );
            eprintln!("\n!!! SKIPPED {test}: schemathesis could not be installed ({why})\n");
            None
        }
    }
}

/// An admin request with the operator's token; the status and the body.
async fn admin(
    wharf: &Wharf,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, Value) {
    let mut request = wharf
        .client
        .request(method, format!("http://{}{path}", wharf.admin))
        .bearer_auth(OPERATOR);
    if let Some((content_type, bytes)) = body {
        request = request.header("content-type", content_type).body(bytes);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Stores `in`, `dlq`, `parking` and `held`; processor `p` dead-letters
/// into `dlq` at the first failure, `stuck` deactivates on its first.
fn pipeline(endpoint: &str) -> String {
    format!(
        r#"
[stores.in]
[stores.dlq]
[stores.parking]
[stores.held]

[[routes]]
path = "/orders"
store = "in"

[[routes]]
path = "/held"
store = "held"

[processors.p]
store = "in"
endpoint = "{endpoint}"
max_redeliveries = 0
dead_letter_store = "dlq"

[processors.stuck]
store = "held"
endpoint = "{endpoint}"
max_redeliveries = 0
on_failure = "deactivate"
"#
    )
}

/// An instance with something in every kind of object the API shows, the
/// same in the `default` tenant and in `acme`; the id of a job in each.
async fn populated(dir: &Path) -> (Wharf, String, String) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/gone", dead.local_addr().unwrap());
    drop(dead);
    let wharf = Wharf::start_with_server(
        &pipeline(&endpoint),
        dir,
        &format!("admin_token = {OPERATOR:?}"),
    )
    .await;
    let (status, answer) = admin(&wharf, Method::PUT, "/api/v1/tenants/acme", None).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = admin(
        &wharf,
        Method::PUT,
        "/api/v1/tenants/acme/pipeline",
        Some(("application/toml", pipeline(&endpoint).into_bytes())),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let mut jobs = Vec::new();
    for (base, ingress) in [("/api/v1", ""), ("/api/v1/tenants/acme", "/acme")] {
        for n in 0..12 {
            let body = json!({"n": n, "text": "ünïcode ✓"}).to_string();
            wharf.accept(&format!("{ingress}/orders"), &body).await;
        }
        wharf.accept(&format!("{ingress}/held"), "{}").await;
        let (status, answer) = admin(
            &wharf,
            Method::PUT,
            &format!("{base}/plugins/log"),
            Some((
                "application/wasm",
                std::fs::read(wharf_plugin_artifacts::LOG_RESPONSE).unwrap(),
            )),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
        let token = json!({"name": "reader", "role": "read"}).to_string();
        let (status, answer) = admin(
            &wharf,
            Method::POST,
            &format!("{base}/tokens"),
            Some(("application/json", token.into_bytes())),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
        eventually(Duration::from_secs(20), "the dead letters", || async {
            let (_, stores) = admin(&wharf, Method::GET, &format!("{base}/stores"), None).await;
            stores
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "dlq" && s["depth"] == 12))
        })
        .await;
        // A job to look at: three dead letters moved to `parking`.
        let (_, page) = admin(
            &wharf,
            Method::GET,
            &format!("{base}/stores/dlq/messages?limit=3"),
            None,
        )
        .await;
        let ids: Vec<&str> = page
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        let replay = json!({"ids": ids, "to_store": "parking"}).to_string();
        let (status, job) = admin(
            &wharf,
            Method::POST,
            &format!("{base}/stores/dlq/replay"),
            Some(("application/json", replay.into_bytes())),
        )
        .await;
        assert_eq!(status, 202, "{job}");
        jobs.push(job["id"].as_str().unwrap().to_owned());
    }
    let acme_job = jobs.pop().unwrap();
    let default_job = jobs.pop().unwrap();
    (wharf, default_job, acme_job)
}

#[tokio::test]
async fn the_description_is_served_without_a_token_names_every_tenant_copy_and_refusals_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let wharf = Wharf::start_with_server(
        &pipeline("http://127.0.0.1:9/x"),
        dir.path(),
        &format!("admin_token = {OPERATOR:?}"),
    )
    .await;
    let url = |path: &str| format!("http://{}{path}", wharf.admin);

    let r = wharf
        .client
        .get(url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let spec: Value = r.json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = spec["paths"].as_object().unwrap();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(operation_ids.insert(id.to_owned()), "{id} twice");
            for (status, response) in op["responses"].as_object().unwrap() {
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status} has no description"
                );
            }
            if let Some(bare) = path.strip_prefix("/api/v1/tenants/{tenant}/") {
                // Every tenant endpoint twice: bare for `default`, and per tenant.
                assert!(
                    paths[&format!("/api/v1/{bare}")][method].is_object(),
                    "{method} {path} has no default-tenant twin"
                );
                let params = op["parameters"].as_array().unwrap();
                assert_eq!(params[0]["name"], "tenant", "{method} {path}");
                assert_eq!(params[0]["in"], "path", "{method} {path}");
            }
        }
    }
    for (method, path) in [
        ("get", "/api/v1/stores/{name}/messages"),
        ("delete", "/api/v1/stores/{name}/messages"),
        ("post", "/api/v1/stores/{name}/replay"),
        ("get", "/api/v1/tenants/{tenant}/jobs/{id}"),
        ("put", "/api/v1/tenants/{tenant}"),
        ("post", "/api/v1/pipeline/reload"),
        ("get", "/healthz"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    let job = &spec["components"]["schemas"]["JobView"];
    assert!(
        job["required"]
            .as_array()
            .unwrap()
            .contains(&json!("state")),
        "{job}"
    );

    // The API itself needs the token; its refusals are JSON, axum's own too.
    let r = wharf
        .client
        .get(url("/api/v1/stores"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    for (method, path, body, status) in [
        (
            Method::GET,
            "/api/v1/stores/dlq/messages?limit=many",
            None,
            400,
        ),
        (Method::GET, "/api/v1/tenants/%FF/stores", None, 400),
        (
            Method::POST,
            "/api/v1/stores/dlq/replay?dry_run=perhaps",
            Some(b"{}".to_vec()),
            400,
        ),
        (
            Method::POST,
            "/api/v1/stores/dlq/replay",
            Some(vec![b' '; 3 << 20]),
            413,
        ),
    ] {
        let (got, answer) = admin(
            &wharf,
            method.clone(),
            path,
            body.map(|b| ("application/json", b)),
        )
        .await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert!(answer["error"].is_string(), "{method} {path}: {answer}");
    }
    wharf.stop().await;
}

/// The fuzzer's config: real names for the path parameters (else it only
/// meets 404s), per group of paths, in the default tenant and in `acme`.
fn fuzzer_config(default_job: &str, acme_job: &str) -> String {
    // TOML strings of regexes: `\\{` is the regex's `\{`.
    let in_acme = r"^/api/v1/tenants/\\{tenant\\}/";
    let acme = r#""path.tenant" = "acme""#;
    let mut entries: Vec<(String, String)> = Vec::new();
    for (group, name) in [
        ("stores", "dlq"),
        ("processors", "stuck"),
        ("plugins", "log"),
        ("tokens", "reader"),
    ] {
        let name = format!(r#""path.name" = "{name}""#);
        entries.push((format!("^/api/v1/{group}/"), name.clone()));
        entries.push((format!("{in_acme}{group}/"), format!("{acme}, {name}")));
    }
    entries.push((
        "^/api/v1/jobs/".into(),
        format!(r#""path.id" = "{default_job}""#),
    ));
    entries.push((
        format!("{in_acme}jobs/"),
        format!(r#"{acme}, "path.id" = "{acme_job}""#),
    ));
    // The tenant's own paths that name nothing else: /stores, /pipeline/revisions, ...
    entries.push((format!("{in_acme}[a-z]+(/[a-z]+)?$"), acme.into()));
    entries
        .iter()
        .map(|(path, parameters)| {
            format!("[[operations]]\ninclude-path-regex = \"{path}\"\nparameters = {{ {parameters} }}\n\n")
        })
        .collect()
}

/// Runs the fuzzer over the operations `filter` selects; panics with its
/// report unless every check held.
async fn fuzz(st: &Path, config: &Path, wharf: &Wharf, filter: &[&str], report: &str) {
    let seed = std::env::var("WHARF_FUZZ_SEED").unwrap_or_else(|_| "1".into());
    let examples = std::env::var("WHARF_FUZZ_EXAMPLES").unwrap_or_else(|_| "25".into());
    let reports = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schemathesis");
    let out = tokio::process::Command::new(st)
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(format!("http://{}/api/v1/openapi.json", wharf.admin))
        .args(["--checks", CHECKS])
        .args(["--header", &format!("Authorization: Bearer {OPERATOR}")])
        .args(["--max-examples", &examples, "--seed", &seed])
        // One worker: CPython 3.11's ast is not safe across the threads
        // hypothesis would use to describe its strategies.
        .args(["--workers", "1", "--no-color"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&reports)
        .arg("--report-junit-path")
        .arg(reports.join(format!("{report}.xml")))
        .args(filter)
        // Its cache (`.schemathesis/`) goes beside the config, not into the tree.
        .current_dir(config.parent().unwrap())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the fuzzer found answers outside the OpenAPI description (seed {seed}):\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_property_based_fuzzer_gets_no_5xx_and_no_answer_outside_the_openapi_description() {
    let test = "a_property_based_fuzzer_gets_no_5xx_and_no_answer_outside_the_openapi_description";
    let Some(st) = schemathesis(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (wharf, default_job, acme_job) = populated(dir.path()).await;
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, fuzzer_config(&default_job, &acme_job)).unwrap();

    // What only reads first, while every object is there; then what
    // changes them; last what replaces a pipeline or deletes a tenant (and
    // so takes away the objects the others would look for).
    let sweeping = "(apply|rollback|reload)_pipeline$|^delete_tenant$";
    fuzz(&st, &config, &wharf, &["--include-method", "GET"], "reads").await;
    let others = ["--exclude-operation-id-regex", sweeping];
    fuzz(&st, &config, &wharf, &others, "changes").await;
    let sweeps = ["--include-operation-id-regex", sweeping];
    fuzz(&st, &config, &wharf, &sweeps, "sweeps").await;

    // The instance still serves.
    let (status, _) = admin(&wharf, Method::GET, "/api/v1/processors", None).await;
    assert_eq!(status, 200);
    wharf.stop().await;
}
