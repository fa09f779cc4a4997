//! DPoP through the whole pipeline (quickstart issuer, tokens bound with `cnf.jkt`), and
//! the hostile proofs RFC 9449 §4.3 says to refuse.

use std::sync::Arc;

use jsonwebtoken::Algorithm as Alg;
use portcullis_test_support::{QuickstartSigner, TestKey, ath, b64, now};
use serde_json::json;

use super::replay::{FirstUse, Full, LocalReplay};
use crate::{
    config::Config,
    credentials::Carried,
    decision::{Decision, Reason, Scheme},
    headers::Headers,
    pipeline::{Pipeline, RequestAttrs, quickstart_with},
    policy::Resource,
    telemetry::metrics::{Metrics, Surface},
};

const URL: &str = "https://api.example.com/orders/7";

fn pipeline_with(edit: impl FnOnce(&mut Config)) -> Pipeline {
    quickstart_with(|config| {
        config.dpop = Some(Default::default());
        edit(config);
    })
}

fn pipeline() -> Pipeline {
    pipeline_with(|_| {})
}

/// A quickstart token bound to `key`.
fn bound_token(key: &TestKey) -> String {
    QuickstartSigner::new().token_with(
        "alice",
        "orders:read",
        "t1",
        json!({"cnf": {"jkt": key.thumbprint()}}),
    )
}

fn unbound_token() -> String {
    QuickstartSigner::new().token("alice", "orders:read", "t2")
}

fn es256() -> TestKey {
    TestKey::new(Alg::ES256, "client")
}

/// Runs `surface` for `GET https://api.example.com/orders/7` with these headers.
async fn run(pipeline: &Pipeline, surface: Surface, headers: &[(&str, &str)]) -> Decision {
    run_at(
        pipeline,
        surface,
        headers,
        "GET",
        "https",
        "api.example.com",
        "/orders/7",
    )
    .await
}

async fn run_at(
    pipeline: &Pipeline,
    surface: Surface,
    headers: &[(&str, &str)],
    method: &str,
    scheme: &str,
    host: &str,
    path: &str,
) -> Decision {
    let request = RequestAttrs {
        carried: Carried::headers_only(Headers::new(headers)),
        audience: "",
        required_scopes: &[],
        resource: Resource {
            http_method: method,
            host,
            path,
            ..Resource::default()
        },
        scheme,
    };
    pipeline.run(surface, request).await
}

fn reason(decision: &Decision) -> Option<Reason> {
    match decision {
        Decision::Allow { .. } => None,
        Decision::Deny { denial, .. } => Some(denial.reason),
    }
}

fn denial(decision: &Decision) -> &crate::decision::Denial {
    match decision {
        Decision::Deny { denial, .. } => denial,
        Decision::Allow { .. } => panic!("expected a denial"),
    }
}

/// `Authorization: DPoP <token>` and `DPoP: <proof>`.
fn dpop_headers<'a>(authorization: &'a str, proof: &'a str) -> [(&'a str, &'a str); 2] {
    [("authorization", authorization), ("dpop", proof)]
}

#[tokio::test]
async fn a_bound_token_with_a_fresh_proof_is_accepted_on_every_surface_and_cache_hits() {
    let pipeline = pipeline();
    let key = es256();
    let token = bound_token(&key);
    let authorization = format!("DPoP {token}");
    for (i, surface) in [
        Surface::authenticate,
        Surface::authorize,
        Surface::ext_authz,
        Surface::forward_auth,
        Surface::ext_authz,
    ]
    .into_iter()
    .enumerate()
    {
        // A new proof each time: the token's verification is cached after the first.
        let proof = key.dpop_proof("GET", URL, &token, &format!("p{i}"), now());
        let decision = run(&pipeline, surface, &dpop_headers(&authorization, &proof)).await;
        assert_eq!(reason(&decision), None, "{surface:?}");
    }
}

#[tokio::test]
async fn a_proof_is_accepted_once() {
    let pipeline = pipeline();
    let key = es256();
    let token = bound_token(&key);
    let authorization = format!("DPoP {token}");
    let proof = key.dpop_proof("GET", URL, &token, "once", now());
    let headers = dpop_headers(&authorization, &proof);
    assert_eq!(
        reason(&run(&pipeline, Surface::ext_authz, &headers).await),
        None
    );
    let replayed = run(&pipeline, Surface::ext_authz, &headers).await;
    assert_eq!(reason(&replayed), Some(Reason::CertificateMismatch));
    assert!(denial(&replayed).message.contains("already used"));
    let challenge = pipeline.challenge(denial(&replayed));
    assert!(
        challenge
            .starts_with("DPoP realm=\"portcullis\", error=\"invalid_dpop_proof\", algs=\"ES256"),
        "{challenge}"
    );
}

#[tokio::test]
async fn a_reload_forgets_no_proof() {
    let first = pipeline();
    let key = es256();
    let token = bound_token(&key);
    let authorization = format!("DPoP {token}");
    let proof = key.dpop_proof("GET", URL, &token, "across-reload", now());
    let headers = dpop_headers(&authorization, &proof);
    assert_eq!(
        reason(&run(&first, Surface::ext_authz, &headers).await),
        None
    );
    let mut config = (*first.config).clone();
    config.dpop = Some(crate::config::DpopConfig {
        max_age: std::time::Duration::from_secs(30),
        ..Default::default()
    });
    let client = crate::outbound::http_client().expect("an HTTP client");
    let second = crate::build::pipeline(
        config,
        &client,
        &Arc::new(Metrics::new(true)),
        Some(&first),
        crate::build::BuildMode::Check,
    )
    .expect("builds");
    assert_eq!(
        reason(&run(&second, Surface::ext_authz, &headers).await),
        Some(Reason::CertificateMismatch),
        "the new generation remembers the proof"
    );
}

#[tokio::test]
async fn the_scheme_and_the_binding_must_agree() {
    let pipeline = pipeline();
    let key = es256();
    let bound = bound_token(&key);
    let proof = key.dpop_proof("GET", URL, &bound, "a", now());
    // A bound token sent as Bearer (with or without its proof) is a stolen token's downgrade.
    let bearer = format!("Bearer {bound}");
    for headers in [
        vec![("authorization", bearer.as_str())],
        vec![("authorization", bearer.as_str()), ("dpop", proof.as_str())],
    ] {
        let decision = run(&pipeline, Surface::ext_authz, &headers).await;
        assert_eq!(reason(&decision), Some(Reason::CertificateMismatch));
        assert!(matches!(denial(&decision).scheme, Scheme::Dpop { .. }));
    }
    // An unbound token sent as DPoP: nothing binds it to the proof.
    let unbound = unbound_token();
    let authorization = format!("DPoP {unbound}");
    let proof = key.dpop_proof("GET", URL, &unbound, "b", now());
    let decision = run(
        &pipeline,
        Surface::ext_authz,
        &dpop_headers(&authorization, &proof),
    )
    .await;
    assert_eq!(reason(&decision), Some(Reason::CertificateMismatch));
    // A bound token without a proof.
    let authorization = format!("DPoP {bound}");
    let decision = run(
        &pipeline,
        Surface::ext_authz,
        &[("authorization", &authorization)],
    )
    .await;
    assert_eq!(reason(&decision), Some(Reason::CertificateMismatch));
    // An unbound token as Bearer is untouched by a stray DPoP header.
    let bearer = format!("Bearer {unbound}");
    let decision = run(
        &pipeline,
        Surface::ext_authz,
        &[("authorization", &bearer), ("dpop", "garbage")],
    )
    .await;
    assert_eq!(reason(&decision), None);
}

/// A proof with this header and these claims, signed by `signer`.
fn forged(signer: &TestKey, header: serde_json::Value, claims: serde_json::Value) -> String {
    signer.sign_raw(&header.to_string(), &claims.to_string())
}

#[tokio::test]
async fn hostile_proofs_are_refused_with_their_reasons() {
    let pipeline = pipeline();
    let key = es256();
    let other = es256();
    let token = bound_token(&key);
    let authorization = format!("DPoP {token}");
    let t = now();
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk()});
    let claims =
        |jti: &str| json!({"jti": jti, "htm": "GET", "htu": URL, "iat": t, "ath": ath(&token)});
    let with = |jti: &str, name: &str, value: serde_json::Value| {
        let mut c = claims(jti);
        c[name] = value;
        c
    };
    let without = |jti: &str, name: &str| {
        let mut c = claims(jti);
        c.as_object_mut().unwrap().remove(name);
        c
    };
    let mut private_jwk = key.jwk.clone();
    private_jwk["d"] = json!(b64([7u8; 32]));
    let hmac = TestKey::new(Alg::HS256, "h");
    let rsa = TestKey::new(Alg::RS256, "r");
    let cases: Vec<(&str, String, Reason)> = vec![
        (
            "wrong method",
            key.dpop_proof("POST", URL, &token, "m", t),
            Reason::CertificateMismatch,
        ),
        (
            "wrong path",
            key.dpop_proof("GET", "https://api.example.com/orders/8", &token, "u1", t),
            Reason::CertificateMismatch,
        ),
        (
            "wrong host",
            key.dpop_proof("GET", "https://evil.example.com/orders/7", &token, "u2", t),
            Reason::CertificateMismatch,
        ),
        (
            "wrong scheme",
            key.dpop_proof("GET", "http://api.example.com/orders/7", &token, "u3", t),
            Reason::CertificateMismatch,
        ),
        (
            "wrong port",
            key.dpop_proof(
                "GET",
                "https://api.example.com:8443/orders/7",
                &token,
                "u4",
                t,
            ),
            Reason::CertificateMismatch,
        ),
        (
            "relative htu",
            key.dpop_proof("GET", "/orders/7", &token, "u5", t),
            Reason::CertificateMismatch,
        ),
        (
            "stale iat",
            key.dpop_proof("GET", URL, &token, "i1", t - 600),
            Reason::Expired,
        ),
        (
            "future iat",
            key.dpop_proof("GET", URL, &token, "i2", t + 600),
            Reason::NotYetValid,
        ),
        (
            "iat as a string",
            forged(
                &key,
                header.clone(),
                with("i3", "iat", json!(t.to_string())),
            ),
            Reason::InvalidClaims,
        ),
        (
            "no ath",
            forged(&key, header.clone(), without("a1", "ath")),
            Reason::CertificateMismatch,
        ),
        (
            "ath of another token",
            key.dpop_proof("GET", URL, "another-token", "a2", t),
            Reason::CertificateMismatch,
        ),
        (
            "no jti",
            forged(&key, header.clone(), without("j1", "jti")),
            Reason::InvalidClaims,
        ),
        (
            "no htm",
            forged(&key, header.clone(), without("j2", "htm")),
            Reason::InvalidClaims,
        ),
        (
            "no htu",
            forged(&key, header.clone(), without("j3", "htu")),
            Reason::InvalidClaims,
        ),
        (
            "typ JWT",
            forged(
                &key,
                json!({"typ": "JWT", "alg": "ES256", "jwk": key.public_jwk()}),
                claims("y1"),
            ),
            Reason::InvalidClaims,
        ),
        (
            "no typ",
            forged(
                &key,
                json!({"alg": "ES256", "jwk": key.public_jwk()}),
                claims("y2"),
            ),
            Reason::InvalidClaims,
        ),
        (
            "no jwk",
            forged(
                &key,
                json!({"typ": "dpop+jwt", "alg": "ES256"}),
                claims("k1"),
            ),
            Reason::InvalidClaims,
        ),
        (
            "private key in the header",
            forged(
                &key,
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private_jwk}),
                claims("k2"),
            ),
            Reason::InvalidClaims,
        ),
        (
            "jwk of another type than alg",
            forged(
                &key,
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": rsa.public_jwk()}),
                claims("k3"),
            ),
            Reason::InvalidClaims,
        ),
        (
            "thumbprint mismatch",
            other.dpop_proof("GET", URL, &token, "k4", t),
            Reason::CertificateMismatch,
        ),
        (
            "signed by another key",
            forged(&other, header.clone(), claims("s1")),
            Reason::InvalidSignature,
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.public_jwk()}).to_string()),
                b64(claims("n1").to_string())
            ),
            Reason::DisallowedAlgorithm,
        ),
        (
            "HMAC",
            forged(
                &hmac,
                json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": hmac.jwk}),
                claims("h1"),
            ),
            Reason::DisallowedAlgorithm,
        ),
        (
            "crit",
            forged(
                &key,
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk(), "crit": ["x"], "x": 1}),
                claims("c1"),
            ),
            Reason::InvalidClaims,
        ),
        (
            "not a JWS",
            "not-a-proof".to_owned(),
            Reason::MalformedCredential,
        ),
        (
            "duplicate claim",
            forged(&key, header.clone(), json!("x")).replace(
                &b64("\"x\""),
                &b64(format!(
                    r#"{{"jti":"d1","jti":"d2","htm":"GET","htu":"{URL}","iat":{t},"ath":"{}"}}"#,
                    ath(&token)
                )),
            ),
            Reason::MalformedCredential,
        ),
    ];
    for (name, proof, expected) in cases {
        let decision = run(
            &pipeline,
            Surface::ext_authz,
            &dpop_headers(&authorization, &proof),
        )
        .await;
        assert_eq!(reason(&decision), Some(expected), "{name}");
        assert!(
            matches!(denial(&decision).scheme, Scheme::Dpop { .. }),
            "{name}: challenged with DPoP"
        );
    }
    // Two proofs, as two headers or joined.
    let proof = key.dpop_proof("GET", URL, &token, "two", t);
    let joined = format!("{proof},{proof}");
    for headers in [
        vec![
            ("authorization", authorization.as_str()),
            ("dpop", proof.as_str()),
            ("dpop", proof.as_str()),
        ],
        vec![
            ("authorization", authorization.as_str()),
            ("dpop", joined.as_str()),
        ],
    ] {
        let decision = run(&pipeline, Surface::ext_authz, &headers).await;
        assert_eq!(reason(&decision), Some(Reason::AmbiguousCredential));
    }
    // None of the refused proofs was remembered: a good one with a used jti still works.
    let good = key.dpop_proof("GET", URL, &token, "m", t);
    let decision = run(
        &pipeline,
        Surface::ext_authz,
        &dpop_headers(&authorization, &good),
    )
    .await;
    assert_eq!(reason(&decision), None);
}

#[tokio::test]
async fn htu_compares_normalized_urls_without_query_or_fragment() {
    let pipeline = pipeline();
    let key = es256();
    let token = bound_token(&key);
    let authorization = format!("DPoP {token}");
    for (i, (htu, scheme, host, path)) in [
        (
            "https://API.example.com/orders/7",
            "https",
            "api.example.com",
            "/orders/7",
        ),
        (
            "https://api.example.com:443/orders/7",
            "",
            "api.example.com",
            "/orders/7?page=2",
        ),
        (
            "https://api.example.com/orders/7?x=1#f",
            "https",
            "api.example.com:443",
            "/orders/7",
        ),
        (
            "http://127.0.0.1:8080/orders/7",
            "http",
            "127.0.0.1:8080",
            "/orders/7",
        ),
        (
            "https://api.example.com/orders/x/../7",
            "https",
            "api.example.com",
            "/orders/7",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let proof = key.dpop_proof("GET", htu, &token, &format!("n{i}"), now());
        let decision = run_at(
            &pipeline,
            Surface::ext_authz,
            &dpop_headers(&authorization, &proof),
            "GET",
            scheme,
            host,
            path,
        )
        .await;
        assert_eq!(reason(&decision), None, "{htu} for {scheme}://{host}{path}");
    }
    // User info in htu is refused.
    let proof = key.dpop_proof(
        "GET",
        "https://user@api.example.com/orders/7",
        &token,
        "userinfo",
        now(),
    );
    let decision = run(
        &pipeline,
        Surface::ext_authz,
        &dpop_headers(&authorization, &proof),
    )
    .await;
    assert_eq!(reason(&decision), Some(Reason::CertificateMismatch));
    // A host that smuggles a path cannot make another URL match.
    let proof = key.dpop_proof("GET", URL, &token, "smuggle", now());
    let decision = run_at(
        &pipeline,
        Surface::ext_authz,
        &dpop_headers(&authorization, &proof),
        "GET",
        "https",
        "api.example.com/orders/7?",
        "/admin",
    )
    .await;
    assert_ne!(reason(&decision), None);
}

#[tokio::test]
async fn other_algorithms_and_key_types_verify() {
    let pipeline = pipeline();
    for alg in [Alg::EdDSA, Alg::PS256, Alg::RS256, Alg::ES384] {
        let key = TestKey::new(alg, "client");
        let token = bound_token(&key);
        let authorization = format!("DPoP {token}");
        let proof = key.dpop_proof("GET", URL, &token, "x", now());
        let decision = run(
            &pipeline,
            Surface::ext_authz,
            &dpop_headers(&authorization, &proof),
        )
        .await;
        assert_eq!(reason(&decision), None, "{alg:?}");
    }
    // An algorithm left out of dpop.algorithms is refused.
    let pipeline = pipeline_with(|config| {
        config.dpop = Some(crate::config::DpopConfig {
            algorithms: vec!["ES256".to_owned()],
            ..Default::default()
        });
    });
    let key = TestKey::new(Alg::EdDSA, "client");
    let token = bound_token(&key);
    let authorization = format!("DPoP {token}");
    let proof = key.dpop_proof("GET", URL, &token, "x", now());
    let decision = run(
        &pipeline,
        Surface::ext_authz,
        &dpop_headers(&authorization, &proof),
    )
    .await;
    assert_eq!(reason(&decision), Some(Reason::DisallowedAlgorithm));
    assert!(
        pipeline
            .challenge(denial(&decision))
            .ends_with("algs=\"ES256\""),
        "the challenge names the allowed algorithms"
    );
}

#[tokio::test]
async fn issuers_and_rules_can_require_dpop() {
    let pipeline = pipeline_with(|config| config.issuers[0].require_dpop = true);
    let bearer = format!("Bearer {}", unbound_token());
    let decision = run(
        &pipeline,
        Surface::authenticate,
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(reason(&decision), Some(Reason::CertificateMismatch));
    let key = es256();
    let token = bound_token(&key);
    let authorization = format!("DPoP {token}");
    let proof = key.dpop_proof("GET", URL, &token, "r", now());
    let decision = run(
        &pipeline,
        Surface::authenticate,
        &dpop_headers(&authorization, &proof),
    )
    .await;
    assert_eq!(reason(&decision), None);

    let rules = quickstart_with(|config| {
        let rules = &mut config.authorization.rules;
        rules.retain(|rule| rule.name != "orders-read");
        let rule: crate::config::RuleConfig = serde_norway::from_str(
            "{name: orders-dpop, match: {http: {paths: ['/orders/*']}}, require: {dpop: true}}",
        )
        .expect("a rule");
        assert!(rule.require.dpop);
        rules.insert(0, rule);
    });
    let decision = run(&rules, Surface::ext_authz, &[("authorization", &bearer)]).await;
    assert_eq!(reason(&decision), Some(Reason::PolicyDenied));
    let proof = key.dpop_proof("GET", URL, &token, "r2", now());
    let decision = run(
        &rules,
        Surface::ext_authz,
        &dpop_headers(&authorization, &proof),
    )
    .await;
    assert_eq!(reason(&decision), None);
}

#[tokio::test]
async fn challenges_offer_dpop_when_it_is_configured() {
    let offered = pipeline();
    let decision = run(&offered, Surface::ext_authz, &[]).await;
    assert_eq!(
        offered.challenge(denial(&decision)),
        "Bearer realm=\"portcullis\", DPoP algs=\"ES256 ES384 EdDSA PS256 RS256\""
    );
    let plain = quickstart_with(|_| {});
    let decision = run(&plain, Surface::ext_authz, &[]).await;
    assert_eq!(
        plain.challenge(denial(&decision)),
        "Bearer realm=\"portcullis\""
    );
    // A token sent with the DPoP scheme that fails verification is challenged with DPoP.
    let decision = run(
        &plain,
        Surface::ext_authz,
        &[("authorization", "DPoP a.b.c")],
    )
    .await;
    assert!(
        plain
            .challenge(denial(&decision))
            .starts_with("DPoP realm=\"portcullis\", error=\"invalid_token\""),
        "{}",
        plain.challenge(denial(&decision))
    );
}

fn identity(i: u32) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&i.to_be_bytes());
    id
}

fn key(i: u32) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&i.to_be_bytes());
    key
}

#[test]
fn the_local_memory_refuses_rather_than_forgets_when_full() {
    let memory = LocalReplay::new(1_000, 60, 0, false);
    let now = 1_000_000;
    let mut refused = 0;
    for i in 0..2_000 {
        // Many keys, each well within its share.
        match memory.first_use(&identity(i), &key(i % 100), now + 60_000, now) {
            Ok(FirstUse::Yes) => {}
            Ok(FirstUse::Replayed) => panic!("{i} is new"),
            Err(Full::Memory) => refused += 1,
            Err(Full::Key) => panic!("{i}: no key is over its share"),
        }
    }
    assert!(refused >= 900, "{refused} refused");
    assert!(memory.remembered() <= 1_024);
    // What it accepted is still refused as a replay (accepted ones are the first ~1000).
    let accepted = (0..2_000)
        .filter(|i| {
            memory.first_use(&identity(*i), &key(i % 100), now + 60_000, now)
                == Ok(FirstUse::Replayed)
        })
        .count();
    assert_eq!(accepted, 2_000 - refused);
    // Once the window has passed, expired entries are swept and room is made.
    let later = now + 61_000;
    assert_eq!(
        memory.first_use(&identity(5_000), &key(1), later + 60_000, later),
        Ok(FirstUse::Yes)
    );
}

#[test]
fn one_key_cannot_fill_the_memory_for_the_others() {
    let memory = LocalReplay::new(16_000, 60, 0, false);
    let now = 1_000_000;
    // One key's share is a sixteenth: 1,000 proofs per window.
    let accepted = (0..5_000)
        .filter(|i| {
            memory
                .first_use(&identity(*i), &key(7), now + 60_000, now)
                .is_ok()
        })
        .count();
    assert_eq!(accepted, 1_000);
    assert_eq!(
        memory.first_use(&identity(9_999), &key(7), now + 60_000, now),
        Err(Full::Key)
    );
    // Other keys are untouched, in every shard (a jti cannot aim at one).
    for i in 0..2_000 {
        assert_eq!(
            memory.first_use(&identity(10_000 + i), &key(8 + i), now + 60_000, now),
            Ok(FirstUse::Yes)
        );
    }
    // The key gets a new share in the next window.
    let later = now + 61_000;
    assert_eq!(
        memory.first_use(&identity(20_000), &key(7), later + 60_000, later),
        Ok(FirstUse::Yes)
    );
}

#[tokio::test]
async fn proofs_older_than_the_memory_are_refused_after_a_restart_or_a_longer_window() {
    let key = es256();
    let token = bound_token(&key);
    let authorization = format!("DPoP {token}");
    // A proof captured just before a restart: the new process never saw it.
    let captured = key.dpop_proof("GET", URL, &token, "before-restart", now() - 2);
    let restarted = pipeline();
    let decision = run(
        &restarted,
        Surface::ext_authz,
        &dpop_headers(&authorization, &captured),
    )
    .await;
    assert_eq!(reason(&decision), Some(Reason::Expired));
    assert!(denial(&decision).message.contains("memory"));
    // With Redis remembering across restarts, it is not refused for that (this pipeline is
    // built without connecting: its own memory decides).
    let with_redis = pipeline_with(|config| {
        config.dpop = Some(crate::config::DpopConfig {
            replay: crate::config::DpopReplayConfig {
                redis: Some(
                    serde_norway::from_str(
                        "{url: 'redis://127.0.0.1:1/', timeout: 5ms, when_unavailable: local}",
                    )
                    .expect("redis settings"),
                ),
                ..Default::default()
            },
            ..Default::default()
        });
    });
    let decision = run(
        &with_redis,
        Surface::ext_authz,
        &dpop_headers(&authorization, &captured),
    )
    .await;
    assert_eq!(reason(&decision), None);

    // A reload that makes max_age longer refuses proofs made before it: their entries were
    // kept for the shorter window.
    let first = pipeline();
    let made_before = key.dpop_proof("GET", URL, &token, "before-reload", now() - 1);
    let mut config = (*first.config).clone();
    config.dpop = Some(crate::config::DpopConfig {
        max_age: std::time::Duration::from_secs(600),
        ..Default::default()
    });
    let client = crate::outbound::http_client().expect("an HTTP client");
    let longer = crate::build::pipeline(
        config,
        &client,
        &Arc::new(Metrics::new(true)),
        Some(&first),
        crate::build::BuildMode::Serve,
    )
    .expect("builds");
    let decision = run(
        &longer,
        Surface::ext_authz,
        &dpop_headers(&authorization, &made_before),
    )
    .await;
    assert_eq!(reason(&decision), Some(Reason::Expired));
    let made_after = key.dpop_proof("GET", URL, &token, "after-reload", now() + 1);
    let decision = run(
        &longer,
        Surface::ext_authz,
        &dpop_headers(&authorization, &made_after),
    )
    .await;
    assert_eq!(reason(&decision), None);
}
