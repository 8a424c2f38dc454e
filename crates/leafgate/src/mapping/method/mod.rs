//! A configured method, compiled once at load: payload → bus operations, outputs → JSON reply.
//!
//! The compiled form lives here because every stage shares it: `compile` builds it from the
//! config, `prepare` turns a payload into bus operations with it, and `reply` turns the bus's
//! outputs back into JSON with it. Each stage has its own file so it can be read and tested
//! without the others.

mod compile;
mod error;
mod field;
mod fields;
mod hex;
mod prepare;
mod reply;
mod send_step;
#[cfg(test)]
mod testing;

use std::collections::BTreeSet;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;

use super::schema::{DataType, ReplyKind};
use super::template::Template;
use super::value::Layout;
use crate::bus::Table;

pub use error::{Problem, ReplyError, RequestError};
pub use fields::ReadFields;
pub(crate) use hex::{parse_hex, to_hex};
pub(crate) use prepare::payload_object;

#[derive(Debug, Clone)]
pub struct Method {
    pub name: String,
    pub timeout: Duration,
    steps: Vec<Step>,
    /// Payload keys this method reads; anything else is refused so a typo never silently
    /// falls back to a default on a machine.
    inputs: BTreeSet<String>,
}

#[derive(Debug, Clone)]
enum Step {
    Read {
        table: Table,
        address: u16,
        count: u16,
        fields: Vec<Placed>,
    },
    Write {
        table: Table,
        address: u16,
        count: u16,
        fields: Vec<Input>,
    },
    Send {
        request: Request,
        params: Vec<Input>,
        expect: Option<Regex>,
        reply: ReplyKind,
        captures: Vec<(String, DataType)>,
    },
}

#[derive(Debug, Clone)]
enum Request {
    Text(Template),
    Bytes(Vec<u8>),
}

/// A field at a position (registers or bits) relative to its step's address.
#[derive(Debug, Clone)]
struct Placed {
    name: String,
    pos: u16,
    layout: Layout,
}

#[derive(Debug, Clone)]
struct Input {
    placed: Placed,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    Payload { default: Option<Value> },
    Fixed(Value),
}

/// One named value of a method's payload or reply, as a model of the device describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Field<'a> {
    pub name: &'a str,
    pub data_type: DataType,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl<'a> Field<'a> {
    fn of(placed: &'a Placed) -> Self {
        Field {
            name: &placed.name,
            data_type: placed.layout.data_type,
            min: placed.layout.min,
            max: placed.layout.max,
        }
    }

    fn text(name: &'a str) -> Self {
        Field {
            name,
            data_type: DataType::String,
            min: None,
            max: None,
        }
    }
}

impl Method {
    /// Payload keys the method accepts.
    #[must_use]
    pub fn inputs(&self) -> &BTreeSet<String> {
        &self.inputs
    }

    /// Whether any step writes a Modbus table (what a property read from the hardware must
    /// never do).
    #[must_use]
    pub fn writes_modbus(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Write { .. }))
    }

    /// Whether any step may change the hardware: a Modbus write or a serial exchange (what a
    /// desired property needs).
    #[must_use]
    pub fn may_write(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::Write { .. } | Step::Send { .. }))
    }

    /// The payload's fields, in step order (fixed values are not the caller's to give).
    #[must_use]
    pub fn payload_fields(&self) -> Vec<Field<'_>> {
        let mut fields = Vec::new();
        for step in &self.steps {
            if let Step::Write { fields: inputs, .. } | Step::Send { params: inputs, .. } = step {
                for input in inputs {
                    if matches!(input.source, Source::Payload { .. })
                        && fields
                            .iter()
                            .all(|f: &Field<'_>| f.name != input.placed.name)
                    {
                        fields.push(Field::of(&input.placed));
                    }
                }
            }
        }
        fields
    }

    /// The reply's fields, in step order.
    #[must_use]
    pub fn reply_fields(&self) -> Vec<Field<'_>> {
        let mut fields = Vec::new();
        for step in &self.steps {
            match step {
                Step::Read { fields: placed, .. } => fields.extend(placed.iter().map(Field::of)),
                Step::Write { .. } => {}
                Step::Send {
                    expect,
                    reply,
                    captures,
                    ..
                } => {
                    if expect.is_some() {
                        fields.extend(captures.iter().map(|(name, data_type)| Field {
                            name,
                            data_type: *data_type,
                            min: None,
                            max: None,
                        }));
                    } else if *reply == ReplyKind::Text {
                        fields.push(Field::text("reply"));
                    }
                    if *reply == ReplyKind::Hex {
                        fields.push(Field::text("reply_hex"));
                    }
                }
            }
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::testing::{PSU, SET_SPEED, method};
    use crate::bus::{BusKind, Op, Output, Table, WriteData};

    #[test]
    fn write_then_read_back_builds_one_job_and_one_reply() {
        let m = method(BusKind::ModbusTcp, SET_SPEED).unwrap();
        assert_eq!(m.inputs().iter().collect::<Vec<_>>(), ["ramp", "speed"]);
        let ops = m.prepare(7, &json!({"speed": 1.5})).unwrap();
        assert_eq!(
            ops,
            vec![
                Op::Write {
                    unit: 7,
                    address: 100,
                    data: WriteData::Registers(vec![0x0000, 0x3FC0, 50, 1])
                },
                Op::Read {
                    unit: 7,
                    table: Table::Holding,
                    address: 100,
                    count: 4
                },
            ]
        );
        let reply = m
            .reply(&[
                Output::Written,
                Output::Registers(vec![0x0000, 0x3FC0, 50, 0b100]),
            ])
            .unwrap();
        assert_eq!(reply, json!({"speed": 1.5, "flags": true}));
    }

    #[test]
    fn serial_templates_render_and_patterns_become_typed_fields() {
        let m = method(BusKind::Serial, PSU).unwrap();
        let ops = m.prepare(0, &json!({"volts": 12.5})).unwrap();
        assert_eq!(
            ops,
            vec![Op::Serial {
                request: b"VOLT 12.500;LABEL x\r\n".to_vec(),
                reply: true,
                text: true
            }]
        );
        let reply = m
            .reply(&[Output::Reply(b"VOLT 12.500 ON=on ID=A7".to_vec())])
            .unwrap();
        assert_eq!(reply, json!({"volts": 12.5, "on": true, "id": "A7"}));
        let err = m.reply(&[Output::Reply(b"ERR 7".to_vec())]).unwrap_err();
        assert!(err.0.contains("does not match"), "{err}");
        let err = m
            .reply(&[Output::Reply(b"VOLT 1.2.3 ON=on ID=A".to_vec())])
            .unwrap_err();
        assert!(err.0.contains("volts"), "{err}");
    }
}
