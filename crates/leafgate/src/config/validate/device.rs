//! The `[[device]]` sections: the unit id the bus's addressing allows, and the methods, the
//! profile's and the device's own, compiled for the bus the device is on. A method that cannot
//! run on that bus is a problem named at the device.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

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
        raw_methods: d.raw_methods,
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
