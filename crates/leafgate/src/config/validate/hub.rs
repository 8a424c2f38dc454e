//! The `[hub]` section: host names, timings and the CA file. Host names get the most care here
//! because a scheme, port or path in them fails only at connect time, as a TLS or "not
//! authorized" error far from the key that caused it.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Problems;
use crate::config::Hub;
use crate::config::schema::{FileConfig, HubConfig};
use crate::hub::connstr::ConnectionString;
use crate::hub::settings::{Provisioning, Proxy};

/// `provisioning` is `[provisioning]`, resolved: with it, `hostname` may be left out.
/// `from_devices` is what the devices' connection strings say instead of a missing `hostname`
/// ([`host_of_connection_strings`]).
pub(super) fn resolve_hub(
    file: &Path,
    h: &HubConfig,
    provisioning: Option<Provisioning>,
    from_devices: Result<String, String>,
    p: &mut Problems,
) -> Option<Hub> {
    let start = p.0.len();
    let hostname = match (&h.hostname, &provisioning) {
        (Some(name), _) => check_host("hostname", name)
            .map(Some)
            .map_err(|msg| p.add(file, "hub.hostname", msg))
            .ok(),
        (None, Some(_)) => Some(None),
        (None, None) => match from_devices {
            Ok(host) => Some(Some(host)),
            Err(why) => {
                p.add(
                    file,
                    "hub.hostname",
                    format!("missing: your IoT hub's host name (e.g. myhub.azure-devices.net), a [provisioning] section that assigns each device its hub, or a connection string on every device, all naming one host ({why})"),
                );
                None
            }
        },
    };
    let gateway = match &h.gateway_hostname {
        Some(g) => check_host("gateway_hostname", g)
            .map(Some)
            .map_err(|msg| p.add(file, "hub.gateway_hostname", msg))
            .ok(),
        None => Some(None),
    };
    if h.port == 0 {
        p.add(file, "hub.port", "must not be 0");
    }
    if h.websocket_port == 0 {
        p.add(file, "hub.websocket_port", "must not be 0");
    }
    let proxy = resolve_proxy(file, h, p);
    if !(5..=1177).contains(&h.keep_alive_s) {
        p.add(file, "hub.keep_alive_s", format!("{} is outside 5..=1177 (IoT Hub closes idle links after 1.5 × keep-alive, at most 29.45 min)", h.keep_alive_s));
    }
    if !(10..=31_536_000).contains(&h.sas_ttl_s) {
        p.add(
            file,
            "hub.sas_ttl_s",
            format!("{} is outside 10..=31536000", h.sas_ttl_s),
        );
    }
    if !(1..=10_000).contains(&h.max_connects_per_s) {
        p.add(
            file,
            "hub.max_connects_per_s",
            format!("{} is outside 1..=10000", h.max_connects_per_s),
        );
    }
    if !(1024..=128 * 1024).contains(&h.max_payload_bytes) {
        p.add(
            file,
            "hub.max_payload_bytes",
            format!(
                "{} is outside 1024..=131072 (IoT Hub's own limit is 128 KiB)",
                h.max_payload_bytes
            ),
        );
    }
    if !(1..=300).contains(&h.connect_timeout_s) {
        p.add(
            file,
            "hub.connect_timeout_s",
            format!("{} is outside 1..=300", h.connect_timeout_s),
        );
    }
    if h.reconnect_min_ms == 0 || h.reconnect_min_ms > h.reconnect_max_ms {
        p.add(
            file,
            "hub.reconnect_min_ms",
            format!(
                "must be above 0 and at most reconnect_max_ms ({})",
                h.reconnect_max_ms
            ),
        );
    }
    if let Some(ca) = &h.ca_file
        && let Err(msg) = check_ca_file(ca)
    {
        p.add(file, "hub.ca_file", msg);
    }
    let (Some(hostname), Some(gateway_hostname)) = (hostname, gateway) else {
        return None;
    };
    (p.0.len() == start).then(|| Hub {
        hostname,
        gateway_hostname,
        port: h.port,
        websocket_port: h.websocket_port,
        transport: h.transport,
        proxy: proxy.flatten(),
        ca_file: h.ca_file.clone(),
        keep_alive: Duration::from_secs(h.keep_alive_s),
        sas_ttl: Duration::from_secs(h.sas_ttl_s),
        max_connects_per_s: h.max_connects_per_s,
        max_payload_bytes: h.max_payload_bytes,
        connect_timeout: Duration::from_secs(h.connect_timeout_s),
        reconnect_min: Duration::from_millis(h.reconnect_min_ms),
        reconnect_max: Duration::from_millis(h.reconnect_max_ms),
        provisioning,
    })
}

/// `proxy` and `proxy_password_file`: `Some(None)` without a proxy, `None` when something is
/// wrong (reported).
fn resolve_proxy(file: &Path, h: &HubConfig, p: &mut Problems) -> Option<Option<Proxy>> {
    let Some(url) = &h.proxy else {
        if h.proxy_password_file.is_some() {
            p.add(
                file,
                "hub.proxy_password_file",
                "applies only with hub.proxy (http://user@host:port)",
            );
            return None;
        }
        return Some(None);
    };
    let (host, port, username) = match parse_proxy(url) {
        Ok(parts) => parts,
        Err(msg) => {
            p.add(file, "hub.proxy", msg);
            return None;
        }
    };
    let password = match (&username, &h.proxy_password_file) {
        (Some(_), Some(path)) => match read_password(path) {
            Ok(password) => Some(password),
            Err(msg) => {
                p.add(file, "hub.proxy_password_file", msg);
                return None;
            }
        },
        (Some(user), None) => {
            p.add(
                file,
                "hub.proxy_password_file",
                format!("missing: the proxy user {user:?} needs a password, alone in a file readable by root and the leafgate group"),
            );
            return None;
        }
        (None, Some(_)) => {
            p.add(
                file,
                "hub.proxy_password_file",
                "applies only when hub.proxy names a user (http://user@host:port)",
            );
            return None;
        }
        (None, None) => None,
    };
    Some(Some(Proxy {
        host,
        port,
        username,
        password,
    }))
}

/// Parses `http://[user@]host:port[/]` into host, port and user. A password in the URL is
/// refused (it belongs in `proxy_password_file`), and so are other schemes: leafgate speaks
/// plain HTTP CONNECT to the proxy.
fn parse_proxy(url: &str) -> Result<(String, u16, Option<String>), String> {
    let url = url.trim();
    let Some(rest) = url.strip_prefix("http://") else {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        return Err(if scheme.is_empty() {
            format!(
                "{url:?} has no scheme; write http://host:port, e.g. http://proxy.plant.local:3128"
            )
        } else {
            format!(
                "{scheme}:// proxies are not supported; write http://host:port (leafgate asks the proxy with HTTP CONNECT; the hub connection inside is TLS either way)"
            )
        });
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(format!("{url:?} has a path; write http://host:port only"));
    }
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((user, hostport)) => (Some(user), hostport),
        None => (None, authority),
    };
    if let Some(user) = user {
        if user.contains(':') {
            return Err(
                "holds a password; write http://user@host:port and put the password in hub.proxy_password_file"
                    .to_owned(),
            );
        }
        if user.is_empty() {
            return Err(format!("{url:?} has an empty user name before '@'"));
        }
    }
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => match v6.split_once("]:") {
            Some((host, port)) => (host, Some(port)),
            None => (v6.trim_end_matches(']'), None),
        },
        None => match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        },
    };
    let Some(port) = port else {
        return Err(format!(
            "{url:?} has no port; write http://host:port, e.g. http://{hostport}:3128"
        ));
    };
    let port = match port.parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => return Err(format!("port {port:?} is not a number in 1..=65535")),
    };
    if host.is_empty() || rustls::pki_types::ServerName::try_from(host).is_err() {
        return Err(format!("{host:?} is not a valid host name or address"));
    }
    Ok((host.to_owned(), port, user.map(str::to_owned)))
}

/// The password is the file's first line (trailing newline and spaces removed), so `echo pw >
/// file` works. 4 KiB is far more than any password.
fn read_password(path: &Path) -> Result<String, String> {
    let text = crate::regular_file::read_limited(path, 4096)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or("").trim_end();
    if password.is_empty() {
        return Err(format!(
            "{} is empty; write the proxy password in it",
            path.display()
        ));
    }
    Ok(password.to_owned())
}

/// The hub every device's connection string names, standing in for a missing `hostname`.
/// `Err` says why there is none (for the missing-hostname problem).
pub(super) fn host_of_connection_strings(
    files: &[(PathBuf, FileConfig)],
) -> Result<String, String> {
    let mut hosts: Vec<String> = Vec::new();
    let mut devices = 0;
    for d in files.iter().flat_map(|(_, f)| &f.device) {
        devices += 1;
        let Some(cs) = &d.connection_string else {
            return Err(format!("device {:?} has no connection string", d.id));
        };
        // An unreadable one is reported at the device; it names no host.
        let Ok(cs) = cs.0.parse::<ConnectionString>() else {
            return Err(format!(
                "device {:?}'s connection string cannot be read",
                d.id
            ));
        };
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&cs.host_name)) {
            hosts.push(cs.host_name);
        }
    }
    match hosts.as_slice() {
        [one] => check_host("hostname", one),
        [] if devices == 0 => Err("there is no device".to_owned()),
        [] => Err("no device has a connection string".to_owned()),
        _ => Err(format!(
            "the connection strings name {} hosts: {}",
            hosts.len(),
            hosts.join(", ")
        )),
    }
}

/// `hostname` and `gateway_hostname` are bare host names: they become the TLS server name and
/// the TCP peer, and `hostname` also goes into MQTT usernames and SAS scopes, where a scheme, a
/// port or a path would fail only at connect time (or as "not authorized"). Surrounding
/// whitespace is trimmed; the trimmed name is returned. A bare IPv6 address is a host name too.
pub(super) fn check_host(key: &str, raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(if key == "hostname" {
            "must not be empty (your IoT hub's host name, e.g. myhub.azure-devices.net)".to_owned()
        } else {
            "must not be empty; remove the key to connect to hostname".to_owned()
        });
    }
    if name.contains(char::is_whitespace) {
        return Err(format!(
            "{name:?} contains whitespace; write the host name only, e.g. myhub.azure-devices.net"
        ));
    }
    let after_scheme = name.split_once("://").map_or(name, |(_, rest)| rest);
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or(after_scheme);
    let (bare, port) = split_authority(authority);
    let what = if after_scheme.len() != name.len() {
        "a scheme"
    } else if authority.len() != after_scheme.len() {
        "a path"
    } else if port {
        "a port"
    } else if bare != authority {
        "more than a host name"
    } else {
        ""
    };
    if !what.is_empty() {
        let fix = if bare.is_empty() {
            "e.g. myhub.azure-devices.net".to_owned()
        } else {
            format!("{key} = {bare:?}")
        };
        let port = if port {
            ", and the port as hub.port"
        } else {
            ""
        };
        return Err(format!(
            "{name:?} has {what}; write the host name only: {fix}{port}"
        ));
    }
    if rustls::pki_types::ServerName::try_from(name).is_err() {
        return Err(format!(
            "{name:?} is not a valid host name (letters, digits, '-' and '.', e.g. myhub.azure-devices.net)"
        ));
    }
    Ok(name.to_owned())
}

/// The host in `host`, `host:port`, `user@host:port` or `[v6]:port`, and whether a port was
/// given.
fn split_authority(authority: &str) -> (&str, bool) {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.split_once(']') {
            Some((v6, rest)) => (v6, rest.starts_with(':')),
            None => (inner, false),
        };
    }
    if host.parse::<Ipv6Addr>().is_ok() {
        return (host, false);
    }
    match host.split_once(':') {
        Some((h, _)) => (h, true),
        None => (host, false),
    }
}

/// Reads and parses `ca_file` exactly as the daemon will at start. Found here, a bad file is a
/// config problem: `check` reports it and the daemon exits 78, which systemd does not restart,
/// instead of failing at start with 1 in a restart loop.
fn check_ca_file(ca: &Path) -> Result<(), String> {
    crate::hub::tls::add_ca_file(ca, &mut rustls::RootCertStore::empty())
        .map(|_| ())
        .map_err(|e| match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::testing::{HUB, problems};
    use super::*;
    use crate::config::load::parse;
    use crate::config::schema::FileConfig;
    use crate::config::validate::validate;

    /// `[hub]` without a hostname, a Modbus bus, and a device per (id, connection string host).
    fn hostless(devices: &[(&str, Option<&str>)]) -> String {
        let mut toml =
            "[hub]\n[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:502\"\n"
                .to_owned();
        for (i, (id, host)) in devices.iter().enumerate() {
            toml += &format!(
                "[[device]]\nid = \"{id}\"\nbus = \"plc\"\nunit = {}\nraw_methods = true\n",
                i + 1
            );
            toml += &match host {
                Some(h) => format!(
                    "connection_string = \"HostName={h};DeviceId={id};SharedAccessKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n"
                ),
                None => "shared_access_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n"
                    .to_owned(),
            };
        }
        toml
    }

    #[test]
    fn connection_strings_that_all_name_one_hub_stand_in_for_the_hostname() {
        let toml = hostless(&[
            ("a", Some("myhub.azure-devices.net")),
            ("b", Some("MyHub.azure-devices.net")),
        ]);
        let cfg = validate(vec![(
            PathBuf::from("leafgate.toml"),
            parse(&toml).unwrap(),
        )])
        .unwrap();
        assert_eq!(cfg.hub.hostname.as_deref(), Some("myhub.azure-devices.net"));

        let got = problems(&hostless(&[
            ("a", Some("one.azure-devices.net")),
            ("b", Some("two.azure-devices.net")),
        ]));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("hub.hostname: missing: ")
                && got[0].ends_with("(the connection strings name 2 hosts: one.azure-devices.net, two.azure-devices.net)"),
            "{got:?}"
        );
        let got = problems(&hostless(&[
            ("a", Some("one.azure-devices.net")),
            ("b", None),
        ]));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].ends_with("(device \"b\" has no connection string)"),
            "{got:?}"
        );
        let got = problems(&hostless(&[("a", Some("https://one.azure-devices.net"))]));
        assert!(
            got.iter()
                .any(|p| p.starts_with("hub.hostname: missing: ") && p.contains("has a scheme")),
            "{got:?}"
        );
    }

    fn hub_with(extra: &str) -> String {
        format!("{HUB}{extra}\n")
    }

    #[test]
    fn ca_file_must_hold_a_pem_certificate_rustls_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca = rcgen::generate_simple_self_signed(vec!["edge.local".to_owned()]).unwrap();
        let good = write("ca.pem", &ca.cert.pem());
        let with_key = write(
            "bundle.pem",
            &format!("{}{}", ca.signing_key.serialize_pem(), ca.cert.pem()),
        );
        let key_only = write("key.pem", &ca.signing_key.serialize_pem());
        let der = write("ca.der", "0\u{82}\u{3}\u{1}0\u{82}");
        let not_der = write(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcI\n-----END CERTIFICATE-----\n",
        );
        let bad_base64 = write(
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\nAA!!ECAw\n-----END CERTIFICATE-----\n",
        );
        let missing = dir.path().join("missing.pem");
        let shown = |p: &Path| p.display().to_string();

        for ok in [&good, &with_key] {
            let toml = hub_with(&format!("ca_file = {:?}", shown(ok)));
            assert_eq!(problems(&toml), Vec::<String>::new(), "{}", ok.display());
        }
        let cases: [(&Path, &str); 6] = [
            (dir.path(), "is a directory; give the PEM file"),
            (&bad_base64, "holds no readable PEM certificate"),
            (&key_only, "holds no PEM certificate"),
            (&der, "holds no PEM certificate"),
            (&not_der, "certificate 1 is not a usable X.509 certificate"),
            (&missing, "cannot read"),
        ];
        for (path, want) in cases {
            let toml = hub_with(&format!("ca_file = {:?}", shown(path)));
            let got = problems(&toml);
            assert_eq!(got.len(), 1, "{got:?}");
            assert!(got[0].starts_with("hub.ca_file: "), "{got:?}");
            assert!(got[0].contains(want), "{}: {got:?}", path.display());
        }
    }

    #[test]
    fn host_names_are_trimmed_and_must_be_bare() {
        let ok = [
            ("myhub.azure-devices.net", "myhub.azure-devices.net"),
            ("  myhub.azure-devices.net\t", "myhub.azure-devices.net"),
            ("edge_gw.local", "edge_gw.local"),
            ("192.168.1.10", "192.168.1.10"),
            ("fd00::1", "fd00::1"),
        ];
        for (raw, want) in ok {
            assert_eq!(check_host("hostname", raw).as_deref(), Ok(want), "{raw:?}");
        }
        let bad = [
            ("", "must not be empty"),
            ("   ", "must not be empty"),
            ("my hub.azure-devices.net", "contains whitespace"),
            (
                "mqtts://myhub.azure-devices.net",
                r#"has a scheme; write the host name only: hostname = "myhub.azure-devices.net""#,
            ),
            (
                "mqtts://myhub.azure-devices.net:8883/",
                r#"has a scheme; write the host name only: hostname = "myhub.azure-devices.net", and the port as hub.port"#,
            ),
            (
                "myhub.azure-devices.net:8883",
                r#"has a port; write the host name only: hostname = "myhub.azure-devices.net", and the port as hub.port"#,
            ),
            (
                "[fd00::1]:8883",
                r#"has a port; write the host name only: hostname = "fd00::1", and the port as hub.port"#,
            ),
            (
                "myhub.azure-devices.net/devices",
                r#"has a path; write the host name only: hostname = "myhub.azure-devices.net""#,
            ),
            (
                "https://",
                "has a scheme; write the host name only: e.g. myhub",
            ),
            ("user@myhub.azure-devices.net", "has more than a host name"),
            ("myhub..azure-devices.net", "is not a valid host name"),
            ("-hub.example", "is not a valid host name"),
        ];
        for (raw, want) in bad {
            let got = check_host("hostname", raw).unwrap_err();
            assert!(got.contains(want), "{raw:?}: {got}");
        }
        let got = check_host("gateway_hostname", "").unwrap_err();
        assert!(got.contains("remove the key"), "{got}");
        let got = check_host("gateway_hostname", "edge.local:443").unwrap_err();
        assert!(got.contains(r#"gateway_hostname = "edge.local""#), "{got}");
    }

    #[test]
    fn trimmed_host_names_are_what_the_hub_connects_to() {
        let toml = "[hub]\nhostname = \" myhub.azure-devices.net \"\ngateway_hostname = \" edge.local\\n\"\n";
        let cfg: FileConfig = parse(toml).unwrap();
        let cfg = validate(vec![(PathBuf::from("leafgate.toml"), cfg)]).unwrap();
        assert_eq!(cfg.hub.hostname.as_deref(), Some("myhub.azure-devices.net"));
        assert_eq!(cfg.hub.gateway_hostname.as_deref(), Some("edge.local"));
        assert_eq!(
            cfg.hub.connect_host("myhub.azure-devices.net"),
            "edge.local"
        );
    }

    #[test]
    fn proxies_are_http_urls_with_a_port_and_no_password() {
        let ok = [
            (
                "http://proxy.plant.local:3128",
                ("proxy.plant.local", 3128, None),
            ),
            (" http://gw@10.0.0.1:8080/ ", ("10.0.0.1", 8080, Some("gw"))),
            ("http://[fd00::1]:3128", ("fd00::1", 3128, None)),
        ];
        for (url, (host, port, user)) in ok {
            let got = parse_proxy(url).unwrap();
            assert_eq!(
                (got.0.as_str(), got.1, got.2.as_deref()),
                (host, port, user),
                "{url}"
            );
        }
        let bad = [
            ("proxy:3128", "has no scheme"),
            ("https://proxy:3128", "https:// proxies are not supported"),
            ("socks5://proxy:1080", "socks5:// proxies are not supported"),
            (
                "http://proxy",
                "has no port; write http://host:port, e.g. http://proxy:3128",
            ),
            ("http://proxy:0", "is not a number in 1..=65535"),
            ("http://proxy:http", "is not a number"),
            ("http://gw:hunter2@proxy:3128", "holds a password"),
            ("http://@proxy:3128", "empty user name"),
            ("http://proxy:3128/path", "has a path"),
            ("http://pro xy:3128", "is not a valid host name"),
        ];
        for (url, want) in bad {
            let got = parse_proxy(url).unwrap_err();
            assert!(got.contains(want), "{url}: {got}");
            assert!(!got.contains("hunter2"), "{got}");
        }
    }

    #[test]
    fn a_proxy_user_needs_a_password_file_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("proxy.pass");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let empty = dir.path().join("empty.pass");
        std::fs::write(&empty, "\n").unwrap();
        let with = |extra: &str| problems(&hub_with(extra));
        let toml = hub_with(&format!(
            "proxy = \"http://gw@proxy:3128\"\nproxy_password_file = {:?}",
            pw.display().to_string()
        ));
        let cfg: FileConfig = parse(&toml).unwrap();
        let cfg = validate(vec![(PathBuf::from("leafgate.toml"), cfg)]).unwrap();
        let proxy = cfg.hub.proxy.unwrap();
        assert_eq!(proxy.password.as_deref(), Some("s3cret"));
        assert_eq!(proxy.address(), "proxy:3128");
        let got = with("proxy = \"http://gw@proxy:3128\"");
        assert!(
            got[0].starts_with("hub.proxy_password_file: missing"),
            "{got:?}"
        );
        let got = with(&format!(
            "proxy = \"http://proxy:3128\"\nproxy_password_file = {:?}",
            pw.display().to_string()
        ));
        assert!(got[0].contains("names a user"), "{got:?}");
        let got = with(&format!(
            "proxy_password_file = {:?}",
            pw.display().to_string()
        ));
        assert!(got[0].contains("applies only with hub.proxy"), "{got:?}");
        let got = with(&format!(
            "proxy = \"http://gw@proxy:3128\"\nproxy_password_file = {:?}",
            empty.display().to_string()
        ));
        assert!(got[0].contains("is empty"), "{got:?}");
        let got =
            with("proxy = \"http://gw@proxy:3128\"\nproxy_password_file = \"/nonexistent/pw\"");
        assert!(got[0].contains("cannot read /nonexistent/pw"), "{got:?}");
        assert_eq!(
            with("websocket_port = 0"),
            ["hub.websocket_port: must not be 0"]
        );
    }
}
