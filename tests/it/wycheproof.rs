//! Wycheproof JWS vectors (tests/testdata/wycheproof, a copy of the public file): every `invalid` vector whose key
//! type Portcullis supports must be rejected at the signature layer when the vector's key is
//! configured. Vectors rejected only because their payload is not a JWT claims set are
//! reported as such and not counted as passes; `valid` vectors must verify (proving the
//! harness is not vacuous).

use std::path::PathBuf;

use portcullis::jwt::{Algorithm, KeyLookup, KeySet, parse_compact, parse_jws};
use serde_json::{Value, json};

fn vectors() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata/wycheproof/json_web_signature_test.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("Wycheproof vectors at {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Whether the JWS verifies at the signature layer with `keys`.
fn signature_layer_accepts(jws: &str, keys: &KeySet) -> bool {
    let Ok(parts) = parse_jws(jws) else {
        return false;
    };
    match keys.find(parts.kid.as_deref(), parts.algorithm) {
        KeyLookup::Found(key) => key.verify(parts.signing_input.as_bytes(), parts.signature),
        _ => false,
    }
}

#[test]
fn invalid_vectors_are_rejected() {
    let data = vectors();
    let (mut rejected, mut unsupported, mut payload_only, mut valid_ok) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    let mut valid_rejected = Vec::new();
    for group in data["testGroups"].as_array().unwrap() {
        let jwk = group
            .get("public")
            .or_else(|| group.get("private"))
            .cloned();
        // Configure the key as an operator would: when the JWK names no alg, the issuer's
        // allow-list names the algorithm the group's tokens use.
        let allowed: Vec<Algorithm> = group["tests"][0]["jws"]
            .as_str()
            .and_then(|jws| parse_jws(jws).ok())
            .map(|parts| vec![parts.algorithm])
            .unwrap_or_default();
        let keys = jwk.and_then(|jwk| {
            let set = if jwk.get("keys").is_some() {
                jwk
            } else {
                json!({"keys": [jwk]})
            };
            // The vectors' HMAC keys are secret JWKs; admit symmetric keys for them.
            let public_only = strip_private(&set);
            KeySet::from_jwks(public_only.to_string().as_bytes(), &allowed, true).ok()
        });
        for test in group["tests"].as_array().unwrap() {
            let id = test["tcId"].as_u64().unwrap();
            let Some(jws) = test["jws"].as_str() else {
                // JSON serialization (not compact): never accepted by Portcullis.
                if test["result"] == "invalid" {
                    rejected += 1
                }
                continue;
            };
            let Some(keys) = &keys else {
                unsupported += 1;
                continue;
            };
            let accepted = signature_layer_accepts(jws, keys);
            match test["result"].as_str().unwrap() {
                "invalid" if !accepted => rejected += 1,
                "invalid" => {
                    if parse_compact(jws).is_err() {
                        payload_only += 1;
                        println!(
                            "tcId {id}: rejected only because its payload is not a JWT claims set ({})",
                            test["comment"]
                        );
                    } else {
                        failures.push(format!("tcId {id} ({}) verified", test["comment"]));
                    }
                }
                _ if accepted => valid_ok += 1,
                // Stricter than Wycheproof's lenient "valid": a character outside base64url
                // anywhere in the token is refused (RFC 7515 §2, §7.1).
                _ if jws.contains(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c))) => {
                    println!(
                        "tcId {id}: refused: characters outside base64url ({})",
                        test["comment"]
                    );
                }
                _ => valid_rejected.push(format!("tcId {id} ({})", test["comment"])),
            }
        }
    }
    println!(
        "wycheproof: {rejected} invalid vectors rejected, {payload_only} rejected only for their payload (not counted), {unsupported} with unsupported keys, {valid_ok} valid vectors verified, {} valid vectors rejected: {valid_rejected:?}",
        valid_rejected.len()
    );
    assert!(
        failures.is_empty(),
        "invalid vectors accepted:\n{}",
        failures.join("\n")
    );
    assert!(
        valid_rejected.is_empty(),
        "valid vectors rejected: {valid_rejected:?}"
    );
    assert!(
        rejected > 300,
        "expected most of the 355 invalid vectors to be exercised, got {rejected}"
    );
    assert!(valid_ok > 20, "valid vectors must verify, got {valid_ok}");
}

/// Private members are dropped from asymmetric keys (the vectors ship private JWKs).
fn strip_private(set: &Value) -> Value {
    let keys: Vec<Value> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| {
            let mut key = key.clone();
            if key["kty"] != "oct" {
                for member in ["d", "p", "q", "dp", "dq", "qi"] {
                    key.as_object_mut().unwrap().remove(member);
                }
            }
            key
        })
        .collect();
    json!({"keys": keys})
}
