//! Reading the base file and its `conf.d/*.toml` drop-ins (in name order) with the `config`
//! crate, one file at a time so each problem can name its file. Reads regular files only, opens
//! nothing else.

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

/// Parses one file against the closed schema.
///
/// # Errors
/// The file's problem with the key path where deserialization stopped.
pub fn file(path: &Path) -> Result<FileConfig, Problem> {
    let text = read_limited(path, MAX_CONFIG_BYTES).map_err(|e| Problem {
        file: path.to_path_buf(),
        path: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&text).map_err(|p| Problem {
        file: path.to_path_buf(),
        ..p
    })
}

/// Parses TOML text against the closed schema; the problem's `file` is left empty. Tests and
/// benchmarks use it for config snippets.
///
/// # Errors
/// The problem with the key path where deserialization stopped.
pub fn parse(text: &str) -> Result<FileConfig, Problem> {
    let problem = |key: String, message: String| Problem {
        file: PathBuf::new(),
        path: key,
        message,
    };
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .map_err(|e| problem(String::new(), describe(&e, text)))?;
    serde_path_to_error::deserialize::<_, FileConfig>(built).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        problem(key, describe(e.inner(), text))
    })
}

/// The config crate's messages repeat the key and origin we already print; keep the core.
/// `text` is the file's content, used only to keep it out of the message.
fn describe(error: &config::ConfigError, text: &str) -> String {
    match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("invalid type: {unexpected}, expected {expected}"),
        config::ConfigError::At { error, .. } => describe(error, text),
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
