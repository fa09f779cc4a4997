//! Authentication, the second phase of a request: the verifier for each kind of credential
//! turns the credential extraction found into a [`Principal`] or a [`Denial`]. JWTs
//! ([`jwt`]), API keys, HTTP Basic, opaque tokens by OAuth2 introspection, and client
//! certificates; [`Verifiers::verify`] is the one place that picks the verifier, and the one
//! place that answers UNSUPPORTED_CREDENTIAL for a kind nothing is configured to verify.
//!
//! RFC 8705 binding of tokens to certificates is a later phase ([`certificate::check_binding`]).

pub mod api_key;
pub mod basic;
pub mod certificate;
pub mod introspection;
pub mod jwt;

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    credentials::{Credential, Presented},
    decision::{CredentialType, Denial, Principal, Reason},
    revocation::Revocations,
};

/// The verifiers of one config generation.
pub struct Verifiers {
    /// Every issuer with JWT keys (empty: none).
    pub jwt: jwt::JwtVerifier,
    pub api_keys: Option<api_key::ApiKeyVerifier>,
    pub basic: Option<basic::BasicVerifier>,
    /// The introspection that receives opaque bearer tokens.
    pub opaque: Option<introspection::Introspector>,
    pub certificates: Option<certificate::CertificateVerifier>,
    /// The JWT denylist (`revocation`), checked after every JWT verification.
    pub revocations: Option<Arc<Revocations>>,
}

impl Verifiers {
    /// Verifies the presented credential. `audience`: an extra audience a token must carry
    /// (`Authenticate.audience`; empty: none), refused for credentials without one.
    pub async fn verify(
        &self,
        presented: &Presented<'_>,
        audience: &str,
    ) -> Result<Arc<Principal>, Denial> {
        let credential = presented.credential.as_ref().map_err(Denial::clone)?;
        match credential {
            Credential::Jwt(token) => {
                if self.jwt.is_empty() {
                    return Err(not_configured("token issuer"));
                }
                let principal = self.jwt.verify(token, audience).await?;
                if let Some(revocations) = &self.revocations {
                    revocations.check(&principal)?;
                }
                Ok(principal)
            }
            Credential::OpaqueToken(token) => match &self.opaque {
                Some(introspector) => introspector.verify(token, audience).await,
                None if self.jwt.is_empty() => Err(not_configured("token issuer")),
                None => Err(Denial::new(
                    Reason::MalformedCredential,
                    "bearer token is not a JWT and no introspection is configured",
                )),
            },
            Credential::ApiKey(key) => {
                let verifier = configured(&self.api_keys, "API key store")?;
                refuse_audience(audience, CredentialType::ApiKey)?;
                verifier.verify(key, presented.client).await
            }
            Credential::Basic { user, password } => {
                let verifier = configured(&self.basic, "Basic credential store")?;
                refuse_audience(audience, CredentialType::Basic)?;
                verifier.verify(user, password, presented.client).await
            }
            Credential::ClientCertificate => {
                refuse_audience(audience, CredentialType::ClientCertificate)?;
                let verifier = configured(&self.certificates, "client certificate CA")?;
                verifier.verify(presented.chain.as_deref().unwrap_or_default())
            }
        }
    }
}

/// The verifier for a kind of credential, or UNSUPPORTED_CREDENTIAL naming what is missing.
fn configured<'v, V>(verifier: &'v Option<V>, what: &str) -> Result<&'v V, Denial> {
    verifier.as_ref().ok_or_else(|| not_configured(what))
}

fn not_configured(what: &str) -> Denial {
    Denial::new(
        Reason::UnsupportedCredential,
        format!("no {what} is configured"),
    )
}

/// `Authenticate.audience` applies to tokens only: for credentials that carry no audience it
/// is refused rather than ignored.
fn refuse_audience(audience: &str, kind: CredentialType) -> Result<(), Denial> {
    if audience.is_empty() {
        return Ok(());
    }
    Err(Denial::new(
        Reason::AudienceMismatch,
        format!(
            "{} credentials carry no audience, so the requested audience cannot be checked",
            kind.as_str()
        ),
    ))
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, time::Duration};

    use super::*;

    fn nothing_configured() -> Verifiers {
        Verifiers {
            jwt: jwt::JwtVerifier::new(
                Vec::new(),
                10,
                1 << 20,
                Duration::from_secs(60),
                Arc::new(crate::telemetry::metrics::Metrics::new(true)),
            ),
            api_keys: None,
            basic: None,
            opaque: None,
            certificates: None,
            revocations: None,
        }
    }

    fn presented(credential: Credential<'_>) -> Presented<'_> {
        Presented {
            scheme: crate::credentials::TokenScheme::Bearer,
            headers: Default::default(),
            credential: Ok(credential),
            chain: None,
            client: None,
            in_query: false,
        }
    }

    #[tokio::test]
    async fn every_kind_nothing_verifies_is_unsupported() {
        let verifiers = nothing_configured();
        let cases = [
            (Credential::Jwt("a.b.c"), "token issuer"),
            (Credential::OpaqueToken("opaque"), "token issuer"),
            (Credential::ApiKey("pcl_x"), "API key store"),
            (
                Credential::Basic {
                    user: Cow::Borrowed("u"),
                    password: Cow::Borrowed("p"),
                },
                "Basic credential store",
            ),
            (Credential::ClientCertificate, "client certificate CA"),
        ];
        for (credential, what) in cases {
            let kind = credential.kind();
            let denial = verifiers
                .verify(&presented(credential), "")
                .await
                .unwrap_err();
            assert_eq!(denial.reason, Reason::UnsupportedCredential, "{kind:?}");
            assert_eq!(denial.message, format!("no {what} is configured"));
        }
    }

    #[tokio::test]
    async fn an_extraction_failure_is_the_answer_and_audiences_are_for_tokens() {
        let verifiers = nothing_configured();
        let failed = Presented {
            credential: Err(Denial::new(Reason::AmbiguousCredential, "two")),
            ..presented(Credential::ClientCertificate)
        };
        assert_eq!(
            verifiers.verify(&failed, "").await.unwrap_err().reason,
            Reason::AmbiguousCredential
        );
        let certificate = presented(Credential::ClientCertificate);
        assert_eq!(
            verifiers
                .verify(&certificate, "api://x")
                .await
                .unwrap_err()
                .reason,
            Reason::AudienceMismatch,
            "refused, not ignored"
        );
    }
}
