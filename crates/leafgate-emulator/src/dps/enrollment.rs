//! DPS enrollments: who may register and which IoT hub each registration is assigned to
//! (`iothub-protocol.md` 9a). A group enrollment holds a symmetric group key, from which each
//! device's key is derived at registration ([`sas::derive_device_key`]); an individual
//! enrollment holds one registration's own key or certificate thumbprint. Each links to a hub
//! (a running [`Emulator`](crate::Emulator)), which tests change to make DPS reassign devices.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};

use crate::Shared;
use crate::credential::{Credential, X509Auth};
use crate::sas::{self, Key};

/// How an individual enrollment proves a registration's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attestation {
    /// The registration signs its SAS tokens with this key, on DPS and on the hub.
    SymmetricKey(Key),
    /// The registration presents a client certificate with this thumbprint (hex SHA-1 or
    /// SHA-256, as [`X509Auth::Thumbprint`]); no password, on DPS and on the hub.
    X509Thumbprint(String),
}

/// An IoT hub DPS can assign registrations to: a running emulator, from
/// [`Emulator::hub_link`](crate::Emulator::hub_link). Holds the hub weakly, so that an
/// emulator linking to itself is still freed when dropped; a registration assigned to a hub
/// that is gone fails.
#[derive(Clone)]
pub struct HubLink {
    hub: Weak<Shared>,
    host_name: String,
}

impl std::fmt::Debug for HubLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubLink")
            .field("host_name", &self.host_name)
            .finish_non_exhaustive()
    }
}

impl HubLink {
    pub(crate) fn new(hub: &Arc<Shared>) -> Self {
        HubLink {
            hub: Arc::downgrade(hub),
            host_name: hub.host_name.clone(),
        }
    }

    /// The hub's host name, which DPS answers as `assignedHub`.
    #[must_use]
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// A link to no hub, for tests of what does not assign.
    #[cfg(test)]
    pub(crate) fn new_detached(host_name: &str) -> Self {
        HubLink {
            hub: Weak::new(),
            host_name: host_name.to_owned(),
        }
    }

    /// The hub, if it still runs.
    pub(crate) fn hub(&self) -> Option<Arc<Shared>> {
        self.hub.upgrade()
    }

    /// Whether both link the same emulator (host names may repeat: every test hub is
    /// `localhost`).
    pub(crate) fn same_hub(&self, other: &HubLink) -> bool {
        Weak::ptr_eq(&self.hub, &other.hub)
    }
}

/// One way a registration id may authenticate, and the hub it is assigned to then.
#[derive(Clone)]
pub(crate) struct Enrolled {
    /// The registration's credential, on DPS and on the hub it is assigned to.
    pub(crate) credential: Credential,
    pub(crate) hub: HubLink,
}

struct Group {
    key: Key,
    hub: HubLink,
}

struct Individual {
    attestation: Attestation,
    hub: HubLink,
}

/// Every enrollment of a DPS instance.
#[derive(Default)]
pub(crate) struct Enrollments {
    groups: BTreeMap<String, Group>,
    /// By registration id in lower case: DPS registration ids are case-insensitive.
    individuals: HashMap<String, Individual>,
}

impl Enrollments {
    /// Adds or replaces group enrollment `name`.
    pub(crate) fn add_group(&mut self, name: &str, key: Key, hub: HubLink) {
        self.groups.insert(name.to_owned(), Group { key, hub });
    }

    /// Adds or replaces the individual enrollment of `registration_id`.
    pub(crate) fn add_individual(
        &mut self,
        registration_id: &str,
        attestation: Attestation,
        hub: HubLink,
    ) {
        self.individuals.insert(
            registration_id.to_ascii_lowercase(),
            Individual { attestation, hub },
        );
    }

    /// Links the individual enrollment of `name` and the group enrollment named `name` (either
    /// may exist) to `hub`, for registrations from now on. False when neither exists.
    pub(crate) fn set_hub(&mut self, name: &str, hub: &HubLink) -> bool {
        let mut found = false;
        if let Some(individual) = self.individuals.get_mut(&name.to_ascii_lowercase()) {
            individual.hub = hub.clone();
            found = true;
        }
        if let Some(group) = self.groups.get_mut(name) {
            group.hub = hub.clone();
            found = true;
        }
        found
    }

    /// How `registration_id` may authenticate: its individual enrollment if it has one (which
    /// takes precedence, as on DPS), otherwise each group's derived key, in name order.
    pub(crate) fn candidates(&self, registration_id: &str) -> Vec<Enrolled> {
        if let Some(individual) = self.individuals.get(&registration_id.to_ascii_lowercase()) {
            let credential = match &individual.attestation {
                Attestation::SymmetricKey(key) => Credential::Sas(key.clone()),
                Attestation::X509Thumbprint(thumbprint) => Credential::X509(X509Auth::Thumbprint {
                    primary: thumbprint.clone(),
                    secondary: None,
                }),
            };
            return vec![Enrolled {
                credential,
                hub: individual.hub.clone(),
            }];
        }
        self.groups
            .values()
            .map(|group| Enrolled {
                credential: Credential::Sas(sas::derive_device_key(&group.key, registration_id)),
                hub: group.hub.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> HubLink {
        HubLink::new_detached("h")
    }

    fn key(seed: u8) -> Key {
        use base64::Engine as _;
        Key::from_base64(&base64::engine::general_purpose::STANDARD.encode([seed; 32])).unwrap()
    }

    fn sas_key(enrolled: &Enrolled) -> Key {
        match &enrolled.credential {
            Credential::Sas(key) => key.clone(),
            Credential::X509(_) => panic!("not a SAS credential"),
        }
    }

    #[test]
    fn an_individual_enrollment_wins_over_groups_and_ignores_case() {
        let mut enrollments = Enrollments::default();
        assert!(enrollments.candidates("dev-1").is_empty());
        enrollments.add_group("b", key(2), link());
        enrollments.add_group("a", key(1), link());
        let groups = enrollments.candidates("dev-1");
        assert_eq!(groups.len(), 2);
        assert_eq!(
            sas_key(&groups[0]),
            sas::derive_device_key(&key(1), "dev-1")
        );
        assert_eq!(
            sas_key(&groups[1]),
            sas::derive_device_key(&key(2), "dev-1")
        );

        enrollments.add_individual("Dev-1", Attestation::SymmetricKey(key(9)), link());
        let individual = enrollments.candidates("dev-1");
        assert_eq!(individual.len(), 1);
        assert_eq!(sas_key(&individual[0]), key(9));

        enrollments.add_individual(
            "cam-1",
            Attestation::X509Thumbprint("AB".repeat(20)),
            link(),
        );
        assert!(matches!(
            &enrollments.candidates("cam-1")[0].credential,
            Credential::X509(X509Auth::Thumbprint { primary, secondary: None }) if *primary == "AB".repeat(20)
        ));
    }

    #[test]
    fn set_hub_finds_groups_by_name_and_individuals_by_registration_id() {
        let mut enrollments = Enrollments::default();
        enrollments.add_group("fleet", key(1), link());
        enrollments.add_individual("dev-9", Attestation::SymmetricKey(key(2)), link());
        let other = HubLink::new_detached("other");
        assert!(enrollments.set_hub("fleet", &other));
        assert_eq!(enrollments.candidates("x")[0].hub.host_name(), "other");
        assert!(enrollments.set_hub("DEV-9", &other));
        assert_eq!(enrollments.candidates("dev-9")[0].hub.host_name(), "other");
        assert!(!enrollments.set_hub("nobody", &other));
    }
}
