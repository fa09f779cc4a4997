//! Authorization (SPEC §5): rules compiled once from config, matched against the request's
//! resource, and checked against the verified principal. Default deny.
//!
//! Evaluation: among the enforced rules that match the request, a satisfied `deny` rule wins;
//! otherwise the first satisfied `allow` rule allows; otherwise the first matching allow
//! rule's failure is the answer (e.g. INSUFFICIENT_SCOPE naming the missing scopes); when no
//! rule matches, `authorization.default` decides. Shadow rules are evaluated the same way and
//! logged, never enforced. Anonymous rules allow without a credential (public routes).

mod matcher;

use std::collections::HashMap;

use serde_json::Value;
use tracing::info;

pub use matcher::normalize_path;
use matcher::{Globs, Matcher};

use crate::{
    config::{AuthorizationConfig, ConfigError, Effect, RuleConfig, RuleMode},
    decision::{CredentialType, Denial, Principal, Reason},
    telemetry::metrics::{METRICS, Outcome, ShadowLabels},
};

/// What a request accesses, as the policy sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resource<'a> {
    pub grpc_service: &'a str,
    pub grpc_method: &'a str,
    pub http_method: &'a str,
    pub host: &'a str,
    /// Normalized path without query string (see [`normalize_path`]).
    pub path: &'a str,
    pub context_extensions: Option<&'a HashMap<String, String>>,
}

/// Compiled rules.
pub struct Policy {
    rules: Vec<Rule>,
    /// Whether any rule is in shadow mode (decided once, not per request).
    has_shadow: bool,
    default: Effect,
    cel_env: std::sync::Arc<cel::Env>,
}

/// One compiled rule.
pub struct Rule {
    pub name: String,
    matcher: Matcher,
    require: Requirements,
    pub effect: Effect,
    pub mode: RuleMode,
    pub anonymous: bool,
    pub allow_query_credentials: bool,
}

struct Requirements {
    credential_types: Vec<CredentialType>,
    issuers: Vec<String>,
    scopes_all: Vec<String>,
    scopes_any: Vec<String>,
    claims: Vec<(Vec<String>, Value)>,
    cel: Option<cel::Program>,
}

/// The policy's answer for an authenticated (or anonymous) request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow { rule: String },
    Deny { denial: Denial, rule: String },
}

/// The rule name reported when `authorization.default` decides.
pub const DEFAULT_RULE: &str = "default";

impl Policy {
    /// Compiles every rule, reporting each bad pattern or CEL expression with its rule.
    pub fn build(config: &AuthorizationConfig) -> Result<Self, Vec<ConfigError>> {
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
        })
    }

    /// Rules whose `match` applies to `resource`, enforced and shadow alike.
    pub fn matching<'p>(
        &'p self,
        resource: &'p Resource<'p>,
    ) -> impl Iterator<Item = &'p Rule> + 'p {
        self.rules
            .iter()
            .filter(move |rule| rule.matcher.matches(resource))
    }

    /// Whether an enforced rule matching `resource` accepts credentials in the query string.
    pub fn allows_query_credentials(&self, resource: &Resource<'_>) -> bool {
        self.matching(resource)
            .any(|rule| rule.mode == RuleMode::Enforce && rule.allow_query_credentials)
    }

    /// Whether an enforced anonymous rule matches `resource`.
    pub fn anonymous_rule<'p>(&'p self, resource: &'p Resource<'p>) -> Option<&'p Rule> {
        self.matching(resource)
            .find(|rule| rule.mode == RuleMode::Enforce && rule.anonymous)
    }

    /// Decides for a verified principal (or an anonymous caller when `principal` is None and
    /// an anonymous rule applies). Shadow rules are evaluated and logged here too.
    pub fn decide(&self, principal: Option<&Principal>, resource: &Resource<'_>) -> Verdict {
        let verdict = self.evaluate(RuleMode::Enforce, principal, resource);
        if self.has_shadow {
            let shadow = self.evaluate(RuleMode::Shadow, principal, resource);
            let (decision, rule) = match &shadow {
                Verdict::Allow { rule } => ("allow", rule),
                Verdict::Deny { rule, .. } => ("deny", rule),
            };
            if rule != DEFAULT_RULE {
                let outcome = if decision == "allow" {
                    Outcome::allow
                } else {
                    Outcome::deny
                };
                METRICS
                    .shadow_decisions
                    .get_or_create(&ShadowLabels {
                        rule: rule.clone(),
                        decision: outcome,
                    })
                    .inc();
                info!(shadow_rule = %rule, shadow_decision = decision, "shadow rule evaluated (not enforced)");
            }
        }
        verdict
    }

    fn evaluate(
        &self,
        mode: RuleMode,
        principal: Option<&Principal>,
        resource: &Resource<'_>,
    ) -> Verdict {
        // Two passes over the matching rules (deny first), without collecting them.
        let rules = |effect: Effect| {
            self.matching(resource)
                .filter(move |rule| rule.mode == mode && rule.effect == effect)
        };
        for rule in rules(Effect::Deny) {
            if let Some(principal) = principal
                && rule.check(principal, resource, &self.cel_env).is_ok()
            {
                return Verdict::Deny {
                    denial: Denial::new(
                        Reason::PolicyDenied,
                        format!("denied by rule {}", rule.name),
                    ),
                    rule: rule.name.clone(),
                };
            }
        }
        let mut first_failure = None;
        for rule in rules(Effect::Allow) {
            let outcome = match principal {
                _ if rule.anonymous => Ok(()),
                Some(principal) => rule.check(principal, resource, &self.cel_env),
                None => Err(Denial::new(
                    Reason::MissingCredential,
                    "no credential presented",
                )),
            };
            match outcome {
                Ok(()) => {
                    return Verdict::Allow {
                        rule: rule.name.clone(),
                    };
                }
                Err(denial) => {
                    first_failure.get_or_insert((denial, rule.name.clone()));
                }
            }
        }
        if let Some((denial, rule)) = first_failure {
            return Verdict::Deny { denial, rule };
        }
        match self.default {
            Effect::Allow if principal.is_some() => Verdict::Allow {
                rule: DEFAULT_RULE.to_owned(),
            },
            _ => Verdict::Deny {
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
    ) -> Result<(), Denial> {
        let req = &self.require;
        let denied = |message: String| Denial::new(Reason::PolicyDenied, message);
        if !req.credential_types.is_empty()
            && !req.credential_types.contains(&principal.credential_type)
        {
            return Err(denied(format!(
                "rule {} does not accept {} credentials",
                self.name,
                principal.credential_type.as_str()
            )));
        }
        if !req.issuers.is_empty() && !req.issuers.contains(&principal.issuer) {
            return Err(denied(format!(
                "rule {} does not accept issuer {}",
                self.name, principal.issuer
            )));
        }
        let missing = principal.missing_scopes(&req.scopes_all);
        if !missing.is_empty() {
            return Err(Denial::insufficient_scope(missing));
        }
        if !req.scopes_any.is_empty()
            && !req.scopes_any.iter().any(|s| principal.scopes.contains(s))
        {
            return Err(Denial::insufficient_scope(req.scopes_any.clone()));
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
                    return Err(denied(format!(
                        "rule {}: expression failed: {message}",
                        self.name
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
        },
        effect: rule.effect,
        mode: rule.mode,
        anonymous: rule.anonymous,
        allow_query_credentials: rule.allow_query_credentials,
    })
}

/// Equality for scalars; membership when the claim is an array; an expected list means any
/// of its values. Numbers compare by value (7 == 7.0).
fn claim_matches(
    claims: &serde_json::Map<String, Value>,
    path: &[String],
    expected: &Value,
) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let mut current = match claims.get(first) {
        Some(value) => value,
        None => return false,
    };
    for segment in rest {
        match current.get(segment) {
            Some(next) => current = next,
            None => return false,
        }
    }
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
        value => candidates.iter().any(|c| equal(value, c)),
    }
}

fn eval_cel(
    program: &cel::Program,
    env: &std::sync::Arc<cel::Env>,
    principal: &Principal,
    resource: &Resource<'_>,
) -> Result<bool, String> {
    let mut context = cel::Context::with_env(env.clone());
    let claims = cel::to_value(&principal.claims).map_err(|err| err.to_string())?;
    context.add_variable_from_value("claims", claims);
    let principal_value = serde_json::json!({
        "subject": principal.subject,
        "issuer": principal.issuer,
        "credential_type": principal.credential_type.as_str(),
        "scopes": principal.scopes,
        "key_id": principal.key_id,
    });
    context.add_variable_from_value(
        "principal",
        cel::to_value(&principal_value).map_err(|err| err.to_string())?,
    );
    let request = serde_json::json!({
        "grpc": {"service": resource.grpc_service, "method": resource.grpc_method},
        "http": {"method": resource.http_method, "host": resource.host, "path": resource.path},
        "context_extensions": resource.context_extensions.cloned().unwrap_or_default(),
    });
    context.add_variable_from_value(
        "request",
        cel::to_value(&request).map_err(|err| err.to_string())?,
    );
    match program.execute(&context) {
        Ok(cel::Value::Bool(result)) => Ok(result),
        Ok(_) => Err("the expression did not yield a boolean".to_owned()),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let config: AuthorizationConfig = serde_yaml::from_str(yaml).unwrap();
        Policy::build(&config).unwrap_or_else(|e| panic!("{e:?}"))
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
        match p.decide(who, &resource) {
            Verdict::Allow { rule } => (true, rule, None),
            Verdict::Deny { denial, rule } => (false, rule, Some(denial.reason)),
        }
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
                (false, "orders-read", Some(Reason::MissingCredential)),
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
        let before = METRICS.shadow_decisions.get_or_create(&labels).get();
        assert_eq!(
            verdict(&p, Some(&reader), "GET", "/orders/1"),
            (true, "orders-read".to_owned(), None)
        );
        assert_eq!(
            METRICS.shadow_decisions.get_or_create(&labels).get(),
            before + 1
        );
    }

    #[test]
    fn bad_rules_are_config_errors_naming_the_rule() {
        let config: AuthorizationConfig = serde_yaml::from_str(
            r#"
rules:
  - name: broken-cel
    require: { cel: "claims.x ==" }
  - name: broken-glob
    match: { http: { paths: ["/a/[" ] } }
"#,
        )
        .unwrap();
        let errors = Policy::build(&config).err().unwrap();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].message.contains("broken-cel"));
        assert!(errors[1].message.contains("broken-glob"));
    }
}
