//! Envoy ext_authz `Check` (SPEC §3): conformance checked from outside Rust by a Go client
//! built on Envoy's official protos (go-control-plane, tests/extauthz-conformance), plus
//! direct calls for the internal-failure path.
//!
//! Needs Go (and its module proxy on first build). Under CI=true a missing Go fails the test;
//! elsewhere it is skipped with a message.

use std::{path::Path, process::Command};

use crate::support::*;
use jsonwebtoken::Algorithm::ES256;
use portcullis::grpc::wire::CheckRequestView;
use serde_json::{Value, json};

const ISS: &str = "https://a.test";
const AUD: &str = "api://orders";

fn policy_config(jwks_path: &Path) -> String {
    format!(
        r#"
issuers:
  - name: corp
    issuer: {ISS}
    jwks_file: {}
    audiences: [{AUD}]
authorization:
  rules:
    - name: public-health
      match: {{ http: {{ paths: ["/healthz"] }} }}
      anonymous: true
    - name: orders-read
      match: {{ http: {{ methods: [GET], paths: ["/orders/*"] }} }}
      require: {{ scopes_all: [orders:read] }}
    - name: admin
      match: {{ http: {{ paths: ["/admin/**"] }} }}
      require: {{ claims: {{ roles: admin }} }}
    - name: grpc-orders
      match: {{ grpc: {{ services: ["acme.orders.v1.*"], methods: ["Get*"] }} }}
      require: {{ scopes_any: [orders:read, orders:admin] }}
    - name: tenant-a
      match: {{ context_extensions: {{ policy: tenant-a }} }}
      require: {{ cel: "claims.tenant == 'a' && request.http.method == 'GET'" }}
    - name: legacy-query
      match: {{ http: {{ paths: ["/legacy/*"] }} }}
      allow_query_credentials: true
response:
  claims_to_headers:
    sub: x-user-id
    email: x-user-email
    roles: x-user-roles
    principal.issuer: x-auth-issuer
"#,
        jwks_path.display()
    )
}

fn request(method: &str, path: &str, headers: Value) -> Value {
    json!({"method": method, "host": "api.example.com", "path": path, "headers": headers})
}

fn cases(key: &TestKey) -> Value {
    let token = |patch: Value| {
        let mut c = claims(ISS, AUD);
        c["roles"] = json!(["reader"]);
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        key.sign(&c)
    };
    let reader = token(json!({"email": "alice@example.com"}));
    let no_email = token(json!({}));
    let admin = token(json!({"roles": ["admin"], "scope": "other"}));
    let expired = token(json!({"exp": now() - 3600}));
    let no_scope = token(json!({"scope": "billing:read"}));
    let evil_email = token(json!({"email": "a@b.c\r\nx-admin: true"}));
    let tenant_a = token(json!({"tenant": "a"}));
    let tenant_b = token(json!({"tenant": "b"}));
    let bearer = |t: &str| json!({"authorization": format!("Bearer {t}")});
    json!({"cases": [
        {"name": "a valid token is allowed with identity headers and metadata",
         "request": request("GET", "/orders/1", bearer(&reader)),
         "expect": {"allow": true,
            "headers": {"x-user-id": "alice", "x-user-email": "alice@example.com", "x-user-roles": "[\"reader\"]", "x-auth-issuer": "corp"},
            "metadata": {"principal.subject": "alice", "principal.issuer": "corp", "principal.credential_type": "JWT", "principal.claims.email": "alice@example.com", "rule": "orders-read", "decision": "allow"},
            "no_crlf": true, "response_excludes": [reader]}},
        {"name": "a spoofed identity header is overwritten",
         "request": request("GET", "/orders/1", json!({"authorization": format!("Bearer {reader}"), "x-user-id": "mallory"})),
         "expect": {"allow": true, "headers": {"x-user-id": "alice"}}},
        {"name": "headers Portcullis could set but did not are removed",
         "request": request("GET", "/orders/2", bearer(&no_email)),
         "expect": {"allow": true, "headers_to_remove_include": ["x-user-email"], "headers_absent": ["x-user-email"]}},
        {"name": "a claim with CR LF cannot inject a header",
         "request": request("GET", "/orders/3", bearer(&evil_email)),
         "expect": {"allow": true, "headers": {"x-user-email": "a@b.c%0D%0Ax-admin: true"}, "headers_absent": ["x-admin"], "no_crlf": true}},
        {"name": "no credential on a protected route",
         "request": request("GET", "/orders/1", json!({})),
         "expect": {"allow": false, "http_status": 401, "www_authenticate_contains": "Bearer realm=\"portcullis\"", "body_reason": "MISSING_CREDENTIAL", "no_crlf": true}},
        {"name": "an expired token",
         "request": request("GET", "/orders/1", bearer(&expired)),
         "expect": {"allow": false, "http_status": 401, "www_authenticate_contains": "error=\"invalid_token\"", "body_reason": "EXPIRED", "response_excludes": [expired]}},
        {"name": "missing scope names the scope in the challenge",
         "request": request("GET", "/orders/1", bearer(&no_scope)),
         "expect": {"allow": false, "http_status": 403, "www_authenticate_contains": "error=\"insufficient_scope\", scope=\"orders:read\"", "body_reason": "INSUFFICIENT_SCOPE"}},
        {"name": "a claim matcher denies without a challenge",
         "request": request("GET", "/admin/users", bearer(&reader)),
         "expect": {"allow": false, "http_status": 403, "www_authenticate_contains": "", "body_reason": "POLICY_DENIED"}},
        {"name": "a claim matcher allows an admin",
         "request": request("DELETE", "/admin/users/7", bearer(&admin)),
         "expect": {"allow": true, "metadata": {"rule": "admin"}}},
        {"name": "a path traversal does not escape the rule",
         "request": request("GET", "/healthz/../admin/users", bearer(&reader)),
         "expect": {"allow": false, "http_status": 403, "body_reason": "POLICY_DENIED"}},
        {"name": "a public route needs no credential",
         "request": request("GET", "/healthz", json!({})),
         "expect": {"allow": true, "metadata": {"rule": "public-health"}, "metadata_absent": ["principal"]}},
        {"name": "gRPC through Envoy matches the gRPC globs",
         "request": request("POST", "/acme.orders.v1.Orders/GetOrder", json!({"authorization": format!("Bearer {reader}"), "content-type": "application/grpc"})),
         "expect": {"allow": true, "metadata": {"rule": "grpc-orders"}}},
        {"name": "a gRPC method no rule allows is denied by default",
         "request": request("POST", "/acme.orders.v1.Orders/DeleteOrder", json!({"authorization": format!("Bearer {reader}"), "content-type": "application/grpc"})),
         "expect": {"allow": false, "http_status": 403, "body_reason": "POLICY_DENIED", "metadata": {"rule": "default"}}},
        {"name": "context_extensions select a CEL policy (allow)",
         "request": {"method": "GET", "host": "t.example.com", "path": "/anything", "headers": bearer(&tenant_a), "context_extensions": {"policy": "tenant-a"}},
         "expect": {"allow": true, "metadata": {"rule": "tenant-a"}}},
        {"name": "context_extensions select a CEL policy (deny)",
         "request": {"method": "GET", "host": "t.example.com", "path": "/anything", "headers": bearer(&tenant_b), "context_extensions": {"policy": "tenant-a"}},
         "expect": {"allow": false, "http_status": 403, "body_reason": "POLICY_DENIED"}},
        {"name": "a token in the query string is refused",
         "request": request("GET", &format!("/orders/1?access_token={reader}"), json!({})),
         "expect": {"allow": false, "http_status": 401, "body_reason": "MALFORMED_CREDENTIAL", "response_excludes": [reader]}},
        {"name": "a rule can allow query-string tokens explicitly",
         "request": request("GET", &format!("/legacy/report?access_token={reader}"), json!({})),
         "expect": {"allow": true, "headers": {"x-user-id": "alice"}}},
        {"name": "two credentials are ambiguous",
         "request": request("GET", "/orders/1", json!({"authorization": format!("Bearer {reader}"), "x-api-key": "pcl_abc"})),
         "expect": {"allow": false, "http_status": 400, "www_authenticate_contains": "error=\"invalid_request\"", "body_reason": "AMBIGUOUS_CREDENTIAL"}},
        {"name": "a malformed token is refused without echoing it",
         "request": request("GET", "/orders/1", json!({"authorization": "Bearer abc.def"})),
         "expect": {"allow": false, "http_status": 401, "body_reason": "MALFORMED_CREDENTIAL", "response_excludes": ["abc.def"]}},
    ]})
}

#[tokio::test]
async fn go_control_plane_client_conforms() {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/extauthz-conformance");
    if Command::new("go").arg("version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: Go is required for the ext_authz conformance client"
        );
        eprintln!("SKIPPED: go not found");
        return;
    }
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("extauthz-conformance");
    let build = Command::new("go")
        .arg("-C")
        .arg(&module)
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "go build failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k1");
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&key]).to_string()).unwrap();
    let running = start(&policy_config(&jwks_path)).await;
    let cases_path = dir.path().join("cases.json");
    std::fs::write(
        &cases_path,
        serde_json::to_string_pretty(&cases(&key)).unwrap(),
    )
    .unwrap();

    let output = tokio::process::Command::new(&binary)
        .args(["-addr", &running.grpc_addr.to_string(), "-cases"])
        .arg(&cases_path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "conformance failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    running.shutdown().await.unwrap();
}

/// A pipeline built from `yaml` as `check-config` builds it (nothing fetched, nothing
/// started), with metrics of its own.
fn pipeline_of(
    yaml: &str,
) -> (
    portcullis::pipeline::Pipeline,
    std::sync::Arc<portcullis::telemetry::metrics::Metrics>,
) {
    let config = portcullis::config::load_str(yaml).unwrap();
    let client = portcullis::outbound::http_client().unwrap();
    let metrics = std::sync::Arc::new(portcullis::telemetry::metrics::Metrics::new(true));
    let pipeline = portcullis::build::pipeline(
        config,
        &client,
        &metrics,
        None,
        portcullis::build::BuildMode::Check,
    )
    .unwrap();
    (pipeline, metrics)
}

#[tokio::test]
async fn an_unreachable_key_source_is_a_503_deny_not_an_rpc_error() {
    let key = TestKey::new(ES256, "k1");
    let yaml = format!(
        "issuers:\n  - name: remote\n    issuer: {ISS}\n    jwks_uri: http://127.0.0.1:9/jwks\n    jwks: {{timeout: 200ms}}\nauthorization:\n  rules:\n    - name: all\n"
    );
    let (pipeline, _) = pipeline_of(&yaml);
    let authorization = format!("Bearer {}", key.sign(&claims(ISS, AUD)));
    let request = check_request("GET", "/x", &[("authorization", &authorization)]);
    let response =
        portcullis::grpc::ext_authz::check(&pipeline, &CheckRequestView::of(&request)).await;
    assert_eq!(
        response.status.unwrap().code,
        tonic::Code::Unavailable as i32
    );
    let Some(denied) = response.denied_response else {
        panic!("a denied response")
    };
    assert_eq!(denied.status.unwrap().code, 503);
    let body: Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(body["reason"], "UPSTREAM_UNAVAILABLE");
}

#[tokio::test]
async fn a_check_with_too_many_headers_is_a_counted_400_deny() {
    let (pipeline, metrics) = pipeline_of("authorization:\n  rules:\n    - name: all\n");
    let names: Vec<String> = (0..300).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let response = portcullis::grpc::ext_authz::check(
        &pipeline,
        &CheckRequestView::of(&check_request("GET", "/x", &headers)),
    )
    .await;
    let Some(denied) = response.denied_response else {
        panic!("a denied response")
    };
    assert_eq!(denied.status.unwrap().code, 400);
    let body: Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(body["reason"], "MALFORMED_REQUEST");
    let counted = metrics.render().lines().any(|line| {
        line.starts_with("portcullis_requests_total{")
            && line.contains("surface=\"ext_authz\"")
            && line.contains("reason=\"MALFORMED_REQUEST\"")
            && line.ends_with(" 1")
    });
    assert!(counted, "{}", metrics.render());
}
