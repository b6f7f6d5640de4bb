//! Response handlers written in Python (componentize-py) and JavaScript
//! (componentize-js), built from `plugins/python` and `plugins/js`, deployed
//! to a running instance and called end to end. Each test installs its
//! pinned tool itself: the Python one into `plugins/python/json-error/.venv`
//! (`python3 -m venv`, then `pip install -r requirements.txt`), the
//! JavaScript one with `npm ci`. Where that cannot be done (no python3 or
//! npm, no registry), the test skips loudly, and under `CI=true` it fails.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Backend, Reply, Wharf, eventually};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a guest's `build.sh` into `out`; `None` when its tool is missing (exit 3).
fn build(script: &str, out: &Path) -> Option<Duration> {
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(repo().join(script))
        .arg(out)
        .status()
        .unwrap();
    match status.code() {
        Some(0) => Some(started.elapsed()),
        Some(3) => None,
        _ => panic!("{script} failed: {status}"),
    }
}

/// Installs the JavaScript guest's pinned build tools from its lockfile, when npm is there.
fn npm_ci(dir: &str) -> bool {
    let npm = Command::new("npm").arg("--version").output();
    if !npm.is_ok_and(|o| o.status.success()) {
        return false;
    }
    eprintln!("installing the pinned componentize-js with npm ci --prefix {dir} ...");
    Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(repo().join(dir))
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the Python guest's pinned componentize-py into `DIR/.venv`.
fn pip_venv(dir: &str) -> bool {
    let dir = repo().join(dir);
    let venv = dir.join(".venv");
    eprintln!(
        "installing the pinned componentize-py into {} ...",
        venv.display()
    );
    let made = venv.join("bin/pip").exists()
        || Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
    made && Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(dir.join("requirements.txt"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds, deploys and exercises one json-error guest: a 200 whose body has
/// an "error" is dead-lettered, a plain 200 is delivered.
async fn json_error_guest(language: &str, script: &str, install_hint: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join(format!("json-error-{language}.wasm"));
    let mut built = build(script, &wasm);
    let installed = built.is_none()
        && match language {
            "javascript" => npm_ci("plugins/js/json-error"),
            _ => pip_venv("plugins/python/json-error"),
        };
    if installed {
        built = build(script, &wasm);
    }
    let Some(built_in) = built else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the {language} plugin test must run under CI=true, but its build tool could not be installed ({install_hint})"
        );
        eprintln!(
            "\n!!! SKIPPED the {language} plugin test: its build tool is missing ({install_hint})\n"
        );
        return;
    };
    let size = std::fs::metadata(&wasm).unwrap().len();

    let backend = Backend::start(|r, _| {
        let body = if r.text().contains("bad") {
            r#"{"error": "no such doctor"}"#
        } else {
            r#"{"ok": true}"#
        };
        Reply::status(200).body(body)
    })
    .await;
    let config = format!(
        r#"
[stores.s]
[stores.dlc]

[[routes]]
path = "/in"
store = "s"

[processors.p]
store = "s"
endpoint = "{}"
response_handler = "json-error"
dead_letter_store = "dlc"
"#,
        backend.url()
    );
    let data = dir.path().join("data");
    let wharf = Wharf::start(&config, &data).await;
    let started = Instant::now();
    let (status, live) = wharf.deploy("json-error", wasm.to_str().unwrap()).await;
    let deployed_in = started.elapsed();
    assert_eq!(status, 201, "{live}");
    assert_eq!(live["world"], "response-handler");

    let started = Instant::now();
    wharf.accept("/in", r#"{"good": 1}"#).await;
    eventually(
        Duration::from_secs(60),
        "the good one delivered",
        || async { wharf.processor("p").await["forwarded"] == 1 },
    )
    .await;
    let first_call = started.elapsed();
    wharf.accept("/in", r#"{"bad": 1}"#).await;
    eventually(
        Duration::from_secs(60),
        "the bad one dead-lettered",
        || async { wharf.processor("p").await["dead_lettered"] == 1 },
    )
    .await;
    let last = wharf.processor("p").await["last_failure"].to_string();
    assert!(
        last.contains("endpoint reported an error: no such doctor"),
        "{last}"
    );
    wharf.stop().await;

    // A restart loads the cached artefact instead of compiling again.
    let started = Instant::now();
    let wharf = Wharf::start(&config, &data).await;
    let restarted_in = started.elapsed();
    assert_eq!(wharf.processor("p").await["state"], "running");
    wharf.stop().await;
    println!(
        "{language} json-error: {size} bytes, built in {built_in:.1?}, deployed (compiled) in \
         {deployed_in:.1?}, first message through in {first_call:.1?}, restart with the cached \
         artefact in {restarted_in:.1?} (debug build)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_json_error_plugin_runs_end_to_end() {
    json_error_guest(
        "python",
        "plugins/python/json-error/build.sh",
        "python3 -m venv plugins/python/json-error/.venv && plugins/python/json-error/.venv/bin/pip install -r plugins/python/json-error/requirements.txt",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_json_error_plugin_runs_end_to_end() {
    json_error_guest(
        "javascript",
        "plugins/js/json-error/build.sh",
        "npm ci --prefix plugins/js/json-error",
    )
    .await;
}
