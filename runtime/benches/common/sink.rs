//! The forwarding backend in this process, and what arrived at it: rates, gaps, the delivery check.

use super::*;

pub struct Sink {
    pub count: AtomicUsize,
    pub log: Mutex<Vec<(Instant, Option<HeaderValue>)>>,
}

impl Sink {
    pub async fn start() -> Result<(SocketAddr, Arc<Sink>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sink = Arc::new(Sink {
            count: AtomicUsize::new(0),
            log: Mutex::new(Vec::with_capacity(64 * 1024)),
        });
        let shared = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let sink = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let at = Instant::now();
                            let key = request.headers().get("idempotency-key").cloned();
                            request.into_body().collect().await?;
                            sink.log.lock().unwrap().push((at, key));
                            sink.count.fetch_add(1, Ordering::Release);
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(StatusCode::OK)
                                    .header(header::CONTENT_TYPE, "text/plain")
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok((addr, sink))
    }

    pub fn reset(&self) {
        let mut log = self.log.lock().unwrap();
        log.clear();
        self.count.store(0, Ordering::Release);
    }

    pub fn take(&self) -> Vec<(Instant, Option<HeaderValue>)> {
        let mut log = self.log.lock().unwrap();
        self.count.store(0, Ordering::Release);
        std::mem::take(&mut *log)
    }

    pub async fn wait_for(&self, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.count.load(Ordering::Acquire) < n {
            ensure!(
                Instant::now() < deadline,
                "backend got {} of {n} requests within {limit:?}",
                self.count.load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// Rate and inter-arrival gaps of one forwarding run, as the backend saw it.
pub struct Forward {
    pub elapsed: Duration,
    pub n: usize,
    pub gaps_us: Vec<u64>,
}

impl Forward {
    /// Time from `started` until the `n`-th arrival.
    pub fn from_arrivals(
        arrivals: &[(Instant, Option<HeaderValue>)],
        n: usize,
        started: Instant,
    ) -> Forward {
        let mut times: Vec<Instant> = arrivals.iter().map(|(t, _)| *t).collect();
        times.sort_unstable();
        let last = times.get(n.saturating_sub(1)).copied().unwrap_or(started);
        let mut gaps_us: Vec<u64> = times
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).as_micros() as u64)
            .collect();
        gaps_us.sort_unstable();
        Forward {
            elapsed: last.duration_since(started),
            n,
            gaps_us,
        }
    }

    pub fn per_sec(&self) -> f64 {
        self.n as f64 / self.elapsed.as_secs_f64()
    }

    /// Inter-arrival gap in ms.
    pub fn gap(&self, q: f64) -> f64 {
        percentile(&self.gaps_us, q).map_or(f64::NAN, |us| us as f64 / 1000.0)
    }
}

/// Exactly once, and in store order for the head of the store.
pub struct DeliveryCheck {
    pub received: usize,
    pub distinct: usize,
    pub duplicates: usize,
    pub missing: usize,
    pub unknown: usize,
    pub without_key: usize,
    pub head_checked: usize,
    pub head_in_order: bool,
    pub final_depth: u64,
}

impl DeliveryCheck {
    pub fn new(
        arrivals: &[(Instant, Option<HeaderValue>)],
        accepted: &[String],
        head: &[String],
        final_depth: u64,
    ) -> DeliveryCheck {
        let keys: Vec<&str> = arrivals
            .iter()
            .filter_map(|(_, k)| k.as_ref().and_then(|k| k.to_str().ok()))
            .collect();
        let distinct: HashSet<&str> = keys.iter().copied().collect();
        let accepted: HashSet<&str> = accepted.iter().map(String::as_str).collect();
        DeliveryCheck {
            received: arrivals.len(),
            distinct: distinct.len(),
            duplicates: keys.len() - distinct.len(),
            missing: accepted.difference(&distinct).count(),
            unknown: distinct.difference(&accepted).count(),
            without_key: arrivals.len() - keys.len(),
            head_checked: head.len(),
            head_in_order: keys.len() >= head.len() && keys[..head.len()] == *head,
            final_depth,
        }
    }

    pub fn ok(&self) -> bool {
        self.duplicates == 0
            && self.missing == 0
            && self.unknown == 0
            && self.without_key == 0
            && self.head_in_order
            && self.final_depth == 0
    }

    pub fn summary(&self) -> String {
        format!(
            "{} received, {} distinct Idempotency-Keys, {} duplicate, {} missing, {} unknown, {} without key; first {} in store order: {}; depth after drain {} -> {}",
            self.received,
            self.distinct,
            self.duplicates,
            self.missing,
            self.unknown,
            self.without_key,
            self.head_checked,
            if self.head_in_order { "yes" } else { "NO" },
            self.final_depth,
            if self.ok() { "OK" } else { "FAILED" }
        )
    }
}
