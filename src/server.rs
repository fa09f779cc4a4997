//! Assembles the running service: the gRPC listener (Auth, health, reflection), the admin HTTP
//! listener (`/healthz`, `/readyz`), the config watcher, readiness, and graceful shutdown.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic_health::ServingStatus;
use tracing::{error, info};

use crate::{
    build::{self, BuildMode},
    config::{Config, ConfigErrors, LimitsConfig},
    grpc::{auth_service::AuthService, ext_authz::ExtAuthzService},
    identity_token::IdentityTokens,
    listener,
    load_shed::LoadShedLayer,
    pb, reload,
    serving::Shared,
    telemetry::metrics::Metrics,
};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// A started server.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The forward-auth listener's address, when `server.http_listen` is set.
    pub http_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Stops accepting, reports NOT_SERVING, and waits for in-flight requests up to the
    /// configured grace period.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shutdown.send_replace(true);
        let result = match self.task.await {
            Ok(result) => result,
            Err(join) => {
                error!(error = %join, "server task failed");
                Ok(())
            }
        };
        // The last counts of usage, which the periodic writer would not get to.
        self.shared.pipeline.load().flush_usage().await;
        result
    }
}

/// Starts serving `config`. With `config_path`, the file and the key files it names are
/// watched and valid changes are swapped in.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Running, ServeError> {
    let client = crate::outbound::http_client().map_err(ServeError::HttpClient)?;
    let grace = config.server.shutdown_grace;
    let metrics = Arc::new(Metrics::new(config.telemetry.metrics));
    let grpc_listen = config.server.grpc_listen;
    let limits = config.server.limits.clone();
    let admin_listen = config.server.admin_listen;
    let http_listen = config.server.http_listen;
    let tls = config
        .server
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()?
        .map(|tls| Arc::new(ArcSwap::new(tls)));
    // Fingerprint the files before the first build reads them, so that a change written
    // meanwhile is seen by the watcher (and a config changed since it was loaded, too).
    let watch = config_path.map(|path| {
        let built_from = reload::fingerprint_now(&path);
        let changed = crate::config::load_file(&path).map_or(true, |on_disk| on_disk != config);
        (path, built_from, changed)
    });
    let pipeline = build::pipeline(config, &client, &metrics, None, BuildMode::Serve)?;
    crate::telemetry::config_started(&metrics);
    let shared = Arc::new(Shared::new(pipeline, client, metrics, tls));

    let grpc_listener =
        TcpListener::bind(grpc_listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: grpc_listen,
                source,
            })?;
    let admin_listener =
        TcpListener::bind(admin_listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: admin_listen,
                source,
            })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| ServeError::Bind {
            addr: grpc_listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| ServeError::Bind {
            addr: admin_listen,
            source,
        })?;
    let (forward_auth_listener, http_addr) = match http_listen {
        Some(addr) => {
            let bound = async {
                let listener = TcpListener::bind(addr).await?;
                let local = listener.local_addr()?;
                Ok::<_, std::io::Error>((listener, local))
            };
            let (listener, local) = bound
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            (Some(listener), Some(local))
        }
        None => (None, None),
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health_reporter
        .set_service_status(AUTH_SERVICE_NAME, ServingStatus::NotServing)
        .await;
    tokio::spawn(report_ready_when_keys_load(
        shared.clone(),
        health_reporter.clone(),
    ));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if let Some((path, built_from, changed)) = watch {
        reload::spawn_watcher(
            path,
            shared.clone(),
            built_from,
            changed,
            shutdown_rx.clone(),
        );
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(pb::ENVOY_EXT_AUTHZ_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|err| ServeError::HttpClient(err.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(pb::ENVOY_EXT_AUTHZ_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|err| ServeError::HttpClient(err.to_string()))?;

    let builder = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .timeout(limits.request_timeout);
    let max_request = limits.max_request_bytes;
    let router = builder
        .layer(LoadShedLayer::new(
            limits.max_in_flight,
            limits.max_queue_delay,
            shared.metrics.clone(),
        ))
        .add_service(health_service.max_decoding_message_size(MAX_HEALTH_REQUEST_BYTES))
        .add_service(reflection_v1.max_decoding_message_size(max_request))
        .add_service(reflection_v1alpha.max_decoding_message_size(max_request))
        .add_service(
            crate::grpc::wire::auth_server::AuthServer::new(AuthService::new(
                shared.pipeline.clone(),
            ))
            .max_decoding_message_size(max_request),
        )
        .add_service(
            crate::grpc::wire::authorization_server::AuthorizationServer::new(
                ExtAuthzService::new(shared.pipeline.clone()),
            )
            .max_decoding_message_size(max_request),
        );

    let admin = admin_router(shared.clone());
    let forward_auth = forward_auth_listener.map(|listener| {
        (
            listener,
            crate::forward_auth::router(shared.pipeline.clone()),
        )
    });
    let task = tokio::spawn(run(
        router,
        grpc_listener,
        admin,
        admin_listener,
        forward_auth,
        shared.tls.clone(),
        health_reporter,
        shutdown_rx,
        grace,
        limits,
    ));
    info!(%grpc_addr, %admin_addr, http_addr = ?http_addr, "portcullis listening");
    Ok(Running {
        grpc_addr,
        admin_addr,
        http_addr,
        shared,
        shutdown: shutdown_tx,
        task,
    })
}

/// The gRPC service name the health service reports for.
pub const AUTH_SERVICE_NAME: &str = "portcullis.v1.Auth";

/// Largest health-check request (they name one service).
const MAX_HEALTH_REQUEST_BYTES: usize = 4 * 1024;

/// Longest life of one admin HTTP connection (scrapers reconnect).
const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

#[allow(clippy::too_many_arguments)]
async fn run(
    router: tonic::transport::server::Router<
        tower_layer::Stack<LoadShedLayer, tower_layer::Identity>,
    >,
    grpc_listener: TcpListener,
    admin: Router,
    admin_listener: TcpListener,
    forward_auth: Option<(TcpListener, Router)>,
    tls: Option<crate::tls::SharedTls>,
    health: tonic_health::server::HealthReporter,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    limits: LimitsConfig,
) -> Result<(), ServeError> {
    let mut stopping = shutdown.clone();
    let stop_signal = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(AUTH_SERVICE_NAME, ServingStatus::NotServing)
            .await;
        info!("shutting down: no new connections, draining in-flight requests");
    };
    let admin_task = tokio::spawn(serve_http(
        admin_listener,
        admin,
        limits.admin_header_timeout,
        limits.admin_max_connections,
        Some(ADMIN_CONNECTION_LIFETIME),
    ));
    // Proxies keep their connections: no lifetime, but idle ones close.
    let forward_auth_task = forward_auth.map(|(listener, router)| {
        tokio::spawn(serve_http(
            listener,
            router,
            limits.idle_timeout,
            limits.max_connections,
            None,
        ))
    });
    let connections =
        listener::incoming(grpc_listener, limits.max_connections, limits.idle_timeout);
    // A handshake must finish within the idle timeout, however slowly its bytes arrive.
    let mut grpc: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match tls {
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
            crate::tls::incoming(connections, tls, limits.idle_timeout),
            stop_signal,
        )),
        None => Box::pin(router.serve_with_incoming_shutdown(connections, stop_signal)),
    };
    let result = tokio::select! {
        result = &mut grpc => result,
        _ = async {
            let _ = shutdown.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        } => {
            info!("grace period over; closing remaining connections");
            Ok(())
        }
    };
    admin_task.abort();
    if let Some(task) = forward_auth_task {
        task.abort();
    }
    result.map_err(ServeError::from)
}

/// An HTTP/1 listener (admin, forward-auth): at most `max_connections` at once, each bounded
/// in the time its request headers may take and, with `lifetime`, in its whole life, so a
/// slow client cannot hold it. Each request carries the peer's address (`ConnectInfo`).
async fn serve_http(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    max_connections: usize,
    lifetime: Option<Duration>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "admin listener cannot accept; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let with_peer = router
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let service = hyper_util::service::TowerToHyperService::new(with_peer);
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match lifetime {
                Some(lifetime) => {
                    let _ = tokio::time::timeout(lifetime, connection).await;
                }
                None => {
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
}

/// Sets SERVING once every remote key source has loaded once and every key store listens for
/// changes (static keys load at build).
async fn report_ready_when_keys_load(
    shared: Arc<Shared>,
    health: tonic_health::server::HealthReporter,
) {
    let pipeline = shared.pipeline.load();
    let mut receivers: Vec<_> = pipeline
        .remote_sources()
        .map(|source| source.ready())
        .collect();
    receivers.extend(pipeline.store_readiness());
    drop(pipeline);
    for mut ready in receivers {
        if ready.wait_for(|loaded| *loaded).await.is_err() {
            return;
        }
    }
    shared.set_ready();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(AUTH_SERVICE_NAME, ServingStatus::Serving)
        .await;
    info!("all key sources loaded; serving");
}

fn admin_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(identity_jwks))
        .route("/.well-known/openid-configuration", get(identity_discovery))
        .with_state(shared)
}

/// The identity token keys (`response.identity_token`): current, next and previous, from
/// the serving generation; 404 while identity tokens are off.
async fn identity_jwks(State(shared): State<Arc<Shared>>) -> axum::response::Response {
    let pipeline = shared.pipeline.load();
    identity_document(pipeline.identity_tokens().map(IdentityTokens::jwks))
}

/// OpenID discovery for identity tokens: the issuer and where its keys are.
async fn identity_discovery(State(shared): State<Arc<Shared>>) -> axum::response::Response {
    let pipeline = shared.pipeline.load();
    identity_document(pipeline.identity_tokens().map(IdentityTokens::discovery))
}

/// Upstreams may cache the documents for five minutes: the next key is published at least
/// that long before it signs (see docs/identity-tokens.md).
fn identity_document(document: Option<bytes::Bytes>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match document {
        Some(body) => (
            [
                (axum::http::header::CONTENT_TYPE, "application/json"),
                (axum::http::header::CACHE_CONTROL, "public, max-age=300"),
            ],
            body,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "identity tokens are not configured\n",
        )
            .into_response(),
    }
}

/// Ready once the serving generation's key sources have all loaded once; otherwise 503
/// naming the issuers (and stores) still waiting for their first load.
async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let pipeline = shared.pipeline.load();
    let mut waiting: Vec<String> = pipeline
        .remote_sources()
        .filter(|source| !*source.ready().borrow())
        .map(|source| format!("issuer {}", source.issuer_name()))
        .collect();
    if pipeline
        .store_readiness()
        .iter()
        .any(|ready| !*ready.borrow())
    {
        waiting.push("a PostgreSQL store (API keys or token revocations)".to_owned());
    }
    if waiting.is_empty() && shared.is_ready() {
        (StatusCode::OK, "ready\n".to_owned())
    } else if waiting.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: keys not loaded yet for {}\n",
                waiting.join(", ")
            ),
        )
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl axum::response::IntoResponse {
    let metrics = &shared.metrics;
    let pipeline = shared.pipeline.load();
    let (entries, bytes) = pipeline.jwt().cache_size();
    metrics
        .jwt_cache_entries
        .set(i64::try_from(entries).unwrap_or(i64::MAX));
    metrics
        .jwt_cache_bytes
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    for source in pipeline.remote_sources() {
        let labels = crate::telemetry::metrics::IssuerLabels {
            issuer: source.issuer_name().to_owned(),
        };
        if let Some((keys, age)) = source.key_set_status() {
            metrics
                .jwks_keys
                .get_or_create(&labels)
                .set(i64::try_from(keys).unwrap_or(i64::MAX));
            metrics
                .jwks_key_age
                .get_or_create(&labels)
                .set(age.as_secs_f64());
        }
    }
    if let Some(keys) = &pipeline.verifiers().api_keys {
        for (store, counts) in keys.expiring() {
            for (within, count) in ["7d", "30d"].into_iter().zip(counts) {
                let labels = crate::telemetry::metrics::ExpiringLabels {
                    store: store.to_owned(),
                    within: within.to_owned(),
                };
                metrics
                    .api_keys_expiring
                    .get_or_create(&labels)
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
