//! What the method tests share: compiling a method from a TOML snippet, and the two sample
//! methods (a Modbus write-then-read and a serial instrument) that compile, prepare and reply are
//! each tested against.

use super::{Method, Problem};
use crate::bus::{BusKind, Op};
use crate::mapping::schema::MethodConfig;

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
pub(super) fn method(bus: BusKind, toml: &str) -> Result<Method, Vec<Problem>> {
    let cfg: Snippet = crate::mapping::testing::from_toml(toml);
    Method::compile(&cfg.device[0].method[0], bus, "m")
}

pub(super) const SET_SPEED: &str = r#"
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

pub(super) const PSU: &str = r#"
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

/// One step on `table` at `address` with `fields` (TOML inline tables), on a Modbus TCP bus.
pub(super) fn step(
    op: &str,
    table: &str,
    address: u32,
    fields: &str,
) -> Result<Method, Vec<Problem>> {
    method(
        BusKind::ModbusTcp,
        &format!(
            "[[device]]\nid = \"d\"\nbus = \"b\"\n[[device.method]]\nname = \"m\"\n\
             [[device.method.step]]\nop = \"{op}\"\ntable = \"{table}\"\naddress = {address}\n\
             fields = [{fields}]\n"
        ),
    )
}

pub(super) fn read_op(m: &Method) -> Op {
    m.prepare(1, &serde_json::json!({})).unwrap().remove(0)
}
