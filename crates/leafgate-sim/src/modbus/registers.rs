//! [`Registers`]: the shared state of every simulated unit behind one endpoint or line, their
//! faults, and the log of requests they received.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Table;
use super::fault::{Fault, Garbage};
use super::pdu::{self, Decoded};
use super::store::UnitData;
use crate::armed::Armed;

/// The units behind one Modbus endpoint or on one RTU line, shared between the serving tasks and
/// the test. Cloning is cheap and shares the state.
///
/// A unit exists once added with [`Registers::add_unit`] or [`Registers::with_units`], or when a
/// setter first names it. Units absent from the model are absent on the wire: on RTU nobody
/// answers, over Modbus TCP the endpoint answers exception 0B like a gateway would.
///
/// The lock is a std mutex held only for the length of one request, never across an await.
#[derive(Clone)]
pub struct Registers {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Number of requests logged so far; watchers wake on every new one.
    received: watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    units: BTreeMap<u8, Unit>,
    log: Vec<Request>,
}

#[derive(Default)]
struct Unit {
    data: UnitData,
    faults: Armed<Fault>,
}

/// One request as the device received it, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Position in the log, from 0.
    pub seq: usize,
    /// When the request was complete on the device side.
    pub at: Instant,
    /// Addressed unit (0 on RTU is broadcast).
    pub unit: u8,
    /// Function code as sent.
    pub function: u8,
    /// First address, 0 for functions without one.
    pub address: u16,
    /// Coils or registers requested or written: 1 for single writes, 0 without one.
    pub count: u16,
    /// What the device did about it.
    pub outcome: Outcome,
    /// The request PDU (function code onwards), for diagnostics.
    pub pdu: Vec<u8>,
}

/// What the device did about a request. Delays and garbled replies do not change this: a garbled
/// normal answer is still `Answered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Executed and answered normally.
    Answered,
    /// Refused with this exception code (not executed).
    Exception(u8),
    /// Dropped by a [`Fault::Silent`] unit: not executed, not answered.
    Silent,
    /// No unit with that id exists.
    NoSuchUnit,
    /// RTU broadcast (unit 0): writes executed by every unit that is not silent, never answered.
    Broadcast,
}

/// The device's reply to one request, before framing.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) pdu: Vec<u8>,
    pub(crate) delay: Duration,
    pub(crate) garbage: Option<Garbage>,
}

/// Which framing the request came in, for the few rules that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Rtu,
    Tcp,
}

impl Default for Registers {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Registers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Registers")
            .field("units", &state.units.keys().collect::<Vec<_>>())
            .field("requests", &state.log.len())
            .finish()
    }
}

impl Registers {
    /// A model without units.
    #[must_use]
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                received: watch::Sender::new(0),
            }),
        }
    }

    /// A model with these units, all registers and coils 0.
    #[must_use]
    pub fn with_units(units: impl IntoIterator<Item = u8>) -> Self {
        let registers = Self::new();
        for unit in units {
            registers.add_unit(unit);
        }
        registers
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a unit half-updated in a way that matters
        // to a simulator, so keep serving after one.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn with_unit<R>(&self, unit: u8, f: impl FnOnce(&mut Unit) -> R) -> R {
        f(self.lock().units.entry(unit).or_default())
    }

    /// Adds a unit (no-op if present).
    pub fn add_unit(&self, unit: u8) {
        self.with_unit(unit, |_| ());
    }

    /// Removes a unit and its data: from now on it is absent from the line, as if disconnected.
    pub fn remove_unit(&self, unit: u8) {
        self.lock().units.remove(&unit);
    }

    /// The ids of the units present.
    #[must_use]
    pub fn units(&self) -> Vec<u8> {
        self.lock().units.keys().copied().collect()
    }

    /// Sets holding registers from `address` (adds the unit if absent).
    pub fn set_holding(&self, unit: u8, address: u16, values: &[u16]) {
        self.with_unit(unit, |u| u.data.holding_registers.write(address, values));
    }

    /// Sets input registers from `address` (adds the unit if absent).
    pub fn set_input(&self, unit: u8, address: u16, values: &[u16]) {
        self.with_unit(unit, |u| u.data.input_registers.write(address, values));
    }

    /// Sets coils from `address` (adds the unit if absent).
    pub fn set_coils(&self, unit: u8, address: u16, values: &[bool]) {
        self.with_unit(unit, |u| u.data.coils.write(address, values));
    }

    /// Sets discrete inputs from `address` (adds the unit if absent).
    pub fn set_discrete(&self, unit: u8, address: u16, values: &[bool]) {
        self.with_unit(unit, |u| u.data.discrete_inputs.write(address, values));
    }

    /// `count` holding registers from `address`; zeros for an absent unit.
    #[must_use]
    pub fn holding(&self, unit: u8, address: u16, count: u16) -> Vec<u16> {
        self.read(unit, |d| d.holding_registers.read(address, count))
    }

    /// `count` input registers from `address`; zeros for an absent unit.
    #[must_use]
    pub fn input(&self, unit: u8, address: u16, count: u16) -> Vec<u16> {
        self.read(unit, |d| d.input_registers.read(address, count))
    }

    /// `count` coils from `address`; all off for an absent unit.
    #[must_use]
    pub fn coils(&self, unit: u8, address: u16, count: u16) -> Vec<bool> {
        self.read(unit, |d| d.coils.read(address, count))
    }

    /// `count` discrete inputs from `address`; all off for an absent unit.
    #[must_use]
    pub fn discrete(&self, unit: u8, address: u16, count: u16) -> Vec<bool> {
        self.read(unit, |d| d.discrete_inputs.read(address, count))
    }

    fn read<T>(&self, unit: u8, f: impl FnOnce(&UnitData) -> Vec<T>) -> Vec<T> {
        let state = self.lock();
        match state.units.get(&unit) {
            Some(u) => f(&u.data),
            None => f(&UnitData::default()),
        }
    }

    /// Restricts `table` of `unit` to `ranges`: requests touching any other address get
    /// exception 02 (illegal data address), as on a device with a sparse register map. An empty
    /// slice maps nothing. By default every address exists.
    pub fn set_mapped(&self, unit: u8, table: Table, ranges: &[RangeInclusive<u16>]) {
        self.with_unit(unit, |u| u.data.set_mapped(table, Some(ranges.to_vec())));
    }

    /// Makes every address of `table` exist again.
    pub fn clear_mapped(&self, unit: u8, table: Table) {
        self.with_unit(unit, |u| u.data.set_mapped(table, None));
    }

    /// Arms `fault` on `unit` until cleared, replacing an armed fault of the same kind (for
    /// [`Fault::ExceptionAt`]: of the same table and address). Takes effect from the next request.
    pub fn set_fault(&self, unit: u8, fault: Fault) {
        self.with_unit(unit, |u| u.faults.arm(fault, None, Fault::same_slot));
    }

    /// Arms `fault` on `unit` for the next `times` requests it applies to, e.g. one bad CRC
    /// followed by good replies to test a retry.
    pub fn set_fault_times(&self, unit: u8, fault: Fault, times: u32) {
        self.with_unit(unit, |u| u.faults.arm(fault, Some(times), Fault::same_slot));
    }

    /// Disarms every fault of `unit`.
    pub fn clear_faults(&self, unit: u8) {
        self.with_unit(unit, |u| u.faults.clear());
    }

    /// Every request received so far, in arrival order.
    #[must_use]
    pub fn requests(&self) -> Vec<Request> {
        self.lock().log.clone()
    }

    /// How many requests were received so far.
    #[must_use]
    pub fn request_count(&self) -> usize {
        self.lock().log.len()
    }

    /// Waits until at least `n` requests have been received in total, then returns the log.
    /// Use it instead of sleeping: "the device has seen request 3" is an event.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is consumed, the log keeps every request.
    pub async fn wait_requests(&self, n: usize) -> Vec<Request> {
        let mut received = self.shared.received.subscribe();
        // The sender lives in `self.shared`, so it cannot be dropped while we wait.
        let _ = received.wait_for(|count| *count >= n).await;
        self.requests()
    }

    /// Handles one decoded-from-the-wire request: logs it, applies faults, executes it, and
    /// returns the reply to send, if any.
    pub(crate) fn handle(&self, unit_id: u8, pdu: &[u8], transport: Transport) -> Option<Reply> {
        let decoded = pdu::decode(pdu);
        let mut state = self.lock();
        let (outcome, reply) = if transport == Transport::Rtu && unit_id == 0 {
            if let Ok(op) = decoded.op.as_ref()
                && op.is_write()
            {
                for unit in state.units.values_mut() {
                    if !unit.faults.any(|f| *f == Fault::Silent) {
                        let _ = pdu::execute(&mut unit.data, &decoded, op);
                    }
                }
            }
            (Outcome::Broadcast, None)
        } else if let Some(unit) = state.units.get_mut(&unit_id) {
            unit.respond(&decoded)
        } else if transport == Transport::Tcp {
            let code = pdu::GATEWAY_TARGET_FAILED;
            let reply = Reply {
                pdu: pdu::exception(decoded.function, code),
                delay: Duration::ZERO,
                garbage: None,
            };
            (Outcome::Exception(code), Some(reply))
        } else {
            (Outcome::NoSuchUnit, None)
        };
        let seq = state.log.len();
        state.log.push(Request {
            seq,
            at: Instant::now(),
            unit: unit_id,
            function: decoded.function,
            address: decoded.address,
            count: decoded.count,
            outcome,
            pdu: pdu.to_vec(),
        });
        drop(state);
        log::debug!("sim: modbus unit {unit_id} request {seq}: {outcome:?}");
        self.shared.received.send_modify(|count| *count += 1);
        reply
    }
}

impl Unit {
    fn respond(&mut self, decoded: &Decoded) -> (Outcome, Option<Reply>) {
        let silent = self.faults.any(|f| *f == Fault::Silent);
        let fired = self.faults.fire(|f| {
            if silent {
                *f == Fault::Silent
            } else {
                f.applies_to(decoded)
            }
        });
        if silent {
            return (Outcome::Silent, None);
        }
        let mut delay = Duration::ZERO;
        let mut garbage = None;
        let mut forced = None;
        let mut forced_at = None;
        for fault in fired {
            match fault {
                Fault::Delay(d) => delay = d,
                Fault::Garbage(g) => garbage = Some(g),
                Fault::Exception(code) => forced = Some(code),
                Fault::ExceptionAt { code, .. } => forced_at = forced_at.or(Some(code)),
                Fault::Silent => {}
            }
        }
        let result = match (forced_at.or(forced), &decoded.op) {
            (Some(code), _) | (None, &Err(code)) => Err(code),
            (None, Ok(op)) => pdu::execute(&mut self.data, decoded, op),
        };
        let (outcome, pdu) = match result {
            Ok(pdu) => (Outcome::Answered, pdu),
            Err(code) => (
                Outcome::Exception(code),
                pdu::exception(decoded.function, code),
            ),
        };
        (
            outcome,
            Some(Reply {
                pdu,
                delay,
                garbage,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_shape_replies_and_the_log_records_every_request() {
        let registers = Registers::with_units([1, 2]);
        registers.set_holding(1, 0, &[42]);
        registers.set_fault_times(1, Fault::Exception(4), 1);
        registers.set_fault(2, Fault::Silent);

        let refused = registers.handle(1, &[3, 0, 0, 0, 1], Transport::Rtu);
        assert_eq!(refused.map(|r| r.pdu), Some(vec![0x83, 4]));
        let answered = registers.handle(1, &[3, 0, 0, 0, 1], Transport::Rtu);
        assert_eq!(answered.map(|r| r.pdu), Some(vec![3, 2, 0, 42]));
        assert!(
            registers
                .handle(2, &[6, 0, 0, 0, 1], Transport::Rtu)
                .is_none()
        );
        assert!(
            registers
                .handle(9, &[3, 0, 0, 0, 1], Transport::Rtu)
                .is_none()
        );
        let gateway = registers.handle(9, &[3, 0, 0, 0, 1], Transport::Tcp);
        assert_eq!(gateway.map(|r| r.pdu), Some(vec![0x83, 0x0B]));
        assert!(
            registers
                .handle(0, &[6, 0, 5, 0, 7], Transport::Rtu)
                .is_none()
        );

        assert_eq!(
            registers.holding(2, 0, 1),
            vec![0],
            "a silent unit executes nothing"
        );
        assert_eq!(
            registers.holding(1, 5, 1),
            vec![7],
            "broadcast writes reach live units"
        );
        assert_eq!(registers.holding(2, 5, 1), vec![0], "but not silent ones");
        let outcomes: Vec<_> = registers
            .requests()
            .iter()
            .map(|r| (r.unit, r.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                (1, Outcome::Exception(4)),
                (1, Outcome::Answered),
                (2, Outcome::Silent),
                (9, Outcome::NoSuchUnit),
                (9, Outcome::Exception(0x0B)),
                (0, Outcome::Broadcast),
            ]
        );
    }

    #[test]
    fn an_address_bound_exception_wins_over_a_blanket_one_and_delays_combine() {
        let registers = Registers::with_units([1]);
        registers.set_fault(1, Fault::Exception(6));
        registers.set_fault(
            1,
            Fault::ExceptionAt {
                table: Table::Coils,
                address: 3,
                code: 4,
            },
        );
        registers.set_fault(1, Fault::Delay(Duration::from_millis(5)));
        let reply = registers.handle(1, &[1, 0, 0, 0, 8], Transport::Tcp);
        let reply = reply.unwrap();
        assert_eq!(
            (reply.pdu, reply.delay),
            (vec![0x81, 4], Duration::from_millis(5))
        );
        let reply = registers
            .handle(1, &[1, 0, 4, 0, 8], Transport::Tcp)
            .unwrap();
        assert_eq!(reply.pdu, vec![0x81, 6]);
    }
}
