//! The `[[bus]]` sections: which keys apply to which kind, the line settings of serial buses,
//! and the bounds that keep a bus from stalling (timeouts, queue, retries, frame gap). Also how
//! a bus addresses its devices, which the device checks need.

use std::path::Path;
use std::time::Duration;

use super::Problems;
use crate::config::schema::{BusConfig, BusKind, TcpFraming};
use crate::config::{Bus, BusSpec, Line, SerialFraming};

/// Upper bound for `frame_gap_us`. The gap is slept before every frame, so a huge value stalls
/// the line (and one near `u64::MAX` overflows the bus's deadline arithmetic). The largest gap
/// the Modbus serial spec asks for is 3.5 characters of 12 bits at 300 baud, 140 ms; above
/// 19200 baud it is 1.75 ms. 200 ms covers every legal line with room to spare.
const MAX_FRAME_GAP_US: u64 = 200_000;

pub(super) fn resolve_bus(file: &Path, path: &str, b: &BusConfig, p: &mut Problems) -> Option<Bus> {
    use crate::config::schema::defaults as d;
    let start = p.0.len();
    let kind = b.kind;
    let mut not_for = |key: &str, present: bool| {
        if present {
            p.add(
                file,
                format!("{path}.{key}"),
                format!("does not apply to kind = \"{}\"", kind.name()),
            );
        }
    };
    let serial_line = kind != BusKind::ModbusTcp;
    not_for("address", b.address.is_some() && serial_line);
    not_for("framing", b.framing.is_some() && serial_line);
    for (key, present) in [
        ("path", b.path.is_some()),
        ("baud_rate", b.baud_rate.is_some()),
        ("parity", b.parity.is_some()),
        ("data_bits", b.data_bits.is_some()),
        ("stop_bits", b.stop_bits.is_some()),
    ] {
        not_for(key, present && !serial_line);
    }
    not_for(
        "frame_gap_us",
        b.frame_gap_us.is_some() && kind != BusKind::ModbusRtu,
    );
    for (key, present) in [
        ("line_ending", b.line_ending.is_some()),
        ("terminator", b.terminator.is_some()),
        ("reply_length", b.reply_length.is_some()),
        ("idle_gap_ms", b.idle_gap_ms.is_some()),
    ] {
        not_for(key, present && kind != BusKind::Serial);
    }

    let timeout_ms = b.timeout_ms.unwrap_or(d::BUS_TIMEOUT_MS);
    if !(10..=60_000).contains(&timeout_ms) {
        p.add(
            file,
            format!("{path}.timeout_ms"),
            format!("{timeout_ms} is outside 10..=60000"),
        );
    }
    let queue_capacity = b.queue_capacity.unwrap_or(d::BUS_QUEUE_CAPACITY);
    if !(1..=100_000).contains(&queue_capacity) {
        p.add(
            file,
            format!("{path}.queue_capacity"),
            format!("{queue_capacity} is outside 1..=100000"),
        );
    }
    let retries = b.retries.unwrap_or(d::BUS_RETRIES);
    if retries > 10 {
        p.add(
            file,
            format!("{path}.retries"),
            format!("{retries} is above 10"),
        );
    }
    let down_after = b.down_after.unwrap_or(d::BUS_DOWN_AFTER);
    if down_after > 100 {
        p.add(
            file,
            format!("{path}.down_after"),
            format!("{down_after} is above 100 (0 turns it off)"),
        );
    }
    let down_for_ms = b.down_for_ms.unwrap_or(d::BUS_DOWN_FOR_MS);
    if !(100..=3_600_000).contains(&down_for_ms) {
        p.add(
            file,
            format!("{path}.down_for_ms"),
            format!("{down_for_ms} is outside 100..=3600000"),
        );
    }
    let reconnect_min_ms = b.reconnect_min_ms.unwrap_or(d::BUS_RECONNECT_MIN_MS);
    let reconnect_max_ms = b.reconnect_max_ms.unwrap_or(d::BUS_RECONNECT_MAX_MS);
    if reconnect_min_ms == 0 || reconnect_min_ms > reconnect_max_ms {
        p.add(
            file,
            format!("{path}.reconnect_min_ms"),
            format!("must be above 0 and at most reconnect_max_ms ({reconnect_max_ms})"),
        );
    }

    if let (BusKind::ModbusRtu, Some(us)) = (kind, b.frame_gap_us)
        && us > MAX_FRAME_GAP_US
    {
        p.add(
                file,
                format!("{path}.frame_gap_us"),
                format!(
                    "{us} is outside 0..={MAX_FRAME_GAP_US} (3.5 characters take at most 140000 µs, at 300 baud; leave it unset for the spec's value)"
                ),
            );
    }

    let line = if serial_line {
        resolve_line(file, path, b, p)
    } else {
        None
    };
    let spec = match kind {
        BusKind::ModbusTcp => match &b.address {
            Some(a)
                if a.rsplit_once(':').is_some_and(|(h, port)| {
                    !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0)
                }) =>
            {
                Some(BusSpec::ModbusTcp {
                    address: a.clone(),
                    framing: b.framing.unwrap_or_default(),
                })
            }
            Some(a) => {
                p.add(
                    file,
                    format!("{path}.address"),
                    format!("{a:?} is not host:port"),
                );
                None
            }
            None => {
                p.add(
                    file,
                    format!("{path}.address"),
                    "missing (host:port of the Modbus TCP device)",
                );
                None
            }
        },
        BusKind::ModbusRtu => line.map(|line| {
            let gap = b
                .frame_gap_us
                .map_or_else(|| line.silent_interval(), Duration::from_micros);
            BusSpec::ModbusRtu {
                line,
                frame_gap: gap,
            }
        }),
        BusKind::Serial => {
            let line_ending = match b.line_ending.as_deref() {
                Some("") => {
                    p.add(file, format!("{path}.line_ending"), "must not be empty");
                    None
                }
                other => other,
            };
            // The line ending frames replies too, unless the bus says otherwise.
            let terminator = b
                .terminator
                .as_deref()
                .or(match (b.reply_length, b.idle_gap_ms) {
                    (None, None) => line_ending,
                    _ => None,
                });
            let framing = match (terminator, b.reply_length, b.idle_gap_ms) {
                (Some(t), None, None) if !t.is_empty() => {
                    Some(SerialFraming::Terminator(t.as_bytes().to_vec()))
                }
                (None, Some(n), None) if (1..=4096).contains(&n) => Some(SerialFraming::Length(n)),
                (None, None, Some(ms)) if (1..=10_000).contains(&ms) => {
                    Some(SerialFraming::IdleGap(Duration::from_millis(ms)))
                }
                // An empty line ending is its own problem, already recorded.
                (None, None, None) if b.line_ending.is_some() => None,
                (None, None, None) => {
                    p.add(
                        file,
                        path,
                        "serial buses need one framing: line_ending, terminator, reply_length or idle_gap_ms",
                    );
                    None
                }
                (Some(_), None, None) => {
                    p.add(file, format!("{path}.terminator"), "must not be empty");
                    None
                }
                (None, Some(n), None) => {
                    p.add(
                        file,
                        format!("{path}.reply_length"),
                        format!("{n} is outside 1..=4096"),
                    );
                    None
                }
                (None, None, Some(ms)) => {
                    p.add(
                        file,
                        format!("{path}.idle_gap_ms"),
                        format!("{ms} is outside 1..=10000"),
                    );
                    None
                }
                _ => {
                    p.add(
                        file,
                        path,
                        "give only one of terminator, reply_length, idle_gap_ms",
                    );
                    None
                }
            };
            line.zip(framing).map(|(line, framing)| BusSpec::Serial {
                line,
                framing,
                line_ending: line_ending.map(|e| e.as_bytes().to_vec()),
            })
        }
    };
    if p.0.len() != start {
        return None;
    }
    Some(Bus {
        id: b.id.clone(),
        spec: spec?,
        timeout: Duration::from_millis(timeout_ms),
        queue_capacity,
        retries,
        reconnect_min: Duration::from_millis(reconnect_min_ms),
        reconnect_max: Duration::from_millis(reconnect_max_ms),
        down_after,
        down_for: Duration::from_millis(down_for_ms),
    })
}

fn resolve_line(file: &Path, path: &str, b: &BusConfig, p: &mut Problems) -> Option<Line> {
    let start = p.0.len();
    let Some(dev) = &b.path else {
        p.add(
            file,
            format!("{path}.path"),
            "missing (serial device, e.g. /dev/ttyUSB0)",
        );
        return None;
    };
    let baud_rate = b
        .baud_rate
        .unwrap_or(crate::config::schema::defaults::BAUD_RATE);
    if !(300..=4_000_000).contains(&baud_rate) {
        p.add(
            file,
            format!("{path}.baud_rate"),
            format!("{baud_rate} is outside 300..=4000000"),
        );
    }
    let data_bits = b.data_bits.unwrap_or(8);
    if !(5..=8).contains(&data_bits) {
        p.add(
            file,
            format!("{path}.data_bits"),
            format!("{data_bits} is outside 5..=8"),
        );
    }
    let stop_bits = b.stop_bits.unwrap_or(1);
    if !(1..=2).contains(&stop_bits) {
        p.add(
            file,
            format!("{path}.stop_bits"),
            format!("{stop_bits} is not 1 or 2"),
        );
    }
    (p.0.len() == start).then(|| Line {
        path: dev.clone(),
        baud_rate,
        parity: b.parity.unwrap_or_default(),
        data_bits,
        stop_bits,
    })
}

/// How a bus addresses its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Units {
    /// Serial-line Modbus addressing: 1..=247, one device per unit id. Applies to `modbus_rtu`
    /// and to `modbus_tcp` with `framing = "rtu"` (a serial-to-Ethernet converter puts the frames
    /// on an RS-485 line as they are, so the line's rules hold).
    Rtu,
    /// Modbus TCP (MBAP): 0..=255; the unit id only routes behind a TCP gateway.
    Mbap,
    /// Serial buses have no unit ids.
    None,
}

impl Units {
    pub(super) fn of(b: &BusConfig) -> Self {
        match (b.kind, b.framing.unwrap_or_default()) {
            (BusKind::ModbusRtu, _) | (BusKind::ModbusTcp, TcpFraming::Rtu) => Units::Rtu,
            (BusKind::ModbusTcp, TcpFraming::Mbap) => Units::Mbap,
            (BusKind::Serial, _) => Units::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::testing::{HUB, problems};
    use super::*;
    use crate::bus::spec::Parity;

    fn rtu_bus(extra: &str) -> String {
        format!(
            "{HUB}[[bus]]\nid = \"rs485\"\nkind = \"modbus_rtu\"\npath = \"/dev/ttyUSB0\"\n{extra}\n"
        )
    }

    #[test]
    fn frame_gap_is_bounded_above_the_slowest_lines_silent_interval() {
        let slowest = Line {
            path: PathBuf::from("/dev/ttyS0"),
            baud_rate: 300,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 2,
        };
        assert_eq!(slowest.silent_interval(), Duration::from_micros(140_000));
        assert!(slowest.silent_interval() <= Duration::from_micros(MAX_FRAME_GAP_US));
        assert_eq!(problems(&rtu_bus("frame_gap_us = 0")), Vec::<String>::new());
        assert_eq!(
            problems(&rtu_bus("frame_gap_us = 200000")),
            Vec::<String>::new()
        );
        let got = problems(&rtu_bus("frame_gap_us = 200001"));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("bus \"rs485\".frame_gap_us: 200001 is outside 0..=200000"),
            "{got:?}"
        );
        let got = problems(&rtu_bus("frame_gap_us = 9223372036854775807"));
        assert!(
            got[0].starts_with("bus \"rs485\".frame_gap_us: "),
            "{got:?}"
        );
    }

    fn serial_bus(extra: &str) -> String {
        format!("{HUB}[[bus]]\nid = \"psu\"\nkind = \"serial\"\npath = \"/dev/ttyUSB1\"\n{extra}\n")
    }

    fn serial_spec(extra: &str) -> BusSpec {
        let cfg = crate::config::load::parse(&serial_bus(extra)).unwrap();
        let config = super::super::validate(vec![(PathBuf::from("leafgate.toml"), cfg)]).unwrap();
        config.buses[0].spec.clone()
    }

    #[test]
    fn a_line_ending_ends_requests_and_frames_replies_unless_another_framing_is_given() {
        let BusSpec::Serial {
            framing,
            line_ending,
            ..
        } = serial_spec("line_ending = \"\\r\\n\"")
        else {
            panic!("not a serial bus")
        };
        assert_eq!(framing, SerialFraming::Terminator(b"\r\n".to_vec()));
        assert_eq!(line_ending, Some(b"\r\n".to_vec()));
        // An instrument that takes "\r" and answers "\r\n".
        let BusSpec::Serial {
            framing,
            line_ending,
            ..
        } = serial_spec("line_ending = \"\\r\"\nterminator = \"\\r\\n\"")
        else {
            panic!("not a serial bus")
        };
        assert_eq!(framing, SerialFraming::Terminator(b"\r\n".to_vec()));
        assert_eq!(line_ending, Some(b"\r".to_vec()));
        let BusSpec::Serial { framing, .. } =
            serial_spec("line_ending = \"\\n\"\nreply_length = 8")
        else {
            panic!("not a serial bus")
        };
        assert_eq!(framing, SerialFraming::Length(8));
        let got = problems(&serial_bus("line_ending = \"\""));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].ends_with("line_ending: must not be empty"),
            "{got:?}"
        );
        let got = problems(&rtu_bus("line_ending = \"\\r\\n\""));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].ends_with("line_ending: does not apply to kind = \"modbus_rtu\""),
            "{got:?}"
        );
        let got = problems(&serial_bus(""));
        assert!(
            got[0].ends_with(
                "serial buses need one framing: line_ending, terminator, reply_length or idle_gap_ms"
            ),
            "{got:?}"
        );
    }
}
