//! DPS CONNECT checks (`iothub-protocol.md` 9a): client id = registration id, username
//! `{idScope}/registrations/{registrationId}/api-version=...` (also `/?api-version=`, other
//! query keys such as `ClientVersion` ignored), and a SAS token for
//! `{idScope}/registrations/{registrationId}` signed with the registration's key, with
//! `skn=registration` or no `skn` (the Python SDK sends none); or, for an X.509 individual
//! enrollment, the client certificate and no password. Every failure is CONNACK 5, as on DPS.
//! Pure functions, like [`crate::connect`].

use rumqttc::mqttbytes::v4::Connect;

use super::enrollment::Enrolled;
use crate::connect::{self, ClientCert};
use crate::registry::RefusalReason;

/// The longest registration id DPS accepts.
const MAX_REGISTRATION_ID: usize = 128;
/// The only `skn` a registration token may carry.
const REGISTRATION_SKN: &str = "registration";

/// The parts of a DPS username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DpsUsername<'a> {
    pub(crate) id_scope: &'a str,
    pub(crate) registration_id: &'a str,
    pub(crate) api_version: &'a str,
}

/// Parses `{idScope}/registrations/{registrationId}/api-version=...[&k=v...]`, with or without
/// a `?` before the query.
///
/// # Errors
/// [`RefusalReason::BadDpsUsername`], or [`RefusalReason::MissingApiVersion`].
pub(crate) fn parse_username(username: &str) -> Result<DpsUsername<'_>, RefusalReason> {
    let mut parts = username.splitn(4, '/');
    let (Some(id_scope), Some("registrations"), Some(registration_id), Some(tail)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RefusalReason::BadDpsUsername);
    };
    if id_scope.is_empty() || registration_id.is_empty() {
        return Err(RefusalReason::BadDpsUsername);
    }
    let query = tail.strip_prefix('?').unwrap_or(tail);
    let api_version = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("api-version="))
        .filter(|version| !version.is_empty())
        .ok_or(RefusalReason::MissingApiVersion)?;
    Ok(DpsUsername {
        id_scope,
        registration_id,
        api_version,
    })
}

/// DPS's rule for registration ids: 1 to 128 of `a-z A-Z 0-9 - . _ :`, no special character
/// first or last.
pub(crate) fn valid_registration_id(id: &str) -> bool {
    let special = |c: char| matches!(c, '-' | '.' | '_' | ':');
    !id.is_empty()
        && id.len() <= MAX_REGISTRATION_ID
        && id.chars().all(|c| c.is_ascii_alphanumeric() || special(c))
        && !id.starts_with(special)
        && !id.ends_with(special)
}

/// The resource a registration's SAS token is scoped to.
pub(crate) fn resource(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// A DPS CONNECT that passed every check.
pub(crate) struct DpsAccepted {
    pub(crate) registration_id: String,
    /// The token's `se`; `None` for X.509.
    pub(crate) token_expiry: Option<u64>,
    /// The enrollment the registration authenticated with.
    pub(crate) enrolled: Enrolled,
}

/// Checks a DPS CONNECT against `id_scope` and the ways the registration id may authenticate
/// (`candidates` looks them up: the individual enrollment, or each group's derived key).
///
/// # Errors
/// The first check that failed; for several group keys, the first key's failure.
pub(crate) fn authenticate(
    connect: &Connect,
    id_scope: &str,
    now: u64,
    client_cert: ClientCert<'_>,
    candidates: impl FnOnce(&str) -> Vec<Enrolled>,
) -> Result<DpsAccepted, RefusalReason> {
    let login = connect::login(connect)?;
    let username = parse_username(&login.username)?;
    if username.id_scope != id_scope {
        return Err(RefusalReason::WrongIdScope);
    }
    if username.registration_id != connect.client_id {
        return Err(RefusalReason::ClientIdMismatch);
    }
    let registration_id = username.registration_id;
    if !valid_registration_id(registration_id) {
        return Err(RefusalReason::BadRegistrationId);
    }
    let candidates = candidates(registration_id);
    if candidates.is_empty() {
        return Err(RefusalReason::UnknownRegistration);
    }
    let resource = resource(id_scope, registration_id);
    let mut first_error = None;
    for enrolled in candidates {
        let checked = connect::check_credential(
            &enrolled.credential,
            &login.password,
            registration_id,
            &resource,
            client_cert,
            now,
            Some(REGISTRATION_SKN),
        );
        match checked {
            Ok(token_expiry) => {
                return Ok(DpsAccepted {
                    registration_id: registration_id.to_owned(),
                    token_expiry,
                    enrolled,
                });
            }
            Err(reason) => {
                first_error.get_or_insert(reason);
            }
        }
    }
    Err(first_error.unwrap_or(RefusalReason::UnknownRegistration))
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;
    use crate::dps::enrollment::{Attestation, Enrollments, HubLink};
    use crate::sas;
    use crate::sas::{Key, TokenError};
    use crate::x509::VerifiedCas;

    const SCOPE: &str = "0ne00000A0A";
    const NOW: u64 = 1_767_225_000;
    const SE: u64 = 1_767_225_600;
    static CAS: LazyLock<VerifiedCas> = LazyLock::new(VerifiedCas::default);

    fn no_cert() -> ClientCert<'static> {
        ClientCert {
            chain: &[],
            cas: &CAS,
        }
    }

    fn key(seed: u8) -> Key {
        use base64::Engine as _;
        Key::from_base64(&base64::engine::general_purpose::STANDARD.encode([seed; 32])).unwrap()
    }

    #[test]
    fn parses_usernames_as_the_docs_and_the_python_sdk_send_them() {
        let ok = [
            "0ne1/registrations/dev-1/api-version=2019-03-31",
            "0ne1/registrations/dev-1/?api-version=2019-03-31",
            "0ne1/registrations/dev-1/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-devicesdk%2F2.14.0",
        ];
        for username in ok {
            let parsed = parse_username(username).unwrap();
            assert_eq!(
                (parsed.id_scope, parsed.registration_id, parsed.api_version),
                ("0ne1", "dev-1", "2019-03-31"),
                "{username}"
            );
        }
        let bad = [
            (
                "0ne1/devices/dev-1/api-version=1",
                RefusalReason::BadDpsUsername,
            ),
            ("0ne1/registrations/dev-1", RefusalReason::BadDpsUsername),
            (
                "/registrations/dev-1/api-version=1",
                RefusalReason::BadDpsUsername,
            ),
            (
                "0ne1/registrations//api-version=1",
                RefusalReason::BadDpsUsername,
            ),
            (
                "0ne1/registrations/dev-1/",
                RefusalReason::MissingApiVersion,
            ),
            (
                "0ne1/registrations/dev-1/ClientVersion=x",
                RefusalReason::MissingApiVersion,
            ),
        ];
        for (username, want) in bad {
            assert_eq!(parse_username(username).err(), Some(want), "{username}");
        }
    }

    #[test]
    fn registration_ids_follow_the_dps_rules() {
        for ok in ["dev-1", "a", "A.b_c:d-9", &"x".repeat(128)] {
            assert!(valid_registration_id(ok), "{ok}");
        }
        for bad in ["", "-dev", "dev.", "dev 1", "dév", "a/b", &"x".repeat(129)] {
            assert!(!valid_registration_id(bad), "{bad}");
        }
    }

    fn connect(id: &str, username: &str, password: &str) -> Connect {
        let mut connect = Connect::new(id);
        connect.set_login(username, password);
        connect
    }

    fn user(scope: &str, id: &str) -> String {
        format!("{scope}/registrations/{id}/api-version=2019-03-31&ClientVersion=x")
    }

    fn token(id: &str, key: &Key, skn: Option<&str>) -> String {
        sas::token(&resource(SCOPE, id), key, SE, skn)
    }

    fn enrollments() -> Enrollments {
        let mut enrollments = Enrollments::default();
        let link = || HubLink::new_detached("hub");
        enrollments.add_group("a", key(1), link());
        enrollments.add_group("b", key(2), link());
        enrollments.add_individual("solo", Attestation::SymmetricKey(key(3)), link());
        enrollments.add_individual("cam", Attestation::X509Thumbprint("AB".repeat(20)), link());
        enrollments
    }

    fn check(connect: &Connect) -> Result<DpsAccepted, RefusalReason> {
        let enrollments = enrollments();
        authenticate(connect, SCOPE, NOW, no_cert(), |id| {
            enrollments.candidates(id)
        })
    }

    #[test]
    fn accepts_group_derived_and_individual_keys_with_or_without_skn() {
        for group in [1, 2] {
            let derived = sas::derive_device_key(&key(group), "dev-1");
            let accepted = check(&connect(
                "dev-1",
                &user(SCOPE, "dev-1"),
                &token("dev-1", &derived, None),
            ))
            .unwrap();
            assert_eq!(accepted.registration_id, "dev-1");
            assert_eq!(accepted.token_expiry, Some(SE));
        }
        let with_skn = token("solo", &key(3), Some("registration"));
        assert!(check(&connect("solo", &user(SCOPE, "solo"), &with_skn)).is_ok());
    }

    #[test]
    fn refuses_each_problem_with_its_reason() {
        let derived = sas::derive_device_key(&key(1), "dev-1");
        let good = token("dev-1", &derived, None);
        let cases = [
            (
                connect("dev-1", &user("0ne99999999", "dev-1"), &good),
                RefusalReason::WrongIdScope,
            ),
            (
                connect("dev-2", &user(SCOPE, "dev-1"), &good),
                RefusalReason::ClientIdMismatch,
            ),
            (
                connect("-x", &user(SCOPE, "-x"), &good),
                RefusalReason::BadRegistrationId,
            ),
            (
                connect("solo", &user(SCOPE, "solo"), &token("solo", &key(4), None)),
                RefusalReason::Token(TokenError::BadSignature),
            ),
            (
                connect(
                    "dev-1",
                    &user(SCOPE, "dev-1"),
                    &token("dev-1", &key(1), None),
                ),
                RefusalReason::Token(TokenError::BadSignature),
            ),
            (
                connect(
                    "dev-1",
                    &user(SCOPE, "dev-1"),
                    &token("dev-2", &derived, None),
                ),
                RefusalReason::Token(TokenError::WrongResource),
            ),
            (
                connect(
                    "dev-1",
                    &user(SCOPE, "dev-1"),
                    &token("dev-1", &derived, Some("x")),
                ),
                RefusalReason::PolicyToken,
            ),
            (
                connect("dev-1", &user(SCOPE, "dev-1"), ""),
                RefusalReason::MissingPassword,
            ),
            (
                connect("cam", &user(SCOPE, "cam"), &token("cam", &key(1), None)),
                RefusalReason::PasswordForX509Device,
            ),
            (
                connect("cam", &user(SCOPE, "cam"), ""),
                RefusalReason::MissingClientCertificate,
            ),
        ];
        for (connect, want) in cases {
            assert_eq!(check(&connect).err(), Some(want), "{:?}", connect.client_id);
        }
        let none = Enrollments::default();
        let refused = authenticate(
            &connect("dev-1", &user(SCOPE, "dev-1"), &good),
            SCOPE,
            NOW,
            no_cert(),
            |id| none.candidates(id),
        );
        assert_eq!(refused.err(), Some(RefusalReason::UnknownRegistration));
    }
}
