//! The HTTP forward-auth listener (`server.http_listen`) as proxies call it: each convention
//! (`/nginx`, `/forwarded`, `/envoy/...`) decides the request it describes on the same rules
//! as Check; allows carry the identity headers, denials the reason's status, challenge and
//! JSON body; headers that name the request count only from trusted proxies, exactly once;
//! encoded paths, spoofed identity headers and query credentials are refused.

use jsonwebtoken::Algorithm::ES256;
use portcullis::server::Running;
use serde_json::{Value, json};

use crate::support::*;

const ISS: &str = "https://fa.test";
const AUD: &str = "api://orders";

async fn serve(dir: &std::path::Path, key: &TestKey, trusted: &str) -> Running {
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[key]).to_string()).unwrap();
    start(&format!(
        r#"
server: {{ http_listen: 127.0.0.1:0 }}
issuers:
  - name: fa
    issuer: {ISS}
    jwks_file: {}
    audiences: [{AUD}]
credentials:
  trusted_proxies: [{trusted}]
authorization:
  rules:
    - name: orders-read
      match: {{ http: {{ methods: [GET], paths: ["/orders/**"] }} }}
      require: {{ scopes_all: ["orders:read"] }}
    - name: orders-delete
      match: {{ http: {{ methods: [DELETE], paths: ["/orders/**"] }} }}
      require: {{ scopes_all: ["orders:delete"] }}
response:
  claims_to_headers: {{ sub: x-user-id }}
"#,
        jwks_path.display()
    ))
    .await
}

/// Sends a forward-auth request; returns status, the headers that matter, and the JSON body.
async fn ask(
    running: &Running,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Option<String>, Value) {
    let address = running.http_addr.expect("the forward-auth listener is on");
    let mut request = reqwest::Client::new().get(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (user, challenge) = (header("x-user-id"), header("www-authenticate"));
    let body = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, user, challenge, body)
}

#[tokio::test]
async fn each_convention_decides_the_request_it_describes() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k1");
    let running = serve(dir.path(), &key, "127.0.0.1/32").await;
    let token = key.sign(&claims(ISS, AUD));
    // 'static, to sit in the tables below with the literal headers.
    let bearer: &'static str = Box::leak(format!("Bearer {token}").into_boxed_str());
    let forwarded = |method: &'static str, uri: &'static str| {
        vec![
            ("x-forwarded-method", method),
            ("x-forwarded-host", "api.example.com"),
            ("x-forwarded-uri", uri),
        ]
    };

    let mut allow = forwarded("GET", "/orders/1");
    allow.push(("authorization", bearer));
    allow.push(("x-user-id", "forged"));
    let (status, user, _, _) = ask(&running, "/forwarded", &allow).await;
    assert_eq!(
        (status, user.as_deref()),
        (200, Some("alice")),
        "Traefik/Caddy allow"
    );

    let nginx = [
        ("x-original-method", "DELETE"),
        ("x-original-host", "api.example.com"),
        ("x-original-uri", "/orders/1"),
        ("authorization", bearer),
    ];
    let (status, user, challenge, body) = ask(&running, "/nginx", &nginx).await;
    assert_eq!((status, user), (403, None), "nginx: the scope is missing");
    assert_eq!(body["reason"], "INSUFFICIENT_SCOPE");
    assert!(challenge.is_some_and(|c| c.contains("insufficient_scope")));

    let (status, _, challenge, body) = ask(&running, "/envoy/orders/1", &[]).await;
    assert_eq!(
        (status, &body["reason"]),
        (401, &json!("MISSING_CREDENTIAL"))
    );
    assert!(challenge.is_some_and(|c| c.starts_with("Bearer")));
    let envoy = [("authorization", bearer)];
    let (status, user, _, _) = ask(&running, "/envoy/orders/1", &envoy).await;
    assert_eq!(
        (status, user.as_deref()),
        (200, Some("alice")),
        "Envoy http_service"
    );

    // What must be refused, each with its reason.
    let with_token = |mut headers: Vec<(&'static str, &'static str)>, bearer: &'static str| {
        headers.push(("authorization", bearer));
        headers
    };
    let mut twice = forwarded("GET", "/orders/1");
    twice.push(("x-forwarded-uri", "/admin"));
    let mut spoofed = with_token(forwarded("GET", "/orders/1"), bearer);
    spoofed.push(("x_user_id", "mallory"));
    type Headers = Vec<(&'static str, &'static str)>;
    let refused: Vec<(&str, Headers, u16, &str)> = vec![
        (
            "no uri",
            vec![("x-forwarded-method", "GET"), ("x-forwarded-host", "a")],
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "uri twice",
            with_token(twice, bearer),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "encoded slash",
            with_token(forwarded("GET", "/orders%2F..%2Fadmin"), bearer),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            "dot segments",
            with_token(forwarded("GET", "/orders/../admin"), bearer),
            403,
            "POLICY_DENIED",
        ),
        ("spoofed identity header", spoofed, 400, "MALFORMED_REQUEST"),
        (
            "query credential",
            forwarded("GET", "/orders/1?access_token=abc.def.ghi"),
            401,
            "MALFORMED_CREDENTIAL",
        ),
        (
            "absolute uri",
            with_token(forwarded("GET", "http://evil/orders/1"), bearer),
            400,
            "MALFORMED_REQUEST",
        ),
    ];
    for (name, headers, status, reason) in refused {
        let (got, user, _, body) = ask(&running, "/forwarded", &headers).await;
        assert_eq!(
            (got, &body["reason"]),
            (status, &json!(reason)),
            "{name}: {body}"
        );
        assert_eq!(user, None, "{name}");
    }
    let (status, ..) = ask(&running, "/somewhere-else", &allow).await;
    assert_eq!(status, 404, "only the three conventions are served");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn headers_that_name_the_request_count_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k1");
    let running = serve(dir.path(), &key, "10.0.0.0/8").await;
    let bearer = format!("Bearer {}", key.sign(&claims(ISS, AUD)));
    for (path, headers) in [
        (
            "/forwarded",
            [
                ("x-forwarded-method", "GET"),
                ("x-forwarded-host", "api.example.com"),
                ("x-forwarded-uri", "/orders/1"),
            ],
        ),
        (
            "/nginx",
            [
                ("x-original-method", "GET"),
                ("x-original-host", "api.example.com"),
                ("x-original-uri", "/orders/1"),
            ],
        ),
    ] {
        let mut headers = headers.to_vec();
        headers.push(("authorization", &bearer));
        let (status, user, _, body) = ask(&running, path, &headers).await;
        assert_eq!((status, user), (400, None), "{path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("trusted_proxies")
        );
    }
    // Envoy's convention names the request with the request itself: any peer.
    let (status, user, ..) = ask(&running, "/envoy/orders/1", &[("authorization", &bearer)]).await;
    assert_eq!((status, user.as_deref()), (200, Some("alice")));
    running.shutdown().await.unwrap();
}
