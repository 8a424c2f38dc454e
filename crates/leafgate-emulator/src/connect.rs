//! CONNECT checks as the hub makes them (`iothub-protocol.md` 1.2, 1.5, 1.6, 2): pure functions,
//! the clock, the credential lookup and the client certificate chain are arguments, so every
//! refusal is unit tested without a socket.

use rumqttc::mqttbytes::Protocol;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Login};

use rustls::pki_types::CertificateDer;

use super::registry::RefusalReason;
use crate::credential::Credential;
use crate::sas;
use crate::x509::{self, VerifiedCas};

/// The parts of an IoT Hub username the emulator checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Username<'a> {
    pub(crate) device_id: &'a str,
    pub(crate) api_version: &'a str,
}

/// Parses `{host}/{deviceId}/?api-version=...[&k=v...]`, or the legacy
/// `{host}/{deviceId}/api-version=...` form. The host compares case-insensitively (it is a DNS
/// name); unknown query keys are ignored, as the hub does for `DeviceClientType` and `model-id`.
///
/// # Errors
/// Which part is wrong; module usernames (`{host}/{device}/{module}/?...`) are refused as not
/// emulated.
pub(crate) fn parse_username<'a>(
    username: &'a str,
    host_name: &str,
) -> Result<Username<'a>, RefusalReason> {
    let (host, rest) = username.split_once('/').ok_or(RefusalReason::BadUsername)?;
    if !host.eq_ignore_ascii_case(host_name) {
        return Err(RefusalReason::WrongHost);
    }
    // Device ids cannot contain '/', so the first '/' ends the id.
    let (device_id, tail) = rest.split_once('/').ok_or(RefusalReason::BadUsername)?;
    if device_id.is_empty() {
        return Err(RefusalReason::BadUsername);
    }
    let query = if let Some(query) = tail.strip_prefix('?') {
        query
    } else if tail.starts_with("api-version=") {
        tail
    } else if tail.contains('/') {
        return Err(RefusalReason::ModuleIdentity);
    } else {
        return Err(RefusalReason::MissingApiVersion);
    };
    let api_version = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("api-version="))
        .filter(|version| !version.is_empty())
        .ok_or(RefusalReason::MissingApiVersion)?;
    Ok(Username {
        device_id,
        api_version,
    })
}

/// A CONNECT that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted<T> {
    pub(crate) device_id: String,
    /// The token's `se` (Unix seconds): the hub drops the connection then. `None` for an X.509
    /// device, whose connection has no token to run out.
    pub(crate) token_expiry: Option<u64>,
    /// Whatever the lookup returned besides the credential (the registry entry).
    pub(crate) handle: T,
}

/// The CONNACK code for a refusal: 1 for a protocol level other than 3.1.1, 3 for a throttled
/// hub, otherwise 5, which the hub sends for every auth or identity failure.
pub(crate) fn return_code(reason: &RefusalReason) -> ConnectReturnCode {
    match reason {
        RefusalReason::ProtocolVersion(_) => ConnectReturnCode::RefusedProtocolVersion,
        RefusalReason::Throttled => ConnectReturnCode::ServiceUnavailable,
        _ => ConnectReturnCode::NotAuthorized,
    }
}

/// What the TLS handshake told about the client, for X.509 devices.
#[derive(Clone, Copy)]
pub(crate) struct ClientCert<'a> {
    /// The chain the client presented, leaf first; empty without a certificate.
    pub(crate) chain: &'a [CertificateDer<'static>],
    /// The CAs CA-signed devices chain to.
    pub(crate) cas: &'a VerifiedCas,
}

/// Checks a CONNECT (already decoded, so its protocol level is 4 or 5): protocol level, client
/// id, username, then the credential `lookup` returns for the id: a SAS device's token against
/// `{host}/devices/{id}` with its key (a client certificate, if any, is ignored); an X.509
/// device's certificate chain from the handshake, with no password ([`x509::authenticate`]).
///
/// # Errors
/// The first check that failed.
pub(crate) fn authenticate<T>(
    connect: &Connect,
    host_name: &str,
    now: u64,
    client_cert: ClientCert<'_>,
    lookup: impl FnOnce(&str) -> Result<(T, Credential), RefusalReason>,
) -> Result<Accepted<T>, RefusalReason> {
    let login = login(connect)?;
    let username = parse_username(&login.username, host_name)?;
    if username.device_id != connect.client_id {
        return Err(RefusalReason::ClientIdMismatch);
    }
    let (handle, credential) = lookup(&connect.client_id)?;
    let resource = sas::device_resource(host_name, &connect.client_id);
    // A policy-signed token would have to be checked against that policy's key, and the emulator
    // has no device-connect policies; verifying it against the device key would be wrong.
    let token_expiry = check_credential(
        &credential,
        &login.password,
        &connect.client_id,
        &resource,
        client_cert,
        now,
        None,
    )?;
    Ok(Accepted {
        device_id: connect.client_id.clone(),
        token_expiry,
        handle,
    })
}

/// What every CONNECT must have before its username is read, at the hub and at DPS: MQTT 3.1.1,
/// a client id, a username. Returns its login.
///
/// # Errors
/// The first of these that is missing.
pub(crate) fn login(connect: &Connect) -> Result<&Login, RefusalReason> {
    if connect.protocol != Protocol::V4 {
        return Err(RefusalReason::ProtocolVersion(5));
    }
    if connect.client_id.is_empty() {
        return Err(RefusalReason::EmptyClientId);
    }
    connect
        .login
        .as_ref()
        .filter(|login| !login.username.is_empty())
        .ok_or(RefusalReason::MissingUsername)
}

/// Checks `id`'s `credential` against a CONNECT's password and TLS handshake: a SAS token for
/// `resource`, signed with the key, not expired, whose `skn` is absent or `allowed_skn`
/// (returns its `se`); or an X.509 certificate chain, with no password (returns `None`).
///
/// # Errors
/// The first check that failed.
pub(crate) fn check_credential(
    credential: &Credential,
    password: &str,
    id: &str,
    resource: &str,
    client_cert: ClientCert<'_>,
    now: u64,
    allowed_skn: Option<&str>,
) -> Result<Option<u64>, RefusalReason> {
    let key = match credential {
        Credential::Sas(key) => key,
        Credential::X509(_) if !password.is_empty() => {
            return Err(RefusalReason::PasswordForX509Device);
        }
        Credential::X509(auth) => {
            x509::authenticate(auth, id, client_cert.chain, client_cert.cas, now)?;
            return Ok(None);
        }
    };
    if password.is_empty() {
        return Err(RefusalReason::MissingPassword);
    }
    let parsed = sas::parse(password).map_err(RefusalReason::Token)?;
    if parsed.skn.is_some() && parsed.skn.as_deref() != allowed_skn {
        return Err(RefusalReason::PolicyToken);
    }
    let verified = sas::verify(password, key, resource, now).map_err(RefusalReason::Token)?;
    Ok(Some(verified.se))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sas::{Key, TokenError};

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const HOST: &str = "myhub.azure-devices.net";
    const NOW: u64 = 1_767_225_000;
    const SE: u64 = 1_767_225_600;
    static CAS: std::sync::LazyLock<VerifiedCas> = std::sync::LazyLock::new(VerifiedCas::default);

    /// A handshake without a client certificate.
    fn no_cert() -> ClientCert<'static> {
        ClientCert {
            chain: &[],
            cas: &CAS,
        }
    }

    #[test]
    fn parses_usernames_from_docs_and_sdks() {
        let ok: &[(&str, &str, &str)] = &[
            (
                "myhub.azure-devices.net/dev-1/?api-version=2021-04-12",
                "dev-1",
                "2021-04-12",
            ),
            (
                "MyHub.Azure-Devices.net/dev-1/?api-version=2020-09-30&DeviceClientType=iothubclient%2F1.15.0",
                "dev-1",
                "2020-09-30",
            ),
            (
                "myhub.azure-devices.net/dev-1/?model-id=dtmi%3Ax%3B1&api-version=2021-04-12",
                "dev-1",
                "2021-04-12",
            ),
            (
                "myhub.azure-devices.net/dev-1/api-version=2016-11-14",
                "dev-1",
                "2016-11-14",
            ),
            ("myhub.azure-devices.net/d?x=1/?api-version=1", "d?x=1", "1"),
        ];
        for (username, device, version) in ok {
            let parsed = parse_username(username, HOST).unwrap();
            assert_eq!((parsed.device_id, parsed.api_version), (*device, *version));
        }
        let bad: &[(&str, RefusalReason)] = &[
            ("", RefusalReason::BadUsername),
            ("myhub.azure-devices.net", RefusalReason::BadUsername),
            ("myhub.azure-devices.net/dev-1", RefusalReason::BadUsername),
            (
                "myhub.azure-devices.net//?api-version=1",
                RefusalReason::BadUsername,
            ),
            (
                "other.azure-devices.net/dev-1/?api-version=1",
                RefusalReason::WrongHost,
            ),
            (
                "myhub.azure-devices.net/dev-1/",
                RefusalReason::MissingApiVersion,
            ),
            (
                "myhub.azure-devices.net/dev-1/?api-version=",
                RefusalReason::MissingApiVersion,
            ),
            (
                "myhub.azure-devices.net/dev-1/?DeviceClientType=x",
                RefusalReason::MissingApiVersion,
            ),
            (
                "myhub.azure-devices.net/dev-1/mod/?api-version=1",
                RefusalReason::ModuleIdentity,
            ),
        ];
        for (username, want) in bad {
            assert_eq!(
                parse_username(username, HOST).err().as_ref(),
                Some(want),
                "{username}"
            );
        }
    }

    fn connect(client_id: &str, username: &str, password: &str) -> Connect {
        let mut c = Connect::new(client_id);
        c.set_login(username, password);
        c
    }

    fn lookup(id: &str) -> Result<((), Credential), RefusalReason> {
        match id {
            "dev-1" => Ok(((), Credential::Sas(Key::from_base64(KEY).unwrap()))),
            "off" => Err(RefusalReason::DeviceDisabled),
            _ => Err(RefusalReason::UnknownDevice),
        }
    }

    fn token(device: &str, key: &str, se: u64, skn: Option<&str>) -> String {
        sas::token(
            &sas::device_resource(HOST, device),
            &Key::from_base64(key).unwrap(),
            se,
            skn,
        )
    }

    #[test]
    fn authenticate_accepts_sdk_and_c_sdk_tokens() {
        let user = format!("{HOST}/dev-1/?api-version=2021-04-12");
        let ours = token("dev-1", KEY, SE, None);
        let ok = authenticate(
            &connect("dev-1", &user, &ours),
            HOST,
            NOW,
            no_cert(),
            lookup,
        )
        .unwrap();
        assert_eq!(
            (ok.device_id.as_str(), ok.token_expiry),
            ("dev-1", Some(SE))
        );
        // The protocol doc's C-SDK form: raw sr, lowercase escapes in sig.
        let c_sdk = "SharedAccessSignature sr=myhub.azure-devices.net/devices/dev-1&sig=ewy7BYbQtk7z4phPE1StE5B%2bJc%2bvfpBBs5ewLmOkf%2f8%3d&se=1767225600";
        assert!(
            authenticate(
                &connect("dev-1", &user, c_sdk),
                HOST,
                NOW,
                no_cert(),
                lookup
            )
            .is_ok()
        );
    }

    #[test]
    fn authenticate_refuses_each_identity_problem() {
        let user = |id: &str| format!("{HOST}/{id}/?api-version=2021-04-12");
        let good = token("dev-1", KEY, SE, None);
        let mut v5 = connect("dev-1", &user("dev-1"), &good);
        v5.protocol = Protocol::V5;
        let cases: Vec<(Connect, RefusalReason)> = vec![
            (v5, RefusalReason::ProtocolVersion(5)),
            (
                connect("", &user("dev-1"), &good),
                RefusalReason::EmptyClientId,
            ),
            (Connect::new("dev-1"), RefusalReason::MissingUsername),
            (
                connect("dev-1", &user("dev-2"), &good),
                RefusalReason::ClientIdMismatch,
            ),
            (
                connect("Dev-1", &user("dev-1"), &good),
                RefusalReason::ClientIdMismatch,
            ),
            (
                connect("ghost", &user("ghost"), &token("ghost", KEY, SE, None)),
                RefusalReason::UnknownDevice,
            ),
            (
                connect("off", &user("off"), &token("off", KEY, SE, None)),
                RefusalReason::DeviceDisabled,
            ),
            (
                connect("dev-1", &user("dev-1"), ""),
                RefusalReason::MissingPassword,
            ),
            (
                connect("dev-1", &user("dev-1"), "hunter2"),
                RefusalReason::Token(TokenError::Prefix),
            ),
            (
                connect("dev-1", &user("dev-1"), &token("dev-1", "AQ==", SE, None)),
                RefusalReason::Token(TokenError::BadSignature),
            ),
            (
                connect("dev-1", &user("dev-1"), &token("dev-1", KEY, NOW, None)),
                RefusalReason::Token(TokenError::Expired),
            ),
            (
                connect("dev-1", &user("dev-1"), &token("dev-2", KEY, SE, None)),
                RefusalReason::Token(TokenError::WrongResource),
            ),
            (
                connect(
                    "dev-1",
                    &user("dev-1"),
                    &sas::token(HOST, &Key::from_base64(KEY).unwrap(), SE, Some("device")),
                ),
                RefusalReason::PolicyToken,
            ),
        ];
        for (c, want) in cases {
            let got = authenticate(&c, HOST, NOW, no_cert(), lookup).err();
            assert_eq!(got.as_ref(), Some(&want), "client {:?}", c.client_id);
            let code = return_code(&want);
            if matches!(want, RefusalReason::ProtocolVersion(_)) {
                assert_eq!(code, ConnectReturnCode::RefusedProtocolVersion);
            } else {
                assert_eq!(code, ConnectReturnCode::NotAuthorized);
            }
            assert!(!want.to_string().contains("sig="));
        }
    }

    /// An X.509 device: no password and a matching certificate connect (no token expiry); a
    /// password, or no certificate, is refused; a SAS device's certificate is ignored.
    #[test]
    fn authenticate_x509_devices_by_certificate_only() {
        use crate::credential::X509Auth;
        use crate::tls::{KeyKind, self_signed, thumbprint_sha1};
        use rustls::pki_types::pem::PemObject as _;

        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        let (cert, _) = self_signed("x-1", KeyKind::EcdsaP256, now - day, now + day).unwrap();
        let chain = [CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
        let presented = ClientCert {
            chain: &chain,
            cas: &CAS,
        };
        let auth = X509Auth::Thumbprint {
            primary: thumbprint_sha1(&cert).unwrap(),
            secondary: None,
        };
        let lookup = |id: &str| match id {
            "x-1" => Ok(((), Credential::X509(auth.clone()))),
            _ => Ok(((), Credential::Sas(Key::from_base64(KEY).unwrap()))),
        };
        let at = crate::clock::unix_now();
        let user = |id: &str| format!("{HOST}/{id}/?api-version=2021-04-12");
        let ok = authenticate(
            &connect("x-1", &user("x-1"), ""),
            HOST,
            at,
            presented,
            lookup,
        )
        .unwrap();
        assert_eq!(ok.token_expiry, None);
        let with_password = connect("x-1", &user("x-1"), &token("x-1", KEY, SE, None));
        assert_eq!(
            authenticate(&with_password, HOST, at, presented, lookup).err(),
            Some(RefusalReason::PasswordForX509Device)
        );
        assert_eq!(
            authenticate(
                &connect("x-1", &user("x-1"), ""),
                HOST,
                at,
                no_cert(),
                lookup
            )
            .err(),
            Some(RefusalReason::MissingClientCertificate)
        );
        // A SAS device presenting a certificate: the certificate is ignored, the token counts.
        let sas = connect("dev-1", &user("dev-1"), &token("dev-1", KEY, SE, None));
        assert!(authenticate(&sas, HOST, NOW, presented, lookup).is_ok());
        assert_eq!(
            authenticate(
                &connect("dev-1", &user("dev-1"), ""),
                HOST,
                NOW,
                presented,
                lookup
            )
            .err(),
            Some(RefusalReason::MissingPassword)
        );
    }
}
