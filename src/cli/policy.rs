//! `portcullis policy test --config FILE CASES.yaml [--explain]`: evaluates listed requests
//! against a config's rules offline, like `opa test`, and compares each decision, rule and
//! reason with the expected ones. Exit 0 when every case passes, 1 on any mismatch, 64 when
//! the config or the cases file is invalid.
//!
//! A case's credential is a token (verified as the server would, with the config's static
//! keys: nothing is fetched), a set of claims (a JWT principal of the issuer its `iss`
//! names, with no signature, time or audience check: the case tests the rules), or absent.
//! The request is an HTTP request as Envoy's Check describes it, or a gRPC method.
//! `--offline` reads no key file or secret (for a config rendered by Helm, whose files are
//! mounted only in the pod): it evaluates claims and credential-less cases only.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{
    build::{self, BuildMode},
    config,
    credentials::{self, Carried},
    decision::{CredentialType, Decision, Denial, Principal, Reason},
    headers::Headers,
    pipeline::{Pipeline, RequestAttrs, decide_for, explain_for},
    policy::{Policy, Resource},
    telemetry::metrics::{Metrics, Surface},
    upstream::UpstreamHeaders,
};

use super::EXIT_BAD_CONFIG;

/// Largest cases file read, in bytes.
const MAX_CASES_BYTES: u64 = 8 * 1024 * 1024;
/// Most cases in one file.
const MAX_CASES: usize = 10_000;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Evaluate the requests of CASES against the config's rules and compare each outcome
    /// with the expected one: exit 0 when all pass, 1 on any mismatch, 64 on invalid input.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub struct TestArgs {
    #[arg(long)]
    config: PathBuf,
    /// The cases, YAML: `cases: [{name, request, credential, expect}]` (see docs/policy-tests.md).
    cases: PathBuf,
    /// For every case, show how each rule fared: whether it matches and why it holds or not.
    #[arg(long)]
    explain: bool,
    /// Read no key file, secret or variable the config names: cases give claims or no
    /// credential, and headers are not searched for one (tokens need the keys).
    #[arg(long)]
    offline: bool,
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Test(args) => test(&args),
    }
}

/// A cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    request: CaseRequest,
    #[serde(default)]
    credential: Option<CaseCredential>,
    expect: Expectation,
}

/// What the request accesses: `method`, `host`, `path` (with its query) as Envoy reports
/// them, or `grpc` (service and method); headers and route context extensions optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    #[serde(default)]
    method: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    grpc: Option<GrpcMethod>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    context_extensions: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcMethod {
    service: String,
    method: String,
}

/// Exactly one of `token` and `claims`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseCredential {
    /// A bearer token, verified with the config's static keys.
    #[serde(default)]
    token: Option<String>,
    /// The claims of a JWT its `iss` issuer would accept.
    #[serde(default)]
    claims: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    decision: Expected,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expected {
    Allow,
    Deny,
}

/// What a case's request got.
struct Outcome {
    allowed: bool,
    rule: String,
    reason: Option<Reason>,
    message: String,
}

fn test(args: &TestArgs) -> ExitCode {
    let cases = match read_cases(&args.cases, args.offline) {
        Ok(cases) => cases,
        Err(message) => {
            eprintln!("{}: {message}", args.cases.display());
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let config = match config::load_file(&args.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!(
                "{}: invalid configuration:\n{errors}",
                args.config.display()
            );
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    super::runtime().block_on(async {
        let evaluator = match Evaluator::new(config, args.offline) {
            Ok(evaluator) => evaluator,
            Err(message) => {
                eprintln!("{}: {message}", args.config.display());
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        };
        let mut failed = 0;
        for case in &cases {
            match run_case(&evaluator, case, args.explain).await {
                Ok(true) => {}
                Ok(false) => failed += 1,
                Err(message) => {
                    eprintln!("case {:?}: {message}", case.name);
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            }
        }
        println!(
            "{} cases, {} passed, {failed} failed",
            cases.len(),
            cases.len() - failed
        );
        if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

/// What decides the cases: the config's whole pipeline as `check-config` builds it (static
/// keys loaded, nothing fetched), or with `--offline` its rules alone.
enum Evaluator {
    Pipeline(Box<Pipeline>),
    RulesOnly {
        policy: Policy,
        upstream: UpstreamHeaders,
        /// (name, `issuer`) of each configured issuer, for claims cases.
        issuers: Vec<(String, String)>,
        /// `credentials.api_key_headers`.
        api_key_headers: Vec<String>,
    },
}

impl Evaluator {
    fn new(config: config::Config, offline: bool) -> Result<Self, String> {
        // Nothing is served: these metrics are never read.
        let metrics = Arc::new(Metrics::new(false));
        if offline {
            let policy = Policy::build(&config.authorization, metrics)
                .map_err(|errors| format!("invalid rules:\n{}", config::ConfigErrors(errors)))?;
            return Ok(Self::RulesOnly {
                policy,
                upstream: UpstreamHeaders::new(&config.response.claims_to_headers)
                    .with_identity_header(
                        config
                            .response
                            .identity_token
                            .as_ref()
                            .map(|identity| identity.header.as_str()),
                    ),
                issuers: config
                    .issuers
                    .iter()
                    .map(|issuer| (issuer.name.clone(), issuer.issuer.clone()))
                    .collect(),
                api_key_headers: config.credentials.api_key_headers.clone(),
            });
        }
        let client = crate::outbound::http_client()?;
        build::pipeline(config, &client, &metrics, None, BuildMode::Check)
            .map(|pipeline| Self::Pipeline(Box::new(pipeline)))
            .map_err(|errors| format!("invalid configuration:\n{errors}"))
    }

    fn rules(&self) -> (&Policy, &UpstreamHeaders) {
        match self {
            Self::Pipeline(pipeline) => (pipeline.policy(), pipeline.upstream()),
            Self::RulesOnly {
                policy, upstream, ..
            } => (policy, upstream),
        }
    }

    /// Whether a header of this (lower-case) name carries a credential.
    fn is_credential_header(&self, name: &str) -> bool {
        let api_key_headers = match self {
            Self::Pipeline(pipeline) => &pipeline.extraction().api_key_headers,
            Self::RulesOnly {
                api_key_headers, ..
            } => api_key_headers,
        };
        name == "authorization" || api_key_headers.iter().any(|h| h == name)
    }

    /// The configured issuer name whose `issuer` is `iss`.
    fn issuer_named_by(&self, iss: &str) -> Option<String> {
        match self {
            Self::Pipeline(pipeline) => pipeline
                .jwt()
                .issuers()
                .find(|issuer| issuer.iss == iss)
                .map(|issuer| issuer.name.to_string()),
            Self::RulesOnly { issuers, .. } => issuers
                .iter()
                .find(|(_, issuer)| issuer == iss)
                .map(|(name, _)| name.clone()),
        }
    }
}

/// Reads and checks the cases file: its size, its shape, every expected reason, and (with
/// `offline`) that no case needs key material.
fn read_cases(path: &Path, offline: bool) -> Result<Vec<Case>, String> {
    let file = std::fs::File::open(path).map_err(|err| format!("cannot read: {err}"))?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_CASES_BYTES + 1),
        &mut text,
    )
    .map_err(|err| format!("cannot read: {err}"))?;
    if text.len() as u64 > MAX_CASES_BYTES {
        return Err(format!("larger than {MAX_CASES_BYTES} bytes"));
    }
    let file: CasesFile =
        serde_norway::from_str(&text).map_err(|err| redacted(&err.to_string()))?;
    if file.cases.is_empty() {
        return Err("no cases".to_owned());
    }
    if file.cases.len() > MAX_CASES {
        return Err(format!("more than {MAX_CASES} cases"));
    }
    for case in &file.cases {
        if let Some(credential) = &case.credential
            && credential.token.is_some() == credential.claims.is_some()
        {
            return Err(format!(
                "case {:?}: a credential is either a token or claims",
                case.name
            ));
        }
        if offline && case.credential.as_ref().is_some_and(|c| c.token.is_some()) {
            return Err(format!(
                "case {:?}: a token needs the config's keys; run without --offline",
                case.name
            ));
        }
        if let Some(reason) = &case.expect.reason {
            if !Reason::ALL.iter().any(|known| known.as_str() == reason) {
                return Err(format!(
                    "case {:?}: unknown reason {reason:?} (docs/reasons.md lists them)",
                    case.name
                ));
            }
            if case.expect.decision == Expected::Allow {
                return Err(format!("case {:?}: an allow has no reason", case.name));
            }
        }
    }
    Ok(file.cases)
}

/// Runs one case, prints its result (and with `explain`, each rule's), and says whether it
/// passed; an error for a case that cannot be run (claims of no configured issuer).
async fn run_case(evaluator: &Evaluator, case: &Case, explain: bool) -> Result<bool, String> {
    let request = &case.request;
    let credential = case.credential.as_ref();
    let authorization = credential
        .and_then(|c| c.token.as_ref())
        .map(|token| format!("Bearer {token}"));
    // As Envoy and HTTP/2 deliver them: lower-case names.
    let names: Vec<String> = request
        .headers
        .keys()
        .map(|name| name.to_ascii_lowercase())
        .collect();
    let mut headers: Vec<(&str, &str)> = names
        .iter()
        .zip(request.headers.values())
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    if let Some(authorization) = &authorization {
        headers.push(("authorization", authorization));
    }
    let query_tokens = credentials::query_access_tokens(&request.path);
    let carries_credential = !query_tokens.is_empty()
        || headers
            .iter()
            .any(|(name, _)| evaluator.is_credential_header(name));
    match (credential, evaluator) {
        (Some(c), _) if c.claims.is_some() && carries_credential => {
            return Err(
                "a claims case carries no other credential (an authorization or API key \
                 header, or an access_token in the path)"
                    .to_owned(),
            );
        }
        (None, Evaluator::RulesOnly { .. }) if carries_credential => {
            return Err(
                "a credential in the headers or the path needs the config's keys; run \
                 without --offline or give claims"
                    .to_owned(),
            );
        }
        _ => {}
    }
    let (grpc_service, grpc_method) = request
        .grpc
        .as_ref()
        .map_or(("", ""), |g| (g.service.as_str(), g.method.as_str()));
    let attrs = RequestAttrs {
        carried: Carried {
            query_credentials: &query_tokens,
            ..Carried::headers_only(Headers::new(&headers))
        },
        audience: "",
        required_scopes: &[],
        resource: Resource {
            grpc_service,
            grpc_method,
            http_method: &request.method,
            host: &request.host,
            path: &request.path,
            alternate_path: "",
            context_extensions: Some(&request.context_extensions),
        },
        scheme: "",
    };
    let given = match credential.and_then(|c| c.claims.as_ref()) {
        Some(claims) => Some(principal_of(evaluator, claims.clone())?),
        None => None,
    };
    let (policy, upstream) = evaluator.rules();
    let decision = match (evaluator, &given) {
        (Evaluator::Pipeline(pipeline), None) => pipeline.run(Surface::authorize, attrs).await,
        (_, given) => decide_for(policy, upstream, given.as_ref(), &attrs),
    };
    let outcome = outcome_of(&decision);
    let mismatch = mismatch(&case.expect, &outcome);
    let verdict = if outcome.allowed {
        format!("allow by {}", outcome.rule)
    } else {
        let by = if outcome.rule.is_empty() {
            String::new()
        } else {
            format!(" by {}", outcome.rule)
        };
        format!(
            "deny{by} ({}: {})",
            outcome.reason.map_or("", Reason::as_str),
            outcome.message
        )
    };
    match &mismatch {
        None => println!("PASS  {}: {verdict}", case.name),
        Some(expected) => println!("FAIL  {}: expected {expected}, got {verdict}", case.name),
    }
    if explain {
        let authn = match (evaluator, &given) {
            (_, Some(principal)) => Ok(Arc::clone(principal)),
            (Evaluator::Pipeline(pipeline), None) => pipeline.authenticate_request(&attrs).await,
            (Evaluator::RulesOnly { .. }, None) => Err(Denial::new(
                Reason::MissingCredential,
                "no credential presented",
            )),
        };
        match explain_for(policy, upstream, &attrs, authn.as_deref()) {
            Ok(traces) => {
                for trace in traces {
                    println!("      {trace}");
                }
            }
            Err(refused) => println!("      no rule consulted: {}", refused.message),
        }
    }
    Ok(mismatch.is_none())
}

/// The principal a case's claims describe: a JWT of the configured issuer whose `issuer`
/// is the claims' `iss`, with the subject and scopes that issuer would read from them.
fn principal_of(
    evaluator: &Evaluator,
    claims: Map<String, Value>,
) -> Result<Arc<Principal>, String> {
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or("claims need an `iss` naming a configured issuer")?;
    let issuer = evaluator
        .issuer_named_by(iss)
        .ok_or_else(|| format!("no configured issuer has issuer {iss:?}"))?;
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let scopes = crate::jwt::scopes(&claims).map_err(|denial| denial.message)?;
    let expires_at = claims.get("exp").and_then(Value::as_i64);
    Ok(Arc::new(Principal::new(
        subject,
        issuer.into(),
        CredentialType::Jwt,
        claims,
        scopes,
        expires_at,
        "".into(),
    )))
}

/// A parse error without the long quoted values it may echo (a token written where a map
/// was expected must not reach the terminal or a CI log).
fn redacted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('"');
        let quoted = i % 2 == 0;
        if quoted && part.chars().count() > 24 {
            out.push('…');
        } else {
            out.push_str(part);
        }
    }
    out
}

fn outcome_of(decision: &Decision) -> Outcome {
    match decision {
        Decision::Allow { rule, .. } => Outcome {
            allowed: true,
            rule: rule.clone(),
            reason: None,
            message: String::new(),
        },
        Decision::Deny { denial, rule, .. } => Outcome {
            allowed: false,
            rule: rule.clone(),
            reason: Some(denial.reason),
            message: denial.message.clone(),
        },
    }
}

/// What was expected, when the outcome differs from it in any stated part.
fn mismatch(expect: &Expectation, outcome: &Outcome) -> Option<String> {
    let decision_differs = (expect.decision == Expected::Allow) != outcome.allowed;
    let rule_differs = expect
        .rule
        .as_ref()
        .is_some_and(|rule| *rule != outcome.rule);
    let reason_differs = expect
        .reason
        .as_ref()
        .is_some_and(|reason| Some(reason.as_str()) != outcome.reason.map(Reason::as_str));
    if !(decision_differs || rule_differs || reason_differs) {
        return None;
    }
    let mut expected = match expect.decision {
        Expected::Allow => "allow".to_owned(),
        Expected::Deny => "deny".to_owned(),
    };
    if let Some(rule) = &expect.rule {
        expected.push_str(&format!(" by {rule}"));
    }
    if let Some(reason) = &expect.reason {
        expected.push_str(&format!(" ({reason})"));
    }
    Some(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expectation(decision: Expected, rule: Option<&str>, reason: Option<&str>) -> Expectation {
        Expectation {
            decision,
            rule: rule.map(str::to_owned),
            reason: reason.map(str::to_owned),
        }
    }

    fn denied(rule: &str, reason: Reason) -> Outcome {
        Outcome {
            allowed: false,
            rule: rule.to_owned(),
            reason: Some(reason),
            message: String::new(),
        }
    }

    #[test]
    fn long_quoted_values_leave_parse_errors() {
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
        let message = format!(
            "cases[0].credential: invalid type: string \"{token}\", expected struct at line 3"
        );
        let shown = redacted(&message);
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(shown.contains("invalid type: string \"…\", expected struct at line 3"));
        assert_eq!(
            redacted("unknown field `extra`, expected \"name\""),
            "unknown field `extra`, expected \"name\""
        );
    }

    #[test]
    fn only_the_parts_a_case_states_are_compared() {
        let outcome = denied("orders-read", Reason::InsufficientScope);
        let deny = |rule, reason| mismatch(&expectation(Expected::Deny, rule, reason), &outcome);
        assert_eq!(deny(None, None), None);
        assert_eq!(deny(Some("orders-read"), Some("INSUFFICIENT_SCOPE")), None);
        assert_eq!(
            deny(Some("orders-write"), None).as_deref(),
            Some("deny by orders-write")
        );
        assert_eq!(
            deny(None, Some("POLICY_DENIED")).as_deref(),
            Some("deny (POLICY_DENIED)")
        );
        assert_eq!(
            mismatch(&expectation(Expected::Allow, None, None), &outcome).as_deref(),
            Some("allow")
        );
    }
}
