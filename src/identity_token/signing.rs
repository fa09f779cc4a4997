//! Identity token signing keys: PKCS#8 PEM private keys (Ed25519 signs EdDSA, P-256 signs
//! ES256) parsed once into aws-lc-rs key pairs, each named by the RFC 7638 thumbprint of its
//! public JWK (`kid`), which is what the JWKS publishes.
//!
//! `jsonwebtoken::encode` parses its key on every call, and its signers are not `Send`, so
//! the compact JWS is assembled here around a signer kept for the pipeline's life; the JWK
//! types and the thumbprint are jsonwebtoken's.

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm,
    jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
        EllipticCurveKeyType, Jwk, KeyAlgorithm, OctetKeyPairParameters, OctetKeyPairType,
        PublicKeyUse, ThumbprintHash,
    },
};
use rustls_pki_types::{PrivatePkcs8KeyDer, pem::PemObject};

/// A private key of a type identity tokens are signed with.
enum KeyPairKind {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

/// One signing key: its key pair, public JWK (with its `kid`) and the token header it
/// signs under.
pub struct SigningKey {
    pair: KeyPairKind,
    jwk: Jwk,
    /// The base64url protected header (`alg`, `kid`, `typ`), the same for every token.
    encoded_header: String,
}

/// Why a configured key cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PKCS#8 PEM private key (BEGIN PRIVATE KEY)")]
    NotPkcs8,
    #[error("neither an Ed25519 nor a P-256 private key")]
    UnsupportedKey,
    #[error("its JWK thumbprint could not be computed")]
    Thumbprint,
}

/// Signing failed inside the crypto provider (not expected with a key that parsed).
#[derive(Debug, thiserror::Error)]
#[error("the identity token could not be signed")]
pub struct SignError;

impl SigningKey {
    /// Parses a PKCS#8 PEM private key; the algorithm follows from its type.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| KeyError::NotPkcs8)?;
        let der = der.secret_pkcs8_der();
        let (pair, algorithm, parameters) = if let Ok(pair) = Ed25519KeyPair::from_pkcs8(der) {
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            let parameters = AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x,
            });
            (KeyPairKind::Ed25519(pair), Algorithm::EdDSA, parameters)
        } else if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
            // An uncompressed P-256 point: 0x04, then x and y, 32 bytes each.
            let point = pair.public_key().as_ref();
            if point.len() != 65 {
                return Err(KeyError::UnsupportedKey);
            }
            let parameters = AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: URL_SAFE_NO_PAD.encode(&point[1..33]),
                y: URL_SAFE_NO_PAD.encode(&point[33..]),
            });
            (KeyPairKind::P256(pair), Algorithm::ES256, parameters)
        } else {
            return Err(KeyError::UnsupportedKey);
        };
        let mut jwk = Jwk {
            common: CommonParameters::default(),
            algorithm: parameters,
        };
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| KeyError::Thumbprint)?;
        jwk.common = CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(match algorithm {
                Algorithm::EdDSA => KeyAlgorithm::EdDSA,
                _ => KeyAlgorithm::ES256,
            }),
            key_id: Some(kid.clone()),
            ..CommonParameters::default()
        };
        let header = serde_json::json!({"alg": algorithm, "kid": kid, "typ": "JWT"});
        Ok(Self {
            pair,
            encoded_header: URL_SAFE_NO_PAD.encode(header.to_string()),
            jwk,
        })
    }

    #[cfg(test)]
    pub fn kid(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap_or_default()
    }

    /// The JWS `alg` this key signs with.
    #[cfg(test)]
    pub fn algorithm(&self) -> Algorithm {
        match self.pair {
            KeyPairKind::Ed25519(_) => Algorithm::EdDSA,
            KeyPairKind::P256(_) => Algorithm::ES256,
        }
    }

    /// The public key as the JWKS publishes it.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The compact JWS of `payload` (JSON) under this key.
    pub fn sign(&self, payload: &[u8]) -> Result<String, SignError> {
        let encoded_payload_len = payload.len().div_ceil(3) * 4;
        let mut token = String::with_capacity(self.encoded_header.len() + encoded_payload_len + 90);
        token.push_str(&self.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = match &self.pair {
            KeyPairKind::Ed25519(pair) => pair.sign(token.as_bytes()).as_ref().to_vec(),
            KeyPairKind::P256(pair) => pair
                .sign(&SystemRandom::new(), token.as_bytes())
                .map_err(|_| SignError)?
                .as_ref()
                .to_vec(),
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation, decode};

    use super::*;

    /// Throwaway test keys (the same as `tests/testdata/identity/*.pem`).
    const ED25519: &str = include_str!("../../tests/testdata/identity/ed25519-a.pem");
    const P256: &str = include_str!("../../tests/testdata/identity/p256-a.pem");

    fn verifies(key: &SigningKey) {
        let payload = br#"{"sub":"alice","aud":"orders","exp":4102444800}"#;
        let token = key.sign(payload).expect("signs");
        let decoding = DecodingKey::from_jwk(key.jwk()).expect("a usable JWK");
        let mut validation = Validation::new(key.algorithm());
        validation.set_audience(&["orders"]);
        let data = decode::<serde_json::Value>(&token, &decoding, &validation).expect("verifies");
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.header.kid.as_deref(), Some(key.kid()));
        assert_eq!(data.header.typ.as_deref(), Some("JWT"));
    }

    #[test]
    fn ed25519_keys_sign_eddsa_tokens_their_jwk_verifies() {
        let key = SigningKey::from_pem(ED25519.as_bytes()).expect("an Ed25519 key");
        assert_eq!(key.algorithm(), Algorithm::EdDSA);
        verifies(&key);
    }

    #[test]
    fn p256_keys_sign_es256_tokens_their_jwk_verifies() {
        let key = SigningKey::from_pem(P256.as_bytes()).expect("a P-256 key");
        assert_eq!(key.algorithm(), Algorithm::ES256);
        verifies(&key);
    }

    #[test]
    fn the_kid_is_the_rfc7638_thumbprint_and_stable() {
        let one = SigningKey::from_pem(ED25519.as_bytes()).expect("parses");
        let two = SigningKey::from_pem(ED25519.as_bytes()).expect("parses");
        assert_eq!(one.kid(), two.kid());
        assert_eq!(
            one.kid(),
            one.jwk()
                .thumbprint(ThumbprintHash::SHA256)
                .expect("thumbprint")
        );
        let other = SigningKey::from_pem(P256.as_bytes()).expect("parses");
        assert_ne!(one.kid(), other.kid());
    }

    #[test]
    fn public_keys_rsa_keys_and_garbage_are_refused() {
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            SigningKey::from_pem(public.as_bytes()),
            Err(KeyError::NotPkcs8)
        ));
        assert!(matches!(
            SigningKey::from_pem(b"not a key"),
            Err(KeyError::NotPkcs8)
        ));
        let rsa = include_str!("../../tests/testdata/identity/rsa.pem");
        assert!(matches!(
            SigningKey::from_pem(rsa.as_bytes()),
            Err(KeyError::UnsupportedKey)
        ));
    }
}
