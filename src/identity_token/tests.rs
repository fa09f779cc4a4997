//! Minting: claims, audience choice, expiry bounds, reuse and refusal of oversized tokens.

use std::time::Duration;

use jsonwebtoken::{DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use serde_json::{Map, Value, json};

use super::*;
use crate::{config::SecretRef, decision::CredentialType};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testdata/identity");

fn key(name: &str) -> SecretRef {
    SecretRef::File(format!("{KEYS}/{name}.pem").into())
}

fn config() -> IdentityTokenConfig {
    IdentityTokenConfig {
        issuer: "https://portcullis.example".to_owned(),
        jwks_uri: None,
        signing_key: key("ed25519-a"),
        next_signing_key: Some(key("ed25519-b")),
        previous_signing_keys: vec![key("p256-a")],
        header: "x-identity-token".to_owned(),
        ttl: Duration::from_secs(300),
        audience: "upstream".to_owned(),
        audience_by_rule: [("admin".to_owned(), "admin-api".to_owned())].into(),
        audience_by_host: [("orders.internal".to_owned(), "orders".to_owned())].into(),
        claims: [
            ("email".to_owned(), "email".to_owned()),
            ("realm_access.roles".to_owned(), "roles".to_owned()),
        ]
        .into(),
        max_bytes: 8192,
    }
}

fn principal(claims: Value, expires_at: Option<i64>) -> Principal {
    let Value::Object(claims) = claims else {
        unreachable!("an object")
    };
    Principal::new(
        "alice".into(),
        "corp".into(),
        CredentialType::Jwt,
        claims,
        vec!["orders:read".into(), "orders:write".into()],
        expires_at,
        "k1".into(),
    )
}

/// Verifies `token` with the minter's published JWKS, as an upstream would.
fn verify(tokens: &IdentityTokens, token: &str, audience: &str) -> Value {
    let jwks: JwkSet = serde_json::from_slice(&tokens.jwks()).expect("a JWKS");
    let kid = decode_header(token).expect("a header").kid.expect("a kid");
    let jwk = jwks.find(&kid).expect("the signing key is published");
    let key = DecodingKey::from_jwk(jwk).expect("a usable key");
    let mut validation = Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[audience]);
    validation.set_issuer(&["https://portcullis.example"]);
    decode::<Value>(token, &key, &validation)
        .expect("verifies")
        .claims
}

#[test]
fn a_minted_token_carries_the_normalized_claims_and_verifies_with_the_published_keys() {
    let tokens = IdentityTokens::new(&config()).expect("keys load");
    let alice = principal(
        json!({"email": "a@example.com", "realm_access": {"roles": ["admin"]}, "secret": "s"}),
        None,
    );
    let minted = tokens.for_principal(&alice, "r", "other").expect("mints");
    let claims = verify(&tokens, &minted.token, "upstream");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], "https://portcullis.example");
    assert_eq!(claims["credential_type"], "JWT");
    assert_eq!(claims["original_issuer"], "corp");
    assert_eq!(claims["scope"], "orders:read orders:write");
    assert_eq!(claims["email"], "a@example.com");
    assert_eq!(claims["roles"], json!(["admin"]));
    assert!(
        claims.get("secret").is_none(),
        "only configured claims are copied"
    );
    let (iat, exp) = (claims["iat"].as_i64(), claims["exp"].as_i64());
    assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(300));
    assert_eq!(
        claims["jti"].as_str().map(str::len),
        Some(22),
        "128 random bits"
    );
}

#[test]
fn the_jwks_publishes_current_next_and_previous_and_discovery_names_it() {
    let tokens = IdentityTokens::new(&config()).expect("keys load");
    let jwks: JwkSet = serde_json::from_slice(&tokens.jwks()).expect("a JWKS");
    assert_eq!(jwks.keys.len(), 3);
    let minted = tokens
        .for_principal(&principal(json!({}), None), "r", "")
        .expect("mints");
    let kid = decode_header(&*minted.token).expect("a header").kid;
    assert_eq!(jwks.keys[0].common.key_id, kid, "the current key signs");
    let text = String::from_utf8_lossy(&tokens.jwks()).into_owned();
    assert!(!text.contains("\"d\""), "no private key material: {text}");
    let discovery: Value = serde_json::from_slice(&tokens.discovery()).expect("JSON");
    assert_eq!(discovery["issuer"], "https://portcullis.example");
    assert_eq!(
        discovery["jwks_uri"],
        "https://portcullis.example/.well-known/jwks.json"
    );
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["ES256", "EdDSA"])
    );
    assert!(
        discovery["claims_supported"]
            .as_array()
            .is_some_and(|claims| claims.contains(&json!("roles"))),
        "configured claims are named"
    );
}

#[test]
fn the_audience_is_chosen_by_rule_then_host_then_default() {
    let tokens = IdentityTokens::new(&config()).expect("keys load");
    assert_eq!(tokens.audience_for("admin", "orders.internal"), "admin-api");
    assert_eq!(tokens.audience_for("r", "orders.internal"), "orders");
    assert_eq!(tokens.audience_for("r", "billing.internal"), "upstream");
    assert_eq!(tokens.audience_for("", ""), "upstream");
}

#[test]
fn a_token_never_outlives_the_credential_it_stands_for() {
    let tokens = IdentityTokens::new(&config()).expect("keys load");
    let soon = unix_now() + 60;
    let alice = principal(json!({}), Some(soon));
    let minted = tokens.for_principal(&alice, "r", "").expect("mints");
    let claims = verify(&tokens, &minted.token, "upstream");
    assert_eq!(claims["exp"].as_i64(), Some(soon));
}

#[test]
fn a_credential_past_its_expiry_or_without_a_subject_gets_no_token() {
    let tokens = IdentityTokens::new(&config()).expect("keys load");
    let in_leeway = principal(json!({}), Some(unix_now() - 5));
    let denial = tokens
        .for_principal(&in_leeway, "r", "")
        .expect_err("born expired");
    assert_eq!(denial.reason, Reason::Expired);
    let anonymous = Principal::new(
        String::new(),
        "corp".into(),
        CredentialType::Jwt,
        Map::new(),
        Vec::new(),
        None,
        "".into(),
    );
    let denial = tokens
        .for_principal(&anonymous, "r", "")
        .expect_err("no subject");
    assert_eq!(denial.reason, Reason::InvalidClaims);
}

#[test]
fn a_principal_reuses_its_token_per_audience_and_a_new_minter_signs_again() {
    let tokens = IdentityTokens::new(&config()).expect("keys load");
    let alice = principal(json!({}), None);
    let first = tokens.for_principal(&alice, "r", "").expect("mints");
    let again = tokens.for_principal(&alice, "r", "").expect("reuses");
    assert!(
        Arc::ptr_eq(&first, &again),
        "a cached request does not sign again"
    );
    let orders = tokens
        .for_principal(&alice, "r", "orders.internal")
        .expect("mints for another audience");
    assert!(!Arc::ptr_eq(&first, &orders));
    assert_ne!(first.serial(), orders.serial());
    let back = tokens.for_principal(&alice, "r", "").expect("reuses");
    assert!(Arc::ptr_eq(&first, &back), "kept per (principal, audience)");
    let reloaded = IdentityTokens::new(&config()).expect("keys load");
    let after_reload = reloaded.for_principal(&alice, "r", "").expect("mints");
    assert!(
        !Arc::ptr_eq(&first, &after_reload),
        "a new generation (its keys may have rotated) signs its own"
    );
}

#[test]
fn a_principal_keeps_a_bounded_number_of_tokens() {
    let mut config = config();
    config.audience_by_host = (0..20)
        .map(|i| (format!("h{i}"), format!("aud{i}")))
        .collect();
    let tokens = IdentityTokens::new(&config).expect("keys load");
    let alice = principal(json!({}), None);
    for i in 0..20 {
        tokens
            .for_principal(&alice, "r", &format!("h{i}"))
            .expect("mints");
    }
    let kept = (0..20)
        .filter(|i| {
            let audience = format!("aud{i}");
            alice.identity_token(|t| *t.audience == *audience).is_some()
        })
        .count();
    assert_eq!(kept, KEPT_PER_PRINCIPAL);
}

#[test]
fn claims_too_large_for_a_token_deny_instead_of_dropping_it() {
    let mut config = config();
    config.max_bytes = 1024;
    let tokens = IdentityTokens::new(&config).expect("keys load");
    let alice = principal(json!({"email": "x".repeat(2000)}), None);
    let denial = tokens
        .for_principal(&alice, "r", "")
        .expect_err("too large");
    assert_eq!(denial.reason, Reason::InvalidClaims);
    assert!(alice.identity_token(|_| true).is_none());
}

#[test]
fn unreadable_or_unusable_keys_are_named_without_their_contents() {
    let mut config = config();
    config.next_signing_key = Some(key("rsa"));
    let err = IdentityTokens::new(&config)
        .err()
        .expect("an RSA key is refused")
        .to_string();
    assert!(err.starts_with("next_signing_key:"), "{err}");
    assert!(!err.contains("PRIVATE"), "{err}");
    config.next_signing_key = Some(key("missing"));
    let err = IdentityTokens::new(&config)
        .err()
        .expect("a missing key is refused")
        .to_string();
    assert!(err.starts_with("next_signing_key:"), "{err}");
    config.next_signing_key = Some(SecretRef::Inline(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".to_owned(),
    ));
    let err = IdentityTokens::new(&config)
        .err()
        .expect("garbage is refused")
        .to_string();
    assert!(!err.contains("AAAA"), "{err}");
}
