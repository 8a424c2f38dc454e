//! Device twins: `azure-iot-device`'s `get_twin`, `patch_twin_reported_properties` and
//! `on_twin_desired_properties_patch_received` against the emulator's MQTT side, and
//! `azure-iot-hub`'s `get_twin`, `update_twin` and `replace_twin` against its HTTPS service API,
//! with both SDKs on the two ends at once.

use leafgate_emulator::{Fault, Subscription, Target, TwinOp};
use serde_json::{Value, json};

use super::device_sdk::Sdk;
use super::peer::WAIT;
use super::service_sdk::service_peer;

const DESIRED: &str = "$iothub/twin/PATCH/properties/desired/#";

/// Connects SDK client "a" as `device` without a method handler.
async fn connect(sdk: &mut Sdk, device: &str) {
    let cs = sdk.emu.device_connection_string(device).unwrap();
    sdk.connect_with("a", &cs, false, json!({}))
        .await
        .unwrap_or_else(|e| panic!("could not connect: {e}"));
}

/// Sets the desired-patch handler and waits until the emulator would push to the device.
async fn listen_twin(sdk: &mut Sdk, device: &str) {
    sdk.peer.call("listen_twin", json!({"name": "a"})).await;
    sdk.emu
        .wait_for(device, WAIT, |s| {
            s.subscriptions.iter().any(|sub| sub.filter == DESIRED)
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn device_sdk_reads_and_reports_its_twin() {
    let mut sdk = Sdk::start(&["tw-sdk"]).await;
    connect(&mut sdk, "tw-sdk").await;
    let reply = sdk.peer.call("get_twin", json!({"name": "a"})).await;
    assert_eq!(
        reply["twin"],
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );
    // The SDK subscribes to responses (QoS 1) before its first request.
    let stats = sdk.emu.device_stats("tw-sdk");
    let responses = Subscription {
        filter: "$iothub/twin/res/#".to_owned(),
        qos: 1,
    };
    assert!(
        stats.subscribe_requests.contains(&vec![responses]),
        "{stats:?}"
    );

    // patch_twin_reported_properties returns once the hub answered 204.
    let patch = json!({"fw": "1.4.2", "temp": {"value": 21.5, "unit": "C"}});
    sdk.peer
        .call("patch_reported", json!({"name": "a", "patch": patch}))
        .await;
    assert_eq!(
        sdk.emu.twin("tw-sdk").unwrap().reported,
        json!({"fw": "1.4.2", "temp": {"value": 21.5, "unit": "C"}, "$version": 2})
    );
    let patch = json!({"temp": {"unit": null}, "fw": null});
    sdk.peer
        .call("patch_reported", json!({"name": "a", "patch": patch}))
        .await;
    let reply = sdk.peer.call("get_twin", json!({"name": "a"})).await;
    assert_eq!(
        reply["twin"]["reported"],
        json!({"temp": {"value": 21.5}, "$version": 3})
    );
    let requests: Vec<_> = sdk
        .emu
        .twin_requests()
        .into_iter()
        .map(|r| (r.op, r.status))
        .collect();
    assert_eq!(
        requests,
        [
            (TwinOp::Get, Some(200)),
            (TwinOp::PatchReported, Some(204)),
            (TwinOp::PatchReported, Some(204)),
            (TwinOp::Get, Some(200)),
        ]
    );
    // The SDK published them at QoS 1 with GUID request ids.
    assert!(sdk.emu.twin_requests().iter().all(|r| r.rid.len() == 36));
}

#[tokio::test]
async fn device_sdk_sees_the_hubs_twin_errors() {
    let mut sdk = Sdk::start(&["tw-err"]).await;
    connect(&mut sdk, "tw-err").await;
    // A key with '$' breaks the hub's limits: 400, which the SDK raises as a ClientError
    // around a ServiceError naming the status.
    let refused = sdk
        .peer
        .try_call("patch_reported", json!({"name": "a", "patch": {"$bad": 1}}))
        .await
        .unwrap_err();
    assert_eq!(refused["error"], "ClientError", "{refused}");
    assert_eq!(
        refused["cause"], "ServiceError: twin operation returned status 400",
        "{refused}"
    );
    // A throttled hub: 429.
    let fault = sdk
        .emu
        .inject_fault(Fault::TwinThrottle(Target::All), None)
        .await;
    let throttled = sdk
        .peer
        .try_call("get_twin", json!({"name": "a"}))
        .await
        .unwrap_err();
    assert_eq!(
        throttled["cause"], "ServiceError: twin operation returned status 429",
        "{throttled}"
    );
    sdk.emu.clear_fault(fault).await;
    let reply = sdk.peer.call("get_twin", json!({"name": "a"})).await;
    assert_eq!(reply["twin"]["reported"], json!({"$version": 1}));
}

#[tokio::test]
async fn desired_changes_reach_the_device_sdks_handler() {
    let mut sdk = Sdk::start(&["tw-des"]).await;
    connect(&mut sdk, "tw-des").await;
    listen_twin(&mut sdk, "tw-des").await;
    assert_eq!(
        sdk.emu
            .update_desired("tw-des", json!({"speed": 5, "mode": {"eco": true}})),
        Ok(2)
    );
    let event = sdk.peer.event("desired", |_| true).await;
    assert_eq!(
        event["patch"],
        json!({"speed": 5, "mode": {"eco": true}, "$version": 2})
    );
    sdk.emu
        .update_desired("tw-des", json!({"mode": null}))
        .unwrap();
    let event = sdk.peer.event("desired", |_| true).await;
    assert_eq!(event["patch"], json!({"mode": null, "$version": 3}));
    let reply = sdk.peer.call("get_twin", json!({"name": "a"})).await;
    assert_eq!(reply["twin"]["desired"], json!({"speed": 5, "$version": 3}));
}

#[tokio::test]
async fn service_sdk_reads_and_changes_the_twin_a_device_sdk_holds() {
    let mut sdk = Sdk::start(&["tw-both"]).await;
    connect(&mut sdk, "tw-both").await;
    listen_twin(&mut sdk, "tw-both").await;
    sdk.peer
        .call(
            "patch_reported",
            json!({"name": "a", "patch": {"firmware": "2.0"}}),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = service_peer(&sdk.emu, &dir).await;
    let cs = sdk.emu.service_connection_string();

    // get_twin: the SDK's Twin model, filled from the emulator's JSON.
    let reply = service
        .call(
            "get_twin",
            json!({"connection_string": cs, "device": "tw-both"}),
        )
        .await;
    let twin = &reply["twin"];
    assert_eq!(twin["device_id"], "tw-both", "{reply}");
    assert_eq!(twin["version"], 2);
    assert_eq!(twin["etag"], "AAAAAAAAAAI=");
    assert_eq!(twin["connection_state"], "Connected");
    assert_eq!(
        twin["properties"],
        json!({"desired": {"$version": 1}, "reported": {"firmware": "2.0", "$version": 2}})
    );

    // update_twin merges desired (and tags), and the device SDK hears of it.
    let reply = service
        .call(
            "update_twin",
            json!({"connection_string": cs, "device": "tw-both",
                   "desired": {"speed": 5, "mode": "eco"}, "tags": {"site": "hall A"}}),
        )
        .await;
    assert_eq!(
        reply["twin"]["properties"]["desired"],
        json!({"speed": 5, "mode": "eco", "$version": 2}),
        "{reply}"
    );
    assert_eq!(reply["twin"]["tags"], json!({"site": "hall A"}));
    let event = sdk.peer.event("desired", |_| true).await;
    assert_eq!(
        event["patch"],
        json!({"speed": 5, "mode": "eco", "$version": 2})
    );

    // replace_twin replaces desired: the device is told what went.
    let reply = service
        .call(
            "replace_twin",
            json!({"connection_string": cs, "device": "tw-both", "desired": {"speed": 7}}),
        )
        .await;
    assert_eq!(
        reply["twin"]["properties"]["desired"],
        json!({"speed": 7, "$version": 3}),
        "{reply}"
    );
    let event = sdk.peer.event("desired", |_| true).await;
    assert_eq!(
        event["patch"],
        json!({"speed": 7, "mode": null, "$version": 3})
    );

    // The SDK's etag is honoured: a stale one is 412.
    let reply = service
        .call(
            "update_twin",
            json!({"connection_string": cs, "device": "tw-both",
                   "desired": {"speed": 8}, "etag": "AAAAAAAAAAE="}),
        )
        .await;
    assert_eq!(
        (&reply["http_status"], &reply["errorcode"]),
        (&json!(412), &json!("PreconditionFailed")),
        "{reply}"
    );
    // An unknown device: 404001.
    let reply = service
        .call(
            "get_twin",
            json!({"connection_string": cs, "device": "tw-nobody"}),
        )
        .await;
    assert_eq!(
        (&reply["http_status"], &reply["errorcode"]),
        (&json!(404), &json!("DeviceNotFound"))
    );
    let body: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
    let inner: Value = serde_json::from_str(body["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["errorCode"], 404_001);
    assert_eq!(
        sdk.emu.twin("tw-both").unwrap().desired,
        json!({"speed": 7, "$version": 3})
    );
}
