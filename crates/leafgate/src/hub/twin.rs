//! Device twin topics (`iothub-protocol.md` 5): format the device's requests, parse the hub's
//! answers and desired-property notifications. Pure.
//!
//! - GET: `$iothub/twin/GET/?$rid={rid}` → `$iothub/twin/res/200/?$rid={rid}`
//! - PATCH reported: `$iothub/twin/PATCH/properties/reported/?$rid={rid}` →
//!   `$iothub/twin/res/204/?$rid={rid}&$version={v}`
//! - desired changes: `$iothub/twin/PATCH/properties/desired/?$version={v}`

/// Answers to the device's twin requests.
pub const RESPONSES_FILTER: &str = "$iothub/twin/res/#";
/// Notifications of desired-property changes.
pub const DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";

const PREFIX: &str = "$iothub/twin/";
const RESPONSE_PREFIX: &str = "$iothub/twin/res/";
const DESIRED_PREFIX: &str = "$iothub/twin/PATCH/properties/desired/";

/// Whether `topic` is under the twin's topic tree.
#[must_use]
pub fn is_twin(topic: &str) -> bool {
    topic.starts_with(PREFIX)
}

#[must_use]
pub fn get(rid: &str) -> String {
    format!("{PREFIX}GET/?$rid={rid}")
}

#[must_use]
pub fn patch_reported(rid: &str) -> String {
    format!("{PREFIX}PATCH/properties/reported/?$rid={rid}")
}

/// An answer to a twin request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: u16,
    pub rid: &'a str,
    /// The reported properties' new version (answers to a PATCH).
    pub version: Option<u64>,
}

fn query<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Parses `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`.
#[must_use]
pub fn parse_response(topic: &str) -> Option<Response<'_>> {
    let rest = topic.strip_prefix(RESPONSE_PREFIX)?;
    let (status, q) = rest.split_once("/?")?;
    Some(Response {
        status: status.parse().ok()?,
        rid: query(q, "$rid").filter(|r| !r.is_empty())?,
        version: query(q, "$version").and_then(|v| v.parse().ok()),
    })
}

/// The version a desired-property notification names in its topic, if it is one
/// (`$iothub/twin/PATCH/properties/desired/?$version={v}`); `Some(None)` when the topic has no
/// readable version (the body's `$version` then decides).
#[must_use]
pub fn parse_desired(topic: &str) -> Option<Option<u64>> {
    let rest = topic.strip_prefix(DESIRED_PREFIX)?;
    let q = rest.strip_prefix('?').unwrap_or(rest);
    Some(query(q, "$version").and_then(|v| v.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_formatted_as_the_sdks_send_them() {
        assert_eq!(get("7"), "$iothub/twin/GET/?$rid=7");
        assert_eq!(
            patch_reported("8"),
            "$iothub/twin/PATCH/properties/reported/?$rid=8"
        );
    }

    #[test]
    fn answers_and_notifications_are_parsed() {
        assert_eq!(
            parse_response("$iothub/twin/res/204/?$rid=8&$version=12"),
            Some(Response {
                status: 204,
                rid: "8",
                version: Some(12)
            })
        );
        assert_eq!(
            parse_response("$iothub/twin/res/200/?$rid=a-b"),
            Some(Response {
                status: 200,
                rid: "a-b",
                version: None
            })
        );
        for bad in [
            "$iothub/twin/res/200/",
            "$iothub/twin/res/x/?$rid=1",
            "$iothub/twin/res/200/?$rid=",
            "$iothub/methods/res/200/?$rid=1",
        ] {
            assert_eq!(parse_response(bad), None, "{bad}");
        }
        assert_eq!(
            parse_desired("$iothub/twin/PATCH/properties/desired/?$version=5"),
            Some(Some(5))
        );
        assert_eq!(
            parse_desired("$iothub/twin/PATCH/properties/desired/"),
            Some(None)
        );
        assert_eq!(parse_desired("$iothub/twin/res/200/?$rid=1"), None);
        assert!(is_twin("$iothub/twin/res/200/?$rid=1"));
        assert!(!is_twin("$iothub/methods/POST/x/?$rid=1"));
    }
}
