//! DPoP (RFC 9449) end to end, with real parts only: the OpenID provider (npm
//! `oidc-provider`, its DPoP feature on) issues a DPoP-bound token (`cnf.jkt`) to a real
//! client library (npm `oauth4webapi`, tests/oidc/dpop-client.mjs), which calls an API
//! through a real Caddy whose `forward_auth` asks Portcullis. Two replicas share the memory
//! of used proofs through a real Redis, so a proof used at one is refused at the other; a
//! replica without Redis (the single-replica mode) shows what that memory prevents. Hostile
//! proofs for the real token, forged with the very key it is bound to (the client exports
//! its throwaway key for this), never reach the API.
//!
//! Needs node with tests/oidc/node_modules, redis-server and Caddy (scripts/provision/).
//! Under CI=true a missing one fails the test; elsewhere it is skipped with a message.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm::{ES256, HS256};
use portcullis::pb::{self, Reason, auth_client::AuthClient};
use portcullis_test_support::{TestKey, ath, b64, now};
use serde_json::{Value, json};

use crate::support::{
    oidc,
    process::{self, Replica, free_port},
    proxy::{Proxy, listening, proxy_binary},
    redis::Redis,
};

/// A replica trusting the provider and Caddy on 127.0.0.1, remembering proofs in the Redis
/// on `redis_port` when there is one.
fn replica(dir: &Path, issuer: &str, redis_port: Option<u16>) -> Replica {
    let replay = match redis_port {
        Some(port) => format!("  replay: {{redis: {{url: 'redis://127.0.0.1:{port}/'}}}}\n"),
        None => String::new(),
    };
    process::replica(
        dir,
        &format!(
            "issuers:\n  - name: idp\n    issuer: {issuer}\n    discovery: true\n    audiences: [api://orders]\n    algorithms: [RS256]\n    typ: [at+jwt]\n\
             credentials: {{trusted_proxies: [127.0.0.1/32]}}\n\
             authorization:\n  default: deny\n  rules:\n    - name: orders-read\n      match: {{http: {{methods: [GET], paths: ['/orders/**']}}}}\n      require: {{scopes_all: [orders:read]}}\n\
             dpop:\n  algorithms: [ES256, EdDSA]\n{replay}\
             telemetry: {{log_level: error}}\n"
        ),
        &[],
    )
}

/// Runs the client library: one request sent to `send`, and unsent proofs for `mint`
/// (`METHOD:URL`). Its JSON report.
async fn dpop_client(issuer: &str, send: &str, mint: &[String]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/dpop-client.mjs");
    // Awaited, not blocking: the upstream the client reaches runs on this test's runtime.
    let mut command = tokio::process::Command::new("node");
    command
        .arg(script)
        .args(["--issuer", issuer, "--send", send, "--export-key"]);
    for spec in mint {
        command.args(["--mint", spec]);
    }
    let output = command.output().await.expect("node runs");
    assert!(
        output.status.success(),
        "dpop-client.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON line")
}

/// Signs `header`.`claims` with the client's own exported P-256 key (ES256): what an
/// attacker holding the key could send, made into hostile variants.
fn sign_with(private_jwk: &Value, header: &Value, claims: &Value) -> String {
    use aws_lc_rs::{
        rand::SystemRandom,
        signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
    };
    let member = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(private_jwk[name].as_str().expect("a JWK member"))
            .expect("base64url")
    };
    let mut point = vec![4];
    point.extend(member("x"));
    point.extend(member("y"));
    let pair = EcdsaKeyPair::from_private_key_and_public_key(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &member("d"),
        &point,
    )
    .expect("the client's key");
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", b64(signature.as_ref()))
}

/// An upstream that counts the requests that reach it.
async fn counting_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { "order 7" }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, hits)
}

fn caddy(dir: &Path, binary: &Path, port: u16, auth: u16, upstream: std::net::SocketAddr) -> Proxy {
    let caddyfile = format!(
        "{{\n  admin off\n  auto_https off\n  storage file_system {storage}\n}}\n\
         http://127.0.0.1:{port} {{\n  forward_auth 127.0.0.1:{auth} {{\n    uri /forwarded\n  }}\n  reverse_proxy {upstream}\n}}\n",
        storage = dir.display()
    );
    let path = dir.join("Caddyfile");
    std::fs::write(&path, caddyfile).unwrap();
    Proxy(
        std::process::Command::new(binary)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir)
            .env("XDG_CONFIG_HOME", dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("caddy starts"),
    )
}

/// A GET of `url` with these `Authorization` and `DPoP` values: its status and challenge.
async fn get(url: &str, authorization: &str, proof: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .get(url)
        .header("authorization", authorization);
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    answer(request).await
}

/// The same request as a proxy in front of `replica` would forward it for `original`
/// (`http://host:port/path`).
async fn forwarded(
    replica: &Replica,
    original: &str,
    authorization: &str,
    proof: &str,
) -> (u16, String) {
    let (host, path) = original
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
        .expect("an http URL");
    let request = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/forwarded", replica.http))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", host)
        .header("x-forwarded-uri", format!("/{path}"))
        .header("authorization", authorization)
        .header("dpop", proof);
    answer(request).await
}

async fn answer(request: reqwest::RequestBuilder) -> (u16, String) {
    let response = request.send().await.expect("answered");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (response.status().as_u16(), challenge)
}

#[tokio::test]
async fn a_real_dpop_client_through_caddy_and_replays_across_replicas() {
    if !oidc::available() {
        return;
    }
    let Some(redis_binary) = Redis::binary() else {
        return;
    };
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/caddy");
    let Some(caddy_binary) =
        proxy_binary("PORTCULLIS_CADDY", &[tools], "scripts/provision/caddy.sh")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let provider = oidc::start(
        oidc::free_port(),
        &dir.path().join("provider-key.json"),
        false,
    );
    let redis = Redis::start(&redis_binary, free_port());
    let a = replica(dir.path(), &provider.issuer, Some(redis.port));
    let b = replica(dir.path(), &provider.issuer, Some(redis.port));
    let alone = replica(dir.path(), &provider.issuer, None);
    let (upstream, hits) = counting_upstream().await;
    let caddy_port = free_port();
    let _caddy = caddy(dir.path(), &caddy_binary, caddy_port, a.http, upstream);
    listening(caddy_port).await;
    let api = format!("http://127.0.0.1:{caddy_port}/orders/7");

    let report = dpop_client(
        &provider.issuer,
        &api,
        &[
            format!("GET:{api}"),
            format!("GET:{api}"),
            format!("POST:{api}"),
            format!("GET:{api}"),
        ],
    )
    .await;
    assert_eq!(report["token_type"], "dpop", "{report}");
    let token = report["access_token"].as_str().unwrap();
    let proofs: Vec<&str> = report["minted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["dpop"].as_str().unwrap())
        .collect();
    let dpop = format!("DPoP {token}");

    // The library's own request went through.
    assert_eq!(report["sent"][0]["status"], 200, "{report}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A fresh proof works once; its replay is refused, with a DPoP challenge.
    assert_eq!(get(&api, &dpop, Some(proofs[0])).await.0, 200);
    let (status, challenge) = get(&api, &dpop, Some(proofs[0])).await;
    assert_eq!(status, 401);
    assert!(
        challenge.starts_with("DPoP ")
            && challenge.contains("error=\"invalid_dpop_proof\"")
            && challenge.contains("algs=\"ES256 EdDSA\""),
        "{challenge}"
    );

    // A proof used at replica B is refused at replica A: they share Redis. A replica that
    // remembers alone would take it again.
    assert_eq!(forwarded(&b, &api, &dpop, proofs[1]).await.0, 200);
    assert_eq!(forwarded(&a, &api, &dpop, proofs[1]).await.0, 401);
    assert_eq!(forwarded(&alone, &api, &dpop, proofs[1]).await.0, 200);

    // A proof for another method, the token without its proof, and the token downgraded to
    // Bearer are refused.
    let (status, challenge) = get(&api, &dpop, Some(proofs[2])).await;
    assert_eq!(status, 401, "{challenge}");
    assert_eq!(get(&api, &dpop, None).await.0, 401);
    let (status, challenge) = get(&api, &format!("Bearer {token}"), None).await;
    assert_eq!(status, 401);
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "no refused request reached the API"
    );

    // Over gRPC, Authenticate takes the method and URL the proof names.
    let mut client = AuthClient::connect(format!("http://127.0.0.1:{}", b.grpc))
        .await
        .unwrap();
    let authenticate = |url: &str| pb::AuthenticateRequest {
        headers: [
            ("authorization".to_owned(), dpop.clone()),
            ("dpop".to_owned(), proofs[3].to_owned()),
        ]
        .into(),
        http_method: "GET".to_owned(),
        http_url: url.to_owned(),
        ..Default::default()
    };
    let wrong_url = format!("http://127.0.0.1:{caddy_port}/orders/8");
    let response = client
        .authenticate(authenticate(&wrong_url))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        crate::support::reason(&response),
        Some(Reason::CertificateMismatch)
    );
    let response = client
        .authenticate(authenticate(&api))
        .await
        .unwrap()
        .into_inner();
    assert!(response.authenticated, "{response:?}");
    let response = client
        .authenticate(authenticate(&api))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        crate::support::reason(&response),
        Some(Reason::CertificateMismatch)
    );

    // Hostile proofs for the real token, made with the very key it is bound to (or, for the
    // thumbprint, another one), through Caddy: none reaches the API. A well-made one does.
    let private_jwk = &report["private_jwk"];
    let public_jwk =
        json!({"kty": "EC", "crv": "P-256", "x": private_jwk["x"], "y": private_jwk["y"]});
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk});
    let claims =
        |jti: &str| json!({"jti": jti, "htm": "GET", "htu": api, "iat": now(), "ath": ath(token)});
    let edit = |jti: &str, change: &dyn Fn(&mut Value)| {
        let mut claims = claims(jti);
        change(&mut claims);
        claims
    };
    let before = hits.load(Ordering::SeqCst);
    let good = sign_with(private_jwk, &header, &claims("forged-good"));
    assert_eq!(
        get(&api, &dpop, Some(&good)).await.0,
        200,
        "a proof made with the key works"
    );
    let hmac = TestKey::new(HS256, "h");
    let other = TestKey::new(ES256, "other");
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"typ": "dpop+jwt", "alg": "none", "jwk": public_jwk}).to_string()),
        b64(claims("none").to_string())
    );
    let hostile = [
        (
            "wrong URL",
            sign_with(
                private_jwk,
                &header,
                &edit("u", &|c| c["htu"] = json!(format!("{api}/x"))),
            ),
        ),
        (
            "stale iat",
            sign_with(
                private_jwk,
                &header,
                &edit("s", &|c| c["iat"] = json!(now() - 600)),
            ),
        ),
        (
            "missing ath",
            sign_with(
                private_jwk,
                &header,
                &edit("a", &|c| {
                    c.as_object_mut().unwrap().remove("ath");
                }),
            ),
        ),
        (
            "private key in the header",
            sign_with(
                private_jwk,
                &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private_jwk}),
                &claims("p"),
            ),
        ),
        ("alg none", unsigned),
        (
            "HMAC",
            hmac.sign_raw(
                &json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": hmac.jwk}).to_string(),
                &claims("h").to_string(),
            ),
        ),
        (
            "thumbprint mismatch",
            other.dpop_proof("GET", &api, token, "t", now()),
        ),
        ("replayed", good.clone()),
    ];
    for (name, proof) in hostile {
        let (status, challenge) = get(&api, &dpop, Some(&proof)).await;
        assert_eq!(status, 401, "{name}");
        assert!(challenge.starts_with("DPoP "), "{name}: {challenge}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before + 1,
        "only the well-made proof got through"
    );
    drop(redis);
}
