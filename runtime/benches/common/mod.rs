//! What the benchmark programs (`delivery`, `amqp`, `pipeline`) share: the load
//! generator, the forwarding backend, the `wharf run` process, delivery
//! checks, helper processes, and CPU/memory figures from `/proc`.
#![allow(
    dead_code,
    unused_imports,
    reason = "each benchmark program uses part of these helpers"
)]

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

pub const BODY_SIZE: usize = 1024;
pub const DEFAULT_LOG: &str = "warn,wharf=info,wharf::processor::handler=warn";

pub fn env_or<T: FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

pub fn rate(per_sec: f64) -> String {
    format!("{per_sec:.0}")
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn show_mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".to_owned(), |k| format!("{:.1} MiB", mib(k)))
}

pub fn per_message(bytes: Option<u64>, messages: u64) -> String {
    match bytes {
        Some(b) if messages > 0 => format!("{:.1} KiB", b as f64 / 1024.0 / messages as f64),
        _ => "n/a".to_owned(),
    }
}

pub fn show_cpu(cores: Option<f64>) -> String {
    cores.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}"))
}

pub fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// Nearest-rank percentile of sorted values.
pub fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// 1 KiB of JSON that says who sent it.
pub fn json_body(client: usize, seq: u64) -> Bytes {
    let mut s = format!("{{\"client\":{client},\"seq\":{seq},\"pad\":\"");
    let pad = BODY_SIZE.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    Bytes::from(s)
}

mod client;
mod helper;
mod load;
mod procfs;
mod sink;
mod wharf;

pub use client::*;
pub use helper::*;
pub use load::*;
pub use procfs::*;
pub use sink::*;
pub use wharf::*;
