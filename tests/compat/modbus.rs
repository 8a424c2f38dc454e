//! leafgate against pymodbus as the hardware: a Modbus TCP server, and a Modbus RTU server with
//! two unit ids on one pty line. Values are put into (and read back from) pymodbus's datastore
//! by the Python peer, typed values laid out by pymodbus's own `convert_to_registers`, so every
//! data type, word and byte order, bit table, write and exception is checked against code that
//! shares nothing with leafgate's `mapping` and `bus` modules (`modbus_peer.py` says how the
//! datastore is laid out and which regions refuse).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::peer::{Peer, Venv};
use crate::gateway::{Rig, device};

/// Each typed block: one field of every type, 24 registers.
const TYPES: [(&str, u16); 9] = [
    ("u16", 1),
    ("i16", 1),
    ("u32", 2),
    ("i32", 2),
    ("u64", 4),
    ("i64", 4),
    ("f32", 2),
    ("f64", 4),
    ("string", 4),
];
const BLOCK: u16 = 24;
/// (word_order, byte_order) of the four blocks.
const ORDERS: [(&str, &str); 4] = [
    ("big", "big"),
    ("little", "big"),
    ("big", "little"),
    ("little", "little"),
];
/// Where leafgate reads the values pymodbus was given, and where it writes its own.
const READ_BASE: u16 = 0;
const WRITE_BASE: u16 = 100;

/// A first set of values (edge-ish, all exact in their type) and a second one for writes.
fn value(ty: &str, second: bool) -> Value {
    match (ty, second) {
        ("u16", false) => json!(48_879),
        ("i16", false) => json!(-12_345),
        ("u32", false) => json!(3_000_000_000_u64),
        ("i32", false) => json!(-2_000_000_000),
        ("u64", false) => json!(12_345_678_901_234_567_890_u64),
        ("i64", false) => json!(-1_234_567_890_123_456_789_i64),
        ("f32", false) => json!(-1234.5),
        ("f64", false) => json!(std::f64::consts::PI),
        ("string", false) => json!("PUMP-7"),
        ("u16", true) => json!(4660),
        ("i16", true) => json!(-2),
        ("u32", true) => json!(123_456_789),
        ("i32", true) => json!(-123_456_789),
        ("u64", true) => json!(u64::MAX),
        ("i64", true) => json!(i64::MIN),
        ("f32", true) => json!(0.15625),
        ("f64", true) => json!(-2.5e-300),
        ("string", true) => json!("AB12cd"),
        _ => unreachable!("{ty}"),
    }
}

struct Field {
    name: String,
    ty: &'static str,
    address: u16,
    word: &'static str,
    byte: &'static str,
}

/// The four order blocks starting at `base`.
fn fields(base: u16) -> Vec<Vec<Field>> {
    ORDERS
        .iter()
        .enumerate()
        .map(|(block, (word, byte))| {
            let mut address = base + BLOCK * u16::try_from(block).unwrap();
            TYPES
                .iter()
                .map(|(ty, width)| {
                    let field = Field {
                        name: format!("{word}_{byte}_{ty}"),
                        ty,
                        address,
                        word,
                        byte,
                    };
                    address += width;
                    field
                })
                .collect()
        })
        .collect()
}

fn field_toml(field: &Field) -> String {
    if field.ty == "string" {
        format!(
            "{{ name = \"{}\", type = \"string\", length = 4, byte_order = \"{}\" }}",
            field.name, field.byte
        )
    } else {
        format!(
            "{{ name = \"{}\", type = \"{}\", word_order = \"{}\", byte_order = \"{}\" }}",
            field.name, field.ty, field.word, field.byte
        )
    }
}

fn step(op: &str, table: &str, address: u16, fields: &[String]) -> String {
    format!(
        "[[METHOD.step]]\nop = \"{op}\"\ntable = \"{table}\"\naddress = {address}\nfields = [\n  {},\n]\n",
        fields.join(",\n  ")
    )
}

/// Every method of the devices under test, for `[[device.method]]` or `[[profile.method]]`
/// (`table` is `device` or `profile`).
fn methods(table: &str) -> String {
    let mut out = String::new();
    let mut method = |name: &str, steps: Vec<String>| {
        writeln!(out, "[[METHOD]]\nname = \"{name}\"").unwrap();
        for s in steps {
            out.push_str(&s);
        }
    };
    let typed = |base| -> Vec<(u16, Vec<String>)> {
        fields(base)
            .iter()
            .map(|block| (block[0].address, block.iter().map(field_toml).collect()))
            .collect()
    };
    method(
        "getTyped",
        typed(READ_BASE)
            .iter()
            .map(|(a, f)| step("read", "holding", *a, f))
            .collect(),
    );
    let writes = typed(WRITE_BASE);
    method(
        "setTyped",
        writes
            .iter()
            .map(|(a, f)| step("write", "holding", *a, f))
            .chain(writes.iter().map(|(a, f)| step("read", "holding", *a, f)))
            .collect(),
    );
    method(
        "getMisc",
        vec![step(
            "read",
            "holding",
            96,
            &[
                r#"{ name = "temp", type = "i16", scale = 0.1 }"#.to_owned(),
                r#"{ name = "flag", type = "bool" }"#.to_owned(),
                r#"{ name = "b0", type = "bit", address = 98, bit = 0 }"#.to_owned(),
                r#"{ name = "b1", type = "bit", address = 98, bit = 1 }"#.to_owned(),
                r#"{ name = "b15", type = "bit", address = 98, bit = 15 }"#.to_owned(),
            ],
        )],
    );
    method(
        "getInputs",
        vec![step(
            "read",
            "input",
            10,
            &[
                r#"{ name = "count", type = "u32", word_order = "little" }"#.to_owned(),
                r#"{ name = "level", type = "f32" }"#.to_owned(),
            ],
        )],
    );
    let bits = |prefix: &str| -> Vec<String> {
        (0..10)
            .map(|i| format!("{{ name = \"{prefix}{i}\" }}"))
            .collect()
    };
    method("getCoils", vec![step("read", "coil", 0, &bits("c"))]);
    method("getDiscrete", vec![step("read", "discrete", 0, &bits("d"))]);
    let one_coil = [r#"{ name = "on" }"#.to_owned()];
    method(
        "setCoil",
        vec![
            step("write", "coil", 20, &one_coil),
            step("read", "coil", 20, &one_coil),
        ],
    );
    method(
        "setCoils",
        vec![
            step("write", "coil", 30, &bits("k")),
            step("read", "coil", 30, &bits("k")),
        ],
    );
    let one_reg = [r#"{ name = "v", type = "u16" }"#.to_owned()];
    method(
        "setReg",
        vec![
            step("write", "holding", 250, &one_reg),
            step("read", "holding", 250, &one_reg),
        ],
    );
    out.replace("METHOD", &format!("{table}.method"))
}

/// A pymodbus peer and a running gateway whose devices talk to it.
struct Bench {
    peer: Peer,
    rig: Rig,
    server: &'static str,
}

impl Bench {
    async fn set_typed(&mut self, unit: u8, base: u16, second: bool) {
        for block in fields(base) {
            for field in block {
                self.peer
                    .call(
                        "set_typed",
                        self.typed_args(unit, &field, Some(value(field.ty, second))),
                    )
                    .await;
            }
        }
    }

    fn typed_args(&self, unit: u8, field: &Field, value: Option<Value>) -> Value {
        json!({
            "server": self.server,
            "unit": unit,
            "address": field.address,
            "type": field.ty,
            "word_order": field.word,
            "byte_order": field.byte,
            "length": 4,
            "value": value,
        })
    }

    /// What pymodbus decodes from its datastore for every typed field at `base`.
    async fn datastore_typed(&mut self, unit: u8, base: u16) -> Value {
        let mut out = serde_json::Map::new();
        for block in fields(base) {
            for field in block {
                let got = self
                    .peer
                    .call("get_typed", self.typed_args(unit, &field, None))
                    .await;
                out.insert(field.name.clone(), got["value"].clone());
            }
        }
        Value::Object(out)
    }

    async fn set(&mut self, unit: u8, table: &str, address: u16, values: Value) {
        let args = json!({"server": self.server, "unit": unit, "table": table, "address": address, "values": values});
        self.peer.call("set", args).await;
    }

    async fn get(&mut self, unit: u8, table: &str, address: u16, count: u16) -> Value {
        let args = json!({"server": self.server, "unit": unit, "table": table, "address": address, "count": count});
        self.peer.call("get", args).await["values"].clone()
    }
}

/// Every typed field at `base` with the first or second set of values.
fn expected_typed(base: u16, second: bool) -> Value {
    let mut out = serde_json::Map::new();
    for block in fields(base) {
        for field in block {
            out.insert(field.name, value(field.ty, second));
        }
    }
    Value::Object(out)
}

async fn tcp_bench() -> Bench {
    let mut peer = Peer::start(Venv::Modbus, "modbus_peer.py", &[]).await;
    let port = peer.call("start_tcp", json!({"units": [1]})).await["port"].clone();
    let rest = format!(
        "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:{port}\"\ntimeout_ms = 1000\n\n{}{}",
        device("mb-tcp", "plc", "unit = 1\nraw_methods = true"),
        methods("device"),
    );
    let rig = Rig::start(&["mb-tcp"], "", &rest).await;
    Bench {
        peer,
        rig,
        server: "tcp",
    }
}

#[tokio::test]
async fn every_type_and_order_leafgate_reads_matches_the_pymodbus_datastore() {
    let mut bench = tcp_bench().await;
    bench.set_typed(1, READ_BASE, false).await;
    let (status, body) = bench.rig.call("mb-tcp", "getTyped", json!({})).await;
    assert_eq!((status, body), (200, expected_typed(READ_BASE, false)));

    // Scale, bool and bits of a register; FC 04 with a little-endian-word u32 and an f32.
    bench
        .set(1, "holding", 96, json!([0xFF85, 2, 0x8001]))
        .await; // -123, 2, bits 0 and 15
    let (status, body) = bench.rig.call("mb-tcp", "getMisc", json!({})).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"temp": -12.3, "flag": true, "b0": true, "b1": false, "b15": true})
        )
    );
    for (address, ty, word, value) in [
        (10, "u32", "little", json!(4_000_000_001_u64)),
        (12, "f32", "big", json!(-0.5)),
    ] {
        let args = json!({"server": "tcp", "unit": 1, "table": "input", "address": address, "type": ty, "word_order": word, "byte_order": "big", "value": value});
        bench.peer.call("set_typed", args).await;
    }
    let (status, body) = bench.rig.call("mb-tcp", "getInputs", json!({})).await;
    assert_eq!(
        (status, body),
        (200, json!({"count": 4_000_000_001_u64, "level": -0.5}))
    );
}

#[tokio::test]
async fn leafgates_writes_land_in_the_pymodbus_datastore_and_read_back() {
    let mut bench = tcp_bench().await;
    // FC 16 per order block, then the read-back in the same unit of work.
    let written = expected_typed(WRITE_BASE, true);
    let (status, body) = bench.rig.call("mb-tcp", "setTyped", written.clone()).await;
    assert_eq!((status, &body), (200, &written));
    assert_eq!(bench.datastore_typed(1, WRITE_BASE).await, written);

    // FC 06: one register.
    let (status, body) = bench
        .rig
        .call("mb-tcp", "setReg", json!({"v": 65535}))
        .await;
    assert_eq!((status, body), (200, json!({"v": 65535})));
    assert_eq!(bench.get(1, "holding", 250, 1).await, json!([65535]));

    // FC 05 then FC 01: one coil, on and off again.
    for on in [true, false] {
        let (status, body) = bench.rig.call("mb-tcp", "setCoil", json!({"on": on})).await;
        assert_eq!((status, body), (200, json!({"on": on})));
        assert_eq!(bench.get(1, "coil", 20, 1).await, json!([on]));
    }
    // FC 15: ten coils.
    let pattern: Vec<bool> = (0..10).map(|i| i % 3 == 0).collect();
    let payload: serde_json::Map<String, Value> = pattern
        .iter()
        .enumerate()
        .map(|(i, on)| (format!("k{i}"), json!(on)))
        .collect();
    let (status, body) = bench
        .rig
        .call("mb-tcp", "setCoils", Value::Object(payload.clone()))
        .await;
    assert_eq!((status, body), (200, Value::Object(payload)));
    assert_eq!(bench.get(1, "coil", 30, 10).await, json!(pattern));
    // Raw FC 16 write of registers pymodbus then holds.
    let (status, _) = bench
        .rig
        .call(
            "mb-tcp",
            "modbus.write",
            json!({"table": "holding", "address": 260, "values": [1, 2, 65535]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(bench.get(1, "holding", 260, 3).await, json!([1, 2, 65535]));
}

#[tokio::test]
async fn coils_and_discrete_inputs_match_the_pymodbus_datastore() {
    let mut bench = tcp_bench().await;
    let coils: Vec<bool> = (0..10).map(|i| [0, 3, 4, 9].contains(&i)).collect();
    let inputs: Vec<bool> = (0..10).map(|i| i % 2 == 1).collect();
    bench.set(1, "coil", 0, json!(coils)).await;
    bench.set(1, "discrete", 0, json!(inputs)).await;
    let as_object = |prefix: &str, bits: &[bool]| -> Value {
        Value::Object(
            bits.iter()
                .enumerate()
                .map(|(i, b)| (format!("{prefix}{i}"), json!(b)))
                .collect(),
        )
    };
    let (status, body) = bench.rig.call("mb-tcp", "getCoils", json!({})).await;
    assert_eq!((status, body), (200, as_object("c", &coils)));
    let (status, body) = bench.rig.call("mb-tcp", "getDiscrete", json!({})).await;
    assert_eq!((status, body), (200, as_object("d", &inputs)));
    // Raw reads: bits across a byte boundary, and input registers.
    bench
        .set(
            1,
            "discrete",
            100,
            json!([true, false, true, true, false, false, false, false, true]),
        )
        .await;
    let (status, body) = bench
        .rig
        .call(
            "mb-tcp",
            "modbus.read",
            json!({"table": "discrete", "address": 100, "count": 9}),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"values": [true, false, true, true, false, false, false, false, true]})
        )
    );
    bench.set(1, "input", 200, json!([7, 65535, 0, 4660])).await;
    let (status, body) = bench
        .rig
        .call(
            "mb-tcp",
            "modbus.read",
            json!({"table": "input", "address": 200, "count": 4}),
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"values": [7, 65535, 0, 4660]}))
    );
}

fn exception(code: u8, name: &str) -> (u16, Value) {
    (
        422,
        json!({"error": "device_exception", "code": code, "name": name}),
    )
}

#[tokio::test]
async fn pymodbus_exception_replies_reach_the_caller_as_422() {
    let mut bench = tcp_bench().await;
    let rig = &bench.rig;
    let read = |table: &str, address: u16| json!({"table": table, "address": address, "count": 2});
    // Illegal data address: outside the datastore, registers and bits.
    assert_eq!(
        rig.call("mb-tcp", "modbus.read", read("holding", 300))
            .await,
        exception(2, "illegal data address")
    );
    assert_eq!(
        rig.call("mb-tcp", "modbus.read", read("coil", 320)).await,
        exception(2, "illegal data address")
    );
    assert_eq!(
        rig.call(
            "mb-tcp",
            "modbus.write",
            json!({"table": "holding", "address": 300, "values": [1, 2]})
        )
        .await,
        exception(2, "illegal data address")
    );
    // Illegal data value: the device refuses the value (FC 06), and nothing is stored.
    let write = |v: u16| json!({"table": "holding", "address": 281, "values": [v]});
    assert_eq!(
        rig.call("mb-tcp", "modbus.write", write(5000)).await,
        exception(3, "illegal data value")
    );
    // Slave (server) device failure.
    assert_eq!(
        rig.call("mb-tcp", "modbus.read", read("holding", 290))
            .await,
        exception(4, "server device failure")
    );
    // The connection is still good: an accepted value, and a normal read.
    assert_eq!(rig.call("mb-tcp", "modbus.write", write(500)).await.0, 200);
    assert_eq!(rig.call("mb-tcp", "getTyped", json!({})).await.0, 200);
    assert_eq!(bench.get(1, "holding", 281, 1).await, json!([500]));
}

#[tokio::test]
async fn two_pymodbus_units_share_one_rtu_line() {
    let mut peer = Peer::start(Venv::Modbus, "modbus_peer.py", &[]).await;
    let path = peer
        .call("start_rtu", json!({"units": [1, 2], "baud": 115_200}))
        .await["path"]
        .clone();
    let rest = format!(
        "[[bus]]\nid = \"line\"\nkind = \"modbus_rtu\"\npath = {path}\nbaud_rate = 115200\ntimeout_ms = 1000\n\n[[profile]]\nid = \"meter\"\n{}\n{}{}",
        methods("profile"),
        device(
            "mb-rtu-1",
            "line",
            "unit = 1\nprofile = \"meter\"\nraw_methods = true"
        ),
        device(
            "mb-rtu-2",
            "line",
            "unit = 2\nprofile = \"meter\"\nraw_methods = true"
        ),
    );
    let rig = Rig::start(&["mb-rtu-1", "mb-rtu-2"], "", &rest).await;
    let mut bench = Bench {
        peer,
        rig,
        server: "rtu",
    };
    // Different values in each unit: each device sees only its own.
    bench.set_typed(1, READ_BASE, false).await;
    bench.set_typed(2, READ_BASE, true).await;
    let rig = &bench.rig;
    let (one, two) = tokio::join!(
        rig.call("mb-rtu-1", "getTyped", json!({})),
        rig.call("mb-rtu-2", "getTyped", json!({})),
    );
    assert_eq!(one, (200, expected_typed(READ_BASE, false)));
    assert_eq!(two, (200, expected_typed(READ_BASE, true)));

    // A write to unit 2 lands in unit 2 only.
    let written = expected_typed(WRITE_BASE, true);
    let (status, body) = rig.call("mb-rtu-2", "setTyped", written.clone()).await;
    assert_eq!((status, &body), (200, &written));
    let (status, _) = rig.call("mb-rtu-1", "setCoil", json!({"on": true})).await;
    assert_eq!(status, 200);
    assert_eq!(bench.datastore_typed(2, WRITE_BASE).await, written);
    assert_eq!(
        bench.get(1, "holding", WRITE_BASE, 96).await,
        json!(vec![0; 96])
    );
    assert_eq!(
        (
            bench.get(1, "coil", 20, 1).await,
            bench.get(2, "coil", 20, 1).await
        ),
        (json!([true]), json!([false]))
    );

    // Exceptions from either unit; the line keeps working for both.
    let rig = &bench.rig;
    let (one, two) = tokio::join!(
        rig.call(
            "mb-rtu-1",
            "modbus.read",
            json!({"table": "input", "address": 400, "count": 1})
        ),
        rig.call(
            "mb-rtu-2",
            "modbus.read",
            json!({"table": "holding", "address": 295, "count": 1})
        ),
    );
    assert_eq!(one, exception(2, "illegal data address"));
    assert_eq!(two, exception(4, "server device failure"));
    assert_eq!(
        rig.call(
            "mb-rtu-2",
            "modbus.write",
            json!({"table": "holding", "address": 285, "values": [1001]})
        )
        .await,
        exception(3, "illegal data value")
    );
    let (one, two) = tokio::join!(
        rig.call("mb-rtu-1", "getTyped", json!({})),
        rig.call("mb-rtu-2", "getTyped", json!({})),
    );
    assert_eq!((one.0, two.0), (200, 200));
}
