//! Code Insights request bodies, both shapes: the first byte picks Cloud or
//! Data Center and report or annotation, the rest is the JSON body. Every
//! body is accepted or refused with a 400, never a panic.
#![no_main]

use leakscan_gateway::insights::{check_annotation, check_report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let dc = selector & 1 == 1;
    let status = if selector & 2 == 0 {
        check_report(dc, &body).err().map(|error| error.status)
    } else {
        check_annotation(dc, &body).err().map(|error| error.status)
    };
    if let Some(status) = status {
        assert_eq!(status.as_u16(), 400);
    }
});
