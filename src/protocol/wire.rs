//! Serde helpers for fields that are `&'static str` words from a fixed set.

use serde::Deserialize;

/// Reads a string and answers the matching word of `words` (so the field stays
/// `&'static str`); any other string is an error.
pub(super) fn one_of<'de, D: serde::Deserializer<'de>>(
    d: D,
    words: &'static [&'static str],
) -> Result<&'static str, D::Error> {
    let s = String::deserialize(d)?;
    words
        .iter()
        .find(|w| **w == s)
        .copied()
        .ok_or_else(|| serde::de::Error::unknown_variant(&s, words))
}

/// `&'static str` under another name: serde's derive would otherwise borrow the field
/// from the input (`'de: 'static`), which no JSON read from a socket satisfies.
pub(super) type Word = &'static str;
