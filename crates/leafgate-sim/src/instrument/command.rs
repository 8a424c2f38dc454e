//! The bench power supply's command set and state. Pure: one line in, one reply out.
//!
//! Commands are case-insensitive, one per line:
//!
//! | command | reply |
//! |---|---|
//! | `*IDN?` | `LEAFGATE,PSU-1,0001,1.0` |
//! | `*RST` | `OK`, back to the power-on state |
//! | `VOLT 12.5` (0 to 30 V) | `OK`; `ERR bad value`, `ERR out of range` |
//! | `VOLT?` | `VOLT 12.500` (the set point) |
//! | `CURR 0.25` (0 to 5 A, the current limit) | `OK`, or an error as for `VOLT` |
//! | `CURR?` | `CURR 0.250` |
//! | `OUTP ON`, `OUTP OFF` (also `1`, `0`) | `OK` |
//! | `OUTP?` | `OUTP ON` or `OUTP OFF` |
//! | `MEAS?` | `VOLT 12.500 CURR 0.250`: the set points while the output is on, zeros while off |
//! | anything else | `ERR unknown command` |

/// What `*IDN?` answers.
pub const IDN: &str = "LEAFGATE,PSU-1,0001,1.0";

/// Highest voltage set point, in millivolts.
pub const MAX_MILLIVOLTS: u32 = 30_000;
/// Highest current limit, in milliamps.
pub const MAX_MILLIAMPS: u32 = 5_000;

/// The supply's settings, in integer milli-units so that what was set reads back exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Voltage set point.
    pub millivolts: u32,
    /// Current limit.
    pub milliamps: u32,
    /// Whether the output is switched on.
    pub output: bool,
}

impl Default for State {
    /// The power-on state: 12.500 V, 0.250 A, output off.
    fn default() -> Self {
        Self {
            millivolts: 12_500,
            milliamps: 250,
            output: false,
        }
    }
}

fn milli(value: u32) -> String {
    format!("{}.{:03}", value / 1000, value % 1000)
}

fn parse_milli(text: &str, max: u32) -> Result<u32, &'static str> {
    let value: f64 = text.parse().map_err(|_| "ERR bad value")?;
    if !value.is_finite() {
        return Err("ERR bad value");
    }
    let scaled = (value * 1000.0).round();
    if !(0.0..=f64::from(max)).contains(&scaled) {
        return Err("ERR out of range");
    }
    // In range 0..=max (a u32), so the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(scaled as u32)
}

/// Executes one command line (without its terminator) and returns the reply line.
pub(crate) fn execute(state: &mut State, line: &str) -> String {
    let mut words = line.split_whitespace();
    let head = words.next().unwrap_or_default().to_ascii_uppercase();
    let arg = words.next();
    if words.next().is_some() {
        return "ERR unknown command".into();
    }
    let set = |result: Result<u32, &'static str>, field: &mut u32| match result {
        Ok(value) => {
            *field = value;
            "OK".to_string()
        }
        Err(e) => e.to_string(),
    };
    match (head.as_str(), arg.map(str::to_ascii_uppercase).as_deref()) {
        ("*IDN?", None) => IDN.into(),
        ("*RST", None) => {
            *state = State::default();
            "OK".into()
        }
        ("VOLT?", None) => format!("VOLT {}", milli(state.millivolts)),
        ("CURR?", None) => format!("CURR {}", milli(state.milliamps)),
        ("OUTP?", None) => format!("OUTP {}", if state.output { "ON" } else { "OFF" }),
        ("MEAS?", None) => {
            let (mv, ma) = if state.output {
                (state.millivolts, state.milliamps)
            } else {
                (0, 0)
            };
            format!("VOLT {} CURR {}", milli(mv), milli(ma))
        }
        ("VOLT", Some(value)) => set(parse_milli(value, MAX_MILLIVOLTS), &mut state.millivolts),
        ("CURR", Some(value)) => set(parse_milli(value, MAX_MILLIAMPS), &mut state.milliamps),
        ("OUTP", Some("ON" | "1")) => {
            state.output = true;
            "OK".into()
        }
        ("OUTP", Some("OFF" | "0")) => {
            state.output = false;
            "OK".into()
        }
        _ => "ERR unknown command".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_in_order_give_these_replies() {
        let mut state = State::default();
        let script = [
            ("*IDN?", "LEAFGATE,PSU-1,0001,1.0"),
            ("VOLT?", "VOLT 12.500"),
            ("MEAS?", "VOLT 0.000 CURR 0.000"),
            ("volt 5", "OK"),
            ("VOLT?", "VOLT 5.000"),
            ("VOLT 12.500", "OK"),
            ("CURR 1.2345", "OK"),
            ("CURR?", "CURR 1.235"),
            ("CURR 0.250", "OK"),
            ("OUTP ON", "OK"),
            ("OUTP?", "OUTP ON"),
            ("MEAS?", "VOLT 12.500 CURR 0.250"),
            ("VOLT 30.0004", "OK"),
            ("VOLT 31", "ERR out of range"),
            ("VOLT -1", "ERR out of range"),
            ("VOLT abc", "ERR bad value"),
            ("VOLT NaN", "ERR bad value"),
            ("VOLT", "ERR unknown command"),
            ("VOLT? 3", "ERR unknown command"),
            ("OUTP MAYBE", "ERR unknown command"),
            ("FOO", "ERR unknown command"),
            ("OUTP 0", "OK"),
            ("*RST", "OK"),
            ("VOLT?", "VOLT 12.500"),
        ];
        for (command, reply) in script {
            assert_eq!(execute(&mut state, command), reply, "{command}");
        }
    }
}
