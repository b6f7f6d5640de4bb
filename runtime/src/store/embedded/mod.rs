//! The embedded store: one SQLite file per store, `DATA_DIR/stores/NAME.sqlite3`.
//!
//! # Record format
//!
//! One table, `messages(seq INTEGER PRIMARY KEY, id TEXT, received_at
//! INTEGER, method TEXT, path TEXT, headers BLOB, body BLOB, trail TEXT)`. `seq` is the
//! store order. The writer assigns it: one more than the highest in the file
//! at open, then counting up, so within a run a seq is never reused (the
//! lease cursor relies on that) even when the tail was deleted. After a
//! restart the cursor starts at zero, so reusing a deleted tail's numbers is
//! harmless. `headers` is the binary form of [`Message::encode_headers`];
//! `body` is the raw bytes; `trail` the failure trail of a dead letter as
//! JSON (`NULL` otherwise; see [`crate::store::trail`]). `PRAGMA
//! user_version` holds the schema version: 2; a file of version 1 (before
//! trails) gains the column when it is opened, in place.
//!
//! # Durability: what is fsynced when
//!
//! The database runs in WAL mode with `synchronous = FULL`: a commit returns
//! after the WAL is fsynced. All writes go through one writer thread, which
//! takes every operation waiting on its channel (up to [`MAX_GROUP`]) into one
//! transaction: one commit, one fsync for the whole group (group commit).
//! [`Store::append`] answers only after the commit of its group, so a 202
//! always follows an fsync that covered the message. While one group commits,
//! the next one gathers, which is what keeps ingest fast under concurrency.
//!
//! Acks ride the same groups but the processor does not wait for their commit:
//! an ack lost in a crash only means the message is delivered again
//! (at-least-once), never that one is lost. The processor sends its acks in
//! groups (see `processor::ACK_BATCH`), so forwarding costs a fraction of a
//! commit per message.
//!
//! Checkpoints (copying the WAL back into the database file) are SQLite's
//! automatic ones, run by the writer after a commit that grows the WAL past
//! 1000 pages. A checkpointer on another thread would keep them out of the
//! commit path, but under sustained writes it never catches up with the
//! writer, so the WAL could never restart and would grow without bound.
//!
//! # Leasing
//!
//! The lease cursor (the highest leased `seq`) lives in memory. A lease reads
//! `seq > cursor` in order through a separate read connection (WAL lets it
//! read while the writer commits) and moves the cursor; a release moves it
//! back. After a restart the cursor starts at zero, so every message still in
//! the file — including one that was being forwarded at the crash — is leased
//! again.
//!
//! # Crash recovery
//!
//! SQLite replays or discards the WAL on open: a group whose commit returned is
//! there, a half-written one is not (and none of its appends was answered).
//! Nothing else needs recovering.

pub mod config;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::{Notify, oneshot};

use super::trail::Trail;
use super::{Browsed, Leased, Message, Position, Receipt, Removed, Store, StoreError};

/// Most operations committed in one transaction.
pub const MAX_GROUP: usize = 1024;

const SCHEMA_VERSION: i64 = 2;

/// An append waiting for its group's commit, and where to answer.
type PendingAppend = (Arc<Message>, oneshot::Sender<Result<(), StoreError>>);

enum Op {
    Append(Arc<Message>, oneshot::Sender<Result<(), StoreError>>),
    Acks(Vec<u64>),
    /// Deletes these seqs; answers how many rows went, once committed.
    Remove(Vec<u64>, oneshot::Sender<Result<u64, StoreError>>),
    Close(oneshot::Sender<()>),
}

/// A store in a SQLite file (see the module doc).
pub struct EmbeddedStore {
    name: String,
    writer: mpsc::Sender<Op>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    reader: Arc<Mutex<Connection>>,
    /// Highest leased seq.
    cursor: Arc<Mutex<u64>>,
    /// Highest committed seq: a lease at the tail needs no query.
    tail: Arc<AtomicU64>,
    depth: Arc<AtomicU64>,
    appended: Arc<Notify>,
    /// `max_messages`, 0 for none; the pipeline may change it live.
    capacity: Arc<AtomicU64>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("name", &self.name)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store `name` under `data_dir`.
    pub fn open(
        data_dir: &Path,
        name: &str,
        max_messages: Option<u64>,
    ) -> Result<EmbeddedStore, StoreError> {
        // Opening fails on what a retry cannot fix: permissions, a schema of another version.
        let backend = |e: &dyn std::fmt::Display| StoreError::Permanent {
            store: name.to_owned(),
            reason: e.to_string(),
        };
        let dir = data_dir.join("stores");
        std::fs::create_dir_all(&dir)
            .map_err(|e| backend(&format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(format!("{name}.sqlite3"));
        let writer_conn = open_connection(&path, true)
            .map_err(|e| backend(&format!("{}: {e}", path.display())))?;
        let reader = open_connection(&path, false)
            .map_err(|e| backend(&format!("{}: {e}", path.display())))?;
        let (depth, last_seq): (i64, i64) = reader
            .query_row(
                "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM messages",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| backend(&e))?;

        let (tx, rx) = mpsc::channel();
        let depth = Arc::new(AtomicU64::new(depth as u64));
        let tail = Arc::new(AtomicU64::new(last_seq as u64));
        let appended = Arc::new(Notify::new());
        let capacity = Arc::new(AtomicU64::new(max_messages.unwrap_or(0)));
        let writer = Writer {
            store: name.to_owned(),
            conn: writer_conn,
            rx,
            depth: depth.clone(),
            tail: tail.clone(),
            appended: appended.clone(),
            capacity: capacity.clone(),
            next_seq: last_seq as u64 + 1,
        };
        let thread = std::thread::Builder::new()
            .name(format!("store-{name}"))
            .spawn(move || writer.run())
            .map_err(|e| backend(&e))?;
        Ok(EmbeddedStore {
            name: name.to_owned(),
            writer: tx,
            writer_thread: Mutex::new(Some(thread)),
            reader: Arc::new(Mutex::new(reader)),
            cursor: Arc::new(Mutex::new(0)),
            tail,
            depth,
            appended,
            capacity,
        })
    }

    /// Changes `max_messages` (`None`: unlimited); writes after this call see it.
    pub fn set_max_messages(&self, max_messages: Option<u64>) {
        self.capacity
            .store(max_messages.unwrap_or(0), Ordering::Relaxed);
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            store: self.name.clone(),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Transient {
            store: name.clone(),
            reason: e.to_string(),
        })?
        .map_err(|e| StoreError::Transient {
            store: name,
            reason: e.to_string(),
        })
    }
}

fn open_connection(path: &PathBuf, create: bool) -> rusqlite::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL needed"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    if create {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == 0 {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS messages (
                    seq INTEGER PRIMARY KEY,
                    id TEXT NOT NULL,
                    received_at INTEGER NOT NULL,
                    method TEXT NOT NULL,
                    path TEXT NOT NULL,
                    headers BLOB NOT NULL,
                    body BLOB NOT NULL,
                    trail TEXT
                );",
            )?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        } else if version == 1 {
            // Version 1 had no trails: the column is added, every row NULL.
            conn.execute_batch("ALTER TABLE messages ADD COLUMN trail TEXT;")?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        } else if version != SCHEMA_VERSION {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "schema version {version} is not {SCHEMA_VERSION}: written by another Wharf version"
            )));
        }
    }
    Ok(conn)
}

const SELECT: &str =
    "SELECT seq, id, received_at, method, path, headers, body, trail FROM messages";

fn row_to_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<(u64, Message)> {
    let seq: i64 = row.get(0)?;
    let method: String = row.get(3)?;
    let headers: Vec<u8> = row.get(5)?;
    let id: String = row.get(1)?;
    let trail: Option<String> = row.get(7)?;
    let corrupt = |what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            format!("message seq {seq}: corrupt {what}").into(),
        )
    };
    Ok((
        seq as u64,
        Message {
            trail: trail.and_then(|t| Trail::decode(&t, &id)).map(Arc::new),
            id,
            received_at: row.get(2)?,
            method: http::Method::from_bytes(method.as_bytes()).map_err(|_| corrupt("method"))?,
            path: row.get(4)?,
            headers: Message::decode_headers(&headers).ok_or_else(|| corrupt("headers"))?,
            body: Bytes::from(row.get::<_, Vec<u8>>(6)?),
        },
    ))
}

#[async_trait]
impl Store for EmbeddedStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn append(&self, message: Arc<Message>) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Op::Append(message, tx))
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    async fn lease(&self, max: usize) -> Result<Vec<Leased>, StoreError> {
        // An idle processor's lease at the tail costs no query.
        let at_tail = *self.cursor.lock().unwrap_or_else(|p| p.into_inner())
            >= self.tail.load(Ordering::Acquire);
        if at_tail {
            return Ok(Vec::new());
        }
        let cursor = self.cursor.clone();
        self.read(move |conn| {
            let mut cursor = cursor
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut stmt =
                conn.prepare_cached(&format!("{SELECT} WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
            let leased = stmt
                .query_map(params![*cursor as i64, max as i64], row_to_message)?
                .map(|r| {
                    r.map(|(seq, message)| Leased {
                        receipt: Receipt(seq),
                        message,
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if let Some(last) = leased.last() {
                *cursor = last.receipt.0;
            }
            Ok(leased)
        })
        .await
    }

    async fn ack(&self, receipt: Receipt) -> Result<(), StoreError> {
        self.ack_many(vec![receipt]).await
    }

    async fn ack_many(&self, receipts: Vec<Receipt>) -> Result<(), StoreError> {
        let seqs = receipts.into_iter().map(|r| r.0).collect();
        self.writer.send(Op::Acks(seqs)).map_err(|_| self.closed())
    }

    async fn release(&self, receipt: Receipt) -> Result<(), StoreError> {
        let mut cursor = self
            .cursor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *cursor = (*cursor).min(receipt.0.saturating_sub(1));
        Ok(())
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        Ok(self.depth.load(Ordering::Relaxed))
    }

    async fn body_bytes(&self) -> Result<Option<u64>, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT coalesce(sum(length(body)), 0) FROM messages",
                [],
                |row| row.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| Some(u64::try_from(n).unwrap_or(0)))
    }

    async fn peek(&self, limit: usize) -> Result<Vec<Message>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!("{SELECT} ORDER BY seq LIMIT ?1"))?;
            stmt.query_map(params![limit as i64], |row| {
                row_to_message(row).map(|(_, m)| m)
            })?
            .collect()
        })
        .await
    }

    async fn browse(
        &self,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<Vec<Browsed>, StoreError> {
        let after = match after {
            None => 0,
            Some(p) => p
                .parse::<u64>()
                .map_err(|_| super::not_a_position(&self.name, p))?,
        };
        let leased_up_to = *self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached(&format!("{SELECT} WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
            stmt.query_map(params![after as i64, limit as i64], |row| {
                row_to_message(row).map(|(seq, message)| Browsed {
                    position: seq.to_string(),
                    message,
                    leased: seq <= leased_up_to,
                })
            })?
            .collect()
        })
        .await
    }

    async fn remove(&self, positions: &[Position]) -> Result<Removed, StoreError> {
        let mut seqs = Vec::with_capacity(positions.len());
        for p in positions {
            seqs.push(
                p.parse::<u64>()
                    .map_err(|_| super::not_a_position(&self.name, p))?,
            );
        }
        // The lease cursor stays locked until the delete is committed, so no
        // lease can take a row that is about to go: what is leased now is in
        // flight and stays, what is not is deleted before anyone leases it.
        let cursor = self.cursor.clone();
        let writer = self.writer.clone();
        let name = self.name.clone();
        let closed = move || StoreError::Closed {
            store: name.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let cursor = cursor.lock().unwrap_or_else(|p| p.into_inner());
            let (leased, free): (Vec<u64>, Vec<u64>) =
                seqs.into_iter().partition(|seq| *seq <= *cursor);
            if free.is_empty() {
                return Ok(Removed {
                    removed: 0,
                    in_flight: leased.len() as u64,
                });
            }
            let (tx, rx) = oneshot::channel();
            writer.send(Op::Remove(free, tx)).map_err(|_| closed())?;
            let removed = rx.blocking_recv().map_err(|_| closed())??;
            Ok(Removed {
                removed,
                in_flight: leased.len() as u64,
            })
        })
        .await
        .map_err(|e| StoreError::Transient {
            store: self.name.clone(),
            reason: e.to_string(),
        })?
    }

    async fn append_all(&self, messages: Vec<Arc<Message>>) -> Result<(), StoreError> {
        // Sent to the writer in order before any is awaited: they commit
        // in their order, in as few groups as the writer takes.
        let mut replies = Vec::with_capacity(messages.len());
        for message in messages {
            let (tx, rx) = oneshot::channel();
            self.writer
                .send(Op::Append(message, tx))
                .map_err(|_| self.closed())?;
            replies.push(rx);
        }
        for reply in replies {
            reply.await.map_err(|_| self.closed())??;
        }
        Ok(())
    }

    async fn appended(&self) {
        self.appended.notified().await;
    }

    fn reconfigure(&self, settings: &crate::config::StoreSettings) -> bool {
        match &settings.backend {
            crate::config::BackendSettings::Embedded(embedded) => {
                self.set_max_messages(embedded.max_messages);
                true
            }
            _ => false,
        }
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Op::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The one thread that writes a store's file.
struct Writer {
    store: String,
    conn: Connection,
    rx: mpsc::Receiver<Op>,
    depth: Arc<AtomicU64>,
    tail: Arc<AtomicU64>,
    appended: Arc<Notify>,
    /// `max_messages`, 0 for none.
    capacity: Arc<AtomicU64>,
    /// The seq of the next append.
    next_seq: u64,
}

impl Writer {
    fn run(mut self) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Ok(op) = self.rx.recv() {
            group.push(op);
            while group.len() < MAX_GROUP {
                match self.rx.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            if self.commit_group(&mut group) {
                break;
            }
        }
        // Everything still queued was sent after Close: answer it as closed.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    }

    /// Commits one group; returns true when a Close was in it.
    fn commit_group(&mut self, group: &mut Vec<Op>) -> bool {
        let mut appends = Vec::new();
        let mut acks = Vec::new();
        let mut removals = Vec::new();
        let mut closers = Vec::new();
        for op in group.drain(..) {
            match op {
                Op::Append(m, reply) => appends.push((m, reply)),
                Op::Acks(seqs) => acks.extend(seqs),
                Op::Remove(seqs, reply) => removals.push((seqs, reply)),
                Op::Close(reply) => closers.push(reply),
            }
        }

        // Capacity: refuse what does not fit before writing anything.
        let max_messages = Some(self.capacity.load(Ordering::Relaxed)).filter(|&max| max > 0);
        let mut room = max_messages
            .map(|max| max.saturating_sub(self.depth.load(Ordering::Relaxed)) + acks.len() as u64);
        let mut accepted = Vec::with_capacity(appends.len());
        for (m, reply) in appends {
            match &mut room {
                Some(0) => {
                    let _ = reply.send(Err(StoreError::Full {
                        store: self.store.clone(),
                        max: max_messages.unwrap_or_default(),
                    }));
                }
                Some(n) => {
                    *n -= 1;
                    accepted.push((m, reply));
                }
                None => accepted.push((m, reply)),
            }
        }

        let first_seq = self.next_seq;
        self.next_seq += accepted.len() as u64;
        match write_group(&mut self.conn, first_seq, &accepted, &acks) {
            Ok(deleted) => {
                let added = accepted.len() as u64;
                self.depth.fetch_add(added, Ordering::Relaxed);
                self.depth.fetch_sub(deleted, Ordering::Relaxed);
                if added > 0 {
                    // Before any answer or wake-up: a lease then sees them.
                    self.tail.store(first_seq + added - 1, Ordering::Release);
                }
                for (_, reply) in accepted {
                    let _ = reply.send(Ok(()));
                }
                if added > 0 {
                    self.appended.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(store = %self.store, error = %e, "store write failed");
                for (_, reply) in accepted {
                    let _ = reply.send(Err(StoreError::Transient {
                        store: self.store.clone(),
                        reason: e.to_string(),
                    }));
                }
                // The acks were not the problem: try them on their own.
                if !acks.is_empty() {
                    match write_group(&mut self.conn, first_seq, &[], &acks) {
                        Ok(deleted) => {
                            self.depth.fetch_sub(deleted, Ordering::Relaxed);
                        }
                        Err(e) => tracing::error!(
                            store = %self.store, error = %e,
                            "acks not written: {} message(s) will be delivered again after a restart",
                            acks.len()
                        ),
                    }
                }
            }
        }
        // Removals commit on their own, so each learns how many rows it deleted.
        for (seqs, reply) in removals {
            let result = write_group(&mut self.conn, self.next_seq, &[], &seqs);
            let _ = reply.send(match result {
                Ok(deleted) => {
                    self.depth.fetch_sub(deleted, Ordering::Relaxed);
                    Ok(deleted)
                }
                Err(e) => Err(StoreError::Transient {
                    store: self.store.clone(),
                    reason: e.to_string(),
                }),
            });
        }
        let closing = !closers.is_empty();
        for reply in closers {
            let _ = reply.send(());
        }
        closing
    }
}

/// One transaction, one fsync; returns how many rows the acks deleted.
fn write_group(
    conn: &mut Connection,
    first_seq: u64,
    appends: &[PendingAppend],
    acks: &[u64],
) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let mut deleted = 0;
    {
        let mut delete = tx.prepare_cached("DELETE FROM messages WHERE seq = ?1")?;
        for seq in acks {
            deleted += delete.execute(params![*seq as i64])? as u64;
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO messages (seq, id, received_at, method, path, headers, body, trail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for (seq, (m, _)) in (first_seq..).zip(appends) {
            insert.execute(params![
                seq as i64,
                m.id,
                m.received_at,
                m.method.as_str(),
                m.path,
                m.encode_headers(),
                &m.body[..],
                m.trail.as_ref().map(|t| t.encode()),
            ])?;
        }
    }
    tx.commit()?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn message(body: &str) -> Arc<Message> {
        Arc::new(Message::new(
            http::Method::POST,
            "/t".into(),
            http::HeaderMap::new(),
            Bytes::from(body.to_owned()),
        ))
    }

    fn bodies(leased: &[Leased]) -> Vec<String> {
        leased
            .iter()
            .map(|l| String::from_utf8_lossy(&l.message.body).into_owned())
            .collect()
    }

    async fn settle(store: &EmbeddedStore, depth: u64) {
        for _ in 0..200 {
            if store.depth().await.unwrap() == depth {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("depth never reached {depth}");
    }

    #[tokio::test]
    async fn message_appended_after_the_tail_was_acked_is_still_leased() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), "s", None).unwrap();
        store.append(message("a")).await.unwrap();
        let a = store.lease(10).await.unwrap();
        store.ack(a[0].receipt).await.unwrap();
        settle(&store, 0).await;
        store.append(message("b")).await.unwrap();
        assert_eq!(bodies(&store.lease(10).await.unwrap()), ["b"]);
        store.close().await;
    }

    #[tokio::test]
    async fn release_puts_messages_back_at_the_head_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), "s", None).unwrap();
        for b in ["a", "b", "c"] {
            store.append(message(b)).await.unwrap();
        }
        let leased = store.lease(10).await.unwrap();
        store.ack(leased[0].receipt).await.unwrap();
        store.release(leased[1].receipt).await.unwrap();
        assert_eq!(bodies(&store.lease(10).await.unwrap()), ["b", "c"]);
        assert!(store.lease(10).await.unwrap().is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn reopened_store_offers_every_unacked_message_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), "s", None).unwrap();
        for b in ["a", "b", "c"] {
            store.append(message(b)).await.unwrap();
        }
        let leased = store.lease(10).await.unwrap();
        store.ack(leased[0].receipt).await.unwrap();
        store.close().await;

        let store = EmbeddedStore::open(dir.path(), "s", None).unwrap();
        assert_eq!(store.depth().await.unwrap(), 2);
        assert_eq!(bodies(&store.lease(10).await.unwrap()), ["b", "c"]);
        store.append(message("d")).await.unwrap();
        assert_eq!(bodies(&store.lease(10).await.unwrap()), ["d"]);
        store.close().await;
    }

    #[tokio::test]
    async fn full_store_refuses_appends_until_acks_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), "s", Some(1)).unwrap();
        store.append(message("a")).await.unwrap();
        assert!(matches!(
            store.append(message("b")).await,
            Err(StoreError::Full { max: 1, .. })
        ));
        let a = store.lease(1).await.unwrap();
        store.ack(a[0].receipt).await.unwrap();
        settle(&store, 0).await;
        store.append(message("c")).await.unwrap();
        store.close().await;
        assert!(matches!(
            store.append(message("d")).await,
            Err(StoreError::Closed { .. })
        ));
    }

    #[tokio::test]
    async fn remove_takes_what_no_processor_holds_and_leaves_leased_messages_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), "s", None).unwrap();
        for b in ["a", "b", "c"] {
            store.append(message(b)).await.unwrap();
        }
        let leased = store.lease(1).await.unwrap();
        let all = store.browse(None, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|b| b.leased).collect::<Vec<_>>(),
            [true, false, false]
        );
        let positions: Vec<Position> = all.iter().map(|b| b.position.clone()).collect();
        let removed = store.remove(&positions[..2]).await.unwrap();
        assert_eq!(
            removed,
            Removed {
                removed: 1,
                in_flight: 1
            }
        );
        assert_eq!(store.depth().await.unwrap(), 2);
        let after = store.browse(Some(&positions[0]), 10).await.unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].message.body, "c");
        // The leased one is still acked normally, and the next lease is c.
        store.ack(leased[0].receipt).await.unwrap();
        assert_eq!(bodies(&store.lease(10).await.unwrap()), ["c"]);
        assert_eq!(store.remove(&[]).await.unwrap(), Removed::default());
        assert!(store.remove(&["x".into()]).await.is_err());
        store.close().await;
    }

    #[tokio::test]
    async fn a_version_1_file_gains_the_trail_column_and_keeps_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("stores")).unwrap();
        let conn = Connection::open(dir.path().join("stores/s.sqlite3")).unwrap();
        conn.execute_batch(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY, id TEXT NOT NULL,
                received_at INTEGER NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
                headers BLOB NOT NULL, body BLOB NOT NULL);
             INSERT INTO messages VALUES (1, 'm1', 5, 'POST', '/x', x'', x'6869');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let store = EmbeddedStore::open(dir.path(), "s", None).unwrap();
        let old = store.peek(10).await.unwrap();
        assert_eq!((old[0].id.as_str(), &old[0].body[..]), ("m1", &b"hi"[..]));
        assert_eq!(old[0].trail, None);
        let mut dead = (*message("d")).clone();
        dead.trail = Some(Arc::new(crate::store::trail::tests::sample()));
        store.append(Arc::new(dead.clone())).await.unwrap();
        store.close().await;
        let store = EmbeddedStore::open(dir.path(), "s", None).unwrap();
        assert_eq!(store.peek(10).await.unwrap()[1], dead);
        store.close().await;
    }
}
