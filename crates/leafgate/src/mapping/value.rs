//! Typed values in Modbus registers: layout (width, word and byte order), engineering scaling,
//! and range checks. Pure functions, no I/O.
//!
//! Multi-register numbers are laid out as their big-endian bytes cut into 16-bit words. `word_order
//! = "little"` reverses the words (low word first, common on PLCs); `byte_order = "little"` swaps
//! the two bytes inside each word. Engineering value = raw × `scale` + `offset`.

use serde_json::{Number, Value};

use super::schema::{DataType, Order};

/// How one field sits in registers and converts to engineering units.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub data_type: DataType,
    /// Registers for string fields; ignored otherwise.
    pub length: u16,
    pub bit: u8,
    pub word_order: Order,
    pub byte_order: Order,
    pub scale: f64,
    pub offset: f64,
    pub decimals: Option<u8>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Layout {
    #[must_use]
    pub fn new(data_type: DataType) -> Self {
        Layout {
            data_type,
            length: 1,
            bit: 0,
            word_order: Order::Big,
            byte_order: Order::Big,
            scale: 1.0,
            offset: 0.0,
            decimals: None,
            min: None,
            max: None,
        }
    }

    /// Registers the field occupies.
    #[must_use]
    pub fn width(&self) -> u16 {
        match self.data_type {
            DataType::U16 | DataType::I16 | DataType::Bool | DataType::Bit => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => self.length,
        }
    }

    fn is_identity(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }
}

/// Why a payload value cannot be written. `Display` is the message the caller sees.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("expected {0}")]
    WrongType(&'static str),
    #[error("{value} is out of range {min}..={max}")]
    OutOfRange {
        value: String,
        min: String,
        max: String,
    },
    #[error("{value} does not fit in {data_type} after scaling (raw {raw})")]
    DoesNotFit {
        value: String,
        data_type: &'static str,
        raw: String,
    },
    #[error("string of {len} bytes does not fit in {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("string must be printable ASCII")]
    NotAscii,
    #[error("{0} fields cannot be written")]
    ReadOnly(&'static str),
}

/// Decodes a field from exactly `layout.width()` registers.
#[must_use]
pub fn decode(layout: &Layout, regs: &[u16]) -> Value {
    let bytes = to_bytes(layout, regs);
    let raw = match layout.data_type {
        DataType::Bool => return Value::Bool(regs.first().is_some_and(|r| *r != 0)),
        DataType::Bit => {
            return Value::Bool(regs.first().is_some_and(|r| (r >> layout.bit) & 1 == 1));
        }
        DataType::String => {
            let text: String = bytes
                .iter()
                .take_while(|b| **b != 0)
                .map(|b| if b.is_ascii() { char::from(*b) } else { '?' })
                .collect();
            return Value::String(text.trim_end().to_owned());
        }
        DataType::U16 => Raw::U(u64::from(u16::from_be_bytes(arr(&bytes)))),
        DataType::I16 => Raw::I(i64::from(i16::from_be_bytes(arr(&bytes)))),
        DataType::U32 => Raw::U(u64::from(u32::from_be_bytes(arr(&bytes)))),
        DataType::I32 => Raw::I(i64::from(i32::from_be_bytes(arr(&bytes)))),
        DataType::U64 => Raw::U(u64::from_be_bytes(arr(&bytes))),
        DataType::I64 => Raw::I(i64::from_be_bytes(arr(&bytes))),
        DataType::F32 => Raw::F(f64::from(f32::from_be_bytes(arr(&bytes)))),
        DataType::F64 => Raw::F(f64::from_be_bytes(arr(&bytes))),
    };
    if layout.is_identity() {
        return match raw {
            Raw::U(u) => Value::from(u),
            Raw::I(i) => Value::from(i),
            Raw::F(f) => float_json(f, layout.decimals),
        };
    }
    #[allow(clippy::cast_precision_loss)]
    let raw = match raw {
        Raw::U(u) => u as f64,
        Raw::I(i) => i as f64,
        Raw::F(f) => f,
    };
    float_json(
        raw * layout.scale + layout.offset,
        layout.decimals.or(Some(10)),
    )
}

enum Raw {
    U(u64),
    I(i64),
    F(f64),
}

/// A float as JSON, rounded; NaN and infinities (which JSON cannot carry) become `null`.
fn float_json(value: f64, decimals: Option<u8>) -> Value {
    let value = match decimals {
        Some(d) => {
            let factor = 10f64.powi(i32::from(d.min(15)));
            let rounded = (value * factor).round() / factor;
            if rounded.is_finite() { rounded } else { value }
        }
        None => value,
    };
    Number::from_f64(value).map_or(Value::Null, Value::Number)
}

fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}

/// Registers → logical big-endian bytes, undoing word and byte order.
fn to_bytes(layout: &Layout, regs: &[u16]) -> Vec<u8> {
    let mut words: Vec<u16> = regs.to_vec();
    if layout.word_order == Order::Little && layout.data_type != DataType::String {
        words.reverse();
    }
    let mut bytes = Vec::with_capacity(words.len() * 2);
    for w in words {
        let [hi, lo] = w.to_be_bytes();
        if layout.byte_order == Order::Little {
            bytes.extend([lo, hi]);
        } else {
            bytes.extend([hi, lo]);
        }
    }
    bytes
}

/// Logical big-endian bytes → registers, applying word and byte order.
fn from_bytes(layout: &Layout, bytes: &[u8]) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let (a, b) = (c[0], c.get(1).copied().unwrap_or(0));
            if layout.byte_order == Order::Little {
                u16::from_be_bytes([b, a])
            } else {
                u16::from_be_bytes([a, b])
            }
        })
        .collect();
    if layout.word_order == Order::Little && layout.data_type != DataType::String {
        words.reverse();
    }
    words
}

/// Encodes a JSON value into `layout.width()` registers, checking type and range.
///
/// # Errors
/// When the value has the wrong JSON type, is outside `min`/`max`, or does not fit the register
/// type after scaling.
pub fn encode(layout: &Layout, value: &Value) -> Result<Vec<u16>, ValueError> {
    match layout.data_type {
        DataType::Bit => Err(ValueError::ReadOnly("bit")),
        DataType::Bool => match value {
            Value::Bool(b) => Ok(vec![u16::from(*b)]),
            _ => Err(ValueError::WrongType("true or false")),
        },
        DataType::String => {
            let Value::String(text) = value else {
                return Err(ValueError::WrongType("a string"));
            };
            if !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(ValueError::NotAscii);
            }
            let max = usize::from(layout.length) * 2;
            if text.len() > max {
                return Err(ValueError::TooLong {
                    len: text.len(),
                    max,
                });
            }
            let mut bytes = text.as_bytes().to_vec();
            bytes.resize(max, 0);
            Ok(from_bytes(layout, &bytes))
        }
        _ => encode_number(layout, value),
    }
}

fn encode_number(layout: &Layout, value: &Value) -> Result<Vec<u16>, ValueError> {
    let Value::Number(number) = value else {
        return Err(ValueError::WrongType("a number"));
    };
    let eng = number.as_f64().ok_or(ValueError::WrongType("a number"))?;
    check_range(layout, eng, number)?;
    let ty = layout.data_type;
    let bytes: Vec<u8> = if matches!(ty, DataType::F32 | DataType::F64) {
        // A finite payload can still overflow here (a tiny scale, or an offset far from the
        // value); an infinity in the registers would reach the machine as a setpoint.
        let raw = (eng - layout.offset) / layout.scale;
        if ty == DataType::F32 {
            #[allow(clippy::cast_possible_truncation)]
            let narrowed = raw as f32;
            if !narrowed.is_finite() {
                return Err(does_not_fit(number, ty, raw));
            }
            narrowed.to_be_bytes().to_vec()
        } else {
            if !raw.is_finite() {
                return Err(does_not_fit(number, ty, raw));
            }
            raw.to_be_bytes().to_vec()
        }
    } else {
        let raw = integer_raw(layout, number)?;
        let fits = |lo: i128, hi: i128| (lo..=hi).contains(&raw);
        let ok = match ty {
            DataType::U16 => fits(0, i128::from(u16::MAX)),
            DataType::I16 => fits(i128::from(i16::MIN), i128::from(i16::MAX)),
            DataType::U32 => fits(0, i128::from(u32::MAX)),
            DataType::I32 => fits(i128::from(i32::MIN), i128::from(i32::MAX)),
            DataType::U64 => fits(0, i128::from(u64::MAX)),
            _ => fits(i128::from(i64::MIN), i128::from(i64::MAX)),
        };
        if !ok {
            return Err(ValueError::DoesNotFit {
                value: number.to_string(),
                data_type: ty.name(),
                raw: raw.to_string(),
            });
        }
        let be = raw.to_be_bytes(); // 16 bytes, two's complement
        let width = usize::from(layout.width()) * 2;
        be[16 - width..].to_vec()
    };
    Ok(from_bytes(layout, &bytes))
}

/// The raw integer for a payload number: exact for unscaled integers (so u64 values above 2^53
/// survive), otherwise (value − offset) / scale rounded to the nearest integer.
fn integer_raw(layout: &Layout, number: &Number) -> Result<i128, ValueError> {
    if layout.is_identity() {
        if let Some(u) = number.as_u64() {
            return Ok(i128::from(u));
        }
        if let Some(i) = number.as_i64() {
            return Ok(i128::from(i));
        }
    }
    let eng = number.as_f64().ok_or(ValueError::WrongType("a number"))?;
    let raw = ((eng - layout.offset) / layout.scale).round();
    // i128 covers every register type; anything beyond ±1.7e38 cannot fit anyway.
    if !raw.is_finite() || raw.abs() > 1e38 {
        return Err(does_not_fit(number, layout.data_type, raw));
    }
    #[allow(clippy::cast_possible_truncation)]
    Ok(raw as i128)
}

fn does_not_fit(number: &Number, ty: DataType, raw: f64) -> ValueError {
    ValueError::DoesNotFit {
        value: number.to_string(),
        data_type: ty.name(),
        raw: raw.to_string(),
    }
}

fn check_range(layout: &Layout, eng: f64, number: &Number) -> Result<(), ValueError> {
    let below = layout.min.is_some_and(|min| eng < min);
    let above = layout.max.is_some_and(|max| eng > max);
    if below || above {
        let show = |v: Option<f64>| v.map_or_else(|| "…".to_owned(), |v| v.to_string());
        return Err(ValueError::OutOfRange {
            value: number.to_string(),
            min: show(layout.min),
            max: show(layout.max),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layout(ty: DataType, word: Order, byte: Order) -> Layout {
        Layout {
            word_order: word,
            byte_order: byte,
            ..Layout::new(ty)
        }
    }

    #[test]
    fn every_type_and_order_round_trips_with_known_register_images() {
        use DataType::*;
        use Order::{Big as B, Little as L};
        // (type, word, byte, value, registers)
        let cases: Vec<(DataType, Order, Order, Value, Vec<u16>)> = vec![
            (U16, B, B, json!(0x1234), vec![0x1234]),
            (U16, B, L, json!(0x1234), vec![0x3412]),
            (I16, B, B, json!(-2), vec![0xFFFE]),
            (U32, B, B, json!(0x1234_5678u32), vec![0x1234, 0x5678]),
            (U32, L, B, json!(0x1234_5678u32), vec![0x5678, 0x1234]),
            (U32, B, L, json!(0x1234_5678u32), vec![0x3412, 0x7856]),
            (U32, L, L, json!(0x1234_5678u32), vec![0x7856, 0x3412]),
            (I32, B, B, json!(-1), vec![0xFFFF, 0xFFFF]),
            (I32, L, B, json!(-65536), vec![0x0000, 0xFFFF]),
            (
                U64,
                B,
                B,
                json!(0x0102_0304_0506_0708u64),
                vec![0x0102, 0x0304, 0x0506, 0x0708],
            ),
            (
                U64,
                L,
                B,
                json!(u64::MAX - 1),
                vec![0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
            ),
            (I64, B, B, json!(i64::MIN), vec![0x8000, 0, 0, 0]),
            (F32, B, B, json!(1.5), vec![0x3FC0, 0x0000]),
            (F32, L, B, json!(1.5), vec![0x0000, 0x3FC0]),
            (F32, B, L, json!(-2.0), vec![0x00C0, 0x0000]),
            (F64, B, B, json!(1.0), vec![0x3FF0, 0, 0, 0]),
            (F64, L, L, json!(1.0), vec![0, 0, 0, 0xF03F]),
            (Bool, B, B, json!(true), vec![1]),
            (Bool, B, B, json!(false), vec![0]),
        ];
        for (ty, w, b, value, regs) in cases {
            let l = layout(ty, w, b);
            assert_eq!(
                encode(&l, &value).unwrap(),
                regs,
                "{ty:?} {w:?} {b:?} encode {value}"
            );
            assert_eq!(
                decode(&l, &regs),
                value,
                "{ty:?} {w:?} {b:?} decode {regs:?}"
            );
        }
    }

    #[test]
    fn strings_pad_with_nul_and_honour_byte_order() {
        let mut l = Layout::new(DataType::String);
        l.length = 3;
        assert_eq!(
            encode(&l, &json!("ABC")).unwrap(),
            vec![0x4142, 0x4300, 0x0000]
        );
        assert_eq!(decode(&l, &[0x4142, 0x4300, 0x0000]), json!("ABC"));
        l.byte_order = Order::Little;
        assert_eq!(
            encode(&l, &json!("ABC")).unwrap(),
            vec![0x4241, 0x0043, 0x0000]
        );
        assert_eq!(decode(&l, &[0x4241, 0x0043, 0x0000]), json!("ABC"));
        assert_eq!(
            encode(&l, &json!("ABCDEFG")),
            Err(ValueError::TooLong { len: 7, max: 6 })
        );
        assert_eq!(encode(&l, &json!("A\r\n")), Err(ValueError::NotAscii));
    }

    #[test]
    fn bits_read_from_registers_and_refuse_writes() {
        let mut l = Layout::new(DataType::Bit);
        l.bit = 3;
        assert_eq!(decode(&l, &[0b1000]), json!(true));
        assert_eq!(decode(&l, &[0b0111]), json!(false));
        assert_eq!(encode(&l, &json!(true)), Err(ValueError::ReadOnly("bit")));
    }

    #[test]
    fn scale_and_offset_apply_both_ways_without_float_noise() {
        let mut l = Layout::new(DataType::I16);
        l.scale = 0.1;
        l.offset = -40.0;
        assert_eq!(decode(&l, &[523]), json!(12.3));
        assert_eq!(encode(&l, &json!(12.3)).unwrap(), vec![523]);
        l.decimals = Some(0);
        assert_eq!(decode(&l, &[523]), json!(12.0));
    }

    #[test]
    fn range_and_fit_errors_name_the_problem() {
        let mut l = Layout::new(DataType::U16);
        l.min = Some(0.0);
        l.max = Some(100.0);
        assert!(matches!(
            encode(&l, &json!(101)),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(&l, &json!(-1)),
            Err(ValueError::OutOfRange { .. })
        ));
        let plain = Layout::new(DataType::U16);
        assert!(matches!(
            encode(&plain, &json!(65536)),
            Err(ValueError::DoesNotFit { .. })
        ));
        assert!(matches!(
            encode(&plain, &json!(-1)),
            Err(ValueError::DoesNotFit { .. })
        ));
        assert_eq!(
            encode(&plain, &json!("1")),
            Err(ValueError::WrongType("a number"))
        );
        assert_eq!(
            encode(&plain, &json!(null)),
            Err(ValueError::WrongType("a number"))
        );
        let f32l = Layout::new(DataType::F32);
        assert!(matches!(
            encode(&f32l, &json!(1e300)),
            Err(ValueError::DoesNotFit { .. })
        ));
        let i64l = Layout::new(DataType::I64);
        assert!(matches!(
            encode(&i64l, &json!(1e300)),
            Err(ValueError::DoesNotFit { .. })
        ));
        assert!(matches!(
            encode(&Layout::new(DataType::U64), &json!(-5)),
            Err(ValueError::DoesNotFit { .. })
        ));
    }

    #[test]
    fn f64_writes_never_put_an_infinity_in_registers() {
        // (1e300 - 0) / 1e-10 overflows to +inf.
        let mut tiny_scale = Layout::new(DataType::F64);
        tiny_scale.scale = 1e-10;
        assert_eq!(
            encode(&tiny_scale, &json!(1e300)),
            Err(ValueError::DoesNotFit {
                value: "1e+300".to_owned(),
                data_type: "f64",
                raw: "inf".to_owned(),
            })
        );
        // (-1.7e308 - 1.7e308) / 1 overflows to -inf.
        let mut far_offset = Layout::new(DataType::F64);
        far_offset.offset = 1.7e308;
        assert!(matches!(
            encode(&far_offset, &json!(-1.7e308)),
            Err(ValueError::DoesNotFit { .. })
        ));
        // Large but finite values still go through, scaled.
        let mut half = Layout::new(DataType::F64);
        half.scale = 0.5;
        assert_eq!(
            encode(&half, &json!(1e300)).unwrap(),
            encode(&Layout::new(DataType::F64), &json!(2e300)).unwrap()
        );
        assert!(encode(&Layout::new(DataType::F64), &json!(1.7e308)).is_ok());
    }

    #[test]
    fn nan_registers_decode_to_null() {
        let l = Layout::new(DataType::F32);
        assert_eq!(decode(&l, &[0x7FC0, 0]), Value::Null);
    }
}
