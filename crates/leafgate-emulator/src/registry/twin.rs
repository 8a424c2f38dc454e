//! The registry's twin operations: reading a device's twin, the device's reported patches, and
//! the service's desired changes with their push to the device. Each runs under the entry's
//! state lock (the twin lives in [`EntryState`]), so two desired changes reach the device in the
//! order of their versions.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{DeviceEntry, EntryState, Outbound, Registry, Route};
use crate::lock::lock;
use crate::twin::{Twin, TwinDoc, TwinError};

/// A change the service asks for: `PATCH /twins/{id}` (merge), `PUT /twins/{id}` (replace), or
/// [`crate::Emulator::update_desired`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TwinUpdate {
    /// Desired properties: a merge patch, or with `replace` the whole new document.
    pub(crate) desired: Option<Value>,
    /// Tags, merged or replaced likewise.
    pub(crate) tags: Option<Value>,
    pub(crate) replace: bool,
    /// The `If-Match` header: `*`, absent, or the etag the change is conditional on.
    pub(crate) if_match: Option<String>,
}

/// The twin as the service API shows it.
#[derive(Debug, Clone)]
pub(crate) struct ServiceTwin {
    pub(crate) twin: Twin,
    pub(crate) tags: Map<String, Value>,
    pub(crate) etag: String,
    pub(crate) version: u64,
    pub(crate) enabled: bool,
    pub(crate) connected: bool,
    /// Cloud-to-device messages queued or locked.
    pub(crate) c2d_count: usize,
}

fn service_twin(state: &EntryState, doc: &TwinDoc) -> ServiceTwin {
    ServiceTwin {
        twin: doc.twin(),
        tags: doc.tags().clone(),
        etag: doc.etag(),
        version: doc.version(),
        enabled: state.identity.as_ref().is_some_and(|i| i.enabled),
        connected: state.current.is_some(),
        c2d_count: state.c2d.live_count(),
    }
}

/// The topic of a desired-properties notification.
pub(crate) fn desired_topic(version: u64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

impl Registry {
    /// A registered device's twin (enabled or not).
    pub(crate) fn twin(&self, id: &str) -> Option<Twin> {
        let entry = self.existing(id)?;
        let state = lock(&entry.state);
        state.identity.as_ref()?;
        Some(state.twin.twin())
    }

    /// A registered device's whole twin document, for DPS to migrate it to another hub.
    pub(crate) fn twin_doc(&self, id: &str) -> Option<TwinDoc> {
        let entry = self.existing(id)?;
        let state = lock(&entry.state);
        state.identity.as_ref()?;
        Some(state.twin.clone())
    }

    /// Replaces a registered device's twin document, as DPS does when it migrates a device's
    /// data to this hub; nothing is pushed to the device. False when `id` is not registered.
    pub(crate) fn set_twin_doc(&self, id: &str, doc: TwinDoc) -> bool {
        let Some(entry) = self.existing(id) else {
            return false;
        };
        let mut state = lock(&entry.state);
        if state.identity.is_none() {
            return false;
        }
        state.twin = doc;
        drop(state);
        entry.twin_changed.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    /// The twin as the service API shows it.
    pub(crate) fn service_twin(&self, id: &str) -> Result<ServiceTwin, TwinError> {
        let entry = self.existing(id).ok_or(TwinError::DeviceNotFound)?;
        let state = lock(&entry.state);
        if state.identity.is_none() {
            return Err(TwinError::DeviceNotFound);
        }
        Ok(service_twin(&state, &state.twin))
    }

    /// Applies a reported patch from the device's connection; returns the new reported
    /// version.
    pub(crate) fn patch_reported(
        &self,
        entry: &DeviceEntry,
        patch: &Value,
    ) -> Result<u64, TwinError> {
        let mut state = lock(&entry.state);
        if state.identity.is_none() {
            return Err(TwinError::DeviceNotFound);
        }
        let version = state.twin.patch_reported(patch)?;
        drop(state);
        entry.twin_changed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(version)
    }

    /// The reported properties of `id` (with `$version`), and a receiver that wakes after each
    /// change, for waiting on them.
    pub(crate) fn watch_reported(
        &self,
        id: &str,
    ) -> (Option<Value>, tokio::sync::watch::Receiver<u64>) {
        let entry = self.entry(id);
        let mut changes = entry.twin_changed.subscribe();
        changes.borrow_and_update();
        let state = lock(&entry.state);
        let reported = state.identity.as_ref().map(|_| state.twin.reported());
        (reported, changes)
    }

    /// Applies a service change; on success the new desired version is pushed to the device if
    /// it is online and subscribed to desired-property notifications (never queued otherwise,
    /// as the hub does not queue them).
    pub(crate) fn update_twin(
        &self,
        id: &str,
        update: &TwinUpdate,
    ) -> Result<ServiceTwin, TwinError> {
        let entry = self.existing(id).ok_or(TwinError::DeviceNotFound)?;
        let mut state = lock(&entry.state);
        if state.identity.is_none() {
            return Err(TwinError::DeviceNotFound);
        }
        if !state.twin.matches(update.if_match.as_deref()) {
            return Err(TwinError::PreconditionFailed);
        }
        // On a copy, so that a refused part leaves the twin as it was.
        let mut doc = state.twin.clone();
        if let Some(tags) = &update.tags {
            doc.set_tags(tags, update.replace)?;
        }
        let push = match &update.desired {
            Some(desired) if update.replace => Some(doc.replace_desired(desired)?),
            Some(desired) => Some(doc.patch_desired(desired)?),
            None => None,
        };
        state.twin = doc;
        if let Some((version, patch)) = push {
            push_desired(&entry, &state, version, patch);
        }
        Ok(service_twin(&state, &state.twin))
    }
}

/// Queues the notification of desired `version` on the device's connection, if it is online
/// and subscribed to a filter matching the topic. A full queue drops it (logged): the hub may
/// coalesce notifications, and a device that sees a version gap reads the twin again.
fn push_desired(entry: &Arc<DeviceEntry>, state: &EntryState, version: u64, patch: Value) {
    let topic = desired_topic(version);
    let Route::Ready(conn) = entry.route_locked(state, &topic) else {
        return;
    };
    let mut body = match patch {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    body.insert("$version".to_owned(), Value::from(version));
    let payload = Bytes::from(Value::Object(body).to_string());
    if conn.outbound.try_send(Outbound { topic, payload }).is_err() {
        log::warn!(
            "emulator: desired version {version} for device {} not pushed: its connection's queue is full",
            entry.id
        );
    }
}
