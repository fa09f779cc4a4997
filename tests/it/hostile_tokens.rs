//! Hostile tokens (RFC 8725, RFC 7515/7519): each case is one sentence and the reason code it
//! must get. Keys are configured statically (a JWKS file and a PEM file), so every case runs
//! the full gRPC path without network.

use crate::support::*;
use portcullis::pb::Reason;
use serde_json::{Value, json};

const ISS: &str = "https://issuer.test";
const AUD: &str = "api://orders";

struct Fixture {
    rsa: TestKey,
    ec: TestKey,
    attacker_ec: TestKey,
    attacker_rsa_same_kid: TestKey,
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "JWT"})
}

/// ECDSA P-256 fixed-width signature (r||s) re-encoded as ASN.1 DER.
fn der_signature(fixed: &[u8]) -> Vec<u8> {
    fn int(bytes: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    }
    let (r, s) = fixed.split_at(fixed.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

fn replace_signature(token: &str, signature: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", b64(signature))
}

fn hmac_with_secret(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    format!("{input}.{sig}")
}

fn cases(f: &Fixture, attacker_url: &str) -> Vec<(&'static str, String, Option<Reason>)> {
    let now = now();
    let good = claims(ISS, AUD);
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let rs = |claims: &Value| f.rsa.sign(claims);
    let rs_header = |h: Value, claims: &Value| f.rsa.sign_raw(&h.to_string(), &claims.to_string());
    let ec_token = f.ec.sign(&good);
    let ec_fixed_sig = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ec_token.rsplit_once('.').unwrap().1,
    )
    .unwrap();
    let unsigned = |h: Value, c: &Value| format!("{}.{}.", b64(h.to_string()), b64(c.to_string()));
    let mut embedded_jwk = header("ES256", &f.ec.kid);
    embedded_jwk["jwk"] = f.attacker_ec.jwk.clone();
    let mut embedded_jwk_new_kid = header("ES256", &f.attacker_ec.kid);
    embedded_jwk_new_kid["jwk"] = f.attacker_ec.jwk.clone();
    let mut jku = header("ES256", "attacker-kid");
    jku["jku"] = json!(attacker_url);
    let mut x5u = header("ES256", "attacker-kid-2");
    x5u["x5u"] = json!(attacker_url);
    let mut x5c = header("ES256", &f.ec.kid);
    x5c["x5c"] = json!([base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"not a certificate"
    )]);
    let valid_b64 = |s: &str| b64(s);

    vec![
        ("a valid RS256 token verifies (control)", rs(&good), None),
        (
            "a valid ES256 token verifies (control)",
            ec_token.clone(),
            None,
        ),
        (
            "alg none with an empty signature",
            unsigned(json!({"alg": "none"}), &good),
            Some(Reason::DisallowedAlgorithm),
        ),
        (
            "alg None",
            unsigned(json!({"alg": "None"}), &good),
            Some(Reason::DisallowedAlgorithm),
        ),
        (
            "alg NONE",
            unsigned(json!({"alg": "NONE"}), &good),
            Some(Reason::DisallowedAlgorithm),
        ),
        (
            "alg nOnE with the kid of a real key",
            unsigned(json!({"alg": "nOnE", "kid": f.rsa.kid}), &good),
            Some(Reason::DisallowedAlgorithm),
        ),
        (
            "HS256 signed with the issuer's RSA public key in PEM form",
            hmac_with_secret(
                f.rsa.public_pem.as_bytes(),
                &header("HS256", &f.rsa.kid),
                &good,
            ),
            Some(Reason::DisallowedAlgorithm),
        ),
        (
            "HS256 signed with the issuer's RSA public key in JWK form",
            hmac_with_secret(
                f.rsa.jwk.to_string().as_bytes(),
                &header("HS256", &f.rsa.kid),
                &good,
            ),
            Some(Reason::DisallowedAlgorithm),
        ),
        (
            "HS256 signed with the issuer's EC public key in PEM form, no kid",
            hmac_with_secret(f.ec.public_pem.as_bytes(), &json!({"alg": "HS256"}), &good),
            Some(Reason::DisallowedAlgorithm),
        ),
        (
            "an embedded jwk with a trusted kid is ignored",
            f.attacker_ec
                .sign_raw(&embedded_jwk.to_string(), &good.to_string()),
            Some(Reason::InvalidSignature),
        ),
        (
            "an embedded jwk with its own kid is ignored",
            f.attacker_ec
                .sign_raw(&embedded_jwk_new_kid.to_string(), &good.to_string()),
            Some(Reason::UnknownKey),
        ),
        (
            "jku pointing at an attacker's key set is never fetched",
            f.attacker_ec.sign_raw(&jku.to_string(), &good.to_string()),
            Some(Reason::UnknownKey),
        ),
        (
            "x5u pointing at an attacker's URL is never fetched",
            f.attacker_ec.sign_raw(&x5u.to_string(), &good.to_string()),
            Some(Reason::UnknownKey),
        ),
        (
            "an x5c chain in the header is ignored",
            f.attacker_ec.sign_raw(&x5c.to_string(), &good.to_string()),
            Some(Reason::InvalidSignature),
        ),
        (
            "kid path traversal",
            f.ec.sign_raw(
                &header("ES256", "../../../../../../dev/null").to_string(),
                &good.to_string(),
            ),
            Some(Reason::UnknownKey),
        ),
        (
            "kid with SQL",
            f.ec.sign_raw(
                &header("ES256", "x' OR '1'='1").to_string(),
                &good.to_string(),
            ),
            Some(Reason::UnknownKey),
        ),
        (
            "a 100 KB kid",
            f.ec.sign_raw(
                &header("ES256", &"k".repeat(100 * 1024)).to_string(),
                &good.to_string(),
            ),
            Some(Reason::MalformedCredential),
        ),
        (
            "ES256 with r = s = 0",
            replace_signature(&ec_token, &[0u8; 64]),
            Some(Reason::InvalidSignature),
        ),
        (
            "ES256 with a DER-encoded signature",
            replace_signature(&ec_token, &der_signature(&ec_fixed_sig)),
            Some(Reason::InvalidSignature),
        ),
        (
            "two segments",
            ec_token.rsplit_once('.').unwrap().0.to_owned(),
            Some(Reason::MalformedCredential),
        ),
        (
            "four segments",
            format!("{ec_token}.x"),
            Some(Reason::MalformedCredential),
        ),
        (
            "five segments (JWE compact)",
            format!("{}.a.b.c.d", b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)),
            Some(Reason::MalformedCredential),
        ),
        (
            "a JWE header in three segments",
            rs_header(
                json!({"alg": "RS256", "enc": "A256GCM", "kid": f.rsa.kid}),
                &good,
            ),
            Some(Reason::MalformedCredential),
        ),
        (
            "crit naming a claim",
            rs_header(
                json!({"alg": "RS256", "kid": f.rsa.kid, "crit": ["exp"], "exp": 1}),
                &good,
            ),
            Some(Reason::InvalidClaims),
        ),
        (
            "b64 false (unencoded payload)",
            rs_header(
                json!({"alg": "RS256", "kid": f.rsa.kid, "b64": false}),
                &good,
            ),
            Some(Reason::InvalidClaims),
        ),
        (
            "duplicate alg in the header",
            f.rsa.sign_raw(
                &format!(r#"{{"alg":"RS256","kid":"{}","alg":"none"}}"#, f.rsa.kid),
                &good.to_string(),
            ),
            Some(Reason::MalformedCredential),
        ),
        (
            "duplicate iss in the claims",
            f.rsa.sign_raw(
                &header("RS256", &f.rsa.kid).to_string(),
                &format!(
                    r#"{{"iss":"https://evil.test","aud":"{AUD}","exp":{},"iss":"{ISS}"}}"#,
                    now + 600
                ),
            ),
            Some(Reason::MalformedCredential),
        ),
        (
            "duplicate key spelled with a unicode escape",
            f.rsa.sign_raw(
                &header("RS256", &f.rsa.kid).to_string(),
                &format!(
                    r#"{{"iss":"{ISS}","aud":"{AUD}","exp":{},"\u0069ss":"{ISS}"}}"#,
                    now + 600
                ),
            ),
            Some(Reason::MalformedCredential),
        ),
        (
            "exp as a string",
            rs(&with(json!({"exp": (now + 600).to_string()}))),
            Some(Reason::InvalidClaims),
        ),
        (
            "nbf as a string",
            rs(&with(json!({"nbf": (now - 10).to_string()}))),
            Some(Reason::InvalidClaims),
        ),
        (
            "exp absurdly large float",
            rs(&with(json!({"exp": 1e300}))),
            Some(Reason::InvalidClaims),
        ),
        (
            "aud array without our audience",
            rs(&with(json!({"aud": ["api://billing", "api://other"]}))),
            Some(Reason::AudienceMismatch),
        ),
        (
            "aud empty array",
            rs(&with(json!({"aud": []}))),
            Some(Reason::AudienceMismatch),
        ),
        (
            "aud array with a non-string",
            rs(&with(json!({"aud": [AUD, 7]}))),
            Some(Reason::InvalidClaims),
        ),
        (
            "aud as a number",
            rs(&with(json!({"aud": 7}))),
            Some(Reason::InvalidClaims),
        ),
        (
            "aud as a prefix of ours",
            rs(&with(json!({"aud": "api://order"}))),
            Some(Reason::AudienceMismatch),
        ),
        (
            "aud array containing ours verifies",
            rs(&with(json!({"aud": ["api://x", AUD]}))),
            None,
        ),
        (
            "expired",
            rs(&with(json!({"exp": now - 3600}))),
            Some(Reason::Expired),
        ),
        (
            "not yet valid (nbf)",
            rs(&with(json!({"nbf": now + 3600}))),
            Some(Reason::NotYetValid),
        ),
        (
            "issued in the future (iat)",
            rs(&with(json!({"iat": now + 3600}))),
            Some(Reason::NotYetValid),
        ),
        (
            "missing exp",
            rs(&with(json!({"exp": null}))),
            Some(Reason::InvalidClaims),
        ),
        (
            "an oversized token",
            rs(&with(json!({"pad": "x".repeat(20 * 1024)}))),
            Some(Reason::MalformedCredential),
        ),
        (
            "invalid base64 in the header",
            format!("{}*.{}", &rs(&good)[..10], &rs(&good)[11..]),
            Some(Reason::MalformedCredential),
        ),
        (
            "padding in the payload",
            {
                let t = rs(&good);
                let (h, rest) = t.split_once('.').unwrap();
                let (p, s) = rest.split_once('.').unwrap();
                format!("{h}.{p}==.{s}")
            },
            Some(Reason::MalformedCredential),
        ),
        (
            "invalid UTF-8 in the claims",
            format!(
                "{}.{}.{}",
                valid_b64(&header("RS256", &f.rsa.kid).to_string()),
                b64(b"{\"iss\":\"\xff\xfe\"}"),
                b64("sig")
            ),
            Some(Reason::MalformedCredential),
        ),
        (
            "claims that are not JSON",
            format!(
                "{}.{}.{}",
                valid_b64(&header("RS256", &f.rsa.kid).to_string()),
                b64("foo"),
                b64("sig")
            ),
            Some(Reason::MalformedCredential),
        ),
        (
            "claims nested 100 deep",
            rs(&with(
                json!({"deep": serde_json::from_str::<Value>(&format!("{}1{}", "[".repeat(100), "]".repeat(100))).unwrap()}),
            )),
            Some(Reason::MalformedCredential),
        ),
        (
            "an untrusted issuer",
            rs(&with(json!({"iss": "https://evil.test"}))),
            Some(Reason::UntrustedIssuer),
        ),
        (
            "an issuer that differs by a trailing slash",
            rs(&with(json!({"iss": format!("{ISS}/")}))),
            Some(Reason::UntrustedIssuer),
        ),
        (
            "no iss",
            rs(&with(json!({"iss": null}))),
            Some(Reason::InvalidClaims),
        ),
        (
            "iss as an array",
            rs(&with(json!({"iss": [ISS]}))),
            Some(Reason::InvalidClaims),
        ),
        (
            "signed by another key under a trusted kid",
            f.attacker_rsa_same_kid.sign(&good),
            Some(Reason::InvalidSignature),
        ),
        (
            "PS256 with an RS256 key (algorithm substitution)",
            f.rsa
                .sign_raw(&header("RS256", &f.rsa.kid).to_string(), &good.to_string())
                .replace(
                    &b64(header("RS256", &f.rsa.kid).to_string()),
                    &b64(header("PS256", &f.rsa.kid).to_string()),
                ),
            Some(Reason::DisallowedAlgorithm),
        ),
        (
            "ES256 header naming the RSA key's kid",
            f.ec.sign_raw(&header("ES256", &f.rsa.kid).to_string(), &good.to_string()),
            Some(Reason::DisallowedAlgorithm),
        ),
        (
            "an empty signature",
            format!("{}.", rs(&good).rsplit_once('.').unwrap().0),
            Some(Reason::InvalidSignature),
        ),
        (
            "a tampered payload",
            {
                let t = rs(&good);
                let (h, rest) = t.split_once('.').unwrap();
                let s = rest.split_once('.').unwrap().1;
                format!("{h}.{}.{s}", b64(with(json!({"sub": "admin"})).to_string()))
            },
            Some(Reason::InvalidSignature),
        ),
        (
            "a token with a space inside",
            format!("{} x", rs(&good)),
            Some(Reason::MalformedCredential),
        ),
        (
            "typ header not a string",
            rs_header(json!({"alg": "RS256", "kid": f.rsa.kid, "typ": 1}), &good),
            Some(Reason::MalformedCredential),
        ),
        (
            "kid not a string",
            rs_header(json!({"alg": "RS256", "kid": 7}), &good),
            Some(Reason::MalformedCredential),
        ),
        (
            "header that is a JSON array",
            format!("{}.{}.{}", b64("[1]"), b64(good.to_string()), b64("s")),
            Some(Reason::MalformedCredential),
        ),
    ]
}

#[tokio::test]
async fn hostile_tokens_get_their_reason_codes() {
    let f = Fixture {
        rsa: TestKey::new(jsonwebtoken::Algorithm::RS256, "rsa-1"),
        ec: TestKey::new(jsonwebtoken::Algorithm::ES256, "ec-1"),
        attacker_ec: TestKey::new(jsonwebtoken::Algorithm::ES256, "attacker-ec"),
        attacker_rsa_same_kid: TestKey::new(jsonwebtoken::Algorithm::RS256, "rsa-1"),
    };
    let attacker = FakeJwks::start(JwksMode::Serve {
        body: jwks(&[&f.attacker_ec]).to_string(),
        cache_control: None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&f.rsa, &f.ec]).to_string()).unwrap();
    // Messages up to 1 MiB, so that oversized tokens reach the credential size check.
    let yaml = format!(
        r#"
server: {{limits: {{max_request_bytes: 1048576}}}}
issuers:
  - name: test
    issuer: {ISS}
    jwks_file: {}
    audiences: [{AUD}]
    algorithms: [RS256, ES256]
    leeway: 30s
"#,
        jwks_path.display()
    );
    let running = start(&yaml).await;
    let mut client = client(&running).await;
    let cases = cases(&f, &attacker.url);
    assert!(cases.len() >= 30, "at least 30 hostile cases");
    let mut failures = Vec::new();
    for (name, token, expected) in &cases {
        let response = authenticate(&mut client, token).await;
        let got = reason(&response);
        if got != *expected {
            failures.push(format!(
                "{name}: expected {expected:?}, got {got:?} ({:?})",
                response.denial.as_ref().map(|d| &d.message)
            ));
        }
        if let Some(denial) = &response.denial {
            let parts: Vec<&str> = token.split('.').filter(|p| p.len() > 16).collect();
            for part in parts {
                assert!(
                    !denial.message.contains(part),
                    "{name}: denial echoes the token"
                );
                assert!(
                    !denial.www_authenticate.contains(part),
                    "{name}: challenge echoes the token"
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(
        attacker.hits(),
        0,
        "a URL named in a token header was fetched"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn pem_configured_keys_refuse_the_hmac_confusion_attack() {
    let rsa = TestKey::new(jsonwebtoken::Algorithm::RS256, "pem-rsa");
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("rsa.pub.pem");
    std::fs::write(&pem_path, &rsa.public_pem).unwrap();
    let yaml = format!(
        "issuers:\n  - name: pem\n    issuer: {ISS}\n    public_key_files: [{}]\n    audiences: [{AUD}]\n",
        pem_path.display()
    );
    let running = start(&yaml).await;
    let mut client = client(&running).await;
    let good = claims(ISS, AUD);
    let valid = rsa.sign_raw(&json!({"alg": "RS256"}).to_string(), &good.to_string());
    assert_eq!(reason(&authenticate(&mut client, &valid).await), None);
    for secret in [
        rsa.public_pem.as_bytes().to_vec(),
        rsa.public_pem.trim_end().as_bytes().to_vec(),
    ] {
        let forged = hmac_with_secret(&secret, &json!({"alg": "HS256"}), &good);
        assert_eq!(
            reason(&authenticate(&mut client, &forged).await),
            Some(Reason::DisallowedAlgorithm)
        );
    }
    running.shutdown().await.unwrap();
}
