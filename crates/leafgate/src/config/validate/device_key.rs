//! A device's key, from exactly one of a connection string, an inline key or a key file. A
//! connection string also names the device and the hub, and they must agree with the config, or
//! the device would connect as someone else or to the wrong hub.

use std::path::Path;

use super::Problems;
use crate::config::schema::DeviceConfig;
use crate::hub::connstr::ConnectionString;
use crate::hub::sas::Key;

/// `hub` is the trimmed (host name, gateway host name) when both are valid, even when other
/// [hub] keys are bad. Host names compare without regard to case.
pub(super) fn resolve_key(
    file: &Path,
    path: &str,
    d: &DeviceConfig,
    hub: Option<(&str, Option<&str>)>,
    p: &mut Problems,
) -> Option<Key> {
    let given = [
        d.connection_string.is_some(),
        d.shared_access_key.is_some(),
        d.shared_access_key_file.is_some(),
    ];
    match given.iter().filter(|g| **g).count() {
        0 => {
            p.add(file, path, "missing credentials: connection_string, shared_access_key or shared_access_key_file");
            return None;
        }
        1 => {}
        _ => {
            p.add(
                file,
                path,
                "give only one of connection_string, shared_access_key, shared_access_key_file",
            );
            return None;
        }
    }
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
    let kpath = format!("{path}.shared_access_key_file");
    // A key is 44 characters; 4 KiB leaves room for comments and never reads a device forever.
    match crate::regular_file::read_limited(key_file, 4096) {
        Ok(text) => match Key::from_base64(text.trim()) {
            Ok(k) => Some(k),
            Err(e) => {
                p.add(file, kpath, format!("{}: {e}", key_file.display()));
                None
            }
        },
        Err(e) => {
            p.add(
                file,
                kpath,
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
}
