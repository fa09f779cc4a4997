//! The local GCRA and the limits a request counts against.

use serde_json::Map;

use super::*;
use crate::config::LimitConfig;

fn principal(kind: CredentialType, issuer: &str, subject: &str, key_id: &str) -> Principal {
    Principal::new(
        subject.into(),
        issuer.into(),
        kind,
        Map::new(),
        Vec::new(),
        None,
        key_id.into(),
    )
}

fn counted(identity: &str, rate: &str, burst: u32) -> Counted {
    Counted {
        identity: identity.to_owned(),
        limit: RateLimit::new(rate, burst).unwrap(),
        policy: "key",
    }
}

#[test]
fn a_burst_passes_then_the_rate_holds() {
    let local = LocalCounters::default();
    let limits = [counted("a", "10/s", 5)];
    let allowed = (0..20)
        .filter(|_| local.check(&limits) == Verdict::Allowed)
        .count();
    assert_eq!(allowed, 5, "the burst, at once");
    let Verdict::Limited { retry_after_ms, .. } = local.check(&limits) else {
        panic!("limited")
    };
    assert!((1..=100).contains(&retry_after_ms), "{retry_after_ms}");
    std::thread::sleep(Duration::from_millis(220));
    let allowed = (0..20)
        .filter(|_| local.check(&limits) == Verdict::Allowed)
        .count();
    assert!((1..=3).contains(&allowed), "about 2 per 200 ms: {allowed}");
}

#[test]
fn all_limits_are_consumed_or_none() {
    let local = LocalCounters::default();
    let wide = counted("wide", "100/s", 100);
    let narrow = counted("narrow", "1/h", 1);
    assert_eq!(
        local.check(&[wide.clone(), narrow.clone()]),
        Verdict::Allowed
    );
    match local.check(&[wide.clone(), narrow.clone()]) {
        Verdict::Limited {
            index,
            retry_after_ms,
        } => {
            assert_eq!(index, 1, "the narrow limit");
            assert!(
                (3_590_000..=3_600_000).contains(&retry_after_ms),
                "{retry_after_ms}"
            );
        }
        Verdict::Allowed => panic!("limited"),
    }
    // The refused request took nothing from the wide limit: 99 remain of its burst.
    let allowed = (0..200)
        .filter(|_| local.check(std::slice::from_ref(&wide)) == Verdict::Allowed)
        .count();
    assert_eq!(allowed, 99);
}

#[test]
fn limits_are_chosen_by_key_subject_and_rule() {
    let config = RateLimitsConfig {
        per_subject: Some(LimitConfig {
            rate: "100/s".into(),
            burst: 100,
        }),
        rules: [(
            "writes".to_owned(),
            LimitConfig {
                rate: "1/s".into(),
                burst: 1,
            },
        )]
        .into(),
        redis: None,
    };
    let limiter = RateLimiter::new(&config, None, Arc::default());
    let key = principal(CredentialType::ApiKey, "api_keys.file", "billing", "k1")
        .with_rate_limit(Some(RateLimit::new("5/s", 5).unwrap()));
    let policies: Vec<_> = limiter
        .limits_for(&key, "writes")
        .iter()
        .map(|c| c.policy)
        .collect();
    assert_eq!(policies, ["key", "subject", "rule"]);
    let jwt = principal(CredentialType::Jwt, "corp", "billing", "");
    let counted = limiter.limits_for(&jwt, "reads");
    assert_eq!(counted.len(), 1, "only the subject's limit");
    assert_ne!(
        counted[0].identity,
        limiter.limits_for(&key, "reads")[1].identity,
        "the same subject of another issuer is counted apart"
    );
}

#[tokio::test]
async fn a_request_over_a_limit_is_rate_limited_with_its_headers() {
    let config = RateLimitsConfig {
        per_subject: Some(LimitConfig {
            rate: "2/s".into(),
            burst: 2,
        }),
        ..RateLimitsConfig::default()
    };
    let limiter = RateLimiter::new(&config, None, Arc::default());
    let alice = principal(CredentialType::Jwt, "corp", "alice", "");
    assert!(limiter.check(&alice, "r").await.is_ok());
    assert!(limiter.check(&alice, "r").await.is_ok());
    let denial = limiter.check(&alice, "r").await.unwrap_err();
    assert_eq!(denial.reason, Reason::RateLimited);
    let limit = denial.rate_limit.expect("the limit");
    let headers = limit.headers();
    assert_eq!(headers[0], ("retry-after", "1".to_owned()));
    assert_eq!(headers[1], ("ratelimit", "\"subject\";r=0;t=1".to_owned()));
    assert_eq!(
        headers[2],
        ("ratelimit-policy", "\"subject\";q=2;w=1".to_owned())
    );
}
