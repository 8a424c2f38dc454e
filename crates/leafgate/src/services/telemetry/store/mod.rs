//! The durable side of telemetry: one SQLite file for the whole gateway, written by one
//! thread ("leafgate-store") so that neither a slow flash nor a full disk ever blocks a tokio
//! worker, a poll or a method.
//!
//! Every `commit_interval` the writer stores, in one transaction, the readings each device
//! took since the last commit and that the hub has not acknowledged yet, and deletes the rows
//! of readings acknowledged since. So a kill -9 or a power cut loses at most the readings of
//! the last commit interval that the hub had not acknowledged; a committed reading is sent
//! after the restart (with its original message id). The file is bounded by bytes and age;
//! past them the oldest readings of the whole gateway go first, counted and logged.
//!
//! When the file cannot be written (disk full, I/O error) readings stay in memory, bounded per
//! device, and the writer tries again every interval; a damaged file is moved aside and a
//! fresh one started. Neither stops the daemon or delays a method.
//!
//! - [`db`]: the SQLite file.

pub mod db;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::backlog::{Backlog, Dirty, Limits};
use db::{Bounds, Db, DeviceBatch, Stored};

/// How often the age bound is applied and the backlog's size is reported.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

/// How long the last commit may take at shutdown.
const CLOSE_TIME: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The SQLite file; `None`: readings are kept in memory only.
    pub path: Option<PathBuf>,
    pub commit_interval: Duration,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub limits: Limits,
}

/// The gateway's telemetry store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: Limits,
    registry: Arc<Registry>,
    /// To the writer thread; `None` without a store. The writer holds no handle, so when the
    /// last [`Store`] goes the channel closes and the writer commits and ends.
    tx: Option<Mutex<mpsc::Sender<Command>>>,
}

/// Every device's backlog: a restarted device carries on with its predecessor's.
type Registry = Mutex<HashMap<Arc<str>, Arc<Backlog>>>;

enum Command {
    Backlog {
        device: Arc<str>,
        reply: oneshot::Sender<Arc<Backlog>>,
    },
    Fetch {
        backlog: Arc<Backlog>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1_000_000.0)
}

impl Store {
    /// Starts the writer, which opens `settings.path` (moving a damaged file aside) before it
    /// answers anything. Returns at once.
    #[must_use]
    pub fn open(settings: Settings) -> Store {
        let registry = Arc::new(Registry::default());
        let limits = settings.limits;
        let Some(path) = settings.path.clone() else {
            log::info!("telemetry store: none configured; readings are kept in memory only");
            return Store {
                inner: Arc::new(Inner {
                    limits,
                    registry,
                    tx: None,
                }),
            };
        };
        let (tx, rx) = mpsc::channel();
        let writer_registry = registry.clone();
        let inner = Arc::new(Inner {
            limits,
            registry,
            tx: Some(Mutex::new(tx)),
        });
        let spawned = std::thread::Builder::new()
            .name("leafgate-store".into())
            .spawn(move || Writer::open(path, settings, writer_registry).run(&rx));
        if let Err(e) = spawned {
            log::error!(
                "telemetry store: cannot start its thread ({e}); readings are kept in memory only"
            );
        }
        Store { inner }
    }

    /// `device`'s backlog (the one it had before a restart, if any). Waits for the store to
    /// be open.
    pub async fn backlog(&self, device: Arc<str>) -> Arc<Backlog> {
        if let Some(b) = lock(&self.inner.registry).get(&device) {
            return b.clone();
        }
        if let Some(tx) = &self.inner.tx {
            let (reply, rx) = oneshot::channel();
            let sent = lock(tx).send(Command::Backlog {
                device: device.clone(),
                reply,
            });
            if sent.is_ok()
                && let Ok(b) = rx.await
            {
                return b;
            }
        }
        // No store, or its thread is gone: memory only.
        let mut registry = lock(&self.inner.registry);
        registry
            .entry(device.clone())
            .or_insert_with(|| Arc::new(Backlog::in_memory(device, self.inner.limits)))
            .clone()
    }

    /// Reads `backlog`'s next stored readings back into memory.
    ///
    /// # Errors
    /// When the file cannot be read right now (the reason, for the log). When the writer
    /// thread is gone (it never should be), the readings only in the file are given up (counted
    /// in the error) so the device's newer readings still go out.
    pub async fn fetch(&self, backlog: &Arc<Backlog>) -> Result<(), String> {
        let Some(tx) = &self.inner.tx else {
            return Ok(());
        };
        let (reply, rx) = oneshot::channel();
        let sent = lock(tx).send(Command::Fetch {
            backlog: backlog.clone(),
            reply,
        });
        match (sent, rx.await) {
            (Ok(()), Ok(result)) => result,
            _ => {
                let lost = backlog.store_lost();
                Err(format!(
                    "the store's writer has stopped; {lost} reading(s) only in the file are not sent"
                ))
            }
        }
    }

    /// Commits what is pending and closes the file (at shutdown, after every sender stopped).
    pub async fn close(&self) {
        let Some(tx) = &self.inner.tx else {
            return;
        };
        let (reply, rx) = oneshot::channel();
        if lock(tx).send(Command::Close { reply }).is_err() {
            return;
        }
        if tokio::time::timeout(CLOSE_TIME, rx).await.is_err() {
            log::error!(
                "telemetry store: the last commit did not finish within {} s; readings of the last commit interval may be lost",
                CLOSE_TIME.as_secs()
            );
        }
    }
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    settings: Settings,
    registry: Arc<Registry>,
    dirty: Arc<Dirty>,
    db: Option<Db>,
    /// What each device had in the file when it was opened, until its backlog is made.
    stored: HashMap<String, Stored>,
    /// The last commit failed (disk full, I/O error): said once, and again when it recovers.
    failing: bool,
    dropped: Dropped,
}

/// Readings the bounds dropped, reported at most once per [`HOUSEKEEPING`].
#[derive(Default)]
struct Dropped {
    for_size: u64,
    for_age: u64,
    since_start: u64,
    reported: Option<Instant>,
}

impl Writer {
    fn open(path: PathBuf, settings: Settings, registry: Arc<Registry>) -> Writer {
        let mut writer = Writer {
            path,
            settings,
            registry,
            dirty: Arc::new(Dirty::default()),
            db: None,
            stored: HashMap::new(),
            failing: false,
            dropped: Dropped::default(),
        };
        writer.open_db();
        writer
    }

    /// Opens the file, moving a damaged one aside and starting afresh.
    fn open_db(&mut self) {
        let path = self.path.display().to_string();
        if let Err(why) = usable(&self.path) {
            log::error!(
                "telemetry store {path}: {why}; readings are kept in memory only (up to {} per device) until leafgate restarts",
                self.settings.limits.memory
            );
            return;
        }
        let opened = match Db::open(&self.path) {
            Err(e) if e.is_corrupt() => match db::move_aside(&self.path, now_ms()) {
                Ok(to) => {
                    log::error!(
                        "telemetry store {path}: {e}; moved it aside to {} and started a fresh one (the readings in it are not sent)",
                        to.display()
                    );
                    Db::open(&self.path)
                }
                Err(move_error) => {
                    log::error!(
                        "telemetry store {path}: {e}, and it cannot be moved aside ({move_error}); readings are kept in memory only until leafgate restarts"
                    );
                    return;
                }
            },
            other => other,
        };
        match opened {
            Ok((db, stored)) => {
                if db.rows() > 0 {
                    log::info!(
                        "telemetry store {path}: {} reading(s) of {} device(s) ({} MB) from before the restart, to be sent",
                        db.rows(),
                        stored.len(),
                        mb(db.bytes())
                    );
                } else {
                    log::info!("telemetry store {path}: open");
                }
                self.db = Some(db);
                self.stored = stored;
            }
            Err(e) => {
                log::error!(
                    "telemetry store {path}: cannot be opened ({e}); readings are kept in memory only (up to {} per device) until leafgate restarts",
                    self.settings.limits.memory
                );
            }
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<Command>) {
        let mut next_commit = Instant::now() + self.settings.commit_interval;
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        loop {
            let now = Instant::now();
            if now >= next_commit {
                let age_due = now >= next_housekeeping;
                self.commit(age_due);
                if age_due {
                    self.report();
                    next_housekeeping = now + HOUSEKEEPING;
                }
                next_commit = now + self.settings.commit_interval;
            }
            match rx.recv_timeout(next_commit.saturating_duration_since(Instant::now())) {
                Ok(Command::Backlog { device, reply }) => {
                    let _ = reply.send(self.backlog(device));
                }
                Ok(Command::Fetch { backlog, reply }) => {
                    let _ = reply.send(self.fetch(&backlog));
                }
                Ok(Command::Close { reply }) => {
                    self.commit(false);
                    self.report_left();
                    let _ = reply.send(());
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.commit(false);
                    return;
                }
            }
        }
    }

    fn backlog(&mut self, device: Arc<str>) -> Arc<Backlog> {
        let mut registry = lock(&self.registry);
        if let Some(b) = registry.get(&device) {
            return b.clone();
        }
        let limits = self.settings.limits;
        let b = if self.db.is_some() {
            let stored = self.stored.remove(&*device).unwrap_or_default();
            Backlog::new(
                device.clone(),
                limits,
                Some(self.dirty.clone()),
                stored.count,
                stored.last_seq,
            )
        } else {
            Backlog::in_memory(device.clone(), limits)
        };
        let b = Arc::new(b);
        registry.insert(device, b.clone());
        b
    }

    fn fetch(&mut self, backlog: &Arc<Backlog>) -> Result<(), String> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        let Some((after, limit)) = backlog.fetch_request() else {
            return Ok(());
        };
        match db.fetch(&backlog.device_id, after, limit) {
            Ok(rows) => {
                backlog.fetched(rows, limit);
                Ok(())
            }
            Err(e) if e.is_corrupt() => {
                self.replace_damaged(&e);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn commit(&mut self, age_due: bool) {
        let list = std::mem::take(&mut *lock(&self.dirty));
        let Some(db) = &mut self.db else {
            return;
        };
        if list.is_empty() && !age_due {
            return;
        }
        let batch: Vec<DeviceBatch<'_>> = list
            .iter()
            .map(|b| {
                let c = b.collect();
                DeviceBatch {
                    device: &b.device_id,
                    inserts: c.inserts,
                    deletes: c.deletes,
                }
            })
            .collect();
        let now = now_ms();
        let bounds = Bounds {
            max_bytes: self.settings.max_bytes,
            older_than_ms: age_due.then(|| {
                now.saturating_sub(
                    i64::try_from(self.settings.max_age.as_millis()).unwrap_or(i64::MAX),
                )
            }),
        };
        match db.commit(&batch, bounds, now) {
            Ok(done) => {
                for ((b, entry), ids) in list.iter().zip(&batch).zip(&done.ids) {
                    let seqs: Vec<u64> = entry.inserts.iter().map(|r| r.seq).collect();
                    b.stored(&seqs, ids);
                }
                if !done.dropped.is_empty() {
                    let registry = lock(&self.registry);
                    for (device, seqs) in &done.dropped {
                        if let Some(b) = registry.get(device.as_str()) {
                            b.dropped_from_store(seqs);
                        }
                    }
                }
                if self.failing {
                    self.failing = false;
                    log::warn!(
                        "telemetry store {}: writable again; readings go to the file again",
                        self.path.display()
                    );
                }
                self.note_dropped(
                    done.dropped_for_size,
                    done.dropped_for_age,
                    done.dropped.len(),
                );
            }
            Err(e) if e.is_corrupt() => {
                drop(batch);
                for b in &list {
                    // Deletes are moot: the file goes.
                    b.commit_failed(Vec::new());
                }
                self.replace_damaged(&e);
            }
            Err(e) => {
                let deletes: Vec<Vec<i64>> = batch.into_iter().map(|entry| entry.deletes).collect();
                for (b, deletes) in list.iter().zip(deletes) {
                    b.commit_failed(deletes);
                }
                if !self.failing {
                    self.failing = true;
                    log::error!(
                        "telemetry store {}: cannot write ({e}); readings are kept in memory (up to {} per device, the oldest dropped first) and written when the file can be written again",
                        self.path.display(),
                        self.settings.limits.memory
                    );
                }
            }
        }
    }

    /// The file turned out damaged while running: move it aside and start afresh. Readings
    /// only in it are lost (counted); those in memory are stored again.
    fn replace_damaged(&mut self, e: &db::Error) {
        self.db = None;
        let path = self.path.display().to_string();
        let lost: u64 = lock(&self.registry).values().map(|b| b.store_lost()).sum();
        match db::move_aside(&self.path, now_ms()) {
            Ok(to) => {
                log::error!(
                    "telemetry store {path}: {e}; moved it aside to {} and started a fresh one; {lost} reading(s) only in it are not sent",
                    to.display()
                );
                match Db::open(&self.path) {
                    Ok((db, _)) => self.db = Some(db),
                    Err(e) => log::error!(
                        "telemetry store {path}: cannot be opened ({e}); readings are kept in memory only until leafgate restarts"
                    ),
                }
            }
            Err(move_error) => log::error!(
                "telemetry store {path}: {e}, and it cannot be moved aside ({move_error}); readings are kept in memory only until leafgate restarts"
            ),
        }
        if self.db.is_none() {
            // The backlogs still list themselves for commits that will not come; memory
            // bounds them.
            lock(&self.dirty).clear();
        }
    }

    fn note_dropped(&mut self, for_size: u64, for_age: u64, devices: usize) {
        if for_size + for_age == 0 {
            return;
        }
        self.dropped.for_size += for_size;
        self.dropped.for_age += for_age;
        self.dropped.since_start += for_size + for_age;
        if self.dropped.reported.is_none() {
            log::warn!(
                "telemetry store {}: full ({} MB) or past its age bound ({} h): dropped the {} oldest reading(s) of {devices} device(s); further drops are reported once a minute",
                self.path.display(),
                mb(self.settings.max_bytes),
                self.settings.max_age.as_secs() / 3600,
                for_size + for_age,
            );
            self.dropped.reported = Some(Instant::now());
            self.dropped.for_size = 0;
            self.dropped.for_age = 0;
        }
    }

    /// Once per [`HOUSEKEEPING`]: the backlog's size while there is one, and drops since.
    fn report(&mut self) {
        let path = self.path.display();
        if self.dropped.for_size + self.dropped.for_age > 0 {
            log::warn!(
                "telemetry store {path}: dropped {} oldest reading(s) for size and {} for age in the last minute; {} since the start",
                self.dropped.for_size,
                self.dropped.for_age,
                self.dropped.since_start
            );
            self.dropped.for_size = 0;
            self.dropped.for_age = 0;
        }
        if let Some(db) = &self.db
            && db.rows() > 0
        {
            log::info!(
                "telemetry store {path}: {} reading(s) waiting for the hub ({} of {} MB)",
                db.rows(),
                mb(db.bytes()),
                mb(self.settings.max_bytes)
            );
        }
    }

    fn report_left(&self) {
        if let Some(db) = &self.db
            && db.rows() > 0
        {
            log::info!(
                "telemetry store {}: {} reading(s) kept for the next start",
                self.path.display(),
                db.rows()
            );
        }
    }
}

/// Whether `path` can hold the store: absent (it is created) or a regular file. A FIFO or a
/// device there would block the writer forever.
fn usable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err("is not a regular file".into()),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot be read ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::services::telemetry::backlog::Next;

    fn settings(path: Option<PathBuf>) -> Settings {
        Settings {
            path,
            commit_interval: Duration::from_secs(3600),
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(3600),
            limits: Limits {
                memory: 100,
                head: 4,
            },
        }
    }

    fn push(b: &Arc<Backlog>, n: usize) {
        for _ in 0..n {
            b.push(|seq| {
                (
                    format!("devices/d/messages/events/$.mid=r-{seq}"),
                    Bytes::new(),
                )
            });
        }
    }

    #[tokio::test]
    async fn readings_committed_at_close_are_there_after_reopening_and_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(settings(Some(path.clone())));
        let b = store.backlog("d".into()).await;
        assert!(
            Arc::ptr_eq(&b, &store.backlog("d".into()).await),
            "one per device"
        );
        push(&b, 10);
        store.close().await;

        let store = Store::open(settings(Some(path)));
        let b = store.backlog("d".into()).await;
        assert_eq!(b.len(), 10);
        let mut seqs = Vec::new();
        let mut cursor = None;
        loop {
            match b.next_after(cursor) {
                Next::Ready(p) => {
                    cursor = Some(p.seq);
                    seqs.push(p.seq);
                }
                Next::Fetch => store.fetch(&b).await.unwrap(),
                Next::Empty => break,
            }
        }
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
        // New readings number on from the stored ones.
        push(&b, 1);
        assert!(matches!(b.next_after(Some(9)), Next::Ready(p) if p.seq == 10));
    }

    #[tokio::test]
    async fn without_a_store_readings_stay_in_memory() {
        let store = Store::open(settings(None));
        let b = store.backlog("d".into()).await;
        push(&b, 3);
        store.close().await;
        assert_eq!(b.len(), 3);
        assert!(matches!(b.next_after(None), Next::Ready(p) if p.seq == 0));
    }

    #[tokio::test]
    async fn a_fifo_in_the_stores_place_is_not_opened_and_readings_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let store = Store::open(settings(Some(path)));
        let b = store.backlog("d".into()).await;
        push(&b, 2);
        store.close().await;
        assert_eq!(b.len(), 2);
    }
}
