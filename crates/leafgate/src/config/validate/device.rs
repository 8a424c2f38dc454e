//! The `[[device]]` sections: the unit id the bus's addressing allows, and the methods, the
//! profile's and the device's own, compiled for the bus the device is on. A method that cannot
//! run on that bus is a problem named at the device.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::Problems;
use super::bus::Units;
use super::device_key::resolve_auth;
use super::profile::Profiles;
use super::provisioning::{check_registration_id, provisioned};
use super::twin::{resolve_model_id, resolve_twin};
use crate::config::path::entry;
use crate::config::schema::{BusKind, DeviceConfig};
use crate::config::suggest::nearest;
use crate::config::{C2d, Device, TwinSettings};
use crate::mapping::Method;
use crate::mapping::group::Group;
use crate::mapping::raw;

/// The bus a device is on, as far as resolving the device needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct BusRef {
    pub(super) kind: BusKind,
    pub(super) units: Units,
}

/// The gateway-wide sections every device's services follow.
pub(super) struct Sections {
    pub(super) twin: Option<Arc<TwinSettings>>,
    pub(super) c2d: Option<Arc<C2d>>,
    /// `[provisioning]` is there (valid or not).
    pub(super) provisioning: bool,
    /// Its enrollment group's key, if it has one.
    pub(super) group_key: Option<crate::hub::sas::Key>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn resolve_device(
    file: &Path,
    path: &str,
    d: &DeviceConfig,
    on: BusRef,
    hub: Option<(&str, Option<&str>)>,
    sections: &Sections,
    profiles: &mut Profiles<'_>,
    p: &mut Problems,
) -> Option<Device> {
    let start = p.0.len();
    let kind = on.kind;
    let provisioned = provisioned(d, sections.provisioning);
    if provisioned && let Err(msg) = check_registration_id(&d.id) {
        p.add(file, format!("{path}.id"), msg);
    }
    if d.connection_string.is_some() && sections.provisioning && hub.is_none() {
        p.add(
            file,
            format!("{path}.connection_string"),
            "a device with a connection string connects without DPS, to [hub] hostname: set it",
        );
    }
    let group_key = if provisioned {
        sections.group_key.as_ref()
    } else {
        None
    };
    let auth = resolve_auth(file, path, d, hub, group_key, provisioned, p);
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
    let raw_methods = raw_methods(file, path, d, p);
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
            None => {
                let near = nearest(profile_id, profiles.defs.keys().copied())
                    .map(|near| format!("; did you mean {near:?}?"))
                    .unwrap_or_default();
                p.add(
                    file,
                    format!("{path}.profile"),
                    format!("profile {profile_id:?} is not defined{near}"),
                );
            }
        }
    }
    let mut own = std::collections::BTreeSet::new();
    for (i, m) in d.method.iter().enumerate() {
        let mpath = format!("{path}.{}", entry("method", Some(&m.name), i));
        if !own.insert(m.name.clone()) {
            // Named by its index: its name names the first.
            p.add(
                file,
                format!("{path}.method[{i}].name"),
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
    let telemetry = resolve_groups(file, path, d, kind, profiles, p);
    let model_id = resolve_model_id(file, path, d, profiles, p);
    let twin = resolve_twin(file, path, d, kind, profiles, sections.twin.as_ref(), p);
    if d.method.is_empty()
        && d.profile.is_none()
        && !d.raw_methods
        && d.telemetry.is_empty()
        && d.desired.is_empty()
        && d.property.is_empty()
    {
        p.add(file, path, format!("device {:?} has no methods and no telemetry (add [[device.method]], [[device.telemetry]], a profile, or raw_methods = true)", d.id));
    }
    if p.0.len() != start {
        return None;
    }
    Some(Device {
        id: d.id.clone(),
        auth: auth?,
        transport: d.transport,
        provisioned,
        bus: d.bus.clone(),
        unit,
        raw_methods: raw_methods?,
        methods,
        telemetry,
        model_id,
        twin,
        c2d: sections.c2d.clone(),
        // Without its telemetry groups, which a reload applies without touching the
        // session (gateway::reload).
        fingerprint: {
            let mut section = d.clone();
            section.telemetry.clear();
            format!("{section:?}")
        },
    })
}

/// The profile's telemetry groups, then the device's own; a device's group replaces the
/// profile's group of the same name, as its methods do.
fn resolve_groups(
    file: &Path,
    path: &str,
    d: &DeviceConfig,
    kind: BusKind,
    profiles: &mut Profiles<'_>,
    p: &mut Problems,
) -> Vec<Arc<Group>> {
    let mut groups: Vec<Arc<Group>> = Vec::new();
    if let Some((pfile, compiled)) = d
        .profile
        .as_deref()
        .and_then(|id| profiles.groups(id, kind))
    {
        for compiled in compiled {
            match compiled {
                Ok(group) => groups.push(Arc::clone(group)),
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
    let mut own = std::collections::BTreeSet::new();
    for (i, g) in d.telemetry.iter().enumerate() {
        let gpath = format!("{path}.{}", entry("telemetry", Some(&g.name), i));
        if !own.insert(g.name.clone()) {
            // Named by its index: its name names the first.
            p.add(
                file,
                format!("{path}.telemetry[{i}].name"),
                format!("telemetry group {:?} is defined twice", g.name),
            );
            continue;
        }
        match Group::compile(g, kind, &gpath) {
            Ok(group) => {
                groups.retain(|old| old.name != group.name);
                groups.push(Arc::new(group));
            }
            Err(problems) => {
                for pr in problems {
                    p.add(file, pr.path, pr.message);
                }
            }
        }
    }
    groups
}

/// The raw methods' deadline: `Some` when they are on (`raw_methods_timeout_ms`, else
/// [`raw::TIMEOUT`]), `None` when off; the outer `None` is a problem, already recorded.
fn raw_methods(
    file: &Path,
    path: &str,
    d: &DeviceConfig,
    p: &mut Problems,
) -> Option<Option<Duration>> {
    match (d.raw_methods, d.raw_methods_timeout_ms) {
        (false, None) => Some(None),
        (false, Some(_)) => {
            p.add(
                file,
                format!("{path}.raw_methods_timeout_ms"),
                "applies only with raw_methods = true",
            );
            None
        }
        (true, None) => Some(Some(raw::TIMEOUT)),
        (true, Some(ms)) if (100..=300_000).contains(&ms) => Some(Some(Duration::from_millis(ms))),
        (true, Some(ms)) => {
            p.add(
                file,
                format!("{path}.raw_methods_timeout_ms"),
                format!("{ms} is outside 100..=300000"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::testing::{HUB, problems};
    use super::*;

    fn with_device(extra: &str) -> String {
        format!(
            "{HUB}[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:502\"\n\
             [[device]]\nid = \"d\"\nshared_access_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n\
             bus = \"plc\"\nunit = 1\n{extra}\n"
        )
    }

    fn raw_deadline(extra: &str) -> Option<Duration> {
        let cfg = crate::config::load::parse(&with_device(extra)).unwrap();
        let config = super::super::validate(vec![(PathBuf::from("leafgate.toml"), cfg)]).unwrap();
        config.devices[0].raw_methods
    }

    #[test]
    fn raw_methods_have_a_configurable_deadline_only_when_they_are_on() {
        assert_eq!(raw_deadline("raw_methods = true"), Some(raw::TIMEOUT));
        assert_eq!(
            raw_deadline("raw_methods = true\nraw_methods_timeout_ms = 30000"),
            Some(Duration::from_secs(30))
        );
        let got = problems(&with_device(
            "raw_methods = true\nraw_methods_timeout_ms = 50",
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].ends_with("raw_methods_timeout_ms: 50 is outside 100..=300000"),
            "{got:?}"
        );
        let got = problems(&with_device(
            "[[device.method]]\nname = \"m\"\n[[device.method.step]]\nop = \"read\"\ntable = \"holding\"\naddress = 0\nfields = [{ name = \"v\", type = \"u16\" }]\n",
        ));
        assert_eq!(got, Vec::<String>::new());
        let got = problems(&with_device(
            "raw_methods_timeout_ms = 3000\nraw_methods = false\n[[device.method]]\nname = \"m\"\n[[device.method.step]]\nop = \"read\"\ntable = \"holding\"\naddress = 0\nfields = [{ name = \"v\", type = \"u16\" }]\n",
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].ends_with("raw_methods_timeout_ms: applies only with raw_methods = true"),
            "{got:?}"
        );
    }
}
