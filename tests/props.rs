//! Property tests on everything that parses outside input: topics, connection strings, SAS
//! tokens, payloads against configured methods, register values, RTU frames and config files.
//! The property is always the same: no panic, and a result that is either valid or a clear error.

use proptest::prelude::*;
use serde_json::{Value, json};

use leafgate::bus::frame;
use leafgate::bus::{Op, Output, WriteData};
use leafgate::config::schema::{BusKind, DataType, Order, Table};
use leafgate::hub::{connstr::ConnectionString, d2c, sas, topics};
use leafgate::mapping::plan;
use leafgate::mapping::value::{self, Layout};

/// Arbitrary JSON up to a few levels deep, including numbers at the edges of every type.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn data_type() -> impl Strategy<Value = DataType> {
    prop_oneof![
        Just(DataType::U16),
        Just(DataType::I16),
        Just(DataType::U32),
        Just(DataType::I32),
        Just(DataType::U64),
        Just(DataType::I64),
        Just(DataType::F32),
        Just(DataType::F64),
        Just(DataType::Bool),
        Just(DataType::Bit),
        Just(DataType::String),
    ]
}

fn order() -> impl Strategy<Value = Order> {
    prop_oneof![Just(Order::Big), Just(Order::Little)]
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        data_type(),
        order(),
        order(),
        1u16..8,
        0u8..16,
        -1e6f64..1e6,
        -1e3f64..1e3,
    )
        .prop_map(|(ty, word, byte, length, bit, scale, offset)| {
            let mut l = Layout::new(ty);
            l.word_order = word;
            l.byte_order = byte;
            l.length = length;
            l.bit = bit;
            if scale != 0.0
                && matches!(
                    ty,
                    DataType::F32 | DataType::F64 | DataType::I32 | DataType::U16
                )
            {
                l.scale = scale;
                l.offset = offset;
            }
            l
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn topics_never_panic_and_round_trip(name in "[^/]{0,20}(/[^/]{1,8}){0,2}", rid in "[A-Za-z0-9-]{1,36}", junk in ".{0,80}") {
        let _ = topics::parse_request(&junk);
        let _ = topics::parse_response(&junk);
        if !name.is_empty() && !name.contains("/?") {
            let t = topics::request(&name, &rid);
            let parsed = topics::parse_request(&t).unwrap();
            prop_assert_eq!((parsed.name, parsed.rid), (name.as_str(), rid.as_str()));
        }
    }

    #[test]
    fn connection_strings_never_panic_nor_echo_the_key(text in ".{0,120}", key in "[A-Za-z0-9+/]{8,44}={0,2}") {
        if let Err(e) = text.parse::<ConnectionString>() {
            prop_assert!(!e.to_string().is_empty());
        }
        let cs = format!("HostName=h;DeviceId=d;SharedAccessKey={key}");
        if let Err(e) = cs.parse::<ConnectionString>() {
            prop_assert!(!e.to_string().contains(&key));
        }
    }

    #[test]
    fn sas_tokens_verify_only_with_their_own_key(id in "[a-z0-9-]{1,20}", se in 1u64..4_000_000_000, k1 in any::<[u8; 32]>(), k2 in any::<[u8; 32]>(), junk in ".{0,100}") {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = sas::Key::from_base64(&b64.encode(k1)).unwrap();
        let other = sas::Key::from_base64(&b64.encode(k2)).unwrap();
        let resource = sas::device_resource("hub", &id);
        let token = sas::token(&resource, &key, se, None);
        prop_assert!(leafgate_emulator::sas::verify(&token, &key, &resource, se - 1).is_ok());
        prop_assert_eq!(leafgate_emulator::sas::verify(&token, &other, &resource, se - 1).is_err(), k1 != k2);
        let _ = leafgate_emulator::sas::verify(&junk, &key, &resource, 0);
        let _ = leafgate_emulator::sas::parse(&junk);
    }

    #[test]
    fn values_encode_to_their_width_and_decode_back(l in layout(), v in json_value()) {
        match value::encode(&l, &v) {
            Ok(regs) => {
                prop_assert_eq!(regs.len(), usize::from(l.width()));
                let back = value::decode(&l, &regs);
                // Identity layouts give back exactly what was written (integers and bools).
                if l.scale == 1.0 && l.offset == 0.0 && matches!(l.data_type, DataType::U16 | DataType::I16 | DataType::U32 | DataType::I32 | DataType::U64 | DataType::I64 | DataType::Bool) && v.is_number() == back.is_number() && v.as_f64().is_some_and(|f| f.fract() == 0.0) {
                    prop_assert_eq!(back.as_f64(), v.as_f64());
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        // Any registers decode without panicking.
        let regs = vec![0xA5A5u16; usize::from(l.width())];
        let _ = value::decode(&l, &regs);
    }

    #[test]
    fn rtu_replies_of_any_shape_are_decoded_or_refused(unit in any::<u8>(), address in any::<u16>(), count in 1u16..130, bytes in prop::collection::vec(any::<u8>(), 0..300), table in prop_oneof![Just(Table::Holding), Just(Table::Input), Just(Table::Coil), Just(Table::Discrete)]) {
        let op = Op::Read { unit, table, address, count };
        let _ = frame::decode_reply(unit, &op, &bytes);
        if bytes.len() >= 3 {
            let _ = frame::reply_len(&op, [bytes[0], bytes[1], bytes[2]]);
        }
        let write = Op::Write { unit, address, data: WriteData::Registers(vec![count; usize::from(count % 5 + 1)]) };
        let _ = frame::decode_reply(unit, &write, &bytes);
        // A well-formed reply always decodes to exactly `count` values.
        let n = if table.is_bits() { usize::from(count).div_ceil(8) } else { usize::from(count) * 2 };
        let mut good = vec![unit, op.function_code().unwrap(), u8::try_from(n).unwrap_or(0)];
        good.extend(bytes.iter().copied().chain(std::iter::repeat(0)).take(n));
        let crc = frame::crc16(&good);
        good.extend(crc.to_le_bytes());
        if n <= 255 {
            match frame::decode_reply(unit, &op, &good).unwrap() {
                Output::Registers(r) => prop_assert_eq!(r.len(), usize::from(count)),
                Output::Bits(b) => prop_assert_eq!(b.len(), usize::from(count)),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }

    #[test]
    fn configured_methods_take_any_payload_without_panicking(payload in json_value()) {
        let method = sample_method();
        match method.prepare(7, &payload) {
            Ok(ops) => prop_assert_eq!(ops.len(), 2),
            Err(e) => prop_assert!(!e.message.is_empty()),
        }
        let raw = leafgate::mapping::raw::prepare("modbus.read", BusKind::ModbusTcp, 1, &payload);
        if let Some(Ok((_, Op::Read { count, address, .. }))) = raw {
            prop_assert!((1..=2000).contains(&count));
            prop_assert!(u32::from(address) + u32::from(count) <= 65536);
        }
        let raw = leafgate::mapping::raw::prepare("modbus.write", BusKind::ModbusTcp, 1, &payload);
        if let Some(Ok((_, Op::Write { data, .. }))) = raw {
            let n = match data { WriteData::Registers(r) => r.len(), WriteData::Coils(c) => c.len() };
            prop_assert!((1..=1968).contains(&n));
        }
    }

    #[test]
    fn config_files_of_any_content_load_or_report_problems(text in "(\\[\\[?[a-z]{0,8}\\]\\]?\n|[a-z_]{1,12} = (\"[^\"\n]{0,12}\"|-?[0-9]{1,6}|true|\\[\\])\n|.{0,30}\n){0,12}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leafgate.toml");
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = leafgate::config::load(&path) {
            prop_assert!(!e.problems.is_empty());
            for p in &e.problems {
                prop_assert!(!p.to_string().is_empty());
            }
        }
    }
}

fn sample_method() -> leafgate::mapping::Method {
    let toml = r#"
        [[device]]
        id = "d"
        bus = "b"
        [[device.method]]
        name = "m"
        [[device.method.step]]
        op = "write"
        table = "holding"
        address = 10
        fields = [
          { name = "a", type = "f32", min = -100, max = 100, scale = 0.5 },
          { name = "b", type = "i64", default = 3 },
          { name = "c", type = "string", length = 2, default = "ok" },
        ]
        [[device.method.step]]
        op = "read"
        table = "coil"
        address = 0
        fields = [{ name = "x" }]
    "#;
    let cfg: leafgate::config::schema::FileConfig = leafgate::config::load::parse(toml).unwrap();
    leafgate::mapping::Method::compile(&cfg.device[0].method[0], BusKind::ModbusTcp, "m").unwrap()
}

#[test]
fn sample_method_accepts_a_good_payload() {
    assert!(sample_method().prepare(1, &json!({"a": 1.5})).is_ok());
}

fn table() -> impl Strategy<Value = Table> {
    prop_oneof![
        Just(Table::Holding),
        Just(Table::Input),
        Just(Table::Coil),
        Just(Table::Discrete),
    ]
}

/// A field somewhere in the address space, never wider than one request and never past 65535;
/// addresses cluster low half the time so merging actually happens.
fn span() -> impl Strategy<Value = plan::Span> {
    (table(), prop_oneof![0u16..300, any::<u16>()], 1u16..=125).prop_map(
        |(table, address, count)| {
            let count = count.min(plan::max_count(table));
            let address = address.min(u16::try_from(65536 - u32::from(count)).unwrap());
            plan::Span {
                table,
                address,
                count,
            }
        },
    )
}

fn end(address: u16, count: u16) -> u32 {
    u32::from(address) + u32::from(count)
}

/// What every read must be: within the protocol's limit, holding only fields of its own table
/// that it covers, no wider than its fields need, and reading across no stretch of more than
/// `max_gap` unused addresses.
fn check_read(read: &plan::Read, spans: &[plan::Span], max_gap: u16) -> Result<(), TestCaseError> {
    prop_assert!(!read.fields.is_empty());
    prop_assert!(
        read.count >= 1 && read.count <= plan::max_count(read.table),
        "{read:?}"
    );
    let mut fields: Vec<plan::Span> = read.fields.iter().map(|&i| spans[i]).collect();
    for s in &fields {
        prop_assert_eq!(s.table, read.table);
        prop_assert!(
            s.address >= read.address && end(s.address, s.count) <= end(read.address, read.count)
        );
    }
    fields.sort_by_key(|s| s.address);
    prop_assert_eq!(
        fields[0].address,
        read.address,
        "read starts before its first field"
    );
    let mut covered = end(fields[0].address, fields[0].count);
    for s in &fields[1..] {
        let gap = u32::from(s.address).saturating_sub(covered);
        prop_assert!(
            gap <= u32::from(max_gap),
            "a gap of {gap} > {max_gap} in {read:?}"
        );
        covered = covered.max(end(s.address, s.count));
    }
    prop_assert_eq!(
        covered,
        end(read.address, read.count),
        "read ends past its last field"
    );
    Ok(())
}

/// A whole plan: every read valid, and every field in exactly one read.
fn check_plan(
    reads: &[plan::Read],
    spans: &[plan::Span],
    max_gap: u16,
) -> Result<(), TestCaseError> {
    let mut seen = vec![0u32; spans.len()];
    for read in reads {
        check_read(read, spans, max_gap)?;
        for &i in &read.fields {
            seen[i] += 1;
        }
    }
    prop_assert!(
        seen.iter().all(|&n| n == 1),
        "fields not in exactly one read: {seen:?}"
    );
    Ok(())
}

proptest! {
    #[test]
    fn every_plan_covers_each_field_once_within_the_protocols_limits(
        spans in prop::collection::vec(span(), 0..60),
        max_gap in prop_oneof![Just(0u16), 0u16..20, any::<u16>()],
    ) {
        let reads = plan::plan(&spans, max_gap);
        check_plan(&reads, &spans, max_gap)?;
        // Splitting a refused read gives smaller reads over the same fields, each as valid.
        for read in &reads {
            match plan::split(read, &spans) {
                None => prop_assert_eq!(read.fields.len(), 1),
                Some(parts) => {
                    prop_assert!(parts.len() >= 2);
                    let mut before = read.fields.clone();
                    let mut after: Vec<usize> = parts.iter().flat_map(|p| p.fields.clone()).collect();
                    before.sort_unstable();
                    after.sort_unstable();
                    prop_assert_eq!(before, after);
                    for p in &parts {
                        prop_assert!(p.count <= read.count);
                        // Parts bridge no gap at all.
                        check_read(p, &spans, 0)?;
                    }
                }
            }
        }
    }

    /// Fields of one table that fit in one request are one read when gaps may be bridged.
    #[test]
    fn fields_that_fit_one_request_are_one_read(
        table in table(),
        base in 0u16..60000,
        offsets in prop::collection::vec((0u16..100, 1u16..=25), 1..30),
    ) {
        let spans: Vec<plan::Span> = offsets
            .iter()
            .map(|&(off, count)| plan::Span { table, address: base + off, count })
            .collect();
        let reads = plan::plan(&spans, u16::MAX);
        prop_assert_eq!(reads.len(), 1, "{:?}", reads);
        check_plan(&reads, &spans, u16::MAX)?;
    }
}

proptest! {
    /// Any device id, keys and values survive the D2C property bag: encoded, the topic holds no
    /// byte that would end a key or value early, and decodes to what went in.
    #[test]
    fn d2c_property_bags_round_trip(
        device in "[A-Za-z0-9._:-]{1,40}",
        props in prop::collection::vec((".{1,12}", ".{0,20}"), 0..6),
    ) {
        let t = d2c::topic(&device, props.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let bag = t.split_once("/messages/events/").unwrap().1;
        prop_assert!(bag.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%&=".contains(&b)), "{}", t);
        let (got_device, got) = d2c::parse(&t).unwrap();
        prop_assert_eq!(got_device, device);
        prop_assert_eq!(got, props);
    }
}
