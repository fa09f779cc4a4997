//! One DPoP proof (RFC 9449 §4.3), checked before anything is remembered: a compact JWS of
//! type `dpop+jwt`, signed with an allowed asymmetric algorithm by the public JWK in its
//! header (never a private one), whose `htm` and `htu` name this request, whose `iat` is
//! recent, whose `ath` is the hash of this access token, and whose key's thumbprint is the
//! one the token is bound to. Cheap comparisons come first, the signature last; what is
//! returned identifies the proof for the replay check.

use aws_lc_rs::digest::{SHA256, digest};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use serde_json::{Map, Value};

use super::HttpTarget;
use crate::{
    decision::{Denial, Reason},
    jwt::{self, Algorithm, TokenError},
};

/// Longest `jti` accepted.
const MAX_JTI_BYTES: usize = 256;
/// Longest `htu` accepted.
const MAX_HTU_BYTES: usize = 4096;

/// What a proof is checked against, besides the request.
#[derive(Debug, Clone)]
pub struct Rules {
    pub algorithms: Vec<Algorithm>,
    /// Oldest `iat` accepted, in seconds before now.
    pub max_age: i64,
    /// Latest `iat` accepted, in seconds after now.
    pub leeway: i64,
    /// Largest proof header accepted.
    pub max_proof_bytes: usize,
}

/// A proof that passed every check but the replay check.
#[derive(Debug)]
pub struct Checked {
    /// SHA-256 of the bound thumbprint and the `jti`: what the replay memory keeps.
    pub identity: [u8; 32],
    /// The first half of the SHA-256 of the bound thumbprint: whose proof it is.
    pub key: [u8; 16],
    /// The proof's `iat`, seconds since the Unix epoch.
    pub issued_at: i64,
}

/// A denial for a proof that is not acceptable (`invalid_dpop_proof`).
fn invalid(reason: Reason, message: impl Into<String>) -> Denial {
    Denial::dpop(reason, true, message)
}

/// Checks `proof` for a request to `target` with `access_token`, bound to the JWK
/// thumbprint `bound`, at `now` (seconds since the Unix epoch).
pub fn check(
    proof: &str,
    access_token: &str,
    bound: &str,
    target: &HttpTarget<'_>,
    now: i64,
    rules: &Rules,
) -> Result<Checked, Denial> {
    let jws = jwt::parse_jws(proof).map_err(|err| {
        let reason = match err {
            TokenError::DisallowedAlgorithm => Reason::DisallowedAlgorithm,
            TokenError::Critical => Reason::InvalidClaims,
            TokenError::Malformed(_) | TokenError::Encrypted => Reason::MalformedCredential,
        };
        invalid(reason, format!("DPoP proof: {err}"))
    })?;
    if !rules.algorithms.contains(&jws.algorithm) {
        return Err(invalid(
            Reason::DisallowedAlgorithm,
            format!("DPoP proof algorithm {} is not allowed", jws.algorithm),
        ));
    }
    if !jws
        .typ
        .as_deref()
        .is_some_and(|typ| typ.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(invalid(
            Reason::InvalidClaims,
            "DPoP proof typ must be dpop+jwt",
        ));
    }
    let Some(Value::Object(jwk)) = jws.header.get("jwk") else {
        return Err(invalid(
            Reason::InvalidClaims,
            "DPoP proof header has no jwk object",
        ));
    };
    if jwt::has_private_members(jwk, false) {
        return Err(invalid(
            Reason::InvalidClaims,
            "DPoP proof header carries private key material",
        ));
    }
    let key = jwt::public_jwk_key(jwk, jws.algorithm)
        .map_err(|err| invalid(Reason::InvalidClaims, format!("DPoP proof jwk: {err}")))?;
    let claims = jwt::parse_strict_object(&jws.payload).map_err(|_| {
        invalid(
            Reason::MalformedCredential,
            "DPoP proof claims are not a JSON object with unique member names",
        )
    })?;
    let jti = string_claim(&claims, "jti", MAX_JTI_BYTES)?;
    let htm = string_claim(&claims, "htm", 32)?;
    let htu = string_claim(&claims, "htu", MAX_HTU_BYTES)?;
    let issued_at = issued_at(&claims)?;
    if htm != target.method {
        return Err(invalid(
            Reason::CertificateMismatch,
            "DPoP proof htm does not match the request method",
        ));
    }
    if !target.matches_htu(htu) {
        return Err(invalid(
            Reason::CertificateMismatch,
            "DPoP proof htu does not match the request URL",
        ));
    }
    if issued_at > now.saturating_add(rules.leeway) {
        return Err(invalid(
            Reason::NotYetValid,
            "DPoP proof iat is in the future",
        ));
    }
    if issued_at < now.saturating_sub(rules.max_age) {
        return Err(invalid(Reason::Expired, "DPoP proof is too old (iat)"));
    }
    let ath = match claims.get("ath") {
        Some(Value::String(ath)) => ath,
        Some(_) => {
            return Err(invalid(
                Reason::InvalidClaims,
                "DPoP proof ath is not a string",
            ));
        }
        None => {
            return Err(invalid(
                Reason::CertificateMismatch,
                "DPoP proof has no ath (the access token hash)",
            ));
        }
    };
    if *ath != URL_SAFE_NO_PAD.encode(digest(&SHA256, access_token.as_bytes())) {
        return Err(invalid(
            Reason::CertificateMismatch,
            "DPoP proof ath is not the hash of this access token",
        ));
    }
    if thumbprint(jwk).as_deref() != Some(bound) {
        return Err(Denial::dpop(
            Reason::CertificateMismatch,
            false,
            "the DPoP proof key is not the key the token is bound to (cnf.jkt)",
        ));
    }
    if !key.verify(jws.signing_input.as_bytes(), jws.signature) {
        return Err(invalid(
            Reason::InvalidSignature,
            "DPoP proof signature does not verify",
        ));
    }
    let mut remembered = Vec::with_capacity(bound.len() + 1 + jti.len());
    remembered.extend_from_slice(bound.as_bytes());
    remembered.push(0);
    remembered.extend_from_slice(jti.as_bytes());
    let mut identity = [0u8; 32];
    identity.copy_from_slice(digest(&SHA256, &remembered).as_ref());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest(&SHA256, bound.as_bytes()).as_ref()[..16]);
    Ok(Checked {
        identity,
        key,
        issued_at,
    })
}

/// A required non-empty string claim of at most `max` bytes.
fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<&'a str, Denial> {
    match claims.get(name) {
        Some(Value::String(value)) if !value.is_empty() && value.len() <= max => Ok(value),
        Some(Value::String(_)) => Err(invalid(
            Reason::InvalidClaims,
            format!("DPoP proof {name} is empty or longer than {max} bytes"),
        )),
        Some(_) => Err(invalid(
            Reason::InvalidClaims,
            format!("DPoP proof {name} is not a string"),
        )),
        None => Err(invalid(
            Reason::InvalidClaims,
            format!("DPoP proof has no {name}"),
        )),
    }
}

/// `iat` as whole seconds: a JSON number (RFC 7519 NumericDate), not a string.
fn issued_at(claims: &Map<String, Value>) -> Result<i64, Denial> {
    let not_a_date = || invalid(Reason::InvalidClaims, "DPoP proof iat is not a NumericDate");
    match claims.get("iat") {
        Some(Value::Number(number)) => match number.as_i64() {
            Some(seconds) => Ok(seconds),
            None => number
                .as_f64()
                .filter(|seconds| seconds.is_finite() && seconds.abs() < 1e12)
                .map(|seconds| seconds.floor() as i64)
                .ok_or_else(not_a_date),
        },
        Some(_) => Err(not_a_date()),
        None => Err(invalid(Reason::InvalidClaims, "DPoP proof has no iat")),
    }
}

/// The RFC 7638 SHA-256 thumbprint of a public JWK, base64url (what `cnf.jkt` holds).
fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let jwk: Jwk = serde_json::from_value(Value::Object(jwk.clone())).ok()?;
    jwk.thumbprint(ThumbprintHash::SHA256).ok()
}
