//! Compiling one Modbus field: where it sits in its step (address, width, the end of the address
//! space) and how its registers read (type, order, scale, range). A field that does not fit is a
//! config problem here, so no request can address past register 65535 or write a bad constant.

use super::error::Problem;
use super::{Input, Placed, Source};
use crate::bus::Table;
use crate::bus::op::MAX_READ_REGISTERS;
use crate::mapping::schema::{Constant, DataType, FieldConfig};
use crate::mapping::value::{self, Layout};

#[allow(clippy::too_many_arguments)]
pub(super) fn place_field(
    f: &FieldConfig,
    table: Table,
    step_address: u16,
    next: &mut u32,
    write: bool,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<Input> {
    let start = problems.len();
    let default_type = if table.is_bits() {
        DataType::Bool
    } else {
        DataType::U16
    };
    let ty = f.data_type.unwrap_or(default_type);
    if table.is_bits() && ty != DataType::Bool {
        problems.push(Problem::new(
            format!("{path}.type"),
            "coil and discrete fields are bool",
        ));
    }
    let layout = layout_of(f, ty, path, problems);
    if !write && f.name.is_none() {
        problems.push(Problem::new(
            format!("{path}.name"),
            "a read field needs a name",
        ));
    }
    if write && f.name.is_none() && f.value.is_none() {
        problems.push(Problem::new(
            format!("{path}.name"),
            "a write field needs a name (payload field) or a value",
        ));
    }
    if !write {
        for (key, present) in [
            ("min", f.min.is_some()),
            ("max", f.max.is_some()),
            ("default", f.default.is_some()),
            ("value", f.value.is_some()),
        ] {
            if present {
                problems.push(Problem::new(
                    format!("{path}.{key}"),
                    "only applies to write fields",
                ));
            }
        }
    }
    if write && ty == DataType::Bit {
        problems.push(Problem::new(
            format!("{path}.type"),
            "bit fields are read-only; write a coil or a whole register",
        ));
    }
    if f.value.is_some() && f.default.is_some() {
        problems.push(Problem::new(
            format!("{path}.value"),
            "give value or default, not both",
        ));
    }
    // After a field ending at 65535, the next one without an address would start at 65536.
    let addr = f.address.map_or(*next, u32::from);
    if addr < u32::from(step_address) {
        problems.push(Problem::new(
            format!("{path}.address"),
            format!("{addr} is below the step's address {step_address}"),
        ));
    }
    let width = if table.is_bits() {
        1
    } else {
        layout.as_ref().map_or(1, Layout::width)
    };
    let end = addr + u32::from(width);
    if addr > 65535 {
        problems.push(Problem::new(
            format!("{path}.address"),
            "would start at 65536, past the last address 65535 (the previous field ends there)",
        ));
    } else if end > 65536 {
        problems.push(Problem::new(
            format!("{path}.address"),
            format!("{width} registers from {addr} run past address 65535"),
        ));
    }
    // Fields advance the step's end; bits sharing a register (or fields given an earlier
    // address) never move it back.
    *next = (*next).max(end);
    if problems.len() != start {
        return None;
    }
    // addr is within step_address..=65535 here, so the offset fits.
    let pos = u16::try_from(addr - u32::from(step_address)).ok()?;
    let layout = layout?;
    let source = match &f.value {
        Some(c) => Source::Fixed(c.to_json()),
        None => Source::Payload {
            default: f.default.as_ref().map(Constant::to_json),
        },
    };
    // Check constants now, so a bad default is a config error rather than a 400 at 3 a.m.
    let constant = match &source {
        Source::Fixed(v) => Some(v),
        Source::Payload { default } => default.as_ref(),
    };
    if let Some(c) = constant {
        let result = if table.is_bits() {
            if c.is_boolean() {
                Ok(())
            } else {
                Err("expected true or false".to_owned())
            }
        } else {
            value::encode(&layout, c)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        if let Err(e) = result {
            problems.push(Problem::new(
                format!(
                    "{path}.{}",
                    if f.value.is_some() {
                        "value"
                    } else {
                        "default"
                    }
                ),
                e,
            ));
            return None;
        }
    }
    Some(Input {
        placed: Placed {
            name: f.name.clone().unwrap_or_default(),
            pos,
            layout,
        },
        source,
    })
}

fn layout_of(
    f: &FieldConfig,
    ty: DataType,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<Layout> {
    let start = problems.len();
    let mut layout = Layout::new(ty);
    if ty == DataType::String {
        match f.length {
            Some(n) if (1..=MAX_READ_REGISTERS).contains(&n) => layout.length = n,
            Some(n) => problems.push(Problem::new(
                format!("{path}.length"),
                format!("{n} is outside 1..=125 registers"),
            )),
            None => problems.push(Problem::new(
                format!("{path}.length"),
                "string fields need a length in registers",
            )),
        }
    } else if f.length.is_some() {
        problems.push(Problem::new(
            format!("{path}.length"),
            "only applies to string fields",
        ));
    }
    match (ty, f.bit) {
        (DataType::Bit, Some(b)) if b < 16 => layout.bit = b,
        (DataType::Bit, Some(b)) => problems.push(Problem::new(
            format!("{path}.bit"),
            format!("{b} is outside 0..=15"),
        )),
        (DataType::Bit, None) => problems.push(Problem::new(
            format!("{path}.bit"),
            "bit fields need bit = 0..15",
        )),
        (_, Some(_)) => problems.push(Problem::new(
            format!("{path}.bit"),
            "only applies to type = \"bit\"",
        )),
        (_, None) => {}
    }
    layout.word_order = f.word_order.unwrap_or_default();
    layout.byte_order = f.byte_order.unwrap_or_default();
    layout.scale = f.scale.unwrap_or(1.0);
    layout.offset = f.offset.unwrap_or(0.0);
    layout.decimals = f.decimals;
    layout.min = f.min;
    layout.max = f.max;
    let numeric = !matches!(ty, DataType::Bool | DataType::Bit | DataType::String);
    if !numeric {
        for (key, present) in [
            ("scale", f.scale.is_some()),
            ("offset", f.offset.is_some()),
            ("decimals", f.decimals.is_some()),
            ("min", f.min.is_some()),
            ("max", f.max.is_some()),
        ] {
            if present {
                problems.push(Problem::new(
                    format!("{path}.{key}"),
                    format!("does not apply to {} fields", ty.name()),
                ));
            }
        }
    }
    if !layout.scale.is_finite() || layout.scale == 0.0 {
        problems.push(Problem::new(
            format!("{path}.scale"),
            "must be a finite number other than 0",
        ));
    }
    if !layout.offset.is_finite() {
        problems.push(Problem::new(format!("{path}.offset"), "must be finite"));
    }
    if let (Some(min), Some(max)) = (f.min, f.max)
        && min > max
    {
        problems.push(Problem::new(
            format!("{path}.min"),
            format!("{min} is above max {max}"),
        ));
    }
    (problems.len() == start).then_some(layout)
}

#[cfg(test)]
mod tests {
    use super::super::testing::step;

    #[test]
    fn fields_running_past_the_last_address_are_config_problems() {
        let cases = [
            (
                "read",
                "holding",
                65535,
                r#"{ name = "x", type = "u32" }"#,
                "m.step[0].fields[0].address: 2 registers from 65535 run past address 65535",
            ),
            (
                "read",
                "holding",
                65533,
                r#"{ name = "x", type = "f64" }"#,
                "m.step[0].fields[0].address: 4 registers from 65533 run past address 65535",
            ),
            (
                "read",
                "holding",
                65535,
                r#"{ name = "x" }, { name = "y" }"#,
                "m.step[0].fields[1].address: would start at 65536, past the last address 65535 (the previous field ends there)",
            ),
            (
                "write",
                "coil",
                65535,
                r#"{ name = "a" }, { name = "b" }"#,
                "m.step[0].fields[1].address: would start at 65536, past the last address 65535 (the previous field ends there)",
            ),
        ];
        for (op, table, address, fields, want) in cases {
            let problems = step(op, table, address, fields).unwrap_err();
            let got: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect();
            assert_eq!(got, [want], "{op} {table} {address} {fields}");
        }
    }
}
