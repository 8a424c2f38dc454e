//! Hub faults a test switches on and off while devices run: the ways a real IoT Hub (or the
//! network in front of it) fails a device that tries to connect.
//!
//! A fault is a rule: what happens ([`Fault`]), to whom ([`Target`]), and until when (cleared by
//! hand, or after a duration). The MQTT listener consults the rules for every new TCP connection
//! and every CONNECT; connections already attached are not touched (use
//! [`Emulator::drop_all_connections`](super::Emulator::drop_all_connections) or
//! [`Emulator::drop_connection`](super::Emulator::drop_connection) for that). Rules live in a
//! `watch` channel so a stalled connection or a closed listener learns at once that its fault
//! ended.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::lock::lock;

/// What the hub does to a connection attempt while the fault is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Refuse at the TCP level: the listening socket is closed, so the kernel answers every SYN
    /// with RST ("connection refused"), as when the hub's endpoint is unreachable. The same port
    /// is bound again when the fault ends. Affects every device: no device id is known yet.
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
}

impl Fault {
    /// Whether this fault applies to a CONNECT from `client_id` (TCP-level faults never do: they
    /// strike before a CONNECT).
    fn applies_to_connect(&self, client_id: &str) -> bool {
        match self {
            Fault::RefuseTcp | Fault::CloseTcp => false,
            Fault::Stall(t) | Fault::Hangup(t) | Fault::Refuse(t) | Fault::Throttle(t) => {
                t.matches(client_id)
            }
        }
    }
}

/// Which devices an MQTT-level fault strikes, by the client id of their CONNECT.
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
        self.until.is_none_or(|until| now < until)
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
}
