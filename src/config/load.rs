//! Reading the base file and its `conf.d/*.toml` drop-ins (in name order) with the `config`
//! crate, one file at a time so each problem can name its file. Reads files, opens nothing else.

use std::path::{Path, PathBuf};

use super::error::Problem;
use super::schema::FileConfig;

/// Where drop-ins live for a base file: `conf.d/` beside it.
#[must_use]
pub fn drop_in_dir(base: &Path) -> PathBuf {
    base.parent()
        .unwrap_or_else(|| Path::new("."))
        .join("conf.d")
}

/// The base file followed by its drop-ins, sorted by file name.
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
                .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
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

/// Parses one file against the closed schema.
///
/// # Errors
/// The file's problem with the key path where deserialization stopped.
pub fn file(path: &Path) -> Result<FileConfig, Problem> {
    let problem = |key: String, message: String| Problem {
        file: path.to_path_buf(),
        path: key,
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| problem(String::new(), format!("cannot read: {e}")))?;
    let built = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .map_err(|e| problem(String::new(), describe(&e)))?;
    serde_path_to_error::deserialize::<_, FileConfig>(built).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        problem(key, describe(e.inner()))
    })
}

/// The config crate's messages repeat the key and origin we already print; keep the core.
fn describe(error: &config::ConfigError) -> String {
    match error {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("invalid type: {unexpected}, expected {expected}"),
        config::ConfigError::At { error, .. } => describe(error),
        config::ConfigError::FileParse { cause, .. } => format!("not valid TOML: {cause}"),
        other => other.to_string(),
    }
}
