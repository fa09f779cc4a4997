//! Registered-claim checks (RFC 7519 §4.1, RFC 8725 §3.8-3.11) for one issuer: exp, nbf and
//! iat with leeway, audience, required claims, `typ`, and the well-typedness of sub/scope.
//! NumericDates must be JSON numbers: a date written as a string is INVALID_CLAIMS.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::{
    claims::Claims,
    config::IssuerConfig,
    decision::{Denial, Reason},
};

/// What an issuer requires of a token's claims.
#[derive(Debug, Clone)]
pub struct ClaimPolicy {
    pub audiences: Vec<String>,
    pub leeway_seconds: i64,
    pub required_claims: Vec<String>,
    /// Normalized (lower-case, no `application/` prefix) allowed `typ` values.
    pub typ: Vec<String>,
}

/// The claims Portcullis acts on, extracted once at verification.
#[derive(Debug, Clone)]
pub struct CheckedClaims {
    pub subject: String,
    pub scopes: Vec<String>,
    pub recheck: Recheck,
}

/// What a cached verification re-checks on every hit besides the requested audience
/// (read from the principal's claims): expiry.
#[derive(Debug, Clone)]
pub struct Recheck {
    pub expires_at: Option<i64>,
}

impl ClaimPolicy {
    pub fn from_config(config: &IssuerConfig) -> Self {
        Self {
            audiences: config.audiences.clone(),
            leeway_seconds: duration_seconds(config.leeway),
            required_claims: config.required_claims.clone(),
            typ: config.typ.iter().map(|t| normalize_typ(t)).collect(),
        }
    }

    /// Checks a verified token's header `typ` and claims at time `now` (Unix seconds).
    /// `requested_audience` is the per-request audience (may be empty).
    pub fn check(
        &self,
        typ: Option<&str>,
        claims: &Map<String, Value>,
        now: i64,
        requested_audience: &str,
    ) -> Result<CheckedClaims, Denial> {
        if !self.typ.is_empty() {
            let allowed = typ.is_some_and(|typ| self.typ.contains(&normalize_typ(typ)));
            if !allowed {
                return Err(Denial::new(
                    Reason::InvalidClaims,
                    "token typ is not allowed",
                ));
            }
        }
        for name in &self.required_claims {
            if claims.get(name).is_none_or(Value::is_null) {
                return Err(Denial::new(
                    Reason::InvalidClaims,
                    format!("required claim {name} is missing"),
                ));
            }
        }
        let expires_at = numeric_date(claims, "exp")?;
        let not_before = numeric_date(claims, "nbf")?;
        let issued_at = numeric_date(claims, "iat")?;
        if let Some(exp) = expires_at
            && now >= exp.saturating_add(self.leeway_seconds)
        {
            return Err(Denial::new(Reason::Expired, "token has expired"));
        }
        if let Some(nbf) = not_before
            && now.saturating_add(self.leeway_seconds) < nbf
        {
            return Err(Denial::new(
                Reason::NotYetValid,
                "token is not valid yet (nbf)",
            ));
        }
        if let Some(iat) = issued_at
            && now.saturating_add(self.leeway_seconds) < iat
        {
            return Err(Denial::new(
                Reason::NotYetValid,
                "token is issued in the future (iat)",
            ));
        }
        let audiences = audiences(claims.get("aud"))?;
        check_audience(&self.audiences, &audiences, requested_audience)?;
        let subject = match claims.get("sub") {
            None => String::new(),
            Some(Value::String(sub)) => sub.clone(),
            Some(_) => return Err(Denial::new(Reason::InvalidClaims, "sub is not a string")),
        };
        Ok(CheckedClaims {
            subject,
            scopes: scopes(claims)?,
            recheck: Recheck { expires_at },
        })
    }

    /// Re-checks a cached verification of `claims`: expiry and the per-request audience.
    pub fn recheck(
        &self,
        recheck: &Recheck,
        claims: &Claims,
        now: i64,
        requested_audience: &str,
    ) -> Result<(), Denial> {
        if let Some(exp) = recheck.expires_at
            && now >= exp.saturating_add(self.leeway_seconds)
        {
            return Err(Denial::new(Reason::Expired, "token has expired"));
        }
        if requested_audience.is_empty() {
            return Ok(());
        }
        let audiences = audiences(claims.get("aud").as_ref())?;
        check_audience(&[], &audiences, requested_audience)
    }
}

fn duration_seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

fn normalize_typ(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    lower
        .strip_prefix("application/")
        .map(str::to_owned)
        .unwrap_or(lower)
}

/// A NumericDate claim: a JSON number (fractions truncated), or absent.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Denial> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => {
            let seconds = number.as_i64().or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f as i64)
            });
            seconds.map(Some).ok_or_else(|| {
                Denial::new(Reason::InvalidClaims, format!("{name} is out of range"))
            })
        }
        Some(_) => Err(Denial::new(
            Reason::InvalidClaims,
            format!("{name} must be a NumericDate (a JSON number)"),
        )),
    }
}

/// `aud` as a string or an array of strings (RFC 7519 §4.1.3).
fn audiences(aud: Option<&Value>) -> Result<Vec<String>, Denial> {
    let ill_typed = || {
        Denial::new(
            Reason::InvalidClaims,
            "aud must be a string or an array of strings",
        )
    };
    match aud {
        None => Ok(Vec::new()),
        Some(Value::String(aud)) => Ok(vec![aud.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(ill_typed))
            .collect(),
        Some(_) => Err(ill_typed()),
    }
}

/// The token must name one of the configured audiences (when any are configured) and the
/// requested audience (when one is given).
fn check_audience(configured: &[String], token: &[String], requested: &str) -> Result<(), Denial> {
    if !configured.is_empty() && !token.iter().any(|aud| configured.contains(aud)) {
        return Err(Denial::new(
            Reason::AudienceMismatch,
            "token audience does not match this service",
        ));
    }
    if !requested.is_empty() && !token.iter().any(|aud| aud == requested) {
        return Err(Denial::new(
            Reason::AudienceMismatch,
            "token audience does not include the requested audience",
        ));
    }
    Ok(())
}

/// Scopes from `scope` (space-separated string, RFC 8693 §4.2) or `scp` (array or string).
pub(crate) fn scopes(claims: &Map<String, Value>) -> Result<Vec<String>, Denial> {
    let ill_typed = |name| Denial::new(Reason::InvalidClaims, format!("{name} is ill-typed"));
    if let Some(scope) = claims.get("scope") {
        return match scope {
            Value::String(text) => Ok(text.split_ascii_whitespace().map(str::to_owned).collect()),
            _ => Err(ill_typed("scope")),
        };
    }
    match claims.get("scp") {
        None => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(text.split_ascii_whitespace().map(str::to_owned).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ill_typed("scp"))
            })
            .collect(),
        Some(_) => Err(ill_typed("scp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            audiences: vec!["api://orders".into()],
            leeway_seconds: 60,
            required_claims: vec!["exp".into()],
            typ: vec![],
        }
    }

    fn check(claims: Value) -> Result<CheckedClaims, Reason> {
        let Value::Object(map) = claims else {
            unreachable!()
        };
        policy()
            .check(None, &map, 1_000_000, "")
            .map_err(|d| d.reason)
    }

    /// A cached verification answers a later request for another audience from the claims
    /// it keeps: only an audience the token names is accepted, once expired nothing is.
    #[test]
    fn a_cached_verification_rechecks_expiry_and_the_requested_audience() {
        let now = 1_000_000;
        for aud in [json!("api://orders"), json!(["x", "api://orders"])] {
            let claims = json!({"exp": now + 10, "aud": aud});
            let checked = check(claims.clone()).expect("valid");
            let Value::Object(map) = claims else {
                unreachable!()
            };
            let kept = Claims::new(map);
            let recheck = |at: i64, requested: &str| {
                policy()
                    .recheck(&checked.recheck, &kept, at, requested)
                    .map_err(|d| d.reason)
            };
            assert_eq!(recheck(now, ""), Ok(()));
            assert_eq!(recheck(now, "api://orders"), Ok(()));
            assert_eq!(recheck(now, "api://other"), Err(Reason::AudienceMismatch));
            assert_eq!(recheck(now, "api://order"), Err(Reason::AudienceMismatch));
            assert_eq!(recheck(now + 10 + 60, ""), Err(Reason::Expired));
        }
    }

    #[test]
    fn table_of_claim_cases() {
        let now = 1_000_000;
        let cases: Vec<(&str, Value, Result<(), Reason>)> = vec![
            (
                "valid",
                json!({"exp": now + 10, "aud": "api://orders"}),
                Ok(()),
            ),
            (
                "aud array containing ours",
                json!({"exp": now + 10, "aud": ["x", "api://orders"]}),
                Ok(()),
            ),
            (
                "expired beyond leeway",
                json!({"exp": now - 61, "aud": "api://orders"}),
                Err(Reason::Expired),
            ),
            (
                "expired within leeway",
                json!({"exp": now - 59, "aud": "api://orders"}),
                Ok(()),
            ),
            (
                "exp as string",
                json!({"exp": (now + 10).to_string(), "aud": "api://orders"}),
                Err(Reason::InvalidClaims),
            ),
            (
                "nbf as string",
                json!({"exp": now + 10, "nbf": "0", "aud": "api://orders"}),
                Err(Reason::InvalidClaims),
            ),
            (
                "nbf in future",
                json!({"exp": now + 1000, "nbf": now + 100, "aud": "api://orders"}),
                Err(Reason::NotYetValid),
            ),
            (
                "iat in future",
                json!({"exp": now + 1000, "iat": now + 100, "aud": "api://orders"}),
                Err(Reason::NotYetValid),
            ),
            (
                "missing exp",
                json!({"aud": "api://orders"}),
                Err(Reason::InvalidClaims),
            ),
            (
                "null exp",
                json!({"exp": null, "aud": "api://orders"}),
                Err(Reason::InvalidClaims),
            ),
            (
                "other audience",
                json!({"exp": now + 10, "aud": "api://billing"}),
                Err(Reason::AudienceMismatch),
            ),
            (
                "empty aud array",
                json!({"exp": now + 10, "aud": []}),
                Err(Reason::AudienceMismatch),
            ),
            (
                "no aud",
                json!({"exp": now + 10}),
                Err(Reason::AudienceMismatch),
            ),
            (
                "aud array with a number",
                json!({"exp": now + 10, "aud": ["api://orders", 1]}),
                Err(Reason::InvalidClaims),
            ),
            (
                "aud object",
                json!({"exp": now + 10, "aud": {"a": 1}}),
                Err(Reason::InvalidClaims),
            ),
            (
                "sub number",
                json!({"exp": now + 10, "aud": "api://orders", "sub": 5}),
                Err(Reason::InvalidClaims),
            ),
            (
                "scope array",
                json!({"exp": now + 10, "aud": "api://orders", "scope": ["a"]}),
                Err(Reason::InvalidClaims),
            ),
        ];
        for (name, claims, expected) in cases {
            assert_eq!(check(claims).map(|_| ()), expected, "{name}");
        }
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let now = 1_000_000;
        let got = check(json!({"exp": now + 10, "aud": "api://orders", "scope": "a b"})).unwrap();
        assert_eq!(got.scopes, ["a", "b"]);
        let got = check(json!({"exp": now + 10, "aud": "api://orders", "scp": ["c"]})).unwrap();
        assert_eq!(got.scopes, ["c"]);
    }

    #[test]
    fn typ_allow_list_is_case_insensitive() {
        let mut policy = policy();
        policy.typ = vec!["at+jwt".into()];
        let Value::Object(claims) = json!({"exp": 2_000_000, "aud": "api://orders"}) else {
            unreachable!()
        };
        assert!(
            policy
                .check(Some("application/AT+JWT"), &claims, 1_000_000, "")
                .is_ok()
        );
        assert!(policy.check(Some("JWT"), &claims, 1_000_000, "").is_err());
        assert!(policy.check(None, &claims, 1_000_000, "").is_err());
    }
}
