//! Bytes from an RS-485 line, as replies to every kind of request.
#![no_main]

use leafgate::bus::frame;
use leafgate::bus::{Op, WriteData};
use leafgate::config::schema::Table;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, rest) = data.split_at(data.len().min(4));
    let unit = head.first().copied().unwrap_or(1);
    let count = u16::from(head.get(1).copied().unwrap_or(1)).max(1);
    let address = u16::from_be_bytes([head.get(2).copied().unwrap_or(0), head.get(3).copied().unwrap_or(0)]);
    let ops = [
        Op::Read { unit, table: Table::Holding, address, count },
        Op::Read { unit, table: Table::Input, address, count },
        Op::Read { unit, table: Table::Coil, address, count },
        Op::Read { unit, table: Table::Discrete, address, count },
        Op::Write { unit, address, data: WriteData::Registers(vec![count]) },
        Op::Write { unit, address, data: WriteData::Registers(vec![count; 3]) },
        Op::Write { unit, address, data: WriteData::Coils(vec![true]) },
        Op::Write { unit, address, data: WriteData::Coils(vec![true; 9]) },
    ];
    for op in &ops {
        let _ = frame::decode_reply(unit, op, rest);
        let _ = frame::decode_pdu(op, rest);
        if rest.len() >= 3 {
            let _ = frame::reply_len(op, [rest[0], rest[1], rest[2]]);
        }
    }
});
