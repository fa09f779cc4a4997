//! Authorization (SPEC §5): rules compiled once from config, matched against the request's
//! resource, and checked against the verified principal. Default deny.
//!
//! Evaluation: among the enforced rules that match the request, a satisfied `deny` rule wins;
//! otherwise the first satisfied `allow` rule allows; otherwise the first matching allow
//! rule's failure is the answer (e.g. INSUFFICIENT_SCOPE naming the missing scopes); when no
//! rule matches, `authorization.default` decides. Shadow rules are evaluated the same way and
//! logged, never enforced. Anonymous rules admit requests without a verified credential
//! (public routes); see [`Policy::decide`] for the precedence.

mod canonical;
mod matcher;

use std::{cell::Cell, collections::HashMap, sync::Arc};

use serde_json::Value;
use tracing::warn;

pub use canonical::{canonical_host, canonical_path};
use matcher::{Globs, Matcher};

use crate::{
    config::{
        Anonymous, AuthorizationConfig, ConfigError, Effect, MAX_RULES, RuleConfig, RuleMode,
    },
    decision::{CelVariables, CredentialType, Denial, Principal, Reason},
    telemetry::{self, metrics::Metrics},
};

/// What a request accesses, as the policy sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resource<'a> {
    pub grpc_service: &'a str,
    pub grpc_method: &'a str,
    pub http_method: &'a str,
    /// Canonical host without port (see [`canonical_host`]).
    pub host: &'a str,
    /// Canonical path without query string (see [`canonical_path`]).
    pub path: &'a str,
    /// The canonical path with its trailing slash toggled (`/a/` for `/a`), which deny
    /// rules also match; empty: none.
    pub alternate_path: &'a str,
    pub context_extensions: Option<&'a HashMap<String, String>>,
}

/// Compiled rules.
pub struct Policy {
    rules: Vec<Rule>,
    /// Whether any rule is in shadow mode (decided once, not per request).
    has_shadow: bool,
    default: Effect,
    cel_env: std::sync::Arc<cel::Env>,
    /// Shadow-rule evaluations are counted here.
    metrics: Arc<Metrics>,
}

/// One compiled rule.
pub struct Rule {
    pub name: String,
    matcher: Matcher,
    require: Requirements,
    pub effect: Effect,
    pub mode: RuleMode,
    pub anonymous: Anonymous,
    pub allow_query_credentials: bool,
}

struct Requirements {
    credential_types: Vec<CredentialType>,
    issuers: Vec<String>,
    scopes_all: Vec<String>,
    scopes_any: Vec<String>,
    claims: Vec<(Vec<String>, Value)>,
    cel: Option<cel::Program>,
    dpop: bool,
}

/// Why a rule's requirements do not hold for a principal.
enum Unmet {
    /// A requirement is false: the rule does not apply (deny) or is not satisfied (allow).
    False(Denial),
    /// A condition could not be evaluated (a CEL error): fails closed for either effect.
    Error(Denial),
}

/// The policy's answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow { rule: String },
    Deny { denial: Denial, rule: String },
}

pub use crate::config::{DEFAULT_RULE, REQUIRED_SCOPES_RULE};

/// Whether an anonymous rule admits a request whose authentication ended with `failure`.
fn admits(anonymous: Anonymous, failure: &Denial) -> bool {
    let missing = failure.reason == Reason::MissingCredential;
    match anonymous {
        Anonymous::No => false,
        Anonymous::AllowMissing => missing,
        Anonymous::AllowFailed => missing || admits_failure(failure.reason),
    }
}

/// Authentication failures an `anonymous: allow_failed` rule may still admit: never an
/// ambiguous credential (a smuggling attempt) and never an outage (fail closed).
fn admits_failure(reason: Reason) -> bool {
    !matches!(
        reason,
        Reason::AmbiguousCredential | Reason::UpstreamUnavailable | Reason::Overloaded
    )
}

impl Policy {
    /// Compiles every rule, reporting each bad pattern or CEL expression with its rule.
    pub fn build(
        config: &AuthorizationConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Vec<ConfigError>> {
        if config.rules.len() > MAX_RULES {
            return Err(vec![ConfigError {
                path: "authorization.rules".to_owned(),
                message: format!("at most {MAX_RULES} rules"),
            }]);
        }
        let mut errors = Vec::new();
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, rule) in config.rules.iter().enumerate() {
            match compile_rule(rule) {
                Ok(compiled) => rules.push(compiled),
                Err(message) => errors.push(ConfigError {
                    path: format!("authorization.rules[{i}]"),
                    message: format!("rule {:?}: {message}", rule.name),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            has_shadow: rules.iter().any(|rule| rule.mode == RuleMode::Shadow),
            rules,
            default: config.default,
            cel_env: std::sync::Arc::new(cel::Env::stdlib()),
            metrics,
        })
    }

    /// The rules that match `resource`, enforced and shadow alike (deny rules also against
    /// the path with its trailing slash toggled), found as the phases ask for them.
    pub fn matching<'p, 'r>(&'p self, resource: &Resource<'r>) -> Matched<'p, 'r> {
        Matched {
            policy: self,
            resource: *resource,
            known: [const { Cell::new(0) }; MATCH_WORDS],
            hits: [const { Cell::new(0) }; MATCH_WORDS],
        }
    }

    /// Decides one request: [`Policy::matching`], then [`Matched::decide`].
    pub fn decide(
        &self,
        authn: Result<&Principal, &Denial>,
        resource: &Resource<'_>,
        required_scopes: &[String],
    ) -> Verdict {
        self.matching(resource).decide(authn, required_scopes)
    }
}

impl Policy {
    /// How every rule fares for one request, in configuration order: whether it matches and,
    /// if it does, whether its requirements hold (`portcullis policy test --explain`). The
    /// verdict itself comes from [`Policy::decide`]; this only reports.
    pub fn explain(
        &self,
        authn: Result<&Principal, &Denial>,
        resource: &Resource<'_>,
    ) -> Vec<RuleTrace> {
        self.rules
            .iter()
            .map(|rule| {
                let anonymous = rule.effect == Effect::Allow && rule.anonymous.is_anonymous();
                let outcome = if !rule.matcher.matches(resource, rule.effect == Effect::Deny) {
                    RuleOutcome::NoMatch
                } else {
                    match authn {
                        Ok(_) if anonymous => RuleOutcome::Anonymous,
                        Ok(principal) => match rule.check(principal, resource, &self.cel_env) {
                            Ok(()) => RuleOutcome::Holds,
                            Err(Unmet::False(denial)) => RuleOutcome::Unmet(denial.message),
                            Err(Unmet::Error(denial)) => RuleOutcome::Error(denial.message),
                        },
                        Err(failure) if anonymous && admits(rule.anonymous, failure) => {
                            RuleOutcome::Anonymous
                        }
                        Err(_) if rule.effect == Effect::Deny => RuleOutcome::DeniesUnchecked,
                        Err(failure) => RuleOutcome::Unchecked(format!(
                            "no verified credential ({}: {})",
                            failure.reason.as_str(),
                            failure.message
                        )),
                    }
                };
                RuleTrace {
                    rule: rule.name.clone(),
                    effect: rule.effect,
                    mode: rule.mode,
                    outcome,
                }
            })
            .collect()
    }
}

/// How one rule fared for one request (see [`Policy::explain`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleTrace {
    pub rule: String,
    pub effect: Effect,
    pub mode: RuleMode,
    pub outcome: RuleOutcome,
}

/// What a rule made of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleOutcome {
    /// Its `match` does not cover the request.
    NoMatch,
    /// It matches and its requirements hold for the principal.
    Holds,
    /// An anonymous allow rule: it admits the request without checking a credential.
    Anonymous,
    /// It matches, and this requirement does not hold.
    Unmet(String),
    /// It matches, and its condition could not be evaluated (fails closed).
    Error(String),
    /// It matches, and there is no verified principal to check it against.
    Unchecked(String),
    /// A deny rule that matches a request without a verified principal: it denies, since
    /// its conditions cannot be shown false.
    DeniesUnchecked,
}

impl std::fmt::Display for RuleTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let effect = match self.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        };
        let shadow = if self.mode == RuleMode::Shadow {
            ", shadow"
        } else {
            ""
        };
        write!(f, "rule {} ({effect}{shadow}): ", self.rule)?;
        match &self.outcome {
            RuleOutcome::NoMatch => write!(f, "does not match"),
            RuleOutcome::Holds => write!(f, "matches; its requirements hold"),
            RuleOutcome::Anonymous => write!(f, "matches; anonymous, needs no credential"),
            RuleOutcome::Unmet(why) => write!(f, "matches; not satisfied: {why}"),
            RuleOutcome::Error(why) => write!(f, "matches; cannot be evaluated: {why}"),
            RuleOutcome::Unchecked(why) => write!(f, "matches; not checked: {why}"),
            RuleOutcome::DeniesUnchecked => write!(
                f,
                "matches; denies: its conditions cannot be checked without a verified credential"
            ),
        }
    }
}

/// Words of the bit sets that hold one bit per rule.
const MATCH_WORDS: usize = MAX_RULES.div_ceil(64);

/// The rules that match one request. Each rule's `match` is evaluated at most once, when a
/// phase first asks about it (so the first satisfied allow rule still ends the search), and
/// remembered in two bit sets on the stack: finding them allocates nothing.
pub struct Matched<'p, 'r> {
    policy: &'p Policy,
    resource: Resource<'r>,
    /// Rules whose `match` has been evaluated.
    known: [Cell<u64>; MATCH_WORDS],
    /// Of those, the ones that match.
    hits: [Cell<u64>; MATCH_WORDS],
}

impl<'p> Matched<'p, '_> {
    /// Whether rule `i` matches, evaluating its `match` the first time only.
    fn matches(&self, i: usize, rule: &Rule) -> bool {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        let (known, hits) = (&self.known[word], &self.hits[word]);
        if known.get() & bit == 0 {
            known.set(known.get() | bit);
            if rule
                .matcher
                .matches(&self.resource, rule.effect == Effect::Deny)
            {
                hits.set(hits.get() | bit);
            }
        }
        hits.get() & bit != 0
    }

    /// The matching rules of one mode and effect, in configuration order.
    fn rules(&self, mode: RuleMode, effect: Effect) -> impl Iterator<Item = &'p Rule> + '_ {
        self.policy
            .rules
            .iter()
            .enumerate()
            .filter(move |(i, rule)| {
                rule.mode == mode && rule.effect == effect && self.matches(*i, rule)
            })
            .map(|(_, rule)| rule)
    }

    /// Credentials in the URL query string are refused (RFC 6750 §2.3) unless an enforced
    /// rule that matches the request allows them.
    pub fn admit_query_credential(&self) -> Result<(), Denial> {
        let allowed = self.policy.rules.iter().enumerate().any(|(i, rule)| {
            rule.mode == RuleMode::Enforce && rule.allow_query_credentials && self.matches(i, rule)
        });
        if allowed {
            Ok(())
        } else {
            Err(Denial::new(
                Reason::MalformedCredential,
                "credentials in the URL query string are refused (RFC 6750 section 2.3)",
            ))
        }
    }

    /// Decides one request from its authentication outcome: a verified principal, or the
    /// denial authentication ended with (MISSING_CREDENTIAL when nothing was presented).
    /// Shadow rules are evaluated and counted here too, never enforced.
    ///
    /// Precedence (SPEC §9): a request without a verified principal is denied with its own
    /// reason unless an anonymous rule admits it; deny rules then apply to every request
    /// (without a principal their conditions cannot be shown false, so they deny); then
    /// `required_scopes`; then the first satisfied allow rule; then `authorization.default`
    /// (which never allows a request without a principal).
    pub fn decide(
        &self,
        authn: Result<&Principal, &Denial>,
        required_scopes: &[String],
    ) -> Verdict {
        let verdict = self.evaluate(RuleMode::Enforce, authn, required_scopes);
        if self.policy.has_shadow {
            let shadow = self.evaluate(RuleMode::Shadow, authn, required_scopes);
            let (allowed, rule) = match &shadow {
                Verdict::Allow { rule } => (true, rule),
                Verdict::Deny { rule, .. } => (false, rule),
            };
            if rule != DEFAULT_RULE && rule != REQUIRED_SCOPES_RULE && !rule.is_empty() {
                telemetry::shadow_evaluated(&self.policy.metrics, rule, allowed);
            }
        }
        verdict
    }

    fn evaluate(
        &self,
        mode: RuleMode,
        authn: Result<&Principal, &Denial>,
        required_scopes: &[String],
    ) -> Verdict {
        let resource = &self.resource;
        let rules = |effect: Effect| self.rules(mode, effect);
        let cel_env = &self.policy.cel_env;
        // 1. Without a verified principal, only an anonymous rule can let the request on.
        let mut anonymous_rule = None;
        if let Err(failure) = authn {
            anonymous_rule = rules(Effect::Allow).find(|rule| admits(rule.anonymous, failure));
            if anonymous_rule.is_none() {
                return Verdict::Deny {
                    denial: failure.clone(),
                    rule: String::new(),
                };
            }
        }
        // 2. Deny rules, for every request.
        for rule in rules(Effect::Deny) {
            let applies = match authn {
                Ok(principal) => match rule.check(principal, resource, cel_env) {
                    Ok(()) => Ok(()),
                    Err(Unmet::False(_)) => continue,
                    Err(Unmet::Error(denial)) => Err(denial.message),
                },
                Err(_) => Err(format!(
                    "denied by rule {}: its conditions cannot be checked without a verified credential",
                    rule.name
                )),
            };
            let message = match applies {
                Ok(()) => format!("denied by rule {}", rule.name),
                Err(message) => message,
            };
            return Verdict::Deny {
                denial: Denial::new(Reason::PolicyDenied, message),
                rule: rule.name.clone(),
            };
        }
        // 3. Scopes the caller of Authorize requires: no principal, no scopes.
        if !required_scopes.is_empty() {
            let denial = match authn {
                Ok(principal) => {
                    let missing = principal.missing_scopes(required_scopes);
                    (!missing.is_empty()).then(|| Denial::insufficient_scope(missing))
                }
                Err(failure) => Some(Denial::new(
                    failure.reason,
                    format!(
                        "{}; required scopes need a verified credential",
                        failure.message
                    ),
                )),
            };
            if let Some(denial) = denial {
                return Verdict::Deny {
                    denial,
                    rule: REQUIRED_SCOPES_RULE.to_owned(),
                };
            }
        }
        let principal = match (authn, anonymous_rule) {
            (Ok(principal), _) => principal,
            (Err(_), Some(rule)) => {
                return Verdict::Allow {
                    rule: rule.name.clone(),
                };
            }
            (Err(failure), None) => {
                return Verdict::Deny {
                    denial: failure.clone(),
                    rule: String::new(),
                };
            }
        };
        // 4. The first satisfied allow rule.
        let mut first_failure = None;
        for rule in rules(Effect::Allow) {
            let outcome = if rule.anonymous.is_anonymous() {
                Ok(())
            } else {
                rule.check(principal, resource, cel_env)
            };
            match outcome {
                Ok(()) => {
                    return Verdict::Allow {
                        rule: rule.name.clone(),
                    };
                }
                Err(Unmet::False(denial) | Unmet::Error(denial)) => {
                    first_failure.get_or_insert((denial, rule.name.clone()));
                }
            }
        }
        if let Some((denial, rule)) = first_failure {
            return Verdict::Deny { denial, rule };
        }
        // 5. No rule applies.
        match self.policy.default {
            Effect::Allow => Verdict::Allow {
                rule: DEFAULT_RULE.to_owned(),
            },
            Effect::Deny => Verdict::Deny {
                denial: Denial::new(Reason::PolicyDenied, "no rule allows this request"),
                rule: DEFAULT_RULE.to_owned(),
            },
        }
    }
}

impl Rule {
    /// Whether the principal meets every requirement of this rule.
    fn check(
        &self,
        principal: &Principal,
        resource: &Resource<'_>,
        env: &std::sync::Arc<cel::Env>,
    ) -> Result<(), Unmet> {
        let req = &self.require;
        let denied = |message: String| Unmet::False(Denial::new(Reason::PolicyDenied, message));
        if !req.credential_types.is_empty()
            && !req.credential_types.contains(&principal.credential_type)
        {
            return Err(denied(format!(
                "rule {} does not accept {} credentials",
                self.name,
                principal.credential_type.as_str()
            )));
        }
        if !req.issuers.is_empty() && !req.issuers.iter().any(|name| **name == *principal.issuer) {
            return Err(denied(format!(
                "rule {} does not accept issuer {}",
                self.name, principal.issuer
            )));
        }
        // The bind phase has checked the proof of every DPoP-bound token that got here.
        if req.dpop && principal.dpop_binding().is_none() {
            return Err(denied(format!(
                "rule {} accepts only DPoP-bound tokens",
                self.name
            )));
        }
        let missing = principal.missing_scopes(&req.scopes_all);
        if !missing.is_empty() {
            return Err(Unmet::False(Denial::insufficient_scope(missing)));
        }
        if !req.scopes_any.is_empty()
            && !req.scopes_any.iter().any(|s| principal.scopes.contains(s))
        {
            return Err(Unmet::False(Denial::insufficient_scope(
                req.scopes_any.clone(),
            )));
        }
        for (path, expected) in &req.claims {
            if !claim_matches(&principal.claims, path, expected) {
                return Err(denied(format!(
                    "rule {}: claim {} does not match",
                    self.name,
                    path.join(".")
                )));
            }
        }
        if let Some(program) = &req.cel {
            match eval_cel(program, env, principal, resource) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(denied(format!("rule {}: expression is false", self.name)));
                }
                Err(message) => {
                    warn!(rule = %self.name, error = %message, "rule condition could not be evaluated; failing closed");
                    return Err(Unmet::Error(Denial::new(
                        Reason::PolicyDenied,
                        format!(
                            "rule {}: its condition could not be evaluated ({message}); failing closed",
                            self.name
                        ),
                    )));
                }
            }
        }
        Ok(())
    }
}

fn compile_rule(rule: &RuleConfig) -> Result<Rule, String> {
    let m = &rule.matches;
    let matcher = Matcher {
        grpc_services: Globs::new(&m.grpc.services, false, false)?,
        grpc_methods: Globs::new(&m.grpc.methods, false, false)?,
        hosts: Globs::new(&m.http.hosts, false, true)?,
        http_methods: m
            .http
            .methods
            .iter()
            .map(|method| method.to_ascii_uppercase())
            .collect(),
        paths: Globs::new(&m.http.paths, true, false)?,
        context_extensions: m.context_extensions.clone(),
    };
    let r = &rule.require;
    let credential_types = r
        .credential_types
        .iter()
        .map(|name| {
            CredentialType::from_name(name)
                .ok_or_else(|| format!("unknown credential type {name:?}"))
        })
        .collect::<Result<_, _>>()?;
    let cel = r
        .cel
        .as_deref()
        .map(|source| {
            cel::Program::compile(source)
                .map_err(|err| format!("CEL expression does not compile: {err}"))
        })
        .transpose()?;
    Ok(Rule {
        name: rule.name.clone(),
        matcher,
        require: Requirements {
            credential_types,
            issuers: r.issuers.clone(),
            scopes_all: r.scopes_all.clone(),
            scopes_any: r.scopes_any.clone(),
            claims: r
                .claims
                .iter()
                .map(|(path, value)| (path.split('.').map(str::to_owned).collect(), value.clone()))
                .collect(),
            cel,
            dpop: r.dpop,
        },
        effect: rule.effect,
        mode: rule.mode,
        anonymous: rule.anonymous,
        allow_query_credentials: rule.allow_query_credentials,
    })
}

/// Equality for scalars; membership when the claim is an array; an expected list means any
/// of its values. Numbers compare by value (7 == 7.0).
fn claim_matches(claims: &crate::claims::Claims, path: &[String], expected: &Value) -> bool {
    let Some(current) = claims.at(path) else {
        return false;
    };
    let candidates: &[Value] = match expected {
        Value::Array(items) => items,
        one => std::slice::from_ref(one),
    };
    let equal = |a: &Value, b: &Value| match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    };
    match current {
        Value::Array(items) => items
            .iter()
            .any(|item| candidates.iter().any(|c| equal(item, c))),
        value => candidates.iter().any(|c| equal(&value, c)),
    }
}

/// `claims` and `principal` for CEL, converted once per principal (see
/// [`Principal::cel_variables`]).
fn cel_variables(principal: &Principal) -> Result<CelVariables, String> {
    let claims = cel::to_value(principal.claims.to_map()).map_err(|err| err.to_string())?;
    let principal_value = serde_json::json!({
        "subject": principal.subject,
        "issuer": principal.issuer,
        "credential_type": principal.credential_type.as_str(),
        "scopes": principal.scopes,
        "key_id": principal.key_id,
    });
    let principal = cel::to_value(&principal_value).map_err(|err| err.to_string())?;
    Ok(CelVariables { claims, principal })
}

/// `request` for CEL: `grpc.{service,method}`, `http.{method,host,path}` and
/// `context_extensions`, built directly (no JSON in between).
fn cel_request(resource: &Resource<'_>) -> cel::Value {
    let text = |value: &str| cel::Value::from(value);
    let grpc = HashMap::from([
        ("service".to_owned(), text(resource.grpc_service)),
        ("method".to_owned(), text(resource.grpc_method)),
    ]);
    let http = HashMap::from([
        ("method".to_owned(), text(resource.http_method)),
        ("host".to_owned(), text(resource.host)),
        ("path".to_owned(), text(resource.path)),
    ]);
    let extensions: HashMap<String, cel::Value> = resource
        .context_extensions
        .into_iter()
        .flatten()
        .map(|(key, value)| (key.clone(), text(value)))
        .collect();
    cel::Value::from(HashMap::from([
        ("grpc".to_owned(), cel::Value::from(grpc)),
        ("http".to_owned(), cel::Value::from(http)),
        (
            "context_extensions".to_owned(),
            cel::Value::from(extensions),
        ),
    ]))
}

fn eval_cel(
    program: &cel::Program,
    env: &std::sync::Arc<cel::Env>,
    principal: &Principal,
    resource: &Resource<'_>,
) -> Result<bool, String> {
    let mut context = cel::Context::with_env(env.clone());
    let variables = principal
        .cel_variables(cel_variables)
        .map_err(str::to_owned)?;
    context.add_variable_from_value("claims", variables.claims.clone());
    context.add_variable_from_value("principal", variables.principal.clone());
    context.add_variable_from_value("request", cel_request(resource));
    match program.execute(&context) {
        Ok(cel::Value::Bool(result)) => Ok(result),
        Ok(_) => Err("the expression did not yield a boolean".to_owned()),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{Outcome, ShadowLabels};
    use serde_json::json;

    fn principal(claims: Value, scopes: &[&str]) -> Principal {
        let Value::Object(claims) = claims else {
            unreachable!()
        };
        Principal::new(
            "alice".into(),
            "corp".into(),
            CredentialType::Jwt,
            claims,
            scopes.iter().map(|s| s.to_string()).collect(),
            None,
            "k".into(),
        )
    }

    fn policy(yaml: &str) -> Policy {
        let config: AuthorizationConfig = serde_norway::from_str(yaml).unwrap();
        Policy::build(&config, Arc::new(Metrics::new(true))).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn verdict(
        p: &Policy,
        who: Option<&Principal>,
        method: &str,
        path: &str,
    ) -> (bool, String, Option<Reason>) {
        let resource = Resource {
            http_method: method,
            path,
            host: "api.example.com",
            ..Default::default()
        };
        let missing = Denial::new(Reason::MissingCredential, "no credential presented");
        match p.decide(who.ok_or(&missing), &resource, &[]) {
            Verdict::Allow { rule } => (true, rule, None),
            Verdict::Deny { denial, rule } => (false, rule, Some(denial.reason)),
        }
    }

    #[test]
    fn explain_reports_every_rule_in_order_without_deciding() {
        let p = policy(
            r#"
rules:
  - name: public
    match: { http: { paths: ["/public/**"] } }
    anonymous: true
  - name: no-interns
    effect: deny
    match: { http: { paths: ["/orders/**"] } }
    require: { claims: { role: intern } }
  - name: broken-cel
    match: { http: { paths: ["/orders/**"] } }
    require: { cel: "claims.missing.deeper == 1" }
  - name: readers
    match: { http: { methods: [GET], paths: ["/orders/**"] } }
    require: { scopes_all: ["orders:read"] }
  - name: trial
    mode: shadow
    match: { http: { paths: ["/orders/**"] } }
"#,
        );
        let resource = Resource {
            http_method: "GET",
            path: "/orders/1",
            ..Default::default()
        };
        let alice = principal(json!({"role": "staff"}), &[]);
        let outcomes: Vec<(String, RuleOutcome)> = p
            .explain(Ok(&alice), &resource)
            .into_iter()
            .map(|trace| (trace.rule, trace.outcome))
            .collect();
        assert_eq!(outcomes[0], ("public".to_owned(), RuleOutcome::NoMatch));
        assert!(
            matches!(&outcomes[1], (rule, RuleOutcome::Unmet(why)) if rule == "no-interns" && why.contains("claim role"))
        );
        assert!(matches!(&outcomes[2], (rule, RuleOutcome::Error(_)) if rule == "broken-cel"));
        assert!(
            matches!(&outcomes[3], (rule, RuleOutcome::Unmet(why)) if rule == "readers" && why.contains("orders:read"))
        );
        assert_eq!(outcomes[4], ("trial".to_owned(), RuleOutcome::Holds));
        let traces = p.explain(Ok(&alice), &resource);
        assert_eq!(
            traces[4].to_string(),
            "rule trial (allow, shadow): matches; its requirements hold"
        );
        assert_eq!(
            traces[1].to_string(),
            "rule no-interns (deny): matches; not satisfied: rule no-interns: claim role does not match"
        );

        let missing = Denial::new(Reason::MissingCredential, "no credential presented");
        let public = Resource {
            http_method: "GET",
            path: "/public/a",
            ..Default::default()
        };
        let anonymous = p.explain(Err(&missing), &public);
        assert_eq!(anonymous[0].outcome, RuleOutcome::Anonymous);
        let unchecked = p.explain(Err(&missing), &resource);
        assert!(
            matches!(&unchecked[3].outcome, RuleOutcome::Unchecked(why) if why.starts_with("no verified credential (MISSING_CREDENTIAL"))
        );
        assert_eq!(
            unchecked[1].outcome,
            RuleOutcome::DeniesUnchecked,
            "a deny rule denies"
        );
        let expired = Denial::new(Reason::Expired, "token expired");
        let failed = p.explain(Err(&expired), &public);
        assert!(
            matches!(&failed[0].outcome, RuleOutcome::Unchecked(_)),
            "anonymous: true admits no failed credential"
        );
    }

    #[test]
    fn rules_table() {
        let p = policy(
            r#"
rules:
  - name: health
    match: { http: { paths: ["/healthz"] } }
    anonymous: true
  - name: no-interns
    match: { http: { paths: ["/orders/**"] } }
    require: { claims: { roles: intern } }
    effect: deny
  - name: orders-read
    match: { http: { methods: [GET], paths: ["/orders/*"] } }
    require: { scopes_all: [orders:read] }
  - name: orders-write
    match: { http: { methods: [POST], paths: ["/orders/*"] } }
    require: { scopes_any: [orders:write, orders:admin], claims: { "org.id": 7 }, cel: "claims.email.endsWith('@example.com') && request.http.method == 'POST'" }
"#,
        );
        let reader = principal(
            json!({"roles": ["reader"], "org": {"id": 7}, "email": "a@example.com"}),
            &["orders:read"],
        );
        let writer = principal(
            json!({"roles": ["writer"], "org": {"id": 7.0}, "email": "a@example.com"}),
            &["orders:write"],
        );
        let outsider = principal(
            json!({"roles": ["writer"], "org": {"id": 7}, "email": "a@evil.com"}),
            &["orders:write"],
        );
        let intern = principal(json!({"roles": ["intern", "reader"]}), &["orders:read"]);
        let cases = [
            (
                "public route without a credential",
                None,
                "GET",
                "/healthz",
                (true, "health", None),
            ),
            (
                "reader reads",
                Some(&reader),
                "GET",
                "/orders/1",
                (true, "orders-read", None),
            ),
            (
                "reader cannot write",
                Some(&reader),
                "POST",
                "/orders/1",
                (false, "orders-write", Some(Reason::InsufficientScope)),
            ),
            (
                "writer writes",
                Some(&writer),
                "POST",
                "/orders/1",
                (true, "orders-write", None),
            ),
            (
                "CEL refuses another domain",
                Some(&outsider),
                "POST",
                "/orders/1",
                (false, "orders-write", Some(Reason::PolicyDenied)),
            ),
            (
                "deny rule wins",
                Some(&intern),
                "GET",
                "/orders/1",
                (false, "no-interns", Some(Reason::PolicyDenied)),
            ),
            (
                "* stays within a segment",
                Some(&reader),
                "GET",
                "/orders/1/items",
                (false, "default", Some(Reason::PolicyDenied)),
            ),
            (
                "no rule: default deny",
                Some(&reader),
                "GET",
                "/admin",
                (false, "default", Some(Reason::PolicyDenied)),
            ),
            (
                "no credential, protected route",
                None,
                "GET",
                "/orders/1",
                (false, "", Some(Reason::MissingCredential)),
            ),
        ];
        for (name, who, method, path, (allowed, rule, reason)) in cases {
            assert_eq!(
                verdict(&p, who, method, path),
                (allowed, rule.to_owned(), reason),
                "{name}"
            );
        }
    }

    #[test]
    fn shadow_rules_are_counted_but_never_enforced() {
        let p = policy(
            r#"
rules:
  - name: strict-new-rule
    match: { http: { paths: ["/orders/*"] } }
    require: { scopes_all: [orders:admin] }
    mode: shadow
  - name: orders-read
    match: { http: { paths: ["/orders/*"] } }
    require: { scopes_all: [orders:read] }
"#,
        );
        let reader = principal(json!({}), &["orders:read"]);
        let labels = ShadowLabels {
            rule: "strict-new-rule".into(),
            decision: Outcome::deny,
        };
        assert_eq!(
            verdict(&p, Some(&reader), "GET", "/orders/1"),
            (true, "orders-read".to_owned(), None)
        );
        // The policy's own metrics, not a global shared with other tests: exactly one.
        assert_eq!(p.metrics.shadow_decisions.get_or_create(&labels).get(), 1);
    }

    #[test]
    fn bad_rules_are_config_errors_naming_the_rule() {
        let config: AuthorizationConfig = serde_norway::from_str(
            r#"
rules:
  - name: broken-cel
    require: { cel: "claims.x ==" }
  - name: broken-glob
    match: { http: { paths: ["/a/[" ] } }
"#,
        )
        .unwrap();
        let errors = Policy::build(&config, Arc::new(Metrics::new(true)))
            .err()
            .unwrap();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].message.contains("broken-cel"));
        assert!(errors[1].message.contains("broken-glob"));
    }

    /// A case: name, authentication outcome, path, required scopes, expected verdict.
    type Case<'a> = (
        &'a str,
        Result<&'a Principal, &'a Denial>,
        &'a str,
        &'a [&'a str],
        (bool, &'a str, Option<Reason>),
    );

    fn authorize(
        p: &Policy,
        authn: Result<&Principal, &Denial>,
        path: &str,
        required: &[&str],
    ) -> (bool, String, Option<Reason>) {
        let resource = Resource {
            http_method: "GET",
            path,
            host: "api.example.com",
            ..Default::default()
        };
        let required: Vec<String> = required.iter().map(|s| s.to_string()).collect();
        match p.decide(authn, &resource, &required) {
            Verdict::Allow { rule } => (true, rule, None),
            Verdict::Deny { denial, rule } => (false, rule, Some(denial.reason)),
        }
    }

    #[test]
    fn dropping_or_breaking_the_credential_never_gains_access() {
        let p = policy(
            r#"
rules:
  - name: internal-off
    match: { http: { paths: ["/public/internal/**"] } }
    effect: deny
  - name: no-banned
    match: { http: { paths: ["/public/members/**"] } }
    require: { claims: { banned: true } }
    effect: deny
  - name: public
    match: { http: { paths: ["/public/**"] } }
    anonymous: true
  - name: tolerant
    match: { http: { paths: ["/tolerant/**"] } }
    anonymous: allow_failed
  - name: cel-deny
    match: { http: { paths: ["/cel/**"] } }
    require: { cel: "claims.level > 3" }
    effect: deny
  - name: cel-allow
    match: { http: { paths: ["/cel/**"] } }
"#,
        );
        let ok = principal(json!({"level": 1}), &["read"]);
        let banned = principal(json!({"banned": true}), &["read"]);
        let no_level = principal(json!({}), &["read"]);
        let typed_wrong = principal(json!({"level": "high"}), &["read"]);
        let missing = Denial::new(Reason::MissingCredential, "no credential presented");
        let expired = Denial::new(Reason::Expired, "token expired");
        let ambiguous = Denial::new(Reason::AmbiguousCredential, "two credentials");
        let outage = Denial::new(Reason::UpstreamUnavailable, "IdP down");
        let cases: Vec<Case<'_>> = vec![
            (
                "deny rule without requirements, valid token",
                Ok(&ok),
                "/public/internal/x",
                &[],
                (false, "internal-off", Some(Reason::PolicyDenied)),
            ),
            (
                "deny rule without requirements, no credential",
                Err(&missing),
                "/public/internal/x",
                &[],
                (false, "internal-off", Some(Reason::PolicyDenied)),
            ),
            (
                "public route, no credential",
                Err(&missing),
                "/public/x",
                &[],
                (true, "public", None),
            ),
            (
                "public route, valid token",
                Ok(&ok),
                "/public/x",
                &[],
                (true, "public", None),
            ),
            (
                "public route, banned token",
                Ok(&banned),
                "/public/members/x",
                &[],
                (false, "no-banned", Some(Reason::PolicyDenied)),
            ),
            (
                "public route, valid unbanned token",
                Ok(&ok),
                "/public/members/x",
                &[],
                (true, "public", None),
            ),
            (
                "public route, token dropped: the deny rule cannot be shown false",
                Err(&missing),
                "/public/members/x",
                &[],
                (false, "no-banned", Some(Reason::PolicyDenied)),
            ),
            (
                "anonymous: true does not admit a failed credential",
                Err(&expired),
                "/public/x",
                &[],
                (false, "", Some(Reason::Expired)),
            ),
            (
                "allow_failed admits a failed credential",
                Err(&expired),
                "/tolerant/x",
                &[],
                (true, "tolerant", None),
            ),
            (
                "allow_failed admits a missing credential",
                Err(&missing),
                "/tolerant/x",
                &[],
                (true, "tolerant", None),
            ),
            (
                "allow_failed never admits an ambiguous credential",
                Err(&ambiguous),
                "/tolerant/x",
                &[],
                (false, "", Some(Reason::AmbiguousCredential)),
            ),
            (
                "allow_failed never admits during an outage",
                Err(&outage),
                "/tolerant/x",
                &[],
                (false, "", Some(Reason::UpstreamUnavailable)),
            ),
            (
                "required_scopes with no credential",
                Err(&missing),
                "/public/x",
                &["admin"],
                (false, REQUIRED_SCOPES_RULE, Some(Reason::MissingCredential)),
            ),
            (
                "required_scopes with a token lacking them",
                Ok(&ok),
                "/public/x",
                &["admin"],
                (false, REQUIRED_SCOPES_RULE, Some(Reason::InsufficientScope)),
            ),
            (
                "required_scopes held",
                Ok(&ok),
                "/public/x",
                &["read"],
                (true, "public", None),
            ),
            (
                "deny rule CEL false",
                Ok(&ok),
                "/cel/x",
                &[],
                (true, "cel-allow", None),
            ),
            (
                "deny rule CEL on a missing claim fails closed",
                Ok(&no_level),
                "/cel/x",
                &[],
                (false, "cel-deny", Some(Reason::PolicyDenied)),
            ),
            (
                "deny rule CEL type mismatch fails closed",
                Ok(&typed_wrong),
                "/cel/x",
                &[],
                (false, "cel-deny", Some(Reason::PolicyDenied)),
            ),
            (
                "default deny without a credential keeps its reason",
                Err(&expired),
                "/elsewhere",
                &[],
                (false, "", Some(Reason::Expired)),
            ),
        ];
        for (name, authn, path, required, (allowed, rule, reason)) in cases {
            assert_eq!(
                authorize(&p, authn, path, required),
                (allowed, rule.to_owned(), reason),
                "{name}"
            );
        }
    }

    #[test]
    fn default_allow_never_admits_a_request_without_a_principal() {
        let p = policy("default: allow\n");
        let missing = Denial::new(Reason::MissingCredential, "none");
        let reader = principal(json!({}), &[]);
        assert!(authorize(&p, Ok(&reader), "/x", &[]).0);
        assert_eq!(
            authorize(&p, Err(&missing), "/x", &[]),
            (false, String::new(), Some(Reason::MissingCredential))
        );
    }

    mod properties {
        use super::*;
        use crate::config::{HttpMatchConfig, MatchConfig, RequireConfig};
        use proptest::prelude::*;

        const PATHS: [&str; 4] = ["/a/**", "/a/b/*", "/c/**", "/**"];
        const REQUEST_PATHS: [&str; 4] = ["/a/x", "/a/b/c", "/c/d", "/e"];
        const CEL: [&str; 4] = [
            "claims.level > 3",
            "true",
            "false",
            "claims.role == 'admin'",
        ];

        fn rule_strategy(effect: Effect) -> impl Strategy<Value = RuleConfig> {
            (
                proptest::option::of(0..PATHS.len()),
                0..3u8,
                proptest::option::of(0..2usize),
                proptest::option::of(0..2usize),
                proptest::option::of(0..CEL.len()),
                "[a-z]{6}",
            )
                .prop_map(move |(path, anonymous, scope, role, cel, name)| {
                    RuleConfig {
                        name,
                        matches: MatchConfig {
                            http: HttpMatchConfig {
                                paths: path.map(|i| PATHS[i].to_owned()).into_iter().collect(),
                                ..Default::default()
                            },
                            ..Default::default()
                        },
                        require: RequireConfig {
                            scopes_all: scope
                                .map(|i| ["s1", "s2"][i].to_owned())
                                .into_iter()
                                .collect(),
                            claims: role
                                .map(|i| ("role".to_owned(), json!(["admin", "user"][i])))
                                .into_iter()
                                .collect(),
                            cel: cel.map(|i| CEL[i].to_owned()),
                            ..Default::default()
                        },
                        effect,
                        mode: RuleMode::Enforce,
                        anonymous: match (effect, anonymous) {
                            (Effect::Deny, _) | (_, 0) => Anonymous::No,
                            (_, 1) => Anonymous::AllowMissing,
                            _ => Anonymous::AllowFailed,
                        },
                        allow_query_credentials: false,
                    }
                })
        }

        fn rules_strategy() -> impl Strategy<Value = Vec<RuleConfig>> {
            proptest::collection::vec(
                prop_oneof![rule_strategy(Effect::Allow), rule_strategy(Effect::Deny)],
                0..6,
            )
        }

        fn principal_strategy() -> impl Strategy<Value = Principal> {
            (
                proptest::option::of(prop_oneof![
                    Just(json!(1)),
                    Just(json!(9)),
                    Just(json!("x"))
                ]),
                proptest::option::of(prop_oneof![Just(json!("admin")), Just(json!("user"))]),
                proptest::collection::vec(prop_oneof![Just("s1"), Just("s2")], 0..3),
            )
                .prop_map(|(level, role, scopes)| {
                    let mut claims = serde_json::Map::new();
                    if let Some(level) = level {
                        claims.insert("level".into(), level);
                    }
                    if let Some(role) = role {
                        claims.insert("role".into(), role);
                    }
                    principal(Value::Object(claims), &scopes)
                })
        }

        const FAILURES: [Reason; 5] = [
            Reason::MissingCredential,
            Reason::Expired,
            Reason::InvalidSignature,
            Reason::AmbiguousCredential,
            Reason::UpstreamUnavailable,
        ];

        fn build(rules: Vec<RuleConfig>, default: Effect) -> Policy {
            Policy::build(
                &AuthorizationConfig { default, rules },
                Arc::new(Metrics::new(true)),
            )
            .expect("generated rules compile")
        }

        fn allowed(
            p: &Policy,
            authn: Result<&Principal, &Denial>,
            path: &str,
            required: &[String],
        ) -> bool {
            let resource = Resource {
                http_method: "GET",
                path,
                ..Default::default()
            };
            matches!(p.decide(authn, &resource, required), Verdict::Allow { .. })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Removing or corrupting the credential never turns a deny into an allow.
            #[test]
            fn losing_the_credential_never_turns_deny_into_allow(
                rules in rules_strategy(),
                default_allow in any::<bool>(),
                who in principal_strategy(),
                path in 0..REQUEST_PATHS.len(),
                required in proptest::collection::vec(prop_oneof![Just("s1".to_owned()), Just("s2".to_owned())], 0..2),
            ) {
                let default = if default_allow { Effect::Allow } else { Effect::Deny };
                let p = build(rules, default);
                let path = REQUEST_PATHS[path];
                if !allowed(&p, Ok(&who), path, &required) {
                    for reason in FAILURES {
                        let failure = Denial::new(reason, "failed");
                        prop_assert!(
                            !allowed(&p, Err(&failure), path, &required),
                            "{reason:?} turned a deny into an allow on {path}"
                        );
                    }
                }
            }

            /// Adding a deny rule never turns a deny into an allow.
            #[test]
            fn adding_a_deny_rule_never_turns_deny_into_allow(
                rules in rules_strategy(),
                extra in rule_strategy(Effect::Deny),
                position in 0..7usize,
                default_allow in any::<bool>(),
                who in proptest::option::of(principal_strategy()),
                failure in 0..FAILURES.len(),
                path in 0..REQUEST_PATHS.len(),
            ) {
                let default = if default_allow { Effect::Allow } else { Effect::Deny };
                let path = REQUEST_PATHS[path];
                let failure = Denial::new(FAILURES[failure], "failed");
                let authn = who.as_ref().ok_or(&failure);
                let before = allowed(&build(rules.clone(), default), authn, path, &[]);
                let mut more = rules;
                more.insert(position.min(more.len()), extra);
                let after = allowed(&build(more, default), authn, path, &[]);
                prop_assert!(before || !after, "a deny rule turned a deny into an allow on {path}");
            }
        }
    }
}
