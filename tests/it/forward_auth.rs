//! The HTTP forward-auth listener (`server.http_listen`) as proxies call it: each convention
//! (`/nginx`, `/ingress-nginx`, `/forwarded`, `/envoy/...`) decides the request it describes on the same rules
//! as Check; allows carry the identity headers, denials the reason's status, challenge and
//! JSON body; headers that name the request count only from trusted proxies, exactly once;
//! encoded paths, spoofed identity headers and query credentials are refused.

use jsonwebtoken::Algorithm::ES256;
use portcullis::server::Running;
use serde_json::{Value, json};

use crate::support::{
    process::free_port,
    proxy::{Proxy, listening, proxy_binary},
    *,
};

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

    let ingress = [
        ("x-original-method", "GET"),
        ("x-original-url", "https://api.example.com/orders/1"),
        ("x-original-uri", "/public"),
        ("authorization", bearer),
    ];
    let (status, user, _, _) = ask(&running, "/ingress-nginx", &ingress).await;
    assert_eq!(
        (status, user.as_deref()),
        (200, Some("alice")),
        "ingress-nginx"
    );

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
    let (status, _, _, body) = ask(&running, "/envoy/", &envoy).await;
    assert_eq!(
        (status, &body["reason"]),
        (403, &json!("POLICY_DENIED")),
        "the root path is decided, not a 404"
    );
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
    let mut forged = with_token(forwarded("GET", "/orders/1"), bearer);
    forged.push(("x-user-id", "mallory"));
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
        ("forged identity header", forged, 400, "MALFORMED_REQUEST"),
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
    assert_eq!(status, 404, "only the conventions' paths are served");
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

/// An upstream that answers every request with the headers it received, as JSON.
async fn echo_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use axum::{Router, http::HeaderMap, routing::any};
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let app = Router::new().fallback(any(move |headers: HeaderMap| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let seen: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(name, value)| (name.to_string(), json!(value.to_str().unwrap_or_default())))
                .collect();
            Value::Object(seen).to_string()
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, hits)
}

/// Through a real proxy in front of the echo upstream: a verified request reaches it with
/// the identity header Portcullis set; a request without a credential or scope, or carrying
/// its own copy of the identity header, does not reach it at all.
async fn through_the_proxy(proxy_port: u16, key: &TestKey, hits: &std::sync::atomic::AtomicUsize) {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{proxy_port}/orders/7");
    let bearer = format!("Bearer {}", key.sign(&claims(ISS, AUD)));
    let allowed = client
        .get(&url)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status().as_u16(), 200);
    let seen: Value = allowed.json().await.unwrap();
    assert_eq!(
        seen["x-user-id"], "alice",
        "the upstream got the verified identity: {seen}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    let forged = client
        .get(&url)
        .header("authorization", &bearer)
        .header("x-user-id", "mallory")
        .send()
        .await
        .unwrap();
    assert!(
        !forged.status().is_success(),
        "a request with its own identity header is refused (nginx answers 500 for the 400)"
    );
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let delete = client
        .delete(&url)
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status().as_u16(), 403);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "denied requests never reach the upstream"
    );
}

/// Where a proxy test runs: its directory, Portcullis's forward-auth address, the echo
/// upstream's address, and the port the proxy must listen on.
struct ProxySetup<'a> {
    dir: &'a std::path::Path,
    auth: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    port: u16,
}

/// Serves Portcullis and the echo upstream, starts the proxy `command` builds for them, and
/// sends the requests of [`through_the_proxy`] through it.
async fn behind_a_real_proxy(command: impl FnOnce(&ProxySetup<'_>) -> std::process::Command) {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k1");
    let running = serve(dir.path(), &key, "127.0.0.1/32").await;
    let (upstream, hits) = echo_upstream().await;
    let setup = ProxySetup {
        dir: dir.path(),
        auth: running.http_addr.unwrap(),
        upstream,
        port: free_port(),
    };
    let _proxy = Proxy(
        command(&setup)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the proxy starts"),
    );
    listening(setup.port).await;
    through_the_proxy(setup.port, &key, &hits).await;
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn nginx_auth_request_lets_only_verified_requests_through() {
    let Some(nginx) = proxy_binary(
        "PORTCULLIS_NGINX",
        &["/usr/sbin/nginx".into(), "/usr/bin/nginx".into()],
        "scripts/provision/nginx.sh",
    ) else {
        return;
    };
    behind_a_real_proxy(|setup| {
        let ProxySetup {
            dir,
            auth,
            upstream,
            port,
        } = setup;
        let prefix = dir.display();
        let config = format!(
            r#"
daemon off;
master_process off;
error_log {prefix}/error.log info;
pid {prefix}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /_portcullis {{
      internal;
      proxy_pass http://{auth}/nginx;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
    location / {{
      auth_request /_portcullis;
      auth_request_set $portcullis_user $upstream_http_x_user_id;
      proxy_set_header X-User-Id $portcullis_user;
      proxy_pass http://{upstream};
    }}
  }}
}}
"#
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let mut command = std::process::Command::new(&nginx);
        command.arg("-p").arg(dir).arg("-c").arg(&conf);
        command
    })
    .await;
}

#[tokio::test]
async fn caddy_forward_auth_lets_only_verified_requests_through() {
    let tools = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/caddy");
    let Some(caddy) = proxy_binary("PORTCULLIS_CADDY", &[tools], "scripts/provision/caddy.sh")
    else {
        return;
    };
    behind_a_real_proxy(|setup| {
        let ProxySetup {
            dir,
            auth,
            upstream,
            port,
        } = setup;
        let caddyfile = format!(
            r#"
{{
  admin off
  auto_https off
  storage file_system {storage}
}}
http://127.0.0.1:{port} {{
  forward_auth {auth} {{
    uri /forwarded
    copy_headers X-User-Id
  }}
  reverse_proxy {upstream}
}}
"#,
            storage = dir.display()
        );
        let path = dir.join("Caddyfile");
        std::fs::write(&path, caddyfile).unwrap();
        let mut command = std::process::Command::new(&caddy);
        command
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir)
            .env("XDG_CONFIG_HOME", dir);
        command
    })
    .await;
}
