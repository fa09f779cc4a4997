//! Throwaway signing keys for Portcullis' tests and benchmarks: a key pair per algorithm,
//! generated per run (nothing committed), its public JWK and SPKI PEM, token minting
//! (including hand-made hostile headers and payloads), and standard claims.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{
    encoding::AsDer,
    rsa::KeySize,
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair,
    },
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A throwaway key pair made for this test run.
pub struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    /// The public JWK (or the secret JWK for HMAC), with kid and alg.
    pub jwk: Value,
    /// SPKI PEM of the public key (empty for HMAC).
    pub public_pem: String,
    /// Raw HMAC secret (empty for asymmetric keys).
    pub secret: Vec<u8>,
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// SPKI DER for an EC point or Ed25519 key, built from the fixed prefixes of RFC 5480/8410.
fn spki(prefix_hex: &str, key: &[u8]) -> Vec<u8> {
    let mut der: Vec<u8> = (0..prefix_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&prefix_hex[i..i + 2], 16).unwrap())
        .collect();
    der.extend_from_slice(key);
    der
}

impl TestKey {
    pub fn new(alg: Algorithm, kid: &str) -> Self {
        let kid = kid.to_owned();
        let alg_name = format!("{alg:?}");
        match alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                let (signing, crv, size, prefix) = if alg == Algorithm::ES256 {
                    (
                        &ECDSA_P256_SHA256_FIXED_SIGNING,
                        "P-256",
                        32,
                        "3059301306072a8648ce3d020106082a8648ce3d030107034200",
                    )
                } else {
                    (
                        &ECDSA_P384_SHA384_FIXED_SIGNING,
                        "P-384",
                        48,
                        "3076301006072a8648ce3d020106052b81040022036200",
                    )
                };
                let pair = EcdsaKeyPair::generate(signing).unwrap();
                let point = pair.public_key().as_ref().to_vec();
                let pkcs8 = pair.to_pkcs8v1().unwrap();
                TestKey {
                    alg,
                    jwk: json!({"kty": "EC", "crv": crv, "kid": kid, "alg": alg_name, "use": "sig",
                        "x": b64(&point[1..1 + size]), "y": b64(&point[1 + size..])}),
                    public_pem: pem("PUBLIC KEY", &spki(prefix, &point)),
                    encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
                    kid,
                    secret: Vec::new(),
                }
            }
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::generate().unwrap();
                let public = pair.public_key().as_ref().to_vec();
                let pkcs8 = pair.to_pkcs8v1().unwrap();
                TestKey {
                    alg,
                    jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "x": b64(&public)}),
                    public_pem: pem("PUBLIC KEY", &spki("302a300506032b6570032100", &public)),
                    encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
                    kid,
                    secret: Vec::new(),
                }
            }
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let len = match alg {
                    Algorithm::HS256 => 32,
                    Algorithm::HS384 => 48,
                    _ => 64,
                };
                let secret: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(kid.len() as u8))
                    .collect();
                TestKey {
                    alg,
                    jwk: json!({"kty": "oct", "kid": kid, "alg": alg_name, "k": b64(&secret)}),
                    public_pem: String::new(),
                    encoding: EncodingKey::from_secret(&secret),
                    kid,
                    secret,
                }
            }
            _ => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
                let public = pair.public_key();
                let components = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(public);
                let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&pair).unwrap();
                let spki_der =
                    AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(public).unwrap();
                TestKey {
                    alg,
                    jwk: json!({"kty": "RSA", "kid": kid, "alg": alg_name, "use": "sig",
                        "n": b64(&components.n), "e": b64(&components.e)}),
                    public_pem: pem("PUBLIC KEY", spki_der.as_ref()),
                    encoding: EncodingKey::from_rsa_pem(
                        pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes(),
                    )
                    .unwrap(),
                    kid,
                    secret: Vec::new(),
                }
            }
        }
    }

    /// Signs `claims` with a standard header (alg, kid, typ JWT).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_raw(
            &json!({"alg": format!("{:?}", self.alg), "kid": self.kid, "typ": "JWT"}).to_string(),
            &claims.to_string(),
        )
    }

    /// Signs arbitrary header and payload text with this key's algorithm.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, self.alg).unwrap();
        format!("{input}.{signature}")
    }
}

/// A DPoP client's key (RFC 9449): proofs signed with it, and the thumbprint a token bound
/// to it carries in `cnf.jkt`. Written here from the RFCs, apart from the code under test.
impl TestKey {
    /// The public JWK with only the members RFC 7638 hashes.
    pub fn public_jwk(&self) -> Value {
        let jwk = &self.jwk;
        match jwk["kty"].as_str() {
            Some("EC") => json!({"kty": "EC", "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]}),
            Some("OKP") => json!({"kty": "OKP", "crv": jwk["crv"], "x": jwk["x"]}),
            Some("RSA") => json!({"kty": "RSA", "n": jwk["n"], "e": jwk["e"]}),
            _ => jwk.clone(),
        }
    }

    /// The RFC 7638 SHA-256 thumbprint of the public key, base64url.
    pub fn thumbprint(&self) -> String {
        let jwk = &self.jwk;
        let s = |name: &str| jwk[name].as_str().unwrap_or_default().to_owned();
        let canonical = match jwk["kty"].as_str() {
            Some("EC") => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                s("crv"),
                s("x"),
                s("y")
            ),
            Some("OKP") => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv"), s("x")),
            Some("RSA") => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n")),
            other => panic!("no thumbprint for kty {other:?}"),
        };
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// A DPoP proof for `htm` `htu` and `access_token`, with this `jti` and `iat`.
    pub fn dpop_proof(
        &self,
        htm: &str,
        htu: &str,
        access_token: &str,
        jti: &str,
        iat: i64,
    ) -> String {
        let header =
            json!({"typ": "dpop+jwt", "alg": format!("{:?}", self.alg), "jwk": self.public_jwk()});
        let claims =
            json!({"jti": jti, "htm": htm, "htu": htu, "iat": iat, "ath": ath(access_token)});
        self.sign_raw(&header.to_string(), &claims.to_string())
    }
}

/// `ath`: base64url of the SHA-256 of an access token (RFC 9449 §4.2).
pub fn ath(access_token: &str) -> String {
    b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes()).as_ref())
}

/// A JWKS document of these keys' public parts.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

/// Standard valid claims for `iss`/`aud`, expiring in an hour.
pub fn claims(iss: &str, aud: &str) -> Value {
    let now = now();
    json!({"iss": iss, "aud": aud, "sub": "alice", "iat": now, "exp": now + 3600, "scope": "orders:read orders:write"})
}

/// The quickstart issuer's throwaway signing key from `examples/keys` (see
/// `examples/quickstart.yaml`), read once.
pub struct QuickstartSigner {
    key: EncodingKey,
    header: jsonwebtoken::Header,
}

impl QuickstartSigner {
    pub fn new() -> Self {
        let key = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/keys/quickstart-es256.key.pem"
        ))
        .expect("the quickstart key is in the repository");
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some("quickstart-es256".to_owned());
        Self {
            key: EncodingKey::from_ec_pem(&key).expect("a PEM EC key"),
            header,
        }
    }

    /// A quickstart token for `subject` with this `scope` and `jti`, valid for an hour.
    pub fn token(&self, subject: &str, scope: &str, jti: &str) -> String {
        self.token_with(subject, scope, jti, json!({}))
    }

    /// Like [`QuickstartSigner::token`], with `extra` claims added (`cnf`, ...).
    pub fn token_with(&self, subject: &str, scope: &str, jti: &str, extra: Value) -> String {
        let now = now();
        let mut claims = json!({
            "iss": "https://quickstart.portcullis.invalid", "aud": "api://quickstart",
            "sub": subject, "email": format!("{subject}@example.com"), "scope": scope,
            "iat": now, "exp": now + 3600, "jti": jti,
        });
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        jsonwebtoken::encode(&self.header, &claims, &self.key).expect("signs")
    }
}

impl Default for QuickstartSigner {
    fn default() -> Self {
        Self::new()
    }
}

/// A token for the quickstart issuer: subject `alice`, audience `api://quickstart`, this
/// `scope`, valid for an hour.
pub fn quickstart_token(scope: &str) -> String {
    QuickstartSigner::new().token("alice", scope, "quickstart")
}
