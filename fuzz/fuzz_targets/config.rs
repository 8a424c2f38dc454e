//! Config file text: parsing against the closed schema, then whole-config validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = leafgate::config::load::parse(text) {
        let _ = leafgate::config::validate::validate(vec![(std::path::PathBuf::from("fuzz.toml"), file)]);
    }
});
