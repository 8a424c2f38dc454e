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
    /// The engineering unit, as a DTDL v2 unit name (`degreeCelsius`, `volt`): only the IoT
    /// Plug and Play model (`leafgate model`) uses it; readings and replies carry numbers alone.
    pub unit: Option<Unit>,
}

/// A DTDL v2 unit with the semantic type DTDL requires beside it (`volt` is a `Voltage`). An
/// unknown name is refused while the config is read, with the list of known ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub name: &'static str,
    pub semantic_type: &'static str,
}

/// DTDL v2's units, space-separated, by the semantic type they go with (its QuantitativeTypes
/// extension as Microsoft's DTDL parser defines it). Where DTDL allows a unit with several
/// semantic types (a `metre` is a `Length` or a `Distance`), the one here is used; `percent`
/// goes with `RelativeHumidity`, the only semantic type DTDL v2 allows it with.
pub const UNITS: &[(&str, &str)] = &[
    (
        "Acceleration",
        "metrePerSecondSquared centimetrePerSecondSquared gForce",
    ),
    ("Angle", "radian degreeOfArc minuteOfArc secondOfArc turn"),
    ("AngularAcceleration", "radianPerSecondSquared"),
    (
        "AngularVelocity",
        "radianPerSecond degreePerSecond revolutionPerSecond revolutionPerMinute",
    ),
    (
        "Area",
        "squareMetre squareCentimetre squareMillimetre squareKilometre hectare squareFoot \
         squareInch acre",
    ),
    (
        "Capacitance",
        "farad millifarad microfarad nanofarad picofarad",
    ),
    ("Current", "ampere microampere milliampere"),
    (
        "DataRate",
        "bitPerSecond kibibitPerSecond mebibitPerSecond gibibitPerSecond tebibitPerSecond \
         exbibitPerSecond zebibitPerSecond yobibitPerSecond bytePerSecond kibibytePerSecond \
         mebibytePerSecond gibibytePerSecond tebibytePerSecond exbibytePerSecond zebibytePerSecond \
         yobibytePerSecond",
    ),
    (
        "DataSize",
        "bit kibibit mebibit gibibit tebibit exbibit zebibit yobibit byte kibibyte mebibyte \
         gibibyte tebibyte exbibyte zebibyte yobibyte",
    ),
    ("Density", "kilogramPerCubicMetre gramPerCubicMetre"),
    ("ElectricCharge", "coulomb"),
    (
        "Energy",
        "joule kilojoule megajoule gigajoule electronvolt megaelectronvolt kilowattHour",
    ),
    ("Force", "newton pound ounce ton"),
    ("Frequency", "hertz kilohertz megahertz gigahertz"),
    ("Illuminance", "lux footcandle"),
    ("Inductance", "henry millihenry microhenry"),
    (
        "Length",
        "metre centimetre millimetre micrometre nanometre kilometre foot inch mile nauticalMile \
         astronomicalUnit",
    ),
    ("Luminance", "candelaPerSquareMetre"),
    ("LuminousFlux", "lumen"),
    ("LuminousIntensity", "candela"),
    ("MagneticFlux", "weber maxwell"),
    ("MagneticInduction", "tesla"),
    ("Mass", "kilogram gram milligram microgram tonne slug"),
    (
        "MassFlowRate",
        "gramPerSecond kilogramPerSecond gramPerHour kilogramPerHour",
    ),
    (
        "Power",
        "watt microwatt milliwatt kilowatt megawatt gigawatt horsepower kilowattHourPerYear",
    ),
    (
        "Pressure",
        "pascal kilopascal bar millibar millimetresOfMercury poundPerSquareInch inchesOfMercury \
         inchesOfWater",
    ),
    ("RelativeHumidity", "percent unity"),
    ("Resistance", "ohm milliohm kiloohm megaohm"),
    ("SoundPressure", "decibel bel"),
    ("Temperature", "kelvin degreeCelsius degreeFahrenheit"),
    (
        "TimeSpan",
        "second millisecond microsecond nanosecond minute hour day year",
    ),
    ("Torque", "newtonMetre"),
    (
        "Velocity",
        "metrePerSecond centimetrePerSecond kilometrePerSecond metrePerHour kilometrePerHour \
         milePerHour milePerSecond knot",
    ),
    ("Voltage", "volt millivolt microvolt kilovolt megavolt"),
    (
        "Volume",
        "cubicMetre cubicCentimetre litre millilitre cubicFoot cubicInch fluidOunce gallon",
    ),
    (
        "VolumeFlowRate",
        "litrePerSecond millilitrePerSecond litrePerHour millilitrePerHour",
    ),
];

impl Unit {
    /// The unit named `name`, with its semantic type.
    #[must_use]
    pub fn find(name: &str) -> Option<Unit> {
        UNITS.iter().find_map(|(semantic_type, units)| {
            (units.split_whitespace())
                .find(|u| *u == name)
                .map(|name| Unit {
                    name,
                    semantic_type,
                })
        })
    }
}

impl<'de> Deserialize<'de> for Unit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Unit::find(&name).ok_or_else(|| {
            let known: Vec<&str> = UNITS
                .iter()
                .flat_map(|(_, u)| u.split_whitespace())
                .collect();
            serde::de::Error::custom(format!(
                "{name:?} is not a DTDL v2 unit (known: {})",
                known.join(", ")
            ))
        })
    }
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
