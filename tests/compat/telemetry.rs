//! Device-to-cloud messages: `azure-iot-device` 2.14's `send_message` against the emulator, next
//! to the same message with its topic built by `leafgate::hub::d2c::topic` and published by
//! rumqttc. If leafgate's encoder and the emulator's decoder shared a misreading of the property
//! bag, the emulator's own tests would pass anyway; here Microsoft's encoder is the reference.

use leafgate::hub::d2c;
use leafgate_emulator::{D2cMessage, Event as EmulatorEvent};
use rumqttc::{Event, Incoming, QoS};
use serde_json::json;

use super::device_sdk::Sdk;
use crate::emulator::{connect_once, options};

const BODY: &str = r#"{"temp": 21.5, "unit": "°C"}"#;
/// Characters the bag must escape: space, `/`, non-ASCII.
const MESSAGE_ID: &str = "msg 1/ä";
/// Escapes again, and `&` and `=`, which would split the bag if left alone.
const PROPERTIES: [(&str, &str); 3] = [("site", "Hall A&B"), ("x=y", "1/2 + 3"), ("unit", "°C")];

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The single message `device` sent.
fn only_message(sdk: &Sdk, device: &str) -> D2cMessage {
    let mut messages = sdk.emu.telemetry(device);
    assert_eq!(messages.len(), 1, "{messages:?}");
    messages.remove(0)
}

#[tokio::test]
async fn an_sdk_message_and_the_same_message_on_leafgates_topic_are_recorded_alike() {
    let mut sdk = Sdk::start(&["sdk-d2c", "rs-d2c"]).await;
    let mut events = sdk.emu.events();

    // The SDK: a Message with an id, content type and encoding, and custom properties.
    let cs = sdk.emu.device_connection_string("sdk-d2c").unwrap();
    sdk.connect_with("a", &cs, false, json!({})).await.unwrap();
    let properties: serde_json::Map<String, serde_json::Value> = PROPERTIES
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    sdk.peer
        .call(
            "send",
            json!({
                "name": "a",
                "body": BODY,
                "message_id": MESSAGE_ID,
                "content_type": "application/json",
                "content_encoding": "utf-8",
                "properties": properties,
            }),
        )
        .await;
    // send_message returned after the PUBACK, so the message is recorded already.
    let from_sdk = only_message(&sdk, "sdk-d2c");

    // leafgate's encoder, properties in the SDK's order (system ones first, the rest sorted),
    // published by rumqttc at QoS 1 as the gateway does.
    let mut sorted = PROPERTIES.to_vec();
    sorted.sort_unstable();
    let system = [
        (d2c::MESSAGE_ID, MESSAGE_ID),
        (d2c::CONTENT_TYPE, "application/json"),
        (d2c::CONTENT_ENCODING, "utf-8"),
    ];
    let topic = d2c::topic("rs-d2c", system.into_iter().chain(sorted.iter().copied()));
    let (client, mut eventloop) = connect_once(options(&sdk.emu, "rs-d2c", &super::key()))
        .await
        .unwrap();
    client
        .publish(&topic, QoS::AtLeastOnce, false, BODY)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    let from_leafgate = only_message(&sdk, "rs-d2c");

    assert_eq!(from_sdk.system_properties, pairs(&system));
    assert_eq!(from_sdk.properties, pairs(&sorted));
    assert_eq!(&from_sdk.body[..], BODY.as_bytes());
    assert_eq!(from_sdk.qos, 1, "send_message publishes at QoS 1");
    assert_eq!(
        (
            &from_leafgate.system_properties,
            &from_leafgate.properties,
            &from_leafgate.body,
            from_leafgate.qos,
            from_leafgate.duplicate,
        ),
        (
            &from_sdk.system_properties,
            &from_sdk.properties,
            &from_sdk.body,
            from_sdk.qos,
            from_sdk.duplicate,
        )
    );

    // And on the wire, byte for byte but for the device id: same escapes, same order.
    let mut topics = Vec::new();
    while topics.len() < 2 {
        if let EmulatorEvent::Telemetry { device, topic, .. } = events.recv().await.unwrap() {
            topics.push((device, topic));
        }
    }
    assert_eq!(topics[0].0, "sdk-d2c");
    assert_eq!(topics[0].1.replacen("sdk-d2c", "rs-d2c", 1), topic);
    assert_eq!(topics[1], ("rs-d2c".to_owned(), topic));
}
