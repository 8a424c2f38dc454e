//! Reading the base file and its `conf.d/*.toml` drop-ins (in name order) with the `config`
//! crate, one file at a time so each problem can name its file. Reads regular files only, opens
//! nothing else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::error::Problem;
use super::schema::FileConfig;
use crate::regular_file::read_limited;

/// Where drop-ins live for a base file: `conf.d/` beside it.
#[must_use]
pub fn drop_in_dir(base: &Path) -> PathBuf {
    base.parent()
        .unwrap_or_else(|| Path::new("."))
        .join("conf.d")
}

/// The base file followed by its drop-ins, sorted by file name.
///
/// Every `*.toml` entry is a drop-in, whatever its type: one that is not a regular file (a FIFO,
/// a device, a directory, a dangling symlink) is refused when read, with its name, rather than
/// silently left out of the config.
///
/// # Errors
/// When the drop-in directory exists but cannot be listed.
pub fn files(base: &Path) -> Result<Vec<PathBuf>, Problem> {
    let mut files = vec![base.to_path_buf()];
    let dir = drop_in_dir(base);
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut drop_ins: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            drop_ins.sort();
            files.extend(drop_ins);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Problem {
                file: dir,
                path: String::new(),
                message: format!("cannot list drop-in directory: {e}"),
            });
        }
    }
    Ok(files)
}

/// Config files larger than this are refused: no real config comes close, and a path that
/// points at an endless device (`/dev/zero`) must not exhaust memory.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// One file as read: its config (`None` when a problem left nothing to validate, such as a
/// syntax error), every problem found in it, in file order, its warnings, and the entries taken
/// out because a key they cannot do without is wrong, as `(section, id)`, and the keys suggested
/// for misspelt ones.
#[derive(Debug, Default)]
pub struct Parsed {
    pub config: Option<FileConfig>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
    pub withdrawn: BTreeSet<(String, String)>,
    /// Key paths a "did you mean" names: that they are missing is no news.
    pub meant: BTreeSet<String>,
}

/// Reads and parses one file against the closed schema, reporting every unknown key and wrong
/// value in it (see [`super::lenient`]).
#[must_use]
pub fn read(path: &Path) -> Parsed {
    let mut parsed = match read_limited(path, MAX_CONFIG_BYTES) {
        Ok(text) => parse_all(&text),
        Err(e) => Parsed {
            problems: vec![Problem {
                file: PathBuf::new(),
                path: String::new(),
                message: format!("cannot read: {e}"),
            }],
            ..Parsed::default()
        },
    };
    for p in parsed.problems.iter_mut().chain(&mut parsed.warnings) {
        p.file = path.to_path_buf();
    }
    parsed
}

/// Parses one file against the closed schema.
///
/// # Errors
/// The file's first problem.
pub fn file(path: &Path) -> Result<FileConfig, Problem> {
    first(read(path))
}

/// Parses TOML text against the closed schema; the problem's `file` is left empty. Tests and
/// benchmarks use it for config snippets.
///
/// # Errors
/// The first problem in the text.
pub fn parse(text: &str) -> Result<FileConfig, Problem> {
    first(parse_all(text))
}

fn first(parsed: Parsed) -> Result<FileConfig, Problem> {
    match (parsed.problems.into_iter().next(), parsed.config) {
        (None, Some(config)) => Ok(config),
        (Some(problem), _) => Err(problem),
        (None, None) => Err(Problem {
            file: PathBuf::new(),
            path: String::new(),
            message: "cannot be read".to_owned(),
        }),
    }
}

/// Parses TOML text with every problem in it, like [`read`]; `file` is left empty.
#[must_use]
pub fn parse_all(text: &str) -> Parsed {
    let problem = |key: String, message: String| Problem {
        file: PathBuf::new(),
        path: key,
        message,
    };
    let failed = |message: String| Parsed {
        problems: vec![problem(String::new(), message)],
        ..Parsed::default()
    };
    let built = match config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
    {
        Ok(built) => built,
        Err(e) => return failed(describe(&e, text)),
    };
    // The same parser the config crate used, keeping what it drops: where each key is, and
    // how each string was quoted.
    let doc = match toml::de::DeTable::parse(text) {
        Ok(doc) => doc.into_inner(),
        Err(e) => return failed(syntax_error(&e.to_string(), text)),
    };
    let root = match config::Source::collect(&built) {
        Ok(table) => config::Value::new(None, config::ValueKind::Table(table)),
        Err(e) => return failed(describe(&e, text)),
    };
    let read = super::lenient::read(&doc, root, |e| describe(e, text));
    Parsed {
        config: read.config,
        problems: (read.problems.into_iter())
            .map(|f| problem(f.path, f.message))
            .collect(),
        warnings: (super::literal::warnings(text, &doc).into_iter())
            .map(|(path, message)| problem(path, message))
            .collect(),
        withdrawn: read.withdrawn,
        meant: read.meant,
    }
}

/// The config crate's messages repeat the key and origin we already print; keep the core.
/// `text` is the file's content, used only to keep it out of the message.
fn describe(error: &config::ConfigError, text: &str) -> String {
    match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => {
            // A string's text may be a key pasted into the wrong place: name its kind only.
            let unexpected = unexpected.to_string();
            let unexpected = if unexpected.starts_with("string ") {
                "a string"
            } else {
                &unexpected
            };
            format!("invalid type: {unexpected}, expected {expected}")
        }
        config::ConfigError::At { error, .. } => describe(error, text),
        // The config crate's key is the whole path run together (`bus[1]kind`).
        config::ConfigError::NotFound(key) => {
            let field = key.rsplit([']', '.']).next().unwrap_or(key);
            format!("missing field `{field}`")
        }
        config::ConfigError::FileParse { cause, .. } => syntax_error(&cause.to_string(), text),
        other => other.to_string(),
    }
}

/// A TOML syntax error as `not valid TOML at line L, column C: message`, without the source.
///
/// toml's `Display` quotes the offending line under a `|` gutter, and that line is often the one
/// holding a device key (`shared_access_key = "...` with its closing quote missing): printed, it
/// would land in the journal and on `leafgate check`'s stderr. The toml crate is not ours to
/// name (it comes through `config`), so the error is only reachable as text: keep the
/// `TOML parse error at ...` position and the message lines, drop the gutter lines, and, in
/// case the layout ever changes, any line that quotes a line of the file.
fn syntax_error(rendered: &str, text: &str) -> String {
    const HEADER: &str = "TOML parse error at ";
    let quoted: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.len() >= 4)
        .collect();
    let mut position = None;
    let mut message = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if let Some(at) = line.strip_prefix(HEADER) {
            position = Some(at);
        } else if !line.is_empty() && !is_gutter(line) && !quoted.iter().any(|q| line.contains(q)) {
            message.push(line);
        }
    }
    let message = if message.is_empty() {
        "syntax error".to_owned()
    } else {
        message.join("; ")
    };
    match position {
        Some(at) => format!("not valid TOML at {at}: {message}"),
        None => format!("not valid TOML: {message}"),
    }
}

/// toml's source excerpt: `  |`, `6 | the line`, `  |     ^`.
fn is_gutter(line: &str) -> bool {
    line.trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start()
        .starts_with('|')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regular_file::tests::mkfifo;

    #[test]
    fn every_toml_entry_in_conf_d_is_a_drop_in_whatever_its_type() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("leafgate.toml");
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).unwrap();
        std::fs::write(conf_d.join("20-b.toml"), "").unwrap();
        mkfifo(&conf_d.join("10-a.toml"));
        std::fs::create_dir(conf_d.join("30-c.toml")).unwrap();
        std::fs::write(conf_d.join("notes.txt"), "").unwrap();
        let names: Vec<PathBuf> = files(&base).unwrap();
        assert_eq!(
            names,
            [
                base.clone(),
                conf_d.join("10-a.toml"),
                conf_d.join("20-b.toml"),
                conf_d.join("30-c.toml")
            ]
        );
        let problem = file(&conf_d.join("10-a.toml")).unwrap_err();
        assert_eq!(
            problem.to_string(),
            format!(
                "{}: cannot read: is a FIFO (named pipe), not a regular file",
                conf_d.join("10-a.toml").display()
            )
        );
    }

    fn all(text: &str) -> Vec<String> {
        parse_all(text)
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    const HUB: &str = "[hub]\nhostname = \"h.azure-devices.net\"\n";
    const KEY: &str = "shared_access_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n";

    #[test]
    fn every_unknown_key_and_wrong_value_is_reported_in_file_order_by_id() {
        let text = format!(
            "colour = 1\n{HUB}[[bus]]\nid = \"rs485\"\nkind = \"modbus_rtu\"\npath = \"/dev/ttyUSB0\"\nbaudrate = 9600\n\
             [[device]]\nid = \"meter-a\"\nbus = \"rs485\"\nunit = \"s3cr3t\"\nraw_method = true\n\
             [[device.method]]\nname = \"get\"\n[[device.method.step]]\nop = \"read\"\ntable = \"input\"\nadress = 1\n"
        );
        let parsed = parse_all(&text);
        assert!(parsed.config.is_some());
        let got = all(&text);
        assert_eq!(
            got,
            [
                "colour: unknown field `colour`, expected one of `hub`, `log`, `telemetry`, `twin`, `c2d`, `provisioning`, `metrics`, `control`, `bus`, `device`, `profile`",
                "bus \"rs485\".baudrate: unknown field `baudrate`; did you mean `baud_rate`?",
                "device \"meter-a\".unit: invalid type: a string, expected an integer",
                "device \"meter-a\".raw_method: unknown field `raw_method`; did you mean `raw_methods`?",
                "device \"meter-a\".method \"get\".step[0].adress: unknown field `adress`; did you mean `address`?",
            ]
        );
        assert!(!format!("{got:?}").contains("s3cr3t"), "{got:?}");
        // The strict entry point gives the first.
        assert_eq!(parse(&text).unwrap_err().path, "colour");
    }

    #[test]
    fn an_entry_without_a_key_it_needs_is_taken_out_and_named() {
        let text = format!(
            "{HUB}[[bus]]\nid = \"plc\"\nkind = \"modbus_tpc\"\n[[bus]]\nid = \"ok\"\nkind = \"modbus_tcp\"\naddress = \"10.0.0.1:502\"\ntimeout_ms = \"x\"\n\
             [[device]]\nid = \"nobus\"\nunit = 1\n[[device]]\nid = \"m\"\nbus = \"ok\"\nunit = 1\n"
        );
        let parsed = parse_all(&text);
        let config = parsed.config.unwrap();
        assert_eq!(
            (config.bus.iter().map(|b| b.id.as_str()).collect::<Vec<_>>()),
            ["ok"]
        );
        assert_eq!(config.device.len(), 1);
        assert_eq!(
            parsed.withdrawn,
            [
                ("bus".to_owned(), "plc".to_owned()),
                ("device".to_owned(), "nobus".to_owned())
            ]
            .into()
        );
        assert_eq!(
            all(&text),
            [
                "bus \"plc\".kind: enum BusKind does not have variant constructor modbus_tpc",
                "bus \"ok\".timeout_ms: invalid type: a string, expected an integer",
                "device \"nobus\": missing field `bus`",
            ]
        );
    }

    #[test]
    fn a_section_of_the_wrong_kind_ends_the_reading_with_what_was_found() {
        let parsed = parse_all(
            "hub = 5\n[provisioning]\nglobal_endpoint = \"x\"\n[[bus]]\nid = \"b\"\nkind = \"serial\"\nbaudrate = 1\n",
        );
        assert!(parsed.config.is_none());
        let got: Vec<String> = (parsed.problems.iter())
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        assert_eq!(
            got,
            [
                "hub: invalid type: integer `5`, expected struct HubConfig",
                "provisioning: missing field `id_scope`",
                "bus \"b\".baudrate: unknown field `baudrate`; did you mean `baud_rate`?",
            ]
        );
    }

    #[test]
    fn problems_and_the_validation_of_the_rest_come_in_one_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leafgate.toml");
        let text = format!(
            "{HUB}[[bus]]\nid = \"rs485\"\nkind = \"modbus_rtu\"\npath = \"/dev/ttyUSB0\"\nbaudrate = 9600\n[[bus]]\nid = \"gone\"\nkind = \"nope\"\n\
             [[device]]\nid = \"meter-a\"\nbus = \"rs458\"\nunit = 1\nraw_methods = true\n{KEY}\
             [[device]]\nid = \"meter-b\"\nbus = \"rs485\"\nunit = 0\nraw_methods = true\nprofile = \"meters\"\n{KEY}\
             [[device]]\nid = \"meter-c\"\nbus = \"gone\"\nunit = 2\nraw_methods = true\n{KEY}\
             [[profile]]\nid = \"meter\"\nmodel_id = \"dtmi:com:example:Meter;1\"\n"
        );
        std::fs::write(&path, text).unwrap();
        let err = crate::config::load(&path).unwrap_err();
        let got: Vec<String> = err
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        assert_eq!(
            got,
            [
                "bus \"rs485\".baudrate: unknown field `baudrate`; did you mean `baud_rate`?",
                "bus \"gone\".kind: enum BusKind does not have variant constructor nope",
                "device \"meter-a\".bus: bus \"rs458\" is not defined (defined: rs485); did you mean \"rs485\"?",
                "device \"meter-b\".unit: 0 is outside 1..=247 (0 is broadcast, which never answers)",
                "device \"meter-b\".profile: profile \"meters\" is not defined; did you mean \"meter\"?",
            ]
        );
    }

    #[test]
    fn toml_excerpts_are_dropped_and_position_and_message_kept() {
        let text = "[hub]\nhostname = \"h\"\nkey = \"s3cr3t-value\n";
        let rendered = "TOML parse error at line 3, column 20\n  |\n3 | key = \"s3cr3t-value\n  |                   ^\ninvalid basic string, expected `\"`\n";
        assert_eq!(
            syntax_error(rendered, text),
            "not valid TOML at line 3, column 20: invalid basic string, expected `\"`"
        );
        // Should the excerpt ever lose its gutter, a line quoting the file is still dropped.
        let rendered = "TOML parse error at line 3, column 20\nkey = \"s3cr3t-value\nbad string";
        assert_eq!(
            syntax_error(rendered, text),
            "not valid TOML at line 3, column 20: bad string"
        );
        assert_eq!(
            syntax_error("expected `=`", ""),
            "not valid TOML: expected `=`"
        );
    }
}
