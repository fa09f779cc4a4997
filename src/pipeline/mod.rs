//! The one path every request takes, as phases: establish the target (Authorize and Check),
//! **extract** the credential ([`credentials`]), **authenticate** it ([`Verifiers`]),
//! **bind** it to what the request proves it holds (RFC 8705 certificates), **authorize**
//! with the policy ([`Policy`]), and **shape** the [`Decision`] the surfaces render.
//! [`Pipeline::run`] reads as that sequence; each phase is a function of its own.
//!
//! A `Pipeline` is built from one validated config by the build layer (`crate::build`) and is
//! immutable; a config reload builds a new one and swaps it in.

mod target;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use target::Target;

use crate::{
    config::Config,
    credentials::{self, Carried, Extraction, Presented, TokenScheme},
    decision::{CredentialType, Decision, Denial, IdentityToken, Principal, Reason, Scheme},
    dpop::{Dpop, HttpTarget},
    identity_token::IdentityTokens,
    keys::{KeySource, RemoteKeySource},
    policy::{Policy, Resource, RuleTrace, Verdict},
    rate_limit::RateLimiter,
    telemetry::{
        self,
        decision_log::{DecisionLog, Requested},
        metrics::{Metrics, Surface},
    },
    upstream::UpstreamHeaders,
    verify::{Verifiers, certificate, jwt::JwtVerifier},
};

/// One request, as every surface hands it to the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttrs<'a> {
    /// Where the credential may be: the message, headers, query string, certificates.
    pub carried: Carried<'a>,
    /// Extra audience the token must carry (empty: none).
    pub audience: &'a str,
    pub required_scopes: &'a [String],
    /// What is accessed, as the request spelled it: the target phase canonicalizes the path
    /// and host before any rule sees them.
    pub resource: Resource<'a>,
    /// The request URL's scheme (`http`, `https`; empty: `https`): with the resource's
    /// method, host and path, what a DPoP proof must name.
    pub scheme: &'a str,
}

impl<'a> RequestAttrs<'a> {
    /// The HTTP request a DPoP proof is checked against: as the request spelled it.
    pub fn http_target(&self) -> HttpTarget<'a> {
        HttpTarget {
            method: self.resource.http_method,
            scheme: self.scheme,
            authority: self.resource.host,
            path: self.resource.path,
        }
    }
}

/// Identifies each pipeline built in this process (see [`Pipeline::id`]).
static NEXT_PIPELINE_ID: AtomicU64 = AtomicU64::new(1);

/// Verification and decision for one config generation.
pub struct Pipeline {
    /// Unique in this process: what a principal's rendered answers are keyed by.
    id: u64,
    pub config: Arc<Config>,
    extraction: Extraction,
    verifiers: Verifiers,
    policy: Policy,
    upstream: UpstreamHeaders,
    /// `response.identity_token`, when on: the shaping step that mints for upstreams.
    identity_tokens: Option<IdentityTokens>,
    /// Rate limits per API key, subject and rule, counted on allowed requests.
    rate_limiter: RateLimiter,
    /// DPoP proof checks (RFC 9449), part of the bind phase.
    dpop: Dpop,
    /// Where decided requests are counted.
    metrics: Arc<Metrics>,
    /// `telemetry.decision_log`, when on.
    decision_log: Option<DecisionLog>,
}

/// What the build layer makes from a config for each phase of a pipeline.
pub(crate) struct Phases {
    pub extraction: Extraction,
    pub verifiers: Verifiers,
    pub policy: Policy,
    pub rate_limiter: RateLimiter,
    pub dpop: Dpop,
    pub upstream: UpstreamHeaders,
    pub identity_tokens: Option<IdentityTokens>,
}

impl Pipeline {
    /// Assembles a pipeline from the phases the build layer made from `config`.
    pub(crate) fn new(config: Arc<Config>, phases: Phases, metrics: Arc<Metrics>) -> Self {
        let Phases {
            extraction,
            verifiers,
            policy,
            rate_limiter,
            dpop,
            upstream,
            identity_tokens,
        } = phases;
        Self {
            id: NEXT_PIPELINE_ID.fetch_add(1, Ordering::Relaxed),
            decision_log: DecisionLog::new(&config.telemetry.decision_log),
            config,
            extraction,
            verifiers,
            policy,
            upstream,
            identity_tokens,
            rate_limiter,
            dpop,
            metrics,
        }
    }

    /// Decides one request from `surface` and records it once (see
    /// [`telemetry::request_decided`], and the decision log when it is on). `Authenticate`
    /// verifies only; the others also establish the target and apply the policy.
    pub async fn run(&self, surface: Surface, request: RequestAttrs<'_>) -> Decision {
        let started = Instant::now();
        let decision = match surface {
            Surface::authenticate => self.authenticate_only(&request).await,
            Surface::authorize | Surface::ext_authz | Surface::forward_auth => {
                self.authorize(&request).await
            }
        };
        let elapsed = started.elapsed();
        telemetry::request_decided(&self.metrics, surface, &decision, elapsed);
        if let Some(log) = &self.decision_log {
            let resource = &request.resource;
            let requested = Requested {
                method: resource.http_method,
                host: resource.host,
                path: resource.path,
                grpc_service: resource.grpc_service,
                grpc_method: resource.grpc_method,
            };
            log.record(surface, requested, &decision, elapsed);
        }
        decision
    }

    /// Records a request its surface refused before it could reach the pipeline (too many
    /// headers for ext_authz), so that it is counted and audited like any other denial.
    pub fn refused(&self, surface: Surface, denial: &Denial) {
        let decision = deny(denial.clone(), None, String::new(), None);
        telemetry::request_decided(&self.metrics, surface, &decision, Duration::ZERO);
        if let Some(log) = &self.decision_log {
            log.record(surface, Requested::default(), &decision, Duration::ZERO);
        }
    }

    /// A short digest of the presented credential for an allow's decision log line; empty
    /// (and not computed) while decision logs are off.
    fn allow_digest(&self, presented: &Presented<'_>) -> String {
        if self.decision_log.is_some() {
            digest_of(Some(presented))
        } else {
            String::new()
        }
    }

    /// Authenticate: extract, authenticate, bind, shape (an identity token for the default
    /// audience).
    async fn authenticate_only(&self, request: &RequestAttrs<'_>) -> Decision {
        let presented = credentials::extract(&request.carried, &self.extraction);
        let principal = match self.authenticate(&presented, request).await {
            Ok(principal) => principal,
            Err(denial) => return deny(denial, None, String::new(), Some(&presented)),
        };
        if let Err(denial) = self.rate_limiter.check(&principal, "").await {
            return deny(denial, Some(principal), String::new(), Some(&presented));
        }
        self.allow(principal, String::new(), "", &presented)
    }

    /// Authorize and Check: target, extract, (refuse query credentials no rule allows),
    /// authenticate, bind, authorize, shape.
    async fn authorize(&self, request: &RequestAttrs<'_>) -> Decision {
        let target = match Target::of(&request.resource, request.carried.headers, &self.upstream) {
            Ok(target) => target,
            Err(denial) => return deny(denial, None, String::new(), None),
        };
        let resource = target.resource(&request.resource);
        let presented = credentials::extract(&request.carried, &self.extraction);
        let rules = self.policy.matching(&resource);
        if presented.in_query
            && let Err(denial) = rules.admit_query_credential()
        {
            return deny(denial, None, String::new(), None);
        }
        let authn = self.authenticate(&presented, request).await;
        let mut verdict = rules.decide(authn.as_deref(), request.required_scopes);
        // The limit phase: an allowed request with a principal counts against its limits.
        if let (Verdict::Allow { rule }, Ok(principal)) = (&verdict, &authn)
            && let Err(denial) = self.rate_limiter.check(principal, rule).await
        {
            verdict = Verdict::Deny {
                denial,
                rule: rule.clone(),
            };
        }
        self.shape(verdict, authn.ok(), &presented, resource.host)
    }

    /// Extracts and authenticates the request's credential, as Authorize does before its
    /// rules (for `portcullis policy test --explain`).
    pub async fn authenticate_request(
        &self,
        request: &RequestAttrs<'_>,
    ) -> Result<Arc<Principal>, Denial> {
        let presented = credentials::extract(&request.carried, &self.extraction);
        self.authenticate(&presented, request).await
    }

    /// Where credentials are looked for, and whose forwarded headers count.
    pub fn extraction(&self) -> &Extraction {
        &self.extraction
    }

    /// The compiled rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The identity headers an allow sets (what the target phase protects).
    pub fn upstream(&self) -> &UpstreamHeaders {
        &self.upstream
    }

    /// Authenticates the presented credential, then binds it: a token bound to a
    /// certificate (RFC 8705 `cnf.x5t#S256`) is accepted only with that certificate, and
    /// one bound to a key (RFC 9449 `cnf.jkt`) only with a DPoP proof for this request.
    pub async fn authenticate(
        &self,
        presented: &Presented<'_>,
        request: &RequestAttrs<'_>,
    ) -> Result<Arc<Principal>, Denial> {
        let principal = self.verifiers.verify(presented, request.audience).await?;
        bind(&principal, presented)?;
        self.dpop
            .bind(&principal, presented, &request.http_target())
            .await?;
        Ok(principal)
    }

    /// The `WWW-Authenticate` value for `denial`: its realm (`basic.realm` for Basic
    /// challenges), and the DPoP algorithms where DPoP is offered or was used.
    pub fn challenge(&self, denial: &Denial) -> String {
        let algs = match denial.scheme {
            Scheme::Dpop { .. } => Some(self.dpop.algs()),
            Scheme::Bearer | Scheme::Basic => self.dpop.offered_algs(),
        };
        denial.challenge(self.realm_for(denial), algs)
    }

    /// The DPoP checks, whose proof memory the next generation reuses.
    pub fn dpop(&self) -> &Dpop {
        &self.dpop
    }

    /// The decision for a verdict on a request to `host`.
    fn shape(
        &self,
        verdict: Verdict,
        principal: Option<Arc<Principal>>,
        presented: &Presented<'_>,
        host: &str,
    ) -> Decision {
        match (verdict, principal) {
            (Verdict::Allow { rule }, Some(principal)) => {
                self.allow(principal, rule, host, presented)
            }
            (Verdict::Allow { rule }, None) => Decision::Allow {
                credential: presented.kind(),
                principal: None,
                rule,
                credential_digest: self.allow_digest(presented),
                identity_token: None,
            },
            (Verdict::Deny { denial, rule }, principal) => {
                deny(denial, principal, rule, Some(presented))
            }
        }
    }

    /// An allow of `principal` by `rule` on `host`, with its identity token when they are
    /// minted; a token that cannot be made denies instead (fail closed).
    fn allow(
        &self,
        principal: Arc<Principal>,
        rule: String,
        host: &str,
        presented: &Presented<'_>,
    ) -> Decision {
        let identity_token = match &self.identity_tokens {
            Some(tokens) => match tokens.for_principal(&principal, &rule, host) {
                Ok(token) => Some(token),
                Err(denial) => return deny(denial, Some(principal), rule, Some(presented)),
            },
            None => None,
        };
        Decision::Allow {
            credential: Some(principal.credential_type),
            principal: Some(principal),
            rule,
            credential_digest: self.allow_digest(presented),
            identity_token,
        }
    }

    /// This pipeline's process-unique id: answers rendered for it are reused only by it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The identity headers an allow of `principal` sets upstream
    /// (`response.claims_to_headers`, and the identity token's header with `identity_token`);
    /// a surface renders them when it answers.
    pub fn upstream_headers(
        &self,
        principal: &Principal,
        identity_token: Option<&IdentityToken>,
    ) -> Vec<(String, String)> {
        self.upstream
            .render(principal, identity_token.map(|t| &*t.token))
    }

    /// Writes the API key usage not written yet (graceful shutdown).
    pub async fn flush_usage(&self) {
        if let Some(store) = self
            .verifiers
            .api_keys
            .as_ref()
            .and_then(|k| k.postgres.as_ref())
        {
            store.flush_usage().await;
        }
    }

    /// The rate limits, whose counters the next generation reuses.
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.rate_limiter
    }

    /// The identity token minter (`response.identity_token`), when configured: its keys
    /// are what the admin listener publishes.
    pub fn identity_tokens(&self) -> Option<&IdentityTokens> {
        self.identity_tokens.as_ref()
    }

    pub(crate) fn verifiers(&self) -> &Verifiers {
        &self.verifiers
    }

    /// The realm for a denial's challenge: `basic.realm` for Basic challenges.
    fn realm_for(&self, denial: &Denial) -> &str {
        match (denial.scheme, &self.config.basic.realm) {
            (Scheme::Basic, Some(realm)) => realm,
            _ => self.realm(),
        }
    }

    /// Readiness of stores that load asynchronously (PostgreSQL's API key change listener,
    /// the token revocation list).
    pub fn store_readiness(&self) -> Vec<tokio::sync::watch::Receiver<bool>> {
        self.verifiers
            .api_keys
            .iter()
            .filter_map(|keys| keys.postgres.as_ref())
            .map(|store| store.ready())
            .chain(self.verifiers.revocations.iter().map(|r| r.ready()))
            .collect()
    }

    /// Remote key sources, for readiness and metrics.
    pub fn remote_sources(&self) -> impl Iterator<Item = &Arc<RemoteKeySource>> {
        self.verifiers
            .jwt
            .issuers()
            .filter_map(|issuer| match &issuer.keys {
                KeySource::Remote(remote) => Some(remote),
                KeySource::Static(_) => None,
            })
    }

    pub fn jwt(&self) -> &JwtVerifier {
        &self.verifiers.jwt
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
}

/// The decision for a request whose credential verified as `principal`, or that presented
/// none (`None`): the target, rules and shaping of Authorize, with no credential extracted
/// from the request or verified. `portcullis policy test` decides its claims cases with it,
/// from a config whose key material it need not load.
pub fn decide_for(
    policy: &Policy,
    upstream: &UpstreamHeaders,
    principal: Option<&Arc<Principal>>,
    request: &RequestAttrs<'_>,
) -> Decision {
    let target = match Target::of(&request.resource, request.carried.headers, upstream) {
        Ok(target) => target,
        Err(denial) => return deny(denial, None, String::new(), None),
    };
    let resource = target.resource(&request.resource);
    let rules = policy.matching(&resource);
    if !request.carried.query_credentials.is_empty()
        && let Err(denial) = rules.admit_query_credential()
    {
        return deny(denial, None, String::new(), None);
    }
    let missing = Denial::new(Reason::MissingCredential, "no credential presented");
    let authn = principal.map(AsRef::as_ref).ok_or(&missing);
    match rules.decide(authn, request.required_scopes) {
        Verdict::Allow { rule } => Decision::Allow {
            credential: principal.map(|p| p.credential_type),
            principal: principal.cloned(),
            rule,
            credential_digest: String::new(),
            identity_token: None,
        },
        Verdict::Deny { denial, rule } => deny(denial, principal.cloned(), rule, None),
    }
}

/// How each rule fares for `request` with this authentication outcome (see
/// [`Policy::explain`]); the target's refusal when the request has none.
pub fn explain_for(
    policy: &Policy,
    upstream: &UpstreamHeaders,
    request: &RequestAttrs<'_>,
    authn: Result<&Principal, &Denial>,
) -> Result<Vec<RuleTrace>, Denial> {
    let target = Target::of(&request.resource, request.carried.headers, upstream)?;
    Ok(policy.explain(authn, &target.resource(&request.resource)))
}

/// The bind phase: what the principal's credential is bound to must be what the request
/// presented. Today RFC 8705: a JWT or opaque token carrying `cnf.x5t#S256` needs that
/// certificate.
fn bind(principal: &Principal, presented: &Presented<'_>) -> Result<(), Denial> {
    if matches!(
        principal.credential_type,
        CredentialType::Jwt | CredentialType::OpaqueToken
    ) {
        let leaf = presented
            .chain
            .as_deref()
            .and_then(|chain| chain.first())
            .map(|certificate| certificate.as_ref());
        certificate::check_binding(principal, leaf)?;
    }
    Ok(())
}

/// A deny decision; `presented` (when the request got as far as extraction) names the
/// credential for telemetry, with a short digest of it.
fn deny(
    mut denial: Denial,
    principal: Option<Arc<Principal>>,
    rule: String,
    presented: Option<&Presented<'_>>,
) -> Decision {
    // A token sent with the DPoP scheme is challenged with it (RFC 9449 §7.1).
    if denial.scheme == Scheme::Bearer && presented.is_some_and(|p| p.scheme == TokenScheme::Dpop) {
        denial.scheme = Scheme::Dpop {
            invalid_proof: false,
        };
    }
    let credential = principal
        .as_ref()
        .map(|p| p.credential_type)
        .or(presented.and_then(Presented::kind));
    Decision::Deny {
        denial,
        principal,
        rule,
        credential,
        credential_digest: digest_of(presented),
    }
}

/// A short digest of the presented credential, for logs (empty: none was found).
fn digest_of(presented: Option<&Presented<'_>>) -> String {
    presented
        .and_then(|p| p.credential.as_ref().ok())
        .and_then(|c| c.digest_source())
        .filter(|source| !source.is_empty())
        .map(telemetry::short_digest)
        .unwrap_or_default()
}

/// The quickstart config with `rules` (YAML, an `AuthorizationConfig`) appended to its own,
/// built for serving: what the unit tests of the pipeline and its surfaces run on.
#[cfg(test)]
pub(crate) fn quickstart_with_rules(rules: &str) -> Pipeline {
    let extra: crate::config::AuthorizationConfig =
        serde_norway::from_str(rules).expect("rules in YAML");
    quickstart_with(|config| config.authorization.rules.extend(extra.rules))
}

/// The quickstart config as `edit` changes it, built for serving.
#[cfg(test)]
pub(crate) fn quickstart_with(edit: impl FnOnce(&mut Config)) -> Pipeline {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut config =
        crate::config::load_file(std::path::Path::new(&format!("{dir}/quickstart.yaml")))
            .expect("the quickstart config is valid");
    edit(&mut config);
    let client = crate::outbound::http_client().expect("an HTTP client");
    let metrics = Arc::new(Metrics::new(true));
    crate::build::pipeline(
        config,
        &client,
        &metrics,
        None,
        crate::build::BuildMode::Check,
    )
    .expect("builds")
}

#[cfg(test)]
mod tests;
