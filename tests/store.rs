//! The durable telemetry store with the real binary: readings taken while the hub is away go
//! into a real SQLite file, survive kill -9 and SIGTERM, and all arrive after the restart; a
//! damaged file is moved aside; a full store drops its oldest readings; a file that cannot be
//! written leaves the readings in memory and the daemon running.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leafgate::hub::d2c;
use leafgate::hub::sas::Key;
use leafgate_emulator::{Emulator, EmulatorConfig, Fault, Target};
use leafgate_sim::modbus::{Registers, TcpServer};
use leafgate_testkit::daemon::Log;

use crate::logscan::{Scanned, run_command};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WAIT: Duration = Duration::from_secs(60);

/// The emulated hub, a simulated PLC with one unit per meter, and a temp dir for the config and
/// the store.
struct Site {
    emu: Emulator,
    plc: TcpServer,
    regs: Registers,
    dir: tempfile::TempDir,
    meters: usize,
    interval_ms: u32,
}

fn meter(i: usize) -> String {
    format!("meter-{i}")
}

impl Site {
    async fn start(meters: usize) -> Site {
        let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
        let units: Vec<u8> = (1..=meters).map(|u| u8::try_from(u).unwrap()).collect();
        let regs = Registers::with_units(units.iter().copied());
        for &u in &units {
            regs.set_input(
                u,
                0,
                &(0..120).map(|r| r * 10 + u16::from(u)).collect::<Vec<_>>(),
            );
        }
        let plc = TcpServer::start(regs.clone()).await.unwrap();
        for i in 0..meters {
            emu.add_device(&meter(i), Key::from_base64(KEY).unwrap());
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), emu.ca_pem()).unwrap();
        Site {
            emu,
            plc,
            regs,
            dir,
            meters,
            interval_ms: 100,
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("telemetry.db")
    }

    /// Writes the config: every meter polls `fields` input registers every `interval_ms`; `telemetry`
    /// adds `[telemetry]` keys (the store is in the temp dir).
    fn config(&self, telemetry: &str, fields: u16) -> PathBuf {
        let mut text = format!(
            "[hub]\nhostname = \"localhost\"\nport = {}\nca_file = \"{}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 500\nmax_connects_per_s = 1000\n\n[telemetry]\nstore = \"{}\"\nmax_messages_per_s = 5000\n{telemetry}\n\n[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\n",
            self.emu.mqtt_addr().port(),
            self.dir.path().join("ca.pem").display(),
            self.store().display(),
            self.plc.addr(),
        );
        let fields: Vec<String> = (0..fields)
            .map(|f| format!("{{ name = \"register_{f:03}_of_the_meter\", address = {f} }}"))
            .collect();
        for i in 0..self.meters {
            let _ = write!(
                text,
                "\n[[device]]\nid = \"{}\"\nshared_access_key = \"{KEY}\"\nbus = \"plc\"\nunit = {}\n[[device.telemetry]]\nname = \"power\"\ninterval_ms = {}\n[[device.telemetry.step]]\nop = \"read\"\ntable = \"input\"\naddress = 0\nfields = [{}]\n",
                meter(i),
                i + 1,
                self.interval_ms,
                fields.join(", ")
            );
        }
        let path = self.dir.path().join("leafgate.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn run(&self, config: &Path) -> Scanned {
        Scanned::spawn(run_command(config), Log::Capture)
    }
}

/// A reading as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredReading {
    device: String,
    seq: u64,
    mid: String,
    bytes: u64,
}

/// Everything committed to the store, oldest first, read with a connection of our own (WAL
/// lets a reader see every committed transaction while leafgate writes).
fn stored(path: &Path) -> Vec<StoredReading> {
    if !path.exists() {
        return Vec::new();
    }
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let Ok(mut stmt) = conn.prepare(
        "SELECT d.id, m.seq, m.topic, length(m.topic) + length(m.body) FROM messages m JOIN devices d ON d.key = m.device ORDER BY m.id",
    ) else {
        // Not created yet.
        return Vec::new();
    };
    stmt.query_map([], |r| {
        let topic: String = r.get(2)?;
        Ok((r.get(0)?, r.get(1)?, topic, r.get(3)?))
    })
    .unwrap()
    .map(|row| {
        let (device, seq, topic, bytes): (String, i64, String, i64) = row.unwrap();
        let (_, props) = d2c::parse(&topic).unwrap();
        let mid = props
            .into_iter()
            .find(|(k, _)| k == "$.mid")
            .map(|(_, v)| v)
            .unwrap();
        StoredReading {
            device,
            seq: u64::try_from(seq).unwrap(),
            mid,
            bytes: u64::try_from(bytes).unwrap(),
        }
    })
    .collect()
}

/// Waits until the store holds at least `n` readings. The file is the only witness of a
/// commit from outside, so this looks at it every 50 ms.
async fn wait_stored(path: &Path, n: usize, daemon: &mut Scanned) -> Vec<StoredReading> {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        daemon.check_alive().unwrap();
        let rows = stored(path);
        if rows.len() >= n {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "only {} reading(s) stored within {WAIT:?}; log:\n{}",
            rows.len(),
            daemon.tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn by_device(rows: &[StoredReading]) -> BTreeMap<String, Vec<StoredReading>> {
    let mut out: BTreeMap<String, Vec<StoredReading>> = BTreeMap::new();
    for r in rows {
        out.entry(r.device.clone()).or_default().push(r.clone());
    }
    out
}

/// The message ids `device` has received so far, in arrival order.
fn received_mids(emu: &Emulator, device: &str) -> Vec<String> {
    emu.telemetry(device)
        .into_iter()
        .filter_map(|m| {
            m.system_properties
                .into_iter()
                .find(|(k, _)| k == "$.mid")
                .map(|(_, v)| v)
        })
        .collect()
}

/// Waits until every reading in `rows` has reached the hub, and checks each device's arrived
/// first and in order, before any reading taken after the restart.
async fn assert_all_arrive_in_order(emu: &Emulator, rows: &[StoredReading]) {
    for (device, rows) in by_device(rows) {
        let mids: Vec<&str> = rows.iter().map(|r| r.mid.as_str()).collect();
        emu.wait_telemetry(&device, mids.len() as u64, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{device}: {e}"));
        let received = received_mids(emu, &device);
        let first: Vec<&str> = received
            .iter()
            .take(mids.len())
            .map(String::as_str)
            .collect();
        assert_eq!(
            first, mids,
            "{device}: the stored readings arrive first, each once, in order"
        );
    }
}

#[tokio::test]
async fn every_committed_reading_arrives_after_a_kill_9_and_a_restart() {
    let site = Site::start(20).await;
    let config = site.config("commit_interval_ms = 200", 2);
    let away = site.emu.inject_fault(Fault::RefuseTcp, None).await;
    let mut daemon = site.run(&config);
    wait_stored(&site.store(), 1000, &mut daemon).await;
    daemon.kill().unwrap();
    // What was committed when it died: all of it must arrive.
    let rows = stored(&site.store());
    assert!(rows.len() >= 1000, "{}", rows.len());
    for (device, rows) in by_device(&rows) {
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{device}: stored without gaps: {seqs:?}"
        );
    }
    site.emu.clear_fault(away).await;
    let mut daemon = site.run(&config);
    daemon
        .wait_line("reading(s) of 20 device(s)", WAIT)
        .await
        .unwrap();
    assert_all_arrive_in_order(&site.emu, &rows).await;
    // Each delivered reading leaves the file.
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let left = stored(&site.store());
        if !left.iter().any(|r| rows.contains(r)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "still stored: {}",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.check_alive().unwrap();
}

#[tokio::test]
async fn sigterm_commits_the_readings_taken_since_the_last_commit() {
    let site = Site::start(4).await;
    // No commit would come for a minute: only the one at SIGTERM stores anything.
    let config = site.config("commit_interval_ms = 60000", 2);
    let away = site.emu.inject_fault(Fault::RefuseTcp, None).await;
    let mut daemon = site.run(&config);
    daemon.wait_line("telemetry store", WAIT).await.unwrap();
    // Twenty polls answered by the PLC.
    site.regs.wait_requests(20).await;
    assert!(stored(&site.store()).is_empty(), "committed before SIGTERM");
    assert_eq!(daemon.stop(Duration::from_secs(20)).unwrap(), Some(0));
    let rows = stored(&site.store());
    assert!(rows.len() >= 12, "only {} stored at SIGTERM", rows.len());
    assert!(daemon.log().contains("reading(s) kept for the next start"));
    site.emu.clear_fault(away).await;
    let _daemon = site.run(&config);
    assert_all_arrive_in_order(&site.emu, &rows).await;
}

#[tokio::test]
async fn a_damaged_store_is_moved_aside_and_a_fresh_one_started() {
    let site = Site::start(1).await;
    let config = site.config("", 2);
    let garbage = vec![0x5au8; 16384];
    std::fs::write(site.store(), &garbage).unwrap();
    let mut daemon = site.run(&config);
    let line = daemon.wait_line("moved it aside", WAIT).await.unwrap();
    assert!(line.contains("ERROR") || line.contains("error"), "{line}");
    site.emu.wait_telemetry(&meter(0), 3, WAIT).await.unwrap();
    let aside: Vec<PathBuf> = std::fs::read_dir(site.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("telemetry.db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage, "kept as it was");
    daemon.check_alive().unwrap();
}

#[tokio::test]
async fn a_full_store_drops_the_oldest_readings_first_and_says_so() {
    let site = Site::start(10).await;
    // Readings of ~3.5 kB: a 1 MB store holds about 300.
    let config = site.config("commit_interval_ms = 100\nstore_max_mb = 1", 100);
    let _away = site.emu.inject_fault(Fault::RefuseTcp, None).await;
    let mut daemon = site.run(&config);
    daemon.wait_line("dropped the", WAIT).await.unwrap();
    // Let it drop some more, then look: what is left is within the bound, and is each
    // device's newest readings, without holes.
    let taken = site.regs.request_count();
    site.regs.wait_requests(taken + 50).await;
    let rows = stored(&site.store());
    let bytes: u64 = rows.iter().map(|r| r.bytes + 48).sum();
    assert!(bytes <= 1_000_000, "{bytes} bytes stored");
    assert!(rows.len() > 100, "{}", rows.len());
    for (device, rows) in by_device(&rows) {
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        assert!(seqs[0] > 0, "{device}: its oldest readings went first");
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{device}: the newest are kept, without holes: {seqs:?}"
        );
    }
    daemon.check_alive().unwrap();
}

/// The file size limit (RLIMIT_FSIZE) makes the store's writes fail as a full disk does,
/// for leafgate alone.
#[tokio::test]
async fn a_store_that_cannot_be_written_keeps_readings_in_memory_until_the_hub_returns() {
    use std::os::unix::process::CommandExt as _;
    let site = Site::start(2).await;
    let config = site.config("commit_interval_ms = 100", 100);
    let away = site.emu.inject_fault(Fault::RefuseTcp, None).await;
    let mut command = run_command(&config);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut daemon = Scanned::spawn(command, Log::Capture);
    daemon.wait_line("cannot write", WAIT).await.unwrap();
    // Polls go on while the file cannot be written.
    let taken = site.regs.request_count();
    site.regs.wait_requests(taken + 20).await;
    daemon.check_alive().unwrap();
    site.emu.clear_fault(away).await;
    for i in 0..2 {
        site.emu.wait_telemetry(&meter(i), 20, WAIT).await.unwrap();
        let mids = received_mids(&site.emu, &meter(i));
        let seqs: Vec<u64> = mids
            .iter()
            .map(|m| m.rsplit_once('-').unwrap().1.parse().unwrap())
            .collect();
        assert_eq!(
            seqs[0],
            0,
            "{}: the first reading arrives: {seqs:?}",
            meter(i)
        );
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{}: in order, none lost: {seqs:?}",
            meter(i)
        );
    }
    daemon.check_alive().unwrap();
}

#[tokio::test]
async fn sighup_with_changed_telemetry_groups_restarts_only_the_polling() {
    let site = Site::start(2).await;
    let config = site.config("", 2);
    let mut daemon = site.run(&config);
    for i in 0..2 {
        site.emu.wait_telemetry(&meter(i), 2, WAIT).await.unwrap();
    }
    let connects: Vec<u64> = (0..2)
        .map(|i| site.emu.device_stats(&meter(i)).connects_accepted)
        .collect();
    // The group reads one more register.
    site.config("", 3);
    daemon.signal(libc::SIGHUP).unwrap();
    daemon
        .wait_line(
            "devices: 0 kept, 0 restarted, 0 started, 0 stopped, 2 repolled",
            WAIT,
        )
        .await
        .unwrap();
    for (i, before) in connects.iter().enumerate() {
        let id = meter(i);
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            let got = site.emu.telemetry(&id);
            if got
                .iter()
                .any(|m| String::from_utf8_lossy(&m.body).contains("register_002_of_the_meter"))
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{id}: no reading of the new group"
            );
            site.emu
                .wait_telemetry(&id, got.len() as u64 + 1, WAIT)
                .await
                .unwrap();
        }
        let stats = site.emu.device_stats(&id);
        assert_eq!(
            stats.connects_accepted, *before,
            "{id}: the session was not restarted"
        );
    }
    daemon.check_alive().unwrap();
}

/// The outage: 100 meters each sending a reading a second, the hub gone for 60 s (every
/// connection dropped, every reconnect hung up on). Afterwards every reading arrives, in order
/// per device; a reading arrives twice only when its first copy's connection was dropped
/// before its PUBACK, and then with the same message id.
#[tokio::test]
async fn a_minute_long_hub_outage_loses_no_reading_of_a_hundred_devices() {
    const METERS: usize = 100;
    let mut site = Site::start(METERS).await;
    site.interval_ms = 1000;
    let config = site.config("", 2);
    let mut daemon = site.run(&config);
    for i in 0..METERS {
        site.emu.wait_telemetry(&meter(i), 1, WAIT).await.unwrap();
    }
    let polled_before = site.regs.request_count();
    let away = site
        .emu
        .inject_fault(Fault::Hangup(Target::All), None)
        .await;
    // Hung up on from now: the connections up now are dropped too.
    site.emu.drop_all_connections();
    // The outage is the scenario: a minute of readings with nowhere to go.
    tokio::time::sleep(Duration::from_secs(60)).await;
    daemon.check_alive().unwrap();
    let polled = site.regs.request_count();
    site.emu.clear_fault(away).await;
    // Wait until every meter has sent what it took during the outage and a little more.
    let taken_by_now = polled / METERS;
    // The bus, not the wall clock, sets how many readings the minute held: a loaded machine
    // polls a hundred meters more slowly than once a second.
    let during = (polled - polled_before) / METERS;
    assert!(
        during >= 10,
        "the outage held readings to buffer: {during} per meter"
    );
    for i in 0..METERS {
        let id = meter(i);
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            let seqs = seqs_of(&site.emu, &id);
            if seqs.iter().map(|(s, _)| *s).max().unwrap_or(0) as usize > taken_by_now {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{id}: still missing readings: {seqs:?}"
            );
            site.emu
                .wait_telemetry(&id, seqs.len() as u64 + 1, WAIT)
                .await
                .unwrap();
        }
    }
    for i in 0..METERS {
        let id = meter(i);
        let received = seqs_of(&site.emu, &id);
        let mut firsts: Vec<u64> = Vec::new();
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        for &(seq, connection) in &received {
            match seen.get(&seq) {
                None => {
                    seen.insert(seq, connection);
                    firsts.push(seq);
                }
                Some(first) => assert_ne!(
                    *first, connection,
                    "{id}: reading {seq} arrived twice on one connection"
                ),
            }
        }
        let last = *firsts.last().unwrap();
        assert_eq!(
            firsts,
            (firsts[0]..=last).collect::<Vec<_>>(),
            "{id}: every reading, once, in order"
        );
        assert!(
            last as usize > taken_by_now,
            "{id}: the outage's readings are there: {last} of {taken_by_now}"
        );
        assert!(
            site.emu.device_stats(&id).connects_accepted >= 2,
            "{id}: the outage dropped its connection"
        );
        let duplicates = received.len() - firsts.len();
        assert!(
            duplicates <= 4,
            "{id}: {duplicates} duplicates: at most a window's worth"
        );
    }
    daemon.check_alive().unwrap();
}

/// `device`'s readings as the hub received them: (reading number, connection), in arrival order.
fn seqs_of(emu: &Emulator, device: &str) -> Vec<(u64, u64)> {
    emu.telemetry(device)
        .into_iter()
        .map(|m| {
            let mid = m
                .system_properties
                .iter()
                .find(|(k, _)| k == "$.mid")
                .map(|(_, v)| v.clone())
                .unwrap();
            let seq = mid.rsplit_once('-').unwrap().1.parse().unwrap();
            (seq, m.connection)
        })
        .collect()
}
