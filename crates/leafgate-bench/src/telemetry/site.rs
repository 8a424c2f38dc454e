//! A telemetry site on Modbus TCP: N meters spread over simulated endpoints (units 1..=upe each,
//! one leafgate bus per endpoint), each polling one group of `registers` holding registers, the
//! emulated hub, and leafgate's config with a store in the work directory. Shared by `steady`
//! and `outage`, which differ only in what they do to it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use leafgate_emulator::{Emulator, EmulatorConfig};
use leafgate_sim::modbus::{Registers, TcpServer};
use tokio::task::JoinSet;

use crate::scale::{add_endpoints, hub_section, key_text, write_private};

/// What the site looks like.
#[derive(Debug, Clone)]
pub struct Spec {
    pub devices: usize,
    pub units_per_endpoint: usize,
    pub registers: u16,
    pub interval_ms: u64,
    pub connect_rate: u32,
    pub keep_alive_s: u64,
    pub max_messages_per_s: u32,
}

/// The running simulators and hub, and the config leafgate is to run with.
pub struct Site {
    pub emu: Arc<Emulator>,
    pub ids: Vec<String>,
    pub endpoints: usize,
    pub config: PathBuf,
    pub store: PathBuf,
    upe: usize,
    servers: Vec<(TcpServer, Registers)>,
}

/// The profile every meter uses: the group, and one method (a device needs a method or
/// telemetry; a real meter has both, and the bench waits for the method subscription to know a
/// device is up, as `scale` does).
fn profile(registers: u16, interval_ms: u64) -> String {
    let fields: Vec<String> = (0..registers)
        .map(|i| format!("{{ name = \"r{i}\" }}"))
        .collect();
    let fields = fields.join(", ");
    format!(
        r#"
[[profile]]
id = "meter"
[[profile.method]]
name = "read"
timeout_ms = 5000
[[profile.method.step]]
op = "read"
table = "holding"
address = 0
fields = [{fields}]
[[profile.telemetry]]
name = "power"
interval_ms = {interval_ms}
[[profile.telemetry.step]]
op = "read"
table = "holding"
address = 0
fields = [{fields}]
"#
    )
}

impl Site {
    /// Starts the hub and the endpoints and writes the config into `dir`.
    pub async fn start(spec: &Spec, dir: &Path) -> Result<Site> {
        let n = spec.devices;
        let upe = spec.units_per_endpoint;
        if n == 0 || !(1..=247).contains(&upe) || !(1..=125).contains(&spec.registers) {
            bail!(
                "--devices must be > 0, --units-per-endpoint within 1..=247, --registers within 1..=125"
            );
        }
        // Room for every reading of a long run: the harness checks each one.
        let emu = Arc::new(
            Emulator::start(EmulatorConfig {
                telemetry_per_device: 1_000_000,
                ..EmulatorConfig::default()
            })
            .await?,
        );
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, emu.ca_pem())?;
        let store = dir.join("telemetry.db");
        let mut config = hub_section(&emu, &ca, spec.connect_rate, spec.keep_alive_s);
        writeln!(
            config,
            "\n[telemetry]\nmax_messages_per_s = {}\nstore = \"{}\"",
            spec.max_messages_per_s,
            store.display()
        )?;
        config.push_str(&profile(spec.registers, spec.interval_ms));
        let endpoints = n.div_ceil(upe);
        let servers = add_endpoints(&mut config, n, upe, |unit| {
            (0..spec.registers)
                .map(|i| u16::from(unit) * 100 + i)
                .collect()
        })
        .await?;
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("meter-{i:05}");
            let key = leafgate_emulator::random_key();
            emu.add_device(&id, key.clone());
            writeln!(
                config,
                "\n[[device]]\nid = \"{id}\"\nshared_access_key = \"{}\"\nbus = \"tcp-{}\"\nunit = {}\nprofile = \"meter\"",
                key_text(&key),
                i / upe,
                i % upe + 1
            )?;
            ids.push(id);
        }
        let config_path = dir.join("leafgate.toml");
        write_private(&config_path, &config)?;
        Ok(Site {
            emu,
            ids,
            endpoints,
            config: config_path,
            store,
            upe,
            servers,
        })
    }

    /// Per device (in `ids` order), the polls its unit answered up to `cut`: its readings
    /// numbered 0..k.
    pub fn polled_until(&self, cut: tokio::time::Instant) -> Vec<u64> {
        let mut polled = vec![0u64; self.ids.len()];
        for (e, (_, registers)) in self.servers.iter().enumerate() {
            for r in registers.requests() {
                if r.at > cut || r.unit == 0 {
                    continue;
                }
                let i = e * self.upe + usize::from(r.unit) - 1;
                if let Some(p) = polled.get_mut(i) {
                    *p += 1;
                }
            }
        }
        polled
    }

    /// The store's files and their sizes in bytes (0 for one that does not exist).
    pub fn store_size(&self) -> StoreSize {
        let size = |suffix: &str| {
            let mut path = self.store.clone().into_os_string();
            path.push(suffix);
            std::fs::metadata(path).map_or(0, |m| m.len())
        };
        StoreSize {
            db: size(""),
            wal: size("-wal"),
            shm: size("-shm"),
        }
    }
}

/// The store's files on disk, in bytes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StoreSize {
    pub db: u64,
    pub wal: u64,
    pub shm: u64,
}

impl StoreSize {
    /// The database and its write-ahead log: what the readings take (the `-shm` index is
    /// a fixed few tens of KiB).
    pub fn data(&self) -> u64 {
        self.db + self.wal
    }
}

/// Waits until device `ids[i]` has at least `targets[i]` distinct readings at the hub (messages
/// less duplicates, as the emulator counts them), for every i, checking `alive` meanwhile.
/// Returns when the last one got there, or the count of devices that did not within `timeout`
/// (a lost reading shows in the check afterwards, not here).
pub async fn wait_readings(
    emu: &Arc<Emulator>,
    ids: &[String],
    targets: &[u64],
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<(Instant, usize)> {
    let mut watchers = JoinSet::new();
    for (id, &target) in ids.iter().zip(targets) {
        let emu = Arc::clone(emu);
        let id = id.clone();
        watchers.spawn(async move {
            emu.wait_for(&id, timeout, |s| {
                s.telemetry_messages.saturating_sub(s.telemetry_duplicates) >= target
            })
            .await
            .map(|_| Instant::now())
        });
    }
    let mut last = Instant::now();
    let mut missing = 0;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            joined = watchers.join_next() => match joined {
                None => break,
                Some(Ok(Ok(at))) => last = last.max(at),
                Some(Ok(Err(_))) => missing += 1,
                Some(Err(e)) => bail!("watcher task failed: {e}"),
            },
            _ = check.tick() => alive()?,
        }
    }
    alive()?;
    Ok((last, missing))
}
