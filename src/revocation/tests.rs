//! The denylist's lookups, and what `check` refuses.

use serde_json::{Value, json};

use super::*;
use crate::{claims::Claims, config::SecretRef};

fn claims(value: Value) -> Claims {
    match value {
        Value::Object(map) => Claims::new(map),
        _ => unreachable!("an object"),
    }
}

fn list() -> Denylist {
    [
        Revocation::Token {
            jti: "stolen".into(),
            issuer: None,
        },
        Revocation::Token {
            jti: "corp-only".into(),
            issuer: Some("corp".into()),
        },
        Revocation::Subject {
            subject: "mallory".into(),
            issuer: None,
            issued_before: 1_000,
        },
        Revocation::Subject {
            subject: "bob".into(),
            issuer: Some("partner".into()),
            issued_before: 2_000,
        },
    ]
    .into_iter()
    .collect()
}

#[test]
fn a_revoked_jti_is_refused_for_its_issuers_only() {
    let list = list();
    let token = |jti: &str| claims(json!({"jti": jti, "iat": 5_000}));
    assert!(list.revokes("corp", "alice", &token("stolen")));
    assert!(list.revokes("partner", "alice", &token("stolen")));
    assert!(list.revokes("corp", "alice", &token("corp-only")));
    assert!(!list.revokes("partner", "alice", &token("corp-only")));
    assert!(!list.revokes("corp", "alice", &token("fresh")));
    let numeric: Denylist = [Revocation::Token {
        jti: "7".into(),
        issuer: None,
    }]
    .into_iter()
    .collect();
    assert!(
        numeric.revokes("corp", "alice", &claims(json!({"jti": 7}))),
        "a numeric jti, by its text"
    );
    assert!(!list.revokes("corp", "alice", &claims(json!({"jti": 7}))));
    // A double cannot tell these two apart: the claims keep them exactly.
    let large: Denylist = [Revocation::Token {
        jti: "9007199254740993".into(),
        issuer: None,
    }]
    .into_iter()
    .collect();
    let jti = |n: u64| claims(json!({"jti": n}));
    assert!(large.revokes("corp", "alice", &jti(9_007_199_254_740_993)));
    assert!(!large.revokes("corp", "alice", &jti(9_007_199_254_740_992)));
}

#[test]
fn a_subject_revocation_refuses_older_tokens_and_tokens_without_iat() {
    let list = list();
    let issued = |iat: i64| claims(json!({"iat": iat}));
    assert!(list.revokes("corp", "mallory", &issued(999)));
    assert!(
        !list.revokes("corp", "mallory", &issued(1_000)),
        "issued at the revocation"
    );
    assert!(
        !list.revokes("corp", "mallory", &issued(1_001)),
        "issued after: works"
    );
    assert!(
        list.revokes("corp", "mallory", &claims(json!({}))),
        "no iat: cannot tell"
    );
    assert!(list.revokes("partner", "bob", &issued(1_999)));
    assert!(
        !list.revokes("corp", "bob", &issued(1_999)),
        "another issuer's bob"
    );
    assert!(!list.revokes("corp", "alice", &issued(1)));
}

fn settings() -> RevocationConfig {
    RevocationConfig {
        url: SecretRef::Inline("postgres://unused".into()),
        retention: std::time::Duration::from_secs(3600),
        resync_interval: std::time::Duration::from_secs(60),
        timeout: std::time::Duration::from_secs(1),
    }
}

fn principal(kind: CredentialType, subject: &str, claims_value: Value) -> Principal {
    Principal::new(
        subject.into(),
        "corp".into(),
        kind,
        claims_value.as_object().cloned().unwrap_or_default(),
        Vec::new(),
        None,
        "".into(),
    )
}

#[test]
fn check_refuses_revoked_jwts_only() {
    let revocations = Revocations::fixed(&settings(), list());
    let revoked = principal(CredentialType::Jwt, "alice", json!({"jti": "stolen"}));
    assert_eq!(
        revocations.check(&revoked).unwrap_err().reason,
        Reason::Revoked
    );
    let fine = principal(
        CredentialType::Jwt,
        "alice",
        json!({"jti": "other", "iat": 1}),
    );
    assert!(revocations.check(&fine).is_ok());
    let key = principal(CredentialType::ApiKey, "mallory", json!({}));
    assert!(
        revocations.check(&key).is_ok(),
        "API keys are revoked in their store"
    );
}

#[test]
fn nothing_is_accepted_before_the_list_has_loaded() {
    let unloaded = Revocations {
        settings: settings(),
        current: Arc::new(ArcSwapOption::empty()),
        ready: Arc::new(watch::channel(false).0),
        task: None,
    };
    let token = principal(CredentialType::Jwt, "alice", json!({"jti": "any"}));
    assert_eq!(
        unloaded.check(&token).unwrap_err().reason,
        Reason::UpstreamUnavailable
    );
}

#[test]
fn a_revocation_read_twice_is_held_once() {
    let mut list = list();
    let held = list.len();
    for revocation in list_entries() {
        list.insert(revocation);
    }
    assert_eq!(list.len(), held);
}

/// The revocations of [`list`], again.
fn list_entries() -> Vec<Revocation> {
    vec![
        Revocation::Token {
            jti: "stolen".into(),
            issuer: None,
        },
        Revocation::Subject {
            subject: "mallory".into(),
            issuer: None,
            issued_before: 1_000,
        },
    ]
}
