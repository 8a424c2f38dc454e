//! The `[provisioning]` section: the DPS id scope and endpoint, the enrollment group's key, the
//! pace and the cache; and which devices register with it.

use std::path::Path;
use std::time::Duration;

use super::Problems;
use super::device_key::read_key_file;
use super::hub::check_host;
use crate::config::schema::{DeviceConfig, ProvisioningConfig};
use crate::hub::sas::Key;
use crate::hub::settings::Provisioning;

/// `[provisioning]` validated, and its group key if it has one.
pub(super) struct Resolved {
    pub(super) settings: Provisioning,
    pub(super) group_key: Option<Key>,
}

pub(super) fn resolve_provisioning(
    file: &Path,
    c: &ProvisioningConfig,
    p: &mut Problems,
) -> Option<Resolved> {
    let start = p.0.len();
    let id_scope = c.id_scope.trim();
    if id_scope.is_empty()
        || id_scope.len() > 64
        || !id_scope.chars().all(|ch| ch.is_ascii_alphanumeric())
    {
        p.add(
            file,
            "provisioning.id_scope",
            format!("{:?} is not an id scope (letters and digits, as the DPS overview shows it, e.g. 0ne00A1B2C3)", c.id_scope),
        );
    }
    let endpoint = check_host("global_endpoint", &c.global_endpoint)
        .map_err(|msg| p.add(file, "provisioning.global_endpoint", msg))
        .ok();
    if c.port == 0 {
        p.add(file, "provisioning.port", "must not be 0");
    }
    if !(1..=100).contains(&c.max_registrations_per_s) {
        p.add(
            file,
            "provisioning.max_registrations_per_s",
            format!("{} is outside 1..=100", c.max_registrations_per_s),
        );
    }
    if !(5..=600).contains(&c.timeout_s) {
        p.add(
            file,
            "provisioning.timeout_s",
            format!("{} is outside 5..=600", c.timeout_s),
        );
    }
    let cache = (!c.cache.is_empty()).then(|| std::path::PathBuf::from(&c.cache));
    if cache.as_ref().is_some_and(|c| !c.is_absolute()) {
        p.add(
            file,
            "provisioning.cache",
            format!(
                "{:?} is not an absolute path (\"\" keeps assignments in memory only)",
                c.cache
            ),
        );
    }
    let group_key = match (&c.group_key, &c.group_key_file) {
        (Some(_), Some(_)) => {
            p.add(
                file,
                "provisioning",
                "give only one of group_key and group_key_file",
            );
            None
        }
        (Some(k), None) => Key::from_base64(&k.0)
            .map_err(|e| p.add(file, "provisioning.group_key", e.to_string()))
            .ok(),
        (None, Some(path)) => read_key_file(file, "provisioning.group_key_file", path, p),
        (None, None) => None,
    };
    if p.0.len() != start {
        return None;
    }
    Some(Resolved {
        settings: Provisioning {
            id_scope: id_scope.to_owned(),
            endpoint: endpoint?,
            port: c.port,
            max_registrations_per_s: c.max_registrations_per_s,
            timeout: Duration::from_secs(c.timeout_s),
            cache,
        },
        group_key,
    })
}

/// Whether a device registers with DPS: with `[provisioning]`, every device but those with a
/// connection string (which names its hub).
pub(super) fn provisioned(d: &DeviceConfig, provisioning: bool) -> bool {
    provisioning && d.connection_string.is_none()
}

/// DPS registration ids: up to 128 letters, digits and `- . _ :`, not starting or ending with
/// one of those (`iothub-protocol.md` 9a). The device id is the registration id.
pub(super) fn check_registration_id(id: &str) -> Result<(), String> {
    let special = |c: char| matches!(c, '-' | '.' | '_' | ':');
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || special(c))
        && !id.starts_with(special)
        && !id.ends_with(special);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} cannot be a DPS registration id (up to 128 letters, digits and - . _ :, not first or last); give this device a connection_string to connect without DPS"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_ids_follow_dps_rules() {
        for ok in ["pump-1", "a", "line1.meter_2:x", &"a".repeat(128)] {
            assert_eq!(check_registration_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-pump",
            "pump.",
            "pump 1",
            "pümp",
            &"a".repeat(129),
            "a/b",
        ] {
            assert!(check_registration_id(bad).is_err(), "{bad}");
        }
    }

    mod sections {
        use super::super::super::testing::problems;
        use crate::config::load::parse;
        use crate::config::schema::FileConfig;
        use crate::config::validate::validate;
        use crate::hub::auth::Auth;
        use crate::hub::sas::Key;
        use std::path::PathBuf;

        const GROUP: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        const BUS: &str =
            "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"10.0.0.6:502\"\n";

        fn site(provisioning: &str, devices: &str) -> String {
            format!("[hub]\n{provisioning}\n{BUS}{devices}")
        }

        fn device(id: &str, creds: &str) -> String {
            format!(
                "[[device]]\nid = \"{id}\"\nbus = \"plc\"\nunit = 1\nraw_methods = true\n{creds}\n"
            )
        }

        #[test]
        fn a_device_of_the_group_is_one_line_and_gets_the_derived_key() {
            let text = site(
                &format!("[provisioning]\nid_scope = \"0ne00A1B2C3\"\ngroup_key = \"{GROUP}\""),
                &format!(
                    "{}{}",
                    device("pump-1", ""),
                    device(
                        "direct-1",
                        "connection_string = \"HostName=h.azure-devices.net;DeviceId=direct-1;SharedAccessKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\""
                    )
                ),
            )
            .replacen("[hub]\n", "[hub]\nhostname = \"h.azure-devices.net\"\n", 1);
            assert_eq!(problems(&text), Vec::<String>::new());
            let cfg: FileConfig = parse(&text).unwrap();
            let cfg = validate(vec![(PathBuf::from("leafgate.toml"), cfg)]).unwrap();
            let pump = &cfg.devices[0];
            assert!(pump.provisioned);
            let derived = Key::from_base64(GROUP).unwrap().derive("pump-1");
            assert_eq!(pump.auth, Auth::Sas(derived));
            assert!(
                !cfg.devices[1].provisioned,
                "a connection string names its hub"
            );
            let settings = cfg.hub.provisioning.unwrap();
            assert_eq!(settings.endpoint, "global.azure-devices-provisioning.net");
            assert_eq!(settings.port, 8883);
            assert_eq!(
                settings.cache.as_deref(),
                Some(std::path::Path::new("/var/lib/leafgate/provisioning"))
            );
        }

        #[test]
        fn bad_combinations_are_named() {
            let dir = tempfile::tempdir().unwrap();
            let signing = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "someone-else");
            let cert = dir.path().join("c.pem");
            let key = dir.path().join("k.pem");
            std::fs::write(&cert, params.self_signed(&signing).unwrap().pem()).unwrap();
            std::fs::write(&key, signing.serialize_pem()).unwrap();
            let cases: Vec<(String, &str)> = vec![
                (
                    site("", &device("pump-1", "")),
                    "hub.hostname: missing: your IoT hub's host name",
                ),
                (
                    site(
                        "[provisioning]\nid_scope = \"\"",
                        &device(
                            "pump-1",
                            "shared_access_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"",
                        ),
                    ),
                    "provisioning.id_scope: \"\" is not an id scope",
                ),
                (
                    site(
                        &format!(
                            "[provisioning]\nid_scope = \"0ne1\"\ngroup_key_file = \"{}\"",
                            dir.path().join("gone.key").display()
                        ),
                        &device("pump-1", ""),
                    ),
                    "provisioning.group_key_file: cannot read",
                ),
                (
                    site("[provisioning]\nid_scope = \"0ne1\"", &device("pump-1", "")),
                    "device \"pump-1\": missing credentials: [provisioning] has no group_key",
                ),
                (
                    site(
                        &format!("[provisioning]\nid_scope = \"0ne1\"\ngroup_key = \"{GROUP}\""),
                        &device("-pump", ""),
                    ),
                    "device \"-pump\".id: \"-pump\" cannot be a DPS registration id",
                ),
                (
                    site(
                        &format!("[provisioning]\nid_scope = \"0ne1\"\ngroup_key = \"{GROUP}\""),
                        &device(
                            "d1",
                            "connection_string = \"HostName=h.azure-devices.net;DeviceId=d1;SharedAccessKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"",
                        ),
                    ),
                    "device \"d1\".connection_string: a device with a connection string connects without DPS",
                ),
                (
                    site(
                        &format!(
                            "[provisioning]\nid_scope = \"0ne1\"\ngroup_key = \"{GROUP}\"\ngroup_key_file = \"/k\""
                        ),
                        &device("pump-1", ""),
                    ),
                    "provisioning: give only one of group_key and group_key_file",
                ),
                (
                    site(
                        &format!(
                            "[provisioning]\nid_scope = \"0ne1\"\ngroup_key = \"{GROUP}\"\ncache = \"state\"\nmax_registrations_per_s = 0"
                        ),
                        &device("pump-1", ""),
                    ),
                    "provisioning.max_registrations_per_s: 0 is outside 1..=100",
                ),
                (
                    site(
                        &format!("[provisioning]\nid_scope = \"0ne1\"\ngroup_key = \"{GROUP}\""),
                        &device(
                            "pump-1",
                            &format!(
                                "certificate_file = {:?}\nprivate_key_file = {:?}",
                                cert.display().to_string(),
                                key.display().to_string()
                            ),
                        ),
                    ),
                    "device \"pump-1\".certificate_file: registers with DPS, which takes the certificate's CN as the registration id: the CN is \"someone-else\"",
                ),
            ];
            for (text, want) in cases {
                let got = problems(&text);
                assert!(
                    got.iter().any(|p| p.starts_with(want)),
                    "want {want:?}, got {got:?}"
                );
            }
        }
    }
}
