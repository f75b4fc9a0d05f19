//! Checksums that providers publish for their tokens.
//!
//! GitHub's token format (prefix `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`) and
//! npm's (`npm_`) end in a 32-bit CRC of the token's 30 random characters,
//! written as 6 base62 digits (`0-9A-Za-z`, zero-padded). A token whose
//! checksum holds was made by the provider's generator; one whose checksum
//! fails is a typo or a made-up value of the right shape.

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// CRC-32 (IEEE 802.3, as zlib computes it).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `value` in base62, zero-padded to 6 digits.
pub fn base62_6(mut value: u32) -> [u8; 6] {
    let mut digits = [b'0'; 6];
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits
}

/// Whether `token` (prefix, `_`, 30 random base62 characters, 6 checksum
/// digits) carries a valid checksum; `None` when the token does not have
/// that shape (a longer token of a newer format), so no checksum applies.
pub fn crc32_base62_holds(token: &[u8]) -> Option<bool> {
    let body = match memchr::memrchr(b'_', token) {
        Some(underscore) => &token[underscore + 1..],
        None => token,
    };
    if body.len() != 36 || !body.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let (random, checksum) = body.split_at(30);
    Some(base62_6(crc32(random)) == checksum)
}

/// Whether `token` (a Grafana legacy API key: base64 JSON) decodes to an
/// object that names the key (`"n":`). The JSON is read as far as the
/// base64 is whole, so a cut or damaged tail still counts.
pub fn grafana_key_names_itself(token: &[u8]) -> bool {
    let text: &[u8] = match token.iter().position(|&b| b == b'=') {
        Some(padding) => &token[..padding],
        None => token,
    };
    let whole = &text[..text.len() - text.len() % 4];
    crate::lookalike::decode_base64(whole)
        .is_some_and(|json| json.windows(4).any(|window| window == b"\"n\":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_keys_name_themselves() {
        // {"k":"C3J27XDCG2LmlZGEONYlgCtjfIZ4SOcM","n":"deploy-bot","id":7}
        let key = b"eyJrIjoiQzNKMjdYRENHMkxtbFpHRU9OWWxnQ3RqZklaNFNPY00iLCJuIjoiZGVwbG95LWJvdCIsImlkIjo3fQ==";
        assert!(grafana_key_names_itself(key));
        // Cut short, the name still decodes.
        assert!(grafana_key_names_itself(&key[..70]));
        // {"k":"aQfDPrAJ71fTquWoGsbeKXgzg2sye9b2","t":"report","c":3}
        let other =
            b"eyJrIjoiYVFmRFByQUo3MWZUcXVXb0dzYmVLWGd6ZzJzeWU5YjIiLCJ0IjoicmVwb3J0IiwiYyI6M30=";
        assert!(!grafana_key_names_itself(other));
    }

    #[test]
    fn crc32_of_known_input() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_token_made_with_its_checksum_holds_and_a_changed_one_does_not() {
        let random = b"eKdNnFRIBXuDL7DxtpYlSXpfKtHFq3";
        let mut token = b"ghp_".to_vec();
        token.extend_from_slice(random);
        token.extend_from_slice(&base62_6(crc32(random)));
        assert_eq!(crc32_base62_holds(&token), Some(true));
        let last = token.len() - 1;
        token[last] = if token[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(crc32_base62_holds(&token), Some(false));
        assert_eq!(crc32_base62_holds(b"ghp_short"), None);
    }
}
