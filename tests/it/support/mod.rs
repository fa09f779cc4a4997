//! Shared test support: an in-process server on 127.0.0.1:0, the server binary as a child
//! process ([`process`]), a fault-injecting JWKS server, and (re-exported from
//! `portcullis-test-support`) throwaway signing keys and token minting. Nothing here is a stand-in for a real component that can run: the OpenID
//! provider and the server binary are exercised in their own tests.

pub mod oidc;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod redis;

pub use portcullis_test_support::*;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use portcullis::{
    config,
    pb::{self, auth_client::AuthClient},
    server::{self, Running},
};
use tonic::transport::Channel;

/// Starts an in-process server from YAML (listeners are forced to 127.0.0.1:0). It shares
/// the test's runtime, whose thread the test itself blocks at times (hashing passwords,
/// writing files), so shedding by queue delay is off here: `load_shed`'s unit tests and the
/// release binary in `limits` cover it.
pub async fn start(yaml: &str) -> Running {
    let mut config = config::load_str(yaml).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    config.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    if config.server.http_listen.is_some() {
        config.server.http_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    config.server.shutdown_grace = Duration::from_secs(2);
    config.server.limits.max_queue_delay = Duration::ZERO;
    server::start(config, None).await.expect("server starts")
}

/// Writes `yaml` (listeners on 127.0.0.1:0, no shedding by queue delay: see [`start`]) to
/// `path` and starts a server that watches it and the files it names for hot reload.
pub async fn start_watching(path: &std::path::Path, yaml: &str) -> Running {
    std::fs::write(
        path,
        format!(
            "server: {{grpc_listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, limits: {{max_queue_delay: 0s}}}}\n{yaml}"
        ),
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

/// Whether `haystack` holds `needle` (at least 8 bytes: a credential fragment worth
/// looking for) anywhere, e.g. in exported telemetry.
pub fn holds_fragment(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() >= 8 && haystack.windows(needle.len()).any(|w| w == needle)
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
    /// Serves `body` after `delay`.
    Slow {
        body: String,
        delay: Duration,
    },
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
        JwksMode::Slow { body, delay } => {
            tokio::time::sleep(delay).await;
            body.into_response()
        }
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
