//! The SQLite file behind the telemetry store: schema, batched commits, reads in order, the
//! bounds, and moving a corrupt file aside.
//!
//! WAL with `synchronous=FULL`: a commit that returned survives kill -9 and power loss (the
//! WAL is fsynced per commit), and one commit carries a whole batch, so the flash sees one
//! fsync per commit interval, not one per reading. A lost *delete* only resends a message the
//! hub already has (same `$.mid`); a lost *insert* would lose a reading, so inserts are what
//! the sync setting protects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

/// What one stored row costs beyond its topic and body, for the byte bound: row header,
/// rowid, device key, seq, time and the index entry, measured roughly on real files (the
/// README has the bytes per message on disk).
pub const ROW_OVERHEAD: u64 = 48;

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices(
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS messages(
    id INTEGER PRIMARY KEY,
    device INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    stored_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_device ON messages(device, seq);
";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not a database, or its pages are damaged: move it aside.
    #[error("the store is damaged: {0}")]
    Corrupt(rusqlite::Error),
    /// Disk full, file size limit, read-only or I/O error: try again later.
    #[error("cannot write the store: {0}")]
    Write(rusqlite::Error),
    #[error("the store was written by a newer leafgate (schema {0})")]
    Newer(i64),
    #[error("{0}")]
    Other(rusqlite::Error),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => Error::Corrupt(e),
            Some(
                ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::ReadOnly
                | ErrorCode::CannotOpen
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::PermissionDenied
                | ErrorCode::OutOfMemory,
            ) => Error::Write(e),
            _ => Error::Other(e),
        }
    }
}

impl Error {
    /// Whether a fresh file is the way out (as opposed to waiting for the disk).
    #[must_use]
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt(_) | Error::Newer(_))
    }
}

/// What a device has in the file when it is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub count: u64,
    /// The highest sequence number stored; the device's new readings continue after it.
    pub last_seq: Option<u64>,
}

/// A reading to store.
pub struct NewRow {
    pub seq: u64,
    pub topic: String,
    pub body: Bytes,
}

/// A stored reading read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub seq: u64,
    pub topic: String,
    pub body: Bytes,
}

/// One device's part of a commit.
pub struct DeviceBatch<'a> {
    pub device: &'a str,
    pub inserts: Vec<NewRow>,
    pub deletes: Vec<i64>,
}

/// The bounds a commit enforces.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_bytes: u64,
    /// Rows stored before this (ms since the epoch) go; `None`: no age check this time.
    pub older_than_ms: Option<i64>,
}

/// What a commit did.
#[derive(Debug, Default)]
pub struct Committed {
    /// Per batch entry, the row id of each insert, in order.
    pub ids: Vec<Vec<i64>>,
    /// Rows dropped by the bounds: device id → sequence numbers, oldest first.
    pub dropped: HashMap<String, Vec<u64>>,
    pub dropped_for_age: u64,
    pub dropped_for_size: u64,
}

pub struct Db {
    conn: Connection,
    keys: HashMap<String, i64>,
    names: HashMap<i64, String>,
    /// Payload bytes held (topic + body + [`ROW_OVERHEAD`] per row).
    bytes: u64,
    rows: u64,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("rows", &self.rows)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

fn seq_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn sql_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl Db {
    /// Opens (or creates) the store at `path` and checks it; returns what each device has.
    ///
    /// # Errors
    /// [`Error::Corrupt`]/[`Error::Newer`] for a file to move aside; others when it cannot be
    /// opened at all (missing directory, permissions).
    pub fn open(path: &Path) -> Result<(Db, HashMap<String, Stored>), Error> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // `journal_mode` answers with a row; anything but "wal" (e.g. a read-only file) is
        // an error worth knowing at once.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Other(rusqlite::Error::InvalidQuery));
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Newer(version));
        }
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(Error::Corrupt(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            )));
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let mut db = Db {
            conn,
            keys: HashMap::new(),
            names: HashMap::new(),
            bytes: 0,
            rows: 0,
        };
        let stored = db.load()?;
        Ok((db, stored))
    }

    fn load(&mut self) -> Result<HashMap<String, Stored>, Error> {
        let mut stored = HashMap::new();
        {
            let mut stmt = self.conn.prepare("SELECT key, id FROM devices")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (key, id) = row?;
                self.keys.insert(id.clone(), key);
                self.names.insert(key, id);
            }
        }
        let mut stmt = self.conn.prepare(
            "SELECT device, count(*), max(seq), sum(length(topic) + length(body)) FROM messages GROUP BY device",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (key, count, last, bytes) = row?;
            let count = seq_of(count);
            self.rows += count;
            self.bytes += seq_of(bytes) + count * ROW_OVERHEAD;
            if let Some(id) = self.names.get(&key) {
                stored.insert(
                    id.clone(),
                    Stored {
                        count,
                        last_seq: Some(seq_of(last)),
                    },
                );
            }
        }
        Ok(stored)
    }

    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    #[must_use]
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Stores and deletes a batch in one transaction, then drops the oldest rows past the
    /// bounds in the same transaction. Nothing changes when it fails.
    ///
    /// # Errors
    /// When the transaction cannot be written.
    pub fn commit(
        &mut self,
        batch: &[DeviceBatch<'_>],
        bounds: Bounds,
        now_ms: i64,
    ) -> Result<Committed, Error> {
        let tx = self.conn.transaction()?;
        let mut new_keys = Vec::new();
        let mut committed = Committed::default();
        let mut bytes = self.bytes;
        let mut rows = self.rows;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages(device, seq, stored_ms, topic, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut delete = tx.prepare_cached(
                "DELETE FROM messages WHERE id = ?1 RETURNING length(topic) + length(body)",
            )?;
            for entry in batch {
                for id in &entry.deletes {
                    let len: Option<i64> = delete.query_row([id], |r| r.get(0)).optional()?;
                    if let Some(len) = len {
                        bytes = bytes.saturating_sub(seq_of(len) + ROW_OVERHEAD);
                        rows = rows.saturating_sub(1);
                    }
                }
                let mut ids = Vec::with_capacity(entry.inserts.len());
                if !entry.inserts.is_empty() {
                    let key = match self.keys.get(entry.device) {
                        Some(key) => *key,
                        None => {
                            tx.execute("INSERT INTO devices(id) VALUES (?1)", [entry.device])?;
                            let key = tx.last_insert_rowid();
                            new_keys.push((entry.device.to_owned(), key));
                            key
                        }
                    };
                    for row in &entry.inserts {
                        insert.execute(params![
                            key,
                            sql_seq(row.seq),
                            now_ms,
                            row.topic,
                            &row.body[..]
                        ])?;
                        ids.push(tx.last_insert_rowid());
                        bytes += (row.topic.len() + row.body.len()) as u64 + ROW_OVERHEAD;
                        rows += 1;
                    }
                }
                committed.ids.push(ids);
            }
        }
        let mut dropped: Vec<(i64, u64)> = Vec::new();
        if let Some(cutoff) = bounds.older_than_ms {
            // Rows are stored in id order with the clock: look at the oldest before scanning.
            let oldest: Option<i64> = tx
                .query_row(
                    "SELECT stored_ms FROM messages ORDER BY id LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if oldest.is_some_and(|t| t < cutoff) {
                let mut stmt = tx.prepare(
                    "DELETE FROM messages WHERE stored_ms < ?1 RETURNING device, seq, length(topic) + length(body)",
                )?;
                let gone = stmt.query_map([cutoff], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?;
                for g in gone {
                    let (device, seq, len) = g?;
                    bytes = bytes.saturating_sub(seq_of(len) + ROW_OVERHEAD);
                    rows = rows.saturating_sub(1);
                    committed.dropped_for_age += 1;
                    dropped.push((device, seq_of(seq)));
                }
            }
        }
        while bytes > bounds.max_bytes && rows > 0 {
            let average = (bytes / rows).max(1);
            let n = ((bytes - bounds.max_bytes).div_ceil(average)).clamp(1, 10_000);
            let mut stmt = tx.prepare_cached(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?1) RETURNING device, seq, length(topic) + length(body)",
            )?;
            let gone = stmt.query_map([sql_seq(n)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut any = false;
            for g in gone {
                let (device, seq, len) = g?;
                any = true;
                bytes = bytes.saturating_sub(seq_of(len) + ROW_OVERHEAD);
                rows = rows.saturating_sub(1);
                committed.dropped_for_size += 1;
                dropped.push((device, seq_of(seq)));
            }
            if !any {
                bytes = 0;
                rows = 0;
            }
        }
        tx.commit()?;
        self.bytes = bytes;
        self.rows = rows;
        for (id, key) in new_keys {
            self.names.insert(key, id.clone());
            self.keys.insert(id, key);
        }
        for (key, seq) in dropped {
            if let Some(id) = self.names.get(&key) {
                committed.dropped.entry(id.clone()).or_default().push(seq);
            }
        }
        for seqs in committed.dropped.values_mut() {
            seqs.sort_unstable();
        }
        Ok(committed)
    }

    /// Up to `limit` of `device`'s rows after `after` (from its first with `None`), in order.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn fetch(&self, device: &str, after: Option<u64>, limit: usize) -> Result<Vec<Row>, Error> {
        let Some(key) = self.keys.get(device) else {
            return Ok(Vec::new());
        };
        let after = after.map_or(-1, sql_seq);
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, seq, topic, body FROM messages WHERE device = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![key, after, sql_seq(limit as u64)], |r| {
            Ok(Row {
                id: r.get(0)?,
                seq: seq_of(r.get(1)?),
                topic: r.get(2)?,
                body: Bytes::from(r.get::<_, Vec<u8>>(3)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Moves `path` (and its WAL and shared-memory files) aside as `path.corrupt-<ms>`; returns
/// where the database file went.
///
/// # Errors
/// When the file cannot be renamed.
pub fn move_aside(path: &Path, now_ms: i64) -> std::io::Result<PathBuf> {
    let suffix = format!(".corrupt-{now_ms}");
    let mut to = path.as_os_str().to_owned();
    to.push(&suffix);
    let to = PathBuf::from(to);
    std::fs::rename(path, &to)?;
    for side in ["-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(side);
        let mut dest = to.as_os_str().to_owned();
        dest.push(side);
        // Absent unless the process died with the file open.
        let _ = std::fs::rename(&from, &dest);
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, body: &str) -> NewRow {
        NewRow {
            seq,
            topic: format!("devices/d/messages/events/$.mid=r-{seq:03}"),
            body: Bytes::from(body.to_owned()),
        }
    }

    const OPEN: Bounds = Bounds {
        max_bytes: u64::MAX,
        older_than_ms: None,
    };

    #[test]
    fn rows_survive_reopen_in_order_and_deletes_stick() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (mut db, stored) = Db::open(&path).unwrap();
        assert!(stored.is_empty());
        let batch = [DeviceBatch {
            device: "a",
            inserts: (0..5).map(|s| row(s, "{}")).collect(),
            deletes: vec![],
        }];
        let done = db.commit(&batch, OPEN, 1).unwrap();
        let ids = done.ids[0].clone();
        assert_eq!(ids.len(), 5);
        let batch = [DeviceBatch {
            device: "a",
            inserts: vec![],
            deletes: vec![ids[0], ids[1]],
        }];
        db.commit(&batch, OPEN, 2).unwrap();
        drop(db);
        let (db, stored) = Db::open(&path).unwrap();
        assert_eq!(
            stored["a"],
            Stored {
                count: 3,
                last_seq: Some(4)
            }
        );
        let rows = db.fetch("a", None, 10).unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(
            db.fetch("a", Some(2), 1)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [3]
        );
        assert!(db.fetch("nobody", None, 10).unwrap().is_empty());
    }

    #[test]
    fn past_the_byte_bound_the_oldest_rows_go_first_across_devices() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, _) = Db::open(&dir.path().join("t.db")).unwrap();
        let body = "x".repeat(100);
        for (t, device) in ["a", "b", "a"].into_iter().enumerate() {
            let base = t as u64 * 10;
            let batch = [DeviceBatch {
                device,
                inserts: (base..base + 10).map(|s| row(s, &body)).collect(),
                deletes: vec![],
            }];
            db.commit(&batch, OPEN, 1).unwrap();
        }
        let per_row = db.bytes() / 30;
        let bounds = Bounds {
            max_bytes: per_row * 15,
            older_than_ms: None,
        };
        let done = db.commit(&[], bounds, 2).unwrap();
        assert!(db.bytes() <= per_row * 15);
        assert_eq!(done.dropped_for_size, 15);
        // All of a's first ten, then the first five of b's.
        assert_eq!(done.dropped["a"], (0..10).collect::<Vec<_>>());
        assert_eq!(done.dropped["b"], (10..15).collect::<Vec<_>>());
        assert_eq!(db.rows(), 15);
    }

    #[test]
    fn rows_older_than_the_age_bound_go() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, _) = Db::open(&dir.path().join("t.db")).unwrap();
        for (t, seq) in [(100, 0), (200, 1), (300, 2)] {
            let batch = [DeviceBatch {
                device: "a",
                inserts: vec![row(seq, "{}")],
                deletes: vec![],
            }];
            db.commit(&batch, OPEN, t).unwrap();
        }
        let bounds = Bounds {
            max_bytes: u64::MAX,
            older_than_ms: Some(250),
        };
        let done = db.commit(&[], bounds, 400).unwrap();
        assert_eq!(done.dropped["a"], [0, 1]);
        assert_eq!(done.dropped_for_age, 2);
        assert_eq!(db.rows(), 1);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_reported_corrupt_and_moves_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = Db::open(&path).unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        let moved = move_aside(&path, 42).unwrap();
        assert!(moved.ends_with("t.db.corrupt-42"));
        assert!(!path.exists());
        Db::open(&path).unwrap();
    }

    #[test]
    fn a_store_from_a_newer_version_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        assert!(matches!(Db::open(&path), Err(Error::Newer(99))));
    }
}
