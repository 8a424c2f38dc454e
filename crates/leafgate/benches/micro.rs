//! Micro-benchmarks of the per-method hot path: SAS tokens, topic parsing and formatting,
//! payload → registers, registers → JSON. Run with `cargo bench --bench micro`.

// A benchmark is test code: a bad fixture should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use leafgate::bus::Output;
use leafgate::config::schema::{BusKind, DataType, FileConfig, Order};
use leafgate::hub::{sas, topics};
use leafgate::mapping::Method;
use leafgate::mapping::value::{self, Layout};
use serde_json::json;

fn method(toml: &str) -> Method {
    let cfg: FileConfig = leafgate::config::load::parse(toml).unwrap_or_else(|e| panic!("{e}"));
    Method::compile(&cfg.device[0].method[0], BusKind::ModbusTcp, "m")
        .unwrap_or_else(|e| panic!("{e:?}"))
}

fn bench(c: &mut Criterion) {
    let key = sas::Key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        .unwrap_or_else(|e| panic!("{e}"));
    let resource = sas::device_resource("myhub.azure-devices.net", "pump-0042");
    c.bench_function("sas_token", |b| {
        b.iter(|| sas::token(black_box(&resource), &key, black_box(1_767_225_600), None))
    });

    let topic = "$iothub/methods/POST/getReadings/?$rid=4711";
    c.bench_function("topic_parse", |b| {
        b.iter(|| topics::parse_request(black_box(topic)))
    });
    c.bench_function("topic_format", |b| {
        b.iter(|| topics::response(black_box(200), black_box("4711")))
    });

    let mut group = c.benchmark_group("value");
    for ty in [
        DataType::U16,
        DataType::I32,
        DataType::F32,
        DataType::F64,
        DataType::U64,
    ] {
        let mut layout = Layout::new(ty);
        layout.word_order = Order::Little;
        let v = json!(1234);
        let regs = value::encode(&layout, &v).unwrap_or_else(|e| panic!("{e}"));
        group.bench_function(format!("encode_{}", ty.name()), |b| {
            b.iter(|| value::encode(black_box(&layout), black_box(&v)))
        });
        group.bench_function(format!("decode_{}", ty.name()), |b| {
            b.iter(|| value::decode(black_box(&layout), black_box(&regs)))
        });
        layout.scale = 0.1;
        group.bench_function(format!("decode_scaled_{}", ty.name()), |b| {
            b.iter(|| value::decode(black_box(&layout), black_box(&regs)))
        });
    }
    group.finish();

    // The issue's reference method: read 10 holding registers, decode typed fields to JSON.
    let read10 = method(
        r#"
        [[device]]
        id = "d"
        bus = "b"
        [[device.method]]
        name = "read10"
        [[device.method.step]]
        op = "read"
        table = "holding"
        address = 0
        fields = [
          { name = "a", type = "f32" }, { name = "b", type = "f32", word_order = "little" },
          { name = "c", type = "u32", scale = 0.01 }, { name = "d", type = "i16" },
          { name = "e", type = "u16" }, { name = "f", type = "bit", address = 9, bit = 3 },
        ]
    "#,
    );
    let outputs = vec![Output::Registers(vec![
        0x41C8, 0, 0, 0x41C8, 0x0001, 0x86A0, 0xFF9C, 7, 0, 0b1000,
    ])];
    c.bench_function("method_read10_prepare", |b| {
        b.iter(|| read10.prepare(black_box(1), black_box(&serde_json::Value::Null)))
    });
    c.bench_function("method_read10_reply", |b| {
        b.iter(|| read10.reply(black_box(&outputs)))
    });
    c.bench_function("method_read10_reply_to_bytes", |b| {
        b.iter(|| {
            read10
                .reply(black_box(&outputs))
                .map(|v| serde_json::to_vec(&v))
        })
    });

    let write = method(
        r#"
        [[device]]
        id = "d"
        bus = "b"
        [[device.method]]
        name = "setSpeed"
        [[device.method.step]]
        op = "write"
        table = "holding"
        address = 100
        fields = [{ name = "speed", type = "f32", min = 0, max = 1500 }, { name = "ramp", type = "u16", default = 5 }]
    "#,
    );
    let payload = br#"{"speed": 1200.5}"#;
    c.bench_function("method_write_parse_and_prepare", |b| {
        b.iter(|| {
            let v: serde_json::Value =
                serde_json::from_slice(black_box(payload)).unwrap_or_default();
            write.prepare(1, &v)
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
