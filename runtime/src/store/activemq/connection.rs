//! One STOMP 1.2 connection: CONNECT, a writer task that batches frames and
//! sends heart-beats, a reader task that answers receipts and routes
//! MESSAGE frames to their subscription, and a clear reason when it dies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

use super::frame::{Codec, Frame, Item};
use crate::store::StoreError;

/// Heart-beats asked for each way. The broker is taken for dead when
/// nothing at all comes from it for twice its interval (plus a margin).
pub(super) const HEART_BEAT: Duration = Duration::from_secs(5);
/// Limit of one connection attempt (TCP, TLS and CONNECT).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to connect.
#[derive(Clone)]
pub(super) struct Target {
    pub host: String,
    pub port: u16,
    pub login: Option<String>,
    pub passcode: Option<String>,
    /// For `stomp+ssl://`.
    pub tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Default)]
struct Shared {
    receipts: HashMap<String, Waiter>,
    subscriptions: HashMap<String, mpsc::UnboundedSender<Frame>>,
    /// Why the connection ended, once it has.
    ended: Option<String>,
}

/// A live STOMP connection; cheap to share. Dropping the last handle closes it.
pub(super) struct Connection {
    store: String,
    out: mpsc::UnboundedSender<Frame>,
    shared: Arc<Mutex<Shared>>,
    next_id: AtomicU64,
    dead: CancellationToken,
    /// What the broker calls itself (`server` of CONNECTED).
    pub server: String,
}

fn transient(store: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Transient {
        store: store.to_owned(),
        reason: reason.into(),
    }
}

impl Connection {
    /// Connects, sends CONNECT and waits for CONNECTED.
    pub(super) async fn open(store: &str, target: &Target) -> Result<Arc<Connection>, StoreError> {
        let at = format!("{}:{}", target.host, target.port);
        let connecting = async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| transient(store, format!("connecting to {at}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match &target.tls {
                None => Box::new(tcp),
                Some((connector, server_name)) => {
                    match connector.connect(server_name.clone(), tcp).await {
                        Ok(tls) => Box::new(tls),
                        Err(e) => {
                            let reason = format!("TLS handshake with {at}: {e}");
                            return Err(if super::tls::refused(&e) {
                                StoreError::Permanent {
                                    store: store.to_owned(),
                                    reason,
                                }
                            } else {
                                transient(store, reason)
                            });
                        }
                    }
                }
            };
            let (read, mut write) = tokio::io::split(io);
            let mut connect = Frame::new("CONNECT")
                .header("accept-version", "1.2")
                .header("host", target.host.clone())
                .header("heart-beat", format!("{0},{0}", HEART_BEAT.as_millis()));
            if let Some(login) = &target.login {
                connect = connect.header("login", login.clone());
            }
            if let Some(passcode) = &target.passcode {
                connect = connect.header("passcode", passcode.clone());
            }
            let mut buf = BytesMut::new();
            Codec::default()
                .encode(connect, &mut buf)
                .map_err(|e| transient(store, e.to_string()))?;
            write
                .write_all(&buf)
                .await
                .map_err(|e| transient(store, format!("writing to {at}: {e}")))?;
            let mut frames = FramedRead::new(read, Codec::default());
            let connected = loop {
                match frames.next().await {
                    Some(Ok(Item::HeartBeat)) => continue,
                    Some(Ok(Item::Frame(frame))) => break frame,
                    Some(Err(e)) => {
                        return Err(transient(store, format!("reading from {at}: {e}")));
                    }
                    None => return Err(transient(store, format!("{at} closed the connection"))),
                }
            };
            match connected.command.as_str() {
                "CONNECTED" => Ok((connected, frames, write)),
                "ERROR" => {
                    let why = connected
                        .get("message")
                        .unwrap_or("no reason given")
                        .to_owned();
                    let detail = String::from_utf8_lossy(&connected.body).trim().to_owned();
                    let reason = if detail.is_empty() {
                        format!("the broker at {at} refused the connection: {why}")
                    } else {
                        format!("the broker at {at} refused the connection: {why} ({detail})")
                    };
                    // Wrong credentials do not fix themselves.
                    let lower = why.to_lowercase();
                    Err(
                        if lower.contains("password")
                            || lower.contains("credential")
                            || lower.contains("authenticat")
                            || lower.contains("not authorized")
                        {
                            StoreError::Permanent {
                                store: store.to_owned(),
                                reason,
                            }
                        } else {
                            transient(store, reason)
                        },
                    )
                }
                other => Err(transient(
                    store,
                    format!("{at} answered CONNECT with {other}"),
                )),
            }
        };
        let (connected, frames, write) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
            transient(
                store,
                format!("connecting to {at}: no answer within {CONNECT_TIMEOUT:?}"),
            )
        })??;
        if connected.get("version") != Some("1.2") {
            return Err(StoreError::Permanent {
                store: store.to_owned(),
                reason: format!(
                    "the broker at {at} does not speak STOMP 1.2 (version {:?})",
                    connected.get("version").unwrap_or("1.0")
                ),
            });
        }
        // heart-beat of CONNECTED: what the server sends, what it wants.
        let (server_sends, server_wants) = connected
            .get("heart-beat")
            .and_then(|hb| hb.split_once(','))
            .map(|(a, b)| {
                (
                    a.trim().parse::<u64>().unwrap_or(0),
                    b.trim().parse::<u64>().unwrap_or(0),
                )
            })
            .unwrap_or((0, 0));
        let ours = HEART_BEAT.as_millis() as u64;
        let send_every = (server_wants != 0).then(|| Duration::from_millis(server_wants.max(ours)));
        let expect_within =
            (server_sends != 0).then(|| Duration::from_millis(server_sends.max(ours) * 2 + 1000));

        let (out, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let dead = CancellationToken::new();
        let connection = Arc::new(Connection {
            store: store.to_owned(),
            out,
            shared: shared.clone(),
            next_id: AtomicU64::new(1),
            dead: dead.clone(),
            server: connected.get("server").unwrap_or("").to_owned(),
        });
        tokio::spawn(write_loop(
            write,
            rx,
            send_every,
            dead.clone(),
            shared.clone(),
        ));
        tokio::spawn(read_loop(frames, expect_within, dead, shared, at));
        Ok(connection)
    }

    /// Whether the connection is still up.
    pub(super) fn alive(&self) -> bool {
        !self.dead.is_cancelled()
    }

    /// Resolves when the connection has ended.
    pub(super) async fn ended(&self) {
        self.dead.cancelled().await
    }

    /// Why the connection ended (or "connection closed").
    pub(super) fn why(&self) -> String {
        lock(&self.shared)
            .ended
            .clone()
            .unwrap_or_else(|| "connection closed".to_owned())
    }

    fn dead_error(&self) -> StoreError {
        transient(&self.store, self.why())
    }

    /// A fresh id for a receipt or a subscription on this connection.
    pub(super) fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Queues `frame` for sending; does not wait.
    pub(super) fn send(&self, frame: Frame) -> Result<(), StoreError> {
        if !self.alive() {
            return Err(self.dead_error());
        }
        self.out.send(frame).map_err(|_| self.dead_error())
    }

    /// Sends `frame` with a `receipt` header and waits for the RECEIPT.
    /// (Waiting does not hold anything: receipts of many frames are pipelined.)
    pub(super) async fn send_receipted(&self, frame: Frame) -> Result<(), StoreError> {
        let id = self.next_id("r");
        let (tx, rx) = oneshot::channel();
        {
            let mut shared = lock(&self.shared);
            if let Some(why) = &shared.ended {
                return Err(transient(&self.store, why.clone()));
            }
            shared.receipts.insert(id.clone(), tx);
        }
        self.send(frame.header("receipt", id))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(transient(&self.store, why)),
            Err(_) => Err(self.dead_error()),
        }
    }

    /// Registers subscription `id`: its MESSAGE frames come to the receiver.
    pub(super) fn route(&self, id: &str) -> mpsc::UnboundedReceiver<Frame> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.shared).subscriptions.insert(id.to_owned(), tx);
        rx
    }

    /// Forgets subscription `id` (after its UNSUBSCRIBE).
    pub(super) fn unroute(&self, id: &str) {
        lock(&self.shared).subscriptions.remove(id);
    }

    /// Sends DISCONNECT (waiting briefly for its receipt) and ends the connection.
    pub(super) async fn disconnect(&self) {
        if self.alive() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                self.send_receipted(Frame::new("DISCONNECT")),
            )
            .await;
        }
        end(&self.shared, &self.dead, "disconnected".to_owned());
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        end(&self.shared, &self.dead, "connection closed".to_owned());
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the connection ended (the first reason stays) and fails every waiter.
fn end(shared: &Mutex<Shared>, dead: &CancellationToken, why: String) {
    let (receipts, _subscriptions) = {
        let mut shared = lock(shared);
        if shared.ended.is_none() {
            shared.ended = Some(why.clone());
        }
        (
            std::mem::take(&mut shared.receipts),
            std::mem::take(&mut shared.subscriptions),
        )
    };
    for (_, waiter) in receipts {
        let _ = waiter.send(Err(why.clone()));
    }
    dead.cancel();
}

async fn write_loop(
    mut write: tokio::io::WriteHalf<Box<dyn Io>>,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    beat: Option<Duration>,
    dead: CancellationToken,
    shared: Arc<Mutex<Shared>>,
) {
    let mut codec = Codec::default();
    let mut buf = BytesMut::with_capacity(16 << 10);
    let beat = beat.unwrap_or(Duration::from_secs(3600));
    loop {
        let first = tokio::select! {
            _ = dead.cancelled() => break,
            frame = rx.recv() => frame,
            _ = tokio::time::sleep(beat) => {
                if write.write_all(b"\n").await.is_err() {
                    end(&shared, &dead, "the connection to the broker broke (writing a heart-beat)".to_owned());
                    break;
                }
                continue;
            }
        };
        let Some(first) = first else { break };
        buf.clear();
        let mut next = Some(first);
        // Everything queued meanwhile goes in the same write.
        while let Some(frame) = next {
            if let Err(e) = codec.encode(frame, &mut buf) {
                tracing::warn!(error = %e, "a STOMP frame could not be encoded");
            }
            next = if buf.len() < (256 << 10) {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if let Err(e) = write.write_all(&buf).await {
            end(
                &shared,
                &dead,
                format!("the connection to the broker broke: {e}"),
            );
            break;
        }
    }
    let _ = write.shutdown().await;
}

async fn read_loop(
    mut frames: FramedRead<tokio::io::ReadHalf<Box<dyn Io>>, Codec>,
    expect_within: Option<Duration>,
    dead: CancellationToken,
    shared: Arc<Mutex<Shared>>,
    at: String,
) {
    let limit = expect_within.unwrap_or(Duration::from_secs(u64::from(u32::MAX)));
    let why = loop {
        let next = tokio::select! {
            _ = dead.cancelled() => return,
            next = tokio::time::timeout(limit, frames.next()) => next,
        };
        let frame = match next {
            Err(_) => break format!("no heart-beat from the broker at {at} for {limit:?}"),
            Ok(None) => break format!("the broker at {at} closed the connection"),
            Ok(Some(Err(e))) => break format!("reading from the broker at {at}: {e}"),
            Ok(Some(Ok(Item::HeartBeat))) => continue,
            Ok(Some(Ok(Item::Frame(frame)))) => frame,
        };
        match frame.command.as_str() {
            "RECEIPT" => {
                let waiter = frame
                    .get("receipt-id")
                    .and_then(|id| lock(&shared).receipts.remove(id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(()));
                }
            }
            "MESSAGE" => {
                let route = frame
                    .get("subscription")
                    .and_then(|id| lock(&shared).subscriptions.get(id).cloned());
                // A message for a subscription already gone is not acked: the
                // broker gives it back when the connection closes.
                if let Some(route) = route {
                    let _ = route.send(frame);
                }
            }
            "ERROR" => {
                let message = frame.get("message").unwrap_or("no reason given");
                let detail = String::from_utf8_lossy(&frame.body).trim().to_owned();
                let why = if detail.is_empty() {
                    format!("the broker at {at} sent ERROR: {message}")
                } else {
                    format!("the broker at {at} sent ERROR: {message} ({detail})")
                };
                let waiter = frame
                    .get("receipt-id")
                    .and_then(|id| lock(&shared).receipts.remove(id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Err(why.clone()));
                }
                // STOMP: the server closes the connection after an ERROR.
                break why;
            }
            other => tracing::debug!(command = other, "ignoring an unexpected STOMP frame"),
        }
    };
    end(&shared, &dead, why);
}
