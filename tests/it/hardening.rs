//! Attacks that must never end in a wrong "yes", over real gRPC (Auth and Envoy's Check):
//! rule precedence when the credential is dropped or broken, one canonical path and host,
//! exactly one credential from one place, upstream headers that cannot be reinterpreted,
//! outbound calls that never follow an attacker (redirects, foreign discovery origins), and
//! introspection answers for other kinds of tokens.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::support::*;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse},
    pb::envoy::{
        config::core::v3::{HeaderMap, HeaderValue},
        service::auth::v3::authorization_client::AuthorizationClient,
    },
};
use jsonwebtoken::Algorithm::ES256;
use portcullis::{
    keys::api_keys::format,
    pb::{self, Reason},
};
use serde_json::{Value, json};

const ISS: &str = "https://a.test";
const AUD: &str = "api://orders";

fn issuer_yaml(jwks_path: &Path) -> String {
    format!(
        "issuers:\n  - name: corp\n    issuer: {ISS}\n    jwks_file: {}\n    audiences: [{AUD}]\n",
        jwks_path.display()
    )
}

async fn check_client(
    running: &portcullis::server::Running,
) -> AuthorizationClient<tonic::transport::Channel> {
    AuthorizationClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .expect("connects")
}

/// An expected Check answer: HTTP status and reason (`None` for an allow).
type Expected<'a> = (i32, Option<&'a str>);

/// Request headers of a test case.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// Status and reason of a Check answer (`None` reason for an allow).
fn verdict(response: &CheckResponse) -> (i32, Option<String>) {
    match response.http_response.as_ref().expect("an HTTP response") {
        HttpResponse::OkResponse(_) => (200, None),
        HttpResponse::DeniedResponse(denied) => {
            let body: Value = serde_json::from_str(&denied.body).expect("JSON body");
            (
                denied.status.as_ref().expect("a status").code,
                body["reason"].as_str().map(str::to_owned),
            )
        }
        HttpResponse::ErrorResponse(_) => panic!("Portcullis never answers with an error response"),
    }
}

async fn check(
    client: &mut AuthorizationClient<tonic::transport::Channel>,
    request: CheckRequest,
) -> CheckResponse {
    client
        .check(request)
        .await
        .expect("Check is always an OK RPC")
        .into_inner()
}

fn with_host(mut request: CheckRequest, host: &str) -> CheckRequest {
    if let Some(http) = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.host = host.to_owned();
    }
    request
}

struct Fixture {
    _dir: tempfile::TempDir,
    key: TestKey,
    jwks_path: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::new(ES256, "k1");
        let jwks_path = dir.path().join("jwks.json");
        std::fs::write(&jwks_path, jwks(&[&key]).to_string()).unwrap();
        Fixture {
            _dir: dir,
            key,
            jwks_path,
        }
    }

    fn token(&self, patch: Value) -> String {
        let mut claims = claims(ISS, AUD);
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        self.key.sign(&claims)
    }
}

#[tokio::test]
async fn dropping_or_breaking_the_credential_never_gains_access() {
    let f = Fixture::new();
    let running = start(&format!(
        r#"{}
authorization:
  rules:
    - name: internal-off
      match: {{ http: {{ paths: ["/public/internal/**"] }} }}
      effect: deny
    - name: public
      match: {{ http: {{ paths: ["/public/**"] }} }}
      anonymous: true
    - name: tolerant
      match: {{ http: {{ paths: ["/tolerant/**"] }} }}
      anonymous: allow_failed
    - name: no-contractors
      match: {{ http: {{ paths: ["/reports/**"] }} }}
      require: {{ cel: "claims.employment == 'contractor'" }}
      effect: deny
    - name: reports
      match: {{ http: {{ paths: ["/reports/**"] }} }}
"#,
        issuer_yaml(&f.jwks_path)
    ))
    .await;
    let mut envoy = check_client(&running).await;
    let valid = f.token(json!({"employment": "staff"}));
    let expired = f.token(json!({"exp": now() - 3600}));
    let no_claim = f.token(json!({}));
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, &str, Option<String>, Expected<'_>)> = vec![
        (
            "deny rule, valid token",
            "/public/internal/x",
            Some(bearer(&valid)),
            (403, Some("POLICY_DENIED")),
        ),
        (
            "deny rule, no credential",
            "/public/internal/x",
            None,
            (403, Some("POLICY_DENIED")),
        ),
        (
            "deny rule, expired token",
            "/public/internal/x",
            Some(bearer(&expired)),
            (401, Some("EXPIRED")),
        ),
        ("public, no credential", "/public/x", None, (200, None)),
        (
            "public, valid token",
            "/public/x",
            Some(bearer(&valid)),
            (200, None),
        ),
        (
            "public, expired token is told so",
            "/public/x",
            Some(bearer(&expired)),
            (401, Some("EXPIRED")),
        ),
        (
            "public, garbage token is told so",
            "/public/x",
            Some("Bearer x.y.z".into()),
            (401, Some("MALFORMED_CREDENTIAL")),
        ),
        (
            "allow_failed, expired token",
            "/tolerant/x",
            Some(bearer(&expired)),
            (200, None),
        ),
        (
            "deny rule whose CEL errors fails closed",
            "/reports/1",
            Some(bearer(&no_claim)),
            (403, Some("POLICY_DENIED")),
        ),
        (
            "deny rule whose CEL is false",
            "/reports/1",
            Some(bearer(&valid)),
            (200, None),
        ),
    ];
    for (name, path, authorization, (status, reason)) in cases {
        let headers: Vec<(&str, &str)> = authorization
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let response = check(&mut envoy, check_request("GET", path, &headers)).await;
        assert_eq!(
            verdict(&response),
            (status, reason.map(str::to_owned)),
            "{name}"
        );
    }

    // An allow_failed allow never forwards the credential that failed.
    let response = check(
        &mut envoy,
        check_request(
            "GET",
            "/tolerant/x",
            &[("authorization", &bearer(&expired))],
        ),
    )
    .await;
    let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
        panic!("allowed")
    };
    assert!(
        ok.headers_to_remove.iter().any(|h| h == "authorization"),
        "{:?}",
        ok.headers_to_remove
    );

    // Authorize: required_scopes hold for every request, a missing credential included.
    let mut auth = client(&running).await;
    let authorize = |headers: HashMap<String, String>, scopes: &[&str]| pb::AuthorizeRequest {
        headers,
        resource: Some(pb::Resource {
            http_method: "GET".into(),
            path: "/public/x".into(),
            ..Default::default()
        }),
        required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let no_credential = auth
        .authorize(authorize(HashMap::new(), &["admin"]))
        .await
        .unwrap()
        .into_inner();
    assert!(!no_credential.allowed);
    assert_eq!(
        no_credential.denial.unwrap().reason,
        Reason::MissingCredential as i32
    );
    let token_headers = HashMap::from([("authorization".to_owned(), bearer(&valid))]);
    let without_scope = auth
        .authorize(authorize(token_headers.clone(), &["admin"]))
        .await
        .unwrap()
        .into_inner();
    assert!(!without_scope.allowed);
    assert_eq!(
        without_scope.denial.unwrap().reason,
        Reason::InsufficientScope as i32
    );
    let with_scope = auth
        .authorize(authorize(token_headers, &["orders:read"]))
        .await
        .unwrap()
        .into_inner();
    assert!(with_scope.allowed, "{:?}", with_scope.denial);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn only_the_canonical_path_and_host_are_matched() {
    let f = Fixture::new();
    let running = start(&format!(
        r#"{}
authorization:
  rules:
    - name: internal-off
      match: {{ http: {{ paths: ["/internal/**"] }} }}
      effect: deny
    - name: admin-host-off
      match: {{ http: {{ hosts: ["admin.example"] }} }}
      effect: deny
    - name: exact-off
      match: {{ http: {{ paths: ["/exact/"] }} }}
      effect: deny
    - name: exact-off-too
      match: {{ http: {{ paths: ["/exact"] }} }}
      effect: deny
    - name: admin-grpc-off
      match: {{ grpc: {{ services: ["acme.admin.v1.*"] }} }}
      effect: deny
    - name: public
      match: {{ http: {{ paths: ["/public/**"] }} }}
      anonymous: true
    - name: signed-in
      match: {{ http: {{ paths: ["/**"] }} }}
"#,
        issuer_yaml(&f.jwks_path)
    ))
    .await;
    let mut envoy = check_client(&running).await;
    let token = format!("Bearer {}", f.token(json!({})));
    let anonymous: &[(&str, &str)] = &[];
    let signed_in: &[(&str, &str)] = &[("authorization", &token)];
    let cases: Vec<(&str, &str, &str, Headers<'_>, Expected<'_>)> = vec![
        (
            "encoded slash",
            "GET",
            "/public/..%2Fadmin/users",
            anonymous,
            (400, Some("MALFORMED_REQUEST")),
        ),
        (
            "lower-case encoded slash",
            "GET",
            "/public/..%2fadmin/users",
            anonymous,
            (400, Some("MALFORMED_REQUEST")),
        ),
        (
            "path parameter",
            "GET",
            "/public/..;/admin/users",
            anonymous,
            (400, Some("MALFORMED_REQUEST")),
        ),
        (
            "backslash",
            "GET",
            "/public/..\\admin/users",
            anonymous,
            (400, Some("MALFORMED_REQUEST")),
        ),
        (
            "encoded backslash",
            "GET",
            "/public/..%5cadmin/users",
            anonymous,
            (400, Some("MALFORMED_REQUEST")),
        ),
        (
            "encoded NUL",
            "GET",
            "/public/a%00b",
            anonymous,
            (400, Some("MALFORMED_REQUEST")),
        ),
        (
            "double encoding",
            "GET",
            "/public/%252e%252e/admin",
            anonymous,
            (400, Some("MALFORMED_REQUEST")),
        ),
        (
            "invalid UTF-8",
            "GET",
            "/public/%c0%ae",
            anonymous,
            (400, Some("MALFORMED_REQUEST")),
        ),
        (
            "dot segments resolved",
            "GET",
            "/public/../admin/users",
            anonymous,
            (401, Some("MISSING_CREDENTIAL")),
        ),
        (
            "encoded dots resolved",
            "GET",
            "/public/%2e%2E/admin",
            anonymous,
            (401, Some("MISSING_CREDENTIAL")),
        ),
        (
            "encoded unreserved letter",
            "GET",
            "/%69nternal/x",
            signed_in,
            (403, Some("POLICY_DENIED")),
        ),
        (
            "merged slashes",
            "GET",
            "//internal//x",
            signed_in,
            (403, Some("POLICY_DENIED")),
        ),
        (
            "trailing slash added",
            "GET",
            "/exact",
            signed_in,
            (403, Some("POLICY_DENIED")),
        ),
        (
            "trailing slash removed",
            "GET",
            "/exact/",
            signed_in,
            (403, Some("POLICY_DENIED")),
        ),
        (
            "trailing slash on a glob",
            "GET",
            "/internal",
            signed_in,
            (403, Some("POLICY_DENIED")),
        ),
        (
            "trailing slash: allow rules match the canonical path",
            "GET",
            "/public",
            anonymous,
            (401, Some("MISSING_CREDENTIAL")),
        ),
        (
            "jsessionid parameter",
            "GET",
            "/internal;jsessionid=1/x",
            signed_in,
            (400, Some("MALFORMED_REQUEST")),
        ),
        (
            "query string is not the path",
            "GET",
            "/public/x?next=/internal",
            anonymous,
            (200, None),
        ),
        (
            "gRPC method with encoded letters",
            "POST",
            "/acme.admin.v1.Admin/%47et",
            signed_in,
            (403, Some("POLICY_DENIED")),
        ),
        (
            "gRPC path with dot segments",
            "POST",
            "/x/../acme.admin.v1.Admin/Get",
            signed_in,
            (403, Some("POLICY_DENIED")),
        ),
        ("public", "GET", "/public/a/b", anonymous, (200, None)),
    ];
    for (name, method, path, headers, (status, reason)) in cases {
        let response = check(&mut envoy, check_request(method, path, headers)).await;
        assert_eq!(
            verdict(&response),
            (status, reason.map(str::to_owned)),
            "{name}"
        );
    }
    let hosts = [
        ("admin.example", 403, Some("POLICY_DENIED")),
        ("admin.example.", 403, Some("POLICY_DENIED")),
        ("ADMIN.Example:8443", 403, Some("POLICY_DENIED")),
        ("admin.example.:443", 403, Some("POLICY_DENIED")),
        ("admin.example..", 400, Some("MALFORMED_REQUEST")),
        ("admin.example%2e", 400, Some("MALFORMED_REQUEST")),
        ("user@admin.example", 400, Some("MALFORMED_REQUEST")),
        ("api.example", 200, None),
    ];
    for (host, status, reason) in hosts {
        let request = with_host(check_request("GET", "/x", signed_in), host);
        let response = check(&mut envoy, request).await;
        assert_eq!(
            verdict(&response),
            (status, reason.map(str::to_owned)),
            "host {host}"
        );
    }
    // A method-override header (any spelling) or `_method` parameter naming another method
    // is refused: the upstream might serve the request as that method.
    for (name, value, path, status) in [
        ("x-http-method-override", "DELETE", "/x", 400),
        ("x_http_method_override", "DELETE", "/x", 400),
        ("x-http-method-override", "get", "/x", 200),
        ("accept", "*/*", "/x?_method=DELETE", 400),
        ("accept", "*/*", "/x?_method=GET", 200),
    ] {
        let headers = [("authorization", token.as_str()), (name, value)];
        let response = check(&mut envoy, check_request("GET", path, &headers)).await;
        assert_eq!(verdict(&response).0, status, "{name}: {value} on {path}");
    }
    // Encoded hex digits of a double encoding, and `..` after an empty segment (servers
    // that merge slashes first and those that do not disagree on it).
    for path in [
        "/public/%25%32%65%25%32%65/admin",
        "/public//../admin",
        "/admin//../public/x",
    ] {
        let response = check(&mut envoy, check_request("GET", path, anonymous)).await;
        assert_eq!(
            verdict(&response),
            (400, Some("MALFORMED_REQUEST".to_owned())),
            "{path}"
        );
    }
    // Authorize canonicalizes the same way.
    let mut auth = client(&running).await;
    let response = auth
        .authorize(pb::AuthorizeRequest {
            resource: Some(pb::Resource {
                http_method: "GET".into(),
                path: "/public/..%2Fadmin".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!response.allowed);
    assert_eq!(
        response.denial.unwrap().reason,
        Reason::MalformedRequest as i32
    );
    running.shutdown().await.unwrap();
}

fn header_map_request(path: &str, entries: &[(&str, &str)]) -> CheckRequest {
    let mut request = check_request("GET", path, &[]);
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.header_map = Some(HeaderMap {
        headers: entries
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                raw_value: v.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    });
    request
}

#[tokio::test]
async fn exactly_one_credential_from_exactly_one_place() {
    let f = Fixture::new();
    let running = start(&format!(
        r#"{}
credentials: {{ max_credential_bytes: 1024 }}
authorization:
  rules:
    - name: legacy
      match: {{ http: {{ paths: ["/legacy/**"] }} }}
      allow_query_credentials: true
    - name: signed-in
      match: {{ http: {{ paths: ["/**"] }} }}
response:
  claims_to_headers:
    principal.subject: x-user-id
    principal.scopes: x-scopes
    groups: x-groups
"#,
        issuer_yaml(&f.jwks_path)
    ))
    .await;
    let mut envoy = check_client(&running).await;
    let real = f.token(
        json!({"sub": " admin ", "groups": ["a,b", "c"], "scp": ["read write"], "scope": null}),
    );
    let forged = f.token(json!({"sub": "root"}));
    let real_header = format!("Bearer {real}");
    let forged_header = format!("Bearer {forged}");

    let cases: Vec<(&str, CheckRequest, Expected<'_>)> = vec![
        (
            "two authorization entries in header_map",
            header_map_request(
                "/x",
                &[
                    ("authorization", &forged_header),
                    ("authorization", &real_header),
                ],
            ),
            (400, Some("AMBIGUOUS_CREDENTIAL")),
        ),
        (
            "two spellings of authorization in header_map",
            header_map_request(
                "/x",
                &[
                    ("Authorization", &forged_header),
                    ("authorization", &real_header),
                ],
            ),
            (400, Some("AMBIGUOUS_CREDENTIAL")),
        ),
        (
            "repeated header joined by Envoy",
            check_request(
                "GET",
                "/x",
                &[("authorization", &format!("{forged_header},{real_header}"))],
            ),
            (400, Some("AMBIGUOUS_CREDENTIAL")),
        ),
        (
            "two access_token parameters",
            check_request(
                "GET",
                &format!("/legacy/x?access_token={real}&access_token={forged}"),
                &[],
            ),
            (400, Some("AMBIGUOUS_CREDENTIAL")),
        ),
        (
            "header and query",
            check_request(
                "GET",
                &format!("/legacy/x?access_token={forged}"),
                &[("authorization", &real_header)],
            ),
            (400, Some("AMBIGUOUS_CREDENTIAL")),
        ),
        (
            "query token over max_credential_bytes",
            check_request(
                "GET",
                &format!("/legacy/x?access_token={}", "a".repeat(2000)),
                &[],
            ),
            (401, Some("MALFORMED_CREDENTIAL")),
        ),
        (
            "one query token where a rule allows it",
            check_request("GET", &format!("/legacy/x?access_token={real}"), &[]),
            (200, None),
        ),
        (
            "one header entry",
            header_map_request("/x", &[("authorization", &real_header)]),
            (200, None),
        ),
    ];
    for (name, request, (status, reason)) in cases {
        let response = check(&mut envoy, request).await;
        assert_eq!(
            verdict(&response),
            (status, reason.map(str::to_owned)),
            "{name}"
        );
    }

    // Upstream headers cannot be trimmed or split, and CGI-style spellings are stripped.
    let response = check(
        &mut envoy,
        check_request("GET", "/x", &[("authorization", &real_header)]),
    )
    .await;
    let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
        panic!("allowed")
    };
    let set: HashMap<String, String> = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    assert_eq!(set["x-user-id"], "%20admin%20");
    assert_eq!(set["x-scopes"], "read%20write");
    assert_eq!(set["x-groups"], r#"["a%2Cb","c"]"#);
    // Another spelling of an identity header is refused outright.
    for spoof in ["x_user-id", "x-user_id", "x_user_id"] {
        let response = check(
            &mut envoy,
            check_request(
                "GET",
                "/x",
                &[("authorization", &real_header), (spoof, "admin")],
            ),
        )
        .await;
        assert_eq!(
            verdict(&response),
            (400, Some("MALFORMED_REQUEST".to_owned())),
            "{spoof}"
        );
    }
    for alias in ["x_user_id", "x_scopes", "x_groups"] {
        assert!(
            ok.headers_to_remove.iter().any(|h| h == alias),
            "{alias} stripped: {:?}",
            ok.headers_to_remove
        );
    }
    running.shutdown().await.unwrap();
}

/// A fake introspection endpoint (RFC 7662) that answers what the test says and counts
/// calls; `/redirect` answers 307 to `target`.
#[derive(Clone)]
struct FakeIdp {
    answer: Arc<std::sync::Mutex<Value>>,
    calls: Arc<AtomicUsize>,
}

async fn introspect(State(idp): State<FakeIdp>) -> impl IntoResponse {
    idp.calls.fetch_add(1, Ordering::SeqCst);
    let answer = idp.answer.lock().unwrap().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn fake_idp(answer: Value) -> (String, FakeIdp) {
    let idp = FakeIdp {
        answer: Arc::new(std::sync::Mutex::new(answer)),
        calls: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route("/introspect", post(introspect))
        .route("/jwks", get(introspect))
        .with_state(idp.clone());
    (serve(app).await, idp)
}

/// A server that redirects every request to `target` with the given status.
async fn redirector(target: String, status: StatusCode) -> String {
    let app = Router::new().fallback(move || {
        let target = target.clone();
        async move { (status, [(header::LOCATION, target)]) }
    });
    serve(app).await
}

#[tokio::test]
async fn api_keys_sent_as_bearer_tokens_never_reach_introspection() {
    let dir = tempfile::tempdir().unwrap();
    let key = format::generate("pcl").unwrap();
    let keys_path = dir.path().join("keys.yaml");
    std::fs::write(
        &keys_path,
        format!(
            "keys:\n  - {{id: k1, sha256: {}, subject: billing, scopes: [orders:read]}}\n",
            format::hex(&format::digest(&key))
        ),
    )
    .unwrap();
    let (idp, calls) = fake_idp(json!({"active": true, "sub": "someone"})).await;
    let running = start(&format!(
        r#"
api_keys: {{ prefix: pcl, file: {} }}
issuers:
  - name: corp
    issuer: {ISS}
    introspection: {{ endpoint: {idp}/introspect, client_id: portcullis, client_secret: "s3cret-for-tests" }}
"#,
        keys_path.display()
    ))
    .await;
    let mut auth = client(&running).await;
    let bearer = |token: &str| pb::AuthenticateRequest {
        credential: Some(pb::Credential {
            kind: Some(pb::credential::Kind::Authorization(format!(
                "Bearer {token}"
            ))),
        }),
        ..Default::default()
    };
    let response = auth.authenticate(bearer(&key)).await.unwrap().into_inner();
    assert_eq!(reason(&response), None, "{:?}", response.denial);
    let principal = response.principal.unwrap();
    assert_eq!(principal.credential_type, pb::CredentialType::ApiKey as i32);
    assert_eq!(principal.subject, "billing");
    let damaged = format!("{}x", &key[..key.len() - 1]);
    let response = auth
        .authenticate(bearer(&damaged))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        calls.calls.load(Ordering::SeqCst),
        0,
        "no API key was introspected"
    );
    assert!(!response.authenticated);
    // An opaque token that is not an API key does go to introspection.
    let response = auth
        .authenticate(bearer("opaque-token-0123456789"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(&response), None, "{:?}", response.denial);
    assert_eq!(calls.calls.load(Ordering::SeqCst), 1);

    // Authenticate.audience is never silently ignored.
    let response = auth
        .authenticate(pb::AuthenticateRequest {
            audience: "api://other".into(),
            ..bearer(&key)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(&response), Some(Reason::AudienceMismatch));
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn introspection_refuses_other_token_types_and_caches_refusals_briefly() {
    let (idp, fake) =
        fake_idp(json!({"active": true, "sub": "u1", "token_type": "refresh_token"})).await;
    let running = start(&format!(
        r#"
issuers:
  - name: corp
    issuer: {ISS}
    introspection: {{ endpoint: {idp}/introspect, client_id: portcullis, client_secret: "s3cret-for-tests", cache_ttl: 60s, negative_cache_ttl: 1s }}
"#
    ))
    .await;
    let mut auth = client(&running).await;
    let opaque = |token: &str| pb::AuthenticateRequest {
        credential: Some(pb::Credential {
            kind: Some(pb::credential::Kind::BearerToken(token.to_owned())),
        }),
        ..Default::default()
    };
    for (token, kind, expected) in [
        (
            "t-refresh",
            json!({"token_type": "refresh_token"}),
            Some(Reason::InvalidClaims),
        ),
        (
            "t-urn",
            json!({"token_type": "urn:ietf:params:oauth:token-type:refresh_token"}),
            Some(Reason::InvalidClaims),
        ),
        (
            "t-use",
            json!({"token_use": "refresh_token"}),
            Some(Reason::InvalidClaims),
        ),
        ("t-bearer", json!({"token_type": "Bearer"}), None),
        ("t-access", json!({"token_use": "access_token"}), None),
    ] {
        let mut answer = json!({"active": true, "sub": "u1"});
        for (k, v) in kind.as_object().unwrap() {
            answer[k] = v.clone();
        }
        *fake.answer.lock().unwrap() = answer;
        let response = auth.authenticate(opaque(token)).await.unwrap().into_inner();
        assert_eq!(reason(&response), expected, "{token}");
    }

    // A flood of one inactive token costs one call per negative_cache_ttl.
    *fake.answer.lock().unwrap() = json!({"active": false});
    let before = fake.calls.load(Ordering::SeqCst);
    for _ in 0..20 {
        let response = auth
            .authenticate(opaque("t-dead"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reason(&response), Some(Reason::Inactive));
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), before + 1);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let response = auth
        .authenticate(opaque("t-dead"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(&response), Some(Reason::Inactive));
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        before + 2,
        "refusals expire"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn outbound_calls_never_follow_a_redirect() {
    let attacker_key = TestKey::new(ES256, "evil");
    let (attacker, attacker_hits) = fake_idp(jwks(&[&attacker_key])).await;
    // The attacker's endpoint also answers introspection with "active".
    *attacker_hits.answer.lock().unwrap() = jwks(&[&attacker_key]);
    let jwks_redirect =
        redirector(format!("{attacker}/jwks"), StatusCode::TEMPORARY_REDIRECT).await;
    let introspection_redirect = redirector(
        format!("{attacker}/introspect"),
        StatusCode::TEMPORARY_REDIRECT,
    )
    .await;
    let running = start(&format!(
        r#"
issuers:
  - name: corp
    issuer: {ISS}
    jwks_uri: {jwks_redirect}/jwks
    jwks: {{ refetch_cooldown: 1s, timeout: 2s }}
  - name: opaque
    issuer: https://opaque.test
    introspection: {{ endpoint: {introspection_redirect}/introspect, client_id: portcullis, client_secret: "s3cret-for-tests" }}
"#
    ))
    .await;
    let mut auth = client(&running).await;
    let token = attacker_key.sign(&claims(ISS, AUD));
    let response = authenticate(&mut auth, &token).await;
    assert!(
        !response.authenticated,
        "a redirected JWKS is never trusted"
    );
    let response = authenticate(&mut auth, "opaque-token-0123456789").await;
    assert_eq!(reason(&response), Some(Reason::UpstreamUnavailable));
    assert_eq!(
        attacker_hits.calls.load(Ordering::SeqCst),
        0,
        "nothing, and no client secret, reached the redirect target"
    );
    running.shutdown().await.unwrap();
}

/// An OpenID discovery document naming `jwks_uri`, for issuer `issuer`.
async fn discovery(issuer_of_document: Arc<std::sync::Mutex<String>>, jwks_uri: String) -> String {
    let app = Router::new().route(
        "/.well-known/openid-configuration",
        get(move || {
            let issuer = issuer_of_document.lock().unwrap().clone();
            let jwks_uri = jwks_uri.clone();
            async move { json!({"issuer": issuer, "jwks_uri": jwks_uri}).to_string() }
        }),
    );
    serve(app).await
}

#[tokio::test]
async fn discovery_trusts_only_its_own_issuer_and_origin() {
    let key = TestKey::new(ES256, "k1");
    let (keys, keys_hits) = fake_idp(jwks(&[&key])).await;
    let document_issuer = Arc::new(std::sync::Mutex::new(String::new()));
    let idp = discovery(document_issuer.clone(), format!("{keys}/jwks")).await;
    *document_issuer.lock().unwrap() = idp.clone();
    let config = |allowed: &str| {
        format!(
            r#"
issuers:
  - name: corp
    issuer: {idp}
    discovery: true
    jwks: {{ refetch_cooldown: 1s, timeout: 2s{allowed} }}
"#
        )
    };
    // The key set is on another origin (another port): refused unless listed.
    let running = start(&config("")).await;
    let mut auth = client(&running).await;
    let token = key.sign(&claims(&idp, AUD));
    let response = authenticate(&mut auth, &token).await;
    assert_eq!(reason(&response), Some(Reason::UpstreamUnavailable));
    assert_eq!(keys_hits.calls.load(Ordering::SeqCst), 0);
    running.shutdown().await.unwrap();

    let running = start(&config(&format!(", allowed_origins: [\"{keys}\"]"))).await;
    let mut auth = client(&running).await;
    eventually(std::time::Duration::from_secs(5), || {
        running.shared.is_ready()
    })
    .await;
    let response = authenticate(&mut auth, &token).await;
    assert_eq!(reason(&response), None, "{:?}", response.denial);
    running.shutdown().await.unwrap();

    // A document naming another issuer (even a trailing slash) is refused.
    *document_issuer.lock().unwrap() = format!("{idp}/");
    let before = keys_hits.calls.load(Ordering::SeqCst);
    let running = start(&config(&format!(", allowed_origins: [\"{keys}\"]"))).await;
    let mut auth = client(&running).await;
    let response = authenticate(&mut auth, &token).await;
    assert_eq!(reason(&response), Some(Reason::UpstreamUnavailable));
    assert_eq!(keys_hits.calls.load(Ordering::SeqCst), before);
    running.shutdown().await.unwrap();
}

/// The verified-token cache is bounded in estimated bytes (`cache.max_bytes`) as well as in
/// entries: large tokens cannot pin memory by count.
#[tokio::test]
async fn the_token_cache_is_bounded_in_bytes_and_in_entries() {
    let f = Fixture::new();
    let padding = "p".repeat(5 * 1024);
    for (cache, tokens, at_most) in [
        // ~7 KB tokens weigh ~22 KB each: 128 KiB holds at most 5 of them.
        ("{max_entries: 100000, max_bytes: 131072}", 40, 5),
        // Small tokens: the entry bound holds.
        ("{max_entries: 10, max_bytes: 67108864}", 40, 10),
    ] {
        let running = start(&format!("{}cache: {cache}\n", issuer_yaml(&f.jwks_path))).await;
        let mut auth = client(&running).await;
        for i in 0..tokens {
            let patch = if at_most == 10 {
                json!({"jti": format!("t{i}")})
            } else {
                json!({"jti": format!("t{i}"), "pad": padding})
            };
            let response = authenticate(&mut auth, &f.token(patch)).await;
            assert!(response.authenticated, "{:?}", response.denial);
        }
        let cached = running.shared.pipeline.load().jwt().cached_tokens();
        assert!(
            (1..=at_most).contains(&cached),
            "{cache}: {cached} tokens cached, at most {at_most}"
        );
        running.shutdown().await.unwrap();
    }
}
