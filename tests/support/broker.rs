//! The RabbitMQ side of the harness: is the broker there, and queues that clean up after themselves.

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};

/// The broker every machine runs.
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Whether the broker answers; panics under CI=true when it does not.
pub fn broker_up(test: &str) -> bool {
    let up = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5672".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_ok();
    if !up {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "RabbitMQ is not reachable at 127.0.0.1:5672 and CI=true: {test} must run (start it with `rabbitmq-server -detached`)"
        );
        eprintln!(
            "\n!!! SKIPPED {test}: RabbitMQ is not reachable at 127.0.0.1:5672 (start it with `rabbitmq-server -detached`)\n"
        );
    }
    up
}

/// Unique queue names for one test; deletes the queues when dropped, even after a panic.
pub struct Queues(Vec<String>);

impl Queues {
    pub fn new(test: &str, names: &[&str]) -> Queues {
        let run = uuid::Uuid::now_v7().simple().to_string();
        Queues(
            names
                .iter()
                .map(|n| format!("wharf-test-{test}-{n}-{}", &run[20..]))
                .collect(),
        )
    }
    /// Deletes `names` too when dropped (queues Wharf named itself).
    pub fn also(&mut self, names: impl IntoIterator<Item = String>) {
        self.0.extend(names);
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
                let Ok(conn) = Connection::connect(URL, ConnectionProperties::default()).await
                else {
                    return;
                };
                let Ok(channel) = conn.create_channel().await else {
                    return;
                };
                for name in names {
                    let _ = channel
                        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = conn.close(200, "test cleanup".into()).await;
            });
        })
        .join();
    }
}
