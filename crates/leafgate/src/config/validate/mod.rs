//! Whole-config checks (references between sections, ids defined twice, values in range) and
//! the resolved runtime form. Collects every problem rather than stopping at the first.
//!
//! This file holds the entry point and the order of the checks; what each section must satisfy
//! lives in a file named after the section, so a rule is found where its key is.

mod bus;
mod device;
mod device_key;
mod hub;
mod permissions;
mod profile;
mod provisioning;
mod sections;
#[cfg(test)]
mod testing;
mod twin;

pub use twin::{HEALTH_KEY, MAX_REPORTED_BYTES, dtmi, twin_key};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use self::bus::{Units, resolve_bus};
use self::device::{BusRef, Sections, resolve_device};
use self::hub::{check_host, host_of_connection_strings, resolve_hub};
use self::permissions::key_file_warnings;
use self::profile::Profiles;
use self::sections::{indexed, single};
use crate::config::Config;
use crate::config::Telemetry;
use crate::config::error::Problem;
use crate::config::schema::{
    BusConfig, DeviceConfig, FileConfig, HubConfig, ProfileConfig, TelemetryConfig,
};
use crate::config::suggest::nearest;

/// What validation found: problems (`.0`), which stop leafgate, and warnings (`.1`), which
/// are worth fixing but do not.
struct Problems(Vec<Problem>, Vec<Problem>);

impl Problems {
    fn add(&mut self, file: &Path, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            file: file.to_path_buf(),
            path: path.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, file: &Path, path: impl Into<String>, message: impl Into<String>) {
        self.1.push(Problem {
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
    validate_with(files, &BTreeSet::new())
}

/// Like [`validate`], for files whose reading took out entries (`(section, id)`, see
/// [`crate::config::load::Parsed`]): their problems are reported, so a device on a bus or with a
/// profile taken out is not checked further, and a reference to one is not "not defined".
///
/// # Errors
/// Every problem found.
pub fn validate_with(
    files: Vec<(PathBuf, FileConfig)>,
    withdrawn: &BTreeSet<(String, String)>,
) -> Result<Config, Vec<Problem>> {
    let taken_out =
        |section: &str, id: &str| withdrawn.contains(&(section.to_owned(), id.to_owned()));
    let mut p = Problems(Vec::new(), Vec::new());
    let base = files.first().map(|(f, _)| f.clone()).unwrap_or_default();

    let hub = single(&files, "hub", |f| f.hub.as_ref(), &mut p);
    let log = single(&files, "log", |f| f.log.as_ref(), &mut p);
    let metrics = single(&files, "metrics", |f| f.metrics.as_ref(), &mut p)
        .and_then(|(file, m)| sections::resolve_metrics(file, m, &mut p));
    let control = match single(&files, "control", |f| f.control.as_ref(), &mut p) {
        Some((file, c)) => sections::resolve_control(file, &c.socket, &mut p),
        None => Some(PathBuf::from(
            crate::config::schema::defaults::control_socket(),
        )),
    };
    let telemetry = match single(&files, "telemetry", |f| f.telemetry.as_ref(), &mut p) {
        Some((file, t)) => resolve_telemetry(file, t, &mut p),
        None => resolve_telemetry(&base, &TelemetryConfig::default(), &mut p),
    };
    let twin = single(&files, "twin", |f| f.twin.as_ref(), &mut p)
        .map(|(file, t)| std::sync::Arc::new(twin::resolve_twin_settings(file, t, &mut p)));
    let c2d = single(&files, "c2d", |f| f.c2d.as_ref(), &mut p)
        .map(|(file, c)| std::sync::Arc::new(twin::resolve_c2d(file, c, &mut p)));
    let provisioning = single(&files, "provisioning", |f| f.provisioning.as_ref(), &mut p)
        .map(|(file, c)| provisioning::resolve_provisioning(file, c, &mut p));
    // Present but wrong: its devices are not resolved against it (the problem is reported).
    let provisioning_present = provisioning.is_some();
    let provisioning = provisioning.flatten();
    let group_key = provisioning.as_ref().and_then(|r| r.group_key.clone());
    let sections = Sections {
        twin,
        c2d,
        provisioning: provisioning_present,
        group_key,
    };
    // Without a hostname, and without DPS to assign one, the devices' connection strings may
    // all name the hub: then they are the hostname.
    let from_devices = host_of_connection_strings(&files);
    let derived = match (hub, &from_devices, provisioning_present) {
        (Some((file, h)), Ok(host), false) if h.hostname.is_none() => Some((
            file,
            HubConfig {
                hostname: Some(host.clone()),
                ..h.clone()
            },
        )),
        _ => None,
    };
    let hub = derived.as_ref().map(|(f, h)| (*f, h)).or(hub);
    let hub_raw = hub;
    let hub = match hub {
        Some((file, h)) => resolve_hub(
            file,
            h,
            provisioning.map(|r| r.settings),
            from_devices,
            &mut p,
        ),
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
            if let Some(dev) = bus.device_path()
                && let Some(other) = paths_seen.insert(dev.to_path_buf(), b.id.clone())
            {
                p.add(
                    file,
                    format!("{path}.path"),
                    format!(
                        "{} is also used by bus {other:?}; one bus owns a line",
                        dev.display()
                    ),
                );
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
        let host = check_host("hostname", h.hostname.as_deref()?).ok()?;
        let gateway = match &h.gateway_hostname {
            Some(g) => Some(check_host("gateway_hostname", g).ok()?),
            None => None,
        };
        Some((host, gateway))
    });
    let mut devices = Vec::new();
    let mut units_seen: BTreeMap<(String, u8), String> = BTreeMap::new();
    let mut profiles = Profiles::new(profiles);
    for (file, path, d) in &devices_in {
        if taken_out("bus", &d.bus)
            || d.profile
                .as_ref()
                .is_some_and(|pr| taken_out("profile", pr))
        {
            continue;
        }
        let Some((kind, units)) = bus_kinds.get(&d.bus).copied() else {
            let known = bus_kinds.keys().cloned().collect::<Vec<_>>().join(", ");
            let near = nearest(&d.bus, bus_kinds.keys().map(String::as_str))
                .map(|near| format!("; did you mean {near:?}?"))
                .unwrap_or_default();
            p.add(
                file,
                format!("{path}.bus"),
                format!("bus {:?} is not defined (defined: {known}){near}", d.bus),
            );
            continue;
        };
        // On an RTU line every slave sees every frame, so two devices with one unit id would
        // both answer (or one device would get both identities' writes).
        if let (Some(unit), Units::Rtu) = (d.unit, units)
            && let Some(other) = units_seen.insert((d.bus.clone(), unit), d.id.clone())
        {
            p.add(
                file,
                format!("{path}.unit"),
                format!("unit {unit} on bus {:?} is also device {other:?}", d.bus),
            );
        }
        let hub_names = hub_names
            .as_ref()
            .map(|(host, gateway)| (host.as_str(), gateway.as_deref()));
        let on = BusRef { kind, units };
        if let Some(device) = resolve_device(
            file,
            path,
            d,
            on,
            hub_names,
            &sections,
            &mut profiles,
            &mut p,
        ) {
            devices.push(device);
        }
    }

    if !p.0.is_empty() {
        return Err(p.0);
    }
    let Some(hub) = hub else {
        return Err(p.0);
    };
    let mut warnings = key_file_warnings(&files);
    warnings.append(&mut p.1);
    Ok(Config {
        hub,
        telemetry,
        metrics,
        control,
        log_level,
        buses,
        devices,
        files: files.into_iter().map(|(f, _)| f).collect(),
        warnings,
    })
}

/// `[telemetry]`: each number within what the hub and a small box can take.
fn resolve_telemetry(file: &Path, t: &TelemetryConfig, p: &mut Problems) -> Telemetry {
    let mut range = |key: &str, value: u64, min: u64, max: u64| {
        if !(min..=max).contains(&value) {
            p.add(
                file,
                format!("telemetry.{key}"),
                format!("{value} is outside {min}..={max}"),
            );
        }
    };
    range(
        "max_messages_per_s",
        u64::from(t.max_messages_per_s),
        1,
        100_000,
    );
    range("window", u64::from(t.window), 1, 64);
    range("backlog", t.backlog as u64, 1, 1_000_000);
    range("commit_interval_ms", t.commit_interval_ms, 10, 60_000);
    range("store_max_mb", t.store_max_mb, 1, 1_000_000);
    range("store_max_age_h", t.store_max_age_h, 1, 87_600);
    let store = (!t.store.is_empty()).then(|| std::path::PathBuf::from(&t.store));
    if store.as_ref().is_some_and(|s| !s.is_absolute()) {
        p.add(
            file,
            "telemetry.store",
            format!(
                "{:?} is not an absolute path (\"\" keeps readings in memory only)",
                t.store
            ),
        );
    }
    Telemetry {
        max_messages_per_s: t.max_messages_per_s.max(1),
        window: t.window.clamp(1, 64),
        backlog: t.backlog.max(1),
        store,
        commit_interval: Duration::from_millis(t.commit_interval_ms.clamp(10, 60_000)),
        store_max_bytes: t.store_max_mb.max(1).saturating_mul(1_000_000),
        store_max_age: Duration::from_secs(t.store_max_age_h.max(1).saturating_mul(3600)),
    }
}

#[cfg(test)]
mod telemetry_tests {
    use super::testing::{HUB, problems};

    const BUS: &str = "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"10.0.0.1:502\"\n";

    fn meter(groups: &str) -> String {
        format!(
            "{HUB}{BUS}[[device]]\nid = \"m\"\nshared_access_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\nbus = \"plc\"\nunit = 1\n{groups}"
        )
    }

    const GROUP: &str = "[[device.telemetry]]\nname = \"power\"\ninterval_ms = 1000\n[[device.telemetry.step]]\nop = \"read\"\ntable = \"input\"\naddress = 0\nfields = [{ name = \"v\" }]\n";

    #[test]
    fn a_device_with_telemetry_only_is_valid_and_a_group_defined_twice_is_not() {
        assert_eq!(problems(&meter(GROUP)), Vec::<String>::new());
        let got = problems(&meter(&format!("{GROUP}{GROUP}")));
        assert_eq!(
            got,
            ["device \"m\".telemetry[1].name: telemetry group \"power\" is defined twice"]
        );
        let got = problems(&meter(""));
        assert!(
            got[0].contains("has no methods and no telemetry"),
            "{got:?}"
        );
    }

    #[test]
    fn telemetry_settings_out_of_range_are_named() {
        let text = meter(GROUP).replacen(
            "[[bus]]",
            "[telemetry]\nmax_messages_per_s = 0\nwindow = 65\nbacklog = 0\ncommit_interval_ms = 5\nstore_max_mb = 0\nstore_max_age_h = 0\nstore = \"telemetry.db\"\n[[bus]]",
            1,
        );
        assert_eq!(
            problems(&text),
            [
                "telemetry.max_messages_per_s: 0 is outside 1..=100000",
                "telemetry.window: 65 is outside 1..=64",
                "telemetry.backlog: 0 is outside 1..=1000000",
                "telemetry.commit_interval_ms: 5 is outside 10..=60000",
                "telemetry.store_max_mb: 0 is outside 1..=1000000",
                "telemetry.store_max_age_h: 0 is outside 1..=87600",
                "telemetry.store: \"telemetry.db\" is not an absolute path (\"\" keeps readings in memory only)",
            ]
        );
    }

    #[test]
    fn a_profile_group_that_cannot_run_on_the_bus_is_named_at_the_profile() {
        let text = format!(
            "{}[[profile]]\nid = \"p\"\n[[profile.telemetry]]\nname = \"g\"\ninterval_ms = 1000\n[[profile.telemetry.step]]\nop = \"send\"\nrequest = \"X\"\n",
            meter("profile = \"p\"\n")
        );
        let got = problems(&text);
        assert!(
            got.iter().any(|p| p.starts_with(
                "profile \"p\".telemetry \"g\".step[0].op: send steps need a serial bus"
            ) && p.contains("(used by device \"m\")")),
            "{got:?}"
        );
    }
}
