//! A device's credentials: a key, from exactly one of a connection string, an inline key or a
//! key file; or an X.509 certificate and its private key. A connection string also names the
//! device and the hub, and they must agree with the config, or the device would connect as
//! someone else or to the wrong hub. A certificate is checked as IoT Hub will judge it.

use std::path::Path;

use super::Problems;
use crate::config::schema::DeviceConfig;
use crate::hub::auth::{Auth, X509Files};
use crate::hub::certificate::{self, Validity};
use crate::hub::connstr::ConnectionString;
use crate::hub::sas::Key;

/// `hub` is the trimmed (host name, gateway host name) when both are valid, even when other
/// [hub] keys are bad. Host names compare without regard to case.
///
/// A device that registers with DPS (`provisioned`) and lists no credentials of its own gets
/// its key derived from the enrollment group's `group_key`.
pub(super) fn resolve_auth(
    file: &Path,
    path: &str,
    d: &DeviceConfig,
    hub: Option<(&str, Option<&str>)>,
    group_key: Option<&Key>,
    provisioned: bool,
    p: &mut Problems,
) -> Option<Auth> {
    let keys = [
        d.connection_string.is_some(),
        d.shared_access_key.is_some(),
        d.shared_access_key_file.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    let certificate = d.certificate_file.is_some() || d.private_key_file.is_some();
    match (keys, certificate) {
        (0, false) => match group_key {
            Some(group) => Some(Auth::Sas(group.derive(&d.id))),
            None if provisioned => {
                p.add(file, path, "missing credentials: [provisioning] has no group_key (or group_key_file) to derive this device's key from; give the device its own shared_access_key(_file) (individual enrollment) or certificate_file and private_key_file");
                None
            }
            None => {
                p.add(file, path, "missing credentials: connection_string, shared_access_key or shared_access_key_file, or certificate_file and private_key_file");
                None
            }
        },
        (0, true) => {
            let files = resolve_certificate(file, path, d, p)?;
            if provisioned && files.common_name.as_deref() != Some(d.id.as_str()) {
                p.add(
                    file,
                    format!("{path}.certificate_file"),
                    format!(
                        "registers with DPS, which takes the certificate's CN as the registration id: the CN is {:?}, the device id {:?}",
                        files.common_name.as_deref().unwrap_or(""),
                        d.id
                    ),
                );
                return None;
            }
            Some(Auth::X509(files.files))
        }
        (1, false) => resolve_key(file, path, d, hub, p).map(Auth::Sas),
        (_, true) => {
            p.add(
                file,
                path,
                "give either a key (connection_string, shared_access_key or shared_access_key_file) or a certificate (certificate_file and private_key_file), not both",
            );
            None
        }
        (_, false) => {
            p.add(
                file,
                path,
                "give only one of connection_string, shared_access_key, shared_access_key_file",
            );
            None
        }
    }
}

/// Reads the certificate and key as the session will, and checks what IoT Hub checks: a
/// CA-signed certificate's subject CN must be the device id; a self-signed one is registered by
/// its thumbprint, whatever its CN. Expiry is a warning (within 30 days, or already): one
/// device's certificate must not stop the others.
/// A device's certificate files, and the certificate's subject CN.
struct Certificate {
    files: X509Files,
    common_name: Option<String>,
}

fn resolve_certificate(
    file: &Path,
    path: &str,
    d: &DeviceConfig,
    p: &mut Problems,
) -> Option<Certificate> {
    let (Some(cert), Some(key)) = (&d.certificate_file, &d.private_key_file) else {
        let missing = if d.certificate_file.is_none() {
            "certificate_file"
        } else {
            "private_key_file"
        };
        p.add(
            file,
            format!("{path}.{missing}"),
            "missing: a certificate needs both certificate_file and private_key_file (PEM)",
        );
        return None;
    };
    let identity = match certificate::load(cert, key) {
        Ok(identity) => identity,
        Err(e) => {
            let key_path = match &e {
                certificate::Error::Read { key: true, .. }
                | certificate::Error::NoKey(_)
                | certificate::Error::MalformedKey { .. }
                | certificate::Error::UnsupportedKey { .. }
                | certificate::Error::KeyMismatch { .. } => "private_key_file",
                _ => "certificate_file",
            };
            p.add(file, format!("{path}.{key_path}"), e.to_string());
            return None;
        }
    };
    let info = &identity.info;
    let cpath = format!("{path}.certificate_file");
    if !info.self_signed && info.common_name.as_deref() != Some(d.id.as_str()) {
        p.add(
            file,
            &cpath,
            format!(
                "{} is signed by a CA and its subject CN is {}; IoT Hub accepts a CA-signed device certificate only with CN = the device id {:?}",
                cert.display(),
                info.common_name
                    .as_ref()
                    .map_or_else(|| "missing".to_owned(), |cn| format!("{cn:?}")),
                d.id
            ),
        );
        return None;
    }
    match info.validity_at(crate::utc::unix_now_signed()) {
        Validity::Valid => {}
        Validity::ExpiresSoon { days } => p.warn(
            file,
            &cpath,
            format!(
                "{} expires at {} ({days} days left); renew it before then",
                cert.display(),
                info.not_after_text()
            ),
        ),
        Validity::Expired => p.warn(
            file,
            &cpath,
            format!(
                "{} expired at {}; IoT Hub refuses it, and this device will not connect until it is renewed",
                cert.display(),
                info.not_after_text()
            ),
        ),
        Validity::NotYetValid => p.warn(
            file,
            &cpath,
            format!(
                "{} is not valid before {}; check the gateway's clock",
                cert.display(),
                info.not_before_text()
            ),
        ),
    }
    Some(Certificate {
        files: X509Files {
            certificate: cert.clone(),
            key: key.clone(),
            thumbprint: info.thumbprint.clone(),
        },
        common_name: info.common_name.clone(),
    })
}

fn resolve_key(
    file: &Path,
    path: &str,
    d: &DeviceConfig,
    hub: Option<(&str, Option<&str>)>,
    p: &mut Problems,
) -> Option<Key> {
    if let Some(cs) = &d.connection_string {
        let key_path = format!("{path}.connection_string");
        return match cs.0.parse::<ConnectionString>() {
            Ok(cs) => {
                if cs.device_id != d.id {
                    p.add(
                        file,
                        &key_path,
                        format!("DeviceId {:?} does not match id {:?}", cs.device_id, d.id),
                    );
                }
                if let Some((hostname, gateway)) = hub {
                    if !cs.host_name.eq_ignore_ascii_case(hostname) {
                        p.add(
                            file,
                            &key_path,
                            format!(
                                "HostName {:?} does not match [hub] hostname {hostname:?}",
                                cs.host_name
                            ),
                        );
                    }
                    if let Some(gw) = &cs.gateway_host_name
                        && !gateway.is_some_and(|g| g.eq_ignore_ascii_case(gw))
                    {
                        p.add(file, &key_path, format!("GatewayHostName {gw:?} does not match [hub] gateway_hostname; set it there"));
                    }
                }
                Some(cs.key)
            }
            Err(e) => {
                p.add(file, key_path, e.to_string());
                None
            }
        };
    }
    if let Some(k) = &d.shared_access_key {
        return match Key::from_base64(&k.0) {
            Ok(k) => Some(k),
            Err(e) => {
                p.add(file, format!("{path}.shared_access_key"), e.to_string());
                None
            }
        };
    }
    let key_file = d.shared_access_key_file.as_ref()?;
    read_key_file(file, &format!("{path}.shared_access_key_file"), key_file, p)
}

/// A base64 key alone in a file (a device's `shared_access_key_file`, DPS's `group_key_file`);
/// its problem goes to `key_path`, naming the file, never its content.
pub(super) fn read_key_file(
    file: &Path,
    key_path: &str,
    key_file: &Path,
    p: &mut Problems,
) -> Option<Key> {
    // A key is 44 characters; 4 KiB leaves room for comments and never reads a device forever.
    match crate::regular_file::read_limited(key_file, 4096) {
        Ok(text) => match Key::from_base64(text.trim()) {
            Ok(k) => Some(k),
            Err(e) => {
                p.add(file, key_path, format!("{}: {e}", key_file.display()));
                None
            }
        },
        Err(e) => {
            p.add(
                file,
                key_path,
                format!("cannot read {}: {e}", key_file.display()),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::problems;

    #[test]
    fn connection_string_host_names_match_the_hub_in_any_case() {
        let device = |cs: &str| {
            format!(
                "[hub]\nhostname = \"H.azure-devices.net \"\ngateway_hostname = \" Edge.local\"\n\
                 [[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"10.0.0.6:502\"\n\
                 [[device]]\nid = \"d1\"\nbus = \"plc\"\nunit = 1\nraw_methods = true\n\
                 connection_string = \"{cs};DeviceId=d1;SharedAccessKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n"
            )
        };
        let ok = device("HostName=h.azure-devices.net;GatewayHostName=edge.LOCAL");
        assert_eq!(problems(&ok), Vec::<String>::new());
        let other = device("HostName=h.azure-devices.net;GatewayHostName=other.local");
        let got = problems(&other);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("GatewayHostName \"other.local\""),
            "{got:?}"
        );
    }

    mod certificates {
        use super::super::super::testing::{HUB, problems};
        use crate::config::load::parse;
        use crate::config::schema::FileConfig;
        use crate::config::validate::validate;
        use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair};
        use std::path::{Path, PathBuf};

        const BUS: &str =
            "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"10.0.0.6:502\"\n";

        fn params(cn: &str, days: i64) -> CertificateParams {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(400);
            params.not_after = now + time::Duration::days(days);
            params
        }

        fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }

        /// (certificate, key) files: self-signed, or signed by a throwaway CA.
        fn files(dir: &Path, cn: &str, days: i64, ca_signed: bool) -> (PathBuf, PathBuf) {
            let key = KeyPair::generate().unwrap();
            let cert = if ca_signed {
                let ca_key = KeyPair::generate().unwrap();
                let mut ca = params("Plant CA", 3650);
                ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                let issuer = Issuer::new(ca, ca_key);
                params(cn, days).signed_by(&key, &issuer).unwrap()
            } else {
                params(cn, days).self_signed(&key).unwrap()
            };
            (
                write(dir, &format!("{cn}-{days}.crt"), &cert.pem()),
                write(dir, &format!("{cn}-{days}.key"), &key.serialize_pem()),
            )
        }

        fn device(id: &str, creds: &str) -> String {
            format!(
                "{HUB}{BUS}[[device]]\nid = \"{id}\"\nbus = \"plc\"\nunit = 1\nraw_methods = true\n{creds}\n"
            )
        }

        fn cert_keys(cert: &Path, key: &Path) -> String {
            format!(
                "certificate_file = {:?}\nprivate_key_file = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            )
        }

        #[test]
        fn self_signed_any_cn_and_ca_signed_with_the_device_id_are_accepted() {
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) = files(dir.path(), "whatever", 365, false);
            assert_eq!(
                problems(&device("d1", &cert_keys(&cert, &key))),
                Vec::<String>::new()
            );
            let (cert, key) = files(dir.path(), "d1", 365, true);
            let text = device("d1", &cert_keys(&cert, &key));
            assert_eq!(problems(&text), Vec::<String>::new());
            let cfg: FileConfig = parse(&text).unwrap();
            let cfg = validate(vec![(PathBuf::from("leafgate.toml"), cfg)]).unwrap();
            assert!(matches!(
                &cfg.devices[0].auth,
                crate::hub::auth::Auth::X509(files) if files.thumbprint.len() == 64
            ));
        }

        #[test]
        fn a_ca_signed_certificate_must_name_the_device() {
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) = files(dir.path(), "d2", 365, true);
            let got = problems(&device("d1", &cert_keys(&cert, &key)));
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(
                got[0].starts_with("device \"d1\".certificate_file: "),
                "{got:?}"
            );
            assert!(
                got[0].contains("subject CN is \"d2\"; IoT Hub accepts a CA-signed device certificate only with CN = the device id \"d1\""),
                "{got:?}"
            );
        }

        #[test]
        fn bad_combinations_and_files_are_named() {
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) = files(dir.path(), "d1", 365, false);
            let (_, other_key) = files(dir.path(), "other", 365, false);
            let key_too = format!(
                "{}shared_access_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n",
                cert_keys(&cert, &key)
            );
            let cases: Vec<(String, &str)> = vec![
                (key_too, "device \"d1\": give either a key"),
                (
                    format!("certificate_file = {:?}\n", cert.display().to_string()),
                    "device \"d1\".private_key_file: missing: a certificate needs both",
                ),
                (
                    format!("private_key_file = {:?}\n", key.display().to_string()),
                    "device \"d1\".certificate_file: missing",
                ),
                (
                    cert_keys(&cert, &other_key),
                    "device \"d1\".private_key_file: the private key in",
                ),
                (
                    cert_keys(&cert, &dir.path().join("gone.key")),
                    "device \"d1\".private_key_file: cannot read",
                ),
                (cert_keys(&key, &key), "device \"d1\".certificate_file: "),
                // One PEM file for both that cannot be read: the certificate is read first.
                (
                    cert_keys(&dir.path().join("both.pem"), &dir.path().join("both.pem")),
                    "device \"d1\".certificate_file: cannot read",
                ),
                (String::new(), "device \"d1\": missing credentials"),
            ];
            for (creds, want) in cases {
                let got = problems(&device("d1", &creds));
                assert_eq!(got.len(), 1, "{creds}: {got:?}");
                assert!(got[0].starts_with(want), "{creds}: {got:?}");
            }
        }

        #[test]
        fn a_certificate_close_to_its_end_or_past_it_is_a_warning() {
            let dir = tempfile::tempdir().unwrap();
            for (days, want) in [
                (10, "days left); renew it before then"),
                (-1, "IoT Hub refuses it"),
            ] {
                let (cert, key) = files(dir.path(), "d1", days, false);
                let text = device("d1", &cert_keys(&cert, &key));
                let cfg: FileConfig = parse(&text).unwrap();
                let cfg = validate(vec![(PathBuf::from("leafgate.toml"), cfg)]).unwrap();
                let warnings: Vec<_> = cfg
                    .warnings
                    .iter()
                    .filter(|w| w.path == "device \"d1\".certificate_file")
                    .collect();
                assert_eq!(warnings.len(), 1, "{:?}", cfg.warnings);
                assert!(warnings[0].message.contains(want), "{:?}", warnings[0]);
            }
            let (cert, key) = files(dir.path(), "d1", 90, false);
            let cfg: FileConfig = parse(&device("d1", &cert_keys(&cert, &key))).unwrap();
            let cfg = validate(vec![(PathBuf::from("leafgate.toml"), cfg)]).unwrap();
            assert!(
                cfg.warnings
                    .iter()
                    .all(|w| w.path != "device \"d1\".certificate_file"),
                "{:?}",
                cfg.warnings
            );
        }
    }
}
