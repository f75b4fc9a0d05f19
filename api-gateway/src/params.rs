//! Query parameter values as HTTP clients send them. Every boolean query
//! parameter of the API is read by [`flag`], so they all accept the same
//! spellings.

use serde::{Deserialize as _, Deserializer};

/// A boolean as clients spell it: `true` / `false` in any case (Python's
/// `str(True)` is `True`, some clients send `TRUE`), or `1` / `0`.
pub fn parse_flag(text: &str) -> Option<bool> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("true") || text == "1" {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") || text == "0" {
        Some(false)
    } else {
        None
    }
}

/// `#[serde(default, deserialize_with = "crate::params::flag")]` on a
/// `bool` query field: [`parse_flag`], anything else a clear error (a 400).
pub fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_flag(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{text:?} is not a boolean: expected true or false (any case), 1 or 0"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_accept_what_clients_send_and_nothing_else() {
        for yes in ["true", "True", "TRUE", "1", " true "] {
            assert_eq!(parse_flag(yes), Some(true), "{yes:?}");
        }
        for no in ["false", "False", "FALSE", "0"] {
            assert_eq!(parse_flag(no), Some(false), "{no:?}");
        }
        for neither in ["", "yes", "maybe", "2", "t", "truee"] {
            assert_eq!(parse_flag(neither), None, "{neither:?}");
        }
    }
}
