//! The one path every request takes: extract the credential, verify it, check what the
//! request requires, and return a [`Decision`]. Surfaces only translate to and from it.
//!
//! A `Pipeline` is built from one validated config and is immutable; a config reload builds a
//! new one (reusing remote key sources whose settings did not change) and swaps it in.

use std::{borrow::Cow, collections::HashMap, sync::Arc};

use rustls_pki_types::CertificateDer;

use crate::{
    config::{Config, ConfigError, ConfigErrors, IssuerConfig, PublicKeyFile},
    credentials::{self, Extracted},
    decision::{CredentialType, Decision, Denial, Principal, Reason, Scheme},
    jwt::{self, Algorithm, ClaimPolicy, IssuerVerifier, JwtVerifier, KeySet},
    keys::{KeySource, RemoteKeySource, jwks::Location},
    pb,
    verify::{
        api_key::ApiKeyVerifier,
        basic::{self, BasicVerifier},
        certificate::{self, CertificateVerifier},
        introspection::Introspector,
    },
};

/// Largest `client_certificate_pem` accepted (a certificate chain), in bytes.
const MAX_CERTIFICATE_PEM_BYTES: usize = 64 * 1024;

/// One request, as every surface hands it to the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttrs<'a> {
    pub credential: Option<&'a pb::Credential>,
    pub headers: &'a HashMap<String, String>,
    /// Extra audience the token must carry (empty: none).
    pub audience: &'a str,
    pub required_scopes: &'a [String],
    /// `client_certificate_pem` from the request (empty: none).
    pub client_certificate_pem: &'a str,
    /// The chain the TLS peer presented, leaf first (empty: none or no mTLS).
    pub peer_certificates: &'a [CertificateDer<'static>],
}

/// Verification and decision for one config generation.
pub struct Pipeline {
    pub config: Arc<Config>,
    jwt: JwtVerifier,
    api_keys: Option<ApiKeyVerifier>,
    basic: Option<BasicVerifier>,
    /// The introspection that receives opaque bearer tokens.
    opaque: Option<Introspector>,
    certificates: Option<CertificateVerifier>,
}

/// Whether building may fetch from the network and start background tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    /// For serving: remote sources start refreshing.
    Serve,
    /// For `check-config`: static key material is loaded and checked, nothing is fetched.
    Check,
}

impl Pipeline {
    /// Builds the pipeline, loading static key material. `previous` lends remote key sources
    /// whose location and settings are unchanged, so a reload does not refetch them.
    pub fn build(
        config: Config,
        client: &reqwest::Client,
        previous: Option<&Pipeline>,
        mode: BuildMode,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut issuers = Vec::with_capacity(config.issuers.len());
        for (i, issuer) in config.issuers.iter().enumerate() {
            let path = format!("issuers[{i}]");
            if !has_key_source(issuer) {
                continue; // introspection only
            }
            match build_issuer(issuer, client, previous, mode) {
                Ok(built) => issuers.push(built),
                Err(message) => errors.push(ConfigError { path, message }),
            }
        }
        let built = crate::verify::build::build_verifiers(
            &config,
            client,
            previous.and_then(|p| p.api_keys.as_ref()),
            mode,
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let jwt = JwtVerifier::new(issuers, config.cache.max_entries, config.cache.max_ttl);
        Ok(Self {
            config: Arc::new(config),
            jwt,
            api_keys: built.api_keys,
            basic: built.basic,
            opaque: built.opaque,
            certificates: built.certificates,
        })
    }

    /// The realm for a denial's challenge: `basic.realm` for Basic challenges.
    pub fn realm_for(&self, denial: &Denial) -> &str {
        match (denial.scheme, &self.config.basic.realm) {
            (Scheme::Basic, Some(realm)) => realm,
            _ => self.realm(),
        }
    }

    /// Readiness of key stores that load asynchronously (PostgreSQL's change listener).
    pub fn store_readiness(&self) -> Vec<tokio::sync::watch::Receiver<bool>> {
        self.api_keys
            .iter()
            .filter_map(|keys| keys.postgres.as_ref())
            .map(|store| store.ready())
            .collect()
    }

    /// The introspection for opaque tokens, if any (for metrics and tests).
    pub fn opaque_introspector(&self) -> Option<&Introspector> {
        self.opaque.as_ref()
    }

    /// Remote key sources, for readiness and metrics.
    pub fn remote_sources(&self) -> impl Iterator<Item = &Arc<RemoteKeySource>> {
        self.jwt.issuers().filter_map(|issuer| match &issuer.keys {
            KeySource::Remote(remote) => Some(remote),
            KeySource::Static(_) => None,
        })
    }

    pub fn jwt(&self) -> &JwtVerifier {
        &self.jwt
    }

    pub fn realm(&self) -> &str {
        &self.config.response.realm
    }

    /// Verifies the request's credential. Without any other credential, a presented client
    /// certificate is the credential; with a token, it is what RFC 8705 binds the token to.
    pub async fn authenticate(&self, attrs: RequestAttrs<'_>) -> Result<Arc<Principal>, Denial> {
        let chain = presented_chain(&attrs)?;
        let credential =
            match credentials::extract(attrs.credential, attrs.headers, &self.config.credentials) {
                Ok(credential) => credential,
                Err(denial) if denial.reason == Reason::MissingCredential => {
                    let Some(chain) = &chain else {
                        return Err(denial);
                    };
                    return match &self.certificates {
                        Some(verifier) => verifier.verify(chain),
                        None => Err(Denial::new(
                            Reason::UnsupportedCredential,
                            "no client certificate CA is configured",
                        )),
                    };
                }
                Err(denial) => return Err(denial),
            };
        let principal = match credential {
            Extracted::Bearer(token) if jwt::looks_like_jwt(token) => {
                if self.jwt.is_empty() {
                    return Err(Denial::new(
                        Reason::UnsupportedCredential,
                        "no token issuer is configured",
                    ));
                }
                self.jwt.verify(token, attrs.audience).await?
            }
            Extracted::Bearer(token) => match &self.opaque {
                Some(introspector) => introspector.verify(token, attrs.audience).await?,
                None if self.jwt.is_empty() => {
                    return Err(Denial::new(
                        Reason::UnsupportedCredential,
                        "no token issuer is configured",
                    ));
                }
                None => {
                    return Err(Denial::new(
                        Reason::MalformedCredential,
                        "bearer token is not a JWT and no introspection is configured",
                    ));
                }
            },
            Extracted::ApiKey(key) => match &self.api_keys {
                Some(verifier) => verifier.verify(key).await?,
                None => {
                    return Err(Denial::new(
                        Reason::UnsupportedCredential,
                        "no API key store is configured",
                    ));
                }
            },
            Extracted::Basic {
                encoded,
                username,
                password,
            } => {
                let Some(verifier) = &self.basic else {
                    return Err(Denial::new(
                        Reason::UnsupportedCredential,
                        "no Basic credential store is configured",
                    ));
                };
                let (user, password) = match encoded {
                    Some(encoded) => basic::decode(encoded)?,
                    None => (username.to_owned(), password.to_owned()),
                };
                let client = basic::client_address(attrs.headers);
                verifier.verify(&user, &password, client.as_deref()).await?
            }
        };
        if matches!(
            principal.credential_type,
            CredentialType::Jwt | CredentialType::OpaqueToken
        ) {
            let leaf = chain.as_deref().and_then(|c| c.first()).map(|c| c.as_ref());
            certificate::check_binding(&principal, leaf)?;
        }
        Ok(principal)
    }

    /// Verifies the credential and checks the required scopes.
    pub async fn authorize(&self, attrs: RequestAttrs<'_>) -> Decision {
        match self.authenticate(attrs).await {
            Err(denial) => Decision::Deny {
                denial,
                principal: None,
                rule: String::new(),
            },
            Ok(principal) => {
                let missing = principal.missing_scopes(attrs.required_scopes);
                if missing.is_empty() {
                    Decision::Allow {
                        principal: Some(principal),
                        rule: String::new(),
                    }
                } else {
                    Decision::Deny {
                        denial: Denial::insufficient_scope(missing),
                        principal: Some(principal),
                        rule: "required_scopes".to_owned(),
                    }
                }
            }
        }
    }
}

/// The certificate chain the request presented: `client_certificate_pem`, else the TLS
/// peer's. Both present and naming different certificates is ambiguous.
fn presented_chain<'a>(
    attrs: &RequestAttrs<'a>,
) -> Result<Option<Cow<'a, [CertificateDer<'static>]>>, Denial> {
    let pem = attrs.client_certificate_pem.trim();
    if pem.is_empty() {
        return Ok(
            (!attrs.peer_certificates.is_empty()).then_some(Cow::Borrowed(attrs.peer_certificates))
        );
    }
    if pem.len() > MAX_CERTIFICATE_PEM_BYTES {
        return Err(Denial::new(
            Reason::MalformedCredential,
            format!("client_certificate_pem is larger than {MAX_CERTIFICATE_PEM_BYTES} bytes"),
        ));
    }
    let chain = certificate::parse_pem_chain(pem).map_err(|err| {
        Denial::new(
            Reason::MalformedCredential,
            format!("client_certificate_pem: {err}"),
        )
    })?;
    if let (Some(peer), Some(given)) = (attrs.peer_certificates.first(), chain.first())
        && peer != given
    {
        return Err(Denial::new(
            Reason::AmbiguousCredential,
            "the TLS peer certificate and client_certificate_pem differ",
        ));
    }
    Ok(Some(Cow::Owned(chain)))
}

/// Whether an issuer has a JWT key source (an issuer may have introspection only).
fn has_key_source(issuer: &IssuerConfig) -> bool {
    issuer.discovery
        || issuer.jwks_uri.is_some()
        || issuer.jwks_file.is_some()
        || !issuer.public_key_files.is_empty()
        || issuer.hmac_secret.is_some()
}

fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    names.iter().map(|name| name.parse()).collect()
}

fn build_issuer(
    issuer: &IssuerConfig,
    client: &reqwest::Client,
    previous: Option<&Pipeline>,
    mode: BuildMode,
) -> Result<IssuerVerifier, String> {
    let algorithms = parse_algorithms(&issuer.algorithms)?;
    let keys = build_key_source(issuer, &algorithms, client, previous, mode)?;
    Ok(IssuerVerifier {
        name: issuer.name.clone(),
        iss: issuer.issuer.clone(),
        algorithms,
        policy: ClaimPolicy::from_config(issuer),
        keys,
    })
}

fn build_key_source(
    issuer: &IssuerConfig,
    algorithms: &[Algorithm],
    client: &reqwest::Client,
    previous: Option<&Pipeline>,
    mode: BuildMode,
) -> Result<KeySource, String> {
    let location = if issuer.discovery {
        Some(Location::Discovery {
            issuer: issuer.issuer.clone(),
        })
    } else {
        issuer.jwks_uri.clone().map(Location::JwksUri)
    };
    if let Some(location) = location {
        let reused = previous.and_then(|p| {
            p.remote_sources()
                .find(|source| source.same_as(&location, algorithms, &issuer.jwks))
                .cloned()
        });
        let source = reused.unwrap_or_else(|| {
            let source = RemoteKeySource::new(
                issuer.name.clone(),
                location,
                algorithms.to_vec(),
                issuer.jwks.clone(),
                client.clone(),
            );
            if mode == BuildMode::Serve {
                source.spawn_refresher();
            }
            source
        });
        return Ok(KeySource::Remote(source));
    }
    let keys = if let Some(path) = &issuer.jwks_file {
        let bytes = std::fs::read(path)
            .map_err(|err| format!("cannot read jwks_file {}: {err}", path.display()))?;
        KeySet::from_jwks(&bytes, algorithms, true)
            .map_err(|err| format!("jwks_file {}: {err}", path.display()))?
    } else if let Some(secret) = &issuer.hmac_secret {
        let secret = secret
            .resolve()
            .map_err(|err| format!("hmac_secret: {err}"))?;
        let algorithm = algorithms.first().copied().unwrap_or(Algorithm::HS256);
        let key =
            jwt::hmac_key(None, &secret, algorithm).map_err(|err| format!("hmac_secret: {err}"))?;
        KeySet::from_keys(vec![key]).map_err(|err| err.to_string())?
    } else {
        let mut keys = Vec::with_capacity(issuer.public_key_files.len());
        for file in &issuer.public_key_files {
            let path = file.path();
            let pem = std::fs::read(path)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            let (kid, declared) = match file {
                PublicKeyFile::Path(_) => (None, None),
                PublicKeyFile::Detailed { kid, algorithm, .. } => (
                    kid.clone(),
                    algorithm.as_deref().map(str::parse).transpose()?,
                ),
            };
            keys.push(
                jwt::pem_key(&pem, kid, declared, algorithms)
                    .map_err(|err| format!("{}: {err}", path.display()))?,
            );
        }
        KeySet::from_keys(keys).map_err(|err| err.to_string())?
    };
    Ok(KeySource::Static(Arc::new(keys)))
}
