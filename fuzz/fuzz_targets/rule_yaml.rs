//! The rule YAML loader (`--rules-file`, `engine/rules/*.yml`): any bytes
//! load to rule specs or a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = leakscan_engine::rules::parse_rule_file("fuzz.yml", text);
    }
});
