//! Against a real OpenID provider (npm `oidc-provider`, tests/oidc): Portcullis finds the
//! provider's keys by OIDC discovery, authenticates its client_credentials JWT access tokens
//! with the right claims, refuses a token for another audience, and after the provider
//! restarts with a new signing key verifies new tokens through the unknown-kid refetch.
//!
//! Needs `node` and tests/oidc/node_modules (scripts/provision/oidc.sh). Under CI=true a
//! missing provider fails the test; elsewhere it is skipped with a message.

use std::time::Duration;

use crate::support::*;
use portcullis::pb::Reason;

async fn client_credentials_token(issuer: &str, resource: &str, scope: &str) -> String {
    let response: serde_json::Value = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth("portcullis-test", Some("throwaway-test-secret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", resource),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    response["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

#[tokio::test]
async fn tokens_from_a_real_openid_provider() {
    if !oidc::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("provider-key.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let provider = oidc::start(port, &key_file, false);
    let yaml = format!(
        "issuers:\n  - name: idp\n    issuer: {}\n    discovery: true\n    audiences: [api://orders]\n    algorithms: [RS256]\n    typ: [at+jwt]\n    required_claims: [exp, sub]\n    jwks: {{refetch_cooldown: 500ms}}\n",
        provider.issuer
    );
    let running = start(&yaml).await;
    let shared = running.shared.clone();
    eventually(Duration::from_secs(15), || shared.is_ready()).await;
    let mut client = client(&running).await;

    let token =
        client_credentials_token(&provider.issuer, "api://orders", "orders:read orders:write")
            .await;
    let response = authenticate(&mut client, &token).await;
    assert_eq!(reason(&response), None, "{:?}", response.denial);
    let principal = response.principal.unwrap();
    assert_eq!(principal.subject, "portcullis-test");
    assert_eq!(principal.issuer, "idp");
    assert_eq!(principal.key_id, provider.kid);
    assert_eq!(principal.scopes, ["orders:read", "orders:write"]);
    let claims = principal.claims.unwrap().fields;
    assert_eq!(
        claims["client_id"].kind,
        Some(prost_types::value::Kind::StringValue(
            "portcullis-test".into()
        ))
    );
    assert_eq!(
        claims["aud"].kind,
        Some(prost_types::value::Kind::StringValue("api://orders".into()))
    );

    let billing = client_credentials_token(&provider.issuer, "api://billing", "billing:read").await;
    assert_eq!(
        reason(&authenticate(&mut client, &billing).await),
        Some(Reason::AudienceMismatch)
    );

    // Restart with a new signing key on the same issuer URL.
    let old_kid = provider.kid.clone();
    drop(provider);
    let provider = oidc::start(port, &key_file, true);
    assert_ne!(provider.kid, old_kid);
    tokio::time::sleep(Duration::from_millis(600)).await; // past the refetch cooldown
    let rotated = client_credentials_token(&provider.issuer, "api://orders", "orders:read").await;
    let response = authenticate(&mut client, &rotated).await;
    assert_eq!(
        reason(&response),
        None,
        "new kid found by refetch: {:?}",
        response.denial
    );
    assert_eq!(response.principal.unwrap().key_id, provider.kid);
    assert_eq!(
        reason(&authenticate(&mut client, &token).await),
        Some(Reason::UnknownKey),
        "the old key left the set, so its cached token stops verifying"
    );
    running.shutdown().await.unwrap();
}
