//! Per-key order, as a backend sees it: messages posted with a key (the
//! `X-Order-Key` header and `customer.id` in the body) and a number per
//! key, and the check that each key's first arrivals came in that order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Backend, Received, Reply};

/// Scripts `backend` to fail the first message of key `A` until it was
/// tried three times and `others` messages of other keys have arrived: if
/// A held the other keys back, A would never succeed.
pub fn holds_a_until_the_others_arrived(backend: &Backend, others: usize) {
    let a_attempts = Arc::new(AtomicUsize::new(0));
    let others_seen = Arc::new(AtomicUsize::new(0));
    backend.script(move |r, _| {
        if r.header("x-order-key") != "A" {
            others_seen.fetch_add(1, Ordering::SeqCst);
            return Reply::status(200);
        }
        if r.text().contains(r#""i":0}"#) {
            let n = a_attempts.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= 3 || others_seen.load(Ordering::SeqCst) < others {
                return Reply::status(500);
            }
        }
        Reply::status(200)
    });
}

/// Waits until `total` distinct keyed messages arrived (however many
/// attempts that took); every request the backend saw.
pub async fn wait_for_keyed(
    backend: &Backend,
    total: usize,
    timeout: std::time::Duration,
) -> Vec<Received> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got = backend.received();
        let firsts = KeyedReceipts::of(&got).firsts();
        if firsts >= total {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{firsts} of {total} keyed messages arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// After [`holds_a_until_the_others_arrived`]: every key's `per_key`
/// messages arrived in order, and the other keys' all before A's first.
pub fn assert_others_finished_first(got: &[Received], per_key: usize) {
    KeyedReceipts::of(got).assert_in_order(per_key);
    let a0 = got
        .iter()
        .rposition(|r| r.header("x-order-key") == "A" && r.text().contains(r#""i":0}"#))
        .unwrap();
    let others_done = got
        .iter()
        .rposition(|r| r.header("x-order-key") != "A")
        .unwrap();
    assert!(others_done < a0, "the other keys finish first");
}

/// Posts `per_key` messages for each key, interleaved: round `i` posts
/// message `i` of every key at once (different keys only), and the next
/// round starts when every one got its 202, so that each key's messages
/// are stored in their order. How many were accepted.
pub async fn post_keyed(
    client: &reqwest::Client,
    url: &str,
    keys: &[&str],
    per_key: usize,
) -> usize {
    let mut accepted = 0;
    for i in 0..per_key {
        let mut round = tokio::task::JoinSet::new();
        for key in keys {
            let (client, url, key) = (client.clone(), url.to_owned(), (*key).to_owned());
            round.spawn(async move {
                let body = format!(r#"{{"customer":{{"id":"{key}"}},"k":"{key}","i":{i}}}"#);
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-order-key", key)
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 202)
            });
        }
        while let Some(ok) = round.join_next().await {
            accepted += usize::from(ok.unwrap());
        }
    }
    accepted
}

/// Each key's numbers in the order they first arrived, and how many arrivals repeated one.
#[derive(Debug, Default)]
pub struct KeyedReceipts {
    pub firsts: BTreeMap<String, Vec<u64>>,
    pub duplicates: usize,
}

impl KeyedReceipts {
    pub fn of(received: &[Received]) -> KeyedReceipts {
        let mut out = KeyedReceipts::default();
        let mut seen = std::collections::HashSet::new();
        for r in received {
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
                continue;
            };
            let (Some(key), Some(i)) = (body["k"].as_str(), body["i"].as_u64()) else {
                continue;
            };
            if seen.insert((key.to_owned(), i)) {
                out.firsts.entry(key.to_owned()).or_default().push(i);
            } else {
                out.duplicates += 1;
            }
        }
        out
    }

    /// Messages that arrived at least once.
    pub fn firsts(&self) -> usize {
        self.firsts.values().map(Vec::len).sum()
    }

    /// Every key's `per_key` messages arrived, first arrivals in order.
    pub fn assert_in_order(&self, per_key: usize) {
        let expected: Vec<u64> = (0..per_key as u64).collect();
        for (key, firsts) in &self.firsts {
            assert_eq!(
                firsts, &expected,
                "key {key}: first arrivals out of order or missing"
            );
        }
    }
}
