//! A telemetry group compiled once at load: what to read on each poll, when a reading is worth
//! sending, and what travels with it.
//!
//! A group's reads use the method vocabulary (`op = "read"` and `op = "send"` steps, the same
//! field keys), so they compile into a [`Method`] that takes no payload: one set of field rules
//! for methods and telemetry, and one decoder. What is telemetry's own lives here: the
//! interval, report-on-change with per-field deadbands, and the static application properties.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use super::method::{Method, Problem, ReadFields};
use super::schema::{GroupConfig, MethodConfig, StepOp};
use crate::bus::BusKind;

/// The body key that carries a reading's timestamp; no field may take it.
pub const TIMESTAMP_KEY: &str = "ts";
/// The application property that names the group.
pub const GROUP_PROPERTY: &str = "group";

/// IoT Hub's largest device-to-cloud message (body and properties).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The longest device id IoT Hub allows: the topic's share of a message at worst.
const MAX_DEVICE_ID: usize = 128;

/// Shortest and longest poll interval.
pub const MIN_INTERVAL_MS: u64 = 100;
pub const MAX_INTERVAL_MS: u64 = 86_400_000;
/// Unused registers a merged read spans by default: reading a few extra registers costs less
/// line time than one more request's overhead, turnaround and frame gap.
pub const DEFAULT_MAX_GAP: u16 = 8;

#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub interval: Duration,
    /// Report on change only: a reading goes out when a field moved by more than its
    /// deadband, or after `max_silence` without one.
    pub on_change: Option<OnChange>,
    /// Static application properties, `group` first.
    pub properties: Vec<(String, String)>,
    /// The reads, as a method without payload.
    pub reads: Method,
    /// For groups of Modbus reads only: their fields, which pollers merge into as few requests
    /// as `max_gap` allows (`mapping::plan`).
    pub fields: Option<ReadFields>,
    pub max_gap: u16,
}

#[derive(Debug, Clone)]
pub struct OnChange {
    pub max_silence: Duration,
    /// Per numeric field; a field without one is sent on any change.
    pub deadbands: BTreeMap<String, f64>,
}

/// The largest message a reading of a Modbus group can make: topic with every property
/// percent-encoded at worst, the body with every number at its longest and every string
/// register escaped as `\u00XX`. Serial replies have no such bound in the config (a reply may
/// be up to 4 KiB per step); the poller checks each of their readings before it is sent.
fn largest_message(cfg: &GroupConfig) -> usize {
    use super::schema::DataType;
    // `devices/{id}/messages/events/` and the system properties ($.mid, $.ct, $.ce, $.ctime).
    let mut bytes = 30 + MAX_DEVICE_ID + 160;
    bytes += 3 * (GROUP_PROPERTY.len() + cfg.name.len()) + 2;
    for (k, v) in &cfg.properties {
        bytes += 3 * (k.len() + v.len()) + 2;
    }
    // `{"ts":"2025-12-06T05:46:40.123Z"}`
    bytes += 35;
    for step in cfg.step.iter().filter(|s| s.op == StepOp::Read) {
        for f in &step.fields {
            let Some(name) = &f.name else { continue };
            let value = match f.data_type {
                Some(DataType::String) => 2 + 12 * usize::from(f.length.unwrap_or(0)),
                Some(DataType::Bool | DataType::Bit) => 5,
                // The longest f64 or i64 JSON number.
                _ => 24,
            };
            bytes += 4 + 6 * name.len() + value;
        }
    }
    bytes
}

impl Group {
    /// Compiles one group for a device on a bus of `bus` kind. `path` is the group's dotted
    /// config path, prefixing every problem.
    ///
    /// # Errors
    /// Every problem found, not just the first.
    pub fn compile(cfg: &GroupConfig, bus: BusKind, path: &str) -> Result<Group, Vec<Problem>> {
        let mut problems = Vec::new();
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&cfg.interval_ms) {
            problems.push(Problem::new(
                format!("{path}.interval_ms"),
                format!(
                    "{} is outside {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS}",
                    cfg.interval_ms
                ),
            ));
        }
        let on_change = match (cfg.on_change, cfg.max_silence_ms) {
            (false, Some(_)) => {
                problems.push(Problem::new(
                    format!("{path}.max_silence_ms"),
                    "applies only with on_change = true",
                ));
                None
            }
            (false, None) => None,
            (true, silence) => {
                let max_silence = silence.unwrap_or(cfg.interval_ms.saturating_mul(60));
                if max_silence < cfg.interval_ms || max_silence > MAX_INTERVAL_MS {
                    problems.push(Problem::new(
                        format!("{path}.max_silence_ms"),
                        format!(
                            "{max_silence} must be at least interval_ms ({}) and at most {MAX_INTERVAL_MS}",
                            cfg.interval_ms
                        ),
                    ));
                }
                Some(OnChange {
                    max_silence: Duration::from_millis(max_silence),
                    deadbands: BTreeMap::new(),
                })
            }
        };
        let max_gap = cfg.max_gap.unwrap_or(DEFAULT_MAX_GAP);
        if max_gap > super::plan::MAX_REGISTERS - 1 {
            problems.push(Problem::new(
                format!("{path}.max_gap"),
                format!(
                    "{max_gap} is outside 0..={}",
                    super::plan::MAX_REGISTERS - 1
                ),
            ));
        }
        let mut properties = vec![(GROUP_PROPERTY.to_owned(), cfg.name.clone())];
        for (key, value) in &cfg.properties {
            if key.is_empty() || key.starts_with('$') || key == GROUP_PROPERTY {
                problems.push(Problem::new(
                    format!("{path}.properties.{key}"),
                    "application property names must not be empty, start with '$' (system properties) or be \"group\" (set from the group's name)",
                ));
            }
            properties.push((key.clone(), value.clone()));
        }
        // The steps, checked for what telemetry cannot do, then compiled as a method. Deadbands
        // are telemetry's; the method compiler refuses them, so they are taken out first.
        let mut steps = cfg.step.clone();
        let mut deadbands = BTreeMap::new();
        for (i, step) in steps.iter_mut().enumerate() {
            if step.op == StepOp::Write {
                problems.push(Problem::new(
                    format!("{path}.step[{i}].op"),
                    "telemetry only reads: use op = \"read\" or \"send\"",
                ));
            }
            for (j, field) in step.fields.iter_mut().enumerate() {
                if let Some(band) = field.deadband.take() {
                    let fpath = format!("{path}.step[{i}].fields[{j}].deadband");
                    match (&field.name, cfg.on_change) {
                        (_, false) => {
                            problems.push(Problem::new(fpath, "applies only with on_change = true"))
                        }
                        (None, true) => {
                            problems.push(Problem::new(fpath, "applies only to a named field"))
                        }
                        (Some(_), true) if !(band.is_finite() && band >= 0.0) => {
                            problems
                                .push(Problem::new(fpath, format!("{band} must be a number >= 0")));
                        }
                        (Some(name), true) => {
                            deadbands.insert(name.clone(), band);
                        }
                    }
                }
                if field.name.as_deref() == Some(TIMESTAMP_KEY) {
                    problems.push(Problem::new(
                        format!("{path}.step[{i}].fields[{j}].name"),
                        format!("\"{TIMESTAMP_KEY}\" carries the reading's timestamp; name the field otherwise"),
                    ));
                }
            }
        }
        let largest = largest_message(cfg);
        if largest > MAX_MESSAGE_BYTES {
            problems.push(Problem::new(
                format!("{path}.step"),
                format!("a reading of this group can be {largest} bytes as a message, over IoT Hub's limit of {MAX_MESSAGE_BYTES}; split it into smaller groups"),
            ));
        }
        let as_method = MethodConfig {
            name: cfg.name.clone(),
            // A poll is pointless once the next one is due.
            timeout_ms: cfg.interval_ms.clamp(100, 300_000),
            step: steps,
        };
        let reads = match Method::compile(&as_method, bus, path) {
            Ok(m) => Some(m),
            Err(mut p) => {
                problems.append(&mut p);
                None
            }
        };
        if let Some(fields) = reads.as_ref().and_then(Method::read_fields) {
            for (a, b, span) in fields.overlaps() {
                let last = u32::from(span.address) + u32::from(span.count) - 1;
                problems.push(Problem::new(
                    format!("{path}.step"),
                    format!(
                        "fields {a:?} and {b:?} both read {} {}..={last}; check their addresses",
                        span.table.name(),
                        span.address
                    ),
                ));
            }
        }
        if let Some(m) = &reads
            && !m.inputs().is_empty()
        {
            problems.push(Problem::new(
                format!("{path}.step"),
                "telemetry reads take no payload: give every send parameter a value",
            ));
        }
        match reads {
            Some(reads) if problems.is_empty() => Ok(Group {
                name: cfg.name.clone(),
                interval: Duration::from_millis(cfg.interval_ms),
                on_change: on_change.map(|o| OnChange { deadbands, ..o }),
                properties,
                fields: reads.read_fields(),
                reads,
                max_gap,
            }),
            _ => Err(problems),
        }
    }

    /// Whether `now` is worth sending after `last` was: for report-on-change groups, a field
    /// appeared, disappeared, changed type or text, or a number moved by more than its
    /// deadband. Groups without report-on-change always send.
    #[must_use]
    pub fn changed(&self, last: &Map<String, Value>, now: &Map<String, Value>) -> bool {
        let Some(on_change) = &self.on_change else {
            return true;
        };
        if last.len() != now.len() {
            return true;
        }
        now.iter()
            .any(|(name, value)| match (last.get(name), value) {
                (Some(Value::Number(a)), Value::Number(b)) => {
                    let (Some(a), Some(b)) = (a.as_f64(), b.as_f64()) else {
                        return a != b;
                    };
                    let band = on_change.deadbands.get(name).copied().unwrap_or(0.0);
                    (a - b).abs() > band
                }
                (Some(before), now) => before != now,
                (None, _) => true,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::schema::GroupConfig;

    /// Compiles a group from its TOML, read as `config::load` reads files.
    fn group(toml_text: &str) -> Result<Group, Vec<String>> {
        let cfg: GroupConfig = crate::mapping::testing::from_toml(toml_text);
        Group::compile(&cfg, BusKind::ModbusTcp, "device[0].telemetry[0]").map_err(|p| {
            p.iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect()
        })
    }

    const METER: &str = r#"
        name = "power"
        interval_ms = 1000
        on_change = true
        properties = { source = "meter" }
        [[step]]
        op = "read"
        table = "input"
        address = 0
        fields = [
          { name = "voltage", type = "f32", deadband = 0.5 },
          { name = "state", type = "u16" },
        ]
    "#;

    #[test]
    fn a_group_compiles_with_its_properties_and_deadbands() {
        let g = group(METER).unwrap();
        assert_eq!(g.interval, Duration::from_secs(1));
        assert_eq!(
            g.properties,
            [
                ("group".to_owned(), "power".to_owned()),
                ("source".to_owned(), "meter".to_owned())
            ]
        );
        let on_change = g.on_change.as_ref().unwrap();
        assert_eq!(on_change.max_silence, Duration::from_secs(60));
        assert_eq!(on_change.deadbands.get("voltage"), Some(&0.5));
    }

    #[test]
    fn on_change_sends_past_the_deadband_and_on_any_other_change() {
        let g = group(METER).unwrap();
        let reading = |v: f64, s: u64| {
            let Value::Object(m) = serde_json::json!({"voltage": v, "state": s}) else {
                unreachable!()
            };
            m
        };
        let last = reading(230.0, 1);
        assert!(!g.changed(&last, &reading(230.4, 1)));
        assert!(!g.changed(&last, &reading(229.5, 1)));
        assert!(g.changed(&last, &reading(230.6, 1)));
        assert!(
            g.changed(&last, &reading(230.0, 2)),
            "no deadband: any change"
        );
    }

    #[test]
    fn overlapping_fields_are_refused_but_bits_of_a_register_are_not() {
        let text = |fields: &str| {
            format!(
                "name = \"g\"\ninterval_ms = 1000\n[[step]]\nop = \"read\"\ntable = \"holding\"\naddress = 10\nfields = [{fields}]\n"
            )
        };
        let got = group(&text(
            r#"{ name = "energy", type = "u32" }, { name = "power", address = 11 }"#,
        ))
        .unwrap_err();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].ends_with(r#".step: fields "energy" and "power" both read holding 11..=11; check their addresses"#),
            "{got:?}"
        );
        // A status word and views of its bits; two bits of one register.
        assert!(
            group(&text(
                r#"{ name = "status" }, { name = "running", type = "bit", address = 10, bit = 0 }, { name = "fault", type = "bit", address = 10, bit = 3 }"#
            ))
            .is_ok()
        );
        let got = group(&text(
            r#"{ name = "running", type = "bit", bit = 0 }, { name = "on", type = "bit", address = 10, bit = 0 }"#,
        ))
        .unwrap_err();
        assert!(
            got[0].contains(r#"fields "running" and "on" both read holding 10..=10"#),
            "{got:?}"
        );
    }

    #[test]
    fn a_group_whose_reading_can_exceed_the_hubs_message_limit_is_refused() {
        let steps = |n: u16| {
            (0..n)
                .map(|i| {
                    format!(
                        "[[step]]\nop = \"read\"\ntable = \"holding\"\naddress = {}\nfields = [{{ name = \"label_{i}\", type = \"string\", length = 100 }}]\n",
                        i * 100
                    )
                })
                .collect::<String>()
        };
        let text = |n| format!("name = \"labels\"\ninterval_ms = 1000\n{}", steps(n));
        // 200 strings of 100 registers: 240 kB escaped at worst, under the limit.
        assert!(group(&text(200)).is_ok());
        let got = group(&text(230)).unwrap_err();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains(".step: a reading of this group can be ")
                && got[0].ends_with("over IoT Hub's limit of 262144; split it into smaller groups"),
            "{got:?}"
        );
    }

    #[test]
    fn what_telemetry_cannot_do_is_refused_with_its_key() {
        let got = group(
            r#"
            name = "bad"
            interval_ms = 50
            max_silence_ms = 1000
            properties = { "$.mid" = "x", group = "y" }
            [[step]]
            op = "write"
            table = "holding"
            address = 0
            fields = [{ name = "ts", deadband = 1 }]
            "#,
        )
        .unwrap_err();
        let want = [
            "device[0].telemetry[0].interval_ms: 50 is outside 100..=86400000",
            "device[0].telemetry[0].max_silence_ms: applies only with on_change = true",
            "device[0].telemetry[0].properties.$.mid: application property names",
            "device[0].telemetry[0].properties.group: application property names",
            "device[0].telemetry[0].step[0].op: telemetry only reads",
            "device[0].telemetry[0].step[0].fields[0].deadband: applies only with on_change = true",
            "device[0].telemetry[0].step[0].fields[0].name: \"ts\" carries the reading's timestamp",
        ];
        for w in want {
            assert!(
                got.iter().any(|g| g.starts_with(w)),
                "missing {w:?} in {got:#?}"
            );
        }
    }
}
