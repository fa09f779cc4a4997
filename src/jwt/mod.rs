//! JWTs (RFC 7515/7519, RFC 8725): strict compact parsing, key sets, and claim checks. The
//! verifier that routes tokens to their issuer and caches them is `verify::jwt`.

mod claims;
mod json;
mod keys;
mod token;

pub use crate::vocabulary::Algorithm;

pub(crate) use claims::scopes;
pub use claims::{CheckedClaims, ClaimPolicy, Recheck};
pub use json::parse_strict_object;
pub use keys::{
    KeyError, KeyLookup, KeySet, VerifyingKey, has_private_members, hmac_key, pem_key,
    public_jwk_key,
};
pub use token::{
    JwsParts, ParsedToken, TokenError, looks_like_jwt, parse_compact, parse_jws, token_digest,
};

/// The key type an algorithm needs (RFC 7518 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Algorithm {
    pub fn family(self) -> KeyFamily {
        match self {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyFamily::Hmac,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyFamily::Rsa,
            Algorithm::ES256 => KeyFamily::EcP256,
            Algorithm::ES384 => KeyFamily::EcP384,
            Algorithm::EdDSA => KeyFamily::Ed25519,
        }
    }

    /// Smallest HMAC key for this algorithm: the hash output size (RFC 7518 §3.2).
    pub fn min_hmac_key_bytes(self) -> usize {
        match self {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        }
    }

    pub fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Algorithm::HS256 => J::HS256,
            Algorithm::HS384 => J::HS384,
            Algorithm::HS512 => J::HS512,
            Algorithm::RS256 => J::RS256,
            Algorithm::RS384 => J::RS384,
            Algorithm::RS512 => J::RS512,
            Algorithm::PS256 => J::PS256,
            Algorithm::PS384 => J::PS384,
            Algorithm::PS512 => J::PS512,
            Algorithm::ES256 => J::ES256,
            Algorithm::ES384 => J::ES384,
            Algorithm::EdDSA => J::EdDSA,
        }
    }
}
