//! Device twins as the hub keeps them (`iothub-protocol.md` 5): per registered device a desired
//! and a reported document, each with its own `$version`, and tags for the service API. Pure
//! data and rules: JSON merge patches (RFC 7386), the hub's limits on what a patch may hold,
//! and the shapes the device and the service read. Who may change what, and who hears of it, is
//! the registry's and the connection's business.
//!
//! Limits, as §5 lists them, checked on every patch before anything changes:
//! - a patch is a JSON object;
//! - depth: at most 10 objects (or arrays) nested below the patch's root, as in the hub's
//!   documented example (a desired property `one` … `ten` deep, holding a value, is valid);
//! - keys at most 1 KB (UTF-8 bytes), without `.`, `$`, space or control characters;
//! - strings at most 4 KB (UTF-8 bytes); integers within ±4503599627370495 (2^52 − 1);
//! - the resulting document at most 32 KB, measured as the compact JSON of the document without
//!   its `$version` (the hub also counts `$metadata`, which the emulator does not keep); tags at
//!   most 8 KB, measured the same way.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::lock::lock;

/// Largest desired or reported document (compact JSON, without `$version`).
pub const MAX_TWIN_DOCUMENT: usize = 32 * 1024;
/// Largest tags document (compact JSON).
pub const MAX_TWIN_TAGS: usize = 8 * 1024;
/// Deepest nesting below a patch's root.
pub const MAX_TWIN_DEPTH: usize = 10;
/// Longest key, in bytes.
pub const MAX_TWIN_KEY: usize = 1024;
/// Longest string value, in bytes.
pub const MAX_TWIN_STRING: usize = 4 * 1024;
/// Largest magnitude of an integer value (2^52 − 1).
pub const MAX_TWIN_INTEGER: i64 = 4_503_599_627_370_495;

/// A device twin's two property documents as the device reads them with a GET: each an object
/// holding the properties and `$version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Twin {
    pub desired: Value,
    pub reported: Value,
}

/// What a device asked of its twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwinOp {
    /// `$iothub/twin/GET/?$rid=`.
    Get,
    /// `$iothub/twin/PATCH/properties/reported/?$rid=`.
    PatchReported,
}

/// One twin request a device published, and how the emulator answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinRequest {
    pub device: String,
    /// When it arrived.
    pub at: Instant,
    pub op: TwinOp,
    /// The request id, as the device sent it.
    pub rid: String,
    /// The status of the response (200, 204, 400, 429); `None` when it was not answered
    /// ([`Fault::TwinSilent`](crate::Fault::TwinSilent)). A response the device cannot receive
    /// because it is not subscribed to `$iothub/twin/res/#` still has its status here.
    pub status: Option<u16>,
}

/// Why a twin operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwinError {
    /// 404 / 404001 `DeviceNotFound`: not registered.
    #[error("device is not registered")]
    DeviceNotFound,
    /// 400 / 400004 `ArgumentInvalid`: the patch breaks one of the hub's limits, or is not a JSON
    /// object. The twin is unchanged.
    #[error("invalid twin patch: {0}")]
    InvalidPatch(String),
    /// 412 / 412001 `PreconditionFailed`: an `If-Match` that is neither `*` nor the twin's etag.
    #[error("the twin's etag does not match If-Match")]
    PreconditionFailed,
}

impl TwinError {
    /// The HTTP status the service API answers with (and the MQTT status for a device).
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            TwinError::DeviceNotFound => 404,
            TwinError::InvalidPatch(_) => 400,
            TwinError::PreconditionFailed => 412,
        }
    }

    /// The numeric `errorCode`.
    #[must_use]
    pub fn error_code(&self) -> u32 {
        match self {
            TwinError::DeviceNotFound => 404_001,
            TwinError::InvalidPatch(_) => 400_004,
            TwinError::PreconditionFailed => 412_001,
        }
    }

    /// The `iothub-errorcode` header value.
    #[must_use]
    pub fn error_name(&self) -> &'static str {
        match self {
            TwinError::DeviceNotFound => "DeviceNotFound",
            TwinError::InvalidPatch(_) => "ArgumentInvalid",
            TwinError::PreconditionFailed => "PreconditionFailed",
        }
    }
}

/// One property document with its version.
#[derive(Debug, Clone)]
struct Properties {
    map: Map<String, Value>,
    version: u64,
}

impl Default for Properties {
    fn default() -> Self {
        Properties {
            map: Map::new(),
            version: 1,
        }
    }
}

impl Properties {
    fn to_value(&self) -> Value {
        let mut map = self.map.clone();
        map.insert("$version".to_owned(), Value::from(self.version));
        Value::Object(map)
    }
}

/// A device's twin in the registry. Fresh twins have both versions at 1, as the hub's do.
#[derive(Debug, Clone)]
pub(crate) struct TwinDoc {
    desired: Properties,
    reported: Properties,
    tags: Map<String, Value>,
    /// The twin's own version (the service API's `version`), +1 on every change of either
    /// document or the tags; the etag is derived from it.
    version: u64,
}

impl Default for TwinDoc {
    fn default() -> Self {
        TwinDoc {
            desired: Properties::default(),
            reported: Properties::default(),
            tags: Map::new(),
            version: 1,
        }
    }
}

impl TwinDoc {
    /// Both documents with their `$version`s.
    pub(crate) fn twin(&self) -> Twin {
        Twin {
            desired: self.desired.to_value(),
            reported: self.reported.to_value(),
        }
    }

    pub(crate) fn reported(&self) -> Value {
        self.reported.to_value()
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The etag the service API shows: the twin's version as 8 big-endian bytes in base64
    /// (`AAAAAAAAAAE=` for version 1), the shape the hub's etags have.
    pub(crate) fn etag(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.version.to_be_bytes())
    }

    /// Whether an `If-Match` value (quoted or not) allows a change: absent, `*`, or this etag.
    pub(crate) fn matches(&self, if_match: Option<&str>) -> bool {
        match if_match.map(|v| v.trim().trim_matches('"')) {
            None | Some("*") => true,
            Some(tag) => tag == self.etag(),
        }
    }

    pub(crate) fn tags(&self) -> &Map<String, Value> {
        &self.tags
    }

    /// Applies a device's reported patch; returns the new reported version.
    ///
    /// # Errors
    /// [`TwinError::InvalidPatch`] when the patch breaks a limit; the twin is unchanged.
    pub(crate) fn patch_reported(&mut self, patch: &Value) -> Result<u64, TwinError> {
        let patch = check_patch(patch)?;
        let map = merged(&self.reported.map, patch, MAX_TWIN_DOCUMENT, "reported")?;
        self.reported.map = map;
        self.reported.version += 1;
        self.version += 1;
        Ok(self.reported.version)
    }

    /// Applies a service's desired patch; returns the new desired version and the patch to push
    /// to the device (without `$version`).
    ///
    /// # Errors
    /// As [`TwinDoc::patch_reported`].
    pub(crate) fn patch_desired(&mut self, patch: &Value) -> Result<(u64, Value), TwinError> {
        let patch = check_patch(patch)?;
        let map = merged(&self.desired.map, patch, MAX_TWIN_DOCUMENT, "desired")?;
        self.desired.map = map;
        self.desired.version += 1;
        self.version += 1;
        Ok((self.desired.version, Value::Object(patch.clone())))
    }

    /// Replaces the desired document with `desired`; returns the new version and the merge
    /// patch that turns the old document into the new one (removed keys as `null`), which is
    /// what the device is told.
    ///
    /// # Errors
    /// As [`TwinDoc::patch_reported`].
    pub(crate) fn replace_desired(&mut self, desired: &Value) -> Result<(u64, Value), TwinError> {
        let new = check_patch(desired)?;
        if new.values().any(Value::is_null) {
            return Err(TwinError::InvalidPatch(
                "a replaced desired document cannot hold null".to_owned(),
            ));
        }
        let new = merged(&Map::new(), new, MAX_TWIN_DOCUMENT, "desired")?;
        let change = diff(&self.desired.map, &new);
        self.desired.map = new;
        self.desired.version += 1;
        self.version += 1;
        Ok((self.desired.version, Value::Object(change)))
    }

    /// Merges (or with `replace`, replaces) the tags.
    ///
    /// # Errors
    /// As [`TwinDoc::patch_reported`], with the 8 KB limit of tags.
    pub(crate) fn set_tags(&mut self, tags: &Value, replace: bool) -> Result<(), TwinError> {
        let patch = check_patch(tags)?;
        let base = if replace {
            Map::new()
        } else {
            self.tags.clone()
        };
        self.tags = merged(&base, patch, MAX_TWIN_TAGS, "tags")?;
        self.version += 1;
        Ok(())
    }
}

/// `base` with `patch` merged in, refused if the result is larger than `limit`.
fn merged(
    base: &Map<String, Value>,
    patch: &Map<String, Value>,
    limit: usize,
    what: &str,
) -> Result<Map<String, Value>, TwinError> {
    let mut map = base.clone();
    merge(&mut map, patch);
    let size = serde_json::to_vec(&map).map_or(usize::MAX, |json| json.len());
    if size > limit {
        return Err(TwinError::InvalidPatch(format!(
            "the {what} document would be {size} bytes, more than {limit}"
        )));
    }
    Ok(map)
}

/// RFC 7386 JSON merge patch of an object into an object: `null` removes a key, an object is
/// merged into the object there (or into an empty one), anything else replaces.
pub(crate) fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(existing) = slot {
                    merge(existing, inner);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// The merge patch that turns `old` into `new`.
fn diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for key in old.keys() {
        if !new.contains_key(key) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, value) in new {
        match (old.get(key), value) {
            (Some(before), after) if before == after => {}
            (Some(Value::Object(before)), Value::Object(after)) => {
                patch.insert(key.clone(), Value::Object(diff(before, after)));
            }
            _ => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    patch
}

/// Checks a patch against the hub's limits; the patch's object when it passes.
///
/// # Errors
/// [`TwinError::InvalidPatch`] naming the first limit broken.
pub(crate) fn check_patch(patch: &Value) -> Result<&Map<String, Value>, TwinError> {
    let Value::Object(map) = patch else {
        return Err(TwinError::InvalidPatch(
            "a twin patch must be a JSON object".to_owned(),
        ));
    };
    check_object(map, 0)?;
    Ok(map)
}

fn check_object(map: &Map<String, Value>, depth: usize) -> Result<(), TwinError> {
    for (key, value) in map {
        check_key(key)?;
        check_value(value, depth)?;
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), TwinError> {
    let bad = |why: &str| Err(TwinError::InvalidPatch(format!("key {key:.64?} {why}")));
    if key.is_empty() {
        return bad("is empty");
    }
    if key.len() > MAX_TWIN_KEY {
        return bad("is longer than 1 KB");
    }
    if key
        .chars()
        .any(|c| c.is_control() || matches!(c, '.' | '$' | ' '))
    {
        return bad("holds '.', '$', a space or a control character");
    }
    Ok(())
}

fn check_value(value: &Value, depth: usize) -> Result<(), TwinError> {
    let nested = |depth: usize| {
        if depth + 1 > MAX_TWIN_DEPTH {
            Err(TwinError::InvalidPatch(format!(
                "nested deeper than {MAX_TWIN_DEPTH} levels"
            )))
        } else {
            Ok(depth + 1)
        }
    };
    match value {
        Value::Object(map) => check_object(map, nested(depth)?),
        Value::Array(items) => {
            let depth = nested(depth)?;
            items.iter().try_for_each(|item| check_value(item, depth))
        }
        Value::String(text) if text.len() > MAX_TWIN_STRING => Err(TwinError::InvalidPatch(
            format!("a string value of {} bytes is longer than 4 KB", text.len()),
        )),
        Value::Number(n) => {
            let in_range = if let Some(i) = n.as_i64() {
                (-MAX_TWIN_INTEGER..=MAX_TWIN_INTEGER).contains(&i)
            } else {
                // A u64 beyond i64, or a float: floats are not limited.
                n.as_u64().is_none()
            };
            if in_range {
                Ok(())
            } else {
                Err(TwinError::InvalidPatch(format!(
                    "integer {n} is outside ±{MAX_TWIN_INTEGER}"
                )))
            }
        }
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
    }
}

/// A hub-wide rate limit: at most `limit` requests in each 1-second window, the window starting
/// at the first request after the previous one ended (`None`: unlimited).
#[derive(Debug)]
pub(crate) struct RateWindow {
    limit: Option<u32>,
    window: Mutex<Option<(Instant, u32)>>,
}

impl RateWindow {
    pub(crate) fn new(limit: Option<u32>) -> Self {
        RateWindow {
            limit,
            window: Mutex::new(None),
        }
    }

    /// Counts a request at `now`; false when it is over the limit (and then not counted).
    pub(crate) fn admit(&self, now: Instant) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        let mut window = lock(&self.window);
        let (start, count) = match *window {
            Some((start, count)) if now.duration_since(start) < Duration::from_secs(1) => {
                (start, count)
            }
            _ => (now, 0),
        };
        if count >= limit {
            *window = Some((start, count));
            return false;
        }
        *window = Some((start, count + 1));
        true
    }
}

/// The body of the device's GET response.
pub(crate) fn get_body(twin: &Twin) -> Value {
    serde_json::json!({"desired": twin.desired, "reported": twin.reported})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        let mut value = json!("leaf");
        for n in (0..levels).rev() {
            value = json!({ format!("l{n}"): value });
        }
        value
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_window_admits_the_limit_per_second() {
        let unlimited = RateWindow::new(None);
        assert!((0..1000).all(|_| unlimited.admit(Instant::now())));
        let window = RateWindow::new(Some(2));
        let start = Instant::now();
        assert!(window.admit(start) && window.admit(start));
        assert!(!window.admit(start + Duration::from_millis(999)));
        assert!(window.admit(start + Duration::from_secs(1)), "a new window");
        let zero = RateWindow::new(Some(0));
        assert!(!zero.admit(start));
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The RFC's appendix A examples, as objects.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
            (
                json!({"a": "x"}),
                json!({"a": {"b": 1}}),
                json!({"a": {"b": 1}}),
            ),
        ];
        for (target, patch, expected) in cases {
            let mut map = target.as_object().unwrap().clone();
            merge(&mut map, patch.as_object().unwrap());
            assert_eq!(Value::Object(map), expected, "{target} + {patch}");
        }
    }

    #[test]
    fn limits_refuse_what_the_hub_refuses() {
        for bad in [
            json!([1]),
            json!("x"),
            json!({"$x": 1}),
            json!({"a.b": 1}),
            json!({"a b": 1}),
            json!({"a\u{1}": 1}),
            json!({"": 1}),
            json!({"k".repeat(MAX_TWIN_KEY + 1): 1}),
            json!({"s": "x".repeat(MAX_TWIN_STRING + 1)}),
            json!({"n": MAX_TWIN_INTEGER + 1}),
            json!({"n": -MAX_TWIN_INTEGER - 1}),
            json!({"n": u64::MAX}),
            json!({"deep": {"$bad": 1}}),
            nested(MAX_TWIN_DEPTH + 2),
        ] {
            assert!(check_patch(&bad).is_err(), "{bad:.80}");
        }
        for good in [
            json!({}),
            json!({"a": null, "b": [1, {"c": true}], "f": 1.5e300}),
            json!({"k".repeat(MAX_TWIN_KEY): "x".repeat(MAX_TWIN_STRING)}),
            json!({"n": MAX_TWIN_INTEGER, "m": -MAX_TWIN_INTEGER}),
            // The root plus ten nested objects holding a value: the hub's valid example.
            nested(MAX_TWIN_DEPTH + 1),
        ] {
            assert!(check_patch(&good).is_ok(), "{good:.80}");
        }
    }

    #[test]
    fn patches_bump_versions_and_a_refused_one_changes_nothing() {
        let mut doc = TwinDoc::default();
        assert_eq!(
            doc.twin(),
            Twin {
                desired: json!({"$version": 1}),
                reported: json!({"$version": 1})
            }
        );
        assert_eq!(doc.etag(), "AAAAAAAAAAE=");
        assert_eq!(doc.patch_reported(&json!({"a": 1, "b": {"c": 2}})), Ok(2));
        assert_eq!(doc.patch_reported(&json!({"b": null})), Ok(3));
        assert_eq!(doc.reported(), json!({"a": 1, "$version": 3}));
        let big = json!({"s": "x".repeat(4000)});
        let mut n = 0;
        let err = loop {
            match doc.patch_reported(&json!({ format!("k{n}"): big })) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, TwinError::InvalidPatch(ref m) if m.contains("32768")),
            "{err}"
        );
        let size = serde_json::to_vec(&doc.reported.map).unwrap().len();
        assert!(size <= MAX_TWIN_DOCUMENT && size + 4000 > MAX_TWIN_DOCUMENT);
        assert_eq!(doc.reported.version, 3 + n);

        let (version, push) = doc
            .patch_desired(&json!({"speed": 5, "old": null}))
            .unwrap();
        assert_eq!((version, push), (2, json!({"speed": 5, "old": null})));
        let (version, push) = doc
            .replace_desired(&json!({"mode": "eco", "nested": {"a": 1}}))
            .unwrap();
        assert_eq!(version, 3);
        assert_eq!(
            push,
            json!({"speed": null, "mode": "eco", "nested": {"a": 1}})
        );
        assert_eq!(
            doc.twin().desired,
            json!({"mode": "eco", "nested": {"a": 1}, "$version": 3})
        );
        assert!(doc.matches(None) && doc.matches(Some("*")) && doc.matches(Some("\"*\"")));
        let etag = format!("\"{}\"", doc.etag());
        assert!(doc.matches(Some(&etag)));
        assert!(!doc.matches(Some("\"AAAAAAAAAAE=\"")));
    }
}
