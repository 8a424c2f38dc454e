//! The demo's site config: `config/demo.toml`, embedded in the binary, with the addresses and
//! paths only known once the emulator and the simulated site run filled in. Rendering is pure, so
//! the template is tested to load like any site config without starting anything.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// The demo config template (`config/demo.toml`), with `@PLACEHOLDER@`s for what is only known
/// at run time; see [`render`].
pub const CONFIG_TEMPLATE: &str = include_str!("../../../config/demo.toml");

/// Run-time values for the template's placeholders.
#[derive(Debug, Clone)]
pub struct Placeholders<'a> {
    /// `@HUB_PORT@`
    pub hub_port: u16,
    /// `@CA_FILE@`
    pub ca_file: &'a Path,
    /// `@PLC_ADDRESS@`
    pub plc_address: SocketAddr,
    /// `@RTU_PATH@`
    pub rtu_path: &'a Path,
    /// `@PSU_PATH@`
    pub psu_path: &'a Path,
    /// `@STORE@`
    pub store: &'a Path,
    /// `@WS_PORT@`
    pub ws_port: u16,
    /// `@DPS_PORT@`
    pub dps_port: u16,
    /// `@ID_SCOPE@`
    pub id_scope: &'a str,
    /// `@GROUP_KEY@`
    pub group_key: &'a str,
}

/// Substitutes every placeholder in `template` outside comment lines (the header comment that
/// explains them stays readable in the rendered file). Paths go into TOML basic strings, so
/// they are escaped. Pure: no I/O.
#[must_use]
pub fn render(template: &str, values: &Placeholders<'_>) -> String {
    let path = |p: &Path| toml_escape(&p.display().to_string());
    let substitutions = [
        ("@HUB_PORT@", values.hub_port.to_string()),
        ("@CA_FILE@", path(values.ca_file)),
        ("@PLC_ADDRESS@", values.plc_address.to_string()),
        ("@RTU_PATH@", path(values.rtu_path)),
        ("@PSU_PATH@", path(values.psu_path)),
        ("@STORE@", path(values.store)),
        ("@WS_PORT@", values.ws_port.to_string()),
        ("@DPS_PORT@", values.dps_port.to_string()),
        ("@ID_SCOPE@", toml_escape(values.id_scope)),
        ("@GROUP_KEY@", toml_escape(values.group_key)),
    ];
    let mut out = String::with_capacity(template.len());
    for line in template.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut line = line.to_owned();
        for (placeholder, value) in &substitutions {
            line = line.replace(placeholder, value);
        }
        out.push_str(&line);
    }
    out
}

/// Escapes text for the inside of a TOML basic string (`"..."`).
fn toml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use leafgate::config;

    use super::*;
    use crate::script::script;

    fn sample<'a>(dir: &'a Path, ca: &'a Path) -> Placeholders<'a> {
        Placeholders {
            hub_port: 18883,
            ca_file: ca,
            plc_address: "127.0.0.1:1502".parse().unwrap(),
            rtu_path: dir,
            psu_path: Path::new("/dev/pts/7"),
            store: Path::new("/tmp/demo/telemetry.db"),
            ws_port: 18443,
            dps_port: 18884,
            id_scope: "0ne0DEMO001",
            group_key: "ZGVtby1vbmx5IGdyb3VwIGtleTsgcHVibGljIGtleSE=",
        }
    }

    #[test]
    fn rendering_leaves_no_placeholder_and_escapes_paths() {
        let ca = Path::new("/tmp/odd \"dir\"\\ca.pem");
        let text = render(CONFIG_TEMPLATE, &sample(Path::new("/dev/pts/3"), ca));
        let left = regex::Regex::new("@[A-Z_]+@").unwrap();
        // Only the header comment may still name placeholders.
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            assert!(!left.is_match(line), "{line}");
        }
        assert!(
            text.contains("#   @HUB_PORT@ "),
            "the header comment is left as it is"
        );
        assert!(text.contains("port = 18883\n"));
        assert!(text.contains(r#"ca_file = "/tmp/odd \"dir\"\\ca.pem""#));
        assert!(text.contains(r#"address = "127.0.0.1:1502""#));
        assert!(text.contains(r#"path = "/dev/pts/3""#));
        assert!(text.contains(r#"path = "/dev/pts/7""#));
        assert!(text.contains("websocket_port = 18443\n"));
        assert!(text.contains("port = 18884\n"));
        assert!(text.contains(r#"id_scope = "0ne0DEMO001""#));
    }

    #[test]
    fn the_rendered_template_loads_with_four_devices_and_their_methods() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        // `config::load` parses ca_file (a bad one is a config problem), so it must be real.
        let ca_pem = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap()
            .cert
            .pem();
        std::fs::write(&ca, ca_pem).unwrap();
        let path = dir.path().join("leafgate.toml");
        std::fs::write(&path, render(CONFIG_TEMPLATE, &sample(dir.path(), &ca))).unwrap();
        let cfg = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let methods: Vec<(&str, Vec<&str>)> = cfg
            .devices
            .iter()
            .map(|d| {
                (
                    d.id.as_str(),
                    d.methods.keys().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            methods,
            [
                ("plc-1", vec!["getStatus", "setSpeed"]),
                ("meter-1", vec!["getReadings"]),
                ("meter-2", vec!["getReadings"]),
                (
                    "psu-1",
                    vec!["identify", "measure", "outputOn", "setVoltage"]
                ),
            ]
        );
        // Every scripted call except the deliberate unknown method exists.
        for call in script() {
            let device = cfg.devices.iter().find(|d| d.id == call.device).unwrap();
            assert_eq!(
                device.methods.contains_key(call.method),
                call.status != 501,
                "{} {}",
                call.device,
                call.method
            );
        }
    }
}
