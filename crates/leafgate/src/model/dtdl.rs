//! DTDL v2's vocabulary as leafgate uses it: which names DTDL takes, the schema of each field
//! type (as the value leafgate actually sends, see `mapping::value::decode`), and the fixed
//! shape of leafgate's own view of a device. Pure.

use serde_json::{Map, Value, json};

use crate::mapping::schema::{Constant, DataType, FieldConfig, Unit};

/// The longest name DTDL v2 takes.
pub const MAX_NAME: usize = 64;
/// The most contents one DTDL v2 interface may hold.
pub const MAX_CONTENTS: usize = 300;

/// Whether DTDL v2 takes `name` as the name of a content or a field:
/// `^[a-zA-Z](?:[a-zA-Z0-9_]*[a-zA-Z0-9])?$`, at most 64 characters.
#[must_use]
pub fn is_name(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && !name.ends_with('_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The rule [`is_name`] checks, for messages.
pub const NAME_RULE: &str = "a DTDL name is letters, digits and '_', starts with a letter, does not end with '_', and has at most 64 characters";

/// One value of a payload, reply or reading as the model describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    pub name: String,
    /// A DTDL primitive schema.
    pub schema: &'static str,
    pub unit: Option<Unit>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Why a field cannot be described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitNotNumeric {
    pub unit: &'static str,
    pub data_type: &'static str,
}

/// The schema of a field of type `ty`, given its config (`None` for values leafgate names itself,
/// such as a serial step's `reply`). Integers read as integers unless `scale` or `offset` make
/// the decoder compute an engineering value, which it always sends as a JSON float; `u32` is a
/// `long` because DTDL's `integer` is a signed 32-bit number.
///
/// # Errors
/// A unit on a field that is not a number.
pub fn describe(
    name: &str,
    ty: DataType,
    min: Option<f64>,
    max: Option<f64>,
    cfg: Option<&FieldConfig>,
) -> Result<Described, UnitNotNumeric> {
    let scaled = cfg
        .is_some_and(|c| c.scale.is_some_and(|s| s != 1.0) || c.offset.is_some_and(|o| o != 0.0));
    let schema = primitive(ty, scaled);
    let unit = cfg.and_then(|c| c.unit);
    if let Some(unit) = unit
        && !matches!(schema, "integer" | "long" | "double")
    {
        return Err(UnitNotNumeric {
            unit: unit.name,
            data_type: ty.name(),
        });
    }
    Ok(Described {
        name: name.to_owned(),
        schema,
        unit,
        min,
        max,
    })
}

/// The DTDL primitive for a field type, scaled or not.
#[must_use]
pub fn primitive(ty: DataType, scaled: bool) -> &'static str {
    match ty {
        DataType::Bool | DataType::Bit => "boolean",
        DataType::String => "string",
        DataType::F32 | DataType::F64 => "double",
        _ if scaled => "double",
        DataType::U16 | DataType::I16 | DataType::I32 => "integer",
        DataType::U32 | DataType::U64 | DataType::I64 => "long",
    }
}

/// The schema of a static reported value.
#[must_use]
pub fn constant(value: &Constant) -> &'static str {
    match value {
        Constant::Bool(_) => "boolean",
        Constant::Int(_) => "long",
        Constant::Float(_) => "double",
        Constant::Text(_) => "string",
    }
}

/// A Telemetry or Property content for one value: with its unit, the semantic type DTDL
/// requires beside it.
#[must_use]
pub fn content(kind: &str, value: &Described) -> Value {
    let mut item = Map::new();
    match value.unit {
        Some(unit) => {
            item.insert("@type".into(), json!([kind, unit.semantic_type]));
            item.insert("unit".into(), json!(unit.name));
        }
        None => {
            item.insert("@type".into(), json!(kind));
        }
    }
    item.insert("name".into(), json!(value.name));
    item.insert("schema".into(), json!(value.schema));
    if let Some(range) = range(value.min, value.max) {
        item.insert("description".into(), json!(range));
    }
    Value::Object(item)
}

/// An Object schema of `fields` (which must not be empty: DTDL wants at least one). DTDL v2
/// gives an object's fields no unit, so a unit goes into the field's description.
#[must_use]
pub fn object(fields: &[Described]) -> Value {
    let fields: Vec<Value> = fields
        .iter()
        .map(|f| {
            let mut field = Map::new();
            field.insert("name".into(), json!(f.name));
            field.insert("schema".into(), json!(f.schema));
            let words: Vec<String> = (f.unit.map(|u| format!("in {}", u.name)).into_iter())
                .chain(range(f.min, f.max))
                .collect();
            if !words.is_empty() {
                field.insert("description".into(), json!(words.join(", ")));
            }
            Value::Object(field)
        })
        .collect();
    json!({"@type": "Object", "fields": fields})
}

/// What a write accepts, in words.
fn range(min: Option<f64>, max: Option<f64>) -> Option<String> {
    match (min, max) {
        (Some(lo), Some(hi)) => Some(format!("from {lo} to {hi}")),
        (Some(lo), None) => Some(format!("at least {lo}")),
        (None, Some(hi)) => Some(format!("at most {hi}")),
        (None, None) => None,
    }
}

/// leafgate's own view of the device (`services::twin::health`), reported under `name`.
#[must_use]
pub fn health(name: &str) -> Value {
    json!({
        "@type": "Property",
        "name": name,
        "description": "leafgate's view of the device: gateway version, bus and unit, online or down and since when, the last failed request, and requests counted by status",
        "schema": {
            "@type": "Object",
            "fields": [
                {"name": "version", "schema": "string"},
                {"name": "bus", "schema": "string"},
                {"name": "unit", "schema": "integer"},
                {"name": "state", "schema": {
                    "@type": "Enum",
                    "valueSchema": "string",
                    "enumValues": [
                        {"name": "online", "enumValue": "online"},
                        {"name": "down", "enumValue": "down"},
                    ],
                }},
                {"name": "since", "schema": "dateTime"},
                {"name": "lastError", "schema": {
                    "@type": "Object",
                    "fields": [
                        {"name": "status", "schema": "integer"},
                        {"name": "method", "schema": "string"},
                        {"name": "at", "schema": "dateTime"},
                    ],
                }},
                {"name": "methods", "schema": {
                    "@type": "Map",
                    "mapKey": {"name": "status", "schema": "string"},
                    "mapValue": {"name": "count", "schema": "long"},
                }},
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(keys: Value) -> FieldConfig {
        serde_json::from_value(keys).unwrap()
    }

    #[test]
    fn names_follow_dtdl() {
        for good in ["a", "speedSetpoint", "energy_kwh", "A1", &"a".repeat(64)] {
            assert!(is_name(good), "{good}");
        }
        for bad in [
            "",
            "1a",
            "_a",
            "a_",
            "set-speed",
            "pump.start",
            "ü",
            &"a".repeat(65),
        ] {
            assert!(!is_name(bad), "{bad}");
        }
    }

    #[test]
    fn field_types_map_to_what_the_decoder_sends() {
        use DataType::*;
        let cases = [
            (U16, false, "integer"),
            (I16, false, "integer"),
            (I32, false, "integer"),
            (U32, false, "long"),
            (U64, false, "long"),
            (I64, false, "long"),
            (F32, false, "double"),
            (F64, false, "double"),
            (Bool, false, "boolean"),
            (Bit, false, "boolean"),
            (String, false, "string"),
            (U16, true, "double"),
            (I64, true, "double"),
            (Bool, true, "boolean"),
        ];
        for (ty, scaled, want) in cases {
            assert_eq!(primitive(ty, scaled), want, "{ty:?} scaled {scaled}");
        }
    }

    #[test]
    fn scale_or_offset_make_an_integer_field_a_double_and_a_unit_needs_a_number() {
        let plain = field(json!({"name": "rpm", "type": "u16", "scale": 1.0, "offset": 0.0}));
        let scaled = field(json!({"name": "rpm", "type": "u16", "scale": 0.1}));
        let offset =
            field(json!({"name": "t", "type": "i16", "offset": -40.0, "unit": "degreeCelsius"}));
        let d = |ty, cfg| describe("x", ty, None, None, Some(cfg)).unwrap().schema;
        assert_eq!(d(DataType::U16, &plain), "integer");
        assert_eq!(d(DataType::U16, &scaled), "double");
        assert_eq!(d(DataType::I16, &offset), "double");
        let t = describe("t", DataType::I16, None, None, Some(&offset)).unwrap();
        assert_eq!(
            content("Telemetry", &t),
            json!({"@type": ["Telemetry", "Temperature"], "name": "t", "schema": "double", "unit": "degreeCelsius"})
        );
        let on_bool = field(json!({"name": "run", "type": "bool", "unit": "volt"}));
        assert_eq!(
            describe("run", DataType::Bool, None, None, Some(&on_bool)),
            Err(UnitNotNumeric {
                unit: "volt",
                data_type: "bool"
            })
        );
    }

    #[test]
    fn units_are_known_names_with_their_semantic_type() {
        let unit: FieldConfig = field(json!({"unit": "revolutionPerMinute"}));
        assert_eq!(
            unit.unit,
            Some(Unit {
                name: "revolutionPerMinute",
                semantic_type: "AngularVelocity"
            })
        );
        assert_eq!(
            Unit::find("percent").unwrap().semantic_type,
            "RelativeHumidity"
        );
        assert_eq!(Unit::find("kilowattHour").unwrap().semantic_type, "Energy");
        let err = serde_json::from_value::<FieldConfig>(json!({"unit": "celsius"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("\"celsius\" is not a DTDL v2 unit (known: metrePerSecondSquared, "),
            "{err}"
        );
        assert!(err.contains(", degreeCelsius, "), "{err}");
    }

    #[test]
    fn ranges_and_units_go_into_descriptions_where_dtdl_has_no_key_for_them() {
        let speed = Described {
            name: "speed".into(),
            schema: "double",
            unit: Unit::find("revolutionPerMinute"),
            min: Some(0.0),
            max: Some(1500.0),
        };
        let ramp = Described {
            name: "ramp".into(),
            schema: "integer",
            unit: None,
            min: Some(1.0),
            max: None,
        };
        assert_eq!(
            object(&[speed.clone(), ramp]),
            json!({"@type": "Object", "fields": [
                {"name": "speed", "schema": "double", "description": "in revolutionPerMinute, from 0 to 1500"},
                {"name": "ramp", "schema": "integer", "description": "at least 1"},
            ]})
        );
        assert_eq!(
            content("Property", &speed),
            json!({"@type": ["Property", "AngularVelocity"], "name": "speed", "schema": "double",
                   "unit": "revolutionPerMinute", "description": "from 0 to 1500"})
        );
    }
}
