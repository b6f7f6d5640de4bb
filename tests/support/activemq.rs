//! The ActiveMQ side of the harness: the project's own broker instance
//! (installed and started by `.ci/activemq`), a raw STOMP client for other
//! producers, and queues that are emptied after the test.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{Encoder, FramedRead};
use wharf::store::activemq::frame::{Codec, Frame, Item};

/// Tests that use the broker hold it shared; a test that restarts it holds
/// it alone, so that no other test sees the restart.
pub static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

pub const URL: &str = "stomp://admin:admin@127.0.0.1:61613";
const ADDR: &str = "127.0.0.1:61613";

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/activemq")
}

/// Installs and starts the broker once per test binary; whether it answers.
/// Panics under CI=true when it does not; skips loudly otherwise.
pub fn activemq_up(test: &str) -> bool {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        let out = std::process::Command::new("bash").arg(script()).output();
        match out {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "{} failed: {}",
                script().display(),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => Err(format!("{}: {e}", script().display())),
        }
    });
    let up = started.is_ok()
        && std::net::TcpStream::connect_timeout(&ADDR.parse().unwrap(), Duration::from_secs(2))
            .is_ok();
    if !up {
        let why = started
            .as_ref()
            .err()
            .cloned()
            .unwrap_or_else(|| format!("nothing answers at {ADDR}"));
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "ActiveMQ is not reachable and CI=true: {test} must run ({why})"
        );
        eprintln!(
            "\n!!! SKIPPED {test}: ActiveMQ is not reachable ({why}); `.ci/activemq` installs and starts it (as root)\n"
        );
    }
    up
}

/// Restarts the broker (`/etc/init.d/activemq restart wharf`) and waits for it.
pub fn restart_broker() {
    let status = std::process::Command::new("bash")
        .arg(script())
        .arg("restart")
        .status()
        .unwrap();
    assert!(status.success(), "restarting ActiveMQ failed");
}

/// A bare STOMP 1.2 connection: what another producer would use.
pub struct Stomp {
    write: tokio::net::tcp::OwnedWriteHalf,
    read: FramedRead<tokio::net::tcp::OwnedReadHalf, Codec>,
    receipts: u64,
}

impl Stomp {
    pub async fn connect() -> Stomp {
        let tcp = TcpStream::connect(ADDR).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (read, write) = tcp.into_split();
        let mut stomp = Stomp {
            write,
            read: FramedRead::new(read, Codec::default()),
            receipts: 0,
        };
        stomp
            .send(
                Frame::new("CONNECT")
                    .header("accept-version", "1.2")
                    .header("host", "localhost")
                    .header("login", "admin")
                    .header("passcode", "admin"),
            )
            .await;
        let connected = stomp.next().await;
        assert_eq!(connected.command, "CONNECTED", "{connected:?}");
        stomp
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut buf = BytesMut::new();
        Codec::default().encode(frame, &mut buf).unwrap();
        self.write.write_all(&buf).await.unwrap();
    }

    /// The next frame (heart-beats skipped).
    pub async fn next(&mut self) -> Frame {
        loop {
            let item = tokio::time::timeout(Duration::from_secs(15), self.read.next())
                .await
                .expect("a STOMP frame within 15 s")
                .expect("the broker closed the connection")
                .unwrap();
            if let Item::Frame(frame) = item {
                return frame;
            }
        }
    }

    /// The next frame, or `None` after `quiet` without one.
    pub async fn next_within(&mut self, quiet: Duration) -> Option<Frame> {
        loop {
            match tokio::time::timeout(quiet, self.read.next()).await {
                Ok(Some(Ok(Item::Frame(frame)))) => return Some(frame),
                Ok(Some(Ok(Item::HeartBeat))) => continue,
                _ => return None,
            }
        }
    }

    /// SENDs `frame` (a persistent message) and waits for its RECEIPT.
    pub async fn send_persistent(&mut self, frame: Frame) {
        self.receipts += 1;
        let id = format!("t{}", self.receipts);
        self.send(
            frame
                .header("persistent", "true")
                .header("receipt", id.clone()),
        )
        .await;
        let receipt = self.next().await;
        assert_eq!(receipt.get("receipt-id"), Some(id.as_str()), "{receipt:?}");
    }
}

/// Unique queue names for one test (`wharf-test.{test}.{name}.{run}`); the
/// queues are emptied when dropped, even after a panic, and the broker
/// removes them once empty and unused (the instance's policy).
pub struct Queues(Vec<String>);

impl Queues {
    pub fn new(test: &str, names: &[&str]) -> Queues {
        Queues::named("wharf-test", test, names)
    }

    /// Queues under the broker's policy for deep queues (`.ci/activemq`):
    /// a consumer and a browser reach 20,000 messages, not 200 and 400.
    pub fn deep(test: &str, names: &[&str]) -> Queues {
        Queues::named("wharf-deep", test, names)
    }

    fn named(prefix: &str, test: &str, names: &[&str]) -> Queues {
        let run = uuid::Uuid::now_v7().simple().to_string();
        Queues(
            names
                .iter()
                .map(|n| format!("{prefix}.{test}.{n}.{}", &run[20..]))
                .collect(),
        )
    }

    pub fn get(&self, i: usize) -> &str {
        &self.0[i]
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(Ok(tcp)) =
                    tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(ADDR)).await
                else {
                    return;
                };
                drop(tcp);
                let mut stomp = Stomp::connect().await;
                for (i, name) in names.iter().enumerate() {
                    stomp
                        .send(
                            Frame::new("SUBSCRIBE")
                                .header("id", format!("drain{i}"))
                                .header("destination", format!("/queue/{name}"))
                                .header("ack", "auto"),
                        )
                        .await;
                }
                while stomp
                    .next_within(Duration::from_millis(300))
                    .await
                    .is_some()
                {}
            });
        })
        .join();
    }
}
