//! IoT Hub direct-method topics: parse requests, format responses (`iothub-protocol.md` 3).
//!
//! Request: `$iothub/methods/POST/{method name}/?$rid={request id}`.
//! Response: `$iothub/methods/res/{status}/?$rid={request id}`.

/// The subscription that delivers every method request for this device.
pub const METHODS_FILTER: &str = "$iothub/methods/POST/#";

const REQUEST_PREFIX: &str = "$iothub/methods/POST/";

/// A method request's name and request id, borrowed from the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodTopic<'a> {
    pub name: &'a str,
    pub rid: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is not a method request")]
    NotAMethod,
    #[error("method request topic has no $rid")]
    NoRequestId,
    #[error("method request topic has an empty method name")]
    EmptyName,
}

/// Whether `topic` is under the method requests' prefix (the methods service's to answer, even
/// when [`parse_request`] then refuses it).
#[must_use]
pub fn is_method_request(topic: &str) -> bool {
    topic.starts_with(REQUEST_PREFIX)
}

/// Parses a method request topic.
///
/// The method name is everything between `POST/` and the last `/?`, so names holding `/` (which
/// the service API allows) survive. Extra query keys after `$rid` are ignored.
///
/// # Errors
/// When the topic is not under `$iothub/methods/POST/`, has no `$rid`, or no name.
pub fn parse_request(topic: &str) -> Result<MethodTopic<'_>, TopicError> {
    let rest = topic
        .strip_prefix(REQUEST_PREFIX)
        .ok_or(TopicError::NotAMethod)?;
    let (name, query) = rest.rsplit_once("/?").ok_or(TopicError::NoRequestId)?;
    let rid = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("$rid="))
        .filter(|rid| !rid.is_empty())
        .ok_or(TopicError::NoRequestId)?;
    if name.is_empty() {
        return Err(TopicError::EmptyName);
    }
    Ok(MethodTopic { name, rid })
}

/// Formats the response topic for `status` and `rid`.
#[must_use]
pub fn response(status: u16, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={rid}")
}

/// Parses a response topic into (status, rid); used by the emulator.
#[must_use]
pub fn parse_response(topic: &str) -> Option<(u16, &str)> {
    let rest = topic.strip_prefix("$iothub/methods/res/")?;
    let (status, query) = rest.split_once("/?")?;
    let rid = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("$rid="))?;
    Some((status.parse().ok()?, rid))
}

/// Formats a request topic; used by the emulator.
#[must_use]
pub fn request(name: &str, rid: &str) -> String {
    format!("{REQUEST_PREFIX}{name}/?$rid={rid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_topics() {
        type Case<'a> = (&'a str, Result<(&'a str, &'a str), TopicError>);
        let cases: &[Case<'_>] = &[
            (
                "$iothub/methods/POST/setSpeed/?$rid=42",
                Ok(("setSpeed", "42")),
            ),
            ("$iothub/methods/POST/a/b/?$rid=7", Ok(("a/b", "7"))),
            ("$iothub/methods/POST/x/?$rid=1&extra=2", Ok(("x", "1"))),
            (
                "$iothub/methods/POST/x/?foo=1&$rid=abc-def",
                Ok(("x", "abc-def")),
            ),
            ("$iothub/methods/POST/ünï+#/?$rid=9", Ok(("ünï+#", "9"))),
            ("$iothub/methods/POST//?$rid=1", Err(TopicError::EmptyName)),
            (
                "$iothub/methods/POST/x/?$rid=",
                Err(TopicError::NoRequestId),
            ),
            ("$iothub/methods/POST/x", Err(TopicError::NoRequestId)),
            (
                "$iothub/methods/POST/x/?rid=1",
                Err(TopicError::NoRequestId),
            ),
            ("$iothub/twin/res/200/?$rid=1", Err(TopicError::NotAMethod)),
            ("", Err(TopicError::NotAMethod)),
        ];
        for (topic, want) in cases {
            let got = parse_request(topic).map(|t| (t.name, t.rid));
            assert_eq!(&got, want, "topic {topic}");
        }
    }

    #[test]
    fn request_and_response_round_trip() {
        let t = request("get/status", "17");
        let parsed = parse_request(&t).unwrap();
        assert_eq!((parsed.name, parsed.rid), ("get/status", "17"));
        assert_eq!(response(504, "17"), "$iothub/methods/res/504/?$rid=17");
        assert_eq!(parse_response(&response(504, "17")), Some((504, "17")));
        assert_eq!(parse_response("$iothub/methods/res/x/?$rid=1"), None);
    }
}
