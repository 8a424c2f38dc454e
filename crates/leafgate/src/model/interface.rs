//! One profile as a DTDL v2 interface: its entries compiled for a bus kind exactly as the
//! gateway compiles them, then described. Pure: no files, no I/O.
//!
//! | in the profile | in the interface |
//! |---|---|
//! | leafgate's own view (with `[twin]`) | read-only Property `leafgate` (Object) |
//! | `reported` values | read-only Property, schema of the value |
//! | `property` (read from the hardware) | read-only Property per field read |
//! | `desired` | writable Property: its one payload field's schema when the field is named like the property, else an Object of its payload fields |
//! | `telemetry` groups | Telemetry `ts` (dateTime) and one Telemetry per field read |
//! | `method` | Command: request an Object of its payload fields, response an Object of its reply fields (each left out when there are none) |
//!
//! A name DTDL does not take (leafgate allows `-` and `.`), a name given twice (a telemetry
//! field named like a property), and a desired property without payload fields cannot be in
//! the interface: each is left out with a warning, and the interface stays valid.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::Error;
use super::dtdl::{self, Described, MAX_CONTENTS, NAME_RULE};
use crate::config::path::entry;
use crate::config::schema::{
    BusKind, FieldConfig, MethodConfig, ProfileConfig, StepConfig, StepOp,
};
use crate::config::validate::HEALTH_KEY;
use crate::mapping::Method;
use crate::mapping::group::{Group, TIMESTAMP_KEY};
use crate::mapping::method::{Field, Problem};

/// What [`build`] makes: the interface, and what it had to leave out.
#[derive(Debug, Clone, PartialEq)]
pub struct Interface {
    pub json: Value,
    pub warnings: Vec<String>,
}

/// The profile as an interface with id `id` (a DTMI, already checked), its entries compiled for
/// `kind`. `twin`: whether devices keep a twin (`[twin]`); without it they report nothing and
/// take no desired properties, so the interface has no properties. `at` is the file and key
/// path the profile is defined at, for problems.
///
/// # Errors
/// The profile's compile problems, or a unit on a field that is not a number.
pub fn build(
    profile: &ProfileConfig,
    kind: BusKind,
    id: &str,
    twin: bool,
    at: (&Path, &str),
) -> Result<Interface, Error> {
    let compiled = Compiled::of(profile, kind, at)?;
    let mut out = Contents::default();
    if twin {
        out.add(
            HEALTH_KEY,
            "leafgate's view of the device",
            dtdl::health(HEALTH_KEY),
        );
        for (name, value) in &profile.reported {
            let item = json!({"@type": "Property", "name": name, "schema": dtdl::constant(value)});
            out.add(name, &format!("reported property {name:?}"), item);
        }
        for (cfg, read) in profile.property.iter().zip(&compiled.properties) {
            let what = format!("property {:?}", cfg.name);
            for field in read.reply_fields() {
                let value = describe(&what, &field, reply_config(&cfg.step, field.name))?;
                let what = format!("field {:?} of {what}", field.name);
                out.add(field.name, &what, dtdl::content("Property", &value));
            }
        }
        for (cfg, write) in profile.desired.iter().zip(&compiled.desired) {
            let what = format!("desired property {:?}", cfg.name);
            let fields = payload(&what, cfg, write)?;
            let schema = match fields.as_slice() {
                [] => {
                    out.warn(format!("{what} is left out: it takes no payload field, and DTDL has no schema for an empty object"));
                    continue;
                }
                [one] if one.name == cfg.name => dtdl::content("Property", one),
                many => match out.object(&what, many) {
                    Some(object) => {
                        json!({"@type": "Property", "name": cfg.name, "schema": object})
                    }
                    None => continue,
                },
            };
            let mut item = schema;
            item["writable"] = json!(true);
            out.add(&cfg.name, &what, item);
        }
    }
    if !compiled.groups.is_empty() {
        let ts = json!({"@type": "Telemetry", "name": TIMESTAMP_KEY, "schema": "dateTime",
                        "description": "when the reading was taken (UTC)"});
        out.add(TIMESTAMP_KEY, "the readings' timestamp", ts);
    }
    for (cfg, group) in profile.telemetry.iter().zip(&compiled.groups) {
        let what = format!("telemetry group {:?}", cfg.name);
        for field in group.reads.reply_fields() {
            let value = describe(&what, &field, reply_config(&cfg.step, field.name))?;
            let what = format!("field {:?} of {what}", field.name);
            out.add_telemetry(field.name, &what, dtdl::content("Telemetry", &value));
        }
    }
    for (cfg, method) in profile.method.iter().zip(&compiled.methods) {
        let what = format!("method {:?}", cfg.name);
        let request = payload(&what, cfg, method)?;
        let mut response = Vec::new();
        for field in method.reply_fields() {
            response.push(describe(
                &what,
                &field,
                reply_config(&cfg.step, field.name),
            )?);
        }
        if !dtdl::is_name(&cfg.name) {
            out.warn(format!("{what} is left out: {NAME_RULE}"));
            continue;
        }
        let mut item = json!({"@type": "Command", "name": cfg.name});
        if !request.is_empty() {
            let Some(object) = out.object(&what, &request) else {
                continue;
            };
            item["request"] = json!({"name": "payload", "schema": object});
        }
        if !response.is_empty() {
            let Some(object) = out.object(&what, &response) else {
                continue;
            };
            item["response"] = json!({"name": "reply", "schema": object});
        }
        out.add(&cfg.name, &what, item);
    }
    if out.items.len() > MAX_CONTENTS {
        return Err(Error::TooLarge {
            contents: out.items.len(),
        });
    }
    let json = json!({
        "@context": "dtmi:dtdl:context;2",
        "@id": id,
        "@type": "Interface",
        "displayName": display_name(&profile.id),
        "description": format!("leafgate profile {:?}", profile.id),
        "contents": out.items,
    });
    Ok(Interface {
        json,
        warnings: out.warnings,
    })
}

/// The profile's entries compiled for one bus kind, in config order.
struct Compiled {
    methods: Vec<Method>,
    groups: Vec<Group>,
    desired: Vec<Method>,
    properties: Vec<Method>,
}

impl Compiled {
    fn of(profile: &ProfileConfig, kind: BusKind, at: (&Path, &str)) -> Result<Compiled, Error> {
        let (file, path) = at;
        let mut problems: Vec<Problem> = Vec::new();
        let methods: Vec<Option<Method>> = (profile.method.iter().enumerate())
            .map(|(i, m)| {
                Method::compile(
                    m,
                    kind,
                    &format!("{path}.{}", entry("method", Some(&m.name), i)),
                )
            })
            .map(|r| keep(r, &mut problems))
            .collect();
        let groups: Vec<Option<Group>> = (profile.telemetry.iter().enumerate())
            .map(|(i, g)| {
                Group::compile(
                    g,
                    kind,
                    &format!("{path}.{}", entry("telemetry", Some(&g.name), i)),
                )
            })
            .map(|r| keep(r, &mut problems))
            .collect();
        let desired: Vec<Option<Method>> = (profile.desired.iter().enumerate())
            .map(|(i, m)| {
                Method::compile(
                    m,
                    kind,
                    &format!("{path}.{}", entry("desired", Some(&m.name), i)),
                )
            })
            .map(|r| keep(r, &mut problems))
            .collect();
        let properties: Vec<Option<Method>> = (profile.property.iter().enumerate())
            .map(|(i, p)| {
                Method::compile(
                    &p.as_method(),
                    kind,
                    &format!("{path}.{}", entry("property", Some(&p.name), i)),
                )
            })
            .map(|r| keep(r, &mut problems))
            .collect();
        if !problems.is_empty() {
            let problems = (problems.into_iter())
                .map(|p| crate::config::Problem {
                    file: file.to_path_buf(),
                    path: p.path,
                    message: p.message,
                })
                .collect();
            return Err(Error::Compile { kind, problems });
        }
        Ok(Compiled {
            methods: methods.into_iter().flatten().collect(),
            groups: groups.into_iter().flatten().collect(),
            desired: desired.into_iter().flatten().collect(),
            properties: properties.into_iter().flatten().collect(),
        })
    }
}

/// The compiled entry, or `None` with its problems added to `problems`.
fn keep<T>(compiled: Result<T, Vec<Problem>>, problems: &mut Vec<Problem>) -> Option<T> {
    compiled.map_err(|mut p| problems.append(&mut p)).ok()
}

/// A value as the model describes it; `what` names its entry for the error.
fn describe(what: &str, field: &Field<'_>, cfg: Option<&FieldConfig>) -> Result<Described, Error> {
    dtdl::describe(field.name, field.data_type, field.min, field.max, cfg).map_err(|e| {
        Error::UnitNotNumeric {
            at: format!("field {:?} of {what}", field.name),
            unit: e.unit,
            data_type: e.data_type,
        }
    })
}

/// The payload fields of a method (or desired property), described.
fn payload(what: &str, cfg: &MethodConfig, method: &Method) -> Result<Vec<Described>, Error> {
    (method.payload_fields().iter())
        .map(|f| describe(what, f, payload_config(&cfg.step, f.name)))
        .collect()
}

/// The config of the payload field `name`: a write field or a send parameter.
fn payload_config<'c>(steps: &'c [StepConfig], name: &str) -> Option<&'c FieldConfig> {
    steps.iter().find_map(|s| {
        let list = match s.op {
            StepOp::Write => &s.fields,
            StepOp::Send => &s.params,
            StepOp::Read => return None,
        };
        list.iter().find(|f| f.name.as_deref() == Some(name))
    })
}

/// The config of the reply field `name`: a read field or a send step's capture.
fn reply_config<'c>(steps: &'c [StepConfig], name: &str) -> Option<&'c FieldConfig> {
    steps
        .iter()
        .filter(|s| s.op != StepOp::Write)
        .find_map(|s| s.fields.iter().find(|f| f.name.as_deref() == Some(name)))
}

/// DTDL v2 takes a display name of at most 64 characters.
fn display_name(id: &str) -> String {
    id.chars().take(dtdl::MAX_NAME).collect()
}

/// The interface's contents as they are added, each name once.
#[derive(Default)]
struct Contents {
    items: Vec<Value>,
    /// Each name taken, and by what.
    names: BTreeMap<String, String>,
    warnings: Vec<String>,
}

impl Contents {
    fn warn(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    /// Adds `item` under `name` unless DTDL does not take the name or it is taken.
    fn add(&mut self, name: &str, what: &str, item: Value) {
        if !dtdl::is_name(name) {
            self.warn(format!("{what} is left out: {NAME_RULE}"));
            return;
        }
        if let Some(other) = self.names.get(name) {
            self.warn(format!(
                "{what} is left out: its name {name:?} is taken by {other}"
            ));
            return;
        }
        self.names.insert(name.to_owned(), what.to_owned());
        self.items.push(item);
    }

    /// Like [`Contents::add`], for a telemetry field: one read by several groups with the same
    /// schema is one Telemetry.
    fn add_telemetry(&mut self, name: &str, what: &str, item: Value) {
        if self.items.contains(&item) {
            return;
        }
        self.add(name, what, item);
    }

    /// An Object schema of `fields`, or `None` with a warning when a field's name is not one
    /// DTDL takes.
    fn object(&mut self, what: &str, fields: &[Described]) -> Option<Value> {
        if let Some(bad) = fields.iter().find(|f| !dtdl::is_name(&f.name)) {
            self.warn(format!(
                "{what} is left out: its field {:?} cannot be named in DTDL ({NAME_RULE})",
                bad.name
            ));
            return None;
        }
        Some(dtdl::object(fields))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A pump profile: a scaled read, a write with a range, a method DTDL cannot name, a group,
    /// static, hardware-read and desired properties (scalar and object).
    const PUMP: &str = r#"
[[profile]]
id = "pump"
model_id = "dtmi:com:example:Pump;1"
[profile.reported]
location = "Hall 3"
ratedKw = 7.5
poles = 4
[[profile.method]]
name = "getStatus"
[[profile.method.step]]
op = "read"
table = "input"
address = 0
fields = [
  { name = "speed", type = "u16", scale = 0.1, unit = "revolutionPerMinute" },
  { name = "hours", type = "u32" },
  { name = "running", type = "bit", bit = 0 },
]
[[profile.method]]
name = "setSpeed"
[[profile.method.step]]
op = "write"
table = "holding"
address = 100
fields = [{ name = "speed", type = "u16", min = 0, max = 3000 }, { type = "u16", value = 1 }]
[[profile.method]]
name = "factory.reset"
[[profile.method.step]]
op = "write"
table = "coil"
address = 9
fields = [{ type = "bool", value = true }]
[[profile.telemetry]]
name = "fast"
interval_ms = 1000
[[profile.telemetry.step]]
op = "read"
table = "input"
address = 0
fields = [{ name = "temperature", type = "i16", scale = 0.1, unit = "degreeCelsius" }, { name = "flow", type = "f32" }]
[[profile.property]]
name = "identity"
[[profile.property.step]]
op = "read"
table = "input"
address = 50
fields = [{ name = "serialNumber", type = "string", length = 4 }, { name = "firmware", type = "u16" }]
[[profile.desired]]
name = "speedSetpoint"
[[profile.desired.step]]
op = "write"
table = "holding"
address = 10
fields = [{ name = "speedSetpoint", type = "u16", max = 3000, unit = "revolutionPerMinute" }]
[[profile.desired]]
name = "limits"
[[profile.desired.step]]
op = "write"
table = "holding"
address = 20
fields = [{ name = "low", type = "i16" }, { name = "high", type = "i16" }]
"#;

    fn profile(toml: &str) -> ProfileConfig {
        let mut file = crate::config::load::parse(toml).unwrap();
        file.profile.remove(0)
    }

    fn build_pump(twin: bool) -> Interface {
        let pump = profile(PUMP);
        let at = (Path::new("leafgate.toml"), "profile[0]");
        build(
            &pump,
            BusKind::ModbusTcp,
            "dtmi:com:example:Pump;1",
            twin,
            at,
        )
        .unwrap()
    }

    fn content<'a>(interface: &'a Interface, name: &str) -> Option<&'a Value> {
        interface.json["contents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
    }

    #[test]
    fn every_kind_of_entry_becomes_its_content() {
        let got = build_pump(true);
        assert_eq!(got.json["@context"], "dtmi:dtdl:context;2");
        assert_eq!(got.json["@id"], "dtmi:com:example:Pump;1");
        assert_eq!(got.json["@type"], "Interface");
        let names: Vec<&str> = got.json["contents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "leafgate",
                "location",
                "poles",
                "ratedKw",
                "serialNumber",
                "firmware",
                "speedSetpoint",
                "limits",
                "ts",
                "temperature",
                "flow",
                "getStatus",
                "setSpeed",
            ]
        );
        assert_eq!(
            got.warnings,
            [format!("method \"factory.reset\" is left out: {NAME_RULE}")]
        );
    }

    #[test]
    fn properties_say_what_is_reported_and_what_may_be_written() {
        let got = build_pump(true);
        assert_eq!(
            content(&got, "leafgate").unwrap()["schema"]["@type"],
            "Object"
        );
        assert_eq!(
            content(&got, "location").unwrap(),
            &json!({"@type": "Property", "name": "location", "schema": "string"})
        );
        assert_eq!(content(&got, "ratedKw").unwrap()["schema"], "double");
        assert_eq!(content(&got, "poles").unwrap()["schema"], "long");
        assert_eq!(
            content(&got, "serialNumber").unwrap(),
            &json!({"@type": "Property", "name": "serialNumber", "schema": "string"})
        );
        assert_eq!(content(&got, "firmware").unwrap()["schema"], "integer");
        assert_eq!(
            content(&got, "speedSetpoint").unwrap(),
            &json!({
                "@type": ["Property", "AngularVelocity"], "name": "speedSetpoint",
                "schema": "integer", "unit": "revolutionPerMinute", "writable": true,
                "description": "at most 3000",
            })
        );
        assert_eq!(
            content(&got, "limits").unwrap(),
            &json!({
                "@type": "Property", "name": "limits", "writable": true,
                "schema": {"@type": "Object", "fields": [
                    {"name": "low", "schema": "integer"},
                    {"name": "high", "schema": "integer"},
                ]},
            })
        );
        for c in got.json["contents"].as_array().unwrap() {
            let writable = c.get("writable") == Some(&json!(true));
            let desired = c["name"] == "speedSetpoint" || c["name"] == "limits";
            assert_eq!(writable, desired, "{c}");
        }
    }

    #[test]
    fn telemetry_is_the_body_of_a_reading_with_its_timestamp() {
        let got = build_pump(true);
        assert_eq!(
            content(&got, "ts").unwrap()["schema"],
            "dateTime",
            "every reading carries ts"
        );
        assert_eq!(
            content(&got, "temperature").unwrap(),
            &json!({
                "@type": ["Telemetry", "Temperature"], "name": "temperature",
                "schema": "double", "unit": "degreeCelsius",
            })
        );
        assert_eq!(
            content(&got, "flow").unwrap(),
            &json!({"@type": "Telemetry", "name": "flow", "schema": "double"})
        );
    }

    #[test]
    fn methods_are_commands_with_their_payload_and_reply() {
        let got = build_pump(true);
        assert_eq!(
            content(&got, "getStatus").unwrap(),
            &json!({
                "@type": "Command", "name": "getStatus",
                "response": {"name": "reply", "schema": {"@type": "Object", "fields": [
                    {"name": "speed", "schema": "double", "description": "in revolutionPerMinute"},
                    {"name": "hours", "schema": "long"},
                    {"name": "running", "schema": "boolean"},
                ]}},
            })
        );
        assert_eq!(
            content(&got, "setSpeed").unwrap(),
            &json!({
                "@type": "Command", "name": "setSpeed",
                "request": {"name": "payload", "schema": {"@type": "Object", "fields": [
                    {"name": "speed", "schema": "integer", "description": "from 0 to 3000"},
                ]}},
            })
        );
    }

    #[test]
    fn without_a_twin_there_are_no_properties() {
        let got = build_pump(false);
        let kinds: Vec<&Value> = got.json["contents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["@type"])
            .collect();
        assert!(
            kinds.iter().all(|k| !k.to_string().contains("Property")),
            "{kinds:?}"
        );
        assert!(content(&got, "temperature").is_some());
    }

    #[test]
    fn names_taken_twice_and_empty_desired_payloads_are_left_out_with_a_warning() {
        let text = PUMP.replace(
            "{ name = \"flow\", type = \"f32\" }",
            "{ name = \"firmware\", type = \"f32\" }",
        ) + r#"
[[profile.desired]]
name = "reset"
[[profile.desired.step]]
op = "write"
table = "coil"
address = 3
fields = [{ type = "bool", value = true }]
[[profile.telemetry]]
name = "slow"
interval_ms = 60000
[[profile.telemetry.step]]
op = "read"
table = "input"
address = 0
fields = [{ name = "temperature", type = "i16", scale = 0.1, unit = "degreeCelsius" }]
"#;
        let at = (Path::new("leafgate.toml"), "profile[0]");
        let got = build(&profile(&text), BusKind::ModbusTcp, "dtmi:a:b;1", true, at).unwrap();
        assert_eq!(
            got.warnings,
            [
                "desired property \"reset\" is left out: it takes no payload field, and DTDL has no schema for an empty object".to_owned(),
                "field \"firmware\" of telemetry group \"fast\" is left out: its name \"firmware\" is taken by field \"firmware\" of property \"identity\"".to_owned(),
                format!("method \"factory.reset\" is left out: {NAME_RULE}"),
            ]
        );
        // Read by two groups alike: one Telemetry.
        let temperatures = got.json["contents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == "temperature")
            .count();
        assert_eq!(temperatures, 1);
    }

    #[test]
    fn a_field_dtdl_cannot_name_leaves_its_command_out() {
        let text = PUMP.replace("name = \"hours\"", "name = \"run-hours\"");
        let at = (Path::new("leafgate.toml"), "profile[0]");
        let got = build(&profile(&text), BusKind::ModbusTcp, "dtmi:a:b;1", false, at).unwrap();
        assert!(content(&got, "getStatus").is_none());
        assert!(
            got.warnings[0].starts_with(
                "method \"getStatus\" is left out: its field \"run-hours\" cannot be named in DTDL"
            ),
            "{:?}",
            got.warnings
        );
    }

    #[test]
    fn serial_replies_and_captures_are_described_too() {
        let text = r#"
[[profile]]
id = "psu"
[[profile.method]]
name = "measure"
[[profile.method.step]]
op = "send"
request = "MEAS?\r\n"
expect = '^VOLT (?P<volts>[0-9.]+) ON=(?P<on>\w+)$'
fields = [{ name = "volts", type = "f64", unit = "volt" }, { name = "on", type = "bool" }]
[[profile.method]]
name = "setVoltage"
[[profile.method.step]]
op = "send"
request = "VOLT {volts:.3}\r\n"
params = [{ name = "volts", type = "f64", min = 0, max = 30, unit = "volt" }]
[[profile.method]]
name = "ident"
[[profile.method.step]]
op = "send"
request = "*IDN?\r\n"
"#;
        let at = (Path::new("leafgate.toml"), "profile[0]");
        let got = build(&profile(text), BusKind::Serial, "dtmi:a:b;1", false, at).unwrap();
        assert_eq!(
            content(&got, "measure").unwrap()["response"]["schema"]["fields"],
            json!([
                {"name": "volts", "schema": "double", "description": "in volt"},
                {"name": "on", "schema": "boolean"},
            ])
        );
        assert_eq!(
            content(&got, "setVoltage").unwrap()["request"]["schema"]["fields"],
            json!([{"name": "volts", "schema": "double", "description": "in volt, from 0 to 30"}])
        );
        assert_eq!(
            content(&got, "ident").unwrap()["response"]["schema"]["fields"],
            json!([{"name": "reply", "schema": "string"}])
        );
    }

    #[test]
    fn compile_problems_and_units_on_non_numbers_are_errors() {
        let at = (Path::new("conf.d/10-pumps.toml"), "profile[2]");
        let serial = build(&profile(PUMP), BusKind::Serial, "dtmi:a:b;1", true, at).unwrap_err();
        let Error::Compile { kind, problems } = &serial else {
            panic!("{serial:?}");
        };
        assert_eq!(*kind, BusKind::Serial);
        assert!(
            problems[0]
                .to_string()
                .starts_with("conf.d/10-pumps.toml: profile[2].method \"getStatus\".step[0]"),
            "{problems:?}"
        );
        let text = PUMP.replace(
            "{ name = \"running\", type = \"bit\", bit = 0 }",
            "{ name = \"running\", type = \"bit\", bit = 0, unit = \"volt\" }",
        );
        let err = build(&profile(&text), BusKind::ModbusTcp, "dtmi:a:b;1", true, at).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field \"running\" of method \"getStatus\": unit \"volt\" applies to numbers, and this field is a bit"
        );
        let text = PUMP.replace(
            "{ name = \"flow\", type = \"f32\" }",
            "{ name = \"flowing\", type = \"bool\", unit = \"litrePerSecond\" }",
        );
        let err = build(&profile(&text), BusKind::ModbusTcp, "dtmi:a:b;1", true, at).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field \"flowing\" of telemetry group \"fast\": unit \"litrePerSecond\" applies to numbers, and this field is a bool"
        );
    }
}
