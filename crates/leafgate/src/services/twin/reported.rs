//! A device's reported properties as leafgate keeps them: what it wants the twin to say, what
//! the hub has acknowledged, and the PATCH between the two, kept within IoT Hub's 32 KB. Pure.
//!
//! Only top-level keys are compared: a PATCH carries every top-level key whose value changed,
//! whole (a merge patch of an object would have to null removed members one by one).

use std::hash::{Hash as _, Hasher as _};

use serde_json::{Map, Value};

use crate::config::validate::{HEALTH_KEY, MAX_REPORTED_BYTES};

/// What leafgate knows of a value the hub holds: enough to tell whether a wanted value differs
/// and how much of the hub's 32 KB it takes, without a copy of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    hash: u64,
    /// Bytes of `"key":value` in the compact document.
    len: usize,
}

impl Held {
    fn of(key: &str, json: &str) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        json.hash(&mut hasher);
        let key_len = serde_json::to_string(key).map_or(key.len() + 2, |k| k.len());
        Self {
            hash: hasher.finish(),
            len: key_len + 1 + json.len(),
        }
    }
}

/// One key, with its digest, in a short list: a device reports a handful of keys, and a
/// `BTreeMap` allocates room for eleven on its first insert.
type Keyed<T> = Vec<(String, T)>;

fn get<'a, T>(list: &'a Keyed<T>, key: &str) -> Option<&'a T> {
    list.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn put<T>(list: &mut Keyed<T>, key: &str, value: T) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => list.push((key.to_owned(), value)),
    }
}

/// A PATCH: its body, and the keys it carries with their digests, to settle on its answer.
#[derive(Debug, Default)]
pub struct Patch {
    pub body: Vec<u8>,
    pub keys: Keyed<Held>,
}

impl Patch {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    #[must_use]
    pub fn names(&self) -> Vec<&str> {
        self.keys.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// What the twin should say, what the hub holds, and what not to send again. Values are kept
/// as compact JSON text: the health view as a `Value` tree took about a kilobyte per device.
#[derive(Debug, Default)]
pub struct Reported {
    wanted: Keyed<(Box<str>, Held)>,
    /// What the hub has (its document after a GET, plus every PATCH it accepted since).
    held: Keyed<Held>,
    /// Values that are not to be sent again: the hub refused them or they did not fit. A key
    /// comes back once its wanted value changes.
    skipped: Keyed<Held>,
}

impl Reported {
    pub fn set(&mut self, key: &str, value: &Value) {
        let json = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
        if get(&self.wanted, key).is_none_or(|(j, _)| **j != *json) {
            let held = Held::of(key, &json);
            put(&mut self.wanted, key, (json.into_boxed_str(), held));
        }
    }

    /// The hub's reported document, read with a GET: what it holds now.
    pub fn read(&mut self, document: &Map<String, Value>) {
        self.held = document
            .iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .map(|(k, v)| {
                let json = serde_json::to_string(v).unwrap_or_default();
                (k.clone(), Held::of(k, &json))
            })
            .collect();
    }

    /// The hub accepted `patch`.
    pub fn accepted(&mut self, patch: Patch) {
        for (k, held) in patch.keys {
            put(&mut self.held, &k, held);
        }
    }

    /// The hub refused `patch` (other than for throttling or a server error): not sent again
    /// as it is.
    pub fn refused(&mut self, patch: Patch) {
        for (k, held) in patch.keys {
            put(&mut self.skipped, &k, held);
        }
    }

    /// The wanted values to send: those the hub does not hold and that were not refused.
    fn changes(&self) -> impl Iterator<Item = (&String, &str, Held)> {
        self.wanted.iter().filter_map(|(k, (json, held))| {
            (get(&self.held, k) != Some(held) && get(&self.skipped, k) != Some(held))
                .then_some((k, &**json, *held))
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
    pub fn patch(&mut self) -> (Patch, Vec<String>) {
        let mut changes: Vec<(String, &str, Held)> =
            self.changes().map(|(k, j, h)| (k.clone(), j, h)).collect();
        let mut dropped = Vec::new();
        loop {
            // The compact document after the patch: braces, entries, commas between them.
            let mut entries: Vec<(&str, usize)> =
                self.held.iter().map(|(k, h)| (k.as_str(), h.len)).collect();
            for (k, _, held) in &changes {
                match entries.iter_mut().find(|(e, _)| e == k) {
                    Some(entry) => entry.1 = held.len,
                    None => entries.push((k, held.len)),
                }
            }
            let size = 2
                + entries.iter().map(|(_, len)| len).sum::<usize>()
                + entries.len().saturating_sub(1);
            if size <= MAX_REPORTED_BYTES {
                break;
            }
            let largest = changes
                .iter()
                .enumerate()
                .filter(|(_, (k, _, _))| k.as_str() != HEALTH_KEY)
                .max_by_key(|(_, (_, _, held))| held.len)
                .map(|(i, _)| i);
            let Some(i) = largest else { break };
            let (key, _, _) = changes.swap_remove(i);
            dropped.push(key);
        }
        let mut body = String::from("{");
        for (i, (key, json, _)) in changes.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&serde_json::to_string(key).unwrap_or_default());
            body.push(':');
            body.push_str(json);
        }
        body.push('}');
        let keys: Keyed<Held> = changes.into_iter().map(|(k, _, h)| (k, h)).collect();
        for key in &dropped {
            if let Some((_, held)) = get(&self.wanted, key) {
                let held = *held;
                put(&mut self.skipped, key, held);
            }
        }
        (
            Patch {
                body: body.into_bytes(),
                keys,
            },
            dropped,
        )
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

    fn body(patch: &Patch) -> Value {
        serde_json::from_slice(&patch.body).unwrap()
    }

    #[test]
    fn only_what_changed_is_patched_and_accepted_patches_settle() {
        let mut r = Reported::default();
        r.read(&map(json!({"location": "Hall 3", "$version": 4})));
        r.set("location", &json!("Hall 3"));
        r.set("serialNumber", &json!(1234));
        assert!(r.changed());
        let (patch, dropped) = r.patch();
        assert_eq!(body(&patch), json!({"serialNumber": 1234}));
        assert!(dropped.is_empty());
        r.accepted(patch);
        assert!(!r.changed());
        r.set("serialNumber", &json!(1234));
        assert!(!r.changed());
        r.set("serialNumber", &json!(1235));
        assert_eq!(body(&r.patch().0), json!({"serialNumber": 1235}));
    }

    #[test]
    fn the_size_kept_for_the_hubs_document_is_its_compact_json() {
        let document = map(json!({"a": "x\"y", "é": [1, 2.5, null], "n": {"k": true}}));
        let mut r = Reported::default();
        r.read(&document);
        let counted =
            2 + r.held.iter().map(|(_, h)| h.len).sum::<usize>() + r.held.len().saturating_sub(1);
        assert_eq!(counted, serde_json::to_vec(&document).unwrap().len());
    }

    #[test]
    fn a_refused_value_is_not_sent_again_until_it_changes() {
        let mut r = Reported::default();
        r.set("a", &json!(1));
        let (patch, _) = r.patch();
        r.refused(patch);
        assert!(!r.changed());
        r.set("a", &json!(2));
        assert!(r.changed());
    }

    #[test]
    fn the_document_is_kept_under_32_kb_largest_first_and_never_at_leafgates_cost() {
        let mut r = Reported::default();
        r.set(HEALTH_KEY, &json!({"state": "online"}));
        r.set("big", &json!("x".repeat(20_000)));
        r.set("bigger", &json!("y".repeat(25_000)));
        r.set("small", &json!(1));
        let (patch, dropped) = r.patch();
        assert_eq!(dropped, ["bigger"]);
        let mut names = patch.names();
        names.sort_unstable();
        assert_eq!(names, ["big", HEALTH_KEY, "small"]);
        assert_eq!(body(&patch)["small"], 1);
        r.accepted(patch);
        assert!(!r.changed(), "a dropped value is not retried as it is");
    }
}
