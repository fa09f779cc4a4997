//! Shared test support: throwaway signing keys generated per run, token minting (including
//! hand-made hostile headers), an in-process server on 127.0.0.1:0, and a fault-injecting
//! JWKS server. Nothing here is a stand-in for a real component that can run: the OpenID
//! provider and the server binary are exercised in their own tests.
#![allow(dead_code)] // each test crate uses part of this module

pub mod oidc;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    encoding::AsDer,
    rsa::KeySize,
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair,
    },
};
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::{
    config,
    pb::{self, auth_client::AuthClient},
    server::{self, Running},
};
use serde_json::{Value, json};
use tonic::transport::Channel;

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A throwaway key pair made for this test run.
pub struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    /// The public JWK (or the secret JWK for HMAC), with kid and alg.
    pub jwk: Value,
    /// SPKI PEM of the public key (empty for HMAC).
    pub public_pem: String,
    /// Raw HMAC secret (empty for asymmetric keys).
    pub secret: Vec<u8>,
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// SPKI DER for an EC point or Ed25519 key, built from the fixed prefixes of RFC 5480/8410.
fn spki(prefix_hex: &str, key: &[u8]) -> Vec<u8> {
    let mut der: Vec<u8> = (0..prefix_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&prefix_hex[i..i + 2], 16).unwrap())
        .collect();
    der.extend_from_slice(key);
    der
}

impl TestKey {
    pub fn new(alg: Algorithm, kid: &str) -> Self {
        let kid = kid.to_owned();
        let alg_name = format!("{alg:?}");
        match alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                let (signing, crv, size, prefix) = if alg == Algorithm::ES256 {
                    (
                        &ECDSA_P256_SHA256_FIXED_SIGNING,
                        "P-256",
                        32,
                        "3059301306072a8648ce3d020106082a8648ce3d030107034200",
                    )
                } else {
                    (
                        &ECDSA_P384_SHA384_FIXED_SIGNING,
                        "P-384",
                        48,
                        "3076301006072a8648ce3d020106052b81040022036200",
                    )
                };
                let pair = EcdsaKeyPair::generate(signing).unwrap();
                let point = pair.public_key().as_ref().to_vec();
                let pkcs8 = pair.to_pkcs8v1().unwrap();
                TestKey {
                    alg,
                    jwk: json!({"kty": "EC", "crv": crv, "kid": kid, "alg": alg_name, "use": "sig",
                        "x": b64(&point[1..1 + size]), "y": b64(&point[1 + size..])}),
                    public_pem: pem("PUBLIC KEY", &spki(prefix, &point)),
                    encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
                    kid,
                    secret: Vec::new(),
                }
            }
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::generate().unwrap();
                let public = pair.public_key().as_ref().to_vec();
                let pkcs8 = pair.to_pkcs8v1().unwrap();
                TestKey {
                    alg,
                    jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "x": b64(&public)}),
                    public_pem: pem("PUBLIC KEY", &spki("302a300506032b6570032100", &public)),
                    encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
                    kid,
                    secret: Vec::new(),
                }
            }
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let len = match alg {
                    Algorithm::HS256 => 32,
                    Algorithm::HS384 => 48,
                    _ => 64,
                };
                let secret: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(kid.len() as u8))
                    .collect();
                TestKey {
                    alg,
                    jwk: json!({"kty": "oct", "kid": kid, "alg": alg_name, "k": b64(&secret)}),
                    public_pem: String::new(),
                    encoding: EncodingKey::from_secret(&secret),
                    kid,
                    secret,
                }
            }
            _ => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
                let public = pair.public_key();
                let components = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(public);
                let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
                let spki_der =
                    AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(public).unwrap();
                TestKey {
                    alg,
                    jwk: json!({"kty": "RSA", "kid": kid, "alg": alg_name, "use": "sig",
                        "n": b64(&components.n), "e": b64(&components.e)}),
                    public_pem: pem("PUBLIC KEY", spki_der.as_ref()),
                    encoding: EncodingKey::from_rsa_pem(
                        pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes(),
                    )
                    .unwrap(),
                    kid,
                    secret: Vec::new(),
                }
            }
        }
    }

    /// Signs `claims` with a standard header (alg, kid, typ JWT).
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_raw(
            &json!({"alg": format!("{:?}", self.alg), "kid": self.kid, "typ": "JWT"}).to_string(),
            &claims.to_string(),
        )
    }

    /// Signs arbitrary header and payload text with this key's algorithm.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, self.alg).unwrap();
        format!("{input}.{signature}")
    }
}

/// A JWKS document of these keys' public parts.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

/// Standard valid claims for `iss`/`aud`, expiring in an hour.
pub fn claims(iss: &str, aud: &str) -> Value {
    let now = now();
    json!({"iss": iss, "aud": aud, "sub": "alice", "iat": now, "exp": now + 3600, "scope": "orders:read orders:write"})
}

/// Starts an in-process server from YAML (listeners are forced to 127.0.0.1:0).
pub async fn start(yaml: &str) -> Running {
    let mut config = config::load_str(yaml).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    config.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.server.shutdown_grace = Duration::from_secs(2);
    server::start(config, None).await.expect("server starts")
}

/// Writes `yaml` (listeners on 127.0.0.1:0) to `path` and starts a server that watches it
/// and the files it names for hot reload.
pub async fn start_watching(path: &std::path::Path, yaml: &str) -> Running {
    std::fs::write(
        path,
        format!("server: {{grpc_listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0}}\n{yaml}"),
    )
    .unwrap();
    let config = config::load_file(path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    server::start(config, Some(path.to_path_buf()))
        .await
        .expect("server starts")
}

pub async fn client(running: &Running) -> AuthClient<Channel> {
    AuthClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .expect("connects")
}

pub async fn authenticate(
    client: &mut AuthClient<Channel>,
    token: &str,
) -> pb::AuthenticateResponse {
    client
        .authenticate(pb::AuthenticateRequest {
            credential: Some(pb::Credential {
                kind: Some(pb::credential::Kind::BearerToken(token.to_owned())),
            }),
            ..Default::default()
        })
        .await
        .expect("Authenticate is an OK RPC")
        .into_inner()
}

/// The denial reason, or None when authenticated.
pub fn reason(response: &pb::AuthenticateResponse) -> Option<pb::Reason> {
    if response.authenticated {
        assert!(response.denial.is_none());
        return None;
    }
    let denial = response
        .denial
        .as_ref()
        .expect("a denial when not authenticated");
    Some(pb::Reason::try_from(denial.reason).expect("a known reason"))
}

/// Waits until `check` holds, polling; panics after `timeout`.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut check: F) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the fake JWKS endpoint does on its next requests.
#[derive(Clone, Debug)]
pub enum JwksMode {
    Serve {
        body: String,
        cache_control: Option<String>,
    },
    Down,
    Hang,
    Garbage,
}

/// An in-process JWKS endpoint whose answers a test controls, counting requests.
#[derive(Clone)]
pub struct FakeJwks {
    pub url: String,
    mode: Arc<Mutex<JwksMode>>,
    hits: Arc<AtomicUsize>,
}

impl FakeJwks {
    pub async fn start(initial: JwksMode) -> Self {
        let mode = Arc::new(Mutex::new(initial));
        let hits = Arc::new(AtomicUsize::new(0));
        let state = (mode.clone(), hits.clone());
        let app = Router::new()
            .route("/jwks", get(serve_jwks))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeJwks { url, mode, hits }
    }

    pub fn set(&self, mode: JwksMode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn serve(&self, keys: &[&TestKey]) {
        self.set(JwksMode::Serve {
            body: jwks(keys).to_string(),
            cache_control: None,
        });
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

type FakeState = (Arc<Mutex<JwksMode>>, Arc<AtomicUsize>);

async fn serve_jwks(State((mode, hits)): State<FakeState>) -> axum::response::Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let mode = mode.lock().unwrap().clone();
    match mode {
        JwksMode::Serve {
            body,
            cache_control,
        } => {
            let mut response = body.into_response();
            if let Some(cc) = cache_control {
                response
                    .headers_mut()
                    .insert("cache-control", cc.parse().unwrap());
            }
            response
        }
        JwksMode::Down => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        JwksMode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        JwksMode::Garbage => "<html>not json".into_response(),
    }
}

/// An Envoy ext_authz CheckRequest for an HTTP request with these headers.
pub fn check_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> envoy_types::ext_authz::v3::pb::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
    envoy_types::ext_authz::v3::pb::CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A Secret/ConfigMap volume as the kubelet lays it out, updated by an atomic symlink swap:
/// `mount/FILE -> ..data/FILE`, `..data -> ..VERSION`.
pub struct KubernetesVolume {
    pub mount: std::path::PathBuf,
    file: String,
    versions: usize,
}

impl KubernetesVolume {
    pub fn new(mount: std::path::PathBuf, file: &str, contents: &str) -> Self {
        std::fs::create_dir_all(&mount).unwrap();
        let mut volume = KubernetesVolume {
            mount,
            file: file.to_owned(),
            versions: 0,
        };
        volume.publish(contents);
        std::os::unix::fs::symlink(format!("..data/{file}"), volume.path()).unwrap();
        volume
    }

    /// The path a config names.
    pub fn path(&self) -> std::path::PathBuf {
        self.mount.join(&self.file)
    }

    /// Writes a new version and swaps `..data` to it atomically.
    pub fn publish(&mut self, contents: &str) {
        self.versions += 1;
        let version = format!("..v{}", self.versions);
        std::fs::create_dir(self.mount.join(&version)).unwrap();
        std::fs::write(self.mount.join(&version).join(&self.file), contents).unwrap();
        let tmp = self.mount.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.mount.join("..data")).unwrap();
    }
}
