//! Desired properties: which values to apply to the hardware, and the acknowledgement each gets
//! in reported properties, after IoT Plug and Play's writable-property convention:
//! `{"<name>": {"value": v, "ac": status, "av": desired $version, "ad": "description"}}`. Pure.

use serde_json::{Map, Value, json};

/// A desired value to apply, and the desired document's version that asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub value: Value,
    pub version: u64,
}

/// The `$version` of a desired document or notification.
#[must_use]
pub fn version(document: &Map<String, Value>) -> Option<u64> {
    document.get("$version").and_then(Value::as_u64)
}

/// What a GET's desired document asks of the hardware.
#[derive(Debug, Default, PartialEq)]
pub struct Sync {
    /// Values the hardware may not hold yet: applied.
    pub apply: Vec<(String, Wanted)>,
    /// Values acknowledged as applied with this very value at an older version: acknowledged
    /// again at the document's version, without a write, so a Plug and Play view does not show
    /// them pending.
    pub reack: Vec<(String, Wanted, Value)>,
}

/// After a GET: the mapped properties of the full desired document that the hardware may not
/// hold yet. One is skipped only when the reported document acknowledges it as applied (`ac`
/// 200) with the same value, or at this very version; anything else (a value changed while the
/// leaf or the gateway was offline, an earlier failure) is applied again.
#[must_use]
pub fn from_document(
    desired: &Map<String, Value>,
    reported: impl Fn(&str) -> Option<Value>,
    mapped: impl Fn(&str) -> bool,
) -> Sync {
    let mut sync = Sync::default();
    let Some(version) = version(desired) else {
        return sync;
    };
    for (name, value) in desired {
        if name.starts_with('$') || value.is_null() || !mapped(name) {
            continue;
        }
        let wanted = Wanted {
            value: value.clone(),
            version,
        };
        let ack = reported(name);
        let ack = ack.as_ref();
        let applied = ack.and_then(|a| a.get("ac")).and_then(Value::as_u64) == Some(200);
        let same_version = ack.and_then(|a| a.get("av")).and_then(Value::as_u64) == Some(version);
        let same_value = ack.and_then(|a| a.get("value")) == Some(value);
        match (applied, same_version, same_value, ack) {
            (true, true, _, _) => {}
            (true, false, true, Some(ack)) => sync.reack.push((name.clone(), wanted, ack.clone())),
            _ => sync.apply.push((name.clone(), wanted)),
        }
    }
    sync
}

/// The mapped properties a desired notification changes (a `null` deletes a property: nothing
/// to write).
#[must_use]
pub fn from_patch(
    patch: &Map<String, Value>,
    version: u64,
    mapped: impl Fn(&str) -> bool,
) -> Vec<(String, Wanted)> {
    patch
        .iter()
        .filter(|(name, value)| !name.starts_with('$') && !value.is_null() && mapped(name))
        .map(|(name, value)| {
            (
                name.clone(),
                Wanted {
                    value: value.clone(),
                    version,
                },
            )
        })
        .collect()
}

/// RFC 7386: `patch` applied to `base`. A notification carries a merge patch of the desired
/// document, so a property whose value is an object arrives as only its changed members.
#[must_use]
pub fn merge(base: Option<&Value>, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut out = match base {
        Some(Value::Object(base)) => base.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            out.remove(key);
        } else {
            let merged = merge(out.get(key), value);
            out.insert(key.clone(), merged);
        }
    }
    Value::Object(out)
}

/// The names in a desired document or notification that no mapping takes.
#[must_use]
pub fn unmapped(document: &Map<String, Value>, mapped: impl Fn(&str) -> bool) -> Vec<&str> {
    document
        .keys()
        .map(String::as_str)
        .filter(|name| !name.starts_with('$') && !mapped(name))
        .collect()
}

/// The payload a desired value gives its writes: an object as it is (several fields), any
/// other value as the one field named after the property.
#[must_use]
pub fn payload(name: &str, value: &Value) -> Value {
    match value {
        Value::Object(_) => value.clone(),
        other => json!({ name: other }),
    }
}

/// The value an acknowledgement reports: what the writes read back under the property's name
/// when they read it, else the desired value.
#[must_use]
pub fn applied_value(name: &str, desired: &Value, reply: &Value) -> Value {
    match (desired, reply.get(name)) {
        (Value::Object(_), _) | (_, None) => desired.clone(),
        (_, Some(read_back)) => read_back.clone(),
    }
}

/// The acknowledgement of one desired value.
#[must_use]
pub fn ack(value: Value, status: u16, version: u64, description: &str) -> Value {
    json!({"value": value, "ac": status, "av": version, "ad": description})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn after_a_get_only_what_the_hardware_may_not_hold_is_applied() {
        let desired = map(json!({
            "speed": 1200, "ramp": 5, "mode": "auto", "colour": "red", "old": 3, "$version": 9
        }));
        let reported = map(json!({
            // applied with this value earlier: skipped
            "speed": {"value": 1200, "ac": 200, "av": 7},
            // applied with another value: changed while offline
            "ramp": {"value": 4, "ac": 200, "av": 7},
            // failed earlier: tried again
            "mode": {"value": "auto", "ac": 503, "av": 9},
            // read back differently, but at this version: skipped
            "old": {"value": 2.9, "ac": 200, "av": 9},
        }));
        let got = from_document(&desired, |n| reported.get(n).cloned(), |n| n != "colour");
        let names: Vec<&str> = got.apply.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["mode", "ramp"]);
        assert!(got.apply.iter().all(|(_, w)| w.version == 9));
        // Applied with this value at version 7: acknowledged again at 9, not written.
        let reack: Vec<&str> = got.reack.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(reack, ["speed"]);
        assert_eq!(unmapped(&desired, |n| n != "colour"), ["colour"]);
    }

    #[test]
    fn a_notification_applies_what_it_sets() {
        let patch = map(json!({"speed": 900, "gone": null, "colour": 1, "$version": 10}));
        let got = from_patch(&patch, 10, |n| n != "colour");
        assert_eq!(
            got,
            [(
                "speed".to_owned(),
                Wanted {
                    value: json!(900),
                    version: 10
                }
            )]
        );
    }

    #[test]
    fn object_values_are_merged_as_the_hub_patches_them() {
        let base = json!({"lo": 1, "hi": 2, "band": {"a": 1, "b": 2}});
        assert_eq!(
            merge(Some(&base), &json!({"hi": 5, "band": {"b": null}})),
            json!({"lo": 1, "hi": 5, "band": {"a": 1}})
        );
        assert_eq!(merge(Some(&base), &json!(7)), json!(7));
        assert_eq!(merge(None, &json!({"x": null, "y": 1})), json!({"y": 1}));
    }

    #[test]
    fn payloads_and_acknowledgements_follow_the_convention() {
        assert_eq!(payload("speed", &json!(900)), json!({"speed": 900}));
        assert_eq!(
            payload("limits", &json!({"lo": 1, "hi": 2})),
            json!({"lo": 1, "hi": 2})
        );
        assert_eq!(
            applied_value("speed", &json!(900), &json!({"speed": 899.5})),
            json!(899.5)
        );
        assert_eq!(applied_value("speed", &json!(900), &json!({})), json!(900));
        assert_eq!(
            ack(json!(900), 200, 10, "applied"),
            json!({"value": 900, "ac": 200, "av": 10, "ad": "applied"})
        );
    }
}
