//! What the gateway runs, as the control socket sees it: each device with its methods, its
//! telemetry groups and its connection, and each bus. The supervisor registers a device when it
//! starts it and removes it when a reload stops it; readers take a short read lock.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use crate::bus;
use crate::config::schema::BusKind;
use crate::hub::presence::Presence;
use crate::mapping::group::Group;
use crate::services::methods;

/// One running device.
#[derive(Clone)]
pub struct Device {
    pub methods: Arc<methods::Device>,
    pub groups: Vec<Arc<Group>>,
    pub presence: Arc<Presence>,
    pub bus: String,
}

/// One running bus.
#[derive(Clone)]
pub struct Bus {
    pub kind: BusKind,
    pub handle: bus::Handle,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything the gateway runs right now.
pub struct Registry {
    pub started: SystemTime,
    /// Calls and reads in progress over the socket: a shutdown waits for them as for the
    /// hub's methods.
    pub calls: tokio_util::task::TaskTracker,
    devices: RwLock<BTreeMap<String, Device>>,
    buses: RwLock<BTreeMap<String, Bus>>,
}

impl Registry {
    #[must_use]
    pub fn new() -> Self {
        Self {
            started: SystemTime::now(),
            calls: tokio_util::task::TaskTracker::new(),
            devices: RwLock::default(),
            buses: RwLock::default(),
        }
    }

    pub fn add_device(&self, id: &str, device: Device) {
        self.devices
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), device);
    }

    pub fn remove_device(&self, id: &str) {
        self.devices
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// New telemetry groups for a running device (a reload that changed only them).
    pub fn set_groups(&self, id: &str, groups: Vec<Arc<Group>>) {
        if let Some(d) = self
            .devices
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(id)
        {
            d.groups = groups;
        }
    }

    pub fn add_bus(&self, id: &str, bus: Bus) {
        self.buses
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), bus);
    }

    pub fn remove_bus(&self, id: &str) {
        self.buses
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    #[must_use]
    pub fn device(&self, id: &str) -> Option<Device> {
        self.devices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Every device id, sorted.
    #[must_use]
    pub fn device_ids(&self) -> Vec<String> {
        self.devices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Every device, by id.
    #[must_use]
    pub fn devices(&self) -> Vec<(String, Device)> {
        self.devices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect()
    }

    /// Every bus, by id.
    #[must_use]
    pub fn buses(&self) -> Vec<(String, Bus)> {
        self.buses
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, b)| (id.clone(), b.clone()))
            .collect()
    }
}
