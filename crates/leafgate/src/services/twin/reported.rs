//! A device's reported properties as leafgate keeps them: what it wants the twin to say, what
//! the hub has acknowledged, and the PATCH between the two, kept within IoT Hub's 32 KB. Pure.
//!
//! Only top-level keys are compared: a PATCH carries every top-level key whose value changed,
//! whole (a merge patch of an object would have to null removed members one by one).

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};

use serde_json::{Map, Value};

use crate::config::validate::{HEALTH_KEY, MAX_REPORTED_BYTES};

/// What leafgate knows of a value the hub holds: enough to tell whether a wanted value differs
/// and how much of the hub's 32 KB it takes, without a copy of the value (a second copy of the
/// health view cost every device about a kilobyte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    hash: u64,
    /// Bytes of `"key":value` in the compact document.
    len: usize,
}

impl Held {
    fn of(key: &str, value: &Value) -> Self {
        let text = serde_json::to_vec(value).unwrap_or_default();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut hasher);
        let key_len = serde_json::to_vec(key).map_or(key.len() + 2, |k| k.len());
        Self {
            hash: hasher.finish(),
            len: key_len + 1 + text.len(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Reported {
    /// What the twin should say, each with its digest (computed once per change: the task asks
    /// whether anything changed after every event).
    wanted: BTreeMap<String, (Value, Held)>,
    /// What the hub has (its document after a GET, plus every PATCH it accepted since).
    held: BTreeMap<String, Held>,
    /// Values that are not to be sent again: the hub refused them or they did not fit. A key
    /// comes back once its wanted value changes.
    skipped: BTreeMap<String, Held>,
}

impl Reported {
    pub fn set(&mut self, key: &str, value: Value) {
        if self.wanted.get(key).is_none_or(|(v, _)| *v != value) {
            let held = Held::of(key, &value);
            self.wanted.insert(key.to_owned(), (value, held));
        }
    }

    /// The hub's reported document, read with a GET: what it holds now.
    pub fn read(&mut self, document: &Map<String, Value>) {
        self.held = document
            .iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .map(|(k, v)| (k.clone(), Held::of(k, v)))
            .collect();
    }

    /// The hub accepted `patch`.
    pub fn accepted(&mut self, patch: Map<String, Value>) {
        for (k, v) in patch {
            let held = Held::of(&k, &v);
            self.held.insert(k, held);
        }
    }

    /// The hub refused `patch` (other than for throttling): not sent again as it is.
    pub fn refused(&mut self, patch: Map<String, Value>) {
        for (k, v) in patch {
            let held = Held::of(&k, &v);
            self.skipped.insert(k, held);
        }
    }

    /// The wanted values to send: those the hub does not hold and that were not refused.
    fn changes(&self) -> impl Iterator<Item = (&String, &Value, Held)> {
        self.wanted.iter().filter_map(|(k, (v, held))| {
            (self.held.get(k) != Some(held) && self.skipped.get(k) != Some(held))
                .then_some((k, v, *held))
        })
    }

    /// Whether anything is to be sent.
    #[must_use]
    pub fn changed(&self) -> bool {
        self.changes().next().is_some()
    }

    /// The next PATCH: every changed key, less what would take the document past the hub's
    /// limit (largest first, never leafgate's own view), whose names come back with it.
    #[must_use]
    pub fn patch(&mut self) -> (Map<String, Value>, Vec<String>) {
        let mut patch: Vec<(String, Value, Held)> = self
            .changes()
            .map(|(k, v, held)| (k.clone(), v.clone(), held))
            .collect();
        let mut dropped = Vec::new();
        loop {
            // The compact document after the patch: braces, entries, commas between them.
            let mut entries: BTreeMap<&str, usize> =
                self.held.iter().map(|(k, h)| (k.as_str(), h.len)).collect();
            for (k, _, held) in &patch {
                entries.insert(k, held.len);
            }
            let size = 2 + entries.values().sum::<usize>() + entries.len().saturating_sub(1);
            if size <= MAX_REPORTED_BYTES {
                break;
            }
            let largest = patch
                .iter()
                .enumerate()
                .filter(|(_, (k, _, _))| k.as_str() != HEALTH_KEY)
                .max_by_key(|(_, (_, _, held))| held.len)
                .map(|(i, _)| i);
            let Some(i) = largest else { break };
            let (key, _, held) = patch.swap_remove(i);
            self.skipped.insert(key.clone(), held);
            dropped.push(key);
        }
        (patch.into_iter().map(|(k, v, _)| (k, v)).collect(), dropped)
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
