//! The vocabulary the configuration shares with the request path, kept in one leaf module so
//! that `config` can validate names without depending on the modules that act on them: the
//! JWS algorithm names, the credential types, the API key prefix rule and network notation.
//! What the names do lives elsewhere (`jwt` gives algorithms their keys, `decision` gives
//! credential types their wire form).

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

/// The JWS algorithms Portcullis verifies. `none` is not among them and never will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Whether the algorithm is an HMAC (a shared secret, not a public key).
    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

impl FromStr for Algorithm {
    type Err = String;

    /// Exact, case-sensitive names (RFC 7515 §4.1.1: `alg` is case-sensitive).
    fn from_str(name: &str) -> Result<Self, String> {
        Algorithm::ALL
            .into_iter()
            .find(|alg| alg.as_str() == name)
            .ok_or_else(|| {
                if name.eq_ignore_ascii_case("none") {
                    "the none algorithm is never allowed".to_owned()
                } else {
                    format!(
                        "unsupported algorithm {name:?}; supported: HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA"
                    )
                }
            })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of credential a principal was proven with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialType {
    Jwt,
    OpaqueToken,
    ApiKey,
    Basic,
    ClientCertificate,
}

impl CredentialType {
    pub const ALL: [CredentialType; 5] = [
        CredentialType::Jwt,
        CredentialType::OpaqueToken,
        CredentialType::ApiKey,
        CredentialType::Basic,
        CredentialType::ClientCertificate,
    ];

    /// The SPEC name, as in the proto enum and the config (`API_KEY`).
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::Jwt => "JWT",
            CredentialType::OpaqueToken => "OPAQUE_TOKEN",
            CredentialType::ApiKey => "API_KEY",
            CredentialType::Basic => "BASIC",
            CredentialType::ClientCertificate => "CLIENT_CERTIFICATE",
        }
    }

    /// Parses a SPEC name such as `API_KEY`.
    pub fn from_name(name: &str) -> Option<Self> {
        CredentialType::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

/// Whether `prefix` is a usable API key prefix: 1 to 16 lower-case ASCII letters or digits.
pub fn valid_api_key_prefix(prefix: &str) -> bool {
    (1..=16).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address (a /32 or /128).
pub fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}
