//! Forwarding benchmark: https against http to the same local backend, and
//! parallel per-key delivery against the strict single lane, all in one run
//! of a real `wharf run` process. A program that prints figures; it asserts
//! nothing about time.
//!
//! Run: `cargo bench -p wharf --bench forwarding`.
//!
//! - (a) https vs http: two stores of `messages` 1 KiB messages each, filled
//!   while their processors are deactivated, then drained one after the
//!   other — `http://` to the backend, and `https://` (rustls, a private CA
//!   in `tls.ca_file`) to the same backend served over TLS in this process —
//!   each over its kept-alive connection. Goal: https >= 0.80 of http.
//! - (b) per key: a backend that takes 2 ms per request; one store drained
//!   by the strict single lane (`concurrency = 1`, no key), one by
//!   `order_key = "header:X-Order-Key"` with `concurrency = 16`, 100 keys.
//!   Goal: >= 12x the single lane; per-key order verified at the backend.
//!
//! Options (environment variables):
//! - `WHARF_BENCH_MESSAGES` messages of (a), per store (default 20000)
//! - `WHARF_BENCH_SINGLE` messages of the single lane in (b) (default 1500)
//! - `WHARF_BENCH_KEYED` messages of the keyed processor in (b) (default 20000)
//! - `WHARF_BENCH_DIR` parent of the data directory (default: the system temp dir)
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark program: a step that cannot go on should stop it loudly"
)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use common::{DEFAULT_LOG, Wharf, call, connect, env_or, json_body, rate, verdict};

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

/// One arrival at the backend: when, its Idempotency-Key, its order key and number.
type Arrival = (Instant, String, String, u64);

/// The backend: answers 200 after `delay`, over TLS if given an acceptor,
/// and records every arrival.
struct Backend {
    addr: SocketAddr,
    arrivals: Mutex<Vec<Arrival>>,
    count: AtomicUsize,
}

impl Backend {
    async fn start(
        delay: Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Arc<Backend>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let backend = Arc::new(Backend {
            addr: listener.local_addr()?,
            arrivals: Mutex::new(Vec::with_capacity(64 * 1024)),
            count: AtomicUsize::new(0),
        });
        let shared = backend.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (backend, tls) = (shared.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let backend = backend.clone();
                        async move {
                            let at = Instant::now();
                            let header = |name: &str| {
                                request
                                    .headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            let (id, key) = (header("idempotency-key"), header("x-order-key"));
                            let seq = header("x-seq").parse().unwrap_or(0);
                            request.into_body().collect().await?;
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            backend.arrivals.lock().unwrap().push((at, id, key, seq));
                            backend.count.fetch_add(1, Ordering::Release);
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(StatusCode::OK)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Ok(backend)
    }

    async fn wait_for(&self, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.count.load(Ordering::Acquire) < n {
            ensure!(
                Instant::now() < deadline,
                "backend got {} of {n} within {limit:?}",
                self.count.load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    fn take(&self) -> Vec<Arrival> {
        self.count.store(0, Ordering::Release);
        std::mem::take(&mut *self.arrivals.lock().unwrap())
    }
}

/// A private CA's certificate (PEM) and a TLS acceptor with a server certificate for 127.0.0.1 it signed.
fn tls_pair() -> Result<(String, tokio_rustls::TlsAcceptor)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &ca)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    )?;
    Ok((ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Posts `n` messages to `path`, from 25 connections; message `i` has key
/// `k{i % keys}` and number `i / keys` within its key, and each key's
/// messages are posted (and stored) in their order (`keys` is a multiple
/// of 25, so that one connection posts all of a key's messages).
async fn fill(ingress: SocketAddr, path: &str, n: usize, keys: usize) -> Result<()> {
    const TASKS: usize = 25;
    ensure!(
        keys.is_multiple_of(TASKS),
        "keys must be a multiple of {TASKS}"
    );
    let host = HeaderValue::from_str(&ingress.to_string())?;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let (host, path) = (host.clone(), path.to_owned());
        tasks.spawn(async move {
            let mut sender = connect(ingress).await?;
            // Task t posts the messages i with i % TASKS == t, in order of i:
            // key i % keys, with TASKS dividing keys, is always this task's.
            let mut i = t;
            while i < n {
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(&path)
                    .header(header::HOST, host.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .header("x-order-key", format!("k{}", i % keys))
                    .header("x-seq", (i / keys).to_string())
                    .body(Full::new(json_body(t, i as u64)))?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                ensure!(status == StatusCode::ACCEPTED, "fill: {status}");
                i += TASKS;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn admin(wharf: &Wharf, path: &str) -> Result<()> {
    let (status, body) = call(wharf.admin, Method::POST, path).await?;
    ensure!(
        status == StatusCode::OK,
        "{path}: {status} {}",
        common::text(&body)
    );
    Ok(())
}

/// Activates `processor` and waits until `backend` got `n` requests; msg/s
/// from the activation to the n-th arrival, and the arrivals.
async fn drain(
    wharf: &Wharf,
    processor: &str,
    backend: &Backend,
    n: usize,
) -> Result<(f64, Vec<Arrival>)> {
    backend.take();
    let started = Instant::now();
    admin(wharf, &format!("/api/v1/processors/{processor}/activate")).await?;
    backend.wait_for(n, Duration::from_secs(600)).await?;
    let arrivals = backend.take();
    let mut times: Vec<Instant> = arrivals.iter().map(|a| a.0).collect();
    times.sort_unstable();
    let last = times[n - 1];
    admin(wharf, &format!("/api/v1/processors/{processor}/deactivate")).await?;
    Ok((
        n as f64 / last.duration_since(started).as_secs_f64(),
        arrivals,
    ))
}

/// Every message once, and each key's first arrivals in order.
fn check(arrivals: &[Arrival], n: usize) -> String {
    let ids: HashSet<&str> = arrivals.iter().map(|a| a.1.as_str()).collect();
    let mut firsts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (_, id, key, seq) in arrivals {
        if seen.insert(id.as_str()) {
            firsts.entry(key.as_str()).or_default().push(*seq);
        }
    }
    let in_order = firsts.values().all(|s| s.windows(2).all(|w| w[0] < w[1]));
    format!(
        "{} received, {} distinct, {} keys, per-key order {}: {}",
        arrivals.len(),
        ids.len(),
        firsts.len(),
        if in_order { "kept" } else { "BROKEN" },
        if ids.len() == n && arrivals.len() == n && in_order {
            "OK"
        } else {
            "FAILED"
        }
    )
}

async fn bench() -> Result<()> {
    let messages: usize = env_or("WHARF_BENCH_MESSAGES", 20_000)?;
    let single: usize = env_or("WHARF_BENCH_SINGLE", 1_500)?;
    let keyed: usize = env_or("WHARF_BENCH_KEYED", 20_000)?;
    let parent = std::env::var_os("WHARF_BENCH_DIR").map(std::path::PathBuf::from);
    let tmp = match parent {
        Some(p) => tempfile::tempdir_in(p)?,
        None => tempfile::tempdir()?,
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (ca, acceptor) = tls_pair()?;
    std::fs::write(tmp.path().join("ca.pem"), ca)?;
    let plain = Backend::start(Duration::ZERO, None).await?;
    let tls = Backend::start(Duration::ZERO, Some(acceptor)).await?;
    let slow = Backend::start(Duration::from_millis(2), None).await?;
    let wharf = Wharf::start(
        tmp.path(),
        &config(tmp.path(), plain.addr, tls.addr, slow.addr),
        DEFAULT_LOG,
    )
    .await?;
    for p in ["http", "https", "single", "keyed"] {
        admin(&wharf, &format!("/api/v1/processors/{p}/deactivate")).await?;
    }
    eprintln!(
        "forwarding bench: {messages} messages per store in (a); {single} single-lane and {keyed} keyed in (b); data in {}",
        tmp.path().display()
    );

    eprintln!("(a) fill ...");
    fill(wharf.ingress, "/http", messages, 100).await?;
    fill(wharf.ingress, "/https", messages, 100).await?;
    eprintln!("(a) forward: http ...");
    let (http_rate, http_arrivals) = drain(&wharf, "http", &plain, messages).await?;
    eprintln!(
        "    {} msg/s; {}",
        rate(http_rate),
        check(&http_arrivals, messages)
    );
    eprintln!("(a) forward: https ...");
    let (https_rate, https_arrivals) = drain(&wharf, "https", &tls, messages).await?;
    eprintln!(
        "    {} msg/s; {}",
        rate(https_rate),
        check(&https_arrivals, messages)
    );

    eprintln!("(b) fill ...");
    fill(wharf.ingress, "/single", single, 100).await?;
    fill(wharf.ingress, "/keyed", keyed, 100).await?;
    eprintln!("(b) forward: single lane, 2 ms backend ...");
    let (single_rate, single_arrivals) = drain(&wharf, "single", &slow, single).await?;
    eprintln!(
        "    {} msg/s; {}",
        rate(single_rate),
        check(&single_arrivals, single)
    );
    eprintln!("(b) forward: 100 keys, concurrency 16, 2 ms backend ...");
    let (keyed_rate, keyed_arrivals) = drain(&wharf, "keyed", &slow, keyed).await?;
    let keyed_check = check(&keyed_arrivals, keyed);
    eprintln!("    {} msg/s; {keyed_check}", rate(keyed_rate));

    let https_ratio = https_rate / http_rate;
    let keyed_ratio = keyed_rate / single_rate;
    println!("== Wharf forwarding benchmark ({cores} cores, release)");
    println!(
        "(a) https {} msg/s vs http {} msg/s to the same backend, kept alive: ratio {:.2} (goal >= 0.80) {}",
        rate(https_rate),
        rate(http_rate),
        https_ratio,
        verdict(https_ratio >= 0.80)
    );
    println!(
        "(b) 2 ms backend: order_key + concurrency 16, 100 keys {} msg/s vs single lane {} msg/s: {:.1}x (goal >= 12x) {}; {keyed_check}",
        rate(keyed_rate),
        rate(single_rate),
        keyed_ratio,
        verdict(keyed_ratio >= 12.0)
    );
    Ok(())
}

fn config(data: &Path, plain: SocketAddr, tls: SocketAddr, slow: SocketAddr) -> String {
    let ca = data.join("ca.pem");
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata_dir = {:?}\n",
        data.display().to_string()
    );
    for (name, endpoint, extra) in [
        ("http", format!("http://{plain}/sink"), String::new()),
        (
            "https",
            format!("https://127.0.0.1:{}/sink", tls.port()),
            format!("tls = {{ ca_file = {:?} }}", ca.display().to_string()),
        ),
        ("single", format!("http://{slow}/sink"), String::new()),
        (
            "keyed",
            format!("http://{slow}/sink"),
            "order_key = \"header:X-Order-Key\"\nconcurrency = 16".to_owned(),
        ),
    ] {
        text.push_str(&format!(
            "[stores.{name}]\n[[routes]]\npath = \"/{name}\"\nconsumes = [\"application/json\"]\nstore = \"{name}\"\n\
             [processors.{name}]\nstore = \"{name}\"\nendpoint = \"{endpoint}\"\n{extra}\n"
        ));
    }
    text
}
