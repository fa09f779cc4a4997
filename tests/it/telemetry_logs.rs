//! Logs as operators see them: the server binary with JSON logs at info, sent valid and
//! invalid credentials of every kind. Each denial produces one structured audit line (reason,
//! rule, subject, a short credential digest) and no log line contains a token, key, password
//! or signature.

use std::time::{Duration, Instant};

use crate::support::{
    process::{Options, ServerProcess, free_port},
    *,
};
use jsonwebtoken::Algorithm::ES256;
use portcullis::pb::{self, auth_client::AuthClient};
use serde_json::{Value, json};

/// The server binary with issuer `corp` (https://a.test, audience api://orders, `key`'s
/// JWKS) and then `rest` of its config (YAML), its stderr lines, and a client of its gRPC port.
async fn serve_with_logs(
    dir: &std::path::Path,
    key: &TestKey,
    rest: &str,
) -> (
    ServerProcess,
    std::sync::mpsc::Receiver<String>,
    AuthClient<tonic::transport::Channel>,
) {
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[key]).to_string()).unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{grpc_listen: 127.0.0.1:{grpc}, admin_listen: 127.0.0.1:{admin}}}\nissuers:\n  - name: corp\n    issuer: https://a.test\n    jwks_file: {}\n    audiences: [api://orders]\n{rest}",
            jwks_path.display()
        ),
    )
    .unwrap();
    let mut server = ServerProcess::spawn(
        &config,
        Options {
            capture_logs: true,
            ..Options::default()
        },
    );
    let lines = server.log_lines();
    let started = Instant::now();
    let client = loop {
        if let Ok(client) = AuthClient::connect(format!("http://127.0.0.1:{grpc}")).await {
            break client;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (server, lines, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_audited_and_no_secret_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k1");
    let (mut server, lines, mut client) = serve_with_logs(
        dir.path(),
        &key,
        "authorization:\n  rules:\n    - name: admins-only\n      require: { claims: { role: admin } }\ntelemetry: {log_format: json, log_level: info}\n",
    )
    .await;

    let valid = key.sign(&claims("https://a.test", "api://orders"));
    let expired = key.sign(
        &json!({"iss": "https://a.test", "aud": "api://orders", "sub": "bob", "exp": now() - 3600}),
    );
    let forged = format!("{}.{}", valid.rsplit_once('.').unwrap().0, b64([9u8; 64]));
    let api_key = "pcl_5Qx8TnV2LmKz9RwYb3HcJd7FgA1sEo4uXy0Pq6Wk";
    let password = "correct-horse-battery-staple";
    let secrets = [
        valid.clone(),
        expired.clone(),
        forged.clone(),
        api_key.to_owned(),
        password.to_owned(),
    ];

    let authenticate = |kind: pb::credential::Kind| pb::AuthenticateRequest {
        credential: Some(pb::Credential { kind: Some(kind) }),
        ..Default::default()
    };
    let requests = vec![
        authenticate(pb::credential::Kind::BearerToken(valid.clone())),
        authenticate(pb::credential::Kind::BearerToken(expired.clone())),
        authenticate(pb::credential::Kind::BearerToken(forged.clone())),
        authenticate(pb::credential::Kind::ApiKey(api_key.to_owned())),
        authenticate(pb::credential::Kind::Basic(pb::BasicCredential {
            username: "carol".into(),
            password: password.into(),
        })),
        authenticate(pb::credential::Kind::Authorization(format!(
            "Basic {}",
            base64_std(&format!("carol:{password}"))
        ))),
        authenticate(pb::credential::Kind::BearerToken(format!(
            "{valid} {password}"
        ))),
    ];
    let mut denials = 0;
    for request in requests {
        if !client
            .authenticate(request)
            .await
            .unwrap()
            .into_inner()
            .authenticated
        {
            denials += 1;
        }
    }
    // Authorize: authenticated, then denied by a rule (the audit line names rule and subject).
    let authorize = client
        .authorize(pb::AuthorizeRequest {
            credential: Some(pb::Credential {
                kind: Some(pb::credential::Kind::BearerToken(valid.clone())),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!authorize.allowed);
    denials += 1;

    let stopping = Instant::now();
    assert!(server.terminate().success());
    println!("stopped in {:?}", stopping.elapsed());
    let logs = lines.iter().collect::<Vec<_>>().join("\n");

    let audit: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "portcullis::audit")
        .collect();
    assert_eq!(audit.len(), denials, "one audit line per denial:\n{logs}");
    for line in &audit {
        assert_eq!(line["message"], "request denied");
        assert!(
            line["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{line}"
        );
        assert!(
            line.get("rule").is_some() && line.get("subject").is_some(),
            "{line}"
        );
    }
    let expired_line = audit.iter().find(|l| l["reason"] == "EXPIRED").unwrap();
    assert_eq!(
        expired_line["credential_digest"],
        portcullis::telemetry::short_digest(&expired)
    );
    let policy_line = audit
        .iter()
        .find(|l| l["reason"] == "POLICY_DENIED")
        .unwrap();
    assert_eq!(policy_line["rule"], "admins-only");
    assert_eq!(policy_line["subject"], "alice");

    for secret in &secrets {
        for part in secret.split('.').filter(|p| p.len() >= 8) {
            assert!(
                !logs.contains(part),
                "a credential fragment reached the logs:\n{logs}"
            );
        }
    }
    assert!(!logs.contains(&base64_std(&format!("carol:{password}"))));
}

fn base64_std(text: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text)
}

/// Decision logs: one line per decision, allow and deny, with rule, reason, subject,
/// credential type and digest, method, host and path (never the query string), duration and
/// only the listed claims; a rule whose share is 0 is not logged; the log level does not
/// silence them; no credential reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_logs_record_allows_and_denies_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k1");
    let (mut server, lines, mut client) = serve_with_logs(
        dir.path(),
        &key,
        r#"
authorization:
  rules:
    - name: health
      match: { http: { paths: ["/healthz"] } }
      anonymous: true
    - name: orders-read
      match: { http: { methods: [GET], paths: ["/orders/**"] } }
      require: { claims: { sub: alice } }
telemetry:
  log_format: json
  log_level: warn
  decision_log:
    enabled: true
    rules: { health: 0.0 }
    claims: [email]
"#,
    )
    .await;
    let mut alice_claims = claims("https://a.test", "api://orders");
    alice_claims["email"] = json!("alice@example.com");
    alice_claims["ssn"] = json!("078-05-1120");
    let alice = key.sign(&alice_claims);
    let mut bob_claims = claims("https://a.test", "api://orders");
    bob_claims["sub"] = json!("bob");
    let bob = key.sign(&bob_claims);
    let authorize = |token: Option<&str>, path: &str| pb::AuthorizeRequest {
        credential: token.map(|t| pb::Credential {
            kind: Some(pb::credential::Kind::BearerToken(t.to_owned())),
        }),
        resource: Some(pb::Resource {
            http_method: "GET".into(),
            host: "api.example.com".into(),
            path: path.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let asked = [
        (
            Some(alice.as_str()),
            "/orders/1?access_token=leaked-query-secret",
            true,
        ),
        (Some(bob.as_str()), "/orders/2", false),
        (None, "/healthz", true),
        (None, "/orders/3", false),
    ];
    for (token, path, allowed) in asked {
        let answer = client
            .authorize(authorize(token, path))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.allowed, allowed, "{path}");
    }
    assert!(server.terminate().success());
    let logs = lines.iter().collect::<Vec<_>>().join("\n");
    let decisions: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "decision_log")
        .collect();
    assert_eq!(
        decisions.len(),
        3,
        "the health rule's share is 0; at log level warn the rest still log:\n{logs}"
    );
    let allow = &decisions[0];
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["rule"], "orders-read");
    assert_eq!(allow["subject"], "alice");
    assert_eq!(allow["issuer"], "corp");
    assert_eq!(allow["surface"], "authorize");
    assert_eq!(allow["credential_type"], "JWT");
    assert_eq!(
        allow["credential_digest"],
        portcullis::telemetry::short_digest(&alice)
    );
    assert_eq!(
        (allow["method"].as_str(), allow["host"].as_str()),
        (Some("GET"), Some("api.example.com"))
    );
    assert_eq!(allow["path"], "/orders/1", "no query string");
    assert!(allow["duration_us"].as_u64().is_some(), "{allow}");
    let copied: Value = serde_json::from_str(allow["claims"].as_str().unwrap()).unwrap();
    assert_eq!(
        copied,
        json!({"email": "alice@example.com"}),
        "listed claims only"
    );
    let deny = &decisions[1];
    assert_eq!(
        (deny["decision"].as_str(), deny["rule"].as_str()),
        (Some("deny"), Some("orders-read"))
    );
    assert_eq!(deny["reason"], "POLICY_DENIED");
    assert_eq!(deny["subject"], "bob");
    assert_eq!(decisions[2]["reason"], "MISSING_CREDENTIAL");
    for secret in [&alice, &bob] {
        for part in secret.split('.').filter(|p| p.len() >= 8) {
            assert!(
                !logs.contains(part),
                "a credential fragment reached the logs:\n{logs}"
            );
        }
    }
    assert!(
        !logs.contains("leaked-query-secret") && !logs.contains("078-05-1120"),
        "{logs}"
    );
}

/// Decision records received by an in-process OTLP collector (the official
/// opentelemetry-proto LogsService).
#[derive(Clone, Default)]
struct LogsCollector {
    received: std::sync::Arc<std::sync::Mutex<Vec<ExportLogsServiceRequest>>>,
}

#[tonic::async_trait]
impl LogsService for LogsCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

impl LogsCollector {
    /// Each record's attributes, as text.
    fn records(&self) -> Vec<std::collections::HashMap<String, String>> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
        let text = |value: Option<&AnyValue>| match value {
            Some(AnyValue::StringValue(s)) => s.clone(),
            Some(AnyValue::IntValue(i)) => i.to_string(),
            Some(AnyValue::BoolValue(b)) => b.to_string(),
            other => format!("{other:?}"),
        };
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|request| &request.resource_logs)
            .flat_map(|resource| &resource.scope_logs)
            .flat_map(|scope| &scope.log_records)
            .map(|record| {
                record
                    .attributes
                    .iter()
                    .map(|kv| {
                        let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
                        (kv.key.clone(), text(value))
                    })
                    .collect()
            })
            .collect()
    }

    fn exported_bytes(&self) -> Vec<u8> {
        use prost::Message;
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(Message::encode_to_vec)
            .collect()
    }
}

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
    logs_service_server::{LogsService, LogsServiceServer},
};

/// `outputs: [otlp]`: every decision becomes an OTLP log record whose attributes are the
/// line's fields (a real exporter to an in-process collector), and none reaches stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_logs_are_exported_as_otlp_log_records_instead_of_lines() {
    let collector = LogsCollector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogsServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k1");
    let (mut server, lines, mut client) = serve_with_logs(
        dir.path(),
        &key,
        &format!(
            r#"
authorization:
  rules:
    - name: orders-read
      match: {{ http: {{ methods: [GET], paths: ["/orders/**"] }} }}
telemetry:
  log_format: json
  log_level: info
  otlp_endpoint: {endpoint}
  decision_log:
    enabled: true
    outputs: [otlp]
"#
        ),
    )
    .await;
    let alice = key.sign(&claims("https://a.test", "api://orders"));
    for (token, allowed) in [(Some(alice.as_str()), true), (None, false)] {
        let answer = client
            .authorize(pb::AuthorizeRequest {
                credential: token.map(|t| pb::Credential {
                    kind: Some(pb::credential::Kind::BearerToken(t.to_owned())),
                }),
                resource: Some(pb::Resource {
                    http_method: "GET".into(),
                    host: "api.example.com".into(),
                    path: "/orders/1?access_token=leaked-query-secret".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.allowed, allowed);
    }
    // A graceful stop flushes the batch of records.
    assert!(server.terminate().success());
    eventually(Duration::from_secs(10), || collector.records().len() >= 2).await;
    let records = collector.records();
    assert_eq!(records.len(), 2, "{records:?}");
    let allow = &records[0];
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["rule"], "orders-read");
    assert_eq!(allow["subject"], "alice");
    assert_eq!(allow["credential_type"], "JWT");
    assert_eq!(
        allow["credential_digest"],
        portcullis::telemetry::short_digest(&alice)
    );
    assert_eq!(allow["path"], "/orders/1");
    assert_eq!(records[1]["reason"], "MISSING_CREDENTIAL");
    let exported = collector.exported_bytes();
    for part in alice.split('.').filter(|p| p.len() >= 8) {
        assert!(
            !holds_fragment(&exported, part.as_bytes()),
            "a credential fragment was exported"
        );
    }
    assert!(!holds_fragment(&exported, b"leaked-query-secret"));
    let logs = lines.iter().collect::<Vec<_>>().join("\n");
    assert!(
        !logs.contains("\"target\":\"decision_log\""),
        "outputs without stderr print no decision line:\n{logs}"
    );
}
