//! Run time, second half: the bus's outputs → the JSON reply. An answer that does not fit the
//! method (wrong kind or length, a serial reply off its pattern) is the hardware's fault (502),
//! never a malformed reply sent on to the caller.

use regex::Regex;
use serde_json::{Map, Value};

use super::error::ReplyError;
use super::hex::to_hex;
use super::{Method, Step};
use crate::bus::Output;
use crate::mapping::schema::{DataType, ReplyKind};
use crate::mapping::value;

impl Method {
    /// Turns the bus outputs (one per operation, in order) into the reply object.
    ///
    /// # Errors
    /// When an output does not fit its step (wrong kind or length) or a serial reply does not
    /// match its pattern.
    pub fn reply(&self, outputs: &[Output]) -> Result<Value, ReplyError> {
        if outputs.len() != self.steps.len() {
            return Err(ReplyError(format!(
                "{} results for {} steps",
                outputs.len(),
                self.steps.len()
            )));
        }
        let mut reply = Map::new();
        for (step, output) in self.steps.iter().zip(outputs) {
            match (step, output) {
                (
                    Step::Read {
                        table,
                        count,
                        fields,
                        ..
                    },
                    Output::Registers(regs),
                ) if !table.is_bits() => {
                    check_len(regs.len(), *count)?;
                    for f in fields {
                        let start = usize::from(f.pos);
                        let end = start + usize::from(f.layout.width());
                        let slice = regs.get(start..end).ok_or_else(|| short_reply(end))?;
                        reply.insert(f.name.clone(), value::decode(&f.layout, slice));
                    }
                }
                (
                    Step::Read {
                        table,
                        count,
                        fields,
                        ..
                    },
                    Output::Bits(bits),
                ) if table.is_bits() => {
                    check_len(bits.len(), *count)?;
                    for f in fields {
                        let bit = bits
                            .get(usize::from(f.pos))
                            .ok_or_else(|| short_reply(usize::from(f.pos)))?;
                        reply.insert(f.name.clone(), Value::Bool(*bit));
                    }
                }
                (Step::Write { .. }, Output::Written) => {}
                (
                    Step::Send {
                        expect,
                        reply: kind,
                        captures,
                        ..
                    },
                    Output::Reply(bytes),
                ) => decode_serial(expect.as_ref(), *kind, captures, bytes, &mut reply)?,
                (
                    Step::Send {
                        reply: ReplyKind::None,
                        ..
                    },
                    Output::Written,
                ) => {}
                _ => {
                    return Err(ReplyError(
                        "bus returned a result of the wrong kind".to_owned(),
                    ));
                }
            }
        }
        Ok(Value::Object(reply))
    }
}

fn check_len(got: usize, want: u16) -> Result<(), ReplyError> {
    if got == usize::from(want) {
        Ok(())
    } else {
        Err(ReplyError(format!(
            "device returned {got} values, expected {want}"
        )))
    }
}

fn short_reply(needed: usize) -> ReplyError {
    ReplyError(format!("reply too short: needed {needed} values"))
}

fn decode_serial(
    expect: Option<&Regex>,
    kind: ReplyKind,
    captures: &[(String, DataType)],
    bytes: &[u8],
    reply: &mut Map<String, Value>,
) -> Result<(), ReplyError> {
    if kind == ReplyKind::Hex {
        reply.insert("reply_hex".to_owned(), Value::String(to_hex(bytes)));
        return Ok(());
    }
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\r', '\n']);
    let Some(re) = expect else {
        if kind == ReplyKind::Text {
            reply.insert("reply".to_owned(), Value::String(text.to_owned()));
        }
        return Ok(());
    };
    let caps = re
        .captures(text)
        .ok_or_else(|| ReplyError(format!("reply {text:?} does not match {:?}", re.as_str())))?;
    for name in re.capture_names().flatten() {
        let Some(m) = caps.name(name) else { continue };
        let ty = captures
            .iter()
            .find(|(n, _)| n == name)
            .map_or(DataType::String, |(_, t)| *t);
        reply.insert(name.to_owned(), typed_capture(name, ty, m.as_str())?);
    }
    Ok(())
}

fn typed_capture(name: &str, ty: DataType, text: &str) -> Result<Value, ReplyError> {
    let bad = || {
        ReplyError(format!(
            "reply field {name}: {text:?} is not a {}",
            ty.name()
        ))
    };
    Ok(match ty {
        DataType::String => Value::String(text.to_owned()),
        DataType::Bool | DataType::Bit => match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Value::Bool(true),
            "0" | "false" | "off" | "no" => Value::Bool(false),
            _ => return Err(bad()),
        },
        DataType::F32 | DataType::F64 => {
            let f: f64 = text.trim().parse().map_err(|_| bad())?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(bad)?
        }
        DataType::U16 | DataType::U32 | DataType::U64 => {
            Value::from(text.trim().parse::<u64>().map_err(|_| bad())?)
        }
        DataType::I16 | DataType::I32 | DataType::I64 => {
            Value::from(text.trim().parse::<i64>().map_err(|_| bad())?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{SET_SPEED, method};
    use crate::bus::{BusKind, Output};

    #[test]
    fn replies_of_the_wrong_shape_are_bad_device_replies() {
        let m = method(BusKind::ModbusTcp, SET_SPEED).unwrap();
        assert!(m.reply(&[Output::Written]).is_err());
        assert!(
            m.reply(&[Output::Written, Output::Registers(vec![0; 3])])
                .is_err()
        );
        assert!(
            m.reply(&[Output::Written, Output::Bits(vec![true; 4])])
                .is_err()
        );
    }
}
