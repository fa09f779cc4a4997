//! The served API end to end over gRPC on 127.0.0.1: every algorithm, the Principal's fields,
//! multi-issuer routing, Authorize's required scopes, reflection, and hot reload of the config
//! and key files (valid changes swapped in, invalid ones refused).

use std::{path::Path, time::Duration};

use crate::support::*;
use jsonwebtoken::Algorithm::*;
use portcullis::pb::{self, Reason};
use prost_types::value::Kind;
use serde_json::json;

const AUD: &str = "api://orders";

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn every_algorithm_verifies_and_the_principal_carries_the_claims() {
    let dir = tempfile::tempdir().unwrap();
    let asymmetric: Vec<TestKey> = [
        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    ]
    .into_iter()
    .map(|alg| TestKey::new(alg, &format!("kid-{alg:?}")))
    .collect();
    let jwks_path = dir.path().join("jwks.json");
    write(
        &jwks_path,
        &jwks(&asymmetric.iter().collect::<Vec<_>>()).to_string(),
    );
    let hmac: Vec<TestKey> = [HS256, HS384, HS512]
        .into_iter()
        .map(|alg| TestKey::new(alg, &format!("{alg:?}")))
        .collect();
    let mut yaml = format!(
        "issuers:\n  - name: asymmetric\n    issuer: https://asym.test\n    jwks_file: {}\n    audiences: [{AUD}]\n    algorithms: [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]\n",
        jwks_path.display()
    );
    for key in &hmac {
        let secret_path = dir.path().join(format!("{:?}.secret", key.alg));
        std::fs::write(&secret_path, &key.secret).unwrap();
        yaml.push_str(&format!(
            "  - name: hmac-{alg:?}\n    issuer: https://{alg:?}.test\n    hmac_secret: file:{}\n    algorithms: [{alg:?}]\n    audiences: [{AUD}]\n",
            secret_path.display(),
            alg = key.alg
        ));
    }
    let running = start(&yaml).await;
    let mut client = client(&running).await;

    for key in &asymmetric {
        let mut c = claims("https://asym.test", AUD);
        c["org"] = json!({"id": 7, "teams": ["a", "b"]});
        let response = authenticate(&mut client, &key.sign(&c)).await;
        assert_eq!(
            reason(&response),
            None,
            "{:?}: {:?}",
            key.alg,
            response.denial
        );
        let principal = response.principal.unwrap();
        assert_eq!(principal.subject, "alice");
        assert_eq!(principal.issuer, "asymmetric");
        assert_eq!(principal.credential_type, pb::CredentialType::Jwt as i32);
        assert_eq!(principal.key_id, key.kid);
        assert_eq!(principal.scopes, ["orders:read", "orders:write"]);
        assert_eq!(
            principal.expires_at.unwrap().seconds,
            c["exp"].as_i64().unwrap()
        );
        let claims = principal.claims.unwrap().fields;
        let Some(Kind::StructValue(org)) = &claims["org"].kind else {
            panic!("nested object kept")
        };
        let Some(Kind::ListValue(teams)) = &org.fields["teams"].kind else {
            panic!("nested array kept")
        };
        assert_eq!(teams.values.len(), 2);
        assert_eq!(
            claims["iss"].kind,
            Some(Kind::StringValue("https://asym.test".into()))
        );
    }
    for key in &hmac {
        let iss = format!("https://{:?}.test", key.alg);
        let mut c = claims(&iss, AUD);
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = json!(["x:y"]);
        let response = authenticate(&mut client, &key.sign(&c)).await;
        assert_eq!(reason(&response), None, "{:?}", key.alg);
        let principal = response.principal.unwrap();
        assert_eq!(principal.issuer, format!("hmac-{:?}", key.alg));
        assert_eq!(principal.scopes, ["x:y"]);
        // A token for one issuer signed with another issuer's key is refused.
        let other = &hmac[(hmac.iter().position(|k| k.alg == key.alg).unwrap() + 1) % 3];
        let forged = other.sign_raw(
            &json!({"alg": format!("{:?}", key.alg)}).to_string(),
            &claims(&iss, AUD).to_string(),
        );
        assert_ne!(reason(&authenticate(&mut client, &forged).await), None);
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn authorize_checks_required_scopes_and_audience() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k");
    let path = dir.path().join("jwks.json");
    write(&path, &jwks(&[&key]).to_string());
    let running = start(&format!(
        "issuers:\n  - name: a\n    issuer: https://a.test\n    jwks_file: {}\nauthorization:\n  rules:\n    - name: any-authenticated\n",
        path.display()
    ))
    .await;
    let mut client = client(&running).await;
    let token = key.sign(&claims("https://a.test", AUD));
    let authorize = |scopes: &[&str]| pb::AuthorizeRequest {
        credential: Some(pb::Credential {
            kind: Some(pb::credential::Kind::Authorization(format!(
                "Bearer {token}"
            ))),
        }),
        required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let allowed = client
        .authorize(authorize(&["orders:read"]))
        .await
        .unwrap()
        .into_inner();
    assert!(allowed.allowed);
    assert_eq!(allowed.principal.unwrap().subject, "alice");

    let denied = client
        .authorize(authorize(&["orders:read", "orders:delete", "admin"]))
        .await
        .unwrap()
        .into_inner();
    assert!(!denied.allowed);
    let denial = denied.denial.unwrap();
    assert_eq!(denial.reason, Reason::InsufficientScope as i32);
    assert_eq!(
        denial.www_authenticate,
        "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"orders:delete admin\""
    );
    assert!(
        denied.principal.is_some(),
        "authenticated, so the principal is reported"
    );

    let missing = client
        .authorize(pb::AuthorizeRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        missing.denial.unwrap().www_authenticate,
        "Bearer realm=\"portcullis\""
    );

    let with_audience = |aud: &str| pb::AuthenticateRequest {
        credential: Some(pb::Credential {
            kind: Some(pb::credential::Kind::BearerToken(token.clone())),
        }),
        audience: aud.into(),
        ..Default::default()
    };
    assert!(
        client
            .authenticate(with_audience(AUD))
            .await
            .unwrap()
            .into_inner()
            .authenticated
    );
    let other = client
        .authenticate(with_audience("api://billing"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        other.denial.unwrap().reason,
        Reason::AudienceMismatch as i32
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_services() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::{v1, v1alpha};
    let running = start("issuers: []").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut v1_client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = v1_client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(response)) = stream.next().await else {
        panic!("a v1 reflection answer")
    };
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!()
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"portcullis.v1.Auth"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "portcullis.v1.Auth".into(),
            ),
        ),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(response)) = stream.next().await else {
        panic!("a v1alpha reflection answer")
    };
    assert!(matches!(
        response.message_response,
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn config_and_key_file_changes_are_swapped_in_and_invalid_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key1 = TestKey::new(ES256, "k1");
    let key2 = TestKey::new(ES256, "k2");
    let jwks_path = dir.path().join("jwks.json");
    write(&jwks_path, &jwks(&[&key1]).to_string());
    let config_path = dir.path().join("config.yaml");
    let yaml = |aud: &str| {
        format!(
            "server: {{grpc_listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0}}\nissuers:\n  - name: a\n    issuer: https://a.test\n    jwks_file: {}\n    audiences: [{aud}]\n",
            jwks_path.display()
        )
    };
    write(&config_path, &yaml(AUD));
    let config = portcullis::config::load_file(&config_path).unwrap();
    let running = portcullis::server::start(config, Some(config_path.clone()))
        .await
        .unwrap();
    let mut client = client(&running).await;
    let orders = key1.sign(&claims("https://a.test", AUD));
    let billing = key1.sign(&claims("https://a.test", "api://billing"));
    assert_eq!(reason(&authenticate(&mut client, &orders).await), None);
    assert_eq!(
        reason(&authenticate(&mut client, &billing).await),
        Some(Reason::AudienceMismatch)
    );

    // A valid change is swapped in.
    write(&config_path, &yaml("api://billing"));
    let pipeline = running.shared.pipeline.clone();
    eventually(Duration::from_secs(10), || {
        pipeline.load().config.issuers[0].audiences == ["api://billing"]
    })
    .await;
    assert_eq!(reason(&authenticate(&mut client, &billing).await), None);
    assert_eq!(
        reason(&authenticate(&mut client, &orders).await),
        Some(Reason::AudienceMismatch)
    );

    // An invalid change is refused; the previous config keeps serving.
    write(&config_path, "issuers:\n  - name: a\n    colour: blue\n");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        pipeline.load().config.issuers[0].audiences,
        ["api://billing"]
    );
    assert_eq!(reason(&authenticate(&mut client, &billing).await), None);

    // A key file change is seen too (restore a valid config first).
    write(&config_path, &yaml("api://billing"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    write(&jwks_path, &jwks(&[&key2]).to_string());
    let fresh = key2.sign(&claims("https://a.test", "api://billing"));
    let start = std::time::Instant::now();
    loop {
        if reason(&authenticate(&mut client, &fresh).await).is_none() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "new key never picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The bad JWKS file is refused and the good keys keep serving.
    write(&jwks_path, "{\"keys\": [");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut again = claims("https://a.test", "api://billing");
    again["jti"] = json!("another");
    assert_eq!(
        reason(&authenticate(&mut client, &key2.sign(&again)).await),
        None
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn kubernetes_secret_symlink_swap_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let key1 = TestKey::new(ES256, "k1");
    let key2 = TestKey::new(ES256, "k2");
    let mut volume = KubernetesVolume::new(
        dir.path().join("mount"),
        "jwks.json",
        &jwks(&[&key1]).to_string(),
    );
    let running = start_watching(
        &dir.path().join("config.yaml"),
        &format!(
            "issuers:\n  - name: a\n    issuer: https://a.test\n    jwks_file: {}\n",
            volume.path().display()
        ),
    )
    .await;
    let mut client = client(&running).await;
    assert_eq!(
        reason(&authenticate(&mut client, &key1.sign(&claims("https://a.test", AUD))).await),
        None
    );
    volume.publish(&jwks(&[&key2]).to_string());
    let token = key2.sign(&claims("https://a.test", AUD));
    let start = std::time::Instant::now();
    while reason(&authenticate(&mut client, &token).await).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "symlink swap not seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cached_token_stops_verifying_at_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k");
    let path = dir.path().join("jwks.json");
    write(&path, &jwks(&[&key]).to_string());
    let running = start(&format!(
        "issuers:\n  - name: a\n    issuer: https://a.test\n    jwks_file: {}\n    leeway: 0s\n",
        path.display()
    ))
    .await;
    let mut client = client(&running).await;
    let mut short = claims("https://a.test", AUD);
    short["exp"] = json!(now() + 2);
    let token = key.sign(&short);
    assert_eq!(reason(&authenticate(&mut client, &token).await), None);
    assert_eq!(
        reason(&authenticate(&mut client, &token).await),
        None,
        "served from the cache"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        reason(&authenticate(&mut client, &token).await),
        Some(Reason::Expired),
        "the cache never serves a token past its exp"
    );
    running.shutdown().await.unwrap();
}
