//! Method payloads from the cloud, against a method using every data type, and raw methods.
#![no_main]

use std::sync::OnceLock;

use leafgate::config::schema::BusKind;
use leafgate::mapping::{Method, raw};
use libfuzzer_sys::fuzz_target;

const METHOD: &str = r#"
[[device]]
id = "d"
bus = "b"
[[device.method]]
name = "m"
[[device.method.step]]
op = "write"
table = "holding"
address = 0
fields = [
  { name = "a", type = "u16" }, { name = "b", type = "i16", scale = 0.1 },
  { name = "c", type = "u32", word_order = "little" }, { name = "d", type = "i32", byte_order = "little" },
  { name = "e", type = "u64", default = 1 }, { name = "f", type = "i64", min = -5, max = 5, default = 0 },
  { name = "g", type = "f32", offset = 3.5, default = 0 }, { name = "h", type = "f64", default = 0 },
  { name = "i", type = "bool", default = false }, { name = "j", type = "string", length = 4, default = "" },
]
[[device.method.step]]
op = "read"
table = "holding"
address = 0
fields = [{ name = "r", type = "f64" }, { name = "s", type = "bit", address = 4, bit = 7 }, { name = "t", type = "string", address = 5, length = 3 }]
"#;

fn method() -> Option<&'static Method> {
    static M: OnceLock<Option<Method>> = OnceLock::new();
    M.get_or_init(|| {
        let cfg = leafgate::config::load::parse(METHOD).ok()?;
        Method::compile(cfg.device.first()?.method.first()?, BusKind::ModbusTcp, "m").ok()
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Some(m) = method() {
        if let Ok(ops) = m.prepare(1, &payload) {
            assert_eq!(ops.len(), 2);
        }
        // Any register image decodes without panicking.
        let regs: Vec<u16> = data.chunks(2).map(|c| u16::from(c[0]) << 8 | u16::from(*c.get(1).unwrap_or(&0))).collect();
        let _ = m.reply(&[leafgate::bus::Output::Written, leafgate::bus::Output::Registers(regs)]);
    }
    for name in [raw::MODBUS_READ, raw::MODBUS_WRITE, raw::SERIAL_SEND] {
        let _ = raw::prepare(name, BusKind::ModbusTcp, 1, &payload);
        let _ = raw::prepare(name, BusKind::Serial, 0, &payload);
    }
});
