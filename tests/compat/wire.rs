//! leafgate's CONNECT and SUBSCRIBE, captured by the emulator, next to what `azure-iot-device`
//! sends for the same device to the same emulator in the same run: field by field, every
//! difference either absent or listed here as intended, with the reason.
//!
//! Intended differences (all within what `iothub-protocol.md` says the hub accepts):
//! - api-version: leafgate sends 2021-04-12, the version the docs recommend ("otherwise
//!   unexpected behaviour"); the Python SDK still sends 2019-10-01 (1.2).
//! - DeviceClientType: each client names itself (`leafgate%2F{version}` vs
//!   `azure-iot-device-iothub-py%2F2.14.0%28{python; os; arch}%29`); free text for hub logs.
//! - Keep-alive: leafgate's default is 120 s (`keep_alive_s`), half the pings of the SDK's 60 s
//!   for sites with hundreds of leaf connections; both are far below the hub's 1177 s limit.
//! - Subscription QoS: leafgate asks for `$iothub/methods/POST/#` at QoS 0 (as the C and Node
//!   SDKs do), the Python SDK at QoS 1; the hub delivers method requests at QoS 0 either way.
//! - Response QoS: leafgate publishes method responses at QoS 0 (C, Node, .NET), the Python SDK
//!   at QoS 1 and waits for the PUBACK (3).
//! - TLS: the Python SDK pins TLS 1.2; leafgate (rustls) offers 1.3 and 1.2 and gets 1.3 from the
//!   emulator; against a hub that offers only 1.2 it negotiates 1.2.
//!
//! Everything else is equal: protocol level, client id, the username's layout and query keys
//! in order, CleanSession 0, no will, and the SAS token's format (field order, `sr` encoding
//! with uppercase escapes, 32-byte signature with uppercase escapes, no `skn`, one-hour TTL).

use std::time::Duration;

use leafgate_emulator::{ConnectRecord, Escapes, Subscription};
use serde_json::json;

use super::peer::{Peer, Venv, WAIT};
use crate::gateway::{Rig, device};

/// The username split into the part before `?` and the query's (key, value) pairs in order.
fn username_parts(record: &ConnectRecord) -> (String, Vec<(String, String)>) {
    let username = record.username.clone().unwrap();
    let (path, query) = username.split_once('?').unwrap();
    let pairs = query
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    (path.to_owned(), pairs)
}

#[tokio::test]
async fn leafgates_connect_and_subscribe_match_the_device_sdks_field_by_field() {
    let rest = format!(
        "[[bus]]\nid = \"nowhere\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:1\"\n\n{}",
        device("wire-1", "nowhere", "unit = 1\nraw_methods = true")
    );
    // leafgate first: capture, answer one method (503, its bus is unreachable), then stop.
    let mut rig = Rig::start(&["wire-1"], "", &rest).await;
    let (status, _) = rig
        .call(
            "wire-1",
            "modbus.read",
            json!({"table": "holding", "address": 0, "count": 1}),
        )
        .await;
    assert_eq!(status, 503);
    let ours = rig.emu.device_stats("wire-1");
    rig.gateway
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;
    rig.emu
        .wait_for("wire-1", WAIT, |s| !s.online)
        .await
        .unwrap();

    // Then the SDK, as the same device, on the same emulator.
    let mut peer = Peer::start(
        Venv::Device,
        "device_peer.py",
        &[(
            "LEAFGATE_COMPAT_PORT",
            rig.emu.mqtt_addr().port().to_string(),
        )],
    )
    .await;
    let args = json!({
        "name": "sdk",
        "connection_string": rig.emu.device_connection_string("wire-1").unwrap(),
        "ca": rig.emu.ca_pem(),
        "methods": true,
    });
    peer.call("connect", args).await;
    rig.emu
        .wait_for("wire-1", WAIT, |s| {
            s.online && s.methods_subscribed && s.connects_accepted == 2
        })
        .await
        .unwrap();
    let (status, _) = rig.call("wire-1", "ping", json!({})).await;
    assert_eq!(status, 200);
    let theirs = rig.emu.device_stats("wire-1");

    let (a, b) = (ours.last_connect.unwrap(), theirs.last_connect.unwrap());
    // Equal fields.
    assert_eq!((a.protocol_level, b.protocol_level), (4, 4));
    assert_eq!(
        (a.client_id.as_str(), b.client_id.as_str()),
        ("wire-1", "wire-1")
    );
    assert_eq!((a.clean_session, b.clean_session), (false, false));
    assert_eq!((&a.will, &b.will), (&None, &None));

    let ((a_path, a_query), (b_path, b_query)) = (username_parts(&a), username_parts(&b));
    assert_eq!(
        (a_path.as_str(), b_path.as_str()),
        ("localhost/wire-1/", "localhost/wire-1/")
    );
    let keys = |q: &[(String, String)]| q.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&a_query), ["api-version", "DeviceClientType"]);
    assert_eq!(keys(&a_query), keys(&b_query));
    // Intended: api-version and client type.
    assert_eq!(
        (a_query[0].1.as_str(), b_query[0].1.as_str()),
        ("2021-04-12", "2019-10-01")
    );
    assert_eq!(
        a_query[1].1,
        format!("leafgate%2F{}", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        b_query[1]
            .1
            .starts_with("azure-iot-device-iothub-py%2F2.14.0%28"),
        "{b_query:?}"
    );

    let (ta, tb) = (a.password.unwrap().unwrap(), b.password.unwrap().unwrap());
    assert_eq!(ta.fields, ["sr", "sig", "se"]);
    assert_eq!(ta.fields, tb.fields);
    assert_eq!(ta.sr, "localhost%2Fdevices%2Fwire-1");
    assert_eq!(ta.sr, tb.sr);
    assert_eq!((&ta.skn, &tb.skn), (&None, &None));
    assert_eq!((ta.sig_bytes, tb.sig_bytes), (Some(32), Some(32)));
    assert_eq!(
        (ta.sig_escapes, tb.sig_escapes),
        (Escapes::Upper, Escapes::Upper)
    );
    // Both mint one-hour tokens: the expiries lie as far apart as the two CONNECTs did.
    assert!(
        tb.se >= ta.se && tb.se - ta.se < 60,
        "se {} vs {}",
        ta.se,
        tb.se
    );

    // Intended: keep-alive and TLS version.
    assert_eq!((a.keep_alive_s, b.keep_alive_s), (120, 60));
    assert_eq!(
        (a.tls_version.as_deref(), b.tls_version.as_deref()),
        (Some("TLSv1_3"), Some("TLSv1_2"))
    );

    // One SUBSCRIBE with the one methods filter each; intended: the QoS asked for.
    let methods = |qos| {
        vec![vec![Subscription {
            filter: "$iothub/methods/POST/#".to_owned(),
            qos,
        }]]
    };
    assert_eq!(ours.subscribe_requests, methods(0));
    assert_eq!(theirs.subscribe_requests, methods(1));
    // Intended: the QoS of method responses.
    assert_eq!(
        (
            ours.last_method_response_qos,
            theirs.last_method_response_qos
        ),
        (Some(0), Some(1))
    );
}
