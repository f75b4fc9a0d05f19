//! The per-branch config file (`soteri-security.yml` / `mohami-config.yml`):
//! any bytes parse to a config or a clear error, and a config applies to
//! the built-in policy (compiling its custom rules) without a panic.
#![no_main]

use leakscan_engine::{config::ScanConfig, ruleset::Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = ScanConfig::parse("fuzz.yml", text) {
        let _ = config.custom_rules();
        let _ = config.apply(&Policy::builtin_default());
    }
});
