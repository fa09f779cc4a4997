//! Opaque tokens through OAuth2 introspection (RFC 7662): against the real `oidc-provider`
//! (tests/oidc, resource `api://opaque`) with client_secret_basic and client_secret_post, and
//! against an in-process fake for what a real provider will not do on demand: expired or
//! foreign-audience active tokens, an endpoint that is down, hangs or answers garbage, the
//! cache (never past `exp`, audience re-checked on a hit) and one call for concurrent
//! requests.
//!
//! The real-provider test needs `node` and tests/oidc/node_modules
//! (scripts/provision/oidc.sh); under CI=true their absence fails it, elsewhere it is skipped.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::*;
use axum::{
    Router, body::Bytes, extract::State, http::HeaderMap, response::IntoResponse, routing::post,
};
use portcullis::pb::{self, Reason, auth_client::AuthClient};
use serde_json::{Value, json};
use tonic::transport::Channel;

async fn call(
    client: &mut AuthClient<Channel>,
    token: &str,
    audience: &str,
) -> pb::AuthenticateResponse {
    client
        .authenticate(pb::AuthenticateRequest {
            credential: Some(pb::Credential {
                kind: Some(pb::credential::Kind::BearerToken(token.to_owned())),
            }),
            audience: audience.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

// ---- the real provider ----

async fn opaque_token(issuer: &str, resource: Option<&str>) -> String {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("scope", "opaque:read"),
    ];
    if let Some(resource) = resource {
        form.push(("resource", resource));
    }
    let response: Value = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth("portcullis-test", Some("throwaway-test-secret"))
        .form(&form)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    response["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn opaque_tokens_from_a_real_openid_provider() {
    if !oidc::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let provider = oidc::start(oidc::free_port(), &dir.path().join("key.json"), false);
    let secret_file = dir.path().join("post-secret");
    std::fs::write(&secret_file, "throwaway-test-secret-post\n").unwrap();
    for (client_id, secret, method) in [
        (
            "portcullis-test",
            "throwaway-test-secret".to_owned(),
            "client_secret_basic",
        ),
        (
            "portcullis-post",
            format!("file:{}", secret_file.display()),
            "client_secret_post",
        ),
    ] {
        let running = start(&format!(
            "issuers:\n  - name: idp\n    issuer: {iss}\n    audiences: [api://opaque]\n    introspection:\n      endpoint: {iss}/token/introspection\n      client_id: {client_id}\n      client_secret: {secret}\n      auth_method: {method}\nauthorization: {{rules: [{{name: any-authenticated}}]}}\n",
            iss = provider.issuer
        ))
        .await;
        let mut client = client(&running).await;
        let token = opaque_token(&provider.issuer, Some("api://opaque")).await;
        assert!(!token.contains('.'), "an opaque token, not a JWT");
        let response = call(&mut client, &token, "").await;
        assert_eq!(reason(&response), None, "{method}: {:?}", response.denial);
        let principal = response.principal.unwrap();
        assert_eq!(principal.subject, "portcullis-test", "{method}");
        assert_eq!(principal.issuer, "idp");
        assert_eq!(
            principal.credential_type,
            pb::CredentialType::OpaqueToken as i32
        );
        assert_eq!(principal.scopes, ["opaque:read"]);
        assert!(principal.expires_at.unwrap().seconds > now());
        assert!(principal.claims.unwrap().fields.contains_key("client_id"));

        let cases = [
            (
                "a token the provider never issued is inactive",
                "made-up-token-0123456789abcdef".to_owned(),
                "",
                Some(Reason::Inactive),
            ),
            (
                "another audience than requested",
                token.clone(),
                "api://elsewhere",
                Some(Reason::AudienceMismatch),
            ),
            (
                "a token with no audience",
                opaque_token(&provider.issuer, None).await,
                "",
                Some(Reason::AudienceMismatch),
            ),
        ];
        for (name, token, audience, expected) in cases {
            assert_eq!(
                reason(&call(&mut client, &token, audience).await),
                expected,
                "{method}: {name}"
            );
        }
        let response = client
            .authorize(pb::AuthorizeRequest {
                credential: Some(pb::Credential {
                    kind: Some(pb::credential::Kind::BearerToken(token.clone())),
                }),
                required_scopes: vec!["opaque:write".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.denial.unwrap().reason,
            Reason::InsufficientScope as i32
        );
        running.shutdown().await.unwrap();
    }
}

// ---- the fake endpoint ----

#[derive(Clone)]
enum Mode {
    Answer(Value),
    Down,
    Hang,
    Garbage,
}

#[derive(Clone)]
struct Fake {
    url: String,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
    /// The last request's Authorization header and form body.
    last: Arc<Mutex<(String, String)>>,
}

type FakeState = (
    Arc<Mutex<Mode>>,
    Arc<AtomicUsize>,
    Arc<Mutex<(String, String)>>,
);

async fn introspect(
    (State((mode, hits, last)), headers, body): (State<FakeState>, HeaderMap, Bytes),
) -> axum::response::Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    *last.lock().unwrap() = (auth, String::from_utf8_lossy(&body).into_owned());
    let mode = mode.lock().unwrap().clone();
    match mode {
        Mode::Answer(body) => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            ([("content-type", "application/json")], body.to_string()).into_response()
        }
        Mode::Down => axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "{}".into_response()
        }
        Mode::Garbage => "<html>not json".into_response(),
    }
}

impl Fake {
    async fn start() -> Self {
        let mode = Arc::new(Mutex::new(Mode::Down));
        let hits = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new((String::new(), String::new())));
        let app = Router::new()
            .route(
                "/introspect",
                post(|state: State<FakeState>, headers: HeaderMap, body: Bytes| {
                    introspect((state, headers, body))
                }),
            )
            .with_state((mode.clone(), hits.clone(), last.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/introspect", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake {
            url,
            mode,
            hits,
            last,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn active(exp: i64, aud: &str) -> Value {
    json!({"active": true, "iss": "https://fake.test", "sub": "svc-1", "aud": aud, "exp": exp, "scope": "a b"})
}

async fn fake_server(fake: &Fake, method: &str) -> portcullis::server::Running {
    start(&format!(
        "issuers:\n  - name: fake\n    issuer: https://fake.test\n    audiences: [api://x]\n    leeway: 0s\n    introspection: {{endpoint: \"{}\", client_id: \"my client\", client_secret: \"s3cr:t\", auth_method: {method}, cache_ttl: 60s, timeout: 500ms}}\nauthorization: {{rules: [{{name: any-authenticated}}]}}\n",
        fake.url
    ))
    .await
}

#[tokio::test]
async fn introspection_faults_and_cache() {
    let fake = Fake::start().await;
    let running = fake_server(&fake, "client_secret_basic").await;
    let mut client = client(&running).await;
    let cases: Vec<(&str, Mode, Option<Reason>)> = vec![
        (
            "active",
            Mode::Answer(active(now() + 3600, "api://x")),
            None,
        ),
        (
            "active=false",
            Mode::Answer(json!({"active": false})),
            Some(Reason::Inactive),
        ),
        (
            "active but expired",
            Mode::Answer(active(now() - 10, "api://x")),
            Some(Reason::Expired),
        ),
        (
            "active for another audience",
            Mode::Answer(active(now() + 3600, "api://other")),
            Some(Reason::AudienceMismatch),
        ),
        (
            "another issuer",
            Mode::Answer(
                json!({"active": true, "iss": "https://evil.test", "sub": "x", "aud": "api://x"}),
            ),
            Some(Reason::UntrustedIssuer),
        ),
        (
            "endpoint down",
            Mode::Down,
            Some(Reason::UpstreamUnavailable),
        ),
        (
            "endpoint answers garbage",
            Mode::Garbage,
            Some(Reason::UpstreamUnavailable),
        ),
        (
            "active is not a boolean",
            Mode::Answer(json!({"active": "true", "sub": "x"})),
            Some(Reason::UpstreamUnavailable),
        ),
        (
            "endpoint hangs",
            Mode::Hang,
            Some(Reason::UpstreamUnavailable),
        ),
    ];
    for (i, (name, mode, expected)) in cases.into_iter().enumerate() {
        fake.set(mode);
        let started = Instant::now();
        let response = call(&mut client, &format!("opaque-token-{i}"), "").await;
        assert_eq!(reason(&response), expected, "{name}: {:?}", response.denial);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name}: bounded by the timeout"
        );
    }
    let (auth, body) = fake.last.lock().unwrap().clone();
    assert_eq!(
        auth,
        format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                "my+client:s3cr%3At"
            )
        )
    );
    assert!(
        body.contains("token=opaque-token-8") && !body.contains("client_secret"),
        "{body}"
    );

    // Concurrent requests for one token share one call; the result is then cached.
    fake.set(Mode::Answer(active(now() + 2, "api://x")));
    let before = fake.hits();
    let calls = (0..8).map(|_| {
        let mut client = client.clone();
        async move { call(&mut client, "shared-token", "").await }
    });
    for response in futures::future::join_all(calls).await {
        assert_eq!(reason(&response), None);
        let principal = response.principal.unwrap();
        assert_eq!(principal.subject, "svc-1");
        assert_eq!(principal.scopes, ["a", "b"]);
        assert_eq!(
            principal.credential_type,
            pb::CredentialType::OpaqueToken as i32
        );
    }
    assert_eq!(fake.hits() - before, 1, "one call for concurrent requests");
    assert_eq!(reason(&call(&mut client, "shared-token", "").await), None);
    assert_eq!(
        reason(&call(&mut client, "shared-token", "api://other").await),
        Some(Reason::AudienceMismatch),
        "the audience is re-checked on a cache hit"
    );
    assert_eq!(fake.hits() - before, 1, "served from the cache");
    // Never past exp: once the token's exp passes, the cached result is gone.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        reason(&call(&mut client, "shared-token", "").await),
        Some(Reason::Expired)
    );
    assert_eq!(
        fake.hits() - before,
        2,
        "the expired entry was not served from the cache"
    );
    running.shutdown().await.unwrap();

    // client_secret_post puts the credentials in the form body instead.
    let running = fake_server(&fake, "client_secret_post").await;
    let mut client = crate::support::client(&running).await;
    fake.set(Mode::Answer(active(now() + 3600, "api://x")));
    assert_eq!(reason(&call(&mut client, "post-token", "").await), None);
    let (auth, body) = fake.last.lock().unwrap().clone();
    assert_eq!(auth, "");
    assert!(
        body.contains("client_id=my+client") && body.contains("client_secret=s3cr%3At"),
        "{body}"
    );
    running.shutdown().await.unwrap();
}
