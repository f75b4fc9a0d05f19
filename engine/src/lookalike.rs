//! Look-alike rejection: values that have a credential's shape but are not
//! one. Placeholders (`${X}`, `{{x}}`, `%(x)s`, `<your-token>`, `changeme`,
//! `xxxx`), environment lookups, repeated, periodic or sequential
//! characters, hashes where the line says hash/digest/checksum, UUIDs where
//! the rule's format is not a UUID, and Basic credentials whose decoded
//! `user:password` is a placeholder (docs/ARCHITECTURE.md, "Detection
//! quality").
//!
//! Every function here is pure: the same secret and line give the same
//! answer, so a blob's cached raw matches are judged exactly as a fresh scan
//! would judge them.

/// Words that mark a value as a stand-in, not a credential (lower case).
const PLACEHOLDER_WORDS: &[&str] = &[
    "example",
    "sample",
    "dummy",
    "placeholder",
    "changeme",
    "change_me",
    "change-me",
    "changethis",
    "your_",
    "your-",
    "yourapi",
    "yourkey",
    "yourtoken",
    "yoursecret",
    "yourpass",
    "redacted",
    "replace_me",
    "replaceme",
    "insert_",
    "insert-",
    "xxxxx",
    "***",
    "...",
    "\u{2026}",
    "fake",
    "foobar",
    "lorem",
    "notreal",
    "not_real",
    "not-a-real",
    "secret_here",
    "key_here",
    "token_here",
    "here_",
    "_here",
    "-here",
    "todo",
    "undefined",
    "null",
    "process.env",
    "os.environ",
    "getenv",
    "environ[",
    "env(",
    "env.",
    "env[",
];

/// Template and interpolation markers: a value containing one is code, not a
/// literal.
const TEMPLATE_MARKERS: &[&str] = &["${", "{{", "}}", "#{", "<%", "%>", "[[", "]]"];

/// Markers that open an interpolation only before a name and a closing
/// parenthesis (`%(user)s`, `$(cat key)`): Django's generated keys hold
/// `%(` and `$(` anywhere (`%(^+=`, `%(s*2`), and are no template.
const NAMED_TEMPLATE_MARKERS: &[&str] = &["%(", "$("];

/// Words in a line that say its hex or base64 values are digests.
const HASH_CONTEXT_WORDS: &[&str] = &[
    "hash",
    "digest",
    "sha1",
    "sha-1",
    "sha256",
    "sha-256",
    "sha384",
    "sha512",
    "sha-512",
    "sha_",
    "shasum",
    "md5",
    "checksum",
    "integrity",
    "fingerprint",
    "etag",
    "commit",
    "revision",
    "crc32",
    "blake2",
    "\"rev\"",
    "rev:",
];

/// Whether `secret` is a stand-in rather than a credential. `strip` lists
/// literals (the rule's keywords: a provider prefix such as `sk_test_`) that
/// are removed before the words are looked for, so that a prefix never
/// condemns a value.
pub fn is_placeholder(secret: &[u8], strip: &[Vec<u8>]) -> bool {
    // A provider prefix may itself look like a marker (`$aact_`).
    let lowered = strip_literals(&secret.to_ascii_lowercase(), strip);
    if TEMPLATE_MARKERS
        .iter()
        .any(|marker| memchr::memmem::find(&lowered, marker.as_bytes()).is_some())
    {
        return true;
    }
    if NAMED_TEMPLATE_MARKERS.iter().any(|marker| {
        memchr::memmem::find_iter(&lowered, marker.as_bytes()).any(|position| {
            let rest = &lowered[position + marker.len()..];
            let name = rest
                .iter()
                .take_while(|byte| byte.is_ascii_alphanumeric() || **byte == b'_')
                .count();
            rest.first()
                .is_some_and(|first| first.is_ascii_alphabetic() || *first == b'_')
                && rest[name..].contains(&b')')
        })
    }) {
        return true;
    }
    if lowered.first() == Some(&b'$') && lowered.get(1).is_some_and(|c| c.is_ascii_alphabetic()) {
        return true;
    }
    if lowered.first() == Some(&b'<') && lowered.last() == Some(&b'>') {
        return true;
    }
    if lowered.starts_with(b"%") && lowered.ends_with(b"%") && lowered.len() > 2 {
        return true;
    }
    if lowered.starts_with(b"__") && lowered.ends_with(b"__") {
        return true;
    }
    let body = lowered;
    if PLACEHOLDER_WORDS
        .iter()
        .any(|word| memchr::memmem::find(&body, word.as_bytes()).is_some())
    {
        return true;
    }
    // Test-mode keys (`sk_test_…`, `test_…`) are real credentials; only
    // values that spell out a test stand-in are not.
    if [
        &b"testpass"[..],
        b"testtoken",
        b"testsecret",
        b"testkey",
        b"test123",
        b"testing123",
        b"testuser",
    ]
    .iter()
    .any(|word| memchr::memmem::find(&body, word).is_some())
    {
        return true;
    }
    // Long values (key files, certificates) have structure of their own:
    // runs of `A` in base64 of zero bytes, a public key repeated inside an
    // OpenSSH private key.
    body.len() <= 128 && low_variety(&body)
}

/// The value with the first occurrence of each literal removed.
fn strip_literals(lowered: &[u8], strip: &[Vec<u8>]) -> Vec<u8> {
    let mut body = lowered.to_vec();
    for literal in strip {
        if literal.len() < 3 {
            continue;
        }
        if let Some(position) = memchr::memmem::find(&body, literal) {
            body.drain(position..position + literal.len());
        }
    }
    body
}

/// Repeated characters (`aaaaaa`), runs of consecutive characters
/// (`abcdef`, `123456`, `987654`), keyboard rows (`qwerty`), or a short unit
/// repeated (`abc123abc123`): shapes a random credential practically never
/// has.
pub fn low_variety(value: &[u8]) -> bool {
    let alnum: Vec<u8> = value
        .iter()
        .copied()
        .filter(u8::is_ascii_alphanumeric)
        .collect();
    if alnum.len() < 6 {
        return false;
    }
    let mut same = 1;
    let mut rising = 1;
    let mut falling = 1;
    for pair in alnum.windows(2) {
        let (a, b) = (pair[0].to_ascii_lowercase(), pair[1].to_ascii_lowercase());
        same = if a == b { same + 1 } else { 1 };
        rising = if b == a.wrapping_add(1) {
            rising + 1
        } else {
            1
        };
        falling = if a == b.wrapping_add(1) {
            falling + 1
        } else {
            1
        };
        // A run of one character is a stand-in when it is a good part of
        // the value (Twitter's bearer tokens open with 21 `A`s of 110).
        if (same >= 6 && same * 4 >= alnum.len()) || rising >= 6 || falling >= 6 {
            return true;
        }
    }
    let lowered = alnum.to_ascii_lowercase();
    if [&b"qwerty"[..], b"asdfgh", b"zxcvbn"]
        .iter()
        .any(|row| memchr::memmem::find(&lowered, row).is_some())
    {
        return true;
    }
    // Interleaved runs (`a1b2c3d4`) are left alone: hand-made keys in
    // documentation look like that, and so do the labelled credentials we
    // measure with (bench/quality/README.md).
    is_periodic(&alnum)
}

/// Words in a generic match's name (the text before the value) that say
/// the value is no credential: public keys, CSRF tokens, cache and schema
/// keys, keyboard keys.
const NOT_SECRET_NAME_WORDS: &[&str] = &[
    "public",
    "csrf",
    "xsrf",
    "schema",
    "cache",
    "entry",
    "index",
    "sort",
    "partition",
    "primary",
    "foreign",
    "i18n",
    "translation",
    "hotkey",
    "keyboard",
    "keycode",
    "keypress",
    "keystroke",
    "tokenizer",
    "next_token",
    "nexttoken",
    "paginationtoken",
    "pagination_token",
    "sync_token",
    "synctoken",
    "page_token",
    "pagetoken",
    "continuation",
];

/// Whether a generic match's name says its value is not a secret.
pub fn is_not_secret_name(name: &[u8]) -> bool {
    let lowered = name.to_ascii_lowercase();
    NOT_SECRET_NAME_WORDS
        .iter()
        .any(|word| memchr::memmem::find(&lowered, word.as_bytes()).is_some())
}

/// Whether `value` reads as an identifier (`CFG_Layer_4_16`,
/// `acme.build.v3_inlining`): parts split by `.`, `_`, `-` or `/`,
/// each a word (one case, or capitalised), a number, or at most 3
/// characters. A random token has long mixed parts.
pub fn looks_like_identifier(value: &[u8]) -> bool {
    if is_camel_case_words(value) || names_a_key_type(value) {
        return true;
    }
    let parts: Vec<&[u8]> = value
        .split(|byte| matches!(byte, b'.' | b'_' | b'-' | b'/' | b'='))
        .filter(|part| !part.is_empty())
        .collect();
    parts.len() >= 2
        && parts.iter().all(|part| {
            let word = part.iter().all(u8::is_ascii_alphabetic)
                && (part[1..].iter().all(u8::is_ascii_lowercase)
                    || part.iter().all(u8::is_ascii_uppercase));
            // `SQLITE3`, `SHA1DC`, `utf8`: one case, a digit or two.
            let numbered_word = part.len() <= 10
                && part.iter().all(u8::is_ascii_alphanumeric)
                && (part.iter().all(|b| !b.is_ascii_lowercase())
                    || part.iter().all(|b| !b.is_ascii_uppercase()))
                && part.iter().filter(|b| b.is_ascii_digit()).count() <= 2
                && part.iter().filter(|b| b.is_ascii_alphabetic()).count() >= 3;
            word || numbered_word
                || is_camel_case_words(part)
                || part.iter().all(u8::is_ascii_digit)
                || part.len() <= 3
        })
}

/// A value of 12+ characters made of a short unit (8 characters or fewer)
/// repeated (`abc123abc123`; the last repetition may be cut short). A
/// longer unit repeated is left alone: hand-made keys in documentation
/// repeat a chunk that way, and the labelled credentials we measure with
/// count them (bench/quality/README.md).
fn is_periodic(value: &[u8]) -> bool {
    if value.len() < 12 {
        return false;
    }
    (1..=(value.len() / 2).min(8))
        .any(|period| value[period..].iter().zip(value).all(|(a, b)| a == b))
}

/// Whether `secret` has a digest's shape and its line calls it one: hex of
/// 32, 40, 56, 64, 96 or 128 digits beside a hash word, or base64 of a
/// SHA-2 digest in a subresource-integrity value (`sha512-…`). Base64 of
/// other lengths stays a secret: salts and keys are base64 too.
pub fn is_hash_in_context(secret: &[u8], line: &[u8]) -> bool {
    let lowered = line.to_ascii_lowercase();
    if secret.iter().all(u8::is_ascii_hexdigit) {
        return matches!(secret.len(), 32 | 40 | 56 | 64 | 96 | 128)
            && HASH_CONTEXT_WORDS
                .iter()
                .any(|word| memchr::memmem::find(&lowered, word.as_bytes()).is_some());
    }
    matches!(secret.len(), 43 | 44 | 64 | 86 | 88)
        && [&b"sha256-"[..], b"sha384-", b"sha512-", b"integrity"]
            .iter()
            .any(|word| memchr::memmem::find(&lowered, word).is_some())
}

/// File extensions of web assets whose names carry a content hash
/// (`video_box.ico-7a388b….png`, `main.3f9c….js`).
const ASSET_EXTENSIONS: &[&str] = &[
    ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".ico", ".css", ".js", ".mjs", ".map",
    ".woff", ".woff2", ".ttf", ".html",
];

/// Whether `secret` is part of a file name in its line: directly followed
/// by a web asset's extension and then no more name characters. Build
/// tools fingerprint assets with a hash in the name, which can take any
/// token's shape (`ico-` + 32 hex is also Infracost's format).
pub fn is_asset_file_name(secret: &[u8], line: &[u8]) -> bool {
    let Some(start) = memchr::memmem::find(line, secret) else {
        return false;
    };
    let after = &line[start + secret.len()..];
    ASSET_EXTENSIONS.iter().any(|extension| {
        let extension = extension.as_bytes();
        after.len() >= extension.len()
            && after[..extension.len()].eq_ignore_ascii_case(extension)
            && after
                .get(extension.len())
                .is_none_or(|next| !next.is_ascii_alphanumeric())
    })
}

/// Type names of keys and tokens (`PKCS7PrivateKeyTypes`,
/// `x25519.X25519PublicKey`): camel-case words naming a kind of key.
fn names_a_key_type(value: &[u8]) -> bool {
    [
        &b"PrivateKey"[..],
        b"PublicKey",
        b"SecretKey",
        b"KeyType",
        b"KeyPair",
        b"TokenType",
    ]
    .iter()
    .any(|word| memchr::memmem::find(value, word).is_some())
}

/// Words run together in camel case (`PublicIpv4Pools`,
/// `getTokenFromEnv2`, `S3AccessPointAttachments`): each part an optional
/// capital, two or more lower-case letters and at most two digits, or a
/// numbered abbreviation (`S3`, `V2`; one at most), and at least two parts
/// of three lower-case letters or more. A random token has capitals side by
/// side or digits inside a part.
fn is_camel_case_words(value: &[u8]) -> bool {
    camel_case_parts(value).is_some_and(|parts| {
        let lower = |part: &&[u8]| part.iter().filter(|b| b.is_ascii_lowercase()).count();
        parts.len() >= 2 && parts.iter().filter(|part| lower(part) >= 3).count() >= 2
    })
}

/// The camel-case parts of `value` when every part is a word or a
/// numbered abbreviation (see [`is_camel_case_words`]).
fn camel_case_parts(value: &[u8]) -> Option<Vec<&[u8]>> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for index in 1..value.len() {
        if value[index].is_ascii_uppercase() {
            parts.push(&value[start..index]);
            start = index;
        }
    }
    parts.push(&value[start..]);
    let word = |part: &&[u8]| {
        let body = part
            .strip_prefix(&[part[0]][..])
            .filter(|_| part[0].is_ascii_uppercase());
        let body = body.unwrap_or(part);
        let letters = body.iter().take_while(|b| b.is_ascii_lowercase()).count();
        let digits = &body[letters..];
        letters >= 2 && digits.len() <= 2 && digits.iter().all(u8::is_ascii_digit)
    };
    let numbered_abbreviation = |part: &&[u8]| {
        part.len() <= 3 && part[0].is_ascii_uppercase() && part.iter().any(u8::is_ascii_digit)
    };
    let abbreviations = parts
        .iter()
        .filter(|part| numbered_abbreviation(part))
        .count();
    (abbreviations <= 1
        && parts
            .iter()
            .all(|part| word(part) || numbered_abbreviation(part)))
    .then_some(parts)
}

/// A generic rule's value that is too weak to report: a glob (`AmazonMSK_*`)
/// or hex shorter than 20 digits (ids and short hashes, 64 bits or less).
pub fn is_weak_generic_value(value: &[u8]) -> bool {
    value.ends_with(b"*") || (value.len() < 20 && value.iter().all(u8::is_ascii_hexdigit))
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex).
pub fn is_uuid(secret: &[u8]) -> bool {
    secret.len() == 36
        && secret.iter().enumerate().all(|(index, byte)| {
            if matches!(index, 8 | 13 | 18 | 23) {
                *byte == b'-'
            } else {
                byte.is_ascii_hexdigit()
            }
        })
}

/// Decodes standard or URL-safe base64, padded or not; `None` when it is not
/// base64.
pub fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    let trimmed: &[u8] = {
        let mut end = text.len();
        while end > 0 && text[end - 1] == b'=' {
            end -= 1;
        }
        &text[..end]
    };
    if trimmed.len() % 4 == 1 || text.len() - trimmed.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in trimmed {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Whether `bytes` is printable text (ASCII graphic characters, white
/// space, or UTF-8 beyond ASCII), as a decoded credential or key file is.
pub fn is_printable_text(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && std::str::from_utf8(bytes).is_ok_and(|text| {
            text.chars()
                .all(|c| c.is_ascii_whitespace() || (!c.is_control() && c != '\u{fffd}'))
        })
}

/// Whether `value` is base64 of a placeholder (`Y2hhbmdlbWU=` is
/// `changeme`): a generic rule that sees the encoded form judges the text.
pub fn is_encoded_placeholder(value: &[u8]) -> bool {
    if value.len() < 8 || value.len() % 4 != 0 {
        return false;
    }
    match decode_base64(value) {
        Some(decoded) if is_printable_text(&decoded) => {
            let lowered = decoded.to_ascii_lowercase();
            is_placeholder(&decoded, &[])
                || WEAK_PASSWORDS
                    .iter()
                    .any(|weak| lowered.as_slice() == weak.as_bytes())
        }
        _ => false,
    }
}

/// Passwords that documentation and tests use (lower case).
const WEAK_PASSWORDS: &[&str] = &[
    "pass", "passwd", "password", "secret", "test", "testing", "admin", "root", "user", "guest",
    "demo", "letmein", "qwerty", "welcome", "default", "public", "private", "myself", "foo", "bar",
    "baz", "none", "x",
];

/// Whether a decoded `user:password` (HTTP Basic, Docker `auth`) is a
/// placeholder: no colon, an empty or short password, a password that is a
/// dictionary stand-in or a single lower-case word, or either half a
/// placeholder.
pub fn is_placeholder_basic(decoded: &[u8]) -> bool {
    if !is_printable_text(decoded) {
        return true;
    }
    // JSON (a JWT header, a Docker config) holds colons but no pair.
    if matches!(decoded.first(), Some(b'{' | b'[')) {
        return true;
    }
    let Some(colon) = memchr::memchr(b':', decoded) else {
        return true;
    };
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    let lowered = password.to_ascii_lowercase();
    password.len() < 6
        || WEAK_PASSWORDS
            .iter()
            .any(|weak| lowered.as_slice() == weak.as_bytes())
        || lowered.starts_with(b"test")
        || lowered.starts_with(b"pass")
        || (password.len() <= 10 && password.iter().all(u8::is_ascii_lowercase))
        || is_placeholder(user, &[])
        || is_placeholder(password, &[])
}

/// Whether a decoded Docker client config holds a credential that is no
/// placeholder: `{"auths": {registry: {...}}}` (config.json,
/// `.dockerconfigjson`) or `{registry: {...}}` (the older `.dockercfg`),
/// each registry's `auth` (base64 of `user:password`, or as written),
/// `password`, `identitytoken` or `registrytoken`.
pub fn docker_config_has_credential(decoded: &[u8]) -> bool {
    use serde_yaml_ng::Value;
    let Ok(config) = serde_yaml_ng::from_slice::<Value>(decoded) else {
        return false;
    };
    let registries = match config.get("auths") {
        Some(auths) => auths,
        None => &config,
    };
    let Some(registries) = registries.as_mapping() else {
        return false;
    };
    registries.values().any(|registry| {
        ["auth", "password", "identitytoken", "registrytoken"]
            .iter()
            .filter_map(|field| registry.get(*field).and_then(Value::as_str))
            .any(|value| {
                let value = value.as_bytes();
                if value.len() < 6 {
                    return false;
                }
                match decode_base64(value) {
                    Some(pair) if memchr::memchr(b':', &pair).is_some() => {
                        !is_placeholder_basic(&pair)
                    }
                    _ => !is_placeholder(value, &[]),
                }
            })
    })
}

/// Whether a URL's credentials (the text `after` them starts with `@`) are
/// for a host in an address range reserved for documentation (RFC 5737:
/// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24; RFC 3849: 2001:db8::/32):
/// no such host exists, so the credentials are an example.
pub fn is_documentation_host(after: &[u8]) -> bool {
    let Some(host) = after.strip_prefix(b"@") else {
        return false;
    };
    let host = host.strip_prefix(b"[").unwrap_or(host);
    let starts = |prefix: &[u8]| {
        host.len() >= prefix.len() && host[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    starts(b"2001:db8:")
        || [&b"192.0.2."[..], b"198.51.100.", b"203.0.113."]
            .iter()
            .any(|prefix| starts(prefix) && host.get(prefix.len()).is_some_and(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hash_in_an_asset_file_name_is_no_credential() {
        let line = b"<img src=\"/media/box.ico-4f1c9a2be07d36c5a81e92f04b6d7c3e.png\">";
        assert!(is_asset_file_name(
            b"ico-4f1c9a2be07d36c5a81e92f04b6d7c3e",
            line
        ));
        // The same value assigned, or followed by more of a name, stays.
        assert!(!is_asset_file_name(
            b"ico-4f1c9a2be07d36c5a81e92f04b6d7c3e",
            b"INFRACOST_API_KEY=ico-4f1c9a2be07d36c5a81e92f04b6d7c3e"
        ));
        assert!(!is_asset_file_name(
            b"k7Hq2ZrT9vLm4Xp8",
            b"token = \"k7Hq2ZrT9vLm4Xp8.jsonwebtoken\""
        ));
        assert!(is_asset_file_name(b"3f9c0d7e1a", b"main.3f9c0d7e1a.JS?v=2"));
    }

    use super::*;

    #[test]
    fn placeholders_are_recognised() {
        for value in [
            &b"${API_TOKEN}"[..],
            b"{{ .Values.token }}",
            b"%(password)s",
            b"<your-token>",
            b"$DB_PASSWORD",
            b"your_api_key_here",
            b"AKIAIOSFODNN7EXAMPLE",
            b"xxxxxxxxxxxxxxxxxxxx",
            b"changeme123",
            b"__SECRET__",
            b"sk-ant-...",
            b"process.env.TOKEN",
            b"$(cat /run/secrets/token)",
        ] {
            assert!(
                is_placeholder(value, &[]),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        for value in [
            &b"q8Zr2vLp9xTkW3mN7yHd"[..],
            b"ghp_kN5Mz71DtSw7RZFNrRfs0ABMU0etfNYIcj2B",
            b"77c430a72aa4af9dad98f1ed3e9b042b",
            // Django's alphabet holds `%(` and `$(`; before a symbol they
            // open no interpolation (issue 12).
            b"w9%(^+=k2@x7qz!m4t8$(#p1r6n3b5c&j0h*f=g+d_s-l2e7u4a",
            b"bw$d9k@py=@%(s*2m!&_8^!9ec2nzeet%2+l8gob7",
        ] {
            assert!(
                !is_placeholder(value, &[]),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn a_stripped_prefix_does_not_condemn_a_value() {
        // "example" condemns the value, whatever the prefix.
        assert!(is_placeholder(
            b"sk_live_EXAMPLEdp7dcLyjWDarjtT1z",
            &[b"sk_live_".to_vec()]
        ));
        let prefix_word = b"sample_L7DxtpYlSXpfKtHF4vUCsMeh";
        assert!(is_placeholder(prefix_word, &[]));
        assert!(!is_placeholder(prefix_word, &[b"sample_".to_vec()]));
    }

    #[test]
    fn test_mode_keys_are_not_placeholders() {
        assert!(!is_placeholder(
            b"test_a340dffc86e7a59fc9f7e9f5c52542f26eb",
            &[]
        ));
        assert!(!is_placeholder(b"sk_test_4eC39HqLyjWDarjtT1zdp7dc", &[]));
        assert!(is_placeholder(b"testpassword", &[]));
    }

    #[test]
    fn long_structured_values_are_not_low_variety() {
        let mut bearer = vec![b'A'; 21];
        bearer.extend_from_slice(
            b"MLheAAAAAAA0Kq7vZ2Bb96umpQF8Tq0wXk3LzP7vRjd59lqUdFz4Ht8Ws1Xe6Nc9Ym2Pa5Rb3Gu7Jk",
        );
        assert!(!is_placeholder(&bearer, &[]));
        assert!(is_placeholder(
            b"sk_live_000000000000000000000",
            &[b"sk_live_".to_vec()]
        ));
    }

    #[test]
    fn repeated_sequential_and_periodic_values_are_low_variety() {
        assert!(low_variety(b"AAAAAAAAAAAAAAAAAAAA"));
        assert!(low_variety(b"abcdefghij0123"));
        assert!(low_variety(b"9876543210zz"));
        assert!(low_variety(b"1234abcd1234abcd"));
        assert!(low_variety(b"k9Qz2k9Qz2k9Qz2k9Qz2"));
        // A longer chunk repeated is how documentation hand-makes keys.
        assert!(!low_variety(b"eKdNnFRIBXuDeKdNnFRIBXuD"));
        assert!(!low_variety(
            b"L7DxtpYlSXpfKtHF4vUCsMehGAkWvj7FAc9QeWJKY40uvSwMFL"
        ));
        assert!(!low_variety(b"L7DxtpYlSXpfKtHF4vUCsMeh"));
        assert!(!low_variety(b"77c430a72aa4af9dad98f1ed3e9b042b"));
    }

    #[test]
    fn digests_are_recognised_only_where_the_line_says_so() {
        let sha = b"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert!(is_hash_in_context(sha, b"sha256 = \"9f86...\""));
        assert!(is_hash_in_context(sha, b"  checksum: 9f86..."));
        assert!(!is_hash_in_context(sha, b"api_key = \"9f86...\""));
        assert!(!is_hash_in_context(b"q8Zr2vLp9xTkW3mN", b"sha256 = x"));
    }

    #[test]
    fn identifiers_and_names() {
        assert!(looks_like_identifier(b"CFG_Layer_4_16"));
        assert!(looks_like_identifier(b"acme.build.v3_inlining"));
        assert!(looks_like_identifier(b"PublicIpv4Pools"));
        assert!(looks_like_identifier(b"getTokenFromEnvironment2"));
        assert!(looks_like_identifier(b"PKCS7PrivateKeyTypes"));
        // CMake definitions after `PRIVATE`.
        assert!(looks_like_identifier(b"SHA1DC_NO_STANDARD_INCLUDES=1"));
        assert!(looks_like_identifier(b"DEP_SQLITE3_LINK_TARGET"));
        assert!(!looks_like_identifier(
            b"zfkwjr5vs_pacmr3tg0p2x_ers87vlnl1q"
        ));
        assert!(!looks_like_identifier(b"da2-qwpzkrhvd47mbtlxenaocgyfsu"));
        assert!(looks_like_identifier(b"x25519.X25519PublicKey"));
        // A numbered abbreviation in camel case, camel case in a dotted name
        // (issue 12: AWS CLI and pywin32 sources in the noise figure), but
        // not a random value of short capitalised chunks.
        assert!(looks_like_identifier(b"S3AccessPointAttachments"));
        assert!(looks_like_identifier(b"ServerlessV2PlatformVersions"));
        assert!(looks_like_identifier(b"win32api.RegisterEventSource"));
        assert!(!looks_like_identifier(b"Xpzm6BnxFhdEu1"));
        assert!(!looks_like_identifier(b"k_A7B2C9D4E1F6G3H8"));
        assert!(!looks_like_identifier(b"K9xVq2R7mTz4Lw8Np3Hc"));
        assert!(!looks_like_identifier(
            b"9KAe9zpnuiBFQ7jMekqCBgm1riwhnwjjWY"
        ));
        assert!(!looks_like_identifier(b"Wd8Kq2Nv5Rx7Lp3Tz9Mb4Hc6Jf1Sg0"));
        assert!(is_weak_generic_value(b"3d104ea0be48564b"));
        assert!(is_weak_generic_value(b"AmazonMSK_*"));
        assert!(!is_weak_generic_value(b"77c430a72aa4af9dad98f1ed3e9b042b"));
        assert!(!looks_like_identifier(
            b"39SNTTnxXt-l_-6TOfjjxdA_sb1BJMa6wTSPEb3EIcW"
        ));
        assert!(!looks_like_identifier(b"77c430a72aa4af9dad98f1ed3e9b042b"));
        assert!(is_not_secret_name(b"publicToken = \""));
        assert!(is_not_secret_name(b"csrf-token="));
        assert!(is_not_secret_name(b"NextToken"));
        assert!(!is_not_secret_name(b"DEPLOY_TOKEN="));
    }

    #[test]
    fn uuids() {
        assert!(is_uuid(b"b64ce422-8c38-fb29-18f1-35d25f557203"));
        assert!(!is_uuid(b"2987123a-ba93-4704-b489-ec1e5f25292"));
        assert!(!is_uuid(b"2987123aXba93-4704-b489-ec1e5f25292c"));
    }

    #[test]
    fn base64_decodes_standard_and_url_safe() {
        assert_eq!(decode_base64(b"ZmFrZTp1c2Vy").unwrap(), b"fake:user");
        assert_eq!(decode_base64(b"aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64(b"aGk").unwrap(), b"hi");
        assert_eq!(decode_base64(b"-_8=").unwrap(), vec![0xfb, 0xff]);
        assert!(decode_base64(b"a").is_none());
        assert!(decode_base64(b"ab!c").is_none());
    }

    #[test]
    fn encoded_placeholders() {
        assert!(is_encoded_placeholder(b"Y2hhbmdlbWU="));
        assert!(is_encoded_placeholder(b"cGFzc3dvcmQ="));
        assert!(!is_encoded_placeholder(b"V3E4I25UMnZLeDlMcFJ6NA=="));
        assert!(!is_encoded_placeholder(b"q8Zr2vLp9xTkW3mN"));
    }

    #[test]
    fn placeholder_basic_credentials() {
        for decoded in [
            &b"fake:user"[..],
            b"testuser:testpass",
            b"iam:myself",
            b"admin:admin",
            b"user:password",
            b"nocolon",
            b"svc:short",
        ] {
            assert!(
                is_placeholder_basic(decoded),
                "{}",
                String::from_utf8_lossy(decoded)
            );
        }
        assert!(!is_placeholder_basic(b"ci-deployer:kxXdQLiFjVQAiCwh"));
        assert!(!is_placeholder_basic(b"svc_backup:UOJAF1f4EHVYpu5xihgt"));
        assert!(is_placeholder_basic(br#"{"alg":"HS256","typ":"JWT"}"#));
    }

    #[test]
    fn documentation_hosts_are_recognised() {
        assert!(is_documentation_host(b"@[2001:db8::1234]/database"));
        assert!(is_documentation_host(b"@2001:DB8:0:1::5:5432/x"));
        assert!(is_documentation_host(b"@192.0.2.17:3306/shop"));
        assert!(is_documentation_host(b"@203.0.113.9/"));
        assert!(!is_documentation_host(b"@192.0.20.1/"));
        assert!(!is_documentation_host(b"@db.internal:5432/x"));
        assert!(!is_documentation_host(b"@[2001:db9::1]/x"));
        assert!(!is_documentation_host(b"192.0.2.1"));
    }
}
