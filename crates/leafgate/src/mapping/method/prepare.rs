//! Run time, first half: a request's payload → the bus operations of one job. Everything the
//! caller can get wrong is refused here with the field named (400), before anything reaches a
//! bus.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::error::RequestError;
use super::{Input, Method, Request, Source, Step};
use crate::bus::{Op, Table, WriteData};
use crate::mapping::schema::{DataType, ReplyKind};
use crate::mapping::value;

impl Method {
    /// Turns a payload into bus operations for `unit`.
    ///
    /// # Errors
    /// When the payload is not an object, names an unknown field, or a value is missing, of the
    /// wrong type, or out of range.
    pub fn prepare(&self, unit: u8, payload: &Value) -> Result<Vec<Op>, RequestError> {
        let args = payload_object(payload)?;
        if let Some(unknown) = args.keys().find(|k| !self.inputs.contains(*k)) {
            let takes = if self.inputs.is_empty() {
                "this method takes no fields".to_owned()
            } else {
                format!("this method takes: {}", join(&self.inputs))
            };
            return Err(RequestError::new(
                Some(unknown),
                format!("unknown field; {takes}"),
            ));
        }
        let mut ops = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            ops.push(match step {
                Step::Read {
                    table,
                    address,
                    count,
                    ..
                } => Op::Read {
                    unit,
                    table: *table,
                    address: *address,
                    count: *count,
                },
                Step::Write {
                    table,
                    address,
                    count,
                    fields,
                } => Op::Write {
                    unit,
                    address: *address,
                    data: encode_write(*table, *count, fields, args)?,
                },
                Step::Send {
                    request,
                    params,
                    reply,
                    ..
                } => Op::Serial {
                    request: render_request(request, params, args)?,
                    reply: *reply != ReplyKind::None,
                    text: matches!(request, Request::Text(_)),
                },
            });
        }
        Ok(ops)
    }
}

pub(crate) fn payload_object(payload: &Value) -> Result<&Map<String, Value>, RequestError> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match payload {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(EMPTY.get_or_init(Map::new)),
        _ => Err(RequestError::new(None, "payload must be a JSON object")),
    }
}

fn join(names: &BTreeSet<String>) -> String {
    names
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn value_in(input: &Input, args: &Map<String, Value>) -> Result<Value, RequestError> {
    let name = &input.placed.name;
    match &input.source {
        Source::Fixed(v) => Ok(v.clone()),
        Source::Payload { default } => match args.get(name).or(default.as_ref()) {
            Some(v) => Ok(v.clone()),
            None => Err(RequestError::new(Some(name), "missing field")),
        },
    }
}

fn encode_write(
    table: Table,
    count: u16,
    fields: &[Input],
    args: &Map<String, Value>,
) -> Result<WriteData, RequestError> {
    if table == Table::Coil {
        let mut bits = vec![false; usize::from(count)];
        for f in fields {
            let v = value_in(f, args)?;
            let Value::Bool(b) = v else {
                return Err(RequestError::new(
                    Some(&f.placed.name),
                    "expected true or false",
                ));
            };
            if let Some(slot) = bits.get_mut(usize::from(f.placed.pos)) {
                *slot = b;
            }
        }
        return Ok(WriteData::Coils(bits));
    }
    let mut regs = vec![0u16; usize::from(count)];
    for f in fields {
        let v = value_in(f, args)?;
        let encoded = value::encode(&f.placed.layout, &v)
            .map_err(|e| RequestError::new(Some(&f.placed.name), e.to_string()))?;
        let start = usize::from(f.placed.pos);
        for (slot, r) in regs.iter_mut().skip(start).zip(encoded) {
            *slot = r;
        }
    }
    Ok(WriteData::Registers(regs))
}

fn render_request(
    request: &Request,
    params: &[Input],
    args: &Map<String, Value>,
) -> Result<Vec<u8>, RequestError> {
    let template = match request {
        Request::Bytes(bytes) => return Ok(bytes.clone()),
        Request::Text(t) => t,
    };
    let mut values = Map::new();
    for p in params {
        let v = value_in(p, args)?;
        check_param(p, &v)?;
        values.insert(p.placed.name.clone(), v);
    }
    Ok(template.render(|n| values.get(n)).into_bytes())
}

/// Serial parameters are checked like register values (type, range) and strings may not carry
/// control characters, so a payload can never inject a second command into the line.
fn check_param(p: &Input, v: &Value) -> Result<(), RequestError> {
    let name = Some(p.placed.name.as_str());
    let layout = &p.placed.layout;
    match (layout.data_type, v) {
        (DataType::String, Value::String(s)) => {
            if s.chars().any(char::is_control) {
                return Err(RequestError::new(
                    name,
                    "string must not contain control characters",
                ));
            }
            if s.len() > 256 {
                return Err(RequestError::new(name, "string longer than 256 bytes"));
            }
            Ok(())
        }
        (DataType::String, _) => Err(RequestError::new(name, "expected a string")),
        (DataType::Bool | DataType::Bit, Value::Bool(_)) => Ok(()),
        (DataType::Bool | DataType::Bit, _) => {
            Err(RequestError::new(name, "expected true or false"))
        }
        _ => value::encode(layout, v)
            .map(|_| ())
            .map_err(|e| RequestError::new(name, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{PSU, SET_SPEED, method};
    use crate::bus::BusKind;

    #[test]
    fn bad_payloads_are_refused_with_the_field_named() {
        let m = method(BusKind::ModbusTcp, SET_SPEED).unwrap();
        let cases = [
            (json!({"speed": 1501}), Some("speed")),
            (json!({"speed": "fast"}), Some("speed")),
            (json!({}), Some("speed")),
            (json!({"speed": 1, "sped": 2}), Some("sped")),
            (json!([1, 2]), None),
            (json!("x"), None),
            (json!({"speed": 1, "ramp": -1}), Some("ramp")),
        ];
        for (payload, field) in cases {
            let err = m.prepare(1, &payload).unwrap_err();
            assert_eq!(err.field.as_deref(), field, "{payload}: {err}");
        }
    }

    #[test]
    fn serial_strings_cannot_inject_a_second_command() {
        let m = method(BusKind::Serial, PSU).unwrap();
        let err = m
            .prepare(0, &json!({"volts": 1, "label": "a\r\nOUTP ON"}))
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("label"));
        assert!(m.prepare(0, &json!({"volts": 31})).is_err());
    }
}
