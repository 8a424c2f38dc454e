use std::path::Path;

/// Every folder under tests/fixtures/config/ holds a `leafgate.toml` (plus optional `conf.d/`)
/// and `expected.txt`: the exact problems `leafgate check` must report, file paths relative to
/// the folder. A case with an empty expected.txt must load.
#[test]
fn config_cases_report_exactly_their_expected_problems() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let mut cases = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        cases += 1;
        let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
        let got = match leafgate::config::load(&dir.join("leafgate.toml")) {
            Ok(_) => String::new(),
            Err(e) => e
                .problems
                .iter()
                .map(|p| format!("{p}\n").replace(&format!("{}/", dir.display()), ""))
                .collect(),
        };
        assert_eq!(got, expected, "case {}", dir.display());
    }
    assert!(cases >= 5, "only {cases} config cases found");
}

#[test]
fn shipped_sample_config_loads_and_documents_every_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sample = root.join("config/leafgate.toml");
    let cfg = leafgate::config::load(&sample).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.buses.len(), 3);
    assert_eq!(cfg.devices.len(), 4);
    // The profile's method reaches both meters; a device's own method is added to it.
    let meter_b = cfg.devices.iter().find(|d| d.id == "meter-b").unwrap();
    assert_eq!(
        meter_b.methods.keys().collect::<Vec<_>>(),
        ["getReadings", "resetEnergy"]
    );
    // Every key of the schema appears in the sample (as a key or in a comment) and in the README.
    let text = std::fs::read_to_string(&sample).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let keys = [
        "hostname",
        "gateway_hostname",
        "ca_file",
        "port",
        "keep_alive_s",
        "sas_ttl_s",
        "max_connects_per_s",
        "max_payload_bytes",
        "connect_timeout_s",
        "reconnect_min_ms",
        "reconnect_max_ms",
        "level",
        "listen",
        "socket",
        "kind",
        "address",
        "framing",
        "path",
        "baud_rate",
        "parity",
        "data_bits",
        "stop_bits",
        "frame_gap_us",
        "line_ending",
        "terminator",
        "reply_length",
        "idle_gap_ms",
        "timeout_ms",
        "queue_capacity",
        "retries",
        "down_after",
        "down_for_ms",
        "connection_string",
        "shared_access_key",
        "shared_access_key_file",
        "bus",
        "unit",
        "profile",
        "raw_methods",
        "raw_methods_timeout_ms",
        "name",
        "op",
        "table",
        "fields",
        "request",
        "request_hex",
        "params",
        "expect",
        "reply",
        "type",
        "bit",
        "length",
        "word_order",
        "byte_order",
        "scale",
        "offset",
        "decimals",
        "min",
        "max",
        "default",
        "value",
    ];
    for key in keys {
        assert!(
            text.contains(key),
            "config/leafgate.toml does not mention `{key}`"
        );
        assert!(
            readme.contains(&format!("`{key}`")),
            "README.md does not document `{key}`"
        );
    }
}

/// toml's own error text quotes the broken line; when that line holds a device key, the key must
/// not reach the journal or `leafgate check` output (the line and column are enough to find it).
#[test]
fn a_toml_syntax_error_on_a_key_line_never_prints_the_key() {
    let key = "c2VjcmV0LWtleS1tYXRlcmlhbC1kby1ub3QtcHJpbnQ=";
    let lines = [
        format!("shared_access_key = \"{key}"),
        format!(
            "connection_string = \"HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey={key}"
        ),
        format!("shared_access_key = '{key}"),
        format!(
            "connection_string = \"\"\"HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey={key}"
        ),
    ];
    for line in lines {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leafgate.toml");
        let text = format!(
            "[hub]\nhostname = \"h.azure-devices.net\"\n\n[[device]]\nid = \"d\"\n{line}\nbus = \"b\"\nunit = 1\n"
        );
        std::fs::write(&path, text).unwrap();
        let err = leafgate::config::load(&path).unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.problems.len(), 1, "{shown}");
        let problem = &err.problems[0];
        assert!(
            problem.message.starts_with("not valid TOML at line "),
            "{shown}"
        );
        assert!(!shown.contains(key), "{line}: the key is printed: {shown}");
        assert!(!shown.contains("SharedAccessKey"), "{line}: {shown}");
        assert!(!format!("{err:?}").contains(key), "{line}: {err:?}");
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_leafgate");
/// A device key in the configs below: it must never be printed.
const KEY: &str = "c2VjcmV0LWtleS1tYXRlcmlhbC1kby1ub3QtcHJpbnQ=";

/// `leafgate check -c FILE` on `text`: the file, the exit code and stderr.
fn check(text: &str) -> (tempfile::TempDir, std::path::PathBuf, Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leafgate.toml");
    std::fs::write(&path, text).unwrap();
    // Readable by its owner only: a config holding keys readable by all is a warning.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (dir, path, out.status.code(), stderr)
}

/// A misspelt key no longer hides the rest: unknown keys (with the key meant), a reference to a
/// bus that does not exist (with the one meant) and a value out of range come in one run, each
/// naming its entry by id.
#[test]
fn check_reports_unknown_keys_and_the_rest_in_one_run_naming_entries_by_id() {
    let text = format!(
        r#"[hub]
hostname = "h.azure-devices.net"

[[bus]]
id = "rs485"
kind = "modbus_rtu"
path = "/dev/ttyUSB0"
baudrate = 19200

[[device]]
id = "meter-a"
shared_access_key = "{KEY}"
bus = "rs458"
unit = 1
raw_methods = true

[[device]]
id = "meter-b"
shared_access_key = "{KEY}"
bus = "rs485"
unit = 0
raw_methods = true
modle_id = "dtmi:com:example:Meter;1"
"#
    );
    let (_dir, path, code, stderr) = check(&text);
    let file = path.display();
    let expected = [
        format!(
            "{file}: bus \"rs485\".baudrate: unknown field `baudrate`; did you mean `baud_rate`?"
        ),
        format!(
            "{file}: device \"meter-b\".modle_id: unknown field `modle_id`; did you mean `model_id`?"
        ),
        format!(
            "{file}: device \"meter-a\".bus: bus \"rs458\" is not defined (defined: rs485); did you mean \"rs485\"?"
        ),
        format!(
            "{file}: device \"meter-b\".unit: 0 is outside 1..=247 (0 is broadcast, which never answers)"
        ),
    ];
    assert_eq!(stderr.lines().collect::<Vec<_>>(), expected, "{stderr}");
    assert_eq!(code, Some(78), "{stderr}");
    assert!(!stderr.contains(KEY), "{stderr}");
}

/// `'READ?\r\n'` sends a backslash and an r: `check` says so, and still passes the config;
/// the same request in double quotes sends CR LF and is not mentioned.
#[test]
fn check_warns_of_a_literal_string_request_holding_escapes_and_still_passes() {
    let config = |request: &str| {
        format!(
            r#"[hub]
hostname = "h.azure-devices.net"

[[bus]]
id = "psu-line"
kind = "serial"
path = "/dev/ttyS9"
terminator = "\r\n"

[[device]]
id = "psu"
shared_access_key = "{KEY}"
bus = "psu-line"

[[device.method]]
name = "volts"
[[device.method.step]]
op = "send"
request = {request}
expect = '^(?P<volts>\d+\.\d+)$'
"#
        )
    };
    let (_dir, path, code, stderr) = check(&config(r"'READ?\r\n'"));
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [format!(
            "warning: {}: device \"psu\".method \"volts\".step[0].request: `\\r`, `\\n` in a single-quoted (literal) string are sent as written, as two characters each; write the value in double quotes (\"...\") to send the characters they stand for",
            path.display()
        )],
        "{stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");

    let (_dir, _, code, stderr) = check(&config(r#""READ?\r\n""#));
    assert_eq!(stderr, "", "{stderr}");
    assert_eq!(code, Some(0));
}
