//! The one path every request takes: extract the credential, verify it, check what the
//! request requires, and return a [`Decision`]. Surfaces only translate to and from it.
//!
//! A `Pipeline` is built from one validated config and is immutable; a config reload builds a
//! new one (reusing remote key sources whose settings did not change) and swaps it in.

use std::{borrow::Cow, collections::HashMap, net::IpAddr, sync::Arc, time::Instant};

use rustls_pki_types::CertificateDer;

use crate::{
    client_address::TrustedProxies,
    config::{Config, ConfigError, ConfigErrors, IssuerConfig, PublicKeyFile},
    credentials::{self, Extracted},
    decision::{CredentialType, Decision, Denial, Principal, Reason, Scheme},
    jwt::{self, Algorithm, ClaimPolicy, IssuerVerifier, JwtVerifier, KeySet},
    keys::api_keys::format as api_key_format,
    keys::{KeySource, RemoteKeySource, jwks::Location},
    pb,
    policy::{Policy, Resource, Verdict, canonical_host, canonical_path},
    telemetry::metrics::{METRICS, Surface},
    upstream::UpstreamHeaders,
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
    /// Every `access_token` value of the URL query string (ext_authz): refused unless a rule
    /// that matches the request allows query credentials (RFC 6750 §2.3).
    pub query_credentials: &'a [String],
    /// What is accessed, as the request spelled it: [`Pipeline::run`] canonicalizes the path
    /// and host before any rule sees them.
    pub resource: Resource<'a>,
    /// `client_certificate_pem` from the request (empty: none).
    pub client_certificate_pem: &'a str,
    /// The chain the TLS peer presented, leaf first (empty: none or no mTLS).
    pub peer_certificates: &'a [CertificateDer<'static>],
    /// The caller's address: the gRPC peer, or Envoy's `source.address` (for throttling).
    pub peer_address: Option<IpAddr>,
}

/// Verification and decision for one config generation.
pub struct Pipeline {
    pub config: Arc<Config>,
    jwt: JwtVerifier,
    policy: Policy,
    upstream: UpstreamHeaders,
    api_keys: Option<ApiKeyVerifier>,
    basic: Option<BasicVerifier>,
    /// The introspection that receives opaque bearer tokens.
    opaque: Option<Introspector>,
    certificates: Option<CertificateVerifier>,
    trusted_proxies: TrustedProxies,
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
        let policy = Policy::build(&config.authorization)
            .map_err(|mut rule_errors| errors.append(&mut rule_errors));
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
        let Ok(policy) = policy else {
            return Err(ConfigErrors(errors));
        };
        let jwt = JwtVerifier::new(
            issuers,
            config.cache.max_entries,
            config.cache.max_bytes,
            config.cache.max_ttl,
        );
        let upstream = UpstreamHeaders::new(&config.response.claims_to_headers);
        let trusted_proxies = TrustedProxies::new(&config.credentials.trusted_proxies);
        Ok(Self {
            trusted_proxies,
            config: Arc::new(config),
            jwt,
            policy,
            upstream,
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

    /// Every header name an allow can set upstream (ext_authz strips incoming copies).
    pub fn upstream_header_names(&self) -> impl Iterator<Item = &str> {
        self.upstream.names()
    }

    /// Names some upstreams read as one of those (`x_user_id` for `x-user-id`): always
    /// stripped from incoming requests.
    pub fn upstream_header_aliases(&self) -> impl Iterator<Item = &str> {
        self.upstream.aliases()
    }

    /// Decides one request from `surface` and records it once: span fields, metrics, and an
    /// audit log line for a denial. `Authenticate` verifies only; the others apply the policy.
    pub async fn run(&self, surface: Surface, attrs: RequestAttrs<'_>) -> Decision {
        let started = Instant::now();
        let mut seen = None;
        let target = match surface {
            Surface::authenticate => Ok(None),
            Surface::authorize | Surface::ext_authz => self
                .refuse_identity_header_spellings(attrs.headers)
                .and_then(|()| CanonicalTarget::of(&attrs.resource, attrs.headers).map(Some)),
        };
        let target = match target {
            Ok(target) => target,
            Err(denial) => {
                let decision = deny(denial, None, String::new());
                record(surface, &decision, None, started);
                return decision;
            }
        };
        let attrs = match &target {
            Some(target) => RequestAttrs {
                resource: target.resource(&attrs.resource),
                ..attrs
            },
            None => attrs,
        };
        let decision = match surface {
            Surface::authenticate => match self.authenticate_seen(attrs, &mut seen).await {
                Ok(principal) => Decision::Allow {
                    principal: Some(principal),
                    rule: String::new(),
                    upstream_headers: Vec::new(),
                },
                Err(denial) => deny(denial, None, String::new()),
            },
            Surface::authorize | Surface::ext_authz => self.authorize(attrs, &mut seen).await,
        };
        record(surface, &decision, seen, started);
        decision
    }

    /// An incoming header spelled like one Portcullis sets upstream but not exactly
    /// (`x_user-id` for `x-user-id`) would reach CGI-style upstreams as that header: refused.
    fn refuse_identity_header_spellings(
        &self,
        headers: &HashMap<String, String>,
    ) -> Result<(), Denial> {
        let spoofed = headers.keys().any(|name| {
            self.upstream
                .names()
                .any(|set| !name.eq_ignore_ascii_case(set) && same_header_name(name, set))
        });
        if spoofed {
            return Err(Denial::new(
                Reason::MalformedRequest,
                "a request header is another spelling of an identity header Portcullis sets",
            ));
        }
        Ok(())
    }

    /// Verifies the request's credential.
    pub async fn authenticate(&self, attrs: RequestAttrs<'_>) -> Result<Arc<Principal>, Denial> {
        self.authenticate_seen(attrs, &mut None).await
    }

    /// Verifies the request's credential, noting in `seen` which credential it was. Without
    /// any other credential, a presented client certificate is the credential; with a token,
    /// it is what RFC 8705 binds the token to.
    async fn authenticate_seen<'a>(
        &self,
        attrs: RequestAttrs<'a>,
        seen: &mut Option<Seen<'a>>,
    ) -> Result<Arc<Principal>, Denial> {
        let chain = presented_chain(&attrs)?;
        let extracted = credentials::extract(
            attrs.credential,
            attrs.headers,
            attrs.query_credentials,
            &self.config.credentials,
        );
        let credential = match extracted {
            Ok(found) => found,
            Err(denial) if denial.reason == Reason::MissingCredential => {
                let Some(chain) = &chain else {
                    return Err(denial);
                };
                *seen = Some(Seen {
                    kind: CredentialType::ClientCertificate,
                    digest_of: "",
                });
                refuse_audience(attrs.audience, CredentialType::ClientCertificate)?;
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
        // An API key sent as a bearer token is recognized by its prefix (a damaged one too:
        // its checksum then refuses it) and never sent to a third-party introspection endpoint.
        let credential = match credential {
            Extracted::Bearer(token)
                if self.api_keys.is_some()
                    && !jwt::looks_like_jwt(token)
                    && api_key_format::has_prefix(token, &self.config.api_keys.prefix) =>
            {
                Extracted::ApiKey(token)
            }
            other => other,
        };
        *seen = Some(Seen::of(credential));
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
                Some(verifier) => {
                    refuse_audience(attrs.audience, CredentialType::ApiKey)?;
                    verifier.verify(key).await?
                }
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
                refuse_audience(attrs.audience, CredentialType::Basic)?;
                let (user, password) = match encoded {
                    Some(encoded) => basic::decode(encoded)?,
                    None => (username.to_owned(), password.to_owned()),
                };
                let client = self
                    .trusted_proxies
                    .client(attrs.peer_address, attrs.headers);
                verifier.verify(&user, &password, client).await?
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

    /// Verifies the credential, checks the required scopes and applies the policy.
    async fn authorize<'a>(
        &self,
        attrs: RequestAttrs<'a>,
        seen: &mut Option<Seen<'a>>,
    ) -> Decision {
        if !attrs.query_credentials.is_empty()
            && !self.policy.allows_query_credentials(&attrs.resource)
        {
            return deny(
                Denial::new(
                    Reason::MalformedCredential,
                    "credentials in the URL query string are refused (RFC 6750 section 2.3)",
                ),
                None,
                String::new(),
            );
        }
        let authn = self.authenticate_seen(attrs, seen).await;
        let verdict = self
            .policy
            .decide(authn.as_deref(), &attrs.resource, attrs.required_scopes);
        let principal = authn.ok();
        match verdict {
            Verdict::Allow { rule } => Decision::Allow {
                upstream_headers: principal
                    .as_deref()
                    .map(|p| self.upstream.render(p))
                    .unwrap_or_default(),
                principal,
                rule,
            },
            Verdict::Deny { denial, rule } => deny(denial, principal, rule),
        }
    }
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

/// The canonical path and host of a request, and its gRPC service and method (given, or
/// derived from `POST /package.Service/Method`).
struct CanonicalTarget {
    path: String,
    /// `path` with its trailing slash toggled, for deny rules.
    alternate_path: String,
    host: String,
    grpc: Option<(usize, usize)>,
}

impl CanonicalTarget {
    fn of(resource: &Resource<'_>, headers: &HashMap<String, String>) -> Result<Self, Denial> {
        refuse_method_override(resource.http_method, resource.path, headers)?;
        let path = canonical_path(resource.path)?;
        let host = canonical_host(resource.host)?;
        let grpc = if resource.grpc_service.is_empty() && resource.grpc_method.is_empty() {
            grpc_target(resource.http_method, &path, headers)
        } else {
            None
        };
        let alternate_path = match path.strip_suffix('/') {
            Some("") => String::new(),
            Some(without) => without.to_owned(),
            None => format!("{path}/"),
        };
        Ok(Self {
            path,
            alternate_path,
            host,
            grpc,
        })
    }

    fn resource<'a>(&'a self, raw: &Resource<'a>) -> Resource<'a> {
        let (grpc_service, grpc_method) = match self.grpc {
            Some((end, start)) => (&self.path[1..end], &self.path[start..]),
            None => (raw.grpc_service, raw.grpc_method),
        };
        Resource {
            grpc_service,
            grpc_method,
            path: &self.path,
            alternate_path: &self.alternate_path,
            host: &self.host,
            ..*raw
        }
    }
}

/// Headers some frameworks read as the request's real method: a request whose method they
/// contradict would be decided as one method and served as another.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether `name` is `expected` once case and `_`/`-` are ignored (how CGI-style servers
/// read header names).
fn same_header_name(name: &str, expected: &str) -> bool {
    name.len() == expected.len()
        && name.bytes().zip(expected.bytes()).all(|(a, b)| {
            let fold = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            fold(a) == fold(b)
        })
}

fn refuse_method_override(
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
) -> Result<(), Denial> {
    let contradicts = |value: &str| !value.trim().eq_ignore_ascii_case(method);
    let by_header = headers.iter().any(|(name, value)| {
        METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| same_header_name(name, h))
            && contradicts(value)
    });
    // Express' method-override, Symfony and Rails read a `_method` query parameter too.
    let by_query = path.split_once('?').is_some_and(|(_, query)| {
        form_urlencoded::parse(query.as_bytes())
            .any(|(name, value)| name == "_method" && contradicts(&value))
    });
    if by_header || by_query {
        return Err(Denial::new(
            Reason::MalformedRequest,
            "a method-override header names another method than the request's",
        ));
    }
    Ok(())
}

/// gRPC through Envoy: `POST /package.Service/Method` (content-type application/grpc, or a
/// service name with a package). Returns where the service name ends and the method starts.
fn grpc_target(
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
) -> Option<(usize, usize)> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let is_grpc = headers
        .get("content-type")
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let (service, rpc) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty()
        && !rpc.is_empty()
        && !rpc.contains('/')
        && (is_grpc || service.contains('.')))
    .then(|| (1 + service.len(), 2 + service.len()))
}

/// The credential a request presented, for telemetry: its kind, and the text a short digest
/// is taken from when the request is denied (for Basic, the user name only: a digest of a
/// password would be guessable).
#[derive(Debug, Clone, Copy)]
struct Seen<'a> {
    kind: CredentialType,
    digest_of: &'a str,
}

impl<'a> Seen<'a> {
    fn of(credential: Extracted<'a>) -> Self {
        match credential {
            Extracted::Bearer(token) if jwt::looks_like_jwt(token) => Seen {
                kind: CredentialType::Jwt,
                digest_of: token,
            },
            Extracted::Bearer(token) => Seen {
                kind: CredentialType::OpaqueToken,
                digest_of: token,
            },
            Extracted::ApiKey(key) => Seen {
                kind: CredentialType::ApiKey,
                digest_of: key,
            },
            Extracted::Basic { username, .. } => Seen {
                kind: CredentialType::Basic,
                digest_of: username,
            },
        }
    }
}

/// Records a decided request once: span fields, metrics and, for a denial, an audit line.
fn record(surface: Surface, decision: &Decision, seen: Option<Seen<'_>>, started: Instant) {
    let span = tracing::Span::current();
    let (allowed, reason, principal, rule) = match decision {
        Decision::Allow {
            principal, rule, ..
        } => (true, None, principal.as_ref(), rule),
        Decision::Deny {
            denial,
            principal,
            rule,
        } => (false, Some(denial), principal.as_ref(), rule),
    };
    let credential_type = principal
        .map(|p| p.credential_type)
        .or(seen.map(|s| s.kind));
    span.record("decision", if allowed { "allow" } else { "deny" });
    if let Some(denial) = reason {
        span.record("reason", denial.reason.as_str());
    }
    if let Some(kind) = credential_type {
        span.record("credential_type", kind.as_str());
    }
    if let Some(principal) = principal {
        span.record("issuer", principal.issuer.as_str());
    }
    if !rule.is_empty() {
        span.record("rule", rule.as_str());
    }
    METRICS.record_request(
        surface,
        allowed,
        reason.map(|d| d.reason),
        credential_type,
        started.elapsed().as_secs_f64(),
    );
    if let Some(denial) = reason {
        let digest = seen
            .filter(|s| !s.digest_of.is_empty())
            .map(|s| short_digest(s.digest_of))
            .unwrap_or_default();
        tracing::info!(
            target: "portcullis::audit",
            surface = ?surface,
            reason = denial.reason.as_str(),
            rule = rule.as_str(),
            subject = principal.map_or("", |p| p.subject.as_str()),
            credential_type = credential_type.map_or("", CredentialType::as_str),
            credential_digest = digest.as_str(),
            detail = denial.message.as_str(),
            "request denied"
        );
    }
}

/// The first 8 bytes of the SHA-256 of a credential, hex: enough to correlate log lines,
/// useless for recovering a high-entropy credential.
pub fn short_digest(credential: &str) -> String {
    jwt::token_digest(credential)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn deny(denial: Denial, principal: Option<Arc<Principal>>, rule: String) -> Decision {
    Decision::Deny {
        denial,
        principal,
        rule,
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
