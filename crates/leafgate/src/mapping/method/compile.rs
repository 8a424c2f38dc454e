//! Compiling a method's config section into a [`Method`]. Every check a method can fail runs
//! here, once at load, so a bad method is a config problem naming its key, never a surprise on
//! a live request. Fields and `send` steps have their own files; this one holds the method and
//! its steps as a whole: names, bus kinds, keys that do not apply, request sizes.

use std::collections::BTreeSet;
use std::time::Duration;

use super::error::Problem;
use super::field::place_field;
use super::send_step::compile_send;
use super::{Input, Method, Placed, Source, Step};
use crate::bus::op::{MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS, MAX_WRITE_REGISTERS};
use crate::bus::{BusKind, Table};
use crate::mapping::schema::{DataType, MethodConfig, ReplyKind, StepConfig, StepOp};

impl Method {
    /// Compiles one method for a device on a bus of `bus` kind. `path` is the method's dotted
    /// config path, used to prefix every problem.
    ///
    /// # Errors
    /// Every problem found, not just the first.
    pub fn compile(cfg: &MethodConfig, bus: BusKind, path: &str) -> Result<Method, Vec<Problem>> {
        let mut problems = Vec::new();
        if let Err(msg) = check_name(&cfg.name) {
            problems.push(Problem::new(format!("{path}.name"), msg));
        }
        if cfg.timeout_ms < 100 || cfg.timeout_ms > 300_000 {
            problems.push(Problem::new(
                format!("{path}.timeout_ms"),
                format!("{} is outside 100..=300000", cfg.timeout_ms),
            ));
        }
        if cfg.step.is_empty() {
            problems.push(Problem::new(
                format!("{path}.step"),
                "a method needs at least one step",
            ));
        }
        let mut steps = Vec::new();
        let mut inputs = BTreeSet::new();
        let mut outputs = BTreeSet::new();
        for (i, step) in cfg.step.iter().enumerate() {
            let spath = format!("{path}.step[{i}]");
            match compile_step(step, bus, &spath, &mut problems) {
                Some(s) => {
                    collect_names(&s, &spath, &mut inputs, &mut outputs, &mut problems);
                    steps.push(s);
                }
                None => continue,
            }
        }
        if problems.is_empty() {
            Ok(Method {
                name: cfg.name.clone(),
                timeout: Duration::from_millis(cfg.timeout_ms),
                steps,
                inputs,
            })
        } else {
            Err(problems)
        }
    }
}

/// Method names travel in MQTT topics: keep them to what every client can put in a URL path.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("must be 1 to 128 characters".to_owned());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{name:?}: use only letters, digits, '-', '_' and '.'"
        ));
    }
    if name.starts_with("modbus.") || name.starts_with("serial.") {
        return Err(format!(
            "{name:?}: names starting with modbus. or serial. are reserved for raw methods"
        ));
    }
    Ok(())
}

fn collect_names(
    step: &Step,
    path: &str,
    inputs: &mut BTreeSet<String>,
    outputs: &mut BTreeSet<String>,
    problems: &mut Vec<Problem>,
) {
    let mut output = |name: &str| {
        if !outputs.insert(name.to_owned()) {
            problems.push(Problem::new(
                path,
                format!("reply field {name:?} is produced twice"),
            ));
        }
    };
    match step {
        Step::Read { fields, .. } => fields.iter().for_each(|f| output(&f.placed_name())),
        Step::Write { fields, .. } | Step::Send { params: fields, .. } => {
            for f in fields {
                if matches!(f.source, Source::Payload { .. }) {
                    inputs.insert(f.placed.name.clone());
                }
            }
            if let Step::Send { expect, reply, .. } = step {
                if let Some(re) = expect {
                    re.capture_names().flatten().for_each(&mut output);
                } else if *reply == ReplyKind::Text {
                    output("reply");
                }
                if *reply == ReplyKind::Hex {
                    output("reply_hex");
                }
            }
        }
    }
}

impl Placed {
    fn placed_name(&self) -> String {
        self.name.clone()
    }
}

fn compile_step(
    step: &StepConfig,
    bus: BusKind,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<Step> {
    let start = problems.len();
    for (j, field) in step.fields.iter().chain(&step.params).enumerate() {
        if field.deadband.is_some() {
            let list = if j < step.fields.len() {
                "fields"
            } else {
                "params"
            };
            let k = if j < step.fields.len() {
                j
            } else {
                j - step.fields.len()
            };
            problems.push(Problem::new(
                format!("{path}.{list}[{k}].deadband"),
                "applies only to telemetry fields (with on_change = true)",
            ));
        }
    }
    let mut misplaced = |key: &str, present: bool, why: &str| {
        if present {
            problems.push(Problem::new(
                format!("{path}.{key}"),
                format!("does not apply {why}"),
            ));
        }
    };
    if step.op == StepOp::Send {
        misplaced("table", step.table.is_some(), "to a send step");
        misplaced("address", step.address.is_some(), "to a send step");
        misplaced(
            "fields",
            !step.fields.is_empty() && step.expect.is_none(),
            "without expect",
        );
        if bus != BusKind::Serial {
            problems.push(Problem::new(
                format!("{path}.op"),
                format!(
                    "send steps need a serial bus, this device is on a {} bus",
                    bus.name()
                ),
            ));
        }
        let step = compile_send(step, path, problems);
        return if problems.len() == start { step } else { None };
    }
    misplaced("request", step.request.is_some(), "to a modbus step");
    misplaced(
        "request_hex",
        step.request_hex.is_some(),
        "to a modbus step",
    );
    misplaced(
        "params",
        !step.params.is_empty(),
        "to a modbus step (use fields)",
    );
    misplaced("expect", step.expect.is_some(), "to a modbus step");
    misplaced("reply", step.reply.is_some(), "to a modbus step");
    if !bus.is_modbus() {
        problems.push(Problem::new(
            format!("{path}.op"),
            "read and write steps need a modbus bus; this device is on a serial bus (use op = \"send\")",
        ));
    }
    let Some(table) = step.table else {
        problems.push(Problem::new(
            format!("{path}.table"),
            "missing (holding, input, coil or discrete)",
        ));
        return None;
    };
    let Some(address) = step.address else {
        problems.push(Problem::new(format!("{path}.address"), "missing"));
        return None;
    };
    let write = step.op == StepOp::Write;
    if write && !table.is_writable() {
        problems.push(Problem::new(
            format!("{path}.table"),
            format!("{} is read-only; write to holding or coil", table.name()),
        ));
    }
    if step.fields.is_empty() {
        problems.push(Problem::new(
            format!("{path}.fields"),
            "needs at least one field",
        ));
    }
    // Ends are one past the last address, so they run in u32: a field at 65535 ends at 65536.
    let mut next = u32::from(address);
    let mut placed = Vec::new();
    for (i, f) in step.fields.iter().enumerate() {
        let fpath = format!("{path}.fields[{i}]");
        if let Some(p) = place_field(f, table, address, &mut next, write, &fpath, problems) {
            placed.push(p);
        }
    }
    let count = u16::try_from(next.saturating_sub(u32::from(address))).unwrap_or(u16::MAX);
    let limit = match (table.is_bits(), write) {
        (false, false) => MAX_READ_REGISTERS,
        (false, true) => MAX_WRITE_REGISTERS,
        (true, false) => MAX_READ_BITS,
        (true, true) => MAX_WRITE_BITS,
    };
    if count > limit {
        problems.push(Problem::new(
            format!("{path}.fields"),
            format!(
                "spans {count} {}, more than one request can carry ({limit})",
                unit_word(table)
            ),
        ));
    }
    if problems.len() != start {
        return None;
    }
    if write {
        if let Some(gap) = first_gap(&placed, count) {
            problems.push(Problem::new(
                format!("{path}.fields"),
                format!(
                    "a write must cover a contiguous block; nothing is written at offset {gap}"
                ),
            ));
            return None;
        }
        Some(Step::Write {
            table,
            address,
            count,
            fields: placed,
        })
    } else {
        Some(Step::Read {
            table,
            address,
            count,
            fields: placed.into_iter().map(|i| i.placed).collect(),
        })
    }
}

fn unit_word(table: Table) -> &'static str {
    if table.is_bits() { "bits" } else { "registers" }
}

fn first_gap(fields: &[Input], count: u16) -> Option<u16> {
    let mut covered = vec![false; usize::from(count)];
    for f in fields {
        let start = usize::from(f.placed.pos);
        let width = if f.placed.layout.data_type == DataType::Bool
            || f.placed.layout.data_type == DataType::Bit
        {
            1
        } else {
            usize::from(f.placed.layout.width())
        };
        for c in covered.iter_mut().skip(start).take(width) {
            *c = true;
        }
    }
    covered
        .iter()
        .position(|c| !c)
        .and_then(|p| u16::try_from(p).ok())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{PSU, SET_SPEED, method, read_op, step};
    use crate::bus::{BusKind, Op, Output, Table, WriteData};

    #[test]
    fn fields_ending_at_the_last_address_count_every_register() {
        // One register at 65535: count 1, not 0.
        let m = step("read", "holding", 65535, r#"{ name = "x" }"#).unwrap();
        assert_eq!(
            read_op(&m),
            Op::Read {
                unit: 1,
                table: Table::Holding,
                address: 65535,
                count: 1
            }
        );
        assert_eq!(
            m.reply(&[Output::Registers(vec![7])]).unwrap(),
            json!({"x": 7})
        );
        // Two registers at 65534: count 2, not 1.
        let m = step("read", "input", 65534, r#"{ name = "x", type = "u32" }"#).unwrap();
        assert_eq!(
            read_op(&m),
            Op::Read {
                unit: 1,
                table: Table::Input,
                address: 65534,
                count: 2
            }
        );
        assert_eq!(
            m.reply(&[Output::Registers(vec![1, 2])]).unwrap(),
            json!({"x": 0x0001_0002})
        );
        // A field placed by address at the end of a longer step.
        let m = step(
            "read",
            "holding",
            65530,
            r#"{ name = "a" }, { name = "b", type = "f32", address = 65534 }"#,
        )
        .unwrap();
        assert!(matches!(read_op(&m), Op::Read { count: 6, .. }));
        // The last coil, and a write of the last two registers.
        let m = step("read", "coil", 65535, r#"{ name = "on" }"#).unwrap();
        assert!(matches!(
            read_op(&m),
            Op::Read {
                address: 65535,
                count: 1,
                ..
            }
        ));
        let m = step("write", "holding", 65534, r#"{ name = "v", type = "i32" }"#).unwrap();
        assert_eq!(
            m.prepare(1, &json!({"v": -2})).unwrap(),
            vec![Op::Write {
                unit: 1,
                address: 65534,
                data: WriteData::Registers(vec![0xFFFF, 0xFFFE])
            }]
        );
    }

    #[test]
    fn steps_must_suit_the_bus() {
        let problems = method(BusKind::ModbusRtu, PSU).unwrap_err();
        assert!(
            problems.iter().any(|p| p.path == "m.step[0].op"),
            "{problems:?}"
        );
        let problems = method(BusKind::Serial, SET_SPEED).unwrap_err();
        assert!(
            problems.iter().all(|p| p.path.ends_with(".op")),
            "{problems:?}"
        );
    }
}
