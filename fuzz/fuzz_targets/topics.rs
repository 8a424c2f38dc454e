//! Method request topics and SAS tokens from the network.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = leafgate::hub::topics::parse_request(text);
        let _ = leafgate::hub::topics::parse_response(text);
        let _ = leafgate::hub::sas::parse(text);
        let _ = leafgate::hub::sas::percent_decode(text);
    }
});
