//! Device-to-cloud message topics (`iothub-protocol.md` 6.1): where a telemetry message goes and
//! how its properties ride in the topic.
//!
//! `devices/{id}/messages/events/{property bag}`, the bag a query string whose keys and values
//! are percent-encoded as the Azure SDKs do: everything but RFC 3986's unreserved characters,
//! space as `%20` (never `+`), `$` as `%24`. System properties are the `$.`-prefixed keys;
//! everything else reaches the back end as an application property.

use std::fmt::Write as _;

/// The message id system property: the back end drops duplicates by it, so a message keeps it
/// across retransmits.
pub const MESSAGE_ID: &str = "$.mid";
/// Content type: with `$.ce`, what lets IoT Hub route on the JSON body.
pub const CONTENT_TYPE: &str = "$.ct";
/// Content encoding.
pub const CONTENT_ENCODING: &str = "$.ce";
/// When the message was created, as the C and .NET SDKs send it (ISO 8601, UTC).
pub const CREATION_TIME: &str = "$.ctime";

/// The topic for a message from `device_id` with `properties` (system and application, in the
/// order given).
#[must_use]
pub fn topic<'a>(
    device_id: &str,
    properties: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut topic = String::with_capacity(64);
    topic.push_str("devices/");
    topic.push_str(device_id);
    topic.push_str("/messages/events/");
    for (i, (key, value)) in properties.into_iter().enumerate() {
        if i > 0 {
            topic.push('&');
        }
        encode(key, &mut topic);
        topic.push('=');
        encode(value, &mut topic);
    }
    topic
}

/// Percent-encodes `text` onto `out`: every byte but A–Z, a–z, 0–9 and `-._~`.
pub fn encode(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Why a D2C topic could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("not a device-to-cloud topic")]
    NotD2c,
    #[error("property bag is not valid percent-encoded UTF-8")]
    BadEncoding,
}

/// A D2C topic read back: the device and its properties, decoded, in topic order. Used by the
/// emulator; a key without `=` has an empty value.
///
/// # Errors
/// When the topic is not `devices/{id}/messages/events/…` or its bag does not decode.
pub fn parse(topic: &str) -> Result<(String, Vec<(String, String)>), TopicError> {
    let rest = topic.strip_prefix("devices/").ok_or(TopicError::NotD2c)?;
    let (device, bag) = rest
        .split_once("/messages/events")
        .ok_or(TopicError::NotD2c)?;
    if device.is_empty() || device.contains('/') {
        return Err(TopicError::NotD2c);
    }
    let bag = match bag {
        "" => "",
        b => b.strip_prefix('/').ok_or(TopicError::NotD2c)?,
    };
    Ok((device.to_owned(), parse_bag(bag)?))
}

/// A property bag (`k1=v1&k2=v2`, percent-encoded) decoded, in order; a key without `=` has an
/// empty value. Shared by D2C topics (read back by the emulator) and C2D topics (read by
/// leafgate).
///
/// # Errors
/// When a key or value is not percent-encoded UTF-8.
pub fn parse_bag(bag: &str) -> Result<Vec<(String, String)>, TopicError> {
    // The .NET SDK ends the bag with a slash.
    let bag = bag.strip_suffix('/').unwrap_or(bag);
    let mut properties = Vec::new();
    for pair in bag.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        properties.push((decode(key)?, decode(value)?));
    }
    Ok(properties)
}

fn decode(text: &str) -> Result<String, TopicError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits exactly: `u8::from_str_radix` would also take a sign ("%+F").
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| char::from(*b).to_digit(16)),
                bytes.get(i + 2).and_then(|b| char::from(*b).to_digit(16)),
            ) else {
                return Err(TopicError::BadEncoding);
            };
            out.push(u8::try_from(hi * 16 + lo).map_err(|_| TopicError::BadEncoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| TopicError::BadEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_properties_are_encoded_as_the_sdks_do() {
        let t = topic(
            "meter-1",
            [
                (MESSAGE_ID, "0f3c-1"),
                (CONTENT_TYPE, "application/json"),
                (CONTENT_ENCODING, "utf-8"),
                (CREATION_TIME, "2026-12-06T05:04:00.123Z"),
            ],
        );
        assert_eq!(
            t,
            "devices/meter-1/messages/events/%24.mid=0f3c-1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.ctime=2026-12-06T05%3A04%3A00.123Z"
        );
    }

    #[test]
    fn application_properties_escape_space_ampersand_equals_and_non_ascii() {
        let t = topic(
            "d",
            [("site name", "Hall A&B=1"), ("unit", "°C"), ("x+y", "")],
        );
        assert_eq!(
            t,
            "devices/d/messages/events/site%20name=Hall%20A%26B%3D1&unit=%C2%B0C&x%2By="
        );
        let (device, props) = parse(&t).unwrap();
        assert_eq!(device, "d");
        assert_eq!(
            props,
            [
                ("site name".to_owned(), "Hall A&B=1".to_owned()),
                ("unit".to_owned(), "°C".to_owned()),
                ("x+y".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn parse_takes_what_the_sdks_and_the_docs_send() {
        // No bag, an empty bag, the .NET trailing slash, and an unencoded `$`.
        assert_eq!(parse("devices/d/messages/events").unwrap().1, []);
        assert_eq!(parse("devices/d/messages/events/").unwrap().1, []);
        assert_eq!(
            parse("devices/d/messages/events/$.ct=application%2Fjson/")
                .unwrap()
                .1,
            [("$.ct".to_owned(), "application/json".to_owned())]
        );
        assert_eq!(parse("devices/d/messages/eventsX"), Err(TopicError::NotD2c));
        assert_eq!(parse("devices//messages/events/"), Err(TopicError::NotD2c));
        assert_eq!(parse("devices/d/twin/"), Err(TopicError::NotD2c));
        assert_eq!(
            parse("devices/d/messages/events/a=%2"),
            Err(TopicError::BadEncoding)
        );
        assert_eq!(
            parse("devices/d/messages/events/a=%FF"),
            Err(TopicError::BadEncoding)
        );
        for signed in ["a=%+F", "a=%-1", "a=%G0", "a=%"] {
            assert_eq!(
                parse(&format!("devices/d/messages/events/{signed}")),
                Err(TopicError::BadEncoding),
                "{signed}"
            );
        }
    }
}
