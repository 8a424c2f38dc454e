//! Registration operations and assignment (`iothub-protocol.md` 9a). A register request starts
//! an operation that is `assigning` until its `retry-after` has passed; the first poll after
//! that assigns the registration: the device is registered in the linked hub's registry with
//! the registration's credential (or re-keyed there), and the `registrationState` DPS answers is
//! kept for later polls of the same operation.
//!
//! DPS keeps a record per registration id across operations, which decides the substatus: the
//! first assignment is `initialAssignment`; one to another hub than the last is
//! `deviceDataMigrated`, and the device's twin is copied from the last hub (the emulator models
//! DPS's default reprovisioning policy, "re-provision and migrate data"); one to the same hub
//! keeps the substatus it had.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::enrollment::{Enrolled, HubLink};
use crate::clock::timestamp_utc;

/// Operations kept; beyond it the oldest is forgotten (a poll for it answers 404).
pub(crate) const MAX_OPERATIONS: usize = 4096;
/// The emulator's `errorCode` for a registration whose hub is not running.
const HUB_GONE: u32 = 500_000;

/// What a poll finds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Polled {
    /// No such operation for this registration id.
    NotFound,
    /// Polled before its `retry-after` passed: still `assigning`.
    Assigning,
    /// Assigned (or failed): the 200 body, `{operationId, status, registrationState}`.
    Done(Value),
}

struct Operation {
    registration_id: String,
    ready_at: Instant,
    enrolled: Enrolled,
    /// The 200 body, once assigned.
    done: Option<Value>,
}

/// What DPS remembers of a registration id between operations.
struct Registration {
    created: SystemTime,
    last_hub: HubLink,
    substatus: &'static str,
    /// Bumped on every assignment; the etag is made from it.
    version: u64,
}

/// Every live operation and every registration DPS has assigned.
#[derive(Default)]
pub(crate) struct Operations {
    operations: HashMap<String, Operation>,
    /// Operation ids, oldest first, to forget the oldest when full.
    order: VecDeque<String>,
    /// By registration id in lower case (DPS registration ids are case-insensitive).
    registrations: HashMap<String, Registration>,
}

/// An operation id in DPS's shape: `4.{16 hex digits}.{GUID}`.
fn operation_id() -> String {
    let hex = format!("{:032x}", rand::random::<u128>());
    format!(
        "4.{:016x}.{}-{}-{}-{}-{}",
        rand::random::<u64>(),
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

impl Operations {
    /// Starts an operation for `registration_id` that may be assigned from `ready_at` on;
    /// returns its id.
    pub(crate) fn start(
        &mut self,
        registration_id: &str,
        enrolled: Enrolled,
        ready_at: Instant,
    ) -> String {
        if self.order.len() >= MAX_OPERATIONS
            && let Some(oldest) = self.order.pop_front()
        {
            self.operations.remove(&oldest);
        }
        let id = operation_id();
        self.operations.insert(
            id.clone(),
            Operation {
                registration_id: registration_id.to_owned(),
                ready_at,
                enrolled,
                done: None,
            },
        );
        self.order.push_back(id.clone());
        id
    }

    /// Polls operation `operation_id` of `registration_id` at `now`, assigning it if it is
    /// ready and not yet assigned.
    pub(crate) fn poll(
        &mut self,
        registration_id: &str,
        operation_id: &str,
        now: Instant,
    ) -> Polled {
        let Some(operation) = self
            .operations
            .get_mut(operation_id)
            .filter(|op| op.registration_id == registration_id)
        else {
            return Polled::NotFound;
        };
        if let Some(done) = &operation.done {
            return Polled::Done(done.clone());
        }
        if now < operation.ready_at {
            return Polled::Assigning;
        }
        let state = assign(
            &mut self.registrations,
            registration_id,
            &operation.enrolled,
        );
        let status = state["status"].clone();
        let done = json!({
            "operationId": operation_id,
            "status": status,
            "registrationState": state,
        });
        operation.done = Some(done.clone());
        Polled::Done(done)
    }
}

/// Registers `registration_id` in the hub `enrolled` links to and returns its
/// `registrationState`; a `failed` one when that hub is gone.
fn assign(
    registrations: &mut HashMap<String, Registration>,
    registration_id: &str,
    enrolled: &Enrolled,
) -> Value {
    let now = SystemTime::now();
    let Some(hub) = enrolled.hub.hub() else {
        return json!({
            "registrationId": registration_id,
            "status": "failed",
            "errorCode": HUB_GONE,
            "errorMessage": "the IoT hub this enrollment links to is not running",
            "lastUpdatedDateTimeUtc": timestamp_utc(now),
        });
    };
    let key = registration_id.to_ascii_lowercase();
    let previous = registrations.get(&key);
    let moved_from = previous
        .filter(|p| !p.last_hub.same_hub(&enrolled.hub))
        .map(|p| p.last_hub.clone());
    // The twin to carry over, read from the last hub before the device lands in the new one.
    let migrated = moved_from
        .as_ref()
        .and_then(HubLink::hub)
        .and_then(|old| old.registry.twin_doc(registration_id));
    hub.registry
        .add_device(registration_id, enrolled.credential.clone());
    if let Some(doc) = migrated {
        hub.registry.set_twin_doc(registration_id, doc);
    }
    let substatus = match previous {
        None => "initialAssignment",
        Some(_) if moved_from.is_some() => "deviceDataMigrated",
        Some(p) => p.substatus,
    };
    let created = previous.map_or(now, |p| p.created);
    let version = previous.map_or(1, |p| p.version + 1);
    registrations.insert(
        key,
        Registration {
            created,
            last_hub: enrolled.hub.clone(),
            substatus,
            version,
        },
    );
    let etag = base64::engine::general_purpose::STANDARD.encode(format!("\"{version:016x}\""));
    json!({
        "registrationId": registration_id,
        "createdDateTimeUtc": timestamp_utc(created),
        "assignedHub": enrolled.hub.host_name(),
        "deviceId": registration_id,
        "status": "assigned",
        "substatus": substatus,
        "lastUpdatedDateTimeUtc": timestamp_utc(now),
        "etag": etag,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::credential::Credential;
    use crate::sas::Key;

    fn enrolled(hub: HubLink) -> Enrolled {
        Enrolled {
            credential: Credential::Sas(Key::from_base64("AQID").unwrap()),
            hub,
        }
    }

    #[test]
    fn operations_assign_once_ready_and_only_for_their_registration() {
        let mut operations = Operations::default();
        let start = Instant::now();
        let ready = start + Duration::from_secs(1);
        let id = operations.start("dev-1", enrolled(HubLink::new_detached("gone")), ready);
        assert!(id.starts_with("4."));
        assert_eq!(operations.poll("dev-1", &id, start), Polled::Assigning);
        assert_eq!(operations.poll("dev-2", &id, ready), Polled::NotFound);
        assert_eq!(operations.poll("dev-1", "4.nope", ready), Polled::NotFound);
        // The linked hub does not run: the operation fails, and says so on every poll.
        let Polled::Done(done) = operations.poll("dev-1", &id, ready) else {
            panic!("not done");
        };
        assert_eq!(done["status"], "failed");
        assert_eq!(done["operationId"], id.as_str());
        assert_eq!(done["registrationState"]["errorCode"], HUB_GONE);
        assert_eq!(operations.poll("dev-1", &id, ready), Polled::Done(done));
    }

    #[test]
    fn the_oldest_operations_are_forgotten_when_full() {
        let mut operations = Operations::default();
        let now = Instant::now();
        let first = operations.start("d", enrolled(HubLink::new_detached("h")), now);
        for _ in 1..MAX_OPERATIONS {
            operations.start("d", enrolled(HubLink::new_detached("h")), now);
        }
        assert_ne!(operations.poll("d", &first, now), Polled::NotFound);
        operations.start("d", enrolled(HubLink::new_detached("h")), now);
        assert_eq!(operations.poll("d", &first, now), Polled::NotFound);
        assert_eq!(operations.operations.len(), MAX_OPERATIONS);
    }
}
