//! Whole-config checks (references between sections, ids defined twice, values in range) and
//! the resolved runtime form. Collects every problem rather than stopping at the first.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::error::Problem;
use super::schema::{
    BusConfig, BusKind, DeviceConfig, FileConfig, HubConfig, Parity, ProfileConfig, TcpFraming,
};
use super::{Bus, BusSpec, Config, Device, Hub, Line, SerialFraming};
use crate::hub::connstr::ConnectionString;
use crate::hub::sas::Key;
use crate::mapping::Method;

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, file: &Path, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            file: file.to_path_buf(),
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Checks the merged files and resolves them into a [`Config`].
///
/// # Errors
/// Every problem found.
pub fn validate(files: Vec<(PathBuf, FileConfig)>) -> Result<Config, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let base = files.first().map(|(f, _)| f.clone()).unwrap_or_default();

    let hub = single(&files, "hub", |f| f.hub.as_ref(), &mut p);
    let log = single(&files, "log", |f| f.log.as_ref(), &mut p);
    let hub_raw = hub;
    let hub = match hub {
        Some((file, h)) => resolve_hub(file, h, &mut p),
        None => {
            p.add(
                &base,
                "hub",
                "missing [hub] section (hostname of your IoT hub)",
            );
            None
        }
    };
    let log_level = match log {
        Some((file, l)) => match l.level.parse::<log::LevelFilter>() {
            Ok(level) => level,
            Err(_) => {
                p.add(
                    file,
                    "log.level",
                    format!(
                        "{:?} is not one of off, error, warn, info, debug, trace",
                        l.level
                    ),
                );
                log::LevelFilter::Info
            }
        },
        None => log::LevelFilter::Info,
    };

    let buses_in = indexed(&files, |f| &f.bus, |b: &BusConfig| &b.id, "bus", &mut p);
    let profiles_in = indexed(
        &files,
        |f| &f.profile,
        |pr: &ProfileConfig| &pr.id,
        "profile",
        &mut p,
    );
    let devices_in = indexed(
        &files,
        |f| &f.device,
        |d: &DeviceConfig| &d.id,
        "device",
        &mut p,
    );

    let mut buses = Vec::new();
    let mut bus_kinds = BTreeMap::new();
    let mut paths_seen: BTreeMap<PathBuf, String> = BTreeMap::new();
    for (file, path, b) in &buses_in {
        bus_kinds.insert(b.id.clone(), (b.kind, Units::of(b)));
        if let Some(bus) = resolve_bus(file, path, b, &mut p) {
            if let Some(dev) = bus.device_path() {
                if let Some(other) = paths_seen.insert(dev.to_path_buf(), b.id.clone()) {
                    p.add(
                        file,
                        format!("{path}.path"),
                        format!(
                            "{} is also used by bus {other:?}; one bus owns a line",
                            dev.display()
                        ),
                    );
                }
            }
            buses.push(bus);
        }
    }

    let profiles: BTreeMap<&str, (&PathBuf, &String, &ProfileConfig)> = profiles_in
        .iter()
        .map(|(f, path, pr)| (pr.id.as_str(), (*f, path, *pr)))
        .collect();

    // Connection strings are compared with the [hub] names even when other [hub] keys are bad,
    // but not with names that are themselves reported as bad.
    let hub_names = hub_raw.and_then(|(_, h)| {
        let host = check_host("hostname", &h.hostname).ok()?;
        let gateway = match &h.gateway_hostname {
            Some(g) => Some(check_host("gateway_hostname", g).ok()?),
            None => None,
        };
        Some((host, gateway))
    });
    let mut devices = Vec::new();
    let mut units_seen: BTreeMap<(String, u8), String> = BTreeMap::new();
    let mut profiles = Profiles {
        defs: profiles,
        compiled: Vec::new(),
    };
    for (file, path, d) in &devices_in {
        let Some((kind, units)) = bus_kinds.get(&d.bus).copied() else {
            let known = bus_kinds.keys().cloned().collect::<Vec<_>>().join(", ");
            p.add(
                file,
                format!("{path}.bus"),
                format!("bus {:?} is not defined (defined: {known})", d.bus),
            );
            continue;
        };
        // On an RTU line every slave sees every frame, so two devices with one unit id would
        // both answer (or one device would get both identities' writes).
        if let (Some(unit), Units::Rtu) = (d.unit, units) {
            if let Some(other) = units_seen.insert((d.bus.clone(), unit), d.id.clone()) {
                p.add(
                    file,
                    format!("{path}.unit"),
                    format!("unit {unit} on bus {:?} is also device {other:?}", d.bus),
                );
            }
        }
        let hub_names = hub_names
            .as_ref()
            .map(|(host, gateway)| (host.as_str(), gateway.as_deref()));
        let on = BusRef { kind, units };
        if let Some(device) = resolve_device(file, path, d, on, hub_names, &mut profiles, &mut p) {
            devices.push(device);
        }
    }

    if !p.0.is_empty() {
        return Err(p.0);
    }
    let Some(hub) = hub else {
        return Err(p.0);
    };
    let warnings = key_file_warnings(&files);
    Ok(Config {
        hub,
        log_level,
        buses,
        devices,
        files: files.into_iter().map(|(f, _)| f).collect(),
        warnings,
    })
}

/// Files holding device keys (config files with inline keys, key files) should be readable by
/// root and the leafgate group only. Anything else is a warning: leafgate still runs.
fn key_file_warnings(files: &[(PathBuf, FileConfig)]) -> Vec<Problem> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut warnings = Vec::new();
    let mut check = |file: &Path, path: String, holder: &Path| {
        if let Ok(meta) = std::fs::metadata(holder) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                warnings.push(Problem {
                    file: file.to_path_buf(),
                    path,
                    message: format!(
                        "{} holds device keys and is accessible to every user (mode {mode:04o}); run chmod 0640 and chown root:leafgate",
                        holder.display()
                    ),
                });
            }
        }
    };
    for (file, f) in files {
        if f.device
            .iter()
            .any(|d| d.connection_string.is_some() || d.shared_access_key.is_some())
        {
            check(file, String::new(), file);
        }
        for (i, d) in f.device.iter().enumerate() {
            if let Some(key_file) = &d.shared_access_key_file {
                check(
                    file,
                    format!("device[{i}].shared_access_key_file"),
                    key_file,
                );
            }
        }
    }
    warnings
}

/// A section that may appear in one file only.
fn single<'a, T>(
    files: &'a [(PathBuf, FileConfig)],
    name: &str,
    get: impl Fn(&'a FileConfig) -> Option<&'a T>,
    p: &mut Problems,
) -> Option<(&'a PathBuf, &'a T)> {
    let mut found: Option<(&PathBuf, &T)> = None;
    for (file, f) in files {
        if let Some(section) = get(f) {
            match found {
                Some((first, _)) => p.add(
                    file,
                    name,
                    format!("[{name}] is already defined in {}", first.display()),
                ),
                None => found = Some((file, section)),
            }
        }
    }
    found
}

type Indexed<'a, T> = Vec<(&'a PathBuf, String, &'a T)>;

/// Flattens `[[name]]` items across files, with their paths, refusing ids defined twice.
fn indexed<'a, T>(
    files: &'a [(PathBuf, FileConfig)],
    items: impl Fn(&'a FileConfig) -> &'a Vec<T>,
    id: impl Fn(&T) -> &String,
    name: &str,
    p: &mut Problems,
) -> Indexed<'a, T> {
    let mut seen: BTreeMap<&str, (&PathBuf, String)> = BTreeMap::new();
    let mut out = Vec::new();
    for (file, f) in files {
        for (i, item) in items(f).iter().enumerate() {
            let path = format!("{name}[{i}]");
            let item_id = id(item);
            if let Err(msg) = check_id(item_id) {
                p.add(file, format!("{path}.id"), msg);
                continue;
            }
            if let Some((first_file, first_path)) = seen.get(item_id.as_str()) {
                p.add(
                    file,
                    format!("{path}.id"),
                    format!(
                        "{name} {item_id:?} is already defined at {}: {first_path}",
                        first_file.display()
                    ),
                );
                continue;
            }
            seen.insert(item_id, (file, path.clone()));
            out.push((file, path, item));
        }
    }
    out
}

/// IoT Hub device ids: up to 128 of `a-z A-Z 0-9 - . % _ * ? ! ( ) , : = @ $ '`. We use the same
/// rule for bus and profile ids.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 characters".to_owned());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-.%_*?!(),:=@$'".contains(*c)))
    {
        return Err(format!(
            "{id:?} contains {c:?}; IoT Hub ids allow letters, digits and -.%_*?!(),:=@$'"
        ));
    }
    Ok(())
}

fn resolve_hub(file: &Path, h: &HubConfig, p: &mut Problems) -> Option<Hub> {
    let start = p.0.len();
    let hostname = check_host("hostname", &h.hostname)
        .map_err(|msg| p.add(file, "hub.hostname", msg))
        .ok();
    let gateway = match &h.gateway_hostname {
        Some(g) => check_host("gateway_hostname", g)
            .map(Some)
            .map_err(|msg| p.add(file, "hub.gateway_hostname", msg))
            .ok(),
        None => Some(None),
    };
    if h.port == 0 {
        p.add(file, "hub.port", "must not be 0");
    }
    if !(5..=1177).contains(&h.keep_alive_s) {
        p.add(file, "hub.keep_alive_s", format!("{} is outside 5..=1177 (IoT Hub closes idle links after 1.5 × keep-alive, at most 29.45 min)", h.keep_alive_s));
    }
    if !(10..=31_536_000).contains(&h.sas_ttl_s) {
        p.add(
            file,
            "hub.sas_ttl_s",
            format!("{} is outside 10..=31536000", h.sas_ttl_s),
        );
    }
    if !(1..=10_000).contains(&h.max_connects_per_s) {
        p.add(
            file,
            "hub.max_connects_per_s",
            format!("{} is outside 1..=10000", h.max_connects_per_s),
        );
    }
    if !(1024..=128 * 1024).contains(&h.max_payload_bytes) {
        p.add(
            file,
            "hub.max_payload_bytes",
            format!(
                "{} is outside 1024..=131072 (IoT Hub's own limit is 128 KiB)",
                h.max_payload_bytes
            ),
        );
    }
    if !(1..=300).contains(&h.connect_timeout_s) {
        p.add(
            file,
            "hub.connect_timeout_s",
            format!("{} is outside 1..=300", h.connect_timeout_s),
        );
    }
    if h.reconnect_min_ms == 0 || h.reconnect_min_ms > h.reconnect_max_ms {
        p.add(
            file,
            "hub.reconnect_min_ms",
            format!(
                "must be above 0 and at most reconnect_max_ms ({})",
                h.reconnect_max_ms
            ),
        );
    }
    if let Some(ca) = &h.ca_file {
        if let Err(msg) = check_ca_file(ca) {
            p.add(file, "hub.ca_file", msg);
        }
    }
    let (Some(hostname), Some(gateway_hostname)) = (hostname, gateway) else {
        return None;
    };
    (p.0.len() == start).then(|| Hub {
        connect_host: gateway_hostname.clone().unwrap_or_else(|| hostname.clone()),
        hostname,
        gateway_hostname,
        port: h.port,
        ca_file: h.ca_file.clone(),
        keep_alive: Duration::from_secs(h.keep_alive_s),
        sas_ttl: Duration::from_secs(h.sas_ttl_s),
        max_connects_per_s: h.max_connects_per_s,
        max_payload_bytes: h.max_payload_bytes,
        connect_timeout: Duration::from_secs(h.connect_timeout_s),
        reconnect_min: Duration::from_millis(h.reconnect_min_ms),
        reconnect_max: Duration::from_millis(h.reconnect_max_ms),
    })
}

/// Upper bound for `frame_gap_us`. The gap is slept before every frame, so a huge value stalls
/// the line (and one near `u64::MAX` overflows the bus's deadline arithmetic). The largest gap
/// the Modbus serial spec asks for is 3.5 characters of 12 bits at 300 baud, 140 ms; above
/// 19200 baud it is 1.75 ms. 200 ms covers every legal line with room to spare.
const MAX_FRAME_GAP_US: u64 = 200_000;

/// `hostname` and `gateway_hostname` are bare host names: they become the TLS server name and
/// the TCP peer, and `hostname` also goes into MQTT usernames and SAS scopes, where a scheme, a
/// port or a path would fail only at connect time (or as "not authorized"). Surrounding
/// whitespace is trimmed; the trimmed name is returned. A bare IPv6 address is a host name too.
fn check_host(key: &str, raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(if key == "hostname" {
            "must not be empty (your IoT hub's host name, e.g. myhub.azure-devices.net)".to_owned()
        } else {
            "must not be empty; remove the key to connect to hostname".to_owned()
        });
    }
    if name.contains(char::is_whitespace) {
        return Err(format!(
            "{name:?} contains whitespace; write the host name only, e.g. myhub.azure-devices.net"
        ));
    }
    let after_scheme = name.split_once("://").map_or(name, |(_, rest)| rest);
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or(after_scheme);
    let (bare, port) = split_authority(authority);
    let what = if after_scheme.len() != name.len() {
        "a scheme"
    } else if authority.len() != after_scheme.len() {
        "a path"
    } else if port {
        "a port"
    } else if bare != authority {
        "more than a host name"
    } else {
        ""
    };
    if !what.is_empty() {
        let fix = if bare.is_empty() {
            "e.g. myhub.azure-devices.net".to_owned()
        } else {
            format!("{key} = {bare:?}")
        };
        let port = if port {
            ", and the port as hub.port"
        } else {
            ""
        };
        return Err(format!(
            "{name:?} has {what}; write the host name only: {fix}{port}"
        ));
    }
    if rustls::pki_types::ServerName::try_from(name).is_err() {
        return Err(format!(
            "{name:?} is not a valid host name (letters, digits, '-' and '.', e.g. myhub.azure-devices.net)"
        ));
    }
    Ok(name.to_owned())
}

/// The host in `host`, `host:port`, `user@host:port` or `[v6]:port`, and whether a port was
/// given.
fn split_authority(authority: &str) -> (&str, bool) {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.split_once(']') {
            Some((v6, rest)) => (v6, rest.starts_with(':')),
            None => (inner, false),
        };
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        return (host, false);
    }
    match host.split_once(':') {
        Some((h, _)) => (h, true),
        None => (host, false),
    }
}

/// Reads and parses `ca_file` exactly as the daemon will at start. Found here, a bad file is a
/// config problem: `check` reports it and the daemon exits 78, which systemd does not restart,
/// instead of failing at start with 1 in a restart loop.
fn check_ca_file(ca: &Path) -> Result<(), String> {
    crate::hub::tls::add_ca_file(ca, &mut rustls::RootCertStore::empty())
        .map(|_| ())
        .map_err(|e| match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        })
}

fn resolve_bus(file: &Path, path: &str, b: &BusConfig, p: &mut Problems) -> Option<Bus> {
    use super::schema::defaults as d;
    let start = p.0.len();
    let kind = b.kind;
    let mut not_for = |key: &str, present: bool| {
        if present {
            p.add(
                file,
                format!("{path}.{key}"),
                format!("does not apply to kind = \"{}\"", kind.name()),
            );
        }
    };
    let serial_line = kind != BusKind::ModbusTcp;
    not_for("address", b.address.is_some() && serial_line);
    not_for("framing", b.framing.is_some() && serial_line);
    for (key, present) in [
        ("path", b.path.is_some()),
        ("baud_rate", b.baud_rate.is_some()),
        ("parity", b.parity.is_some()),
        ("data_bits", b.data_bits.is_some()),
        ("stop_bits", b.stop_bits.is_some()),
    ] {
        not_for(key, present && !serial_line);
    }
    not_for(
        "frame_gap_us",
        b.frame_gap_us.is_some() && kind != BusKind::ModbusRtu,
    );
    for (key, present) in [
        ("terminator", b.terminator.is_some()),
        ("reply_length", b.reply_length.is_some()),
        ("idle_gap_ms", b.idle_gap_ms.is_some()),
    ] {
        not_for(key, present && kind != BusKind::Serial);
    }

    let timeout_ms = b.timeout_ms.unwrap_or(d::BUS_TIMEOUT_MS);
    if !(10..=60_000).contains(&timeout_ms) {
        p.add(
            file,
            format!("{path}.timeout_ms"),
            format!("{timeout_ms} is outside 10..=60000"),
        );
    }
    let queue_capacity = b.queue_capacity.unwrap_or(d::BUS_QUEUE_CAPACITY);
    if !(1..=100_000).contains(&queue_capacity) {
        p.add(
            file,
            format!("{path}.queue_capacity"),
            format!("{queue_capacity} is outside 1..=100000"),
        );
    }
    let retries = b.retries.unwrap_or(d::BUS_RETRIES);
    if retries > 10 {
        p.add(
            file,
            format!("{path}.retries"),
            format!("{retries} is above 10"),
        );
    }
    let down_after = b.down_after.unwrap_or(d::BUS_DOWN_AFTER);
    if down_after > 100 {
        p.add(
            file,
            format!("{path}.down_after"),
            format!("{down_after} is above 100 (0 turns it off)"),
        );
    }
    let down_for_ms = b.down_for_ms.unwrap_or(d::BUS_DOWN_FOR_MS);
    if !(100..=3_600_000).contains(&down_for_ms) {
        p.add(
            file,
            format!("{path}.down_for_ms"),
            format!("{down_for_ms} is outside 100..=3600000"),
        );
    }
    let reconnect_min_ms = b.reconnect_min_ms.unwrap_or(d::BUS_RECONNECT_MIN_MS);
    let reconnect_max_ms = b.reconnect_max_ms.unwrap_or(d::BUS_RECONNECT_MAX_MS);
    if reconnect_min_ms == 0 || reconnect_min_ms > reconnect_max_ms {
        p.add(
            file,
            format!("{path}.reconnect_min_ms"),
            format!("must be above 0 and at most reconnect_max_ms ({reconnect_max_ms})"),
        );
    }

    if let (BusKind::ModbusRtu, Some(us)) = (kind, b.frame_gap_us) {
        if us > MAX_FRAME_GAP_US {
            p.add(
                file,
                format!("{path}.frame_gap_us"),
                format!(
                    "{us} is outside 0..={MAX_FRAME_GAP_US} (3.5 characters take at most 140000 µs, at 300 baud; leave it unset for the spec's value)"
                ),
            );
        }
    }

    let line = if serial_line {
        resolve_line(file, path, b, p)
    } else {
        None
    };
    let spec = match kind {
        BusKind::ModbusTcp => match &b.address {
            Some(a)
                if a.rsplit_once(':').is_some_and(|(h, port)| {
                    !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0)
                }) =>
            {
                Some(BusSpec::ModbusTcp {
                    address: a.clone(),
                    framing: b.framing.unwrap_or_default(),
                })
            }
            Some(a) => {
                p.add(
                    file,
                    format!("{path}.address"),
                    format!("{a:?} is not host:port"),
                );
                None
            }
            None => {
                p.add(
                    file,
                    format!("{path}.address"),
                    "missing (host:port of the Modbus TCP device)",
                );
                None
            }
        },
        BusKind::ModbusRtu => line.map(|line| {
            let gap = b
                .frame_gap_us
                .map_or_else(|| line.silent_interval(), Duration::from_micros);
            BusSpec::ModbusRtu {
                line,
                frame_gap: gap,
            }
        }),
        BusKind::Serial => {
            let framing = match (&b.terminator, b.reply_length, b.idle_gap_ms) {
                (Some(t), None, None) if !t.is_empty() => {
                    Some(SerialFraming::Terminator(t.as_bytes().to_vec()))
                }
                (None, Some(n), None) if (1..=4096).contains(&n) => Some(SerialFraming::Length(n)),
                (None, None, Some(ms)) if (1..=10_000).contains(&ms) => {
                    Some(SerialFraming::IdleGap(Duration::from_millis(ms)))
                }
                (None, None, None) => {
                    p.add(
                        file,
                        path,
                        "serial buses need one framing: terminator, reply_length or idle_gap_ms",
                    );
                    None
                }
                (Some(_), None, None) => {
                    p.add(file, format!("{path}.terminator"), "must not be empty");
                    None
                }
                (None, Some(n), None) => {
                    p.add(
                        file,
                        format!("{path}.reply_length"),
                        format!("{n} is outside 1..=4096"),
                    );
                    None
                }
                (None, None, Some(ms)) => {
                    p.add(
                        file,
                        format!("{path}.idle_gap_ms"),
                        format!("{ms} is outside 1..=10000"),
                    );
                    None
                }
                _ => {
                    p.add(
                        file,
                        path,
                        "give only one of terminator, reply_length, idle_gap_ms",
                    );
                    None
                }
            };
            line.zip(framing)
                .map(|(line, framing)| BusSpec::Serial { line, framing })
        }
    };
    if p.0.len() != start {
        return None;
    }
    Some(Bus {
        id: b.id.clone(),
        spec: spec?,
        timeout: Duration::from_millis(timeout_ms),
        queue_capacity,
        retries,
        reconnect_min: Duration::from_millis(reconnect_min_ms),
        reconnect_max: Duration::from_millis(reconnect_max_ms),
        down_after,
        down_for: Duration::from_millis(down_for_ms),
    })
}

fn resolve_line(file: &Path, path: &str, b: &BusConfig, p: &mut Problems) -> Option<Line> {
    let start = p.0.len();
    let Some(dev) = &b.path else {
        p.add(
            file,
            format!("{path}.path"),
            "missing (serial device, e.g. /dev/ttyUSB0)",
        );
        return None;
    };
    let baud_rate = b.baud_rate.unwrap_or(super::schema::defaults::BAUD_RATE);
    if !(300..=4_000_000).contains(&baud_rate) {
        p.add(
            file,
            format!("{path}.baud_rate"),
            format!("{baud_rate} is outside 300..=4000000"),
        );
    }
    let data_bits = b.data_bits.unwrap_or(8);
    if !(5..=8).contains(&data_bits) {
        p.add(
            file,
            format!("{path}.data_bits"),
            format!("{data_bits} is outside 5..=8"),
        );
    }
    let stop_bits = b.stop_bits.unwrap_or(1);
    if !(1..=2).contains(&stop_bits) {
        p.add(
            file,
            format!("{path}.stop_bits"),
            format!("{stop_bits} is not 1 or 2"),
        );
    }
    (p.0.len() == start).then(|| Line {
        path: dev.clone(),
        baud_rate,
        parity: b.parity.unwrap_or_default(),
        data_bits,
        stop_bits,
    })
}

/// How a bus addresses its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Units {
    /// Serial-line Modbus addressing: 1..=247, one device per unit id. Applies to `modbus_rtu`
    /// and to `modbus_tcp` with `framing = "rtu"` (a serial-to-Ethernet converter puts the frames
    /// on an RS-485 line as they are, so the line's rules hold).
    Rtu,
    /// Modbus TCP (MBAP): 0..=255; the unit id only routes behind a TCP gateway.
    Mbap,
    /// Serial buses have no unit ids.
    None,
}

impl Units {
    fn of(b: &BusConfig) -> Self {
        match (b.kind, b.framing.unwrap_or_default()) {
            (BusKind::ModbusRtu, _) | (BusKind::ModbusTcp, TcpFraming::Rtu) => Units::Rtu,
            (BusKind::ModbusTcp, TcpFraming::Mbap) => Units::Mbap,
            (BusKind::Serial, _) => Units::None,
        }
    }
}

/// The bus a device is on, as far as resolving the device needs it.
#[derive(Debug, Clone, Copy)]
struct BusRef {
    kind: BusKind,
    units: Units,
}

/// A profile's methods compiled for one bus kind.
type Compiled = Vec<Result<Arc<Method>, Vec<crate::mapping::method::Problem>>>;

/// Profile methods compiled once per (profile, bus kind) and shared by every device that uses
/// them: 10,000 devices on one profile would otherwise hold 10,000 copies (2 KiB each for
/// leafgate-bench's 10-register profile, found with heaptrack; issue 6).
struct Profiles<'a> {
    /// Each profile by id, with the file and key path it was defined at.
    defs: BTreeMap<&'a str, (&'a PathBuf, &'a String, &'a ProfileConfig)>,
    compiled: Vec<(String, BusKind, Compiled)>,
}

impl<'a> Profiles<'a> {
    /// The file profile `id` is defined in and its methods compiled for `kind`, or `None` when
    /// no such profile exists.
    fn methods(&mut self, id: &str, kind: BusKind) -> Option<(&'a PathBuf, &Compiled)> {
        let (file, path, profile) = self.defs.get(id).copied()?;
        let i = match self
            .compiled
            .iter()
            .position(|(p, k, _)| p == id && *k == kind)
        {
            Some(i) => i,
            None => {
                let compiled = (profile.method.iter().enumerate())
                    .map(|(i, m)| {
                        Method::compile(m, kind, &format!("{path}.method[{i}]")).map(Arc::new)
                    })
                    .collect();
                self.compiled.push((id.to_owned(), kind, compiled));
                self.compiled.len() - 1
            }
        };
        Some((file, &self.compiled[i].2))
    }
}

fn resolve_device(
    file: &Path,
    path: &str,
    d: &DeviceConfig,
    on: BusRef,
    hub: Option<(&str, Option<&str>)>,
    profiles: &mut Profiles<'_>,
    p: &mut Problems,
) -> Option<Device> {
    let start = p.0.len();
    let kind = on.kind;
    let key = resolve_key(file, path, d, hub, p);
    let unit = match (on.units, d.unit) {
        (Units::None, Some(_)) => {
            p.add(
                file,
                format!("{path}.unit"),
                "does not apply to devices on a serial bus",
            );
            0
        }
        (Units::None, None) => 0,
        (Units::Rtu, Some(u)) if (1..=247).contains(&u) => u,
        (Units::Rtu, Some(u)) => {
            // 0 is broadcast: every slave executes a write and none answers. 248..=255 are
            // reserved on a serial line.
            let tcp = if kind == BusKind::ModbusTcp {
                "; framing = \"rtu\" follows serial-line addressing"
            } else {
                ""
            };
            p.add(
                file,
                format!("{path}.unit"),
                format!("{u} is outside 1..=247 (0 is broadcast, which never answers{tcp})"),
            );
            0
        }
        (Units::Mbap, Some(u)) => u,
        (_, None) => {
            p.add(file, format!("{path}.unit"), "missing (the Modbus unit id)");
            0
        }
    };
    let mut methods: BTreeMap<String, Arc<Method>> = BTreeMap::new();
    if let Some(profile_id) = &d.profile {
        // Profile methods are compiled for this device's bus kind: the same profile on a serial
        // bus is a problem worth naming at the device.
        match profiles.methods(profile_id, kind) {
            Some((pfile, compiled)) => {
                for compiled in compiled {
                    match compiled {
                        Ok(method) => {
                            methods.insert(method.name.clone(), Arc::clone(method));
                        }
                        Err(problems) => {
                            for pr in problems {
                                p.add(
                                    pfile,
                                    pr.path.clone(),
                                    format!("{} (used by device {:?})", pr.message, d.id),
                                );
                            }
                        }
                    }
                }
            }
            None => p.add(
                file,
                format!("{path}.profile"),
                format!("profile {profile_id:?} is not defined"),
            ),
        }
    }
    let mut own = std::collections::BTreeSet::new();
    for (i, m) in d.method.iter().enumerate() {
        let mpath = format!("{path}.method[{i}]");
        if !own.insert(m.name.clone()) {
            p.add(
                file,
                format!("{mpath}.name"),
                format!("method {:?} is defined twice", m.name),
            );
            continue;
        }
        match Method::compile(m, kind, &mpath) {
            // A device's own method overrides the profile's method of the same name.
            Ok(method) => {
                methods.insert(method.name.clone(), Arc::new(method));
            }
            Err(problems) => {
                for pr in problems {
                    p.add(file, pr.path, pr.message);
                }
            }
        }
    }
    if d.method.is_empty() && d.profile.is_none() && !d.raw_methods {
        p.add(file, path, format!("device {:?} has no methods (add [[device.method]], a profile, or raw_methods = true)", d.id));
    }
    if p.0.len() != start {
        return None;
    }
    Some(Device {
        id: d.id.clone(),
        key: key?,
        bus: d.bus.clone(),
        unit,
        raw_methods: d.raw_methods,
        methods,
        fingerprint: format!("{d:?}"),
    })
}

/// `hub` is the trimmed (host name, gateway host name) when both are valid, even when other
/// [hub] keys are bad. Host names compare without regard to case.
fn resolve_key(
    file: &Path,
    path: &str,
    d: &DeviceConfig,
    hub: Option<(&str, Option<&str>)>,
    p: &mut Problems,
) -> Option<Key> {
    let given = [
        d.connection_string.is_some(),
        d.shared_access_key.is_some(),
        d.shared_access_key_file.is_some(),
    ];
    match given.iter().filter(|g| **g).count() {
        0 => {
            p.add(file, path, "missing credentials: connection_string, shared_access_key or shared_access_key_file");
            return None;
        }
        1 => {}
        _ => {
            p.add(
                file,
                path,
                "give only one of connection_string, shared_access_key, shared_access_key_file",
            );
            return None;
        }
    }
    if let Some(cs) = &d.connection_string {
        let key_path = format!("{path}.connection_string");
        return match cs.0.parse::<ConnectionString>() {
            Ok(cs) => {
                if cs.device_id != d.id {
                    p.add(
                        file,
                        &key_path,
                        format!("DeviceId {:?} does not match id {:?}", cs.device_id, d.id),
                    );
                }
                if let Some((hostname, gateway)) = hub {
                    if !cs.host_name.eq_ignore_ascii_case(hostname) {
                        p.add(
                            file,
                            &key_path,
                            format!(
                                "HostName {:?} does not match [hub] hostname {hostname:?}",
                                cs.host_name
                            ),
                        );
                    }
                    if let Some(gw) = &cs.gateway_host_name {
                        if !gateway.is_some_and(|g| g.eq_ignore_ascii_case(gw)) {
                            p.add(file, &key_path, format!("GatewayHostName {gw:?} does not match [hub] gateway_hostname; set it there"));
                        }
                    }
                }
                Some(cs.key)
            }
            Err(e) => {
                p.add(file, key_path, e.to_string());
                None
            }
        };
    }
    if let Some(k) = &d.shared_access_key {
        return match Key::from_base64(&k.0) {
            Ok(k) => Some(k),
            Err(e) => {
                p.add(file, format!("{path}.shared_access_key"), e.to_string());
                None
            }
        };
    }
    let key_file = d.shared_access_key_file.as_ref()?;
    let kpath = format!("{path}.shared_access_key_file");
    // A key is 44 characters; 4 KiB leaves room for comments and never reads a device forever.
    match crate::regular_file::read_limited(key_file, 4096) {
        Ok(text) => match Key::from_base64(text.trim()) {
            Ok(k) => Some(k),
            Err(e) => {
                p.add(file, kpath, format!("{}: {e}", key_file.display()));
                None
            }
        },
        Err(e) => {
            p.add(
                file,
                kpath,
                format!("cannot read {}: {e}", key_file.display()),
            );
            None
        }
    }
}

impl Line {
    /// The Modbus RTU silent interval: 3.5 character times, fixed at 1.75 ms above 19200 baud
    /// (Modbus over serial line v1.02, 2.5.1.1).
    #[must_use]
    pub fn silent_interval(&self) -> Duration {
        if self.baud_rate > 19_200 {
            return Duration::from_micros(1750);
        }
        let bits_per_char = 1
            + u64::from(self.data_bits)
            + u64::from(self.stop_bits)
            + u64::from(self.parity != Parity::None);
        // Rounded up: a gap a fraction of a microsecond short of 3.5 characters is out of spec.
        Duration::from_micros(
            (bits_per_char * 3_500_000).div_ceil(u64::from(self.baud_rate.max(1))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "[hub]\nhostname = \"h.azure-devices.net\"\n";

    /// Validates one file's text; the problems as `path: message` lines.
    fn problems(toml: &str) -> Vec<String> {
        let cfg: FileConfig = super::super::load::parse(toml).unwrap();
        match validate(vec![(PathBuf::from("leafgate.toml"), cfg)]) {
            Ok(_) => Vec::new(),
            Err(problems) => problems
                .into_iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect(),
        }
    }

    fn rtu_bus(extra: &str) -> String {
        format!(
            "{HUB}[[bus]]\nid = \"rs485\"\nkind = \"modbus_rtu\"\npath = \"/dev/ttyUSB0\"\n{extra}\n"
        )
    }

    fn hub_with(extra: &str) -> String {
        format!("{HUB}{extra}\n")
    }

    #[test]
    fn ca_file_must_hold_a_pem_certificate_rustls_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca = rcgen::generate_simple_self_signed(vec!["edge.local".to_owned()]).unwrap();
        let good = write("ca.pem", &ca.cert.pem());
        let with_key = write(
            "bundle.pem",
            &format!("{}{}", ca.signing_key.serialize_pem(), ca.cert.pem()),
        );
        let key_only = write("key.pem", &ca.signing_key.serialize_pem());
        let der = write("ca.der", "0\u{82}\u{3}\u{1}0\u{82}");
        let not_der = write(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcI\n-----END CERTIFICATE-----\n",
        );
        let bad_base64 = write(
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\nAA!!ECAw\n-----END CERTIFICATE-----\n",
        );
        let missing = dir.path().join("missing.pem");
        let shown = |p: &Path| p.display().to_string();

        for ok in [&good, &with_key] {
            let toml = hub_with(&format!("ca_file = {:?}", shown(ok)));
            assert_eq!(problems(&toml), Vec::<String>::new(), "{}", ok.display());
        }
        let cases: [(&Path, &str); 6] = [
            (dir.path(), "is a directory; give the PEM file"),
            (&bad_base64, "holds no readable PEM certificate"),
            (&key_only, "holds no PEM certificate"),
            (&der, "holds no PEM certificate"),
            (&not_der, "certificate 1 is not a usable X.509 certificate"),
            (&missing, "cannot read"),
        ];
        for (path, want) in cases {
            let toml = hub_with(&format!("ca_file = {:?}", shown(path)));
            let got = problems(&toml);
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(got[0].starts_with("hub.ca_file: "), "{got:?}");
            assert!(got[0].contains(want), "{}: {got:?}", path.display());
        }
    }

    #[test]
    fn host_names_are_trimmed_and_must_be_bare() {
        let ok = [
            ("myhub.azure-devices.net", "myhub.azure-devices.net"),
            ("  myhub.azure-devices.net\t", "myhub.azure-devices.net"),
            ("edge_gw.local", "edge_gw.local"),
            ("192.168.1.10", "192.168.1.10"),
            ("fd00::1", "fd00::1"),
        ];
        for (raw, want) in ok {
            assert_eq!(check_host("hostname", raw).as_deref(), Ok(want), "{raw:?}");
        }
        let bad = [
            ("", "must not be empty"),
            ("   ", "must not be empty"),
            ("my hub.azure-devices.net", "contains whitespace"),
            (
                "mqtts://myhub.azure-devices.net",
                r#"has a scheme; write the host name only: hostname = "myhub.azure-devices.net""#,
            ),
            (
                "mqtts://myhub.azure-devices.net:8883/",
                r#"has a scheme; write the host name only: hostname = "myhub.azure-devices.net", and the port as hub.port"#,
            ),
            (
                "myhub.azure-devices.net:8883",
                r#"has a port; write the host name only: hostname = "myhub.azure-devices.net", and the port as hub.port"#,
            ),
            (
                "[fd00::1]:8883",
                r#"has a port; write the host name only: hostname = "fd00::1", and the port as hub.port"#,
            ),
            (
                "myhub.azure-devices.net/devices",
                r#"has a path; write the host name only: hostname = "myhub.azure-devices.net""#,
            ),
            (
                "https://",
                "has a scheme; write the host name only: e.g. myhub",
            ),
            ("user@myhub.azure-devices.net", "has more than a host name"),
            ("myhub..azure-devices.net", "is not a valid host name"),
            ("-hub.example", "is not a valid host name"),
        ];
        for (raw, want) in bad {
            let got = check_host("hostname", raw).unwrap_err();
            assert!(got.contains(want), "{raw:?}: {got}");
        }
        let got = check_host("gateway_hostname", "").unwrap_err();
        assert!(got.contains("remove the key"), "{got}");
        let got = check_host("gateway_hostname", "edge.local:443").unwrap_err();
        assert!(got.contains(r#"gateway_hostname = "edge.local""#), "{got}");
    }

    #[test]
    fn trimmed_host_names_are_what_the_hub_connects_to() {
        let toml = "[hub]\nhostname = \" myhub.azure-devices.net \"\ngateway_hostname = \" edge.local\\n\"\n";
        let cfg: FileConfig = super::super::load::parse(toml).unwrap();
        let cfg = validate(vec![(PathBuf::from("leafgate.toml"), cfg)]).unwrap();
        assert_eq!(cfg.hub.hostname, "myhub.azure-devices.net");
        assert_eq!(cfg.hub.gateway_hostname.as_deref(), Some("edge.local"));
        assert_eq!(cfg.hub.connect_host, "edge.local");
    }

    #[test]
    fn connection_string_host_names_match_the_hub_in_any_case() {
        let device = |cs: &str| {
            format!(
                "[hub]\nhostname = \"H.azure-devices.net \"\ngateway_hostname = \" Edge.local\"\n\
                 [[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"10.0.0.6:502\"\n\
                 [[device]]\nid = \"d1\"\nbus = \"plc\"\nunit = 1\nraw_methods = true\n\
                 connection_string = \"{cs};DeviceId=d1;SharedAccessKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n"
            )
        };
        let ok = device("HostName=h.azure-devices.net;GatewayHostName=edge.LOCAL");
        assert_eq!(problems(&ok), Vec::<String>::new());
        let other = device("HostName=h.azure-devices.net;GatewayHostName=other.local");
        let got = problems(&other);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("GatewayHostName \"other.local\""),
            "{got:?}"
        );
    }

    #[test]
    fn frame_gap_is_bounded_above_the_slowest_lines_silent_interval() {
        let slowest = Line {
            path: PathBuf::from("/dev/ttyS0"),
            baud_rate: 300,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 2,
        };
        assert_eq!(slowest.silent_interval(), Duration::from_micros(140_000));
        assert!(slowest.silent_interval() <= Duration::from_micros(MAX_FRAME_GAP_US));
        assert_eq!(problems(&rtu_bus("frame_gap_us = 0")), Vec::<String>::new());
        assert_eq!(
            problems(&rtu_bus("frame_gap_us = 200000")),
            Vec::<String>::new()
        );
        let got = problems(&rtu_bus("frame_gap_us = 200001"));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("bus[0].frame_gap_us: 200001 is outside 0..=200000"),
            "{got:?}"
        );
        let got = problems(&rtu_bus("frame_gap_us = 9223372036854775807"));
        assert!(got[0].starts_with("bus[0].frame_gap_us: "), "{got:?}");
    }
}
