//! Bus actors against simulated hardware: real TCP sockets and real ptys opened by path with
//! tokio-serial, exactly as on a gateway box.

use std::time::Duration;

use leafgate::bus::{self, Error, Label, Op, Output, WriteData};
use leafgate::config::schema::{Parity, Table, TcpFraming};
use leafgate::config::{Bus, BusSpec, Line, SerialFraming};
use leafgate_sim::SerialLine;
use leafgate_sim::instrument::{self, Psu};
use leafgate_sim::modbus::{Fault, Garbage, Registers, TcpServer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn bus(id: &str, spec: BusSpec, timeout_ms: u64) -> Bus {
    Bus {
        id: id.to_owned(),
        spec,
        timeout: Duration::from_millis(timeout_ms),
        queue_capacity: 16,
        retries: 2,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        down_after: 0,
        down_for: Duration::from_secs(10),
    }
}

fn line(path: &std::path::Path) -> Line {
    Line {
        path: path.to_path_buf(),
        baud_rate: 115_200,
        parity: Parity::None,
        data_bits: 8,
        stop_bits: 1,
    }
}

fn rtu(path: &std::path::Path, timeout_ms: u64) -> Bus {
    bus(
        "rs485",
        BusSpec::ModbusRtu {
            line: line(path),
            frame_gap: Duration::from_micros(1750),
        },
        timeout_ms,
    )
}

fn read(unit: u8, table: Table, address: u16, count: u16) -> Op {
    Op::Read {
        unit,
        table,
        address,
        count,
    }
}

async fn run(handle: &bus::Handle, ops: Vec<Op>, within: Duration) -> Result<Vec<Output>, Error> {
    handle
        .submit(ops, Instant::now() + within, Label::default())
        .await
}

/// Waits until the bus reports its transport open.
async fn up(handle: &bus::Handle) {
    let mut w = handle.up_watch();
    tokio::time::timeout(Duration::from_secs(5), w.wait_for(|up| *up))
        .await
        .expect("bus did not come up")
        .unwrap();
}

#[tokio::test]
async fn rtu_line_serves_two_units_with_every_table_and_write_read_back() {
    let regs = Registers::with_units([1, 2]);
    regs.set_holding(1, 100, &[0x1234, 0x5678]);
    regs.set_input(2, 7, &[42]);
    regs.set_coils(1, 0, &[true, false, true]);
    regs.set_discrete(2, 3, &[true]);
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let (h, _task) = bus::start(&rtu(line.path(), 500), CancellationToken::new());
    up(&h).await;
    let out = run(
        &h,
        vec![
            read(1, Table::Holding, 100, 2),
            read(2, Table::Input, 7, 1),
            read(1, Table::Coil, 0, 3),
            read(2, Table::Discrete, 3, 1),
        ],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        vec![
            Output::Registers(vec![0x1234, 0x5678]),
            Output::Registers(vec![42]),
            Output::Bits(vec![true, false, true]),
            Output::Bits(vec![true]),
        ]
    );
    let write = Op::Write {
        unit: 2,
        address: 10,
        data: WriteData::Registers(vec![7, 8, 9]),
    };
    let out = run(
        &h,
        vec![write, read(2, Table::Holding, 10, 3)],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(out, vec![Output::Written, Output::Registers(vec![7, 8, 9])]);
    assert_eq!(regs.holding(2, 10, 3), vec![7, 8, 9]);
    let coil = Op::Write {
        unit: 1,
        address: 5,
        data: WriteData::Coils(vec![true]),
    };
    run(&h, vec![coil], Duration::from_secs(2)).await.unwrap();
    assert_eq!(regs.coils(1, 5, 1), vec![true]);
}

#[tokio::test]
async fn concurrent_jobs_on_one_line_run_whole_and_in_order_without_interleaving() {
    let regs = Registers::with_units([1, 2]);
    for unit in [1u8, 2] {
        let values: Vec<u16> = (0..10).map(|i| u16::from(unit) * 100 + i).collect();
        regs.set_holding(unit, 0, &values);
    }
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let mut cfg = rtu(line.path(), 500);
    cfg.queue_capacity = 32;
    let (h, _task) = bus::start(&cfg, CancellationToken::new());
    up(&h).await;
    let mut jobs = Vec::new();
    for i in 0..20u16 {
        let h = h.clone();
        let unit = if i % 2 == 0 { 1 } else { 2 };
        jobs.push(tokio::spawn(async move {
            // Each job is a write then its read-back; another job must never land in between.
            let write = Op::Write {
                unit,
                address: 50,
                data: WriteData::Registers(vec![i]),
            };
            let out = run(
                &h,
                vec![
                    write,
                    read(unit, Table::Holding, 50, 1),
                    read(unit, Table::Holding, 0, 10),
                ],
                Duration::from_secs(10),
            )
            .await;
            (unit, i, out)
        }));
    }
    for job in jobs {
        let (unit, i, out) = job.await.unwrap();
        let out = out.unwrap();
        assert_eq!(out[1], Output::Registers(vec![i]), "read-back of job {i}");
        let want: Vec<u16> = (0..10).map(|k| u16::from(unit) * 100 + k).collect();
        assert_eq!(out[2], Output::Registers(want), "unit {unit} data");
    }
    // The device saw each job's three requests back to back.
    let log = regs.requests();
    assert_eq!(log.len(), 60);
    for job in log.chunks(3) {
        assert!(
            job.iter().all(|r| r.unit == job[0].unit),
            "interleaved: {job:?}"
        );
        assert_eq!(
            (job[0].function, job[1].function, job[2].function),
            (6, 3, 3)
        );
    }
}

#[tokio::test]
async fn a_late_reply_is_never_taken_as_the_answer_to_the_next_request() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 100, &[100]);
    regs.set_holding(1, 500, &[500]);
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let (h, _task) = bus::start(&rtu(line.path(), 200), CancellationToken::new());
    up(&h).await;
    // The reply to address 500 comes 250 ms after the request: after our 200 ms timeout. The
    // next request is answered 100 ms after it is sent, so if it went out right after the
    // timeout, the late reply would arrive first and be taken as its answer. The guard time
    // (the line kept quiet for half the bus timeout) must swallow the late reply instead.
    regs.set_fault_times(1, Fault::Delay(Duration::from_millis(250)), 1);
    let started = Instant::now();
    let first = run(
        &h,
        vec![read(1, Table::Holding, 500, 1)],
        Duration::from_secs(5),
    )
    .await;
    assert!(matches!(first, Err(Error::Timeout(_))), "{first:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "timeout took {:?}",
        started.elapsed()
    );
    regs.set_fault_times(1, Fault::Delay(Duration::from_millis(100)), 1);
    let second = run(
        &h,
        vec![read(1, Table::Holding, 100, 1)],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(second, vec![Output::Registers(vec![100])]);
}

#[tokio::test]
async fn a_silent_unit_costs_its_timeout_and_its_neighbour_keeps_answering() {
    let regs = Registers::with_units([1, 2]);
    regs.set_holding(2, 0, &[22]);
    regs.set_fault(1, Fault::Silent);
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let (h, _task) = bus::start(&rtu(line.path(), 150), CancellationToken::new());
    up(&h).await;
    let (dead, alive) = tokio::join!(
        run(
            &h,
            vec![read(1, Table::Holding, 0, 1)],
            Duration::from_secs(5)
        ),
        async {
            // Queued behind the dead unit's request: waits at most its timeout plus the guard.
            tokio::task::yield_now().await;
            let t = Instant::now();
            (
                run(
                    &h,
                    vec![read(2, Table::Holding, 0, 1)],
                    Duration::from_secs(5),
                )
                .await,
                t.elapsed(),
            )
        }
    );
    assert!(matches!(dead, Err(Error::Timeout(_))), "{dead:?}");
    assert_eq!(alive.0.unwrap(), vec![Output::Registers(vec![22])]);
    assert!(
        alive.1 < Duration::from_millis(600),
        "neighbour waited {:?}",
        alive.1
    );
}

#[tokio::test]
async fn exceptions_come_back_as_exceptions_and_garbled_replies_are_retried() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[9]);
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let (h, _task) = bus::start(&rtu(line.path(), 200), CancellationToken::new());
    up(&h).await;
    regs.set_fault_times(1, Fault::Exception(2), 1);
    let r = run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(2),
    )
    .await;
    assert!(matches!(r, Err(Error::Exception { code: 2 })), "{r:?}");
    // Two bad CRCs then a good reply: within the two retries.
    regs.set_fault_times(1, Fault::Garbage(Garbage::BadCrc), 2);
    let r = run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(r, vec![Output::Registers(vec![9])]);
    // Always garbled: 502-class error after the retries, and the line still works afterwards.
    regs.set_fault(1, Fault::Garbage(Garbage::BadCrc));
    let r = run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(5),
    )
    .await;
    assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
    regs.clear_faults(1);
    let r = run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(r, vec![Output::Registers(vec![9])]);
}

#[tokio::test]
async fn a_job_whose_deadline_passed_in_the_queue_is_never_executed() {
    let regs = Registers::with_units([1]);
    regs.set_fault_times(1, Fault::Delay(Duration::from_millis(150)), 1);
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let (h, _task) = bus::start(&rtu(line.path(), 1000), CancellationToken::new());
    up(&h).await;
    let slow = run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(5),
    );
    let doomed = async {
        tokio::task::yield_now().await;
        let write = Op::Write {
            unit: 1,
            address: 9,
            data: WriteData::Registers(vec![1]),
        };
        run(&h, vec![write], Duration::from_millis(50)).await
    };
    let (slow, doomed) = tokio::join!(slow, doomed);
    slow.unwrap();
    assert!(matches!(doomed, Err(Error::Expired)), "{doomed:?}");
    assert_eq!(
        regs.requests().len(),
        1,
        "the expired write reached the device"
    );
    assert_eq!(regs.holding(1, 9, 1), vec![0]);
}

#[tokio::test]
async fn a_full_queue_answers_at_once() {
    let regs = Registers::with_units([1]);
    regs.set_fault(1, Fault::Delay(Duration::from_millis(100)));
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let mut cfg = rtu(line.path(), 1000);
    cfg.queue_capacity = 2;
    let (h, _task) = bus::start(&cfg, CancellationToken::new());
    up(&h).await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let h = h.clone();
        calls.spawn(async move {
            run(
                &h,
                vec![read(1, Table::Holding, 0, 1)],
                Duration::from_secs(5),
            )
            .await
        });
    }
    let results: Vec<_> = calls.join_all().await;
    let full = results
        .iter()
        .filter(|r| matches!(r, Err(Error::QueueFull(2))))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(full >= 3, "{results:?}");
    assert_eq!(full + ok, 6, "{results:?}");
}

#[tokio::test]
async fn a_job_that_cannot_finish_behind_the_queue_is_refused_at_once() {
    let regs = Registers::with_units([1]);
    regs.set_fault(1, Fault::Delay(Duration::from_millis(100)));
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let (h, _task) = bus::start(&rtu(line.path(), 1000), CancellationToken::new());
    up(&h).await;
    // One job teaches the bus how long a job takes here (~100 ms).
    run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // Eight at once with 380 ms each: only what can finish behind the jobs ahead is queued.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let h = h.clone();
        calls.spawn(async move {
            let asked = std::time::Instant::now();
            let result = run(
                &h,
                vec![read(1, Table::Holding, 0, 1)],
                Duration::from_millis(380),
            )
            .await;
            (result, asked.elapsed())
        });
    }
    let results = calls.join_all().await;
    let ok = results.iter().filter(|(r, _)| r.is_ok()).count();
    let busy: Vec<_> = results
        .iter()
        .filter(|(r, _)| matches!(r, Err(Error::Busy { .. })))
        .collect();
    assert!(ok >= 2, "{results:?}");
    assert!(!busy.is_empty(), "{results:?}");
    assert_eq!(ok + busy.len(), 8, "only 200s and refusals: {results:?}");
    assert!(
        busy.iter()
            .all(|(_, took)| *took < Duration::from_millis(50)),
        "refusals must be immediate: {results:?}"
    );
    // The unit was asked for the jobs that succeeded, and nothing else.
    assert_eq!(regs.requests().len(), 1 + ok);
}

#[tokio::test]
async fn modbus_tcp_reads_writes_and_fails_fast_when_the_device_is_gone() {
    let regs = Registers::with_units([1, 5]);
    regs.set_holding(5, 0, &[55, 56]);
    let server = TcpServer::start(regs.clone()).await.unwrap();
    let addr = server.addr();
    let cfg = bus(
        "plc",
        BusSpec::ModbusTcp {
            address: addr.to_string(),
            framing: TcpFraming::Mbap,
        },
        300,
    );
    let (h, _task) = bus::start(&cfg, CancellationToken::new());
    up(&h).await;
    let r = run(
        &h,
        vec![read(5, Table::Holding, 0, 2)],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(r, vec![Output::Registers(vec![55, 56])]);
    regs.set_fault_times(5, Fault::Exception(3), 1);
    assert!(matches!(
        run(
            &h,
            vec![read(5, Table::Holding, 0, 2)],
            Duration::from_secs(2)
        )
        .await,
        Err(Error::Exception { code: 3 })
    ));
    // A late reply on TCP: the connection is dropped, so the next request gets its own data.
    regs.set_fault_times(5, Fault::Delay(Duration::from_millis(500)), 1);
    assert!(matches!(
        run(
            &h,
            vec![read(5, Table::Holding, 1, 1)],
            Duration::from_secs(2)
        )
        .await,
        Err(Error::Timeout(_))
    ));
    let r = run(
        &h,
        vec![read(5, Table::Holding, 0, 1)],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(r, vec![Output::Registers(vec![55])]);
    // The device goes away: requests fail fast with Unavailable, not at their deadline.
    server.stop().await;
    let t = Instant::now();
    let r = run(
        &h,
        vec![read(5, Table::Holding, 0, 1)],
        Duration::from_secs(5),
    )
    .await;
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "took {:?}",
        t.elapsed()
    );
    // It comes back at the same address: the bus reconnects by itself.
    let _server = TcpServer::bind(addr, leafgate_sim::modbus::Framing::Mbap, regs.clone())
        .await
        .unwrap();
    up(&h).await;
    let r = run(
        &h,
        vec![read(5, Table::Holding, 0, 1)],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(r, vec![Output::Registers(vec![55])]);
}

#[tokio::test]
async fn rtu_over_tcp_works_like_a_serial_line() {
    let regs = Registers::with_units([3]);
    regs.set_input(3, 1, &[31]);
    let server = TcpServer::start_rtu_over_tcp(regs.clone()).await.unwrap();
    let cfg = bus(
        "gw",
        BusSpec::ModbusTcp {
            address: server.addr().to_string(),
            framing: TcpFraming::Rtu,
        },
        300,
    );
    let (h, _task) = bus::start(&cfg, CancellationToken::new());
    up(&h).await;
    let r = run(
        &h,
        vec![read(3, Table::Input, 1, 1)],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(r, vec![Output::Registers(vec![31])]);
}

/// The simulated power supply on a pty, behind a serial bus framed by `\r\n` with
/// `line_ending`; the bus is up.
async fn psu_bus(line_ending: Option<&[u8]>) -> (Psu, SerialLine, bus::Handle) {
    let psu = Psu::new();
    let psu_line = SerialLine::instrument(psu.clone()).unwrap();
    let cfg = bus(
        "psu",
        BusSpec::Serial {
            line: line(psu_line.path()),
            framing: SerialFraming::Terminator(b"\r\n".to_vec()),
            line_ending: line_ending.map(<[u8]>::to_vec),
        },
        300,
    );
    let (h, _task) = bus::start(&cfg, CancellationToken::new());
    up(&h).await;
    (psu, psu_line, h)
}

#[tokio::test]
async fn a_serial_instrument_answers_line_framed_exchanges_and_recovers_from_garbage() {
    let (psu, _psu_line, h) = psu_bus(None).await;
    let send = |text: &str| Op::Serial {
        request: text.as_bytes().to_vec(),
        reply: true,
        text: true,
    };
    let r = run(
        &h,
        vec![send("VOLT 5.000\r\n"), send("VOLT?\r\n")],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(
        r,
        vec![
            Output::Reply(b"OK".to_vec()),
            Output::Reply(b"VOLT 5.000".to_vec())
        ]
    );
    assert_eq!(psu.state().millivolts, 5000);
    psu.set_fault_times(instrument::Fault::Silent, 1);
    assert!(matches!(
        run(&h, vec![send("VOLT?\r\n")], Duration::from_secs(2)).await,
        Err(Error::Timeout(_))
    ));
    let r = run(&h, vec![send("*IDN?\r\n")], Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(r, vec![Output::Reply(b"LEAFGATE,PSU-1,0001,1.0".to_vec())]);
}

/// A bus with a line ending ends text requests with it, once, and leaves raw bytes as given.
#[tokio::test]
async fn a_serial_line_ending_ends_text_requests_and_frames_replies() {
    let (psu, _psu_line, h) = psu_bus(Some(b"\r\n")).await;
    let op = |request: &str, text: bool| Op::Serial {
        request: request.as_bytes().to_vec(),
        reply: true,
        text,
    };
    let r = run(
        &h,
        vec![op("VOLT 5.000", true), op("VOLT?\r\n", true)],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(
        r,
        vec![
            Output::Reply(b"OK".to_vec()),
            Output::Reply(b"VOLT 5.000".to_vec())
        ]
    );
    let lines: Vec<String> = psu.commands().into_iter().map(|c| c.line).collect();
    assert_eq!(lines, ["VOLT 5.000", "VOLT?"]);
    // Raw bytes are sent as they are: without a line end the instrument never answers.
    assert!(matches!(
        run(&h, vec![op("VOLT?", false)], Duration::from_secs(2)).await,
        Err(Error::Timeout(_))
    ));
}

#[tokio::test]
async fn an_unplugged_serial_adapter_fails_fast_and_is_reopened_when_it_returns() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[1]);
    let mut line = SerialLine::modbus_rtu(regs.clone())
        .unwrap()
        .linked(std::env::temp_dir().join(format!("leafgate-test-{}", std::process::id())))
        .unwrap();
    let path = line.link().unwrap().to_path_buf();
    let (h, _task) = bus::start(&rtu(&path, 200), CancellationToken::new());
    up(&h).await;
    line.unplug().await;
    let r = run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(2),
    )
    .await;
    assert!(
        matches!(r, Err(Error::Unavailable { .. } | Error::Timeout(_))),
        "{r:?}"
    );
    // While unplugged, requests fail fast.
    let mut w = h.up_watch();
    tokio::time::timeout(Duration::from_secs(5), w.wait_for(|up| !*up))
        .await
        .unwrap()
        .unwrap();
    let t = Instant::now();
    let r = run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(2),
    )
    .await;
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    assert!(t.elapsed() < Duration::from_millis(100));
    line.replug().await.unwrap();
    up(&h).await;
    let r = run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(r, vec![Output::Registers(vec![1])]);
}

#[tokio::test]
async fn a_write_whose_echo_is_garbled_is_never_sent_twice() {
    let regs = Registers::with_units([1]);
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let (h, _task) = bus::start(&rtu(line.path(), 200), CancellationToken::new());
    up(&h).await;
    regs.set_fault(1, Fault::Garbage(Garbage::BadCrc));
    let write = Op::Write {
        unit: 1,
        address: 3,
        data: WriteData::Registers(vec![5]),
    };
    let r = run(&h, vec![write], Duration::from_secs(5)).await;
    assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
    // A read in the same state is retried (retries = 2): three requests in all.
    let r = run(
        &h,
        vec![read(1, Table::Holding, 3, 1)],
        Duration::from_secs(5),
    )
    .await;
    assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
    let functions: Vec<u8> = regs.requests().iter().map(|r| r.function).collect();
    assert_eq!(functions, vec![6, 3, 3, 3]);
}

#[tokio::test]
async fn a_unit_that_keeps_timing_out_is_marked_down_fails_fast_and_comes_back() {
    let regs = Registers::with_units([1, 2]);
    regs.set_holding(1, 0, &[11]);
    regs.set_holding(2, 0, &[22]);
    regs.set_fault(1, Fault::Silent);
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let mut cfg = rtu(line.path(), 100);
    cfg.down_after = 2;
    cfg.down_for = Duration::from_millis(400);
    let (h, _task) = bus::start(&cfg, CancellationToken::new());
    up(&h).await;
    for _ in 0..2 {
        let r = run(
            &h,
            vec![read(1, Table::Holding, 0, 1)],
            Duration::from_secs(2),
        )
        .await;
        assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    }
    // Marked down: answered at once, and the request never reaches the line.
    let sent = regs.request_count();
    let t = Instant::now();
    let r = run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(2),
    )
    .await;
    assert!(
        matches!(&r, Err(Error::Unavailable { what, .. }) if what.contains("marked down")),
        "{r:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(regs.request_count(), sent);
    // Its neighbour on the line is unaffected.
    let r = run(
        &h,
        vec![read(2, Table::Holding, 0, 1)],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(r, vec![Output::Registers(vec![22])]);
    // The unit recovers; after the cool-down the next request is the probe that brings it back.
    regs.clear_faults(1);
    // The cool-down is a timer and is itself what this test checks: wait it out.
    tokio::time::sleep(cfg.down_for).await;
    let r = run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(r, vec![Output::Registers(vec![11])]);
}

/// The sim's side of a pty, with the time of every read and write that moved bytes.
struct Tap {
    inner: leafgate_sim::pty::Pty,
    /// (when, true for a write).
    events: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, bool)>>>,
}

impl tokio::io::AsyncRead for Tap {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = std::time::Instant::now();
            self.events.lock().unwrap().push((now, false));
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Tap {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            let now = std::time::Instant::now();
            self.events.lock().unwrap().push((now, true));
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The Modbus silent interval is a minimum: a request that follows a reply sooner runs into it
/// on the wire. With units answering at once and a queue that is never empty, every request
/// must still come at least 3.5 characters after the previous reply's last byte. The gap is
/// measured from the sim's write of the reply returning to its read of the next request
/// returning: leafgate cannot see the reply before the first nor send before the second, so a
/// loaded machine only lengthens it. Lower bound only; how close leafgate gets is the
/// benchmark's business (`leafgate-bench rtu`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_waits_at_least_the_silent_interval_after_the_last_reply() {
    let regs = Registers::with_units([1, 2]);
    regs.set_holding(1, 0, &[1; 10]);
    regs.set_holding(2, 0, &[2; 10]);
    let pty = leafgate_sim::pty::Pty::open().unwrap();
    let path = pty.path().to_path_buf();
    let events = std::sync::Arc::default();
    let tap = Tap {
        inner: pty,
        events: std::sync::Arc::clone(&events),
    };
    let sim = tokio::spawn(leafgate_sim::modbus::serve_rtu(tap, regs));
    let mut serial = line(&path);
    serial.baud_rate = 9600;
    let gap = serial.silent_interval();
    // 3.5 characters of 10 bits (8N1): 3645.83 µs, rounded up to whole microseconds.
    assert_eq!(gap, Duration::from_micros(3646));
    let cfg = bus(
        "rs485",
        BusSpec::ModbusRtu {
            line: serial,
            frame_gap: gap,
        },
        1000,
    );
    let (h, _task) = bus::start(&cfg, CancellationToken::new());
    up(&h).await;
    // Four callers keep the queue full; each job is two exchanges, so gaps both between jobs
    // (the actor's queue hop) and within one are covered.
    let mut callers = Vec::new();
    for k in 0..4u8 {
        let h = h.clone();
        callers.push(tokio::spawn(async move {
            for _ in 0..10 {
                let unit = 1 + k % 2;
                let ops = vec![
                    read(unit, Table::Holding, 0, 10),
                    read(3 - unit, Table::Holding, 0, 10),
                ];
                let out = run(&h, ops, Duration::from_secs(10)).await.unwrap();
                assert_eq!(out.len(), 2);
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    sim.abort();
    let events = std::mem::take(&mut *events.lock().unwrap());
    let mut gaps = Vec::new();
    let mut last_write = None;
    for (at, write) in events {
        if write {
            last_write = Some(at);
        } else if let Some(reply_end) = last_write.take() {
            gaps.push(at.duration_since(reply_end));
        }
    }
    assert!(gaps.len() >= 79, "only {} gaps seen", gaps.len());
    let shortest = gaps.iter().min().unwrap();
    assert!(
        *shortest >= gap,
        "a request followed a reply after {shortest:?}, less than the silent interval {gap:?}"
    );
}

fn tcp(addr: std::net::SocketAddr, framing: TcpFraming) -> Bus {
    bus(
        "gw",
        BusSpec::ModbusTcp {
            address: addr.to_string(),
            framing,
        },
        300,
    )
}

/// `n` zero registers as an FC3 reply PDU, with a byte count that matches them.
fn holding_reply(n: u8) -> Vec<u8> {
    let mut pdu = vec![3, 2 * n];
    pdu.resize(2 + usize::from(2 * n), 0);
    pdu
}

/// A reply followed by more bytes in the same segment is served, and the extra bytes are never
/// read as the start of the next reply, even when they look exactly like it.
#[tokio::test]
async fn modbus_tcp_serves_a_reply_followed_by_stray_bytes_and_never_reads_them_as_the_next() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[1, 2]);
    let server = TcpServer::start(regs.clone()).await.unwrap();
    let (h, _task) = bus::start(
        &tcp(server.addr(), TcpFraming::Mbap),
        CancellationToken::new(),
    );
    up(&h).await;
    let two = read(1, Table::Holding, 0, 2);
    // A whole reply to the next transaction (id 2: the first read is transaction 1), carrying
    // other values.
    let fake_next = vec![0, 2, 0, 0, 0, 7, 1, 3, 4, 0xDE, 0xAD, 0xBE, 0xEF];
    regs.set_fault_times(1, Fault::Garbage(Garbage::NoiseAfter(fake_next)), 1);
    let first = run(&h, vec![two.clone()], Duration::from_secs(2)).await;
    assert_eq!(first.unwrap(), vec![Output::Registers(vec![1, 2])]);
    regs.set_holding(1, 0, &[3, 4]);
    let second = run(&h, vec![two], Duration::from_secs(2)).await;
    assert_eq!(second.unwrap(), vec![Output::Registers(vec![3, 4])]);
    assert!(h.is_up());
}

/// Runs `op` while unit 1 sends `garbage`: it must fail as an unusable reply (502) whose message
/// contains `says`, after `tries` requests reached the device (reads are retried, writes never
/// sent twice), and the bus must serve the next clean request at once.
async fn refused_as_unusable(
    h: &bus::Handle,
    regs: &Registers,
    op: Op,
    garbage: Garbage,
    says: &str,
) {
    let what = format!("{garbage:?} in reply to {op:?}");
    regs.set_fault(1, Fault::Garbage(garbage));
    let before = regs.requests().len();
    let r = run(h, vec![op.clone()], Duration::from_secs(5)).await;
    match &r {
        Err(Error::Protocol(msg)) if msg.contains(says) => {}
        other => panic!("{what}: expected an unusable reply saying {says:?}, got {other:?}"),
    }
    let tries = if matches!(op, Op::Read { .. }) { 3 } else { 1 };
    assert_eq!(regs.requests().len() - before, tries, "{what}");
    regs.clear_faults(1);
    let r = run(
        h,
        vec![read(1, Table::Holding, 0, 2)],
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        r.unwrap(),
        vec![Output::Registers(regs.holding(1, 0, 2))],
        "{what}: the next request must be served"
    );
}

#[tokio::test]
async fn modbus_tcp_refuses_a_wrong_register_count_or_write_echo_with_502() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let server = TcpServer::start(regs.clone()).await.unwrap();
    let (h, _task) = bus::start(
        &tcp(server.addr(), TcpFraming::Mbap),
        CancellationToken::new(),
    );
    up(&h).await;
    let ten = read(1, Table::Holding, 0, 10);
    refused_as_unusable(
        &h,
        &regs,
        ten.clone(),
        Garbage::Pdu(holding_reply(9)),
        "18 bytes for 10 registers",
    )
    .await;
    refused_as_unusable(
        &h,
        &regs,
        ten,
        Garbage::Pdu(holding_reply(11)),
        "22 bytes for 10 registers",
    )
    .await;
    let one = Op::Write {
        unit: 1,
        address: 3,
        data: WriteData::Registers(vec![5]),
    };
    refused_as_unusable(
        &h,
        &regs,
        one.clone(),
        Garbage::Pdu(vec![6, 0, 4, 0, 5]),
        "address 4",
    )
    .await;
    refused_as_unusable(&h, &regs, one, Garbage::Pdu(vec![6, 0, 3, 0, 6]), "value 6").await;
    let two = Op::Write {
        unit: 1,
        address: 3,
        data: WriteData::Registers(vec![5, 6]),
    };
    refused_as_unusable(
        &h,
        &regs,
        two.clone(),
        Garbage::Pdu(vec![16, 0, 4, 0, 2]),
        "address 4",
    )
    .await;
    refused_as_unusable(
        &h,
        &regs,
        two,
        Garbage::Pdu(vec![16, 0, 3, 0, 3]),
        "quantity 3",
    )
    .await;
    let coils = Op::Write {
        unit: 1,
        address: 0,
        data: WriteData::Coils(vec![true, false, true]),
    };
    refused_as_unusable(
        &h,
        &regs,
        coils,
        Garbage::Pdu(vec![15, 0, 0, 0, 2]),
        "quantity 2",
    )
    .await;
}

#[tokio::test]
async fn modbus_tcp_answers_a_garbled_reply_with_502_never_503() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[1, 2]);
    let server = TcpServer::start(regs.clone()).await.unwrap();
    let (h, _task) = bus::start(
        &tcp(server.addr(), TcpFraming::Mbap),
        CancellationToken::new(),
    );
    up(&h).await;
    let two = read(1, Table::Holding, 0, 2);
    refused_as_unusable(
        &h,
        &regs,
        two.clone(),
        Garbage::TransactionId,
        "transaction id",
    )
    .await;
    refused_as_unusable(&h, &regs, two.clone(), Garbage::Unit(2), "unit 2").await;
    refused_as_unusable(&h, &regs, two.clone(), Garbage::MbapLength(0), "length 0").await;
    refused_as_unusable(&h, &regs, two.clone(), Garbage::MbapLength(1), "length 1").await;
    refused_as_unusable(
        &h,
        &regs,
        two.clone(),
        Garbage::MbapLength(300),
        "length 300",
    )
    .await;
    refused_as_unusable(&h, &regs, two.clone(), Garbage::BadCrc, "protocol id").await;
    refused_as_unusable(
        &h,
        &regs,
        two.clone(),
        Garbage::Pdu(vec![3, 6, 0, 1, 0, 2]),
        "byte count 6",
    )
    .await;
    refused_as_unusable(
        &h,
        &regs,
        two.clone(),
        Garbage::Pdu(vec![0x41, 0, 0]),
        "function code 65",
    )
    .await;
    refused_as_unusable(
        &h,
        &regs,
        two,
        Garbage::Pdu(vec![0x83]),
        "exception reply without a code",
    )
    .await;
    let write = Op::Write {
        unit: 1,
        address: 3,
        data: WriteData::Registers(vec![5]),
    };
    refused_as_unusable(&h, &regs, write, Garbage::TransactionId, "transaction id").await;
    assert!(h.is_up(), "a garbled reply must not take the bus down");
}

/// Unit 1 garbles every reply, unit 2 behind the same endpoint is healthy (a TCP-to-RTU gateway
/// with one bad meter): under steady load on both, unit 1 gets 502 each time and unit 2 never
/// notices.
async fn a_garbling_unit_costs_its_line_mates_nothing(framing: TcpFraming, garbage: Garbage) {
    let regs = Registers::with_units([1, 2]);
    regs.set_holding(2, 0, &[22]);
    regs.set_fault(1, Fault::Garbage(garbage.clone()));
    let server = match framing {
        TcpFraming::Mbap => TcpServer::start(regs.clone()).await,
        TcpFraming::Rtu => TcpServer::start_rtu_over_tcp(regs.clone()).await,
    }
    .unwrap();
    let (h, _task) = bus::start(&tcp(server.addr(), framing), CancellationToken::new());
    up(&h).await;
    let calls = |unit: u8| {
        let h = h.clone();
        async move {
            let mut results = Vec::new();
            for _ in 0..60 {
                let r = run(
                    &h,
                    vec![read(unit, Table::Holding, 0, 1)],
                    Duration::from_secs(2),
                )
                .await;
                results.push(r);
            }
            results
        }
    };
    let (garbled, healthy) = tokio::join!(calls(1), calls(2));
    let failed: Vec<_> = healthy.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{framing:?}, {garbage:?}: unit 2 failed {} of 60 calls, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        healthy
            .iter()
            .all(|r| matches!(r, Ok(out) if *out == [Output::Registers(vec![22])]))
    );
    assert!(
        garbled.iter().all(|r| matches!(r, Err(Error::Protocol(_)))),
        "{framing:?}, {garbage:?}: unit 1 must get 502 every time: {garbled:?}"
    );
}

#[tokio::test]
async fn a_garbling_unit_on_a_modbus_tcp_endpoint_costs_its_line_mates_nothing() {
    a_garbling_unit_costs_its_line_mates_nothing(TcpFraming::Mbap, Garbage::TransactionId).await;
    a_garbling_unit_costs_its_line_mates_nothing(TcpFraming::Mbap, Garbage::MbapLength(0)).await;
}

#[tokio::test]
async fn a_garbling_unit_on_an_rtu_over_tcp_endpoint_costs_its_line_mates_nothing() {
    a_garbling_unit_costs_its_line_mates_nothing(TcpFraming::Rtu, Garbage::BadCrc).await;
    a_garbling_unit_costs_its_line_mates_nothing(TcpFraming::Rtu, Garbage::Unit(2)).await;
}

/// A bus configured without `queue_capacity`, from a config file as an operator writes it.
fn default_tcp_bus(addr: std::net::SocketAddr) -> Bus {
    let toml = format!(
        r#"
        [hub]
        hostname = "h.azure-devices.net"
        [[bus]]
        id = "plc"
        kind = "modbus_tcp"
        address = "{addr}"
        [[device]]
        id = "d"
        shared_access_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        bus = "plc"
        unit = 1
        raw_methods = true
        "#
    );
    let file = leafgate::config::load::parse(&toml).unwrap();
    let config =
        leafgate::config::validate::validate(vec![("leafgate.toml".into(), file)]).unwrap();
    config.buses.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_burst_of_quick_jobs_with_long_deadlines_is_served_whole_by_the_default_queue() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[7]);
    let server = TcpServer::start(regs.clone()).await.unwrap();
    let cfg = default_tcp_bus(server.addr());
    let (h, _task) = bus::start(&cfg, CancellationToken::new());
    up(&h).await;
    // One job teaches the bus how long a job takes here (well under a millisecond).
    run(
        &h,
        vec![read(1, Table::Holding, 0, 1)],
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // 1,000 callers at once, each with 10 s: the bus needs well under a second for all of them.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let h = h.clone();
        calls.spawn(async move {
            run(
                &h,
                vec![read(1, Table::Holding, 0, 1)],
                Duration::from_secs(10),
            )
            .await
        });
    }
    let results = calls.join_all().await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 1000 failed, first: {:?}",
        failed.len(),
        failed.first()
    );
}

// Polls: the low-priority lane telemetry reads go through.

async fn poll(
    handle: &bus::Handle,
    ops: Vec<Op>,
    within: Duration,
) -> Result<Vec<Result<Output, Error>>, Error> {
    handle
        .poll(ops, Instant::now() + within, Label::default())
        .await
}

/// A line kept busy with polls (every slot of the lane full, ten reads a poll) still serves a
/// method next: after at most the one poll read on the wire when it arrived. Checked on the
/// device's own request log, by order, not by time (a pty does not pace bytes at the baud rate;
/// 9600 baud only lengthens the silent interval between frames).
#[tokio::test]
async fn a_method_on_a_fully_polled_line_waits_behind_at_most_one_poll_read() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 500, &[77]);
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let mut cfg = rtu(line.path(), 500);
    if let BusSpec::ModbusRtu { line, .. } = &mut cfg.spec {
        line.baud_rate = 9600;
    }
    let (h, _task) = bus::start(&cfg, CancellationToken::new());
    up(&h).await;
    let stop = CancellationToken::new();
    let mut pollers = Vec::new();
    for _ in 0..cfg.queue_capacity {
        let (h, stop) = (h.clone(), stop.clone());
        pollers.push(tokio::spawn(async move {
            let ops: Vec<Op> = (0..10).map(|a| read(1, Table::Holding, a, 4)).collect();
            while !stop.is_cancelled() {
                let got = poll(&h, ops.clone(), Duration::from_secs(30)).await;
                assert!(got.is_ok_and(|reads| reads.iter().all(Result::is_ok)));
            }
        }));
    }
    for round in 0..5 {
        // Polls are flowing and queued behind one another.
        let seen = regs.request_count();
        regs.wait_requests(seen + 15).await;
        let before = regs.request_count();
        let out = run(
            &h,
            vec![read(1, Table::Holding, 500, 1)],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out, vec![Output::Registers(vec![77])]);
        let log = regs.requests();
        let method = log
            .iter()
            .rev()
            .find(|r| r.address == 500)
            .expect("the method's read is in the log");
        // Requests 0..before were complete when the method was submitted; request `before`
        // may have been on the wire.
        assert!(
            method.seq <= before + 1,
            "round {round}: the method was request {} but only {before} had been received when it was submitted",
            method.seq
        );
    }
    stop.cancel();
    for p in pollers {
        p.await.unwrap();
    }
}

/// Each read of a poll is answered on its own: one the unit refuses does not void the others.
/// A poll of a unit marked down is refused without touching the line.
#[tokio::test]
async fn poll_reads_are_answered_one_by_one_and_a_unit_marked_down_costs_no_line_time() {
    use leafgate_sim::modbus::Table as SimTable;
    let regs = Registers::with_units([1, 2]);
    regs.set_holding(1, 0, &[1, 2]);
    regs.set_holding(1, 20, &[3]);
    regs.set_mapped(1, SimTable::HoldingRegisters, &[0..=1, 20..=20]);
    regs.set_fault(2, Fault::Silent);
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let mut cfg = rtu(line.path(), 100);
    cfg.down_after = 1;
    let (h, _task) = bus::start(&cfg, CancellationToken::new());
    up(&h).await;

    let reads = poll(
        &h,
        vec![
            read(1, Table::Holding, 0, 2),
            read(1, Table::Holding, 0, 21),
            read(1, Table::Holding, 20, 1),
        ],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(reads.len(), 3);
    assert_eq!(reads[0].as_ref().ok(), Some(&Output::Registers(vec![1, 2])));
    assert!(
        matches!(reads[1], Err(Error::Exception { code: 2 })),
        "{:?}",
        reads[1]
    );
    assert_eq!(reads[2].as_ref().ok(), Some(&Output::Registers(vec![3])));

    // Unit 2 times out on the first read of its poll and is marked down: the poll's other
    // reads are not sent.
    let sent = regs.request_count();
    let reads = poll(
        &h,
        vec![read(2, Table::Holding, 0, 1), read(2, Table::Holding, 1, 1)],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(matches!(reads[0], Err(Error::Timeout(_))), "{:?}", reads[0]);
    assert!(
        matches!(&reads[1], Err(Error::Unavailable { what, .. }) if what.contains("marked down")),
        "{:?}",
        reads[1]
    );
    assert_eq!(regs.request_count(), sent + 1);
    // The next poll of it is refused whole, at no line time.
    let refused = poll(
        &h,
        vec![read(2, Table::Holding, 0, 1)],
        Duration::from_secs(5),
    )
    .await;
    assert!(
        matches!(&refused, Err(Error::Unavailable { what, .. }) if what.contains("marked down")),
        "{refused:?}"
    );
    assert_eq!(regs.request_count(), sent + 1);
}

/// A poll whose deadline passes while it waits is skipped, never run late; a method queued at
/// the same time is served.
#[tokio::test]
async fn a_poll_that_cannot_start_before_its_deadline_is_skipped() {
    let regs = Registers::with_units([1]);
    regs.set_fault(1, Fault::Silent);
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let (h, _task) = bus::start(&rtu(line.path(), 300), CancellationToken::new());
    up(&h).await;
    // A method that holds the line for the full bus timeout (the unit is silent)...
    let hold = {
        let h = h.clone();
        tokio::spawn(async move {
            run(
                &h,
                vec![read(1, Table::Holding, 0, 1)],
                Duration::from_secs(5),
            )
            .await
        })
    };
    regs.wait_requests(1).await;
    // ...while a poll due within 100 ms waits behind it.
    let skipped = poll(
        &h,
        vec![read(1, Table::Holding, 1, 1)],
        Duration::from_millis(100),
    )
    .await;
    assert!(matches!(skipped, Err(Error::Expired)), "{skipped:?}");
    assert!(matches!(hold.await.unwrap(), Err(Error::Timeout(_))));
    assert_eq!(regs.request_count(), 1, "the skipped poll reached the line");
}
