//! The method and telemetry sections of the config file (`[[device.method]]`,
//! `[[profile.method]]`, `[[device.telemetry]]`, `[[profile.telemetry]]`), as written: what
//! [`super::Method::compile`] and [`super::group::Group::compile`] turn into bus operations.
//! They live with the mapping that gives them meaning; `config` deserialises into them and never
//! the reverse. Closed: every struct denies unknown keys. Every key is documented in
//! `config/leafgate.toml` and the README.

use serde::Deserialize;

use crate::bus::op::Table;

/// A method's deadline when its section gives none.
fn default_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    pub name: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub step: Vec<StepConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOp {
    Read,
    Write,
    Send,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    Text,
    Hex,
    None,
}

/// One step of a method: a Modbus read or write, or a serial exchange.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    pub op: StepOp,
    // modbus
    pub table: Option<Table>,
    pub address: Option<u16>,
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
    // serial
    pub request: Option<String>,
    pub request_hex: Option<String>,
    #[serde(default)]
    pub params: Vec<FieldConfig>,
    pub expect: Option<String>,
    pub reply: Option<ReplyKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    Bool,
    Bit,
    String,
}

impl DataType {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::Bool => "bool",
            DataType::Bit => "bit",
            DataType::String => "string",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    #[default]
    Big,
    Little,
}

/// A constant in the config: a default or a fixed value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Constant {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Constant {
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Constant::Bool(b) => serde_json::Value::Bool(*b),
            Constant::Int(i) => serde_json::Value::from(*i),
            Constant::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Constant::Text(s) => serde_json::Value::String(s.clone()),
        }
    }
}

/// A typed value in registers, bits, or a serial template/reply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub data_type: Option<DataType>,
    /// Absolute register or bit address; default: right after the previous field.
    pub address: Option<u16>,
    pub bit: Option<u8>,
    pub length: Option<u16>,
    pub word_order: Option<Order>,
    pub byte_order: Option<Order>,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub decimals: Option<u8>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub default: Option<Constant>,
    pub value: Option<Constant>,
    /// Telemetry with `on_change` only: how far a number may move before the reading is sent.
    pub deadband: Option<f64>,
}

/// A property read from the hardware into the device twin's reported properties
/// (`[[device.property]]`, `[[profile.property]]`): read steps like a method's, whose fields
/// are reported under their names after every connect and every `interval_s`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropertyConfig {
    pub name: String,
    /// Read again this often; absent: only after each connect.
    pub interval_s: Option<u64>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub step: Vec<StepConfig>,
}

impl PropertyConfig {
    /// The method that reads it: the same steps, compiled the same way.
    #[must_use]
    pub fn as_method(&self) -> MethodConfig {
        MethodConfig {
            name: self.name.clone(),
            timeout_ms: self.timeout_ms,
            step: self.step.clone(),
        }
    }
}

/// A telemetry group (`[[device.telemetry]]`, `[[profile.telemetry]]`) as written: read steps
/// polled every `interval_ms`, sent as one device-to-cloud message per reading. Compiled by
/// [`super::group::Group::compile`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    pub interval_ms: u64,
    #[serde(default)]
    pub on_change: bool,
    pub max_silence_ms: Option<u64>,
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
    /// Unused registers (or bits) one merged read may span between fields.
    pub max_gap: Option<u16>,
    #[serde(default)]
    pub step: Vec<StepConfig>,
}
