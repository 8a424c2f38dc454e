//! Opt-in raw methods for commissioning (`raw_methods = true` on a device): read or write any
//! Modbus address, or send any bytes on a serial line. Off by default because they bypass the
//! configured ranges.

use std::time::Duration;

use serde_json::{Map, Value};

use super::method::{RequestError, parse_hex, payload_object, to_hex};
use crate::bus::op::{MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS, MAX_WRITE_REGISTERS};
use crate::bus::{BusKind, Table};
use crate::bus::{Op, Output, WriteData};

pub const MODBUS_READ: &str = "modbus.read";
pub const MODBUS_WRITE: &str = "modbus.write";
pub const SERIAL_SEND: &str = "serial.send";

/// Raw methods run under this deadline; the caller's `responseTimeoutInSeconds` must exceed it.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The raw method names a device on a `bus` kind offers.
#[must_use]
pub fn names(bus: BusKind) -> &'static [&'static str] {
    if bus.is_modbus() {
        &[MODBUS_READ, MODBUS_WRITE]
    } else {
        &[SERIAL_SEND]
    }
}

/// How to read a raw method's single output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw {
    Read,
    Write,
    Send,
}

/// Builds the operation for raw method `name`; `None` when `name` is not a raw method on this
/// bus kind.
///
/// # Errors
/// When the payload is malformed or outside Modbus limits.
pub fn prepare(
    name: &str,
    bus: BusKind,
    unit: u8,
    payload: &Value,
) -> Option<Result<(Raw, Op), RequestError>> {
    if !names(bus).contains(&name) {
        return None;
    }
    Some(match name {
        MODBUS_READ => read(unit, payload).map(|op| (Raw::Read, op)),
        MODBUS_WRITE => write(unit, payload).map(|op| (Raw::Write, op)),
        _ => send(payload).map(|op| (Raw::Send, op)),
    })
}

fn allow_only(args: &Map<String, Value>, keys: &[&str]) -> Result<(), RequestError> {
    match args.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => Err(RequestError::new(
            Some(k),
            format!("unknown field; takes: {}", keys.join(", ")),
        )),
        None => Ok(()),
    }
}

fn table(args: &Map<String, Value>) -> Result<Table, RequestError> {
    match args.get("table").and_then(Value::as_str) {
        Some("holding") => Ok(Table::Holding),
        Some("input") => Ok(Table::Input),
        Some("coil") => Ok(Table::Coil),
        Some("discrete") => Ok(Table::Discrete),
        _ => Err(RequestError::new(
            Some("table"),
            "expected one of holding, input, coil, discrete",
        )),
    }
}

fn number(args: &Map<String, Value>, key: &str, max: u64) -> Result<u16, RequestError> {
    args.get(key)
        .and_then(Value::as_u64)
        .filter(|n| *n <= max)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| RequestError::new(Some(key), format!("expected an integer 0..={max}")))
}

fn read(unit: u8, payload: &Value) -> Result<Op, RequestError> {
    let args = payload_object(payload)?;
    allow_only(args, &["table", "address", "count"])?;
    let table = table(args)?;
    let address = number(args, "address", 65535)?;
    let limit = if table.is_bits() {
        MAX_READ_BITS
    } else {
        MAX_READ_REGISTERS
    };
    let count = number(args, "count", u64::from(limit))?;
    if count == 0 {
        return Err(RequestError::new(
            Some("count"),
            format!("expected 1..={limit}"),
        ));
    }
    if u32::from(address) + u32::from(count) > 65536 {
        return Err(RequestError::new(
            Some("count"),
            "address + count runs past 65535",
        ));
    }
    Ok(Op::Read {
        unit,
        table,
        address,
        count,
    })
}

fn write(unit: u8, payload: &Value) -> Result<Op, RequestError> {
    let args = payload_object(payload)?;
    allow_only(args, &["table", "address", "values"])?;
    let table = table(args)?;
    let address = number(args, "address", 65535)?;
    let values = args
        .get("values")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RequestError::new(Some("values"), "expected a non-empty array"))?;
    let n = u32::try_from(values.len()).unwrap_or(u32::MAX);
    if u32::from(address) + n > 65536 {
        return Err(RequestError::new(
            Some("values"),
            "address + count runs past 65535",
        ));
    }
    let data = match table {
        Table::Holding => {
            if n > u32::from(MAX_WRITE_REGISTERS) {
                return Err(RequestError::new(
                    Some("values"),
                    format!("at most {MAX_WRITE_REGISTERS} registers per write"),
                ));
            }
            let regs = values
                .iter()
                .map(|v| v.as_u64().and_then(|n| u16::try_from(n).ok()))
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| RequestError::new(Some("values"), "expected integers 0..=65535"))?;
            WriteData::Registers(regs)
        }
        Table::Coil => {
            if n > u32::from(MAX_WRITE_BITS) {
                return Err(RequestError::new(
                    Some("values"),
                    format!("at most {MAX_WRITE_BITS} coils per write"),
                ));
            }
            let bits = values
                .iter()
                .map(Value::as_bool)
                .collect::<Option<Vec<bool>>>()
                .ok_or_else(|| {
                    RequestError::new(Some("values"), "expected true or false values")
                })?;
            WriteData::Coils(bits)
        }
        Table::Input | Table::Discrete => {
            return Err(RequestError::new(
                Some("table"),
                "input and discrete tables are read-only",
            ));
        }
    };
    Ok(Op::Write {
        unit,
        address,
        data,
    })
}

fn send(payload: &Value) -> Result<Op, RequestError> {
    let args = payload_object(payload)?;
    allow_only(args, &["text", "hex", "reply"])?;
    let (request, text) = match (args.get("text"), args.get("hex")) {
        (Some(Value::String(t)), None) => (t.as_bytes().to_vec(), true),
        (None, Some(Value::String(h))) => (
            parse_hex(h).map_err(|e| RequestError::new(Some("hex"), e))?,
            false,
        ),
        _ => {
            return Err(RequestError::new(
                Some("text"),
                "give text or hex (a string), not both",
            ));
        }
    };
    if request.is_empty() || request.len() > 4096 {
        return Err(RequestError::new(Some("text"), "expected 1..=4096 bytes"));
    }
    let reply = match args.get("reply") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(RequestError::new(Some("reply"), "expected true or false")),
    };
    Ok(Op::Serial {
        request,
        reply,
        text,
    })
}

/// The reply object for a raw method's output.
#[must_use]
pub fn reply(raw: Raw, output: &Output) -> Value {
    let mut map = Map::new();
    match (raw, output) {
        (Raw::Read, Output::Registers(r)) => {
            map.insert("values".to_owned(), Value::from(r.clone()));
        }
        (Raw::Read, Output::Bits(b)) => {
            map.insert("values".to_owned(), Value::from(b.clone()));
        }
        (Raw::Send, Output::Reply(bytes)) => {
            map.insert(
                "reply".to_owned(),
                Value::String(String::from_utf8_lossy(bytes).into_owned()),
            );
            map.insert("reply_hex".to_owned(), Value::String(to_hex(bytes)));
        }
        _ => {}
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raw_reads_and_writes_check_modbus_limits() {
        let ok = prepare(
            MODBUS_READ,
            BusKind::ModbusTcp,
            3,
            &json!({"table":"holding","address":10,"count":125}),
        );
        assert_eq!(
            ok.unwrap().unwrap().1,
            Op::Read {
                unit: 3,
                table: Table::Holding,
                address: 10,
                count: 125
            }
        );
        for bad in [
            json!({"table":"holding","address":10,"count":126}),
            json!({"table":"coil","address":10,"count":2001}),
            json!({"table":"holding","address":-1,"count":1}),
            json!({"table":"holding","address":65535,"count":2}),
            json!({"table":"holding","address":0,"count":0}),
            json!({"table":"holdings","address":0,"count":1}),
            json!({"table":"holding","address":0,"count":1,"x":1}),
            json!([1]),
        ] {
            let r = prepare(MODBUS_READ, BusKind::ModbusRtu, 1, &bad).unwrap();
            assert!(r.is_err(), "{bad}");
        }
        let w = prepare(
            MODBUS_WRITE,
            BusKind::ModbusTcp,
            1,
            &json!({"table":"coil","address":0,"values":[true,false]}),
        );
        assert_eq!(
            w.unwrap().unwrap().1,
            Op::Write {
                unit: 1,
                address: 0,
                data: WriteData::Coils(vec![true, false])
            }
        );
        let too_many = json!({"table":"holding","address":0,"values": vec![1; 124]});
        assert!(
            prepare(MODBUS_WRITE, BusKind::ModbusTcp, 1, &too_many)
                .unwrap()
                .is_err()
        );
        assert!(
            prepare(
                MODBUS_WRITE,
                BusKind::ModbusTcp,
                1,
                &json!({"table":"input","address":0,"values":[1]})
            )
            .unwrap()
            .is_err()
        );
        assert!(
            prepare(
                MODBUS_WRITE,
                BusKind::ModbusTcp,
                1,
                &json!({"table":"holding","address":0,"values":[65536]})
            )
            .unwrap()
            .is_err()
        );
    }

    #[test]
    fn raw_methods_exist_only_on_their_bus_kind() {
        assert!(prepare(SERIAL_SEND, BusKind::ModbusTcp, 1, &json!({"text":"x"})).is_none());
        assert!(prepare(MODBUS_READ, BusKind::Serial, 0, &json!({})).is_none());
        let s = prepare(SERIAL_SEND, BusKind::Serial, 0, &json!({"hex":"2A 49"}))
            .unwrap()
            .unwrap();
        assert_eq!(
            s.1,
            Op::Serial {
                request: b"*I".to_vec(),
                reply: true,
                text: false
            }
        );
        let s = prepare(SERIAL_SEND, BusKind::Serial, 0, &json!({"text":"*I"}))
            .unwrap()
            .unwrap();
        assert_eq!(
            s.1,
            Op::Serial {
                request: b"*I".to_vec(),
                reply: true,
                text: true
            }
        );
        assert_eq!(
            reply(Raw::Send, &Output::Reply(b"OK".to_vec())),
            json!({"reply":"OK","reply_hex":"4F 4B"})
        );
    }
}
