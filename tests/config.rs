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
