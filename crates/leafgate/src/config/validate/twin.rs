//! The twin and cloud-to-device sections: `[twin]`, `[c2d]`, and each device's twin mappings
//! (`reported`, `property`, `desired`: the profile's, then the device's own) and `model_id`.
//! Names and values are held to IoT Hub's twin rules (`iothub-protocol.md` 5) here, once at
//! load, so that a PATCH the hub would refuse is a config problem naming its key.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Problems;
use super::profile::{Compiled, Profiles};
use crate::config::path::entry;
use crate::config::schema::{BusKind, C2dConfig, DeviceConfig, TwinConfig};
use crate::config::{C2d, Property, Twin, TwinSettings};
use crate::mapping::Method;

/// The key leafgate reports its own view of a device under.
pub const HEALTH_KEY: &str = "leafgate";
/// IoT Hub's limit on a twin's reported properties.
pub const MAX_REPORTED_BYTES: usize = 32 * 1024;
/// What static properties may take of it: the rest is for leafgate's view, acknowledgements
/// and what is read from the hardware.
const MAX_STATIC_BYTES: usize = 24 * 1024;
/// IoT Hub's limits on twin keys, string values and integers.
const MAX_KEY_BYTES: usize = 1024;
const MAX_STRING_BYTES: usize = 4 * 1024;
const MAX_SAFE_INTEGER: i64 = 4_503_599_627_370_495;

pub(super) fn resolve_twin_settings(file: &Path, t: &TwinConfig, p: &mut Problems) -> TwinSettings {
    let mut range = |key: &str, value: u64, min: u64, max: u64| {
        if !(min..=max).contains(&value) {
            p.add(
                file,
                format!("twin.{key}"),
                format!("{value} is outside {min}..={max}"),
            );
        }
    };
    range("report_interval_ms", t.report_interval_ms, 100, 3_600_000);
    range("request_timeout_ms", t.request_timeout_ms, 1000, 300_000);
    range("max_gets_per_s", u64::from(t.max_gets_per_s), 1, 10_000);
    range(
        "max_patches_per_s",
        u64::from(t.max_patches_per_s),
        1,
        10_000,
    );
    TwinSettings {
        report_interval: Duration::from_millis(t.report_interval_ms),
        request_timeout: Duration::from_millis(t.request_timeout_ms),
        max_gets_per_s: t.max_gets_per_s.max(1),
        max_patches_per_s: t.max_patches_per_s.max(1),
    }
}

pub(super) fn resolve_c2d(file: &Path, c: &C2dConfig, p: &mut Problems) -> C2d {
    if let Err(why) = twin_key(&c.method_property) {
        p.add(file, "c2d.method_property", why);
    }
    // The hub keeps a message at most 48 hours.
    if !(1..=172_800).contains(&c.dedup_window_s) {
        p.add(
            file,
            "c2d.dedup_window_s",
            format!("{} is outside 1..=172800", c.dedup_window_s),
        );
    }
    C2d {
        method_property: c.method_property.clone(),
        dedup_window: Duration::from_secs(c.dedup_window_s),
        report: c.report,
    }
}

/// A key IoT Hub takes in a twin (and as a message property name): at most 1 KiB, none of
/// `.`, `$`, space or control characters.
pub fn twin_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("{key:?}: a twin key is 1 to {MAX_KEY_BYTES} bytes"));
    }
    if let Some(c) = key
        .chars()
        .find(|c| matches!(c, '.' | '$' | ' ') || c.is_control())
    {
        return Err(format!(
            "{key:?}: a twin key may not hold {c:?} (no '.', '$', space or control characters)"
        ));
    }
    Ok(())
}

/// A DTMI as IoT Plug and Play takes it: `dtmi:` segments separated by `:`, each a letter
/// followed by letters, digits or underscores (not ending in one), then `;` and a version.
pub fn dtmi(id: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "{id:?} is not a DTMI (like \"dtmi:com:example:Pump;1\")"
        ))
    };
    let Some(rest) = id.strip_prefix("dtmi:") else {
        return bad();
    };
    let Some((path, version)) = rest.rsplit_once(';') else {
        return bad();
    };
    let version_ok = !version.is_empty()
        && version.len() <= 9
        && version.bytes().all(|b| b.is_ascii_digit())
        && !version.starts_with('0');
    let segment_ok = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && !s.ends_with('_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if id.len() > 128 || !version_ok || !path.split(':').all(segment_ok) {
        return bad();
    }
    Ok(())
}

/// A static value within the twin's limits.
fn value_ok(value: &Value) -> Result<(), String> {
    match value {
        Value::String(s) if s.len() > MAX_STRING_BYTES => Err(format!(
            "a twin string is at most {MAX_STRING_BYTES} bytes; this one has {}",
            s.len()
        )),
        Value::Number(n) if n.as_i64().is_some_and(|i| i.abs() > MAX_SAFE_INTEGER) => Err(format!(
            "{n} is outside the twin's integer range ±{MAX_SAFE_INTEGER}"
        )),
        _ => Ok(()),
    }
}

/// Adds a profile's compiled entries (problems named at the profile, for this device) and then
/// the device's own, which replace the profile's of the same name.
fn merge_entries(
    profile: Option<(&std::path::PathBuf, &Compiled<Method>)>,
    own: impl Iterator<Item = (String, Result<Method, Vec<crate::mapping::method::Problem>>)>,
    file: &Path,
    device_id: &str,
    p: &mut Problems,
) -> BTreeMap<String, (Arc<Method>, Option<String>)> {
    let mut out: BTreeMap<String, (Arc<Method>, Option<String>)> = BTreeMap::new();
    if let Some((pfile, compiled)) = profile {
        for entry in compiled {
            match entry {
                Ok(m) => {
                    out.insert(m.name.clone(), (Arc::clone(m), None));
                }
                Err(problems) => {
                    for pr in problems {
                        p.add(
                            pfile,
                            pr.path.clone(),
                            format!("{} (used by device {device_id:?})", pr.message),
                        );
                    }
                }
            }
        }
    }
    for (path, entry) in own {
        match entry {
            Ok(m) => {
                out.insert(m.name.clone(), (Arc::new(m), Some(path)));
            }
            Err(problems) => {
                for pr in problems {
                    p.add(file, pr.path, pr.message);
                }
            }
        }
    }
    out
}

/// The device's IoT Plug and Play model: its own `model_id`, else its profile's.
pub(super) fn resolve_model_id(
    file: &Path,
    path: &str,
    d: &DeviceConfig,
    profiles: &Profiles<'_>,
    p: &mut Problems,
) -> Option<String> {
    if let Some(id) = &d.model_id {
        if let Err(why) = dtmi(id) {
            p.add(file, format!("{path}.model_id"), why);
        }
        return Some(id.clone());
    }
    let (pfile, ppath, profile) = profiles.def(d.profile.as_deref()?)?;
    let id = profile.model_id.as_ref()?;
    if let Err(why) = dtmi(id) {
        p.add(pfile, format!("{ppath}.model_id"), why);
    }
    Some(id.clone())
}

/// The device's twin mappings, when `[twin]` is configured. Without it, a device (or profile)
/// that maps twin properties is a problem: they would silently do nothing.
pub(super) fn resolve_twin(
    file: &Path,
    path: &str,
    d: &DeviceConfig,
    kind: BusKind,
    profiles: &mut Profiles<'_>,
    settings: Option<&Arc<TwinSettings>>,
    p: &mut Problems,
) -> Option<Twin> {
    let profile = d.profile.as_deref().and_then(|id| profiles.def(id));
    let Some(settings) = settings else {
        let maps = |reported: bool, property: bool, desired: bool| reported || property || desired;
        let own = maps(
            !d.reported.is_empty(),
            !d.property.is_empty(),
            !d.desired.is_empty(),
        );
        let inherited = profile.is_some_and(|(_, _, pr)| {
            maps(
                !pr.reported.is_empty(),
                !pr.property.is_empty(),
                !pr.desired.is_empty(),
            )
        });
        if own || inherited {
            p.add(
                file,
                path,
                format!("device {:?} maps twin properties (reported, property or desired) but [twin] is not configured: add a [twin] section to keep device twins", d.id),
            );
        }
        return None;
    };
    // Every reported key, with the config key it comes from, to name collisions.
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    keys.insert(
        HEALTH_KEY.to_owned(),
        "leafgate's own view of the device".to_owned(),
    );
    let mut claim = |p: &mut Problems, file: &Path, key: &str, at: String| {
        if let Err(why) = twin_key(key) {
            p.add(file, at.clone(), why);
        }
        if let Some(other) = keys.insert(key.to_owned(), at.clone()) {
            p.add(
                file,
                at,
                format!("reported property {key:?} is also {other}"),
            );
        }
    };

    // Static values: the profile's, then the device's own.
    let mut reported: BTreeMap<String, Value> = BTreeMap::new();
    let mut sources: Vec<(
        &Path,
        String,
        &BTreeMap<String, crate::config::schema::Constant>,
    )> = Vec::new();
    if let Some((pfile, ppath, pr)) = profile {
        sources.push((pfile, format!("{ppath}.reported"), &pr.reported));
    }
    sources.push((file, format!("{path}.reported"), &d.reported));
    for (sfile, spath, values) in sources {
        for (key, value) in values {
            let value = value.to_json();
            if let Err(why) = value_ok(&value) {
                p.add(sfile, format!("{spath}.{key}"), why);
            }
            reported.insert(key.clone(), value);
        }
    }
    for key in reported.keys() {
        claim(p, file, key, format!("{path}.reported.{key}"));
    }
    let size = serde_json::to_vec(&reported).map_or(0, |v| v.len());
    if size > MAX_STATIC_BYTES {
        p.add(
            file,
            format!("{path}.reported"),
            format!("static reported properties take {size} bytes as JSON; at most {MAX_STATIC_BYTES} leave room in IoT Hub's {MAX_REPORTED_BYTES} bytes for leafgate's view, acknowledgements and hardware readings"),
        );
    }

    let pid = d.profile.clone().unwrap_or_default();
    let desired = merge_entries(
        profiles.desired(&pid, kind),
        d.desired.iter().enumerate().map(|(i, m)| {
            let at = format!("{path}.{}", entry("desired", Some(&m.name), i));
            (at.clone(), Method::compile(m, kind, &at))
        }),
        file,
        &d.id,
        p,
    );
    for (name, (method, at)) in &desired {
        let at = at
            .clone()
            .unwrap_or_else(|| format!("desired property {name:?} of profile {pid:?}"));
        if !method.may_write() {
            p.add(
                file,
                format!("{at}.step"),
                "a desired property must change the hardware: give it a write or send step",
            );
        }
        claim(p, file, name, at);
    }

    let intervals: BTreeMap<String, Option<u64>> = profile
        .into_iter()
        .flat_map(|(_, _, pr)| pr.property.iter())
        .chain(d.property.iter())
        .map(|pr| (pr.name.clone(), pr.interval_s))
        .collect();
    for (i, pr) in d.property.iter().enumerate() {
        if let Some(s) = pr.interval_s
            && !(1..=604_800).contains(&s)
        {
            p.add(
                file,
                format!("{path}.{}.interval_s", entry("property", Some(&pr.name), i)),
                format!("{s} is outside 1..=604800"),
            );
        }
    }
    let properties = merge_entries(
        profiles.properties(&pid, kind),
        d.property.iter().enumerate().map(|(i, pr)| {
            let at = format!("{path}.{}", entry("property", Some(&pr.name), i));
            (at.clone(), Method::compile(&pr.as_method(), kind, &at))
        }),
        file,
        &d.id,
        p,
    );
    for (name, (method, at)) in &properties {
        let at = at
            .clone()
            .unwrap_or_else(|| format!("property {name:?} of profile {pid:?}"));
        if method.writes_modbus() {
            p.add(
                file,
                format!("{at}.step"),
                "a property read from the hardware may not write: use op = \"read\"",
            );
        }
        for field in method.reply_fields() {
            claim(p, file, field.name, format!("{at} field {:?}", field.name));
        }
    }

    Some(Twin {
        settings: Arc::clone(settings),
        reported,
        properties: properties
            .into_iter()
            .map(|(name, (read, _))| {
                let interval = intervals
                    .get(&name)
                    .copied()
                    .flatten()
                    .map(Duration::from_secs);
                Arc::new(Property { read, interval })
            })
            .collect(),
        desired: desired
            .into_iter()
            .map(|(name, (m, _))| (name, m))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{HUB, problems};
    use super::*;

    const BUS: &str = "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:502\"\n";
    const DEVICE: &str =
        "[[device]]\nid = \"pump-1\"\nbus = \"plc\"\nunit = 1\nshared_access_key = \"c2VjcmV0\"\n";
    const SETPOINT: &str = "[[device.desired]]\nname = \"speedSetpoint\"\n[[device.desired.step]]\nop = \"write\"\ntable = \"holding\"\naddress = 10\nfields = [{ name = \"speedSetpoint\", type = \"u16\", max = 3000 }]\n";
    const SERIAL: &str = "[[device.property]]\nname = \"identity\"\n[[device.property.step]]\nop = \"read\"\ntable = \"input\"\naddress = 0\nfields = [{ name = \"serialNumber\", type = \"u32\" }]\n";

    fn config(sections: &str, device: &str) -> Vec<String> {
        problems(&format!("{HUB}{sections}{BUS}{DEVICE}{device}"))
    }

    #[test]
    fn a_device_with_twin_mappings_and_twin_settings_is_valid() {
        let toml = format!(
            "{HUB}[twin]\n[c2d]\n{BUS}{DEVICE}model_id = \"dtmi:com:example:Pump;1\"\nmethod = []\n[device.reported]\nlocation = \"Hall 3\"\n{SETPOINT}{SERIAL}"
        );
        let cfg: crate::config::schema::FileConfig = crate::config::load::parse(&toml).unwrap();
        let config = super::super::validate(vec![("leafgate.toml".into(), cfg)]).unwrap();
        let device = &config.devices[0];
        assert_eq!(device.model_id.as_deref(), Some("dtmi:com:example:Pump;1"));
        let twin = device.twin.as_ref().unwrap();
        assert_eq!(twin.reported["location"], "Hall 3");
        assert_eq!(twin.desired.keys().collect::<Vec<_>>(), ["speedSetpoint"]);
        assert_eq!(twin.properties.len(), 1);
        assert_eq!(twin.properties[0].interval, None);
        let c2d = device.c2d.as_ref().unwrap();
        assert_eq!(c2d.method_property, "method");
        assert_eq!(c2d.dedup_window, Duration::from_secs(3600));
    }

    #[test]
    fn twin_mappings_without_a_twin_section_are_named() {
        let got = config("", SETPOINT);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("device \"pump-1\": device \"pump-1\" maps twin properties"),
            "{got:?}"
        );
    }

    #[test]
    fn bad_twin_mappings_are_named_at_their_keys() {
        let read_only_desired = SETPOINT
            .replace("op = \"write\"", "op = \"read\"")
            .replace(", max = 3000", "");
        let writing_property = SERIAL.replace(
            "op = \"read\"\ntable = \"input\"",
            "op = \"write\"\ntable = \"holding\"",
        );
        let got = config(
            "[twin]\nreport_interval_ms = 10\n[c2d]\nmethod_property = \"$method\"\n",
            &format!(
                "model_id = \"pump\"\n[device.reported]\n\"asset.tag\" = 1\nspeedSetpoint = 2\n{read_only_desired}{writing_property}"
            ),
        );
        let expected = [
            "twin.report_interval_ms: 10 is outside 100..=3600000",
            "c2d.method_property: \"$method\": a twin key may not hold '$'",
            "device \"pump-1\".model_id: \"pump\" is not a DTMI",
            "device \"pump-1\".reported.asset.tag: \"asset.tag\": a twin key may not hold '.'",
            "device \"pump-1\".desired \"speedSetpoint\".step: a desired property must change the hardware",
            "device \"pump-1\".desired \"speedSetpoint\": reported property \"speedSetpoint\" is also device \"pump-1\".reported.speedSetpoint",
            "device \"pump-1\".property \"identity\".step: a property read from the hardware may not write",
        ];
        for e in expected {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {got:#?}"
            );
        }
    }

    #[test]
    fn static_values_that_leave_no_room_in_the_hubs_32_kb_are_refused() {
        let big = "x".repeat(4000);
        let values: String = (0..7).map(|i| format!("k{i} = \"{big}\"\n")).collect();
        let got = config(
            "[twin]\n",
            &format!("raw_methods = true\n[device.reported]\n{values}"),
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("device \"pump-1\".reported: static reported properties take 28"),
            "{got:?}"
        );
        let fits: String = (0..5).map(|i| format!("k{i} = \"{big}\"\n")).collect();
        let fits = format!("raw_methods = true\n[device.reported]\n{fits}");
        assert!(config("[twin]\n", &fits).is_empty());
    }

    #[test]
    fn twin_keys_follow_the_hubs_rules() {
        assert!(twin_key("speedSetpoint").is_ok());
        assert!(twin_key("asset_tag-2").is_ok());
        for bad in ["", "a.b", "$version", "a b", "a\u{1}", &"k".repeat(1025)] {
            assert!(twin_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dtmis_are_checked_as_plug_and_play_takes_them() {
        for good in ["dtmi:com:example:Pump;1", "dtmi:leafgate:meter_a;12"] {
            assert!(dtmi(good).is_ok(), "{good}");
        }
        for bad in [
            "com:example:Pump;1",
            "dtmi:com:example:Pump",
            "dtmi:com:example:Pump;0",
            "dtmi:com:1example:Pump;1",
            "dtmi:com:example_:Pump;1",
            "dtmi:com::Pump;1",
            "dtmi:com:ex-ample:Pump;1",
        ] {
            assert!(dtmi(bad).is_err(), "{bad}");
        }
    }
}
