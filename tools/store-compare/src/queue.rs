//! The durable telemetry queue, written once per store with the same shape:
//!
//! - messages keyed by a global id (monotonic, so "oldest" is the smallest id), with the device,
//!   the created time (ms), the topic properties and the JSON body;
//! - an index (device, id), so the sender reads the oldest K of one device in order;
//! - a meta row (count, payload bytes), kept in the same transactions, for the bounds;
//! - `append` and `delete` are one transaction each, whatever the number of messages;
//! - `append` enforces the bounds (total payload bytes, age) by dropping the oldest messages.

use std::error::Error;
use std::path::Path;

pub type R<T> = Result<T, Box<dyn Error>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub id: u64,
    pub device: u32,
    pub created: u64,
    pub props: Vec<u8>,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn payload_len(&self) -> u64 {
        (self.props.len() + self.body.len()) as u64
    }
}

/// Bounds of the queue: total payload bytes and age; past them the oldest messages go.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_age_ms: u64,
}

impl Limits {
    pub const NONE: Limits = Limits { max_bytes: u64::MAX, max_age_ms: u64::MAX };
}

/// A message as the gateway would queue it: properties ~100 B (percent-encoded property bag),
/// body ~200 B of JSON. Deterministic from (id, device, created), so a reader can check it.
pub fn make_msg(id: u64, device: u32, created: u64) -> Msg {
    let props = format!(
        "%24.ct=application%2Fjson&%24.ce=utf-8&%24.mid={id:020}&dev=leaf-{device:05}&schema=telemetry-v1"
    );
    let body = format!(
        "{{\"device\":\"leaf-{device:05}\",\"seq\":{id},\"ts\":{created},\"temperature\":{}.{},\
         \"humidity\":{}.{},\"pressure\":{},\"status\":\"ok\",\"registers\":[{},{},{},{}],\
         \"pad\":\"{:0>40}\"}}",
        15 + id % 20,
        id % 10,
        30 + id % 50,
        id % 10,
        990 + id % 40,
        id % 65536,
        (id * 7) % 65536,
        (id * 13) % 65536,
        (id * 31) % 65536,
        id
    );
    Msg { id, device, created, props: props.into_bytes(), body: body.into_bytes() }
}

pub trait Queue {
    /// Appends in one transaction, then drops the oldest messages past the limits (same
    /// transaction). Returns how many were dropped.
    fn append(&mut self, msgs: &[Msg], limits: Limits, now_ms: u64) -> R<u64>;
    /// The oldest `k` messages of `device` with an id above `after`, in id order.
    fn oldest(&mut self, device: u32, after: u64, k: usize) -> R<Vec<Msg>>;
    /// Deletes acknowledged messages in one transaction (ids already gone are skipped).
    fn delete(&mut self, acked: &[(u32, u64)]) -> R<()>;
    /// (count, payload bytes) from the meta row.
    fn meta(&mut self) -> R<(u64, u64)>;
    /// Every message in id order, and the number of index entries.
    fn scan(&mut self, f: &mut dyn FnMut(Msg)) -> R<u64>;
    /// The store's own consistency check: "ok" or what it found.
    fn check(&mut self) -> R<String>;
    /// Give free space back to the file system.
    fn compact(&mut self) -> R<()>;
    /// Bytes the store has on disk (all its files).
    fn disk_bytes(&self) -> u64;
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

// ------------------------------------------------------------------------------------------------
#[cfg(feature = "sqlite")]
pub mod sqlite {
    use super::*;
    use rusqlite::{Connection, OptionalExtension, params};

    pub struct Sqlite {
        conn: Connection,
        path: std::path::PathBuf,
    }

    impl Sqlite {
        /// `synchronous`: "NORMAL" or "FULL" (both in WAL mode).
        pub fn open(path: &Path, synchronous: &str) -> R<Sqlite> {
            let conn = Connection::open(path)?;
            let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
            if mode != "wal" {
                return Err(format!("journal_mode is {mode}").into());
            }
            conn.execute_batch(&format!(
                "PRAGMA synchronous={synchronous};
                 CREATE TABLE IF NOT EXISTS msg (
                     id INTEGER PRIMARY KEY, device INTEGER NOT NULL, created INTEGER NOT NULL,
                     props BLOB NOT NULL, body BLOB NOT NULL);
                 CREATE INDEX IF NOT EXISTS msg_device ON msg (device, id);
                 CREATE TABLE IF NOT EXISTS meta (k INTEGER PRIMARY KEY, count INTEGER NOT NULL,
                     bytes INTEGER NOT NULL);
                 INSERT OR IGNORE INTO meta VALUES (0, 0, 0);"
            ))?;
            Ok(Sqlite { conn, path: path.to_owned() })
        }
    }

    fn row_msg(r: &rusqlite::Row<'_>) -> rusqlite::Result<Msg> {
        Ok(Msg {
            id: r.get::<_, i64>(0)? as u64,
            device: r.get(1)?,
            created: r.get::<_, i64>(2)? as u64,
            props: r.get(3)?,
            body: r.get(4)?,
        })
    }

    impl Queue for Sqlite {
        fn append(&mut self, msgs: &[Msg], limits: Limits, now_ms: u64) -> R<u64> {
            let tx = self.conn.transaction()?;
            let mut bytes = 0;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO msg (id, device, created, props, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for m in msgs {
                    ins.execute(params![m.id as i64, m.device, m.created as i64, m.props, m.body])?;
                    bytes += m.payload_len();
                }
            }
            tx.prepare_cached("UPDATE meta SET count = count + ?1, bytes = bytes + ?2 WHERE k = 0")?
                .execute(params![msgs.len() as i64, bytes as i64])?;
            let mut dropped = 0;
            loop {
                let (count, total): (i64, i64) = tx
                    .prepare_cached("SELECT count, bytes FROM meta WHERE k = 0")?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                let oldest: Option<(i64, i64, i64)> = tx
                    .prepare_cached(
                        "SELECT id, created, length(props) + length(body) FROM msg ORDER BY id LIMIT 1",
                    )?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                let Some((id, created, len)) = oldest else { break };
                let too_old = now_ms.saturating_sub(created as u64) > limits.max_age_ms;
                if count == 0 || ((total as u64) <= limits.max_bytes && !too_old) {
                    break;
                }
                tx.prepare_cached("DELETE FROM msg WHERE id = ?1")?.execute([id])?;
                tx.prepare_cached("UPDATE meta SET count = count - 1, bytes = bytes - ?1 WHERE k = 0")?
                    .execute([len])?;
                dropped += 1;
            }
            tx.commit()?;
            Ok(dropped)
        }

        fn oldest(&mut self, device: u32, after: u64, k: usize) -> R<Vec<Msg>> {
            let mut st = self.conn.prepare_cached(
                "SELECT id, device, created, props, body FROM msg
                 WHERE device = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let rows = st.query_map(params![device, after as i64, k as i64], row_msg)?;
            Ok(rows.collect::<Result<_, _>>()?)
        }

        fn delete(&mut self, acked: &[(u32, u64)]) -> R<()> {
            let tx = self.conn.transaction()?;
            let (mut n, mut bytes) = (0i64, 0i64);
            {
                let mut del = tx.prepare_cached(
                    "DELETE FROM msg WHERE id = ?1 RETURNING length(props) + length(body)",
                )?;
                for &(_, id) in acked {
                    if let Some(len) =
                        del.query_row([id as i64], |r| r.get::<_, i64>(0)).optional()?
                    {
                        n += 1;
                        bytes += len;
                    }
                }
            }
            tx.prepare_cached("UPDATE meta SET count = count - ?1, bytes = bytes - ?2 WHERE k = 0")?
                .execute([n, bytes])?;
            tx.commit()?;
            Ok(())
        }

        fn meta(&mut self) -> R<(u64, u64)> {
            Ok(self.conn.query_row("SELECT count, bytes FROM meta WHERE k = 0", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?)
        }

        fn scan(&mut self, f: &mut dyn FnMut(Msg)) -> R<u64> {
            let mut st =
                self.conn.prepare("SELECT id, device, created, props, body FROM msg ORDER BY id")?;
            for m in st.query_map([], row_msg)? {
                f(m?);
            }
            // Count through the index, so a broken index shows.
            let idx: i64 = self.conn.query_row(
                "SELECT count(*) FROM msg INDEXED BY msg_device WHERE device >= 0",
                [],
                |r| r.get(0),
            )?;
            Ok(idx as u64)
        }

        fn check(&mut self) -> R<String> {
            let mut st = self.conn.prepare("PRAGMA quick_check")?;
            let lines: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok(lines.join("; "))
        }

        fn compact(&mut self) -> R<()> {
            self.conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
            Ok(())
        }

        fn disk_bytes(&self) -> u64 {
            let wal = format!("{}-wal", self.path.display());
            file_len(&self.path) + file_len(Path::new(&wal))
        }
    }
}

// ------------------------------------------------------------------------------------------------
#[cfg(feature = "redb")]
pub mod redb_q {
    use super::*;
    use redb::{
        Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    };

    /// id -> (device, created, props, body)
    const MSGS: TableDefinition<'_, u64, (u32, u64, &[u8], &[u8])> = TableDefinition::new("msgs");
    /// (device, id) -> ()
    const BY_DEV: TableDefinition<'_, (u32, u64), ()> = TableDefinition::new("by_dev");
    /// 0 -> (count, bytes)
    const META: TableDefinition<'_, u8, (u64, u64)> = TableDefinition::new("meta");

    pub struct Redb {
        db: Database,
        path: std::path::PathBuf,
        quick_repair: bool,
    }

    impl Redb {
        /// `quick_repair`: redb's option that saves the allocator state at each commit, so an
        /// open after a crash need not walk the whole file (slower commits).
        pub fn open(path: &Path, quick_repair: bool, check_on_open: bool) -> R<Redb> {
            let mut builder = Database::builder();
            builder.set_check_integrity_on_open(check_on_open);
            // redb's page cache defaults to 1 GiB; REDB_CACHE_MIB bounds it (for the RSS figure).
            if let Some(mib) = std::env::var("REDB_CACHE_MIB").ok().and_then(|v| v.parse::<usize>().ok()) {
                builder.set_cache_size(mib << 20);
            }
            let db = builder.create(path)?;
            let txn = db.begin_write()?;
            {
                txn.open_table(MSGS)?;
                txn.open_table(BY_DEV)?;
                let mut meta = txn.open_table(META)?;
                if meta.get(0)?.is_none() {
                    meta.insert(0, (0, 0))?;
                }
            }
            txn.commit()?;
            Ok(Redb { db, path: path.to_owned(), quick_repair })
        }

        fn begin_write(&self) -> R<redb::WriteTransaction> {
            let mut txn = self.db.begin_write()?;
            txn.set_quick_repair(self.quick_repair);
            Ok(txn) // durability: the default, Durability::Immediate (fsync at commit)
        }
    }

    impl Queue for Redb {
        fn append(&mut self, msgs: &[Msg], limits: Limits, now_ms: u64) -> R<u64> {
            let txn = self.begin_write()?;
            let mut dropped = 0;
            {
                let mut t = txn.open_table(MSGS)?;
                let mut idx = txn.open_table(BY_DEV)?;
                let mut meta = txn.open_table(META)?;
                let (mut count, mut bytes) = meta.get(0)?.ok_or("no meta")?.value();
                for m in msgs {
                    t.insert(m.id, (m.device, m.created, &m.props[..], &m.body[..]))?;
                    idx.insert((m.device, m.id), ())?;
                    count += 1;
                    bytes += m.payload_len();
                }
                loop {
                    let (id, device, created, len) = match t.first()? {
                        None => break,
                        Some((k, v)) => {
                            let (d, c, p, b) = v.value();
                            (k.value(), d, c, (p.len() + b.len()) as u64)
                        }
                    };
                    let too_old = now_ms.saturating_sub(created) > limits.max_age_ms;
                    if bytes <= limits.max_bytes && !too_old {
                        break;
                    }
                    t.remove(id)?;
                    idx.remove((device, id))?;
                    count -= 1;
                    bytes -= len;
                    dropped += 1;
                }
                meta.insert(0, (count, bytes))?;
            }
            txn.commit()?;
            Ok(dropped)
        }

        fn oldest(&mut self, device: u32, after: u64, k: usize) -> R<Vec<Msg>> {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(MSGS)?;
            let idx = txn.open_table(BY_DEV)?;
            let mut out = Vec::with_capacity(k);
            for e in idx.range((device, after.saturating_add(1))..=(device, u64::MAX))?.take(k) {
                let id = e?.0.value().1;
                let v = t.get(id)?.ok_or("index entry without message")?;
                let (d, created, p, b) = v.value();
                out.push(Msg { id, device: d, created, props: p.to_vec(), body: b.to_vec() });
            }
            Ok(out)
        }

        fn delete(&mut self, acked: &[(u32, u64)]) -> R<()> {
            let txn = self.begin_write()?;
            {
                let mut t = txn.open_table(MSGS)?;
                let mut idx = txn.open_table(BY_DEV)?;
                let mut meta = txn.open_table(META)?;
                let (mut count, mut bytes) = meta.get(0)?.ok_or("no meta")?.value();
                for &(device, id) in acked {
                    let len = match t.remove(id)? {
                        Some(v) => {
                            let (_, _, p, b) = v.value();
                            (p.len() + b.len()) as u64
                        }
                        None => continue,
                    };
                    idx.remove((device, id))?;
                    count -= 1;
                    bytes -= len;
                }
                meta.insert(0, (count, bytes))?;
            }
            txn.commit()?;
            Ok(())
        }

        fn meta(&mut self) -> R<(u64, u64)> {
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            Ok(meta.get(0)?.ok_or("no meta")?.value())
        }

        fn scan(&mut self, f: &mut dyn FnMut(Msg)) -> R<u64> {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(MSGS)?;
            for e in t.iter()? {
                let (k, v) = e?;
                let (device, created, p, b) = v.value();
                f(Msg { id: k.value(), device, created, props: p.to_vec(), body: b.to_vec() });
            }
            Ok(txn.open_table(BY_DEV)?.len()?)
        }

        fn check(&mut self) -> R<String> {
            Ok(if self.db.check_integrity()? { "ok".into() } else { "repaired".into() })
        }

        fn compact(&mut self) -> R<()> {
            while self.db.compact(redb::CompactionMode::Maximum)? {}
            Ok(())
        }

        fn disk_bytes(&self) -> u64 {
            file_len(&self.path)
        }
    }
}
