//! `leafgate model PROFILE`: the IoT Plug and Play model of a profile's devices, as a DTDL v2
//! interface that IoT Hub, Azure IoT Explorer and IoT Central can resolve from the model id
//! the devices announce.
//!
//! The config is loaded and validated first, as `leafgate check` does, so a broken config gives
//! the same problems. The profile's entries are then compiled for the bus kind of the first
//! device that uses it (the compiled types do not depend on which Modbus kind; a profile with
//! serial steps can only be used on serial buses), or, when no device uses it yet, for the kind
//! its steps imply (serial if any step is `send`, else Modbus TCP). The interface describes the
//! profile only: what a device adds or replaces is not in it, and a warning names such devices.
//!
//! A shared module beside `config`: it imports `config` and `mapping`, nothing that runs.
//! [`interface`] does the describing and is pure.

pub mod dtdl;
pub mod interface;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config;
use crate::config::path::entry;
use crate::config::schema::{BusKind, FileConfig, ProfileConfig, StepConfig, StepOp};

/// A profile's interface, and what it had to leave out or could not say.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub json: Value,
    /// The bus kind its entries were compiled for.
    pub kind: BusKind,
    pub warnings: Vec<String>,
}

impl Model {
    /// The interface as indented JSON, with a final newline.
    #[must_use]
    pub fn to_pretty(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.json).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Why no model can be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config does not load or validate (the same problems `leafgate check` lists).
    #[error("{0}")]
    Config(config::Error),
    #[error("not defined (defined: {defined})")]
    UnknownProfile { id: String, defined: String },
    #[error(
        "no model_id: set model_id = \"dtmi:...;1\" in the [[profile]] section (the model id its devices announce), or give one with --id"
    )]
    NoModelId(String),
    /// `at`: `--id`, or the file and key of the profile's `model_id`.
    #[error("{at}: {why}")]
    BadId { at: String, why: String },
    /// Only when no device uses the profile: `check` compiles a profile for its devices only.
    #[error("does not compile for a {} bus", kind.name())]
    Compile {
        kind: BusKind,
        problems: Vec<config::Problem>,
    },
    #[error("{at}: unit {unit:?} applies to numbers, and this field is a {data_type}")]
    UnitNotNumeric {
        at: String,
        unit: &'static str,
        data_type: &'static str,
    },
    #[error(
        "the interface would hold {contents} contents, and DTDL v2 allows {}; split the profile",
        dtdl::MAX_CONTENTS
    )]
    TooLarge { contents: usize },
}

impl Error {
    /// The config problems behind the error, each naming its file and key, if it has any.
    #[must_use]
    pub fn problems(&self) -> &[config::Problem] {
        match self {
            Error::Config(e) => &e.problems,
            Error::Compile { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// The model of profile `profile` in the config at `path` (and its drop-ins), with id `id` or,
/// without one, the profile's `model_id`.
///
/// # Errors
/// The config's problems; an unknown profile; no id; an id that is not a DTMI; a profile that
/// does not compile (used by no device); a unit on a field that is not a number; more contents
/// than DTDL allows.
pub fn for_profile(path: &Path, profile: &str, id: Option<&str>) -> Result<Model, Error> {
    let cfg = config::load(path).map_err(Error::Config)?;
    // The validated config keeps no profiles (devices hold their compiled entries): read the
    // files it was made of again, as written.
    let mut files: Vec<(PathBuf, FileConfig)> = Vec::new();
    for file in &cfg.files {
        let parsed = config::load::file(file)
            .map_err(|p| Error::Config(config::Error { problems: vec![p] }))?;
        files.push((file.clone(), parsed));
    }
    let Some((file, at, def)) = find(&files, profile) else {
        let defined: Vec<String> = (files.iter())
            .flat_map(|(_, f)| f.profile.iter().map(|p| format!("{:?}", p.id)))
            .collect();
        let defined = if defined.is_empty() {
            "none".to_owned()
        } else {
            defined.join(", ")
        };
        return Err(Error::UnknownProfile {
            id: profile.to_owned(),
            defined,
        });
    };
    let id = match (id, &def.model_id) {
        (Some(id), _) => {
            config::validate::dtmi(id).map_err(|why| Error::BadId {
                at: "--id".to_owned(),
                why,
            })?;
            id
        }
        (None, Some(id)) => {
            let at = format!("{}: {at}.model_id", file.display());
            config::validate::dtmi(id).map_err(|why| Error::BadId { at, why })?;
            id
        }
        (None, None) => return Err(Error::NoModelId(profile.to_owned())),
    };

    let mut warnings = Vec::new();
    let users: Vec<&config::schema::DeviceConfig> = (files.iter())
        .flat_map(|(_, f)| &f.device)
        .filter(|d| d.profile.as_deref() == Some(profile))
        .collect();
    let kind = users.first().and_then(|d| {
        (files.iter())
            .flat_map(|(_, f)| &f.bus)
            .find(|b| b.id == d.bus)
            .map(|b| b.kind)
    });
    let kind = kind.unwrap_or_else(|| {
        let kind = implied_kind(def);
        warnings.push(format!(
            "profile {profile:?} is used by no device: its entries are compiled for a {} bus",
            kind.name()
        ));
        kind
    });
    for d in &users {
        let own = [
            (!d.method.is_empty(), "methods"),
            (!d.telemetry.is_empty(), "telemetry groups"),
            (!d.reported.is_empty(), "reported values"),
            (!d.property.is_empty(), "properties"),
            (!d.desired.is_empty(), "desired properties"),
        ];
        let own: Vec<&str> = own
            .iter()
            .filter(|(has, _)| *has)
            .map(|(_, w)| *w)
            .collect();
        if !own.is_empty() {
            warnings.push(format!(
                "device {:?} adds its own {} to the profile's: they are not in this model",
                d.id,
                own.join(", ")
            ));
        }
        if let Some(other) = d.model_id.as_deref().filter(|m| *m != id) {
            warnings.push(format!(
                "device {:?} announces its own model {other:?}, not this one",
                d.id
            ));
        }
    }
    let twin = files.iter().any(|(_, f)| f.twin.is_some());
    let built = interface::build(def, kind, id, twin, (file.as_path(), &at))?;
    warnings.extend(built.warnings);
    Ok(Model {
        json: built.json,
        kind,
        warnings,
    })
}

/// The profile `id` with the file and key path it is defined at.
fn find<'f>(
    files: &'f [(PathBuf, FileConfig)],
    id: &str,
) -> Option<(&'f PathBuf, String, &'f ProfileConfig)> {
    files.iter().find_map(|(file, f)| {
        let i = f.profile.iter().position(|p| p.id == id)?;
        Some((file, entry("profile", Some(id), i), &f.profile[i]))
    })
}

/// The bus kind a profile's steps need: serial if any step sends, else Modbus TCP.
fn implied_kind(profile: &ProfileConfig) -> BusKind {
    let steps = |s: &[StepConfig]| s.iter().any(|s| s.op == StepOp::Send);
    let sends = profile.method.iter().any(|m| steps(&m.step))
        || profile.desired.iter().any(|m| steps(&m.step))
        || profile.property.iter().any(|p| steps(&p.step))
        || profile.telemetry.iter().any(|g| steps(&g.step));
    if sends {
        BusKind::Serial
    } else {
        BusKind::ModbusTcp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[hub]\nhostname = \"h.azure-devices.net\"\n[[bus]]\nid = \"psu-line\"\nkind = \"serial\"\npath = \"/dev/null\"\nterminator = \"\\n\"\n";
    const PSU: &str = "[[profile]]\nid = \"psu\"\nmodel_id = \"dtmi:com:example:Psu;1\"\n[[profile.method]]\nname = \"ident\"\n[[profile.method.step]]\nop = \"send\"\nrequest = \"*IDN?\\n\"\n";
    const DEVICE: &str = "[[device]]\nid = \"psu-1\"\nshared_access_key = \"c2VjcmV0\"\nbus = \"psu-line\"\nprofile = \"psu\"\n";

    fn model(files: &[(&str, String)], id: Option<&str>) -> Result<Model, Error> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        for_profile(&dir.path().join("leafgate.toml"), "psu", id)
    }

    #[test]
    fn a_profile_no_device_uses_is_compiled_for_the_kind_its_steps_need() {
        let got = model(&[("leafgate.toml", format!("{BASE}{PSU}"))], None).unwrap();
        assert_eq!(got.kind, BusKind::Serial);
        assert_eq!(
            got.warnings,
            ["profile \"psu\" is used by no device: its entries are compiled for a serial bus"]
        );
        assert_eq!(got.json["contents"][0]["name"], "ident");
    }

    #[test]
    fn a_profile_in_a_drop_in_is_found_and_devices_that_add_to_it_are_named() {
        let device = format!(
            "{DEVICE}model_id = \"dtmi:com:example:Other;1\"\n[[device.method]]\nname = \"beep\"\n[[device.method.step]]\nop = \"send\"\nrequest = \"BEEP\\n\"\nreply = \"none\"\n"
        );
        let got = model(
            &[
                ("leafgate.toml", format!("{BASE}{device}")),
                ("conf.d/10-psu.toml", PSU.to_owned()),
            ],
            Some("dtmi:com:example:Psu;7"),
        )
        .unwrap();
        assert_eq!(got.json["@id"], "dtmi:com:example:Psu;7");
        assert_eq!(
            got.warnings,
            [
                "device \"psu-1\" adds its own methods to the profile's: they are not in this model",
                "device \"psu-1\" announces its own model \"dtmi:com:example:Other;1\", not this one",
            ]
        );
    }

    #[test]
    fn a_bad_model_id_is_named_at_its_key_and_a_bad_config_is_the_configs_problems() {
        let bad_id = PSU.replace("dtmi:com:example:Psu;1", "psu-model");
        let err = model(&[("leafgate.toml", format!("{BASE}{bad_id}"))], None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("leafgate.toml: profile \"psu\".model_id: \"psu-model\" is not a DTMI"),
            "{text}"
        );
        let broken = model(
            &[("leafgate.toml", format!("{BASE}{PSU}{DEVICE}unit = 3\n"))],
            None,
        )
        .unwrap_err();
        assert!(matches!(broken, Error::Config(_)), "{broken:?}");
        assert_eq!(broken.problems().len(), 1);
        assert!(
            broken.problems()[0]
                .to_string()
                .ends_with("device \"psu-1\".unit: does not apply to devices on a serial bus"),
            "{broken:?}"
        );
    }
}
