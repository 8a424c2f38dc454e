//! Device connection strings from config files.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<leafgate::hub::connstr::ConnectionString>();
        let _ = leafgate::hub::sas::Key::from_base64(text);
    }
});
