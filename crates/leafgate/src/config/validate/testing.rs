//! What the validation tests share: a minimal valid `[hub]`, and validating one file's text into
//! the problems it has.

use std::path::PathBuf;

use super::validate;
use crate::config::load::parse;
use crate::config::schema::FileConfig;

pub(super) const HUB: &str = "[hub]\nhostname = \"h.azure-devices.net\"\n";

/// Validates one file's text; the problems as `path: message` lines.
pub(super) fn problems(toml: &str) -> Vec<String> {
    let cfg: FileConfig = parse(toml).unwrap();
    match validate(vec![(PathBuf::from("leafgate.toml"), cfg)]) {
        Ok(_) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect(),
    }
}
