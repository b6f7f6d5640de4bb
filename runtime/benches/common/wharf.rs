//! The `wharf run` process under test.

use super::*;

pub struct Wharf {
    pub child: Child,
    pub pid: u32,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<LogTail>>,
}

#[derive(Default)]
pub struct LogTail {
    pub lines: VecDeque<String>,
    pub warnings: usize,
}

impl Wharf {
    /// Starts `wharf run` on `config` (the configuration's text, written to
    /// `dir/wharf.toml`); returns once its admin API answers.
    pub async fn start(dir: &Path, config: &str, rust_log: &str) -> Result<Wharf> {
        let path = dir.join("wharf.toml");
        std::fs::write(&path, config)?;
        // WHARF_BENCH_BINARY runs another build (e.g. the commit before a
        // change) under the same harness, for before/after figures.
        let binary = std::env::var_os("WHARF_BENCH_BINARY")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wharf")), PathBuf::from);
        let mut child = Command::new(&binary)
            .arg("run")
            .arg(&path)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start wharf")?;
        let pid = child.id();
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new(Mutex::new(LogTail::default()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                // Drains stderr for the process's whole life so that it never blocks on a full pipe.
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    for what in ["ingress listening on ", "admin listening on "] {
                        if let Some(addr) = line.split(what).nth(1) {
                            let _ = tx.send((what, addr.trim().to_owned()));
                        }
                    }
                    let mut log = log.lock().unwrap();
                    if line.contains(" WARN ") || line.contains(" ERROR ") {
                        log.warnings += 1;
                    }
                    log.lines.push_back(line);
                    if log.lines.len() > 40 {
                        log.lines.pop_front();
                    }
                }
            });
        }
        let mut ingress = None;
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while ingress.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((what, addr)) => {
                    let addr: SocketAddr = addr.parse().with_context(|| format!("{what}{addr}"))?;
                    if what.starts_with("ingress") {
                        ingress = Some(addr);
                    } else {
                        admin = Some(addr);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait()?;
                    let tail: Vec<String> = log.lock().unwrap().lines.iter().cloned().collect();
                    bail!(
                        "wharf did not log its addresses ({status}; the log filter must keep wharf=info):\n{}",
                        tail.join("\n")
                    );
                }
            }
        }
        let wharf = Wharf {
            child,
            pid,
            ingress: ingress.unwrap(),
            admin: admin.unwrap(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((StatusCode::OK, _)) = call(wharf.admin, Method::GET, "/healthz").await {
                break;
            }
            ensure!(Instant::now() < deadline, "wharf not ready after 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(wharf)
    }

    /// SIGTERM, then wait for the exit.
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        let kill = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()?;
        ensure!(kill.success(), "kill -TERM {} failed: {kill}", self.pid);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "wharf still running 60 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log_summary(&self) -> (usize, Vec<String>) {
        let log = self.log.lock().unwrap();
        (log.warnings, log.lines.iter().cloned().collect())
    }
}

impl Drop for Wharf {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
