//! Shared test harness: a recording HTTP backend, in-process Wharf instances,
//! and the `wharf` binary as a child process.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

pub mod activemq;
pub mod broker;
pub mod keys;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use wharf::app::{self, Listeners};
use wharf::config::Config;

/// Sends the runtime's logs to the test's captured output (shown when it
/// fails); `RUST_LOG` overrides the default level.
pub fn capture_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("wharf=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the backend answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    /// JSON body; default `{"Message": "This is Test Service"}`.
    pub body: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: None,
        }
    }
    pub fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = Some(body.into());
        self
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// Decides the reply from the request and how many requests came before it.
type Script = Arc<dyn Fn(&Received, usize) -> Reply + Send + Sync>;

struct BackendState {
    received: Mutex<Vec<Received>>,
    script: Mutex<Script>,
}

/// A real HTTP server on 127.0.0.1 that records every request.
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    stop: Option<oneshot::Sender<()>>,
}

impl Backend {
    /// A backend answering `200 {"Message":"ok"}`.
    pub async fn ok() -> Backend {
        Backend::start(|_, _| Reply::status(200)).await
    }

    pub async fn start(
        script: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::serve(listener, Arc::new(script))
    }

    /// Like [`Backend::start`], on a given address (to come back where a stopped one was).
    pub async fn start_at(
        addr: SocketAddr,
        script: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        Backend::serve(listener, Arc::new(script))
    }

    fn serve(listener: TcpListener, script: Script) -> Backend {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            received: Mutex::new(Vec::new()),
            script: Mutex::new(script),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let router = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Backend {
            addr,
            state,
            stop: Some(stop),
        }
    }

    /// `http://ADDR/testservice/test`
    pub fn url(&self) -> String {
        format!("http://{}/testservice/test", self.addr)
    }

    /// Changes how later requests are answered.
    pub fn script(&self, script: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) {
        *self.state.script.lock().unwrap() = Arc::new(script);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests came in.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "backend got {} of {n} requests within {timeout:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops listening (the "backend not available" scenario).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn record(State(state): State<Arc<BackendState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let received = Received {
        at: Instant::now(),
        method: parts.method,
        path: parts.uri.to_string(),
        headers: parts.headers,
        body,
    };
    let reply = {
        let mut all = state.received.lock().unwrap();
        let script = state.script.lock().unwrap().clone();
        let reply = script(&received, all.len());
        all.push(received);
        reply
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let body = reply
        .body
        .unwrap_or_else(|| serde_json::json!({"Message": "This is Test Service"}).to_string());
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap(),
        [("content-type", "application/json")],
        body,
    )
        .into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// The `[server]` table for a test instance: free ports, a private data dir.
pub fn server_table(data_dir: &Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata_dir = {:?}\n{extra}\n",
        data_dir.display().to_string()
    )
}

/// A Wharf instance running in this process.
pub struct Wharf {
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), app::RunError>>>,
}

impl Wharf {
    /// Starts an instance from `config` (TOML without `[server]`), storing under `data_dir`.
    pub async fn start(config: &str, data_dir: &Path) -> Wharf {
        Wharf::start_with_server(config, data_dir, "").await
    }

    /// Like [`Wharf::start`], with extra `[server]` keys.
    pub async fn start_with_server(config: &str, data_dir: &Path, server_extra: &str) -> Wharf {
        capture_logs();
        let text = format!("{}{config}", server_table(data_dir, server_extra));
        let config = Config::parse(&text)
            .and_then(Config::validate)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let listeners = Listeners::bind(config.server.listen, config.server.admin)
            .await
            .unwrap();
        let ingress = listeners.ingress.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(config, listeners, async move {
            let _ = stopped.await;
        }));
        let wharf = Wharf {
            ingress,
            admin,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        };
        wharf.wait_healthy().await;
        wharf
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(r) = self
                .client
                .get(format!("http://{}/healthz", self.admin))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("wharf did not become healthy");
    }

    /// POSTs a JSON body to an ingress path.
    pub async fn post_json(&self, path: &str, body: &str) -> reqwest::Response {
        self.client
            .post(format!("http://{}{path}", self.ingress))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// POSTs and expects a 202; returns the message id.
    pub async fn accept(&self, path: &str, body: &str) -> String {
        let r = self.post_json(path, body).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
        let v: Value = r.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn admin_post(&self, path: &str) -> Value {
        let r = self
            .client
            .post(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "POST {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Any admin request; returns the status and the JSON answer.
    pub async fn admin_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("http://{}{path}", self.admin));
        if let Some(body) = body {
            request = request.body(body);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `PUT /api/v1/pipeline{query}` with a TOML document.
    pub async fn apply(&self, document: &str, query: &str) -> (u16, Value) {
        self.apply_at("/api/v1", document, query).await
    }

    /// `PUT /api/v1/tenants/{tenant}/pipeline{query}` with a TOML document.
    pub async fn apply_to(&self, tenant: &str, document: &str, query: &str) -> (u16, Value) {
        self.apply_at(&format!("/api/v1/tenants/{tenant}"), document, query)
            .await
    }

    async fn apply_at(&self, base: &str, document: &str, query: &str) -> (u16, Value) {
        let r = self
            .client
            .put(format!("http://{}{base}/pipeline{query}", self.admin))
            .header("content-type", "application/toml")
            .body(document.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Like [`Wharf::apply`], expecting a 200; returns the new revision.
    pub async fn applied(&self, document: &str) -> u64 {
        let (status, answer) = self.apply(document, "").await;
        assert_eq!(status, 200, "apply refused: {answer}");
        answer["revision"].as_u64().unwrap()
    }

    /// `PUT /api/v1/plugins/{name}` with the bytes of `file`.
    pub async fn deploy(&self, name: &str, file: &str) -> (u16, Value) {
        let bytes = std::fs::read(file).unwrap();
        self.admin_send(
            reqwest::Method::PUT,
            &format!("/api/v1/plugins/{name}"),
            Some(bytes),
        )
        .await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The admin view of one processor.
    pub async fn processor(&self, name: &str) -> Value {
        let all = self.admin_get("/api/v1/processors").await;
        all.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no processor {name}"))
    }

    /// The depth of one store.
    pub async fn depth(&self, store: &str) -> u64 {
        let all = self.admin_get("/api/v1/stores").await;
        all.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == store)
            .and_then(|s| s["depth"].as_u64())
            .unwrap_or_else(|| panic!("no store {store}"))
    }

    /// Messages at the head of a store.
    pub async fn peek(&self, store: &str, limit: usize) -> Vec<Value> {
        let v = self
            .admin_get(&format!("/api/v1/stores/{store}/messages?limit={limit}"))
            .await;
        v.as_array().unwrap().clone()
    }

    /// Stops the instance the way SIGTERM does, and waits for it.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// Runs `wharf check CONFIG`; returns whether it passed and its stdout and stderr.
pub fn wharf_check(config: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("check")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `GET /healthz` on `admin` answers 200 (a blocking HTTP/1.0 request).
fn healthy(admin: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut tcp) = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
    if tcp.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// The `wharf` binary as a child process, stderr copied to a log file.
pub struct WharfProcess {
    pub child: Child,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl WharfProcess {
    /// Runs `wharf run CONFIG` and waits for both listeners and `/healthz`.
    pub fn spawn(config: &Path, log: &Path) -> WharfProcess {
        WharfProcess::spawn_with_env(config, log, &[])
    }

    /// Like [`WharfProcess::spawn`], with extra environment variables for the child only.
    pub fn spawn_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> WharfProcess {
        let log_file = std::fs::File::create(log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("run")
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let (ingress, admin) = loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let find = |what: &str| {
                text.lines()
                    .find_map(|l| l.split(what).nth(1))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            };
            if let (Some(i), Some(a)) = (find("ingress listening on "), find("admin listening on "))
            {
                break (i, a);
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("wharf exited with {status} before listening:\n{text}");
            }
            assert!(Instant::now() < deadline, "wharf did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        // Listening comes before the pipeline is live; /healthz says when it is.
        while !healthy(admin) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "wharf exited with {status} before it was healthy:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "wharf did not become healthy");
            std::thread::sleep(Duration::from_millis(20));
        }
        WharfProcess {
            child,
            ingress,
            admin,
            log: log.to_owned(),
        }
    }

    /// POSTs a JSON body to `path`; the message id if the answer was 202.
    pub async fn accept(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: String,
    ) -> Option<String> {
        let r = client
            .post(format!("http://{}{path}", self.ingress))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .ok()?;
        if r.status() != 202 {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        Some(v["id"].as_str()?.to_owned())
    }

    /// Posts JSON to `path` from `clients` tasks until `stop`, collecting
    /// the ids that got a 202; a refused or cut-off request promises nothing.
    pub fn load(
        &self,
        client: &reqwest::Client,
        path: &str,
        clients: usize,
        stop: Arc<std::sync::atomic::AtomicBool>,
        accepted: Arc<Mutex<Vec<String>>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..clients)
            .map(|c| {
                let client = client.clone();
                let url = format!("http://{}{path}", self.ingress);
                let (stop, accepted) = (stop.clone(), accepted.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        n += 1;
                        let sent = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(format!("{{\"client\":{c},\"n\":{n}}}"))
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == 202 => {
                                if let Ok(v) = r.json::<Value>().await
                                    && let Some(id) = v["id"].as_str()
                                {
                                    accepted.lock().unwrap().push(id.to_owned());
                                }
                            }
                            _ => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                })
            })
            .collect()
    }

    /// GETs an admin API path; the JSON answer.
    pub async fn admin_get(&self, client: &reqwest::Client, path: &str) -> Value {
        client
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`"TERM"`, `"KILL"`, `"INT"`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "wharf did not exit within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WharfProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the backend saw every id; returns (first-arrival order, duplicate deliveries).
pub async fn wait_all(
    backend: &Backend,
    ids: &BTreeSet<String>,
    timeout: Duration,
) -> (Vec<String>, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = backend.received();
        let mut seen = BTreeMap::new();
        let mut order = Vec::new();
        for r in &got {
            let key = r.header("idempotency-key").to_owned();
            let count = seen.entry(key.clone()).or_insert(0usize);
            if *count == 0 {
                order.push(key);
            }
            *count += 1;
        }
        let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
        if missing == 0 {
            return (order, got.len() - seen.len());
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} accepted messages never arrived",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
