//! The simulated hardware, driven the way the gateway drives real hardware: tokio-serial on the
//! pty slave path, tokio-modbus clients over TCP and RTU. The tokio-modbus clients serve as an
//! independent reference here; the gateway's own bus code is tested against the sim elsewhere.

// clippy.toml allows these inside #[test] fns only; the helpers below are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::time::Duration;

use leafgate_sim::instrument::{self, Psu};
use leafgate_sim::modbus::{Fault, Garbage, Outcome, Registers, Table, TcpServer, crc16};
use leafgate_sim::pty::Pty;
use leafgate_sim::{SerialLine, Site};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_modbus::prelude::*;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

/// Long enough for anything that should happen on a loopback pty or socket.
const SOON: Duration = Duration::from_secs(2);
/// How long a client waits when the point of the test is that no answer comes.
const SHORT: Duration = Duration::from_millis(200);

fn open_port(path: &std::path::Path) -> SerialStream {
    tokio_serial::new(path.to_string_lossy(), 9600)
        .open_native_async()
        .unwrap()
}

fn rtu_frame(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut frame = vec![unit];
    frame.extend(pdu);
    frame.extend(crc16(&frame).to_le_bytes());
    frame
}

async fn read_frame(port: &mut SerialStream, len: usize) -> Vec<u8> {
    let mut frame = vec![0; len];
    timeout(SOON, port.read_exact(&mut frame))
        .await
        .expect("frame arrives")
        .unwrap();
    frame
}

// ---------------------------------------------------------------------------------------------
// pty

#[tokio::test]
async fn pty_carries_bytes_both_ways_through_tokio_serial() {
    let mut pty = Pty::open().unwrap();
    let mut port = open_port(pty.path());

    let sent = b"\x01\x03 to the device\r\n";
    port.write_all(sent).await.unwrap();
    let mut got = [0u8; 18];
    timeout(SOON, pty.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, sent);

    let reply = b"\xff\x00 to the gateway";
    pty.write_all(reply).await.unwrap();
    let mut back = [0u8; 17];
    timeout(SOON, port.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, reply);
}

#[tokio::test]
async fn the_gateway_can_open_close_and_reopen_the_port_while_the_sim_holds_it() {
    let mut pty = Pty::open().unwrap();
    let slave = pty.slave().clone();
    for round in 0u8..3 {
        // tokio-serial's default: TIOCEXCL plus flock(LOCK_EX). The sim's own slave descriptor
        // holds neither, so every open succeeds.
        let mut port = open_port(pty.path());
        assert!(slave.is_exclusive().unwrap(), "round {round}");
        port.write_all(&[round]).await.unwrap();
        let mut got = [0u8; 1];
        timeout(SOON, pty.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, [round]);
        pty.write_all(&[round + 10]).await.unwrap();
        timeout(SOON, port.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, [round + 10]);
        drop(port);
        // serialport clears TIOCEXCL when it closes the port.
        assert!(!slave.is_exclusive().unwrap(), "round {round}");
    }
}

#[tokio::test]
async fn a_second_exclusive_open_fails_while_the_gateway_holds_the_port() {
    let pty = Pty::open().unwrap();
    let _gateway = open_port(pty.path());
    // As for a real adapter. (Non-root: EBUSY from TIOCEXCL; root bypasses TIOCEXCL but the
    // flock still refuses.)
    let second = tokio_serial::new(pty.path().to_string_lossy(), 9600).open_native_async();
    assert!(second.is_err());
}

#[tokio::test]
async fn a_gateway_that_dies_holding_the_port_leaves_it_exclusive_until_cleared() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;

    let pty = Pty::open().unwrap();
    // What a killed gateway leaves behind: TIOCEXCL set, the descriptor closed by the kernel
    // without serialport's TIOCNXCL. A real adapter's tty is freed on last close; a pty's is not,
    // so a non-root reopen would now fail with EBUSY.
    let crashed = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(pty.path())
        .unwrap();
    // SAFETY: TIOCEXCL takes no argument; the descriptor is open.
    assert_eq!(
        unsafe { libc::ioctl(crashed.as_raw_fd(), libc::TIOCEXCL) },
        0
    );
    drop(crashed);
    assert!(pty.slave().is_exclusive().unwrap());

    pty.slave().clear_exclusive().unwrap();
    assert!(!pty.slave().is_exclusive().unwrap());
}

#[tokio::test]
async fn unplugging_removes_the_port_and_replugging_brings_the_device_back() {
    let registers = Registers::with_units([1]);
    registers.set_holding(1, 0, &[77]);
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyRS485");
    let mut line = SerialLine::modbus_rtu(registers.clone())
        .unwrap()
        .linked(&link)
        .unwrap();
    let old_path = line.path().to_owned();
    let mut port = open_port(&link);

    line.unplug().await;
    // Not `!old_path.exists()`: the kernel reuses pty numbers at once, and tests running in
    // parallel open ptys, so the old path may already belong to another test's device.
    let _ = &old_path;
    assert!(!link.exists(), "the by-id style link goes with the device");
    let mut buf = [0u8; 8];
    let read = timeout(SOON, port.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "a hung-up port: {read:?}");
    assert!(
        port.write_all(&rtu_frame(1, &[3, 0, 0, 0, 1]))
            .await
            .is_err()
    );
    drop(port);

    line.replug().await.unwrap();
    assert!(line.path().exists());
    let mut ctx = rtu::attach_slave(open_port(&link), Slave(1));
    let values = timeout(SOON, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(
        values.unwrap().unwrap(),
        vec![77],
        "the device kept its registers"
    );
}

// ---------------------------------------------------------------------------------------------
// Modbus TCP

#[tokio::test]
async fn modbus_tcp_reads_and_writes_every_table_through_the_tokio_modbus_client() {
    let registers = Registers::with_units([1]);
    registers.set_holding(1, 100, &[1250, 7]);
    registers.set_input(1, 0, &[215, 1013]);
    registers.set_coils(1, 0, &[true, false, true]);
    registers.set_discrete(1, 10, &[true]);
    let device = TcpServer::start(registers.clone()).await.unwrap();
    let mut ctx = tcp::connect_slave(device.addr(), Slave(1)).await.unwrap();

    let call = async {
        assert_eq!(ctx.read_holding_registers(100, 2).await??, [1250, 7]);
        assert_eq!(ctx.read_input_registers(0, 2).await??, [215, 1013]);
        assert_eq!(ctx.read_coils(0, 3).await??, [true, false, true]);
        assert_eq!(ctx.read_discrete_inputs(9, 2).await??, [false, true]);
        ctx.write_single_register(100, 1300).await??;
        ctx.write_multiple_registers(200, &[1, 2, 3]).await??;
        ctx.write_single_coil(1, true).await??;
        ctx.write_multiple_coils(20, &[true, true, false, true])
            .await??;
        anyhow::Ok(())
    };
    timeout(SOON, call).await.unwrap().unwrap();

    assert_eq!(registers.holding(1, 100, 1), [1300]);
    assert_eq!(registers.holding(1, 200, 3), [1, 2, 3]);
    assert_eq!(registers.coils(1, 0, 3), [true, true, true]);
    assert_eq!(registers.coils(1, 20, 4), [true, true, false, true]);
    let functions: Vec<u8> = registers.requests().iter().map(|r| r.function).collect();
    assert_eq!(functions, [3, 4, 1, 2, 6, 16, 5, 15]);
}

#[tokio::test]
async fn modbus_tcp_serves_many_units_at_one_endpoint_and_refuses_unknown_ones_like_a_gateway() {
    let registers = Registers::with_units([1, 2, 247]);
    for unit in [1, 2, 247] {
        registers.set_holding(unit, 0, &[u16::from(unit)]);
    }
    let device = TcpServer::start(registers.clone()).await.unwrap();
    let mut ctx = tcp::connect(device.addr()).await.unwrap();
    for unit in [1, 2, 247] {
        ctx.set_slave(Slave(unit));
        let value = timeout(SOON, ctx.read_holding_registers(0, 1))
            .await
            .unwrap();
        assert_eq!(value.unwrap().unwrap(), [u16::from(unit)]);
    }
    ctx.set_slave(Slave(9));
    let refused = timeout(SOON, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(refused.unwrap(), Err(ExceptionCode::GatewayTargetDevice));
}

#[tokio::test]
async fn every_exception_reaches_a_tcp_client() {
    let registers = Registers::with_units([1]);
    registers.set_mapped(1, Table::HoldingRegisters, &[0..=9]);
    let device = TcpServer::start(registers.clone()).await.unwrap();
    let mut ctx = tcp::connect_slave(device.addr(), Slave(1)).await.unwrap();

    // A user-defined function code: tokio-modbus 0.17 rejects the exception reply to a custom
    // request whose code it knows by name (Custom(8) != Diagnostics), so 8 would not do.
    let illegal_function = ctx.call(Request::Custom(0x41, Cow::Borrowed(&[0, 0, 0, 0])));
    match timeout(SOON, illegal_function).await.unwrap().unwrap() {
        Err(code) => assert_eq!(code, ExceptionCode::IllegalFunction),
        Ok(response) => panic!("answered {response:?}"),
    }
    let cases = [
        ((5, 10), ExceptionCode::IllegalDataAddress),
        ((100, 1), ExceptionCode::IllegalDataAddress),
        ((0, 0), ExceptionCode::IllegalDataValue),
        ((0, 126), ExceptionCode::IllegalDataValue),
    ];
    for ((address, count), expected) in cases {
        let result = timeout(SOON, ctx.read_holding_registers(address, count))
            .await
            .unwrap();
        assert_eq!(result.unwrap(), Err(expected), "read {count} at {address}");
    }
    let too_many_coils = timeout(SOON, ctx.read_coils(0, 2001)).await.unwrap();
    assert_eq!(
        too_many_coils.unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );

    registers.set_fault(
        1,
        Fault::ExceptionAt {
            table: Table::HoldingRegisters,
            address: 3,
            code: 4,
        },
    );
    let at = timeout(SOON, ctx.write_single_register(3, 1))
        .await
        .unwrap();
    assert_eq!(at.unwrap(), Err(ExceptionCode::ServerDeviceFailure));
    let elsewhere = timeout(SOON, ctx.write_single_register(4, 1))
        .await
        .unwrap();
    assert_eq!(elsewhere.unwrap(), Ok(()));

    registers.set_fault_times(1, Fault::Exception(6), 1);
    let busy = timeout(SOON, ctx.read_holding_registers(4, 1))
        .await
        .unwrap();
    assert_eq!(busy.unwrap(), Err(ExceptionCode::ServerDeviceBusy));
    assert_eq!(
        registers.holding(1, 3, 2),
        [0, 1],
        "refused writes are not executed"
    );
}

#[tokio::test]
async fn a_tcp_reply_with_a_bad_protocol_id_is_rejected_by_the_client() {
    let registers = Registers::with_units([1]);
    registers.set_fault(1, Fault::Garbage(Garbage::BadCrc));
    let device = TcpServer::start(registers).await.unwrap();
    let mut ctx = tcp::connect_slave(device.addr(), Slave(1)).await.unwrap();
    let result = timeout(SOON, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn a_stopped_tcp_device_refuses_connections_and_can_come_back_at_the_same_address() {
    let registers = Registers::with_units([1]);
    let device = TcpServer::start(registers.clone()).await.unwrap();
    let addr = device.addr();
    device.stop().await;
    assert!(TcpStream::connect(addr).await.is_err());

    let _device = TcpServer::bind(addr, leafgate_sim::modbus::Framing::Mbap, registers)
        .await
        .unwrap();
    let mut ctx = tcp::connect_slave(addr, Slave(1)).await.unwrap();
    let value = timeout(SOON, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(value.unwrap().unwrap(), [0]);
}

// ---------------------------------------------------------------------------------------------
// Modbus RTU

#[tokio::test]
async fn an_rtu_line_with_two_units_answers_only_the_addressed_unit() {
    let registers = Registers::with_units([1, 2]);
    registers.set_holding(1, 0, &[11]);
    registers.set_holding(2, 0, &[22]);
    let line = SerialLine::modbus_rtu(registers.clone()).unwrap();
    let mut ctx = rtu::attach_slave(open_port(line.path()), Slave(1));

    let one = timeout(SOON, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(one.unwrap().unwrap(), [11]);
    ctx.set_slave(Slave(2));
    let two = timeout(SOON, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(two.unwrap().unwrap(), [22]);
    ctx.set_slave(Slave(3));
    let nobody = timeout(SHORT, ctx.read_holding_registers(0, 1)).await;
    assert!(nobody.is_err(), "no unit 3 on the line: {nobody:?}");

    let units: Vec<_> = registers
        .wait_requests(3)
        .await
        .iter()
        .map(|r| (r.unit, r.outcome))
        .collect();
    assert_eq!(
        units,
        [
            (1, Outcome::Answered),
            (2, Outcome::Answered),
            (3, Outcome::NoSuchUnit)
        ]
    );
}

#[tokio::test]
async fn a_broadcast_is_executed_by_every_unit_and_answered_by_none() {
    let registers = Registers::with_units([1, 2]);
    let line = SerialLine::modbus_rtu(registers.clone()).unwrap();
    let mut port = open_port(line.path());
    port.write_all(&rtu_frame(0, &[6, 0, 5, 0, 99]))
        .await
        .unwrap();
    port.write_all(&rtu_frame(1, &[3, 0, 5, 0, 1]))
        .await
        .unwrap();
    // The first bytes back are unit 1's answer: the broadcast got none.
    assert_eq!(read_frame(&mut port, 7).await, rtu_frame(1, &[3, 2, 0, 99]));
    assert_eq!(registers.holding(2, 5, 1), [99]);
    let log = registers.wait_requests(2).await;
    assert_eq!((log[0].unit, log[0].outcome), (0, Outcome::Broadcast));
}

#[tokio::test]
async fn a_request_split_across_writes_is_reassembled() {
    let registers = Registers::with_units([4]);
    registers.set_input(4, 2, &[0xBEEF]);
    let line = SerialLine::modbus_rtu(registers).unwrap();
    let mut port = open_port(line.path());
    let request = rtu_frame(4, &[4, 0, 2, 0, 1]);
    port.write_all(&request[..3]).await.unwrap();
    tokio::task::yield_now().await;
    port.write_all(&request[3..]).await.unwrap();
    assert_eq!(
        read_frame(&mut port, 7).await,
        rtu_frame(4, &[4, 2, 0xBE, 0xEF])
    );
}

#[tokio::test]
async fn every_exception_reaches_an_rtu_client() {
    let registers = Registers::with_units([1]);
    registers.set_mapped(1, Table::Coils, &[0..=15]);
    let line = SerialLine::modbus_rtu(registers.clone()).unwrap();
    let mut ctx = rtu::attach_slave(open_port(line.path()), Slave(1));

    let illegal_function = ctx.call(Request::Custom(0x41, Cow::Borrowed(&[0, 0, 0, 0])));
    match timeout(SOON, illegal_function).await.unwrap().unwrap() {
        Err(code) => assert_eq!(code, ExceptionCode::IllegalFunction),
        Ok(response) => panic!("answered {response:?}"),
    }
    let address = timeout(SOON, ctx.read_coils(8, 9)).await.unwrap();
    assert_eq!(address.unwrap(), Err(ExceptionCode::IllegalDataAddress));
    let value = timeout(SOON, ctx.read_input_registers(0, 200))
        .await
        .unwrap();
    assert_eq!(value.unwrap(), Err(ExceptionCode::IllegalDataValue));
    registers.set_fault(1, Fault::Exception(4));
    let failure = timeout(SOON, ctx.write_single_coil(0, true)).await.unwrap();
    assert_eq!(failure.unwrap(), Err(ExceptionCode::ServerDeviceFailure));
    assert_eq!(registers.coils(1, 0, 1), [false]);
}

#[tokio::test]
async fn a_silent_unit_makes_the_client_time_out_while_its_neighbour_answers() {
    let registers = Registers::with_units([1, 2]);
    registers.set_fault(2, Fault::Silent);
    let line = SerialLine::modbus_rtu(registers.clone()).unwrap();
    let mut ctx = rtu::attach_slave(open_port(line.path()), Slave(2));

    let silent = timeout(SHORT, ctx.write_single_register(0, 5)).await;
    assert!(silent.is_err(), "{silent:?}");
    ctx.set_slave(Slave(1));
    let neighbour = timeout(SOON, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(neighbour.unwrap().unwrap(), [0]);

    let log = registers.wait_requests(2).await;
    assert_eq!(log[0].outcome, Outcome::Silent);
    assert_eq!(
        registers.holding(2, 0, 1),
        [0],
        "a silent unit executes nothing"
    );
}

#[tokio::test]
async fn a_reply_with_a_bad_crc_is_never_accepted_and_the_retry_succeeds() {
    let registers = Registers::with_units([1]);
    registers.set_holding(1, 0, &[42]);
    registers.set_fault_times(1, Fault::Garbage(Garbage::BadCrc), 1);
    let line = SerialLine::modbus_rtu(registers.clone()).unwrap();
    let mut ctx = rtu::attach_slave(open_port(line.path()), Slave(1));

    // tokio-modbus drops bytes that fail the CRC and keeps waiting: the caller sees a timeout.
    let garbled = timeout(SHORT, ctx.read_holding_registers(0, 1)).await;
    assert!(garbled.is_err(), "{garbled:?}");
    let retry = timeout(SOON, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(retry.unwrap().unwrap(), [42]);
}

#[tokio::test]
async fn damaged_rtu_replies_arrive_exactly_as_configured() {
    let registers = Registers::with_units([1]);
    registers.set_holding(1, 0, &[42]);
    let line = SerialLine::modbus_rtu(registers.clone()).unwrap();
    let mut port = open_port(line.path());
    let request = rtu_frame(1, &[3, 0, 0, 0, 1]);
    let good = rtu_frame(1, &[3, 2, 0, 42]);

    registers.set_fault_times(1, Fault::Garbage(Garbage::BadCrc), 1);
    port.write_all(&request).await.unwrap();
    let bad = read_frame(&mut port, 7).await;
    assert_eq!(bad[..5], good[..5]);
    assert_ne!(bad[5..], good[5..]);

    registers.set_fault_times(1, Fault::Garbage(Garbage::NoiseBefore(vec![0xAA, 0x55])), 1);
    port.write_all(&request).await.unwrap();
    assert_eq!(read_frame(&mut port, 9).await[..2], [0xAA, 0x55]);

    registers.set_fault_times(1, Fault::Garbage(Garbage::Truncated), 1);
    port.write_all(&request).await.unwrap();
    port.write_all(&request).await.unwrap();
    // Four bytes of the truncated reply, then the next reply intact.
    let mut both = good[..4].to_vec();
    both.extend(&good);
    assert_eq!(read_frame(&mut port, 11).await, both);
}

#[tokio::test]
async fn noise_before_a_reply_is_skipped_by_the_client() {
    let registers = Registers::with_units([1]);
    registers.set_holding(1, 0, &[42]);
    registers.set_fault(1, Fault::Garbage(Garbage::NoiseBefore(vec![0x00, 0xFF])));
    let line = SerialLine::modbus_rtu(registers).unwrap();
    let mut ctx = rtu::attach_slave(open_port(line.path()), Slave(1));
    let value = timeout(SOON, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(value.unwrap().unwrap(), [42]);
}

#[tokio::test]
async fn a_late_reply_arrives_after_the_client_gave_up() {
    let registers = Registers::with_units([1, 2]);
    registers.set_fault(1, Fault::Delay(Duration::from_millis(250)));
    let line = SerialLine::modbus_rtu(registers.clone()).unwrap();
    let mut port = open_port(line.path());

    port.write_all(&rtu_frame(1, &[6, 0, 0, 0, 9]))
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = timeout(Duration::from_millis(50), port.read_exact(&mut byte)).await;
    assert!(early.is_err(), "nothing within the client's timeout");
    // Executed on arrival, answered late.
    assert_eq!(
        registers.wait_requests(1).await[0].outcome,
        Outcome::Answered
    );
    assert_eq!(registers.holding(1, 0, 1), [9]);

    // The gateway moves on to unit 2, which answers at once, before unit 1's late reply.
    port.write_all(&rtu_frame(2, &[3, 0, 0, 0, 1]))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut port, 7).await, rtu_frame(2, &[3, 2, 0, 0]));
    assert_eq!(
        read_frame(&mut port, 8).await,
        rtu_frame(1, &[6, 0, 0, 0, 9])
    );
}

#[tokio::test]
async fn rtu_over_tcp_serves_rtu_frames_on_a_socket() {
    let registers = Registers::with_units([1, 2]);
    registers.set_input(2, 0, &[2024]);
    let device = TcpServer::start_rtu_over_tcp(registers).await.unwrap();
    let stream = TcpStream::connect(device.addr()).await.unwrap();
    let mut ctx = rtu::attach_slave(stream, Slave(2));
    let value = timeout(SOON, ctx.read_input_registers(0, 1)).await.unwrap();
    assert_eq!(value.unwrap().unwrap(), [2024]);
}

#[tokio::test]
async fn the_request_log_wakes_a_waiter_for_request_n_and_keeps_the_order() {
    let registers = Registers::with_units([1]);
    let device = TcpServer::start(registers.clone()).await.unwrap();
    let waiter = tokio::spawn({
        let registers = registers.clone();
        async move { registers.wait_requests(3).await }
    });
    let mut ctx = tcp::connect_slave(device.addr(), Slave(1)).await.unwrap();
    for address in [10, 20, 30] {
        let _ = timeout(SOON, ctx.read_holding_registers(address, 2))
            .await
            .unwrap();
    }
    let log = timeout(SOON, waiter).await.unwrap().unwrap();
    let seen: Vec<_> = log.iter().map(|r| (r.seq, r.address, r.count)).collect();
    assert_eq!(seen, [(0, 10, 2), (1, 20, 2), (2, 30, 2)]);
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
}

// ---------------------------------------------------------------------------------------------
// Serial instrument

async fn ask(port: &mut BufReader<SerialStream>, command: &str) -> String {
    port.get_mut()
        .write_all(format!("{command}\r\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    timeout(SOON, port.read_line(&mut reply))
        .await
        .expect("reply arrives")
        .unwrap();
    reply
}

#[tokio::test]
async fn the_instrument_answers_commands_on_a_pty() {
    let psu = Psu::new();
    let line = SerialLine::instrument(psu.clone()).unwrap();
    let mut port = BufReader::new(open_port(line.path()));

    assert_eq!(ask(&mut port, "*IDN?").await, "LEAFGATE,PSU-1,0001,1.0\r\n");
    assert_eq!(ask(&mut port, "VOLT 12.500").await, "OK\r\n");
    assert_eq!(ask(&mut port, "VOLT?").await, "VOLT 12.500\r\n");
    assert_eq!(ask(&mut port, "CURR?").await, "CURR 0.250\r\n");
    assert_eq!(ask(&mut port, "OUTP ON").await, "OK\r\n");
    assert_eq!(ask(&mut port, "MEAS?").await, "VOLT 12.500 CURR 0.250\r\n");
    assert_eq!(ask(&mut port, "FLY").await, "ERR unknown command\r\n");
    assert!(psu.state().output);
    assert_eq!(psu.commands().len(), 7);
}

#[tokio::test]
async fn instrument_faults_silence_delay_and_garble_replies() {
    let psu = Psu::new();
    let line = SerialLine::instrument(psu.clone()).unwrap();
    let mut port = BufReader::new(open_port(line.path()));

    psu.set_fault_times(instrument::Fault::Silent, 1);
    port.get_mut().write_all(b"OUTP ON\r\n").await.unwrap();
    let mut reply = String::new();
    assert!(timeout(SHORT, port.read_line(&mut reply)).await.is_err());
    assert_eq!(psu.wait_commands(1).await[0].reply, None);
    assert!(!psu.state().output);

    psu.set_fault_times(instrument::Fault::Garbage(b"#\x00?\r\n".to_vec()), 1);
    let mut garbled = Vec::new();
    port.get_mut().write_all(b"VOLT?\r\n").await.unwrap();
    timeout(SOON, port.read_until(b'\n', &mut garbled))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(garbled, b"#\x00?\r\n");

    psu.set_fault_times(instrument::Fault::Delay(Duration::from_millis(250)), 1);
    port.get_mut().write_all(b"VOLT 3\r\n").await.unwrap();
    let mut late = String::new();
    assert!(
        timeout(Duration::from_millis(50), port.read_line(&mut late))
            .await
            .is_err()
    );
    assert_eq!(psu.wait_commands(3).await[2].line, "VOLT 3");
    assert_eq!(psu.state().millivolts, 3000, "executed on arrival");
    // The read above was cancelled before any byte came, so nothing is lost by reading again.
    timeout(SOON, port.read_line(&mut late))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late, "OK\r\n");
}

// ---------------------------------------------------------------------------------------------
// Site

#[tokio::test]
async fn a_site_starts_every_device_the_demo_needs() {
    let site = Site::start().await.unwrap();
    site.tcp_registers.set_holding(1, 0, &[5]);
    let mut ctx = tcp::connect_slave(site.modbus_tcp.addr(), Slave(1))
        .await
        .unwrap();
    let value = timeout(SOON, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(value.unwrap().unwrap(), [5]);
    assert_eq!(site.rtu_registers.units(), [1, 2]);
    assert!(site.rtu_line.path().exists());
    let mut port = BufReader::new(open_port(site.psu_line.path()));
    assert_eq!(ask(&mut port, "*IDN?").await, "LEAFGATE,PSU-1,0001,1.0\r\n");
}
