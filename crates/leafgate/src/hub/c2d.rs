//! Cloud-to-device topics (`iothub-protocol.md` 6.2): the subscription and the delivered
//! message's properties. Pure.

use super::d2c::{TopicError, parse_bag};

/// The message id system property.
pub const MESSAGE_ID: &str = "$.mid";
/// The correlation id system property.
pub const CORRELATION_ID: &str = "$.cid";

/// The subscription that delivers the device's cloud-to-device messages.
#[must_use]
pub fn filter(device_id: &str) -> String {
    format!("devices/{device_id}/messages/devicebound/#")
}

/// Whether `topic` is a cloud-to-device delivery.
#[must_use]
pub fn is_c2d(topic: &str) -> bool {
    topic
        .strip_prefix("devices/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, rest)| rest.starts_with("messages/devicebound"))
}

/// The properties a delivery carries in its topic (`devices/{id}/messages/devicebound/{bag}`),
/// decoded: application properties and system ones (`$.mid`, `$.to`, `$.cid`, ...).
///
/// # Errors
/// When the topic is not a delivery or its bag does not decode.
pub fn parse(topic: &str) -> Result<Vec<(String, String)>, TopicError> {
    let rest = topic.strip_prefix("devices/").ok_or(TopicError::NotD2c)?;
    let (_, rest) = rest.split_once('/').ok_or(TopicError::NotD2c)?;
    let bag = rest
        .strip_prefix("messages/devicebound")
        .ok_or(TopicError::NotD2c)?;
    let bag = bag.strip_prefix('/').unwrap_or(bag);
    parse_bag(bag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_parsed_as_the_hub_sends_them() {
        let t = "devices/pump-1/messages/devicebound/%24.mid=m-1&%24.to=%2Fdevices%2Fpump-1%2Fmessages%2FdeviceBound&method=setSpeed&iothub-ack=none";
        assert!(is_c2d(t));
        let props = parse(t).unwrap();
        assert_eq!(
            props,
            [
                ("$.mid".to_owned(), "m-1".to_owned()),
                (
                    "$.to".to_owned(),
                    "/devices/pump-1/messages/deviceBound".to_owned()
                ),
                ("method".to_owned(), "setSpeed".to_owned()),
                ("iothub-ack".to_owned(), "none".to_owned()),
            ]
        );
        assert_eq!(parse("devices/pump-1/messages/devicebound").unwrap(), []);
        assert!(!is_c2d("devices/pump-1/messages/events/a=1"));
        assert!(parse("devices/pump-1/messages/devicebound/a=%FF").is_err());
        assert_eq!(filter("pump-1"), "devices/pump-1/messages/devicebound/#");
    }
}
