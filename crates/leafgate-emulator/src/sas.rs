//! Checking SAS tokens the way IoT Hub does (`iothub-protocol.md` 2.2): parse, expiry, scope and
//! signature. Only the hub side needs this, so it lives with the emulator; the daemon only signs
//! (`leafgate::hub::sas`). The key type and the signing functions are re-exported from there, so
//! this module is the emulator's whole SAS toolbox and a token leafgate signs and a token this
//! module accepts go through the same HMAC code.

pub use leafgate::hub::sas::{Key, KeyError, device_resource, percent_encode, signature, token};

/// The key a device of a DPS symmetric-key group enrollment signs with (`iothub-protocol.md`
/// 9a): `base64(HMAC-SHA256(base64decode(group_key), registration_id as UTF-8))`, as
/// `az iot dps enrollment-group compute-device-key` and the SDK samples derive it. DPS stores
/// only the group key and derives a device's key when the device registers.
#[must_use]
pub fn derive_device_key(group_key: &Key, registration_id: &str) -> Key {
    group_key.derive(registration_id)
}

/// Decodes `%XX` escapes (either case). `None` when an escape is malformed or the result is
/// not UTF-8.
#[must_use]
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_val(*bytes.get(i + 1)?)?;
            let lo = hex_val(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A parsed token, fields as they appear (still encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub sr: String,
    pub sig: String,
    pub se: u64,
    pub skn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token does not start with \"SharedAccessSignature \"")]
    Prefix,
    #[error("token lacks field {0}")]
    Missing(&'static str),
    #[error("token field se is not a number")]
    BadExpiry,
    #[error("token has expired")]
    Expired,
    #[error("token is scoped to another resource")]
    WrongResource,
    #[error("token signature does not match")]
    BadSignature,
}

/// Parses `SharedAccessSignature k=v&k=v...` in any field order.
///
/// # Errors
/// When the prefix or a required field is missing or `se` is not a number.
pub fn parse(token: &str) -> Result<Parsed, TokenError> {
    let rest = token
        .strip_prefix("SharedAccessSignature ")
        .ok_or(TokenError::Prefix)?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for pair in rest.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sr" => sr = Some(v.to_owned()),
            "sig" => sig = Some(v.to_owned()),
            "se" => se = Some(v.parse::<u64>().map_err(|_| TokenError::BadExpiry)?),
            "skn" => skn = Some(v.to_owned()),
            _ => {}
        }
    }
    Ok(Parsed {
        sr: sr.ok_or(TokenError::Missing("sr"))?,
        sig: sig.ok_or(TokenError::Missing("sig"))?,
        se: se.ok_or(TokenError::Missing("se"))?,
        skn,
    })
}

/// Verifies a token the way the emulator models the hub (`iothub-protocol.md` 2.2): HMAC over
/// the literal `sr`, `sig` compared after percent-decoding, scope checked case-insensitively by
/// path-segment prefix after decoding `sr`.
///
/// # Errors
/// Says which check failed; never includes key material.
pub fn verify(
    token: &str,
    key: &Key,
    expected_resource: &str,
    now: u64,
) -> Result<Parsed, TokenError> {
    let parsed = parse(token)?;
    if parsed.se <= now {
        return Err(TokenError::Expired);
    }
    let scope = percent_decode(&parsed.sr).ok_or(TokenError::WrongResource)?;
    if !covers(&scope, expected_resource) {
        return Err(TokenError::WrongResource);
    }
    let given = percent_decode(&parsed.sig).ok_or(TokenError::BadSignature)?;
    let wanted = signature(key, &parsed.sr, parsed.se);
    if !constant_time_eq(given.as_bytes(), wanted.as_bytes()) {
        return Err(TokenError::BadSignature);
    }
    Ok(parsed)
}

/// `scope` covers `resource` when equal or a path-segment prefix, ignoring case.
fn covers(scope: &str, resource: &str) -> bool {
    let scope = scope.trim_end_matches('/').to_ascii_lowercase();
    let resource = resource.to_ascii_lowercase();
    resource == scope
        || (resource.starts_with(&scope) && resource.as_bytes().get(scope.len()) == Some(&b'/'))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const SE: u64 = 1_767_225_600;

    #[test]
    fn verify_accepts_own_tokens_and_the_c_sdk_raw_sr_form() {
        let key = Key::from_base64(KEY).unwrap();
        let resource = device_resource("myhub.azure-devices.net", "dev-1");
        let ours = token(&resource, &key, SE, None);
        assert!(verify(&ours, &key, &resource, SE - 10).is_ok());
        // C SDK: unencoded sr, lowercase escapes in sig.
        let raw_sig = signature(&key, &resource, SE);
        // Lowercasing the whole base64 text changes the signature: only escapes are case-free.
        let lower = percent_encode(&raw_sig).to_ascii_lowercase();
        let c_form = format!("SharedAccessSignature sr={resource}&sig={lower}&se={SE}");
        let c_form_ok = format!(
            "SharedAccessSignature sr={resource}&sig={}&se={SE}",
            lowercase_escapes(&percent_encode(&raw_sig))
        );
        assert!(verify(&c_form_ok, &key, &resource, SE - 10).is_ok());
        assert_eq!(
            verify(&c_form, &key, &resource, SE - 10).err(),
            Some(TokenError::BadSignature)
        );
        // Lowercase-escape sr: the HMAC is over the literal, so it verifies when signed so.
        let sr_lower = lowercase_escapes(&percent_encode(&resource));
        let sig = percent_encode(&signature(&key, &sr_lower, SE));
        let doc_form = format!("SharedAccessSignature sig={sig}&se={SE}&sr={sr_lower}");
        assert!(verify(&doc_form, &key, &resource, SE - 10).is_ok());
    }

    /// Every form `iothub-protocol.md` 2.3 gives for the vector key and expiry, as literals:
    /// leafgate emits the SDK-majority and service forms exactly, and the verifier the emulator
    /// uses accepts all four (issue 3 item 4).
    #[test]
    fn protocol_doc_vectors_in_every_documented_form() {
        const HOST: &str = "myhub.azure-devices.net";
        let key = Key::from_base64(KEY).unwrap();
        let resource = device_resource(HOST, "dev-1");
        let before = SE - 3600;

        // SDK-majority form (Python, Node, .NET): encoded sr, uppercase escapes. Ours.
        let sdk = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev-1&sig=MfFYU5%2BKiABdLama69LZEWjP7TkC4MNVBPKHFNWquuo%3D&se=1767225600";
        assert_eq!(token(&resource, &key, SE, None), sdk);
        assert_eq!(verify(sdk, &key, &resource, before).unwrap().se, SE);

        // C SDK form: raw sr, lowercase escapes in sig.
        let c_sdk = "SharedAccessSignature sr=myhub.azure-devices.net/devices/dev-1&sig=ewy7BYbQtk7z4phPE1StE5B%2bJc%2bvfpBBs5ewLmOkf%2f8%3d&se=1767225600";
        assert_eq!(
            signature(&key, &resource, SE),
            "ewy7BYbQtk7z4phPE1StE5B+Jc+vfpBBs5ewLmOkf/8="
        );
        assert_eq!(verify(c_sdk, &key, &resource, before).unwrap().sr, resource);

        // Lowercase-escape sr (the docs' examples): the HMAC is over sr as written.
        let lower_sr = "myhub.azure-devices.net%2fdevices%2fdev-1";
        assert_eq!(
            signature(&key, lower_sr, SE),
            "el9My/Ugf7k322WELwei7giBrDesuTvoo+nqF1IfDF8="
        );
        let lower = "SharedAccessSignature sr=myhub.azure-devices.net%2fdevices%2fdev-1&sig=el9My%2FUgf7k322WELwei7giBrDesuTvoo%2BnqF1IfDF8%3D&se=1767225600";
        assert!(verify(lower, &key, &resource, before).is_ok());
        // The same signature under the uppercase sr is a different string to sign.
        let mixed = lower.replace("%2f", "%2F");
        assert_eq!(
            verify(&mixed, &key, &resource, before).err(),
            Some(TokenError::BadSignature)
        );

        // Service-policy form: sr is the hub host, skn names the policy. Ours.
        let service = "SharedAccessSignature sr=myhub.azure-devices.net&sig=mnVOCy0ieupY1%2FH3BnSINnUcRqZRXaiw4do9WEOWXUI%3D&se=1767225600&skn=service";
        assert_eq!(token(HOST, &key, SE, Some("service")), service);
        let parsed = verify(service, &key, HOST, before).unwrap();
        assert_eq!(parsed.skn.as_deref(), Some("service"));
        // azure-iot-hub leaves '/' in sig unescaped (urllib's quote keeps it): accepted too.
        let unescaped_slash = service.replace("%2F", "/");
        assert!(verify(&unescaped_slash, &key, HOST, before).is_ok());

        // Every form expires at se.
        for form in [sdk, c_sdk, lower] {
            assert_eq!(
                verify(form, &key, &resource, SE).err(),
                Some(TokenError::Expired)
            );
        }
    }

    fn lowercase_escapes(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '%' {
                for _ in 0..2 {
                    if let Some(h) = chars.next() {
                        out.push(h.to_ascii_lowercase());
                    }
                }
            }
        }
        out
    }

    #[test]
    fn verify_rejects_expired_wrong_scope_and_wrong_key() {
        let key = Key::from_base64(KEY).unwrap();
        let other = Key::from_base64("AQ==").unwrap();
        let resource = device_resource("h", "dev-1");
        let t = token(&resource, &key, SE, None);
        assert_eq!(
            verify(&t, &key, &resource, SE).err(),
            Some(TokenError::Expired)
        );
        assert_eq!(
            verify(&t, &key, &device_resource("h", "dev-10"), 0).err(),
            Some(TokenError::WrongResource)
        );
        assert_eq!(
            verify(&t, &other, &resource, 0).err(),
            Some(TokenError::BadSignature)
        );
        // A hub-scoped token covers every device below it.
        let hub = token("h", &key, SE, Some("service"));
        assert!(verify(&hub, &key, &resource, 0).is_ok());
        assert_eq!(parse(&hub).unwrap().skn.as_deref(), Some("service"));
    }

    /// Vectors computed independently with python3:
    /// `base64.b64encode(hmac.new(base64.b64decode(KEY), b"dev-1", hashlib.sha256).digest())`.
    #[test]
    fn derives_group_device_keys_like_the_cli() {
        use base64::Engine as _;
        let group = Key::from_base64(KEY).unwrap();
        let derived = |id| {
            base64::engine::general_purpose::STANDARD
                .encode(derive_device_key(&group, id).as_bytes())
        };
        assert_eq!(
            derived("dev-1"),
            "uPrGCZtSCJ9Nt+iY0r7te47dbsu7OCYEU9tz7kQloUs="
        );
        assert_eq!(
            derived("sensor-42"),
            "Kkydds92Sqo8uW/MHu0DBFEq1dYYhaDDy2GgVVnVF1s="
        );
    }

    #[test]
    fn percent_coding_round_trips() {
        for s in ["a/b c+=%", "dev-1", "üñï", ""] {
            assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
    }
}
