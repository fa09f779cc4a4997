//! TLS on the gRPC listener: the rustls server configuration built from `server.tls` (the
//! identity and, with `client_ca_file`, optional client certificates signed by that CA),
//! held in a swappable cell so that rotated certificate, key and CA files take effect on the
//! next connection without a restart, and the handshakes, which run concurrently and within
//! a deadline so that one slow or silent client cannot hold up the others.

use std::{io, path::Path, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use futures::{Stream, StreamExt};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::debug;

use crate::{config::TlsConfig, listener::LimitedConnection};

/// The serving TLS configuration; reloads store a new one, each handshake reads the current.
pub type SharedTls = Arc<ArcSwap<ServerConfig>>;

/// Why the TLS files cannot be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: {what}")]
    Pem { path: String, what: &'static str },
    #[error("client_ca_file {path}: {reason}")]
    ClientCa { path: String, reason: String },
    #[error("cert_file and key_file do not form a usable identity: {0}")]
    Identity(rustls::Error),
}

/// The rustls configuration for `tls`: aws-lc-rs, TLS 1.2 and 1.3, ALPN `h2`.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates(&tls.cert_file)?;
    let key = private_key(&tls.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Identity)?;
    let builder = match &tls.client_ca_file {
        Some(ca_file) => {
            let client_ca_error = |reason: String| TlsError::ClientCa {
                path: ca_file.display().to_string(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for certificate in certificates(ca_file)? {
                roots
                    .add(certificate)
                    .map_err(|err| client_ca_error(err.to_string()))?;
            }
            // Optional: callers without a certificate still present other credentials.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|err| client_ca_error(err.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Identity)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |what| TlsError::Pem {
        path: path.display().to_string(),
        what,
    };
    let chain = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| pem_error("not a PEM certificate file"))?;
    if chain.is_empty() {
        return Err(pem_error("no certificate in the file"));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|_| TlsError::Pem {
        path: path.display().to_string(),
        what: "no PKCS#8, PKCS#1 or SEC1 private key in the file",
    })
}

/// Accepted connections after their TLS handshake. Each handshake runs in its own task with
/// the configuration current when the connection arrived, and must finish within
/// `handshake_timeout`; failed handshakes are logged at debug level and dropped. The
/// accepting task ends when the returned stream is dropped.
pub fn incoming<S>(
    connections: S,
    tls: SharedTls,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<TlsStream<LimitedConnection>>>
where
    S: Stream<Item = io::Result<LimitedConnection>> + Send + 'static,
{
    // Each waiting connection holds one of the listener's connection permits.
    let (ready_tx, ready_rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut connections = std::pin::pin!(connections);
        loop {
            let next = tokio::select! {
                _ = ready_tx.closed() => return,
                next = connections.next() => next,
            };
            let connection = match next {
                Some(Ok(connection)) => connection,
                Some(Err(_)) => continue,
                None => return,
            };
            let acceptor = TlsAcceptor::from(tls.load_full());
            let ready_tx = ready_tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready_tx.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => debug!(error = %err, "TLS handshake failed"),
                    Err(_) => debug!("TLS handshake did not finish in time"),
                }
            });
        }
    });
    futures::stream::unfold(ready_rx, |mut ready_rx| async move {
        ready_rx.recv().await.map(|stream| (stream, ready_rx))
    })
}
