//! Hub faults a test switches on and off while devices run: the ways a real IoT Hub (or the
//! network in front of it) fails a device that tries to connect, that sends telemetry, that
//! reads or reports its twin, or that acknowledges a cloud-to-device message.
//!
//! A fault is a rule: what happens ([`Fault`]), to whom ([`Target`]), and until when (cleared by
//! hand, after a duration, or for [`Fault::DropBeforePuback`] after so many strikes). The MQTT
//! listener consults the rules for every new TCP connection and every CONNECT, and a connection
//! task for every telemetry publish, twin request and C2D PUBACK; otherwise connections already attached are not touched
//! (use [`Emulator::drop_all_connections`](super::Emulator::drop_all_connections) or
//! [`Emulator::drop_connection`](super::Emulator::drop_connection) for that). Every change bumps
//! a `watch` counter, so a stalled connection, a closed listener or a connection holding back
//! PUBACKs learns at once that its fault ended.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::lock::lock;

/// What the hub does to a connection attempt, or to a telemetry publish, while the fault is
/// active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Refuse at the TCP level: the listening sockets (MQTT and WebSocket) are closed, so the
    /// kernel answers every SYN with RST ("connection refused"), as when the hub's endpoint is
    /// unreachable. The same ports are bound again when the fault ends. Affects every device:
    /// no device id is known yet.
    RefuseTcp,
    /// Accept the TCP connection and close it at once, before TLS, as an overloaded load
    /// balancer does. Affects every device.
    CloseTcp,
    /// Read the CONNECT and never answer it: the connection stays open, without CONNACK, until
    /// the device gives up or the fault ends (the emulator then closes it).
    Stall(Target),
    /// Read the CONNECT and close the connection without a CONNACK.
    Hangup(Target),
    /// CONNACK 5 (not authorized), which the hub sends for every identity problem.
    Refuse(Target),
    /// CONNACK 3 (server unavailable), as a throttled or overloaded hub.
    Throttle(Target),
    /// Record QoS 1 telemetry but send no PUBACK for it, as a hub shaping traffic does. The
    /// PUBACKs held back go out, in order, when the fault ends, if the connection is still up;
    /// a device that reconnects first never gets them. QoS 0 telemetry and method responses
    /// are not affected.
    WithholdPubacks(Target),
    /// Record a QoS 1 telemetry message, then close the connection before its PUBACK, `times`
    /// times (each strike uses one; the rule ends after the last). The device cannot tell
    /// whether the hub got the message: a resend is a duplicate.
    DropBeforePuback { target: Target, times: u32 },
    /// Close the connection on any telemetry publish without recording it, as the hub does when
    /// the daily message quota is used up (403002; MQTT has no way to say so). Connecting still
    /// works.
    QuotaExceeded(Target),
    /// Answer every twin GET and reported PATCH with `$iothub/twin/res/429/` and
    /// `{"errorCode":429001,...}`, as a throttled hub does; the twin is not changed.
    TwinThrottle(Target),
    /// Read twin GETs and reported PATCHes (PUBACK them at QoS 1, record them with no status)
    /// and never answer them; a PATCH is not applied.
    TwinSilent(Target),
    /// Ignore the device's PUBACKs for cloud-to-device deliveries, as if they were lost on the
    /// way: the message stays locked until the lock timeout and is then delivered again (same
    /// `$.mid`, delivery count + 1), until the maximum delivery count dead-letters it.
    LoseC2dAcks(Target),
}

/// What a twin fault does to one twin request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TwinStrike {
    /// Answer 429.
    Throttle,
    /// Do not answer.
    Silent,
}

/// What a telemetry fault does to one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strike {
    /// Keep its PUBACK until rule `id` ends, at `until` at the latest.
    Withhold { id: FaultId, until: Option<Instant> },
    /// Close the connection after recording it.
    Drop,
    /// Close the connection without recording it.
    Quota,
}

impl Fault {
    /// Whether this fault applies to a CONNECT from `client_id` (TCP-level faults never do: they
    /// strike before a CONNECT).
    fn applies_to_connect(&self, client_id: &str) -> bool {
        match self {
            Fault::RefuseTcp
            | Fault::CloseTcp
            | Fault::WithholdPubacks(_)
            | Fault::DropBeforePuback { .. }
            | Fault::QuotaExceeded(_)
            | Fault::TwinThrottle(_)
            | Fault::TwinSilent(_)
            | Fault::LoseC2dAcks(_) => false,
            Fault::Stall(t) | Fault::Hangup(t) | Fault::Refuse(t) | Fault::Throttle(t) => {
                t.matches(client_id)
            }
        }
    }

    /// A fault that ends by being used up: no strikes left.
    fn exhausted(&self) -> bool {
        matches!(self, Fault::DropBeforePuback { times: 0, .. })
    }
}

/// Which devices an MQTT-level fault strikes, by the client id of their CONNECT (the device id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    Devices(BTreeSet<String>),
}

impl Target {
    /// Only these device ids.
    pub fn devices<I, S>(ids: I) -> Target
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Target::Devices(ids.into_iter().map(Into::into).collect())
    }

    fn matches(&self, client_id: &str) -> bool {
        match self {
            Target::All => true,
            Target::Devices(ids) => ids.contains(client_id),
        }
    }
}

/// Names an injected fault, for [`Emulator::clear_fault`](super::Emulator::clear_fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FaultId(u64);

#[derive(Debug, Clone)]
struct Rule {
    id: FaultId,
    fault: Fault,
    until: Option<Instant>,
}

impl Rule {
    fn active(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now < until) && !self.fault.exhausted()
    }

    /// Whether this rule strikes a telemetry publish from `device` at QoS 1 (`qos1`) or 0, and
    /// how.
    fn telemetry_strike(&self, device: &str, qos1: bool) -> Option<Strike> {
        match &self.fault {
            Fault::WithholdPubacks(t) => (qos1 && t.matches(device)).then_some(Strike::Withhold {
                id: self.id,
                until: self.until,
            }),
            Fault::DropBeforePuback { target, .. } => {
                (qos1 && target.matches(device)).then_some(Strike::Drop)
            }
            Fault::QuotaExceeded(t) => t.matches(device).then_some(Strike::Quota),
            Fault::RefuseTcp
            | Fault::CloseTcp
            | Fault::Stall(_)
            | Fault::Hangup(_)
            | Fault::Refuse(_)
            | Fault::Throttle(_)
            | Fault::TwinThrottle(_)
            | Fault::TwinSilent(_)
            | Fault::LoseC2dAcks(_) => None,
        }
    }

    /// Whether this rule strikes a twin request from `device`, and how.
    fn twin_strike(&self, device: &str) -> Option<TwinStrike> {
        match &self.fault {
            Fault::TwinThrottle(t) => t.matches(device).then_some(TwinStrike::Throttle),
            Fault::TwinSilent(t) => t.matches(device).then_some(TwinStrike::Silent),
            Fault::RefuseTcp
            | Fault::CloseTcp
            | Fault::Stall(_)
            | Fault::Hangup(_)
            | Fault::Refuse(_)
            | Fault::Throttle(_)
            | Fault::WithholdPubacks(_)
            | Fault::DropBeforePuback { .. }
            | Fault::QuotaExceeded(_)
            | Fault::LoseC2dAcks(_) => None,
        }
    }
}

/// A fault in force for one connection attempt, and when it ends by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Active {
    pub(crate) fault: Fault,
    pub(crate) until: Option<Instant>,
}

/// The rules in force. Every change bumps a `watch` counter.
pub(crate) struct Faults {
    rules: Mutex<Vec<Rule>>,
    next_id: Mutex<u64>,
    changed: watch::Sender<u64>,
}

impl Faults {
    pub(crate) fn new() -> Self {
        Faults {
            rules: Mutex::new(Vec::new()),
            next_id: Mutex::new(1),
            changed: watch::Sender::new(0),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that wakes on every injection or clearing.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(crate) fn inject(&self, fault: Fault, lasting: Option<Duration>) -> FaultId {
        let id = {
            let mut next = lock(&self.next_id);
            let id = FaultId(*next);
            *next += 1;
            id
        };
        let until = lasting.map(|d| Instant::now() + d);
        {
            let mut rules = lock(&self.rules);
            let now = Instant::now();
            // Expired rules only cost lookups; drop them whenever the table changes.
            rules.retain(|rule| rule.active(now));
            rules.push(Rule { id, fault, until });
        }
        self.bump();
        id
    }

    /// Removes rule `id`; false if it was not active (cleared before, or expired).
    pub(crate) fn clear(&self, id: FaultId) -> bool {
        let removed = {
            let mut rules = lock(&self.rules);
            let now = Instant::now();
            rules.retain(|rule| rule.active(now));
            let before = rules.len();
            rules.retain(|rule| rule.id != id);
            rules.len() != before
        };
        if removed {
            self.bump();
        }
        removed
    }

    pub(crate) fn clear_all(&self) {
        lock(&self.rules).clear();
        self.bump();
    }

    /// The faults active now, oldest first.
    pub(crate) fn active(&self) -> Vec<(FaultId, Fault)> {
        let now = Instant::now();
        lock(&self.rules)
            .iter()
            .filter(|rule| rule.active(now))
            .map(|rule| (rule.id, rule.fault.clone()))
            .collect()
    }

    /// The oldest active rule `pick` accepts.
    fn find(&self, pick: impl Fn(&Fault) -> bool) -> Option<Active> {
        let now = Instant::now();
        lock(&self.rules)
            .iter()
            .find(|rule| rule.active(now) && pick(&rule.fault))
            .map(|rule| Active {
                fault: rule.fault.clone(),
                until: rule.until,
            })
    }

    /// Whether the listener must be closed now, and until when.
    pub(crate) fn refuse_tcp(&self) -> Option<Active> {
        self.find(|f| *f == Fault::RefuseTcp)
    }

    /// Whether a freshly accepted TCP connection must be closed at once.
    pub(crate) fn close_tcp(&self) -> bool {
        self.find(|f| *f == Fault::CloseTcp).is_some()
    }

    /// The fault that strikes a CONNECT from `client_id`, if any.
    pub(crate) fn on_connect(&self, client_id: &str) -> Option<Active> {
        self.find(|f| f.applies_to_connect(client_id))
    }

    /// Whether `active` (found earlier for `client_id`) still holds: not cleared, not expired.
    pub(crate) fn still(&self, active: &Active, client_id: &str) -> bool {
        self.on_connect(client_id).is_some_and(|now| now == *active)
    }

    /// The fault that strikes a telemetry publish from `device` (QoS 1 when `qos1`), if any:
    /// the oldest that applies. A [`Fault::DropBeforePuback`] strike uses up one of its times.
    pub(crate) fn on_telemetry(&self, device: &str, qos1: bool) -> Option<Strike> {
        let (strike, used_up) = {
            let now = Instant::now();
            let mut rules = lock(&self.rules);
            let (rule, strike) = rules.iter_mut().find_map(|rule| {
                if !rule.active(now) {
                    return None;
                }
                let strike = rule.telemetry_strike(device, qos1)?;
                Some((rule, strike))
            })?;
            if let Fault::DropBeforePuback { times, .. } = &mut rule.fault {
                *times = times.saturating_sub(1);
            }
            let used_up = rule.fault.exhausted();
            if used_up {
                rules.retain(|rule| rule.active(now));
            }
            (strike, used_up)
        };
        if used_up {
            self.bump();
        }
        Some(strike)
    }

    /// The fault that strikes a twin request from `device`, if any: the oldest that applies.
    pub(crate) fn on_twin(&self, device: &str) -> Option<TwinStrike> {
        let now = Instant::now();
        lock(&self.rules)
            .iter()
            .filter(|rule| rule.active(now))
            .find_map(|rule| rule.twin_strike(device))
    }

    /// Whether a C2D PUBACK from `device` is to be ignored now.
    pub(crate) fn lose_c2d_ack(&self, device: &str) -> bool {
        self.find(|f| matches!(f, Fault::LoseC2dAcks(t) if t.matches(device)))
            .is_some()
    }

    /// Whether rule `id` is still in force: not cleared, expired or used up.
    pub(crate) fn is_active(&self, id: FaultId) -> bool {
        let now = Instant::now();
        lock(&self.rules)
            .iter()
            .any(|rule| rule.id == id && rule.active(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rules_match_by_target_expire_and_clear() {
        let faults = Faults::new();
        assert!(faults.on_connect("a").is_none());
        let stall = faults.inject(Fault::Stall(Target::devices(["a"])), None);
        let refuse = faults.inject(Fault::Refuse(Target::All), Some(Duration::from_millis(500)));
        assert_eq!(
            faults.on_connect("a").map(|a| a.fault),
            Some(Fault::Stall(Target::devices(["a"])))
        );
        assert_eq!(
            faults.on_connect("b").map(|a| a.fault),
            Some(Fault::Refuse(Target::All))
        );
        assert!(faults.refuse_tcp().is_none() && !faults.close_tcp());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(faults.on_connect("b").is_none(), "expired");
        assert!(faults.clear(stall));
        assert!(!faults.clear(stall));
        assert!(!faults.clear(refuse), "an expired rule has already ended");
        assert!(faults.on_connect("a").is_none());
        faults.inject(Fault::RefuseTcp, None);
        faults.inject(Fault::CloseTcp, None);
        assert!(faults.refuse_tcp().is_some() && faults.close_tcp());
        assert!(
            faults.on_connect("a").is_none(),
            "tcp faults strike before CONNECT"
        );
        assert_eq!(faults.active().len(), 2);
        let changes = faults.subscribe();
        faults.clear_all();
        assert!(changes.has_changed().unwrap());
        assert!(faults.active().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn telemetry_faults_strike_by_qos_and_drops_are_used_up() {
        let faults = Faults::new();
        let withhold = faults.inject(
            Fault::WithholdPubacks(Target::devices(["a"])),
            Some(Duration::from_secs(1)),
        );
        faults.inject(
            Fault::DropBeforePuback {
                target: Target::devices(["a", "b"]),
                times: 2,
            },
            None,
        );
        faults.inject(Fault::QuotaExceeded(Target::devices(["c"])), None);
        assert!(
            faults.on_connect("a").is_none(),
            "telemetry faults leave CONNECT alone"
        );
        let until = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            faults.on_telemetry("a", true),
            Some(Strike::Withhold {
                id: withhold,
                until: Some(until)
            })
        );
        // QoS 0 has no PUBACK to withhold or to drop before; the quota takes every QoS.
        assert_eq!(faults.on_telemetry("a", false), None);
        assert_eq!(faults.on_telemetry("c", false), Some(Strike::Quota));
        assert_eq!(faults.on_telemetry("d", true), None);
        assert_eq!(faults.on_telemetry("b", true), Some(Strike::Drop));
        assert_eq!(
            faults.active()[1].1,
            Fault::DropBeforePuback {
                target: Target::devices(["a", "b"]),
                times: 1
            }
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!faults.is_active(withhold), "expired");
        // The oldest rule that applies wins: "a" now meets the drop, which uses its last time.
        let changes = faults.subscribe();
        assert_eq!(faults.on_telemetry("a", true), Some(Strike::Drop));
        assert!(
            changes.has_changed().unwrap(),
            "a used-up rule ends like a cleared one"
        );
        assert_eq!(faults.on_telemetry("b", true), None);
        assert_eq!(
            faults.active(),
            [(FaultId(3), Fault::QuotaExceeded(Target::devices(["c"])))]
        );
    }

    #[test]
    fn twin_faults_strike_twin_requests_only() {
        let faults = Faults::new();
        faults.inject(Fault::TwinSilent(Target::devices(["a"])), None);
        let throttle = faults.inject(Fault::TwinThrottle(Target::All), None);
        assert_eq!(
            faults.on_twin("a"),
            Some(TwinStrike::Silent),
            "oldest first"
        );
        assert_eq!(faults.on_twin("b"), Some(TwinStrike::Throttle));
        assert!(faults.on_connect("a").is_none());
        assert_eq!(faults.on_telemetry("a", true), None);
        faults.clear(throttle);
        assert_eq!(faults.on_twin("b"), None);
        assert!(!faults.lose_c2d_ack("a"));
        faults.inject(Fault::LoseC2dAcks(Target::devices(["a"])), None);
        assert!(faults.lose_c2d_ack("a") && !faults.lose_c2d_ack("b"));
        assert_eq!(faults.on_twin("b"), None);
        assert!(faults.on_connect("a").is_none());
    }
}
