//! SAS tokens from both SDKs' own signing code, next to leafgate's (`hub::sas::token`) and
//! checked by the emulator's verifier. The fixed vectors of `iothub-protocol.md` 2.3 are unit
//! tests in `crates/leafgate/src/hub/sas.rs` (signing) and
//! `crates/leafgate-emulator/src/sas.rs` (verifying); here the SDKs pick the expiry (they read the clock), and leafgate
//! must produce the same token for that expiry.

use leafgate::hub::sas;
use leafgate_emulator::sas::{percent_decode, verify};
use leafgate_emulator::{Escapes, TokenShape};
use serde_json::json;

use super::peer::{Peer, Venv};
use super::{KEY, key};

const HOST: &str = "myhub.azure-devices.net";

#[tokio::test]
async fn device_sdk_tokens_are_byte_for_byte_leafgates() {
    let mut peer = Peer::start(
        Venv::Device,
        "device_peer.py",
        &[("LEAFGATE_COMPAT_PORT", "0".to_owned())],
    )
    .await;
    for device in ["dev-1", "pump 7", "line/1", "Zähler"] {
        let resource = sas::device_resource(HOST, device);
        let sdk = peer
            .call("sas", json!({"uri": resource, "key": KEY, "ttl": 3600}))
            .await;
        let expiry = sdk["expiry"].as_u64().unwrap();
        let token = sdk["token"].as_str().unwrap();
        assert_eq!(
            token,
            sas::token(&resource, &key(), expiry, None),
            "{device}"
        );
        verify(token, &key(), &resource, expiry - 1).unwrap();
    }
}

#[tokio::test]
async fn service_sdk_tokens_differ_from_leafgates_only_in_an_unescaped_slash() {
    let mut peer = Peer::start(
        Venv::Service,
        "service_peer.py",
        &[("LEAFGATE_COMPAT_PORT", "0".to_owned())],
    )
    .await;
    let mut slashes = 0;
    // Different expiries give different signatures; some contain '/', which the service SDK
    // leaves unescaped (`urllib.parse.quote` keeps '/' by default) where leafgate, the device
    // SDK and the protocol doc write %2F. The emulator verifies both.
    for ttl in 3600..3640 {
        let sdk = peer
            .call(
                "sas",
                json!({"uri": HOST, "key": KEY, "policy": "service", "ttl": ttl}),
            )
            .await;
        let expiry = sdk["expiry"].as_u64().unwrap();
        let theirs = sdk["token"].as_str().unwrap();
        let ours = sas::token(HOST, &key(), expiry, Some("service"));
        let (theirs_shape, ours_shape) = (
            TokenShape::of(theirs).unwrap(),
            TokenShape::of(&ours).unwrap(),
        );
        assert_eq!(theirs_shape.fields, ["sr", "sig", "se", "skn"]);
        assert_eq!(theirs_shape.fields, ours_shape.fields);
        assert_eq!(
            (&theirs_shape.sr, theirs_shape.se),
            (&ours_shape.sr, ours_shape.se)
        );
        assert_eq!(theirs_shape.skn.as_deref(), Some("service"));
        let (their_sig, our_sig) = (field(theirs, "sig"), field(&ours, "sig"));
        assert_eq!(percent_decode(their_sig), percent_decode(our_sig));
        assert_eq!(their_sig, our_sig.replace("%2F", "/"));
        assert_ne!(theirs_shape.sig_escapes, Escapes::Lower);
        slashes += usize::from(their_sig.contains('/'));
        verify(theirs, &key(), HOST, expiry - 1).unwrap();
    }
    assert!(slashes > 0, "no signature with a '/' in 40 tries");
}

fn field<'a>(token: &'a str, name: &str) -> &'a str {
    token
        .split(['&', ' '])
        .find_map(|pair| {
            pair.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
        })
        .unwrap()
}
