//! What tests of config-shaped types share: reading a TOML snippet as `config::load` reads
//! files (the external `config` crate, not ours).

/// Deserializes `toml` into `T`; panics on a snippet that does not parse (tests only).
pub(crate) fn from_toml<T: serde::de::DeserializeOwned>(toml: &str) -> T {
    ::config::Config::builder()
        .add_source(::config::File::from_str(toml, ::config::FileFormat::Toml))
        .build()
        .and_then(::config::Config::try_deserialize)
        .unwrap()
}
