//! API keys from the file store, end to end over gRPC: every place a key may arrive, the
//! checksum refusing damaged keys before any lookup, expiry, revocation, several active keys
//! per subject, the Principal's fields, Authorize's required scopes, and hot reload of the
//! key file including the Kubernetes Secret symlink swap.

use std::{collections::HashMap, path::Path, time::Duration};

use crate::support::*;
use portcullis::{
    keys::api_keys::format,
    pb::{self, Reason},
};
use prost_types::value::Kind;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A key file entry for `key`.
fn entry(id: &str, key: &str, subject: &str, extra: &str) -> String {
    format!(
        "  - {{id: {id}, sha256: {}, subject: {subject}, scopes: [orders:read]{extra}}}\n",
        format::hex(&format::digest(key))
    )
}

fn request_with_headers(pairs: &[(&str, &str)]) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        headers: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

fn request_with_key(key: &str) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        credential: Some(pb::Credential {
            kind: Some(pb::credential::Kind::ApiKey(key.to_owned())),
        }),
        ..Default::default()
    }
}

async fn call(
    client: &mut pb::auth_client::AuthClient<tonic::transport::Channel>,
    request: pb::AuthenticateRequest,
) -> pb::AuthenticateResponse {
    client.authenticate(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn api_keys_from_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let active = format::generate("pcl").unwrap();
    let rotated = format::generate("pcl").unwrap();
    let expired = format::generate("pcl").unwrap();
    let disabled = format::generate("pcl").unwrap();
    let unknown = format::generate("pcl").unwrap();
    let other_prefix = format::generate("abc").unwrap();
    let keys_path = dir.path().join("keys.yaml");
    write(
        &keys_path,
        &format!(
            "keys:\n{}{}{}{}",
            entry(
                "k_active",
                &active,
                "billing",
                ", metadata: {team: payments, tier: 2}, expires_at: 2099-01-01T00:00:00Z"
            ),
            entry("k_rotated", &rotated, "billing", ""),
            entry(
                "k_expired",
                &expired,
                "billing",
                ", expires_at: 2020-01-01T00:00:00Z"
            ),
            entry("k_disabled", &disabled, "billing", ", disabled: true"),
        ),
    );
    let running = start(&format!(
        "api_keys: {{prefix: pcl, file: {}}}\ncredentials: {{api_key_headers: [x-api-key, x-other-key]}}\nauthorization: {{rules: [{{name: any-authenticated}}]}}\n",
        keys_path.display()
    ))
    .await;
    let mut client = client(&running).await;

    let mut damaged = active.clone().into_bytes();
    damaged[8] = if damaged[8] == b'x' { b'y' } else { b'x' };
    let damaged = String::from_utf8(damaged).unwrap();
    let cases: Vec<(&str, pb::AuthenticateRequest, Option<Reason>)> = vec![
        (
            "a key in the oneof authenticates",
            request_with_key(&active),
            None,
        ),
        (
            "a key in x-api-key authenticates",
            request_with_headers(&[("x-api-key", &active)]),
            None,
        ),
        (
            "a key in another configured header authenticates",
            request_with_headers(&[("x-other-key", &active)]),
            None,
        ),
        (
            "Authorization: ApiKey (any case) authenticates",
            request_with_headers(&[("authorization", &format!("aPiKeY {active}"))]),
            None,
        ),
        (
            "the oneof's raw authorization value authenticates",
            pb::AuthenticateRequest {
                credential: Some(pb::Credential {
                    kind: Some(pb::credential::Kind::Authorization(format!(
                        "ApiKey {active}"
                    ))),
                }),
                ..Default::default()
            },
            None,
        ),
        (
            "a second active key of the same subject authenticates",
            request_with_key(&rotated),
            None,
        ),
        (
            "a damaged key fails its checksum",
            request_with_key(&damaged),
            Some(Reason::MalformedCredential),
        ),
        (
            "a key with another prefix is malformed",
            request_with_key(&other_prefix),
            Some(Reason::MalformedCredential),
        ),
        (
            "garbage is malformed",
            request_with_key("not-a-key"),
            Some(Reason::MalformedCredential),
        ),
        (
            "a well-formed key nobody issued is unknown",
            request_with_key(&unknown),
            Some(Reason::UnknownKey),
        ),
        (
            "an expired key is refused",
            request_with_key(&expired),
            Some(Reason::Expired),
        ),
        (
            "a disabled key is revoked",
            request_with_key(&disabled),
            Some(Reason::Revoked),
        ),
        (
            "a key in a header and in the oneof is ambiguous",
            pb::AuthenticateRequest {
                headers: [("x-api-key".to_owned(), active.clone())].into(),
                ..request_with_key(&active)
            },
            Some(Reason::AmbiguousCredential),
        ),
        (
            "two key headers are ambiguous",
            request_with_headers(&[("x-api-key", &active), ("x-other-key", &rotated)]),
            Some(Reason::AmbiguousCredential),
        ),
        (
            "an unknown Authorization scheme is unsupported",
            request_with_headers(&[("authorization", "Negotiate abc")]),
            Some(Reason::UnsupportedCredential),
        ),
    ];
    for (name, request, expected) in cases {
        let response = call(&mut client, request).await;
        assert_eq!(reason(&response), expected, "{name}: {:?}", response.denial);
        if let Some(denial) = &response.denial {
            assert!(
                !denial.message.contains(&active[4..]),
                "{name}: no key in the message"
            );
        }
    }

    let principal = call(&mut client, request_with_key(&active))
        .await
        .principal
        .unwrap();
    assert_eq!(principal.subject, "billing");
    assert_eq!(principal.issuer, "api_keys.file");
    assert_eq!(principal.credential_type, pb::CredentialType::ApiKey as i32);
    assert_eq!(principal.key_id, "k_active");
    assert_eq!(principal.scopes, ["orders:read"]);
    assert_eq!(principal.expires_at.unwrap().seconds, 4_070_908_800);
    let claims = principal.claims.unwrap().fields;
    assert_eq!(
        claims["team"].kind,
        Some(Kind::StringValue("payments".into()))
    );
    assert_eq!(claims["tier"].kind, Some(Kind::NumberValue(2.0)));

    for (scopes, allowed) in [(vec!["orders:read"], true), (vec!["orders:write"], false)] {
        let response = client
            .authorize(pb::AuthorizeRequest {
                credential: request_with_key(&active).credential,
                required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.allowed, allowed,
            "{scopes:?}: {:?}",
            response.denial
        );
        if !allowed {
            assert_eq!(
                response.denial.unwrap().reason,
                Reason::InsufficientScope as i32
            );
        }
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn key_file_is_hot_reloaded_through_a_kubernetes_symlink_swap() {
    let dir = tempfile::tempdir().unwrap();
    let first = format::generate("pcl").unwrap();
    let second = format::generate("pcl").unwrap();
    let mut volume = KubernetesVolume::new(
        dir.path().join("mount"),
        "keys.yaml",
        &format!("keys:\n{}", entry("k1", &first, "a", "")),
    );
    let running = start_watching(
        &dir.path().join("config.yaml"),
        &format!("api_keys: {{file: {}}}\n", volume.path().display()),
    )
    .await;
    let mut client = client(&running).await;
    assert_eq!(
        reason(&call(&mut client, request_with_key(&first)).await),
        None
    );
    assert_eq!(
        reason(&call(&mut client, request_with_key(&second)).await),
        Some(Reason::UnknownKey)
    );

    // The Secret is updated: the first key is revoked, the second added.
    volume.publish(&format!(
        "keys:\n{}{}",
        entry("k1", &first, "a", ", disabled: true"),
        entry("k2", &second, "a", "")
    ));
    let start = std::time::Instant::now();
    while reason(&call(&mut client, request_with_key(&second)).await).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "symlink swap not seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        reason(&call(&mut client, request_with_key(&first)).await),
        Some(Reason::Revoked)
    );

    // A broken key file is refused; the keys loaded before keep working.
    volume.publish("keys: [ {id: broken");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        reason(&call(&mut client, request_with_key(&second)).await),
        None
    );
    running.shutdown().await.unwrap();
}

/// A file store's keys report their usage as `api_key_usage` log lines (uses, last use,
/// last client address) once per flush interval, and the keys near expiry as a gauge per
/// store without a per-key label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_keys_report_usage_in_log_lines_and_expiry_in_a_gauge() {
    use crate::support::process::{Options, ServerProcess, free_port, http_get};
    let dir = tempfile::tempdir().unwrap();
    let used = format::generate("pcl").unwrap();
    let soon = format::generate("pcl").unwrap();
    let later = format::generate("pcl").unwrap();
    let in_days = |days: u64| {
        humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + Duration::from_secs(days * 86_400),
        )
        .to_string()
    };
    let keys = dir.path().join("keys.yaml");
    write(
        &keys,
        &format!(
            "keys:\n{}{}{}",
            entry("k_used", &used, "billing", ""),
            entry(
                "k_soon",
                &soon,
                "billing",
                &format!(", expires_at: {}", in_days(3))
            ),
            entry(
                "k_later",
                &later,
                "billing",
                &format!(", expires_at: {}", in_days(20))
            ),
        ),
    );
    let (grpc, admin) = (free_port(), free_port());
    let config = dir.path().join("config.yaml");
    write(
        &config,
        &format!(
            "server: {{grpc_listen: 127.0.0.1:{grpc}, admin_listen: 127.0.0.1:{admin}}}\napi_keys: {{file: {}, usage_flush_interval: 1s}}\ntelemetry: {{log_format: json, log_level: warn}}\n",
            keys.display()
        ),
    );
    let mut server = ServerProcess::spawn_ready(
        &config,
        &format!("127.0.0.1:{admin}"),
        Options {
            capture_logs: true,
            ..Options::default()
        },
    );
    let lines = server.log_lines();
    let mut client = pb::auth_client::AuthClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    for _ in 0..3 {
        let answer = client
            .authenticate(request_with_key(&used))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.authenticated);
    }
    let metrics = http_get(&format!("127.0.0.1:{admin}"), "/metrics").unwrap();
    for (within, count) in [("7d", 1), ("30d", 2)] {
        let series = format!(
            "portcullis_api_keys_expiring{{store=\"api_keys.file\",within=\"{within}\"}} {count}"
        );
        assert!(metrics.contains(&series), "{series}:\n{metrics}");
    }
    assert!(!metrics.contains("k_used"), "no per-key label");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(remaining)
            .expect("a usage line within 10 s");
        let Ok(parsed) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if parsed["target"] == "api_key_usage" {
            break parsed;
        }
    };
    assert_eq!(usage["key_id"], "k_used");
    assert_eq!(usage["store"], "api_keys.file");
    assert_eq!(
        usage["uses"], 3,
        "one line for the interval's three uses: {usage}"
    );
    assert_eq!(usage["last_address"], "127.0.0.1");
    assert!(
        usage["last_used"]
            .as_i64()
            .is_some_and(|at| at > 1_700_000_000)
    );
    assert!(!usage.to_string().contains(&used), "never the key");
    server.terminate();
}
