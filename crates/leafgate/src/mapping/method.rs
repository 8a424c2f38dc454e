//! A configured method, compiled once at load: payload → bus operations, outputs → JSON reply.

use std::collections::BTreeSet;
use std::time::Duration;

use regex::Regex;
use serde_json::{Map, Value};

use super::schema::{Constant, DataType, FieldConfig, MethodConfig, ReplyKind, StepConfig, StepOp};
use super::template::Template;
use super::value::{self, Layout};
use crate::bus::op::{MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS, MAX_WRITE_REGISTERS};
use crate::bus::{BusKind, Table};
use crate::bus::{Op, Output, WriteData};

/// A config problem found while compiling, with the dotted path of the offending key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The caller sent something this method cannot take (status 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub field: Option<String>,
    pub message: String,
}

impl RequestError {
    pub fn new(field: Option<&str>, message: impl Into<String>) -> Self {
        RequestError {
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// The hardware's answer could not be turned into a reply (status 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplyError(pub String);

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

    /// Payload keys the method accepts.
    #[must_use]
    pub fn inputs(&self) -> &BTreeSet<String> {
        &self.inputs
    }

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
                },
            });
        }
        Ok(ops)
    }

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

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses `"01 03 0A ff"` or `"01030aff"`.
pub(crate) fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err("hex needs an even number of digits".to_owned());
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| format!("{:?} is not a hex byte", String::from_utf8_lossy(pair)))
        })
        .collect()
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

#[allow(clippy::too_many_arguments)]
fn place_field(
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
    if let (Some(min), Some(max)) = (f.min, f.max) {
        if min > max {
            problems.push(Problem::new(
                format!("{path}.min"),
                format!("{min} is above max {max}"),
            ));
        }
    }
    (problems.len() == start).then_some(layout)
}

fn compile_send(step: &StepConfig, path: &str, problems: &mut Vec<Problem>) -> Option<Step> {
    let start = problems.len();
    let request = match (&step.request, &step.request_hex) {
        (Some(t), None) => match Template::parse(t) {
            Ok(t) => Some(Request::Text(t)),
            Err(e) => {
                problems.push(Problem::new(format!("{path}.request"), e));
                None
            }
        },
        (None, Some(h)) => match parse_hex(h) {
            Ok(b) if !b.is_empty() => Some(Request::Bytes(b)),
            Ok(_) => {
                problems.push(Problem::new(format!("{path}.request_hex"), "is empty"));
                None
            }
            Err(e) => {
                problems.push(Problem::new(format!("{path}.request_hex"), e));
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push(Problem::new(
                format!("{path}.request"),
                "give request or request_hex, not both",
            ));
            None
        }
        (None, None) => {
            problems.push(Problem::new(
                format!("{path}.request"),
                "missing (or request_hex)",
            ));
            None
        }
    };
    let mut params = Vec::new();
    for (i, p) in step.params.iter().enumerate() {
        let ppath = format!("{path}.params[{i}]");
        let Some(name) = &p.name else {
            problems.push(Problem::new(format!("{ppath}.name"), "missing"));
            continue;
        };
        let ty = p.data_type.unwrap_or(DataType::String);
        for (key, present) in [
            ("address", p.address.is_some()),
            ("bit", p.bit.is_some()),
            ("length", p.length.is_some()),
            ("word_order", p.word_order.is_some()),
            ("byte_order", p.byte_order.is_some()),
            ("scale", p.scale.is_some()),
            ("offset", p.offset.is_some()),
            ("decimals", p.decimals.is_some()),
        ] {
            if present {
                problems.push(Problem::new(
                    format!("{ppath}.{key}"),
                    "does not apply to serial params (format in the template, e.g. {volts:.3})",
                ));
            }
        }
        let mut layout = Layout::new(ty);
        layout.min = p.min;
        layout.max = p.max;
        layout.length = 128;
        let source = match &p.value {
            Some(c) => Source::Fixed(c.to_json()),
            None => Source::Payload {
                default: p.default.as_ref().map(Constant::to_json),
            },
        };
        params.push(Input {
            placed: Placed {
                name: name.clone(),
                pos: 0,
                layout,
            },
            source,
        });
    }
    if let Some(Request::Text(t)) = &request {
        for used in t.field_names() {
            if !params.iter().any(|p| p.placed.name == used) {
                problems.push(Problem::new(
                    format!("{path}.request"),
                    format!("uses {{{used}}} but no params entry names it"),
                ));
            }
        }
    }
    let expect = match &step.expect {
        Some(pattern) => match Regex::new(pattern) {
            Ok(re) => Some(re),
            Err(e) => {
                problems.push(Problem::new(
                    format!("{path}.expect"),
                    format!("not a valid regex: {e}"),
                ));
                None
            }
        },
        None => None,
    };
    let reply = step.reply.unwrap_or(ReplyKind::Text);
    if expect.is_some() && reply != ReplyKind::Text {
        problems.push(Problem::new(
            format!("{path}.reply"),
            "expect needs reply = \"text\"",
        ));
    }
    let mut captures = Vec::new();
    for (i, f) in step.fields.iter().enumerate() {
        let fpath = format!("{path}.fields[{i}]");
        let Some(name) = &f.name else {
            problems.push(Problem::new(format!("{fpath}.name"), "missing"));
            continue;
        };
        if let Some(re) = &expect {
            if !re.capture_names().flatten().any(|c| c == name) {
                problems.push(Problem::new(
                    format!("{fpath}.name"),
                    format!("expect has no named capture (?P<{name}>...)"),
                ));
            }
        }
        captures.push((name.clone(), f.data_type.unwrap_or(DataType::String)));
    }
    if problems.len() != start {
        return None;
    }
    Some(Step::Send {
        request: request?,
        params,
        expect,
        reply,
        captures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The part of a config file these tests need: the devices' method sections (other keys are
    /// ignored here; `config` checks them).
    #[derive(serde::Deserialize)]
    struct Snippet {
        device: Vec<SnippetDevice>,
    }

    #[derive(serde::Deserialize)]
    struct SnippetDevice {
        method: Vec<MethodConfig>,
    }

    /// Compiles the first method of a one-device TOML snippet.
    fn method(bus: BusKind, toml: &str) -> Result<Method, Vec<Problem>> {
        // The same TOML reader `config::load` uses (the external `config` crate, not ours).
        let cfg: Snippet = ::config::Config::builder()
            .add_source(::config::File::from_str(toml, ::config::FileFormat::Toml))
            .build()
            .and_then(::config::Config::try_deserialize)
            .unwrap();
        Method::compile(&cfg.device[0].method[0], bus, "m")
    }

    const SET_SPEED: &str = r#"
        [[device]]
        id = "d"
        bus = "b"
        [[device.method]]
        name = "setSpeed"
        [[device.method.step]]
        op = "write"
        table = "holding"
        address = 100
        fields = [
          { name = "speed", type = "f32", min = 0, max = 1500, word_order = "little" },
          { name = "ramp", type = "u16", default = 5, scale = 0.1 },
          { type = "u16", value = 1 },
        ]
        [[device.method.step]]
        op = "read"
        table = "holding"
        address = 100
        fields = [{ name = "speed", type = "f32", word_order = "little" }, { name = "flags", type = "bit", address = 103, bit = 2 }]
    "#;

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

    const PSU: &str = r#"
        [[device]]
        id = "psu"
        bus = "s"
        [[device.method]]
        name = "measure"
        [[device.method.step]]
        op = "send"
        request = "VOLT {volts:.3};LABEL {label}\r\n"
        params = [{ name = "volts", type = "f64", min = 0, max = 30 }, { name = "label", default = "x" }]
        expect = '^VOLT (?P<volts>[0-9.]+) ON=(?P<on>\w+) ID=(?P<id>\S+)$'
        fields = [{ name = "volts", type = "f64" }, { name = "on", type = "bool" }]
    "#;

    #[test]
    fn serial_templates_render_and_patterns_become_typed_fields() {
        let m = method(BusKind::Serial, PSU).unwrap();
        let ops = m.prepare(0, &json!({"volts": 12.5})).unwrap();
        assert_eq!(
            ops,
            vec![Op::Serial {
                request: b"VOLT 12.500;LABEL x\r\n".to_vec(),
                reply: true
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

    #[test]
    fn serial_strings_cannot_inject_a_second_command() {
        let m = method(BusKind::Serial, PSU).unwrap();
        let err = m
            .prepare(0, &json!({"volts": 1, "label": "a\r\nOUTP ON"}))
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("label"));
        assert!(m.prepare(0, &json!({"volts": 31})).is_err());
    }

    /// One step on `table` at `address` with `fields` (TOML inline tables), on a Modbus TCP bus.
    fn step(op: &str, table: &str, address: u32, fields: &str) -> Result<Method, Vec<Problem>> {
        method(
            BusKind::ModbusTcp,
            &format!(
                "[[device]]\nid = \"d\"\nbus = \"b\"\n[[device.method]]\nname = \"m\"\n\
                 [[device.method.step]]\nop = \"{op}\"\ntable = \"{table}\"\naddress = {address}\n\
                 fields = [{fields}]\n"
            ),
        )
    }

    fn read_op(m: &Method) -> Op {
        m.prepare(1, &json!({})).unwrap().remove(0)
    }

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
