//! The API key format: `<prefix>_<30 random base62 chars><6-char base62 CRC32>`.
//!
//! 30 base62 characters carry 178 bits of entropy (drawn from aws-lc-rs's system RNG by
//! rejection sampling, so every character is uniform). The checksum is CRC32 (IEEE) of
//! everything before it, `<prefix>_<random>`, written as 6 base62 digits; it lets a typo or a
//! truncated key be refused as MALFORMED_CREDENTIAL without a store lookup, and lets secret
//! scanners recognise leaked keys. Stores keep only the SHA-256 of the whole key, in
//! lower-case hex.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random characters in a key.
pub const RANDOM_CHARS: usize = 30;
/// Checksum characters in a key.
pub const CHECKSUM_CHARS: usize = 6;

/// Why a string is not a well-formed key. Never contains the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("API key does not have the form <prefix>_<random><checksum>")]
    Shape,
    #[error("API key has another prefix than the configured one")]
    Prefix,
    #[error("API key checksum does not match (mistyped or truncated key)")]
    Checksum,
    #[error("the system random number generator failed")]
    Random,
}

/// `count` uniformly random base62 characters.
pub fn random_base62(count: usize) -> Result<String, FormatError> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(count);
    let mut buf = [0u8; 64];
    while out.len() < count {
        rng.fill(&mut buf).map_err(|_| FormatError::Random)?;
        // 248 = 4 * 62: bytes at or above it would bias the low characters.
        for byte in buf.iter().filter(|b| **b < 248) {
            if out.len() == count {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(*byte % 62)]));
        }
    }
    Ok(out)
}

fn checksum(body: &str) -> String {
    let mut value = u64::from(crc32fast::hash(body.as_bytes()));
    let mut digits = [b'0'; CHECKSUM_CHARS];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    digits.iter().map(|b| char::from(*b)).collect()
}

/// A new key with this prefix.
pub fn generate(prefix: &str) -> Result<String, FormatError> {
    if !crate::vocabulary::valid_api_key_prefix(prefix) {
        return Err(FormatError::Prefix);
    }
    let body = format!("{prefix}_{}", random_base62(RANDOM_CHARS)?);
    let sum = checksum(&body);
    Ok(body + &sum)
}

/// Whether `key` starts with `<prefix>_` (it claims to be an API key).
pub fn has_prefix(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('_'))
}

/// Checks shape, prefix and checksum; nothing is looked up.
pub fn check(key: &str, prefix: &str) -> Result<(), FormatError> {
    let (found_prefix, rest) = key.rsplit_once('_').ok_or(FormatError::Shape)?;
    if rest.len() != RANDOM_CHARS + CHECKSUM_CHARS
        || !rest.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(FormatError::Shape);
    }
    if found_prefix != prefix {
        return Err(FormatError::Prefix);
    }
    let (body, sum) = key.split_at(key.len() - CHECKSUM_CHARS);
    // Not secret-dependent timing worth hiding: the checksum is public information.
    if checksum(body) != sum {
        return Err(FormatError::Checksum);
    }
    Ok(())
}

/// SHA-256 of the whole key: what stores keep and look up.
pub fn digest(key: &str) -> [u8; 32] {
    crate::jwt::token_digest(key)
}

/// Lower-case hex, the form digests are written in.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits into a digest.
pub fn parse_hex_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_check_and_damaged_ones_do_not() {
        let key = generate("pcl").unwrap();
        assert!(key.starts_with("pcl_"));
        assert_eq!(key.len(), 4 + RANDOM_CHARS + CHECKSUM_CHARS);
        assert_eq!(check(&key, "pcl"), Ok(()));
        assert_ne!(generate("pcl").unwrap(), key, "keys are random");

        let mut flipped = key.clone().into_bytes();
        let i = 10;
        flipped[i] = if flipped[i] == b'a' { b'b' } else { b'a' };
        let cases = [
            (
                "one character changed",
                String::from_utf8(flipped).unwrap(),
                FormatError::Checksum,
            ),
            (
                "truncated",
                key[..key.len() - 1].to_owned(),
                FormatError::Shape,
            ),
            (
                "other prefix",
                key.replacen("pcl", "abc", 1),
                FormatError::Prefix,
            ),
            ("no underscore", key.replace('_', ""), FormatError::Shape),
            (
                "non-base62",
                format!("{}!", &key[..key.len() - 1]),
                FormatError::Shape,
            ),
        ];
        for (name, damaged, expected) in cases {
            assert_eq!(check(&damaged, "pcl"), Err(expected), "{name}");
        }
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let digest = digest("pcl_x");
        assert_eq!(parse_hex_digest(&hex(&digest)), Some(digest));
        assert_eq!(parse_hex_digest("zz"), None);
    }
}
