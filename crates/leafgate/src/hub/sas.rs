//! Shared access signature tokens, as a device signs them for IoT Hub.
//!
//! Pure functions: the clock is an argument, so the renewal schedule in `session` can be tested
//! without waiting. The token format and the test vector come from `iothub-protocol.md` section
//! 2; we emit the SDK-majority form (percent-encoded `sr` with uppercase escapes), which the
//! Python, Node and .NET SDKs send. Checking tokens is the hub's job: the emulator's
//! `leafgate_emulator::sas` parses and verifies them, so the shipped daemon carries no verifier.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::hmac;

/// A device key that must never be printed: `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl Key {
    /// Decodes a base64 key as the Azure portal shows it.
    ///
    /// # Errors
    /// When the text is not base64 or decodes to nothing. The error never contains the key.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = B64.decode(text.trim()).map_err(|_| KeyError::NotBase64)?;
        if bytes.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Key(bytes))
    }

    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A device's key in a DPS enrollment group with this symmetric key:
    /// base64(HMAC-SHA256(group key, registration id)), which as raw bytes is the HMAC itself
    /// (`iothub-protocol.md` 9a; what `az iot dps enrollment-group compute-device-key` does).
    #[must_use]
    pub fn derive(&self, registration_id: &str) -> Key {
        Key(self.sign(registration_id.as_bytes()).as_ref().to_vec())
    }

    /// HMAC-SHA256 of `message` with this key (any key length; it cannot fail).
    fn sign(&self, message: &[u8]) -> hmac::Tag {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.0), message)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(<{} bytes redacted>)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("shared access key is not valid base64")]
    NotBase64,
    #[error("shared access key is empty")]
    Empty,
}

/// Percent-encodes everything but RFC 3986 unreserved characters, with uppercase hex, as
/// Python's `quote(s, safe="")` and JavaScript's `encodeURIComponent` (minus `!'()*`) do.
#[must_use]
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(byte & 0x0f)]));
        }
    }
    out
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The resource URI a device token is scoped to: `{host}/devices/{deviceId}`.
#[must_use]
pub fn device_resource(host: &str, device_id: &str) -> String {
    format!("{host}/devices/{device_id}")
}

/// base64(HMAC-SHA256(key, `sr` + "\n" + `se`)), over `sr` exactly as it appears in the token.
#[must_use]
pub fn signature(key: &Key, sr_literal: &str, expiry: u64) -> String {
    B64.encode(key.sign(format!("{sr_literal}\n{expiry}").as_bytes()))
}

/// Builds a SAS token for `resource` (unencoded URI) expiring at `expiry` (Unix seconds),
/// optionally naming the shared access policy (`skn`) for service tokens.
#[must_use]
pub fn token(resource: &str, key: &Key, expiry: u64, policy: Option<&str>) -> String {
    let sr = percent_encode(resource);
    let sig = percent_encode(&signature(key, &sr, expiry));
    match policy {
        Some(name) => format!(
            "SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={}",
            percent_encode(name)
        ),
        None => format!("SharedAccessSignature sr={sr}&sig={sig}&se={expiry}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const SE: u64 = 1_767_225_600;

    #[test]
    fn reproduces_the_protocol_doc_test_vector() {
        let key = Key::from_base64(KEY).unwrap();
        let resource = device_resource("myhub.azure-devices.net", "dev-1");
        assert_eq!(
            signature(&key, &percent_encode(&resource), SE),
            "MfFYU5+KiABdLama69LZEWjP7TkC4MNVBPKHFNWquuo="
        );
        assert_eq!(
            token(&resource, &key, SE, None),
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev-1&sig=MfFYU5%2BKiABdLama69LZEWjP7TkC4MNVBPKHFNWquuo%3D&se=1767225600"
        );
    }

    #[test]
    fn key_debug_and_errors_never_show_the_key() {
        let key = Key::from_base64(KEY).unwrap();
        assert!(!format!("{key:?}").contains("AAEC"));
        assert_eq!(
            Key::from_base64("not base64!").err(),
            Some(KeyError::NotBase64)
        );
        assert_eq!(Key::from_base64("").err(), Some(KeyError::Empty));
    }

    /// The derivation in Microsoft's "symmetric key attestation" walkthrough: its group key
    /// and registration id give its derived key. The second pair was computed with Python's
    /// hmac/hashlib/base64 (the formula the Azure CLI and SDK samples use).
    #[test]
    fn a_group_key_derives_the_documented_device_key() {
        let b64 = |k: &Key| B64.encode(k.as_bytes());
        let group = Key::from_base64("8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==").unwrap();
        assert_eq!(
            b64(&group.derive("sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6")),
            "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
        );
        let group = Key::from_base64(KEY).unwrap();
        assert_eq!(
            b64(&group.derive("pump-1")),
            "l+n7bxS3LYFgDS0aqlGbeByZ/xgfpOyIl7WG7fM3rIg="
        );
    }
}
