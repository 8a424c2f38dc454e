//! A device's reported properties as leafgate keeps them: what it wants the twin to say, what
//! the hub has acknowledged, and the PATCH between the two, kept within IoT Hub's 32 KB. Pure.
//!
//! Only top-level keys are compared: a PATCH carries every top-level key whose value changed,
//! whole (a merge patch of an object would have to null removed members one by one).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::validate::{HEALTH_KEY, MAX_REPORTED_BYTES};

#[derive(Debug, Default)]
pub struct Reported {
    /// What the twin should say.
    wanted: Map<String, Value>,
    /// What the hub has (its document after a GET, plus every PATCH it accepted since).
    view: Map<String, Value>,
    /// Values that are not to be sent again: the hub refused them or they did not fit. A key
    /// comes back once its wanted value changes.
    skipped: BTreeMap<String, Value>,
}

impl Reported {
    pub fn set(&mut self, key: &str, value: Value) {
        if self.wanted.get(key) != Some(&value) {
            self.wanted.insert(key.to_owned(), value);
        }
    }

    #[must_use]
    pub fn wanted(&self, key: &str) -> Option<&Value> {
        self.wanted.get(key)
    }

    /// What the hub holds for `key`, as far as leafgate knows.
    #[must_use]
    pub fn held(&self, key: &str) -> Option<&Value> {
        self.view.get(key)
    }

    /// The hub's reported document, read with a GET: what it holds now.
    pub fn read(&mut self, document: &Map<String, Value>) {
        self.view = document
            .iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }

    /// The hub accepted `patch`.
    pub fn accepted(&mut self, patch: Map<String, Value>) {
        self.view.extend(patch);
    }

    /// The hub refused `patch` (other than for throttling): not sent again as it is.
    pub fn refused(&mut self, patch: Map<String, Value>) {
        self.skipped.extend(patch);
    }

    /// Whether anything is to be sent.
    #[must_use]
    pub fn changed(&self) -> bool {
        self.wanted
            .iter()
            .any(|(k, v)| self.view.get(k) != Some(v) && self.skipped.get(k) != Some(v))
    }

    /// The next PATCH: every changed key, less what would take the document past the hub's
    /// limit (largest first, never leafgate's own view), whose names come back with it.
    #[must_use]
    pub fn patch(&mut self) -> (Map<String, Value>, Vec<String>) {
        let mut patch: Map<String, Value> = self
            .wanted
            .iter()
            .filter(|(k, v)| self.view.get(*k) != Some(*v) && self.skipped.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut dropped = Vec::new();
        loop {
            let mut document = self.view.clone();
            document.extend(patch.clone());
            let size = serde_json::to_vec(&document).map_or(0, |v| v.len());
            if size <= MAX_REPORTED_BYTES {
                break;
            }
            let largest = patch
                .iter()
                .filter(|(k, _)| k.as_str() != HEALTH_KEY)
                .max_by_key(|(_, v)| serde_json::to_vec(v).map_or(0, |v| v.len()))
                .map(|(k, _)| k.clone());
            let Some(key) = largest else { break };
            if let Some(value) = patch.remove(&key) {
                self.skipped.insert(key.clone(), value);
            }
            dropped.push(key);
        }
        (patch, dropped)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn only_what_changed_is_patched_and_accepted_patches_settle() {
        let mut r = Reported::default();
        r.read(&map(json!({"location": "Hall 3", "$version": 4})));
        r.set("location", json!("Hall 3"));
        r.set("serialNumber", json!(1234));
        assert!(r.changed());
        let (patch, dropped) = r.patch();
        assert_eq!(Value::Object(patch.clone()), json!({"serialNumber": 1234}));
        assert!(dropped.is_empty());
        r.accepted(patch);
        assert!(!r.changed());
        r.set("serialNumber", json!(1234));
        assert!(!r.changed());
        r.set("serialNumber", json!(1235));
        assert_eq!(Value::Object(r.patch().0), json!({"serialNumber": 1235}));
    }

    #[test]
    fn a_refused_value_is_not_sent_again_until_it_changes() {
        let mut r = Reported::default();
        r.set("a", json!(1));
        let (patch, _) = r.patch();
        r.refused(patch);
        assert!(!r.changed());
        r.set("a", json!(2));
        assert!(r.changed());
    }

    #[test]
    fn the_document_is_kept_under_32_kb_largest_first_and_never_at_leafgates_cost() {
        let mut r = Reported::default();
        r.set(HEALTH_KEY, json!({"state": "online"}));
        r.set("big", json!("x".repeat(20_000)));
        r.set("bigger", json!("y".repeat(25_000)));
        r.set("small", json!(1));
        let (patch, dropped) = r.patch();
        assert_eq!(dropped, ["bigger"]);
        assert_eq!(
            patch.keys().collect::<Vec<_>>(),
            ["big", HEALTH_KEY, "small"]
        );
        r.accepted(patch);
        assert!(!r.changed(), "a dropped value is not retried as it is");
    }
}
