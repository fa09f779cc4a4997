//! Against a real OpenID provider (npm `oidc-provider`, tests/oidc): Portcullis finds the
//! provider's keys by OIDC discovery, authenticates its client_credentials JWT access tokens
//! with the right claims, refuses a token for another audience, and after the provider
//! restarts with a new signing key verifies new tokens through the unknown-kid refetch.
//!
//! Needs `node` and tests/oidc/node_modules (scripts/provision/oidc.sh). Under CI=true a
//! missing provider fails the test; elsewhere it is skipped with a message.

mod support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use portcullis::pb::Reason;
use support::*;

struct Provider {
    child: Child,
    issuer: String,
    kid: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Whether the provider can run here; under CI=true it must.
fn available() -> bool {
    let ok = provider_dir().join("node_modules/oidc-provider").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: the OpenID provider is required (run scripts/provision/oidc.sh)"
        );
        eprintln!(
            "SKIPPED: node or tests/oidc/node_modules missing; run scripts/provision/oidc.sh"
        );
    }
    ok
}

fn start_provider(port: u16, key_file: &Path, rotate: bool) -> Provider {
    let mut command = Command::new("node");
    command
        .arg(provider_dir().join("provider.mjs"))
        .args(["--port", &port.to_string(), "--key-file"])
        .arg(key_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if rotate {
        command.arg("--rotate");
    }
    let mut child = command.spawn().expect("node starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("provider ready line, got {line:?}"));
    assert_eq!(ready["ready"], true);
    Provider {
        child,
        issuer: ready["issuer"].as_str().unwrap().to_owned(),
        kid: ready["kid"].as_str().unwrap().to_owned(),
    }
}

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
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("provider-key.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let provider = start_provider(port, &key_file, false);
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
    let provider = start_provider(port, &key_file, true);
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
