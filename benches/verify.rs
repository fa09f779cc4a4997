//! Micro-benchmarks of the JWT verify path, per algorithm: the signature check alone, a full
//! uncached verification (parse, key lookup, signature, claims, principal), and a cache hit;
//! and of identity tokens: minting one for a new principal (EdDSA, ES256), and reusing the
//! one a cached principal keeps; and of a DPoP proof's checks (everything but the replay
//! memory), to set against its signature alone.

use std::{hint::black_box, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm::*;
use portcullis::{
    config::{IdentityTokenConfig, IssuerConfig},
    decision::{CredentialType, Principal},
    identity_token::IdentityTokens,
    jwt::{ClaimPolicy, KeyLookup, KeySet, parse_jws},
    keys::KeySource,
    verify::jwt::{IssuerVerifier, JwtVerifier},
};
use portcullis_test_support::{TestKey, claims, jwks, now};

const ISS: &str = "https://bench.test";
const AUD: &str = "api://bench";

fn verifier(key: &TestKey, max_ttl: Duration) -> JwtVerifier {
    let keys = KeySet::from_jwks(jwks(&[key]).to_string().as_bytes(), &[], true).unwrap();
    let config: IssuerConfig = serde_norway::from_str(&format!(
        "{{name: bench, issuer: '{ISS}', jwks_file: unused, audiences: ['{AUD}']}}"
    ))
    .unwrap();
    let issuer = IssuerVerifier {
        name: "bench".into(),
        iss: ISS.into(),
        algorithms: Vec::new(),
        policy: ClaimPolicy::from_config(&config),
        keys: KeySource::Static(Arc::new(keys)),
    };
    JwtVerifier::new(
        vec![issuer],
        10_000,
        64 * 1024 * 1024,
        max_ttl,
        std::sync::Arc::new(portcullis::telemetry::metrics::Metrics::new(true)),
    )
}

fn bench_verify(c: &mut Criterion) {
    for alg in [
        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512,
    ] {
        let key = TestKey::new(alg, "bench");
        let token = key.sign(&claims(ISS, AUD));
        let name = format!("{alg:?}");

        let keys = KeySet::from_jwks(jwks(&[&key]).to_string().as_bytes(), &[], true).unwrap();
        let parts = parse_jws(&token).unwrap();
        let KeyLookup::Found(verifying) = keys.find(parts.kid.as_deref(), parts.algorithm) else {
            panic!("key found")
        };
        c.bench_function(&format!("signature/{name}"), |b| {
            b.iter(|| {
                assert!(verifying.verify(
                    black_box(parts.signing_input.as_bytes()),
                    black_box(parts.signature)
                ))
            })
        });

        let uncached = verifier(&key, Duration::ZERO);
        c.bench_function(&format!("verify_uncached/{name}"), |b| {
            b.iter(|| futures::executor::block_on(uncached.verify(black_box(&token), "")).unwrap())
        });

        let cached = verifier(&key, Duration::from_secs(300));
        futures::executor::block_on(cached.verify(&token, "")).unwrap();
        c.bench_function(&format!("verify_cached/{name}"), |b| {
            b.iter(|| futures::executor::block_on(cached.verify(black_box(&token), "")).unwrap())
        });
    }
}

fn bench_dpop(c: &mut Criterion) {
    use portcullis::{
        dpop::{HttpTarget, proof},
        jwt::Algorithm as A,
    };
    let target = HttpTarget {
        method: "GET",
        scheme: "https",
        authority: "api.example.com",
        path: "/orders/7",
    };
    let rules = proof::Rules {
        algorithms: vec![A::ES256, A::EdDSA, A::PS256],
        max_age: 3600,
        leeway: 5,
        max_proof_bytes: 8192,
    };
    let token = portcullis_test_support::quickstart_token("orders:read");
    for alg in [ES256, EdDSA, PS256] {
        let key = TestKey::new(alg, "client");
        let bound = key.thumbprint();
        let issued = now();
        let proof = key.dpop_proof(
            "GET",
            "https://api.example.com/orders/7",
            &token,
            "j",
            issued,
        );
        c.bench_function(&format!("dpop_proof/{alg:?}"), |b| {
            b.iter(|| {
                proof::check(black_box(&proof), &token, &bound, &target, issued, &rules).unwrap()
            })
        });
    }
}

fn bench_identity_token(c: &mut Criterion) {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testdata/identity");
    let principal = || {
        let serde_json::Value::Object(claims) =
            serde_json::json!({"sub": "alice", "email": "alice@example.com"})
        else {
            unreachable!()
        };
        Principal::new(
            "alice".into(),
            "bench".into(),
            CredentialType::Jwt,
            claims,
            vec!["orders:read".into()],
            None,
            "k".into(),
        )
    };
    for (name, key) in [("EdDSA", "ed25519-a"), ("ES256", "p256-a")] {
        let config: IdentityTokenConfig = serde_norway::from_str(&format!(
            "{{issuer: 'https://portcullis.bench', audience: upstream, \
             signing_key: 'file:{keys}/{key}.pem', claims: {{email: email}}}}"
        ))
        .unwrap();
        let tokens = IdentityTokens::new(&config).unwrap();
        c.bench_function(&format!("identity_token/mint/{name}"), |b| {
            b.iter_batched(
                principal,
                |fresh| tokens.for_principal(&fresh, "rule", "host").unwrap(),
                criterion::BatchSize::SmallInput,
            )
        });
        let cached = principal();
        tokens.for_principal(&cached, "rule", "host").unwrap();
        c.bench_function(&format!("identity_token/kept/{name}"), |b| {
            b.iter(|| {
                tokens
                    .for_principal(black_box(&cached), "rule", "host")
                    .unwrap()
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500)).sample_size(30);
    targets = bench_verify, bench_identity_token, bench_dpop
}
criterion_main!(benches);
