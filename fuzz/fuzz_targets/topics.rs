//! Method request topics from the network, and SAS tokens as the emulator parses them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = leafgate::hub::topics::parse_request(text);
        let _ = leafgate::hub::topics::parse_response(text);
        let _ = leafgate_emulator::sas::parse(text);
        let _ = leafgate_emulator::sas::percent_decode(text);
    }
});
