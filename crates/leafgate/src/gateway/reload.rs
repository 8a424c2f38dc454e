//! What a config reload changes: which buses and devices keep running, restart, start or stop.
//!
//! Pure: compares what runs with the new config; [`super::Gateway::apply`] carries the plan out.
//! The rules:
//! - a bus restarts when its section changed (`config::Bus` compares every setting);
//! - a device restarts when anything that shapes its session changed: its own section, the
//!   methods it got from a profile, its key (also when only a key file's content changed), its
//!   bus id, or when its bus restarts (it holds the old bus's handle);
//! - a `[hub]` change (including the content of `ca_file`) restarts every device session; buses
//!   do not depend on `[hub]` and restart only if they changed themselves;
//! - a device whose telemetry groups alone changed (it had some and still has) keeps its
//!   session and only its polling restarts ("repolled"); gaining or losing telemetry restarts
//!   the session (the window of messages in flight is set at connect);
//! - anything else keeps running untouched: its MQTT connection stays up.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::config::{self, Config};
use crate::hub::auth::Auth;

/// What makes a device's session what it is, and what its polling is, as digests (so 10,000
/// devices cost 10,000 × 64 bytes, and the key itself is not copied again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    session: [u8; 32],
    polling: [u8; 32],
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

impl Identity {
    #[must_use]
    pub fn of(device: &config::Device) -> Identity {
        // The config's fingerprint covers the device's own section (its key only redacted, its
        // telemetry groups left out) but not the profile methods it inherits nor a key file's
        // content: hash those too.
        let session = digest(&[
            device.bus.as_bytes(),
            device.fingerprint.as_bytes(),
            format!("{:?}", device.methods).as_bytes(),
            &[u8::from(device.telemetry.is_empty())],
            match &device.auth {
                Auth::Sas(key) => key.as_bytes(),
                Auth::X509(files) => files.thumbprint.as_bytes(),
            },
            format!("{:?}", device.transport).as_bytes(),
            format!("{:?}{:?}", device.twin, device.c2d).as_bytes(),
        ]);
        let polling = digest(&[format!("{:?}", device.telemetry).as_bytes()]);
        Identity { session, polling }
    }
}

/// `[hub]` as a session sees it: the settings and the extra CA certificates' content.
#[derive(Debug, Clone, PartialEq)]
pub struct HubIdentity {
    hub: config::Hub,
    ca: Option<Result<Vec<u8>, String>>,
}

impl HubIdentity {
    /// Reads `ca_file` like the TLS setup does (regular files only, bounded), so it never blocks
    /// on a FIFO or a terminal; an unreadable file is part of the identity as its error.
    #[must_use]
    pub fn of(hub: &config::Hub) -> HubIdentity {
        let ca = hub.ca_file.as_ref().map(|path: &PathBuf| {
            crate::regular_file::read_regular(path, crate::hub::tls::MAX_CA_BYTES)
                .map_err(|e| e.to_string())
        });
        HubIdentity {
            hub: hub.clone(),
            ca,
        }
    }
}

/// The ids in each fate, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub keep: Vec<String>,
    /// Devices only: the session stays, the telemetry polling restarts with new groups.
    pub repoll: Vec<String>,
    pub restart: Vec<String>,
    pub start: Vec<String>,
    pub stop: Vec<String>,
}

impl Changes {
    /// Whether anything starts, stops or restarts.
    #[must_use]
    pub fn any(&self) -> bool {
        !(self.restart.is_empty()
            && self.repoll.is_empty()
            && self.start.is_empty()
            && self.stop.is_empty())
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} kept, {} restarted, {} started, {} stopped",
            self.keep.len(),
            self.restart.len(),
            self.start.len(),
            self.stop.len()
        )?;
        if !self.repoll.is_empty() {
            write!(f, ", {} repolled", self.repoll.len())?;
        }
        Ok(())
    }
}

/// What a reload does (and did: the gateway returns it as its summary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub hub_changed: bool,
    pub buses: Changes,
    pub devices: Changes,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "devices: {}; buses: {}", self.devices, self.buses)?;
        if self.hub_changed {
            write!(f, "; [hub] changed, so every device session restarted")?;
        }
        Ok(())
    }
}

/// Compares the running buses and devices with `config`.
#[must_use]
pub fn plan(
    buses: &BTreeMap<String, config::Bus>,
    devices: &BTreeMap<String, (String, Identity)>,
    config: &Config,
    hub_changed: bool,
) -> Plan {
    let mut plan = Plan {
        hub_changed,
        ..Plan::default()
    };
    for b in &config.buses {
        match buses.get(&b.id) {
            Some(old) if old == b => plan.buses.keep.push(b.id.clone()),
            Some(_) => plan.buses.restart.push(b.id.clone()),
            None => plan.buses.start.push(b.id.clone()),
        }
    }
    let wanted: std::collections::BTreeSet<&str> =
        config.buses.iter().map(|b| b.id.as_str()).collect();
    plan.buses.stop = buses
        .keys()
        .filter(|id| !wanted.contains(id.as_str()))
        .cloned()
        .collect();

    let bus_kept = |id: &str| plan.buses.keep.iter().any(|k| k == id);
    let mut fates = Changes::default();
    for d in &config.devices {
        let new = Identity::of(d);
        match devices.get(&d.id) {
            Some((bus, identity))
                if !hub_changed
                    && *bus == d.bus
                    && bus_kept(bus)
                    && identity.session == new.session =>
            {
                if identity.polling == new.polling {
                    fates.keep.push(d.id.clone());
                } else {
                    fates.repoll.push(d.id.clone());
                }
            }
            Some(_) => fates.restart.push(d.id.clone()),
            None => fates.start.push(d.id.clone()),
        }
    }
    let wanted: std::collections::BTreeSet<&str> =
        config.devices.iter().map(|d| d.id.as_str()).collect();
    fates.stop = devices
        .keys()
        .filter(|id| !wanted.contains(id.as_str()))
        .cloned()
        .collect();
    for list in [
        &mut plan.buses.keep,
        &mut plan.buses.restart,
        &mut plan.buses.start,
        &mut fates.keep,
        &mut fates.repoll,
        &mut fates.restart,
        &mut fates.start,
    ] {
        list.sort();
    }
    plan.devices = fates;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const OTHER_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

    fn load(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leafgate.toml");
        std::fs::write(&path, text).unwrap();
        config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn site(
        plc_timeout: u32,
        b_method_address: u16,
        c_key: &str,
        d: bool,
        profile_address: u16,
    ) -> String {
        let mut s = format!(
            r#"
[hub]
hostname = "h.example"
[[bus]]
id = "plc"
kind = "modbus_tcp"
address = "127.0.0.1:502"
timeout_ms = {plc_timeout}
[[bus]]
id = "other"
kind = "modbus_tcp"
address = "127.0.0.1:503"
[[profile]]
id = "meter"
[[profile.method]]
name = "get"
[[profile.method.step]]
op = "read"
table = "holding"
address = {profile_address}
fields = [{{ name = "v" }}]
[[device]]
id = "a"
shared_access_key = "{KEY}"
bus = "other"
unit = 1
raw_methods = true
[[device]]
id = "b"
shared_access_key = "{KEY}"
bus = "other"
unit = 2
[[device.method]]
name = "get"
[[device.method.step]]
op = "read"
table = "holding"
address = {b_method_address}
fields = [{{ name = "v" }}]
[[device]]
id = "c"
shared_access_key = "{c_key}"
bus = "other"
unit = 3
raw_methods = true
[[device]]
id = "m"
shared_access_key = "{KEY}"
bus = "other"
unit = 5
profile = "meter"
[[device]]
id = "on-plc"
shared_access_key = "{KEY}"
bus = "plc"
unit = 1
raw_methods = true
"#
        );
        if d {
            s.push_str(&format!(
                "[[device]]\nid = \"d\"\nshared_access_key = \"{KEY}\"\nbus = \"other\"\nunit = 4\nraw_methods = true\n"
            ));
        }
        s
    }

    fn running(
        cfg: &Config,
    ) -> (
        BTreeMap<String, config::Bus>,
        BTreeMap<String, (String, Identity)>,
    ) {
        (
            cfg.buses
                .iter()
                .map(|b| (b.id.clone(), b.clone()))
                .collect(),
            cfg.devices
                .iter()
                .map(|d| (d.id.clone(), (d.bus.clone(), Identity::of(d))))
                .collect(),
        )
    }

    #[test]
    fn the_same_config_keeps_everything() {
        let cfg = load(&site(1000, 0, KEY, true, 0));
        let (buses, devices) = running(&cfg);
        let plan = plan(&buses, &devices, &cfg, false);
        assert!(!plan.buses.any() && !plan.devices.any(), "{plan:?}");
        assert_eq!(plan.devices.keep, ["a", "b", "c", "d", "m", "on-plc"]);
    }

    #[test]
    fn only_changed_devices_and_the_devices_of_a_changed_bus_restart() {
        let before = load(&site(1000, 0, KEY, true, 0));
        let (buses, devices) = running(&before);
        // plc's timeout, b's method, c's key and the profile change; d is removed.
        let after = load(&site(2000, 7, OTHER_KEY, false, 9));
        let plan = plan(&buses, &devices, &after, false);
        assert_eq!(plan.buses.keep, ["other"]);
        assert_eq!(plan.buses.restart, ["plc"]);
        assert_eq!(plan.devices.keep, ["a"]);
        assert_eq!(plan.devices.restart, ["b", "c", "m", "on-plc"]);
        assert_eq!(plan.devices.stop, ["d"]);
        assert!(plan.devices.start.is_empty());
        // And back: d starts again.
        let (buses, devices) = running(&after);
        let back = super::plan(&buses, &devices, &before, false);
        assert_eq!(back.devices.start, ["d"]);
    }

    #[test]
    fn a_hub_change_restarts_every_device_but_not_unchanged_buses() {
        let cfg = load(&site(1000, 0, KEY, true, 0));
        let (buses, devices) = running(&cfg);
        let plan = plan(&buses, &devices, &cfg, true);
        assert_eq!(plan.devices.restart.len(), 6);
        assert!(plan.devices.keep.is_empty());
        assert_eq!(plan.buses.keep, ["other", "plc"]);
        assert!(plan.to_string().contains("[hub] changed"), "{plan}");
    }

    #[test]
    fn a_removed_bus_stops_with_its_devices() {
        let before = load(&site(1000, 0, KEY, true, 0));
        let (buses, devices) = running(&before);
        let after = load(
            &site(1000, 0, KEY, true, 0)
                .replace("[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:502\"\ntimeout_ms = 1000\n", "")
                .replace("[[device]]\nid = \"on-plc\"\nshared_access_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\nbus = \"plc\"\nunit = 1\nraw_methods = true\n", ""),
        );
        let plan = plan(&buses, &devices, &after, false);
        assert_eq!(plan.buses.stop, ["plc"]);
        assert_eq!(plan.devices.stop, ["on-plc"]);
        assert_eq!(plan.devices.keep.len(), 5);
    }

    fn polled(interval_ms: u32, with_group: bool) -> String {
        let group = if with_group {
            format!(
                "[[device.telemetry]]\nname = \"power\"\ninterval_ms = {interval_ms}\n[[device.telemetry.step]]\nop = \"read\"\ntable = \"input\"\naddress = 0\nfields = [{{ name = \"v\" }}]\n"
            )
        } else {
            String::new()
        };
        format!(
            "[hub]\nhostname = \"h.azure-devices.net\"\n[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:502\"\n[[device]]\nid = \"m\"\nshared_access_key = \"{KEY}\"\nbus = \"plc\"\nunit = 1\nraw_methods = true\n{group}"
        )
    }

    #[test]
    fn changed_telemetry_groups_restart_only_the_polling_and_gaining_them_the_session() {
        let before = load(&polled(1000, true));
        let (buses, devices) = running(&before);
        let plan = super::plan(&buses, &devices, &load(&polled(2000, true)), false);
        assert_eq!(plan.devices.repoll, ["m"]);
        assert!(plan.devices.restart.is_empty() && plan.devices.keep.is_empty());
        assert!(plan.to_string().contains("1 repolled"), "{plan}");
        let plan = super::plan(&buses, &devices, &load(&polled(1000, false)), false);
        assert_eq!(
            plan.devices.restart,
            ["m"],
            "losing telemetry restarts the session"
        );
        let (buses, devices) = running(&load(&polled(1000, false)));
        let plan = super::plan(&buses, &devices, &before, false);
        assert_eq!(
            plan.devices.restart,
            ["m"],
            "gaining telemetry restarts the session"
        );
    }
}
