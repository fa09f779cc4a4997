//! Verification keys and key sets: parsed and checked once when loaded (JWKS documents, PEM
//! files, HMAC secrets), then looked up per token by `kid` and algorithm.
//!
//! Loading follows RFC 7517/7518 and the Wycheproof key-set cases: a document with private
//! key material or duplicate `kid`s is refused whole; keys meant for encryption, with an
//! algorithm Portcullis does not verify, or too weak (RSA < 2048 bits, exponent 1, short HMAC
//! secrets) are left out. Each key is bound to exactly one algorithm (RFC 8725 §3.1).

use std::{collections::HashMap, sync::Arc};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value};

use super::{Algorithm, KeyFamily, json::parse_strict_object};

/// Why key material was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key set document: {0}")]
    InvalidDocument(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("key set has no usable signing key")]
    NoUsableKeys,
}

/// One public key (or HMAC secret) and the single algorithm it verifies.
pub struct VerifyingKey {
    /// Shared with the principals it verifies.
    pub kid: Option<Arc<str>>,
    pub algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Checks `signature_b64` (base64url, as in the token) over `signing_input`.
    pub fn verify(&self, signing_input: &[u8], signature_b64: &str) -> bool {
        jsonwebtoken::crypto::verify(
            signature_b64,
            signing_input,
            &self.key,
            self.algorithm.to_jsonwebtoken(),
        )
        .unwrap_or(false)
    }
}

/// The outcome of looking a token's key up.
#[derive(Debug)]
pub enum KeyLookup<'a> {
    Found(&'a Arc<VerifyingKey>),
    /// The key exists but is bound to another algorithm.
    WrongAlgorithm,
    NotFound,
    /// No `kid` in the token and more than one key could have signed it.
    Ambiguous,
}

/// An immutable set of keys, replaced whole when a new document is loaded.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<Arc<str>, Arc<VerifyingKey>>,
    without_kid: Vec<Arc<VerifyingKey>>,
}

impl KeySet {
    pub fn from_keys(keys: Vec<VerifyingKey>) -> Result<Self, KeyError> {
        let mut set = KeySet::default();
        for key in keys {
            let key = Arc::new(key);
            match &key.kid {
                Some(kid) => {
                    if set.by_kid.insert(kid.clone(), key.clone()).is_some() {
                        return Err(KeyError::InvalidDocument(
                            "two keys share one kid".to_owned(),
                        ));
                    }
                }
                None => set.without_kid.push(key),
            }
        }
        if set.is_empty() {
            return Err(KeyError::NoUsableKeys);
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finds the key for a token's `kid` and `alg`. A token without `kid` is accepted only when
    /// exactly one key could have signed it; a `kid` that is not in the set falls back to a
    /// single kid-less key (static keys configured without one).
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup<'_> {
        if let Some(kid) = kid
            && let Some(key) = self.by_kid.get(kid)
        {
            return if key.algorithm == alg {
                KeyLookup::Found(key)
            } else {
                KeyLookup::WrongAlgorithm
            };
        }
        let candidates: &mut dyn Iterator<Item = &Arc<VerifyingKey>> = if kid.is_some() {
            &mut self.without_kid.iter()
        } else {
            &mut self.by_kid.values().chain(self.without_kid.iter())
        };
        let mut found = None;
        let mut any = false;
        for key in candidates {
            any = true;
            if key.algorithm == alg {
                if found.is_some() {
                    return KeyLookup::Ambiguous;
                }
                found = Some(key);
            }
        }
        match (found, any) {
            (Some(key), _) => KeyLookup::Found(key),
            (None, true) if kid.is_none() || self.by_kid.is_empty() => KeyLookup::WrongAlgorithm,
            _ => KeyLookup::NotFound,
        }
    }

    /// Whether `key` (from an earlier lookup) is still a member of this set.
    pub fn contains(&self, key: &Arc<VerifyingKey>) -> bool {
        match &key.kid {
            Some(kid) => self.by_kid.get(&**kid).is_some_and(|k| Arc::ptr_eq(k, key)),
            None => self.without_kid.iter().any(|k| Arc::ptr_eq(k, key)),
        }
    }

    /// Parses a JWKS document. `allowed` is the issuer's algorithm allow-list (empty: each
    /// key's type implies its algorithm); `symmetric` admits `oct` keys (never for documents
    /// fetched over the network).
    pub fn from_jwks(
        bytes: &[u8],
        allowed: &[Algorithm],
        symmetric: bool,
    ) -> Result<Self, KeyError> {
        let document = parse_strict_object(bytes).map_err(KeyError::InvalidDocument)?;
        let Some(Value::Array(entries)) = document.get("keys") else {
            return Err(KeyError::InvalidDocument("no \"keys\" array".to_owned()));
        };
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Object(jwk) = entry else {
                return Err(KeyError::InvalidDocument(
                    "a key is not an object".to_owned(),
                ));
            };
            if has_private_members(jwk, symmetric)
                || (jwk.get("kty").and_then(Value::as_str) == Some("oct") && !symmetric)
            {
                return Err(KeyError::InvalidDocument(
                    "the key set contains private or symmetric key material".to_owned(),
                ));
            }
            match jwk_to_key(jwk, allowed) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "skipping a key in the key set"),
            }
        }
        KeySet::from_keys(keys)
    }
}

/// JWK members that only private keys have (RFC 7518 §6.2.2, §6.3.2).
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// Whether a JWK carries private key material, or a symmetric key (`k`, RFC 7518 §6.4)
/// when `symmetric` is false.
pub fn has_private_members(jwk: &Map<String, Value>, symmetric: bool) -> bool {
    PRIVATE_MEMBERS
        .iter()
        .any(|member| jwk.contains_key(*member))
        || (!symmetric && jwk.contains_key("k"))
}

/// A public JWK sent with a signed object (a DPoP proof's `jwk` header, RFC 9449 §4.2) as
/// the key for `alg`: public members only, a signing key of the type `alg` needs, and the
/// same strength rules as configured keys (RSA of 2048 bits or more).
pub fn public_jwk_key(jwk: &Map<String, Value>, alg: Algorithm) -> Result<VerifyingKey, KeyError> {
    if has_private_members(jwk, false) {
        return Err(KeyError::InvalidKey(
            "the key has private or symmetric key material".to_owned(),
        ));
    }
    match jwk_to_key(jwk, &[alg])? {
        Some(key) if key.algorithm == alg && !alg.is_hmac() => Ok(key),
        _ => Err(KeyError::InvalidKey(format!(
            "not a public signing key for {alg}"
        ))),
    }
}

/// The one algorithm a key without a declared `alg` is bound to: the first allowed
/// algorithm of its family, or the family's default when no allow-list is configured.
fn implied_algorithm(family: KeyFamily, allowed: &[Algorithm]) -> Option<Algorithm> {
    if allowed.is_empty() {
        return Some(match family {
            KeyFamily::Hmac => Algorithm::HS256,
            KeyFamily::Rsa => Algorithm::RS256,
            KeyFamily::EcP256 => Algorithm::ES256,
            KeyFamily::EcP384 => Algorithm::ES384,
            KeyFamily::Ed25519 => Algorithm::EdDSA,
        });
    }
    allowed.iter().copied().find(|alg| alg.family() == family)
}

fn bind_algorithm(
    declared: Option<&str>,
    family: KeyFamily,
    allowed: &[Algorithm],
) -> Result<Option<Algorithm>, KeyError> {
    let Some(name) = declared else {
        return Ok(implied_algorithm(family, allowed));
    };
    let Ok(alg) = name.parse::<Algorithm>() else {
        return Ok(None); // an algorithm we do not verify (e.g. RSA-OAEP): not a signing key
    };
    if alg.family() != family {
        return Err(KeyError::InvalidKey(format!(
            "alg {alg} does not match the key type"
        )));
    }
    Ok((allowed.is_empty() || allowed.contains(&alg)).then_some(alg))
}

fn member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, KeyError> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| KeyError::InvalidKey(format!("missing or non-string \"{name}\"")))
}

fn b64_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, KeyError> {
    URL_SAFE_NO_PAD
        .decode(member(jwk, name)?)
        .map_err(|_| KeyError::InvalidKey(format!("\"{name}\" is not base64url")))
}

fn jwk_to_key(
    jwk: &Map<String, Value>,
    allowed: &[Algorithm],
) -> Result<Option<VerifyingKey>, KeyError> {
    if let Some(usage) = jwk.get("use")
        && usage.as_str() != Some("sig")
    {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Ok(None);
        }
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(KeyError::InvalidKey("\"kid\" is not a string".to_owned())),
    };
    let declared = match jwk.get("alg") {
        None => None,
        Some(Value::String(alg)) => Some(alg.as_str()),
        Some(_) => return Err(KeyError::InvalidKey("\"alg\" is not a string".to_owned())),
    };
    let (family, key) = match member(jwk, "kty")? {
        "RSA" => {
            let n = b64_member(jwk, "n")?;
            let e = b64_member(jwk, "e")?;
            check_rsa(&n, &e)?;
            (KeyFamily::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            let (family, size) = match member(jwk, "crv")? {
                "P-256" => (KeyFamily::EcP256, 32),
                "P-384" => (KeyFamily::EcP384, 48),
                _ => return Ok(None),
            };
            let x = b64_member(jwk, "x")?;
            let y = b64_member(jwk, "y")?;
            if x.len() != size || y.len() != size {
                return Err(KeyError::InvalidKey(
                    "EC coordinates have the wrong length".to_owned(),
                ));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (family, DecodingKey::from_ec_der(&point))
        }
        "OKP" => {
            if member(jwk, "crv")? != "Ed25519" {
                return Ok(None);
            }
            let x = b64_member(jwk, "x")?;
            if x.len() != 32 {
                return Err(KeyError::InvalidKey(
                    "Ed25519 key must be 32 bytes".to_owned(),
                ));
            }
            (KeyFamily::Ed25519, DecodingKey::from_ed_der(&x))
        }
        "oct" => {
            let secret = b64_member(jwk, "k")?;
            let Some(algorithm) = bind_algorithm(declared, KeyFamily::Hmac, allowed)? else {
                return Ok(None);
            };
            return hmac_key(kid, &secret, algorithm).map(Some);
        }
        _ => return Ok(None),
    };
    Ok(
        bind_algorithm(declared, family, allowed)?.map(|algorithm| VerifyingKey {
            kid: kid.map(Arc::from),
            algorithm,
            key,
        }),
    )
}

fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), KeyError> {
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    if n.len() * 8 < 2048 {
        return Err(KeyError::InvalidKey(
            "RSA modulus shorter than 2048 bits".to_owned(),
        ));
    }
    if e.is_empty() || e.len() > 8 || e == [1] || e.last().is_some_and(|b| b & 1 == 0) {
        return Err(KeyError::InvalidKey(
            "RSA exponent must be odd and greater than 1".to_owned(),
        ));
    }
    Ok(())
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// An HMAC key, refused when shorter than the algorithm's hash output (RFC 7518 §3.2).
pub fn hmac_key(
    kid: Option<String>,
    secret: &[u8],
    algorithm: Algorithm,
) -> Result<VerifyingKey, KeyError> {
    if !algorithm.is_hmac() {
        return Err(KeyError::InvalidKey(format!(
            "{algorithm} is not an HMAC algorithm"
        )));
    }
    let min = algorithm.min_hmac_key_bytes();
    if secret.len() < min {
        return Err(KeyError::InvalidKey(format!(
            "HMAC secret for {algorithm} must be at least {min} bytes"
        )));
    }
    Ok(VerifyingKey {
        kid: kid.map(Arc::from),
        algorithm,
        key: DecodingKey::from_secret(secret),
    })
}

/// A PEM public key (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`). Private keys are refused.
pub fn pem_key(
    pem: &[u8],
    kid: Option<String>,
    declared: Option<Algorithm>,
    allowed: &[Algorithm],
) -> Result<VerifyingKey, KeyError> {
    let text =
        std::str::from_utf8(pem).map_err(|_| KeyError::InvalidKey("PEM is not text".to_owned()))?;
    if text.contains("PRIVATE KEY") {
        return Err(KeyError::InvalidKey(
            "this is a private key; configure the public key only".to_owned(),
        ));
    }
    let (family, key) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        let der = key
            .try_get_as_bytes()
            .map_err(|_| KeyError::InvalidKey("bad RSA key".to_owned()))?;
        let public = aws_lc_rs::rsa::PublicKey::from_der(der)
            .map_err(|_| KeyError::InvalidKey("bad RSA public key".to_owned()))?;
        if public.modulus_len() * 8 < 2048 {
            return Err(KeyError::InvalidKey(
                "RSA modulus shorter than 2048 bits".to_owned(),
            ));
        }
        (KeyFamily::Rsa, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        let point_len = key.try_get_as_bytes().map(<[u8]>::len).unwrap_or(0);
        let family = match point_len {
            65 => KeyFamily::EcP256,
            97 => KeyFamily::EcP384,
            _ => {
                return Err(KeyError::InvalidKey(
                    "unsupported EC curve (P-256 and P-384 only)".to_owned(),
                ));
            }
        };
        (family, key)
    } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        (KeyFamily::Ed25519, key)
    } else {
        return Err(KeyError::InvalidKey(
            "not an RSA, EC or Ed25519 public key in PEM".to_owned(),
        ));
    };
    let algorithm = match declared {
        Some(alg) if alg.family() != family => {
            return Err(KeyError::InvalidKey(format!(
                "algorithm {alg} does not match the key type"
            )));
        }
        Some(alg) => Some(alg),
        None => implied_algorithm(family, allowed),
    }
    .filter(|alg| allowed.is_empty() || allowed.contains(alg))
    .ok_or_else(|| KeyError::InvalidKey("no allowed algorithm fits this key type".to_owned()))?;
    Ok(VerifyingKey {
        kid: kid.map(Arc::from),
        algorithm,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_JWK: &str = r#"{"kty":"RSA","kid":"r1","alg":"RS256","use":"sig","e":"AQAB","n":"kqGboBfAWttWPCA-0cGRgsY6SaYoIARt0B_PkaEcIq9HPYNdu9n6UuWHuuTHrjF_ZoQW97r5HaAorNvrMEGTGdxCHZdEtkHvNVVmrtxTBLiQCbCozXhFoIrVcr3qUBrdGnNn_M3jJi7Wg7p_-x62nS5gNG875oyheRkutHsQXikFZwsN3q_TsPNOVlCiHy8mxzaFTUQGm-X8UYexFyAivlDSjgDJLAZSWfxd7k9Gxuwa3AUfQqQcVcegmgKGCaErQ3qQbh1x7WB6iopE3_-GZ8HMAVtR9AmrVscqYsnjhaCehfAI0iKKs8zXr8tISc0ORbaalrkk03H1ZrsEnDKEWQ"}"#;

    #[test]
    fn a_key_is_bound_to_one_algorithm() {
        let doc = format!(r#"{{"keys":[{RSA_JWK}]}}"#);
        let set = KeySet::from_jwks(doc.as_bytes(), &[], false).unwrap();
        assert!(matches!(
            set.find(Some("r1"), Algorithm::RS256),
            KeyLookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("r1"), Algorithm::PS256),
            KeyLookup::WrongAlgorithm
        ));
        assert!(matches!(
            set.find(Some("zz"), Algorithm::RS256),
            KeyLookup::NotFound
        ));
        assert!(matches!(
            set.find(None, Algorithm::RS256),
            KeyLookup::Found(_)
        ));
    }

    #[test]
    fn a_jwks_file_may_hold_hmac_keys_a_sent_jwk_may_not() {
        let oct = r#"{"kty":"oct","kid":"h1","alg":"HS256","k":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}"#;
        let doc = format!(r#"{{"keys":[{oct}]}}"#);
        let set = KeySet::from_jwks(doc.as_bytes(), &[], true).expect("a local file");
        assert!(matches!(
            set.find(Some("h1"), Algorithm::HS256),
            KeyLookup::Found(_)
        ));
        assert!(KeySet::from_jwks(doc.as_bytes(), &[], false).is_err());
        let Value::Object(jwk) = serde_json::from_str(oct).unwrap() else {
            unreachable!()
        };
        assert!(public_jwk_key(&jwk, Algorithm::HS256).is_err());
        let Value::Object(rsa) = serde_json::from_str(RSA_JWK).unwrap() else {
            unreachable!()
        };
        assert!(public_jwk_key(&rsa, Algorithm::RS256).is_ok());
        assert!(public_jwk_key(&rsa, Algorithm::ES256).is_err());
    }

    #[test]
    fn refuses_private_duplicate_and_symmetric_documents() {
        let private = RSA_JWK.replace("\"e\":", "\"d\":\"AQAB\",\"e\":");
        for doc in [
            format!(r#"{{"keys":[{private}]}}"#),
            format!(r#"{{"keys":[{RSA_JWK},{RSA_JWK}]}}"#),
            r#"{"keys":[{"kty":"oct","k":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}]}"#
                .to_owned(),
            r#"{"keys":[]}"#.to_owned(),
            r#"{"nokeys":1}"#.to_owned(),
        ] {
            assert!(
                KeySet::from_jwks(doc.as_bytes(), &[], false).is_err(),
                "{doc}"
            );
        }
    }

    #[test]
    fn weak_keys_are_left_out() {
        let short = r#"{"kty":"RSA","kid":"s","e":"AQAB","n":"rJBIp6T1YK-RtPyvYqFFlcucqewSAA_IReSFchE8qyiQrbARqRlXWkB2DR8j_pJQnIpYELbQWZC5Cd0PTGAU8rMbar2AW6zpmBbi7aQf17lUBdt8XI9M9rq7FPVQ1dDdUXm1SVH_9qqWhvMPR422SbfHBEzCAtzK0ANDRo6qz78"}"#;
        let exponent_one = RSA_JWK.replace("\"AQAB\"", "\"AQ\"");
        for jwk in [short.to_owned(), exponent_one] {
            let doc = format!(r#"{{"keys":[{jwk}]}}"#);
            assert_eq!(
                KeySet::from_jwks(doc.as_bytes(), &[], false).unwrap_err(),
                KeyError::NoUsableKeys
            );
        }
        assert!(hmac_key(None, &[7; 31], Algorithm::HS256).is_err());
        assert!(hmac_key(None, &[7; 32], Algorithm::HS384).is_err());
        assert!(hmac_key(None, &[7; 48], Algorithm::HS384).is_ok());
    }
}
