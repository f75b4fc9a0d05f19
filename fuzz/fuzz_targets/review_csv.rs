//! The CSV review import (`POST /rest/security/latest/reviewed/import`):
//! any bytes parse to rows or a 400, and an error never quotes a secret.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match leakscan_gateway::reviews::parse_review_csv(data) {
        Ok(rows) => assert!(rows
            .iter()
            .all(|row| row.secret_hash.is_some() || !row.secret.is_empty())),
        Err(error) => assert_eq!(error.status.as_u16(), 400),
    }
});
