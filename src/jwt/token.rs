//! Strict parsing of a compact JWS (RFC 7515 §7.1) before any key is touched: exactly three
//! base64url segments without padding, a header and a claims set that are JSON objects with
//! unique member names, a known algorithm that is not `none`, and no `crit` (RFC 7515
//! §4.1.11: we understand no extensions, so any `crit` is refused). `jku`, `x5u`, `jwk` and
//! `x5c` are never read: keys come only from configuration (RFC 8725 §3.10).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

use super::{Algorithm, json::parse_strict_object};
use crate::decision::{Denial, Reason};

/// Longest `kid` accepted; real ones are short identifiers.
const MAX_KID_BYTES: usize = 256;
/// Largest signature accepted (RSA 8192 bits).
const MAX_SIGNATURE_BYTES: usize = 1024;

/// Why a token was refused while parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("token is encrypted (JWE); only signed tokens are accepted")]
    Encrypted,
    #[error("algorithm is not allowed")]
    DisallowedAlgorithm,
    #[error("token carries a crit header parameter, which is not supported")]
    Critical,
}

impl From<TokenError> for Denial {
    fn from(err: TokenError) -> Self {
        let reason = match err {
            TokenError::Malformed(_) | TokenError::Encrypted => Reason::MalformedCredential,
            TokenError::DisallowedAlgorithm => Reason::DisallowedAlgorithm,
            TokenError::Critical => Reason::InvalidClaims,
        };
        Denial::new(reason, err.to_string())
    }
}

/// A syntactically valid, not yet verified, compact JWS.
#[derive(Debug)]
pub struct ParsedToken<'a> {
    pub algorithm: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The signature segment, base64url as in the token.
    pub signature: &'a str,
}

/// Whether `token` has the shape of a compact JWS or JWE (dot-separated segments).
pub fn looks_like_jwt(token: &str) -> bool {
    token.contains('.')
}

/// The signature layer of a compact JWS: header checked, payload still encoded.
#[derive(Debug)]
pub struct JwsParts<'a> {
    pub algorithm: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
    /// The whole protected header (for parameters only some callers read, as DPoP's `jwk`).
    pub header: Map<String, Value>,
    /// The decoded payload (base64url is checked here: a MAC over a mis-encoded payload
    /// must not verify).
    pub payload: Vec<u8>,
    pub signing_input: &'a str,
    pub signature: &'a str,
}

/// Parses a compact JWS with claims, refusing anything ambiguous.
pub fn parse_compact(token: &str) -> Result<ParsedToken<'_>, TokenError> {
    let parts = parse_jws(token)?;
    let claims = parse_strict_object(&parts.payload).map_err(|_| {
        TokenError::Malformed("claims are not a JSON object with unique member names")
    })?;
    Ok(ParsedToken {
        algorithm: parts.algorithm,
        kid: parts.kid,
        typ: parts.typ,
        claims,
        signing_input: parts.signing_input,
        signature: parts.signature,
    })
}

/// Parses the JWS layer only (header, segments, signature encoding), whatever the payload.
pub fn parse_jws(token: &str) -> Result<JwsParts<'_>, TokenError> {
    let segments = token.split('.').count();
    match segments {
        3 => {}
        5 => return Err(TokenError::Encrypted),
        _ => return Err(TokenError::Malformed("a JWT has exactly three segments")),
    }
    let (signing_input, signature) = token
        .rsplit_once('.')
        .ok_or(TokenError::Malformed("a JWT has exactly three segments"))?;
    let (header_b64, payload_b64) = signing_input
        .split_once('.')
        .ok_or(TokenError::Malformed("a JWT has exactly three segments"))?;

    let header = decode_header(header_b64)?;
    if header.contains_key("enc") {
        return Err(TokenError::Encrypted);
    }
    let algorithm = match header.get("alg") {
        Some(Value::String(name)) => name
            .parse::<Algorithm>()
            .map_err(|_| TokenError::DisallowedAlgorithm)?,
        Some(_) => return Err(TokenError::Malformed("header alg is not a string")),
        None => return Err(TokenError::Malformed("header has no alg")),
    };
    if header.contains_key("crit") {
        return Err(TokenError::Critical);
    }
    if header
        .get("b64")
        .is_some_and(|b64| b64 != &Value::Bool(true))
    {
        return Err(TokenError::Critical);
    }
    let kid = optional_string(&header, "kid", "header kid is not a string")?;
    if kid.as_ref().is_some_and(|kid| kid.len() > MAX_KID_BYTES) {
        return Err(TokenError::Malformed("header kid is too long"));
    }
    let typ = optional_string(&header, "typ", "header typ is not a string")?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| TokenError::Malformed("payload is not valid base64url"))?;
    check_signature_encoding(signature)?;
    Ok(JwsParts {
        algorithm,
        kid,
        typ,
        header,
        payload,
        signing_input,
        signature,
    })
}

fn optional_string(
    header: &Map<String, Value>,
    name: &str,
    ill_typed: &'static str,
) -> Result<Option<String>, TokenError> {
    match header.get(name) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(TokenError::Malformed(ill_typed)),
    }
}

fn decode_header(segment: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed("header is not valid base64url"))?;
    parse_strict_object(&bytes)
        .map_err(|_| TokenError::Malformed("header is not a JSON object with unique member names"))
}

/// Validates the signature segment's base64url without allocating.
fn check_signature_encoding(signature: &str) -> Result<(), TokenError> {
    let mut buffer = [0u8; MAX_SIGNATURE_BYTES];
    URL_SAFE_NO_PAD
        .decode_slice(signature, &mut buffer)
        .map(|_| ())
        .map_err(|_| TokenError::Malformed("signature is not valid base64url"))
}

/// SHA-256 of a credential: the cache key, and the short digest logs may show.
pub fn token_digest(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, claims: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(claims), b64("sig"))
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = token(
            r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#,
            r#"{"sub":"a"}"#,
        );
        let parsed = parse_compact(&t).unwrap();
        assert_eq!(parsed.algorithm, Algorithm::ES256);
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.claims["sub"], "a");
    }

    #[test]
    fn refuses_hostile_shapes() {
        let cases = [
            (
                token(r#"{"alg":"none"}"#, "{}"),
                TokenError::DisallowedAlgorithm,
            ),
            (
                token(r#"{"alg":"nOnE"}"#, "{}"),
                TokenError::DisallowedAlgorithm,
            ),
            (
                token(r#"{"alg":"HS256","crit":["exp"]}"#, "{}"),
                TokenError::Critical,
            ),
            (
                token(r#"{"alg":"HS256","b64":false}"#, "{}"),
                TokenError::Critical,
            ),
            (
                token(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#, "{}"),
                TokenError::Encrypted,
            ),
            ("a.b.c.d.e".to_owned(), TokenError::Encrypted),
            (
                "a.b".to_owned(),
                TokenError::Malformed("a JWT has exactly three segments"),
            ),
        ];
        for (t, expected) in cases {
            assert_eq!(parse_compact(&t).unwrap_err(), expected, "{t}");
        }
        for t in [
            token(r#"{"alg":"HS256","alg":"none"}"#, "{}"),
            token(r#"{"alg":"HS256"}"#, r#"{"sub":"a","sub":"b"}"#),
            format!("{}=.{}.{}", b64(r#"{"alg":"HS256"}"#), b64("{}"), b64("s")),
            format!("{}.{}.{}", b64(r#"{"alg":"HS256"}"#), b64("{}"), "s+g/"),
            format!(
                "{}.{}.{}",
                b64(r#"{"alg":"HS256"}"#),
                URL_SAFE_NO_PAD.encode(b"{\"a\":\"\xff\"}"),
                b64("s")
            ),
            token(r#"{"alg":"HS256","kid":7}"#, "{}"),
            token(r#"{"alg":"HS256"}"#, "[]"),
        ] {
            assert!(
                matches!(parse_compact(&t), Err(TokenError::Malformed(_))),
                "{t}"
            );
        }
    }
}
