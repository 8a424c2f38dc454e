//! store-compare: measures SQLite (WAL) and redb as the gateway's durable telemetry queue.
//! Evidence, not product code. Commands (STORE is sqlite-normal, sqlite-full, redb or redb-qr):
//!
//!   steady  STORE BATCH MESSAGES [DEVICES] [WINDOW]   cost per message stored, read and deleted
//!   fill    STORE PATH MESSAGES DEVICES BATCH [MAX_MIB] build a queue of MESSAGES (ids 1..),
//!                                                      dropping the oldest past MAX_MIB of payload
//!   space   STORE PATH DEVICES                          sizes: full, drained, refilled, compacted
//!   crash   STORE BATCH TRIALS DEVICES [PREFILL COUNT]  kill -9 a writer, reopen, verify
//!   corrupt STORE SRC                                   damage copies of SRC, try to open them
//!
//! `child` and `probe` are the sub-processes of `crash` and `corrupt`.

mod queue;

use queue::{Limits, Msg, Queue, R, make_msg};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `created` of the messages of `fill` and `crash` (so a reader can rebuild them).
const BASE_MS: u64 = 1_765_000_000_000;

fn open_store(store: &str, path: &Path, check_on_open: bool) -> R<Box<dyn Queue>> {
    Ok(match store {
        "sqlite-normal" => Box::new(queue::sqlite::Sqlite::open(path, "NORMAL")?),
        "sqlite-full" => Box::new(queue::sqlite::Sqlite::open(path, "FULL")?),
        "redb" => Box::new(queue::redb_q::Redb::open(path, false, check_on_open)?),
        "redb-qr" => Box::new(queue::redb_q::Redb::open(path, true, check_on_open)?),
        _ => return Err(format!("unknown store {store}").into()),
    })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// (user + system CPU seconds, peak RSS in MiB) of this process so far.
fn rusage() -> (f64, f64) {
    // SAFETY: getrusage writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(u.ru_utime) + secs(u.ru_stime), u.ru_maxrss as f64 / 1024.0)
}

/// Bytes this process has caused to be written to the block device (Linux /proc/self/io), for
/// write amplification: what the flash will see.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

fn scratch_dir(tag: &str) -> R<PathBuf> {
    let base = std::env::var_os("STORE_DIR").map(PathBuf::from).unwrap_or(std::env::temp_dir());
    let dir = base.join(format!("store-compare-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn device_of(id: u64, devices: u32) -> u32 {
    ((id - 1) % devices as u64) as u32
}

// ------------------------------------------------------------------------------------------------
/// The gateway's loop, sped up: the writer appends BATCH messages per commit (round-robin over the
/// devices); the sender reads the oldest WINDOW of a device once it has that many unread, takes
/// the PUBACK at once, and deletes acked messages in commits of BATCH. Every message is stored,
/// read once and deleted.
fn steady(store: &str, batch: usize, messages: u64, devices: u32, window: usize) -> R<()> {
    let dir = scratch_dir("steady")?;
    let mut q = open_store(store, &dir.join("q.db"), false)?;
    let (cpu0, _) = rusage();
    let w0 = written_bytes();
    let t0 = Instant::now();
    let mut unread = vec![0usize; devices as usize];
    let mut cursor = vec![0u64; devices as usize];
    let mut acked: Vec<(u32, u64)> = Vec::new();
    let mut commits = 0u64;
    let mut next_id = 1u64;
    let read = |q: &mut Box<dyn Queue>, dev: u32, cursor: &mut [u64], acked: &mut Vec<_>| -> R<usize> {
        let got = q.oldest(dev, cursor[dev as usize], window)?;
        if let Some(last) = got.last() {
            cursor[dev as usize] = last.id;
        }
        acked.extend(got.iter().map(|m| (m.device, m.id)));
        Ok(got.len())
    };
    while next_id <= messages {
        let now = now_ms();
        let end = (next_id + batch as u64).min(messages + 1);
        let msgs: Vec<Msg> =
            (next_id..end).map(|id| make_msg(id, device_of(id, devices), now)).collect();
        next_id = end;
        q.append(&msgs, Limits::NONE, now)?;
        commits += 1;
        for m in &msgs {
            let d = m.device as usize;
            unread[d] += 1;
            if unread[d] >= window {
                unread[d] -= read(&mut q, m.device, &mut cursor, &mut acked)?;
            }
        }
        while acked.len() >= batch {
            let rest = acked.split_off(batch);
            q.delete(&acked)?;
            commits += 1;
            acked = rest;
        }
    }
    for dev in 0..devices {
        while unread[dev as usize] > 0 {
            unread[dev as usize] -= read(&mut q, dev, &mut cursor, &mut acked)?;
        }
    }
    for chunk in acked.chunks(batch) {
        q.delete(chunk)?;
        commits += 1;
    }
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = rusage();
    let (left, _) = q.meta()?;
    if left != 0 {
        return Err(format!("{left} messages left after the run").into());
    }
    drop(q); // SQLite checkpoints the WAL and removes it here: count those writes too
    let written = written_bytes() - w0;
    let per = |s: f64| s * 1e6 / messages as f64;
    println!(
        "{store}\tbatch={batch}\tmessages={messages}\tcommits={commits}\twall_s={wall:.2}\tcpu_s={:.2}\
         \twall_us_per_msg={:.1}\tcpu_us_per_msg={:.1}\tpeak_rss_mib={rss:.0}\tdisk_write_B_per_msg={:.0}",
        cpu1 - cpu0,
        per(wall),
        per(cpu1 - cpu0),
        written as f64 / messages as f64
    );
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

// ------------------------------------------------------------------------------------------------
fn fill(store: &str, path: &Path, messages: u64, devices: u32, batch: usize, limits: Limits) -> R<()> {
    let mut q = open_store(store, path, false)?;
    let (cpu0, _) = rusage();
    let t0 = Instant::now();
    let (mut id, mut dropped) = (1, 0);
    while id <= messages {
        let end = (id + batch as u64).min(messages + 1);
        let msgs: Vec<Msg> =
            (id..end).map(|i| make_msg(i, device_of(i, devices), BASE_MS + i)).collect();
        dropped += q.append(&msgs, limits, now_ms())?;
        id = end;
    }
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = rusage();
    let (count, bytes) = q.meta()?;
    let open_size = q.disk_bytes();
    drop(q);
    let closed = std::fs::metadata(path)?.len();
    println!(
        "{store}\tfill messages={count} dropped_oldest={dropped} payload_mib={:.1} wall_s={wall:.1} cpu_s={:.1} peak_rss_mib={rss:.0}\
         \n{store}\ton disk while open (db+wal) = {:.1} MiB = {:.0} B/msg; after close = {:.1} MiB = {:.0} B/msg \
         (payload {:.0} B/msg)",
        mib(bytes),
        cpu1 - cpu0,
        mib(open_size),
        open_size as f64 / count as f64,
        mib(closed),
        closed as f64 / count as f64,
        bytes as f64 / count as f64
    );
    Ok(())
}

/// Drain the sender's way (oldest 100 per device, deletes in commits of 1,000).
fn drain(q: &mut Box<dyn Queue>, devices: u32) -> R<u64> {
    let mut cursor = vec![0u64; devices as usize];
    let mut acked = Vec::new();
    let mut total = 0;
    loop {
        let mut got_any = false;
        for dev in 0..devices {
            let got = q.oldest(dev, cursor[dev as usize], 100)?;
            if let Some(last) = got.last() {
                cursor[dev as usize] = last.id;
                got_any = true;
            }
            acked.extend(got.iter().map(|m| (m.device, m.id)));
            if acked.len() >= 1000 {
                total += acked.len() as u64;
                q.delete(&acked)?;
                acked.clear();
            }
        }
        if !got_any {
            break;
        }
    }
    total += acked.len() as u64;
    q.delete(&acked)?;
    Ok(total)
}

fn space(store: &str, path: &Path, devices: u32) -> R<()> {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    let mut q = open_store(store, path, false)?;
    let (count, _) = q.meta()?;
    println!("{store}\tclean open of {count} messages: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let full = q.disk_bytes();
    let t = Instant::now();
    let n = drain(&mut q, devices)?;
    println!(
        "{store}\tdrained {n} in {:.1} s ({:.1} us/msg); on disk full {:.1} MiB, drained (open) {:.1} MiB",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() * 1e6 / n as f64,
        mib(full),
        mib(q.disk_bytes())
    );
    drop(q);
    println!("{store}\tdrained, after close: {:.1} MiB", mib(size(path)));
    let mut q = open_store(store, path, false)?;
    let mut id = count + 1;
    while id <= 2 * count {
        let end = (id + 1000).min(2 * count + 1);
        let msgs: Vec<Msg> =
            (id..end).map(|i| make_msg(i, device_of(i, devices), BASE_MS + i)).collect();
        q.append(&msgs, Limits::NONE, now_ms())?;
        id = end;
    }
    println!("{store}\trefilled with {count} new ids: {:.1} MiB (space reused if ~ full size)", mib(q.disk_bytes()));
    drain(&mut q, devices)?;
    let t = Instant::now();
    q.compact()?;
    println!(
        "{store}\tdrained again and compacted in {:.2} s: {:.1} MiB open",
        t.elapsed().as_secs_f64(),
        mib(q.disk_bytes())
    );
    drop(q);
    println!("{store}\tafter close: {:.2} MiB", mib(size(path)));
    let (_, rss) = rusage();
    println!("{store}\tpeak rss of this run {rss:.0} MiB");
    Ok(())
}

// ------------------------------------------------------------------------------------------------
/// The writer's next commit from state (lo, hi) = ids present: append BATCH while fewer than
/// base + 2*BATCH are queued, else delete the oldest BATCH. Parent and child share it.
fn next_state(lo: u64, hi: u64, batch: u64, base: u64) -> (u64, u64) {
    if hi + 1 - lo < base + 2 * batch { (lo, hi + batch) } else { (lo + batch, hi) }
}

fn child(store: &str, path: &Path, batch: u64, devices: u32, lo0: u64, hi0: u64) -> R<()> {
    let mut q = open_store(store, path, false)?;
    let base = hi0 + 1 - lo0;
    let (mut lo, mut hi) = (lo0, hi0);
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    loop {
        let (nlo, nhi) = next_state(lo, hi, batch, base);
        if nhi > hi {
            let msgs: Vec<Msg> =
                (hi + 1..=nhi).map(|i| make_msg(i, device_of(i, devices), BASE_MS + i)).collect();
            q.append(&msgs, Limits::NONE, now_ms())?;
        } else {
            let acked: Vec<(u32, u64)> = (lo..nlo).map(|i| (device_of(i, devices), i)).collect();
            q.delete(&acked)?;
        }
        (lo, hi) = (nlo, nhi);
        writeln!(out, "{lo} {hi}")?; // after the commit returned
        out.flush()?;
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Reopen after the kill and check everything: the ids are one contiguous range that is the
/// last state the child reported or the one after it (a commit that returned but was not yet
/// printed), every message is byte-identical to what was written, the index and the meta row
/// agree, and the store's own check passes.
fn verify(store: &str, path: &Path, devices: u32, last: (u64, u64), batch: u64, base: u64) -> R<(f64, f64, String)> {
    let t = Instant::now();
    let mut q = open_store(store, path, false)?;
    let (count, bytes) = q.meta()?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let (mut n, mut sum, mut first, mut prev, mut bad) = (0u64, 0u64, None, 0u64, 0u64);
    let idx = q.scan(&mut |m| {
        if first.is_none() {
            first = Some(m.id);
        } else if m.id != prev + 1 {
            bad += 1;
        }
        prev = m.id;
        if m != make_msg(m.id, device_of(m.id, devices), BASE_MS + m.id) {
            bad += 1;
        }
        n += 1;
        sum += m.payload_len();
    })?;
    let state = match first {
        Some(lo) => (lo, prev),
        None => (last.0, last.0 - 1),
    };
    let t = Instant::now();
    let check = q.check()?;
    let check_ms = t.elapsed().as_secs_f64() * 1e3;
    let next = next_state(last.0, last.1, batch, base);
    let mut problems = Vec::new();
    if state != last && state != next {
        problems.push(format!("state {state:?}, child reported {last:?} (next {next:?})"));
    }
    if bad > 0 {
        problems.push(format!("{bad} messages out of order or altered"));
    }
    if idx != n || count != n || bytes != sum {
        problems.push(format!("index {idx}, meta ({count}, {bytes}), scan ({n}, {sum})"));
    }
    if check != "ok" {
        problems.push(format!("check: {check}"));
    }
    let verdict = if problems.is_empty() {
        format!("OK {} msgs, {}", n, if state == last { "= last reported" } else { "= one commit past last reported" })
    } else {
        format!("FAIL {}", problems.join("; "))
    };
    Ok((open_ms, check_ms, verdict))
}

fn crash(store: &str, batch: u64, trials: u32, devices: u32, prefill: Option<(&Path, u64)>) -> R<()> {
    let exe = std::env::current_exe()?;
    let mut rng = Rng(now_ms() | 1);
    let (lo0, hi0) = match prefill {
        Some((_, count)) => (1, count),
        None => (1, 0),
    };
    for trial in 1..=trials {
        let dir = scratch_dir(&format!("crash{trial}"))?;
        let path = dir.join("q.db");
        if let Some((src, _)) = prefill {
            std::fs::copy(src, &path)?;
        }
        let mut ch = Command::new(&exe)
            .args(["child", store, path.to_str().ok_or("path")?, &batch.to_string(), &devices.to_string()])
            .args([lo0.to_string(), hi0.to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = ch.stdout.take().ok_or("no stdout")?;
        let last = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let last2 = last.clone();
        let reader = std::thread::spawn(move || {
            let mut lines = 0u64;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "ready" {
                    let _ = ready_tx.send(());
                } else {
                    lines += 1;
                    *last2.lock().unwrap_or_else(|e| e.into_inner()) = line;
                }
            }
            lines
        });
        ready_rx.recv_timeout(Duration::from_secs(120))?;
        let delay = 50 + rng.below(1500);
        std::thread::sleep(Duration::from_millis(delay));
        ch.kill()?; // SIGKILL
        ch.wait()?;
        let commits = reader.join().map_err(|_| "reader")?;
        let line = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut it = line.split(' ').filter_map(|s| s.parse::<u64>().ok());
        let last = match (it.next(), it.next()) {
            (Some(lo), Some(hi)) => (lo, hi),
            _ => (lo0, hi0),
        };
        let wal = dir.join("q.db-wal");
        let wal_note = std::fs::metadata(&wal).map(|m| format!(" wal={:.1}MiB", mib(m.len()))).unwrap_or_default();
        match verify(store, &path, devices, last, batch, hi0 + 1 - lo0) {
            Ok((open_ms, check_ms, verdict)) => println!(
                "{store}\tbatch={batch} trial={trial} killed_after_ms={delay} commits={commits}{wal_note}\
                 \treopen_ms={open_ms:.1} check_ms={check_ms:.0}\t{verdict}"
            ),
            Err(e) => println!("{store}\tbatch={batch} trial={trial} killed_after_ms={delay}\tFAIL reopen: {e}"),
        }
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
/// One step of `probe`, with panics caught: "ok …", "error: …" or "PANIC: …".
fn step<T>(name: &str, f: impl FnOnce() -> R<T>) -> Option<T> {
    let t = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    match r {
        Ok(Ok(v)) => {
            println!("  {name}: ok ({ms:.0} ms)");
            Some(v)
        }
        Ok(Err(e)) => {
            println!("  {name}: error: {e} ({ms:.0} ms)");
            None
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            println!("  {name}: PANIC: {} ({ms:.0} ms)", msg.lines().next().unwrap_or(""));
            None
        }
    }
}

/// Open a damaged file as the daemon would, then read everything, then run the store's check.
fn probe(store: &str, path: &Path, devices: u32) -> R<()> {
    std::panic::set_hook(Box::new(|_| {}));
    if let Some(mut q) = step("open", || {
        let mut q = open_store(store, path, false)?;
        let meta = q.meta()?;
        println!("  meta (count, bytes) = {meta:?}");
        Ok(q)
    }) {
        step("read all", || {
            let (mut n, mut bad) = (0u64, 0u64);
            let idx = q.scan(&mut |m| {
                n += 1;
                if m != make_msg(m.id, device_of(m.id, devices), BASE_MS + m.id) {
                    bad += 1;
                }
            })?;
            println!("  read {n} messages, {bad} differ from what was written, index has {idx}");
            Ok(())
        });
        step("append+delete", || {
            q.append(&[make_msg(u64::MAX / 2, 0, BASE_MS)], Limits::NONE, now_ms())?;
            q.delete(&[(0, u64::MAX / 2)])
        });
        step("store check (quick_check / check_integrity)", || {
            let r = q.check()?;
            if r != "ok" {
                return Err(format!("found: {}", r.replace('\n', " | ").chars().take(160).collect::<String>()).into());
            }
            Ok(())
        });
    }
    if store.starts_with("redb") {
        step("open with set_check_integrity_on_open(true)", || {
            let mut q = open_store(store, path, true)?;
            Ok(q.meta()?)
        });
    }
    Ok(())
}

fn corrupt(store: &str, src: &Path, devices: u32) -> R<()> {
    let exe = std::env::current_exe()?;
    let len = std::fs::metadata(src)?.len();
    let garbage = |f: &std::fs::File, at: u64, n: usize| -> R<()> {
        use std::os::unix::fs::FileExt;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let buf: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
        f.write_all_at(&buf, at)?;
        Ok(())
    };
    let flip = |f: &std::fs::File, at: u64| -> R<()> {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8];
        f.read_exact_at(&mut b, at)?;
        f.write_all_at(&[b[0] ^ 0x55], at)?;
        Ok(())
    };
    type Damage<'a> = (&'a str, Box<dyn Fn(&std::fs::File) -> R<()> + 'a>);
    let cases: Vec<Damage<'_>> = vec![
        ("truncated to half", Box::new(|f| Ok(f.set_len(len / 2)?))),
        ("truncated to 4 KiB (first page only)", Box::new(|f| Ok(f.set_len(4096)?))),
        ("4 pages of garbage at 50%", Box::new(|f| garbage(f, (len / 2) & !4095, 4 * 4096))),
        ("4 pages of garbage at 90%", Box::new(|f| garbage(f, (len / 10 * 9) & !4095, 4 * 4096))),
        ("first page garbage (header)", Box::new(|f| garbage(f, 0, 4096))),
        ("second page garbage", Box::new(|f| garbage(f, 4096, 4096))),
        ("1 byte flipped at 50% (bit rot)", Box::new(|f| flip(f, len / 2 + 1000))),
        ("1 byte flipped at 75% (bit rot)", Box::new(|f| flip(f, len / 4 * 3 + 1000))),
    ];
    for (name, damage) in cases {
        let dir = scratch_dir("corrupt")?;
        let path = dir.join("q.db");
        std::fs::copy(src, &path)?;
        damage(&std::fs::OpenOptions::new().read(true).write(true).open(&path)?)?;
        println!("{store}\t{name}:");
        let mut ch = Command::new(&exe)
            .args(["probe", store, path.to_str().ok_or("path")?, &devices.to_string()])
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(s) = ch.try_wait()? {
                break format!("{s}");
            }
            if Instant::now() > deadline {
                ch.kill()?;
                ch.wait()?;
                break "TIMEOUT after 300 s, killed".into();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        println!("  probe process: {status}");
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
fn main() -> R<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| a.get(i).map(String::as_str).ok_or_else(|| format!("missing argument {i}"));
    let num = |i: usize, default: Option<u64>| -> R<u64> {
        match (a.get(i), default) {
            (Some(s), _) => Ok(s.replace('_', "").parse()?),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("missing argument {i}").into()),
        }
    };
    match arg(0)? {
        "steady" => steady(arg(1)?, num(2, None)? as usize, num(3, None)?, num(4, Some(100))? as u32, num(5, Some(10))? as usize),
        "fill" => {
            let max_bytes = num(6, Some(u64::MAX >> 20))? << 20;
            let limits = Limits { max_bytes, max_age_ms: u64::MAX };
            fill(arg(1)?, Path::new(arg(2)?), num(3, None)?, num(4, None)? as u32, num(5, None)? as usize, limits)
        }
        "space" => space(arg(1)?, Path::new(arg(2)?), num(3, None)? as u32),
        "crash" => {
            let prefill = match a.get(5) {
                Some(p) => Some((Path::new(p.as_str()), num(6, None)?)),
                None => None,
            };
            crash(arg(1)?, num(2, None)?, num(3, None)? as u32, num(4, None)? as u32, prefill)
        }
        "child" => child(arg(1)?, Path::new(arg(2)?), num(3, None)?, num(4, None)? as u32, num(5, None)?, num(6, None)?),
        "corrupt" => corrupt(arg(1)?, Path::new(arg(2)?), num(3, None)? as u32),
        "probe" => probe(arg(1)?, Path::new(arg(2)?), num(3, None)? as u32),
        other => Err(format!("unknown command {other}; see the top of src/main.rs").into()),
    }
}
