//! `leafgate model PROFILE`, the real binary, with its output checked by Microsoft's DTDL parser
//! for JavaScript (`@azure/dtdl-parser`, pinned in `tests/model/package-lock.json`) through
//! `tests/model/validate.js`.
//!
//! The parser is installed with `npm ci` in `tests/model/` (`.ci/run` does it before
//! `cargo test`; the first test that needs it here does it when `node_modules` is missing or
//! older than the lock file, which needs the npm registry once). Without node or npm the tests
//! fail with the reason; they never skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_leafgate");
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A Modbus TCP site: pumps on a profile with every kind of entry, meters on a profile without a
/// model id, and valves on a profile whose method names DTDL does not take.
const SITE: &str = r#"
[hub]
hostname = "myhub.azure-devices.net"

[twin]

[[bus]]
id = "plc"
kind = "modbus_tcp"
address = "127.0.0.1:502"

[[profile]]
id = "pump"
model_id = "dtmi:com:example:leafgate:Pump;1"

[profile.reported]
location = "Hall 3"
ratedPowerKw = 7.5
poles = 4
explosionProof = false

[[profile.method]]
name = "getStatus"
timeout_ms = 2000
[[profile.method.step]]
op = "read"
table = "input"
address = 0
fields = [
  { name = "speed", type = "u16", scale = 0.1, unit = "revolutionPerMinute" },
  { name = "temperature", type = "i16", scale = 0.1, offset = -40, decimals = 1, unit = "degreeCelsius" },
  { name = "power", type = "f32", unit = "kilowatt" },
  { name = "energy", type = "u32", scale = 0.01, decimals = 2, unit = "kilowattHour" },
  { name = "runHours", type = "u32" },
  { name = "running", type = "bit", bit = 0 },
  { name = "model", type = "string", length = 4 },
]

[[profile.method]]
name = "setSpeed"
timeout_ms = 3000
[[profile.method.step]]
op = "write"
table = "holding"
address = 100
fields = [
  { name = "speed", type = "f32", min = 0, max = 1500, unit = "revolutionPerMinute" },
  { name = "rampSeconds", type = "u16", default = 5, min = 1, max = 60 },
  { type = "u16", value = 1 },
]
[[profile.method.step]]
op = "read"
table = "holding"
address = 100
fields = [{ name = "speed", type = "f32" }]

[[profile.method]]
name = "start"
[[profile.method.step]]
op = "write"
table = "coil"
address = 0
fields = [{ type = "bool", value = true }]

[[profile.telemetry]]
name = "process"
interval_ms = 1000
[[profile.telemetry.step]]
op = "read"
table = "input"
address = 0
fields = [
  { name = "motorSpeed", type = "u16", scale = 0.1, unit = "revolutionPerMinute" },
  { name = "motorTemperature", type = "i16", scale = 0.1, offset = -40, unit = "degreeCelsius" },
  { name = "outletPressure", type = "f32", address = 4, unit = "bar" },
  { name = "current", type = "f32", unit = "ampere" },
  { name = "voltage", type = "f32", unit = "volt" },
  { name = "frequency", type = "u16", scale = 0.01, unit = "hertz" },
]

[[profile.telemetry]]
name = "counters"
interval_ms = 60000
on_change = true
[[profile.telemetry.step]]
op = "read"
table = "input"
address = 20
fields = [
  { name = "startCount", type = "u32" },
  { name = "faulted", type = "bit", bit = 2, address = 22 },
  { name = "valveOpening", type = "u16", scale = 0.1, unit = "percent", deadband = 1.0 },
]

[[profile.property]]
name = "identity"
[[profile.property.step]]
op = "read"
table = "input"
address = 50
fields = [
  { name = "serialNumber", type = "string", length = 8 },
  { name = "firmwareVersion", type = "u16" },
  { name = "ratedVoltage", type = "u16", unit = "volt" },
]

[[profile.desired]]
name = "speedSetpoint"
[[profile.desired.step]]
op = "write"
table = "holding"
address = 10
fields = [{ name = "speedSetpoint", type = "u16", max = 3000, unit = "revolutionPerMinute" }]

[[profile.desired]]
name = "alarmLimits"
[[profile.desired.step]]
op = "write"
table = "holding"
address = 20
fields = [
  { name = "lowPressure", type = "i16", scale = 0.01, unit = "bar" },
  { name = "highTemperature", type = "i16", min = 0, max = 120, unit = "degreeCelsius" },
]

[[profile]]
id = "meter"
[[profile.telemetry]]
name = "power"
interval_ms = 10000
[[profile.telemetry.step]]
op = "read"
table = "input"
address = 0
fields = [{ name = "activePower", type = "f32", unit = "watt" }]

[[profile]]
id = "valve"
model_id = "dtmi:com:example:leafgate:Valve;1"
[[profile.method]]
name = "valve.open"
[[profile.method.step]]
op = "write"
table = "coil"
address = 0
fields = [{ type = "bool", value = true }]
[[profile.method]]
name = "set-position"
[[profile.method.step]]
op = "write"
table = "holding"
address = 0
fields = [{ name = "position", type = "u16", max = 100, unit = "percent" }]
[[profile.method]]
name = "close"
[[profile.method.step]]
op = "write"
table = "coil"
address = 0
fields = [{ type = "bool", value = false }]

[[device]]
id = "pump-01"
shared_access_key = "KEY"
bus = "plc"
unit = 1
profile = "pump"

[[device]]
id = "pump-02"
shared_access_key = "KEY"
bus = "plc"
unit = 2
profile = "pump"

[[device]]
id = "meter-01"
shared_access_key = "KEY"
bus = "plc"
unit = 3
profile = "meter"

[[device]]
id = "valve-01"
shared_access_key = "KEY"
bus = "plc"
unit = 4
profile = "valve"
"#;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/model")
}

/// `tests/model/validate.js`, once `npm ci` has installed the pinned parser beside it (once per
/// test process, and only when `node_modules` is missing or older than the lock file).
fn validator() -> &'static Path {
    static SCRIPT: OnceLock<PathBuf> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        let dir = model_dir();
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let installed = modified(&dir.join("node_modules/.package-lock.json"));
        let locked = modified(&dir.join("package-lock.json"));
        let parser = dir.join("node_modules/@azure/dtdl-parser/package.json");
        if !parser.exists() || installed.is_none() || installed < locked {
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("npm must be installed to fetch the DTDL parser (see .ci/run)");
            assert!(
                out.status.success(),
                "npm ci in {} failed (the npm registry must be reachable the first time):\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir.join("validate.js")
    })
}

/// Microsoft's DTDL parser on `models`, parsed together.
fn validate(models: &[&Path]) -> Output {
    Command::new("node")
        .arg(validator())
        .args(models)
        .stdin(Stdio::null())
        .output()
        .expect("node must be installed to run the DTDL parser")
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new(config: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("leafgate.toml"), config.replace("KEY", KEY)).unwrap();
        Site { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("leafgate.toml")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `leafgate model -c CONFIG ARGS...`
    fn model(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("model")
            .arg("-c")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn contents(model: &Value) -> &Vec<Value> {
    model["contents"].as_array().unwrap()
}

fn named<'a>(model: &'a Value, name: &str) -> &'a Value {
    contents(model)
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no content {name:?} in {model:#}"))
}

#[test]
fn the_model_of_a_modbus_profile_passes_microsofts_dtdl_parser() {
    let site = Site::new(SITE);
    let file = site.path("pump.json");
    let out = site.model(&["pump", "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "no warnings expected");
    assert_eq!(text(&out.stdout), "", "the model goes to the file");

    let checked = validate(&[&file]);
    assert!(
        checked.status.success(),
        "the DTDL parser refused the model:\n{}\n{}",
        text(&checked.stderr),
        std::fs::read_to_string(&file).unwrap()
    );
    assert_eq!(
        text(&checked.stdout).trim(),
        "ok dtmi:com:example:leafgate:Pump;1: 23 contents"
    );

    // What it says, beyond being valid: the same model on stdout, and the entries as mapped.
    let stdout = site.model(&["pump"]);
    assert!(stdout.status.success(), "{}", text(&stdout.stderr));
    assert_eq!(
        text(&stdout.stdout),
        std::fs::read_to_string(&file).unwrap()
    );
    let model: Value = serde_json::from_slice(&stdout.stdout).unwrap();
    assert_eq!(model["@id"], "dtmi:com:example:leafgate:Pump;1");
    let kinds = |kind: &str| {
        contents(&model)
            .iter()
            .filter(|c| c["@type"] == kind || c["@type"][0] == kind)
            .count()
    };
    // leafgate, 4 reported, 3 read from the hardware, 2 desired; ts and 9 fields; 3 methods.
    assert_eq!(
        (kinds("Property"), kinds("Telemetry"), kinds("Command")),
        (10, 10, 3)
    );
    assert_eq!(
        named(&model, "leafgate")["schema"]["fields"][6]["name"],
        "methods"
    );
    assert_eq!(named(&model, "motorTemperature")["@type"][1], "Temperature");
    assert_eq!(named(&model, "motorTemperature")["schema"], "double");
    assert_eq!(named(&model, "startCount")["schema"], "long");
    assert_eq!(named(&model, "faulted")["schema"], "boolean");
    assert_eq!(named(&model, "valveOpening")["unit"], "percent");
    assert_eq!(named(&model, "speedSetpoint")["writable"], true);
    assert_eq!(named(&model, "alarmLimits")["schema"]["@type"], "Object");
    assert_eq!(named(&model, "firmwareVersion")["schema"], "integer");
    assert_eq!(named(&model, "start").get("request"), None);
    assert_eq!(named(&model, "start").get("response"), None);
    assert_eq!(
        named(&model, "setSpeed")["request"]["schema"]["fields"][1],
        serde_json::json!({"name": "rampSeconds", "schema": "integer", "description": "from 1 to 60"})
    );
}

#[test]
fn the_validator_refuses_a_broken_model() {
    let site = Site::new(SITE);
    let out = site.model(&["pump"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let model: Value = serde_json::from_slice(&out.stdout).unwrap();
    let broken = site.path("broken.json");
    // The parser's messages for `model` with `break_it` applied to the content `name`.
    let refused = |name: &str, break_it: &dyn Fn(&mut Value)| {
        let mut model = model.clone();
        let items = model["contents"].as_array_mut().unwrap();
        break_it(items.iter_mut().find(|c| c["name"] == name).unwrap());
        std::fs::write(&broken, serde_json::to_vec_pretty(&model).unwrap()).unwrap();
        let checked = validate(&[&broken]);
        assert_eq!(checked.status.code(), Some(1), "{}", text(&checked.stdout));
        text(&checked.stderr)
    };
    let stderr = refused("startCount", &|c| c["name"] = "start-count".into());
    assert!(stderr.starts_with("refused: 1 error(s)"), "{stderr}");
    assert!(
        stderr.contains("'start-count', which is invalid"),
        "{stderr}"
    );
    let stderr = refused("motorTemperature", &|c| c["unit"] = "volt".into());
    assert!(
        stderr.contains("does not have @type of TemperatureUnit"),
        "{stderr}"
    );
    std::fs::write(&broken, b"{\"@context\": ").unwrap();
    assert_eq!(validate(&[&broken]).status.code(), Some(1));
}

#[test]
fn an_unknown_profile_is_named_with_the_defined_ones() {
    let site = Site::new(SITE);
    let out = site.model(&["pumps"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "leafgate model: profile \"pumps\": not defined (defined: \"pump\", \"meter\", \"valve\")\n"
    );
}

#[test]
fn a_profile_without_a_model_id_needs_one_from_the_command_line() {
    let site = Site::new(SITE);
    let out = site.model(&["meter"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("leafgate model: profile \"meter\": no model_id: set model_id = "),
        "{stderr}"
    );

    let bad = site.model(&["meter", "--id", "meter-model"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("--id: \"meter-model\" is not a DTMI"),
        "{}",
        text(&bad.stderr)
    );

    let file = site.path("meter.json");
    let out = site.model(&[
        "meter",
        "--id",
        "dtmi:com:example:leafgate:Meter;2",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let checked = validate(&[&file]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let model: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(model["@id"], "dtmi:com:example:leafgate:Meter;2");
    assert_eq!(named(&model, "activePower")["@type"][1], "Power");
}

#[test]
fn methods_dtdl_cannot_name_are_left_out_with_a_warning_and_the_model_still_validates() {
    let site = Site::new(SITE);
    let file = site.path("valve.json");
    let out = site.model(&["valve", "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let warnings: Vec<String> = text(&out.stderr).lines().map(str::to_owned).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("warning: method \"valve.open\" is left out: a DTDL name is"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("warning: method \"set-position\" is left out"),
        "{warnings:?}"
    );
    let checked = validate(&[&file]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let model: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let names: Vec<&str> = contents(&model)
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["leafgate", "close"]);
}

#[test]
fn a_broken_config_gives_checks_problems_and_exit_78() {
    let site = Site::new(&SITE.replacen("unit = \"bar\" }", "unit = \"bars\" }", 1));
    let out = site.model(&["pump"]);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    let check = Command::new(BIN)
        .args(["check", "-c"])
        .arg(site.config())
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(78));
    let first = text(&check.stderr).lines().next().unwrap().to_owned();
    assert!(
        first.contains("unit: \"bars\" is not a DTDL v2 unit (known: "),
        "{first}"
    );
    assert!(stderr.starts_with(&format!("{first}\n")), "{stderr}");
    assert!(
        stderr.ends_with("1 config problem(s); no model written\n"),
        "{stderr}"
    );
}

/// Every unit `unit = "..."` takes, as a Telemetry with its semantic type: the table in
/// `mapping::schema` against the parser's own.
#[test]
fn every_unit_leafgate_takes_passes_the_parser_with_its_semantic_type() {
    use std::fmt::Write as _;

    let units: Vec<&str> = leafgate::mapping::schema::UNITS
        .iter()
        .flat_map(|(_, names)| names.split_whitespace())
        .collect();
    let mut config = String::from(
        "[hub]\nhostname = \"h.azure-devices.net\"\n[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:502\"\n[[profile]]\nid = \"units\"\nmodel_id = \"dtmi:com:example:leafgate:Units;1\"\n",
    );
    // 100 registers per group keeps each group's reads within one request.
    for (g, chunk) in units.chunks(100).enumerate() {
        write!(
            config,
            "[[profile.telemetry]]\nname = \"g{g}\"\ninterval_ms = 1000\n[[profile.telemetry.step]]\nop = \"read\"\ntable = \"input\"\naddress = 0\nfields = [\n"
        )
        .unwrap();
        for unit in chunk {
            writeln!(
                config,
                "  {{ name = \"in_{unit}\", type = \"u16\", unit = \"{unit}\" }},"
            )
            .unwrap();
        }
        config.push_str("]\n");
    }
    config.push_str(
        "[[device]]\nid = \"d\"\nshared_access_key = \"KEY\"\nbus = \"plc\"\nunit = 1\nprofile = \"units\"\n",
    );
    let site = Site::new(&config);
    let file = site.path("units.json");
    let out = site.model(&["units", "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let checked = validate(&[&file]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert_eq!(
        text(&checked.stdout).trim(),
        format!(
            "ok dtmi:com:example:leafgate:Units;1: {} contents",
            units.len() + 1
        )
    );
}

#[test]
fn the_shipped_samples_profile_passes_the_parser() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/leafgate.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("energy-meter.json");
    let out = Command::new(BIN)
        .args([
            "model",
            "energy-meter",
            "--id",
            "dtmi:com:example:EnergyMeter;1",
            "-c",
        ])
        .arg(&sample)
        .arg("-o")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // meter-b adds a method of its own.
    assert_eq!(
        text(&out.stderr),
        "warning: device \"meter-b\" adds its own methods to the profile's: they are not in this model\n"
    );
    let checked = validate(&[&file]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let model: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(named(&model, "voltage")["unit"], "volt");
    assert_eq!(named(&model, "getReadings")["@type"], "Command");
}
