//! JWT revocation (`revocation`) against a real PostgreSQL: `portcullis tokens revoke` on
//! the database reaches two server processes within a second, whether the token is cached
//! or not; a subject-wide revocation spares tokens issued after it; with the database down,
//! the last list keeps applying; a server whose list never loaded refuses JWTs.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use jsonwebtoken::Algorithm::ES256;
use portcullis::pb::{Reason, auth_client::AuthClient};
use serde_json::json;
use tonic::transport::Channel;

use crate::support::{
    postgres::test_database,
    process::{self, BIN, Replica, free_port},
    *,
};

const ISS: &str = "https://idp.test";
const AUD: &str = "api://orders";

/// A `portcullis serve` process whose JWTs come from `jwks_path` and whose revocations
/// from `url`; ready once its list has loaded.
fn replica(dir: &std::path::Path, jwks_path: &std::path::Path, url: &str) -> Replica {
    process::replica(
        dir,
        &format!(
            "issuers:\n  - name: corp\n    issuer: {ISS}\n    jwks_file: {}\n    audiences: [{AUD}]\n\
             cache: {{max_ttl: 5m}}\n\
             revocation: {{url: env:PORTCULLIS_REPLICA_DB, resync_interval: 1h, timeout: 1s}}\n",
            jwks_path.display()
        ),
        &[("PORTCULLIS_REPLICA_DB", url)],
    )
}

async fn connect(grpc: u16) -> AuthClient<Channel> {
    AuthClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap()
}

/// Waits until every client refuses `token` as REVOKED; panics after one second.
async fn refused_everywhere_within_a_second(clients: &mut [AuthClient<Channel>], token: &str) {
    let started = Instant::now();
    for client in clients.iter_mut() {
        loop {
            match reason(&authenticate(client, token).await) {
                Some(Reason::Revoked) => break,
                None => {}
                other => panic!("unexpected outcome {other:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "a replica still accepts the revoked token after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn revoke(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["tokens", "revoke"])
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_every_replica_within_a_second_and_survive_an_outage() {
    let Some(db) = test_database().await else {
        return;
    };
    db.cli(&["keys", "migrate"]);
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k1");
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&key]).to_string()).unwrap();
    let token = |subject: &str, jti: &str, issued: i64| {
        let mut claims = claims(ISS, AUD);
        claims["sub"] = json!(subject);
        claims["jti"] = json!(jti);
        claims["iat"] = json!(issued);
        key.sign(&claims)
    };
    let issued = now();
    let stolen = token("alice", "jti-stolen", issued - 60);
    let other = token("alice", "jti-other", issued - 60);
    let mallory_old = token("mallory", "m-1", issued - 120);

    let a = replica(dir.path(), &jwks_path, &db.url);
    let b = replica(dir.path(), &jwks_path, &db.url);
    let mut clients = [connect(a.grpc).await, connect(b.grpc).await];
    for client in clients.iter_mut() {
        // Every token works, and is now in each replica's verification cache.
        for token in [&stolen, &other, &mallory_old] {
            assert_eq!(reason(&authenticate(client, token).await), None);
        }
    }

    let output = revoke(&db.url, &["--jti", "jti-stolen"]);
    assert!(output.status.success(), "{output:?}");
    refused_everywhere_within_a_second(&mut clients, &stolen).await;
    for client in clients.iter_mut() {
        assert_eq!(
            reason(&authenticate(client, &other).await),
            None,
            "another token of the same subject still works"
        );
    }

    // "Log out everywhere": every token of mallory issued until now.
    let output = revoke(&db.url, &["--subject", "mallory", "--issuer", "corp"]);
    assert!(output.status.success(), "{output:?}");
    refused_everywhere_within_a_second(&mut clients, &mallory_old).await;
    let mallory_new = token("mallory", "m-2", now() + 1);
    for client in clients.iter_mut() {
        assert_eq!(
            reason(&authenticate(client, &mallory_new).await),
            None,
            "a token issued after the revocation works"
        );
    }

    // The database goes away: the last known list keeps applying, on cached and new tokens.
    db.go_down().await;
    let stolen_again = token("alice", "jti-stolen", issued - 30);
    for client in clients.iter_mut() {
        assert_eq!(
            reason(&authenticate(client, &stolen).await),
            Some(Reason::Revoked)
        );
        assert_eq!(
            reason(&authenticate(client, &stolen_again).await),
            Some(Reason::Revoked),
            "an uncached token with a revoked jti"
        );
        assert_eq!(reason(&authenticate(client, &other).await), None);
    }

    // Back: revocations made while a replica was away are read when it reconnects.
    db.come_back().await;
    let output = revoke(&db.url, &["--jti", "jti-other"]);
    assert!(output.status.success(), "{output:?}");
    let started = Instant::now();
    for client in clients.iter_mut() {
        while reason(&authenticate(client, &other).await) != Some(Reason::Revoked) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the replicas did not catch up after the outage"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop((a, b));
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_list_never_loaded_refuses_jwts() {
    let key = TestKey::new(ES256, "k1");
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&key]).to_string()).unwrap();
    // Nothing listens on this port: the list cannot load.
    let url = format!("postgres://postgres@127.0.0.1:{}/none", free_port());
    let running = start(&format!(
        "issuers:\n  - name: corp\n    issuer: {ISS}\n    jwks_file: {}\n    audiences: [{AUD}]\nrevocation: {{url: '{url}', timeout: 200ms}}\n",
        jwks_path.display()
    ))
    .await;
    let mut client = client(&running).await;
    let token = key.sign(&claims(ISS, AUD));
    assert_eq!(
        reason(&authenticate(&mut client, &token).await),
        Some(Reason::UpstreamUnavailable)
    );
    assert!(
        !running.shared.is_ready(),
        "not ready before the list loads"
    );
    running.shutdown().await.unwrap();
}

#[test]
fn tokens_revoke_refuses_what_it_cannot_mean() {
    let refused = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(["tokens", "revoke"])
            .args(args)
            .args(["--database-url", "postgres://postgres@127.0.0.1:1/none"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    refused(&[]);
    refused(&["--jti", "a", "--subject", "b"]);
    refused(&["--jti", "a", "--issued-before", "2026-01-01T00:00:00Z"]);
    let future = refused(&["--subject", "b", "--issued-before", "2999-01-01T00:00:00Z"]);
    assert!(future.contains("future"), "{future}");
    refused(&["--subject", "b", "--issued-before", "yesterday"]);
    refused(&["--jti", ""]);
    refused(&["--jti", "a", "--retention", "1s"]);
    let url = refused(&["--jti", "a", "--issuer", "https://idp.test"]);
    assert!(
        url.contains("name"),
        "the issuer's name, not its URL: {url}"
    );
}

/// The config as `start_watching` writes it, rewritten with `body`: what a reload reads.
fn rewrite(path: &std::path::Path, body: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(
        &staged,
        format!(
            "server: {{grpc_listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, limits: {{max_queue_delay: 0s}}}}\n{body}"
        ),
    )
    .unwrap();
    std::fs::rename(staged, path).unwrap();
}

/// A reload never opens a gap: an unrelated change keeps the list, and a new database
/// that cannot load its own keeps the old list in force (a revoked token stays refused,
/// others still work) rather than letting anything through or refusing everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_the_revocation_list_in_force() {
    let Some(db) = test_database().await else {
        return;
    };
    db.cli(&["keys", "migrate"]);
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k1");
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&key]).to_string()).unwrap();
    let body = |url: &str, level: &str| {
        format!(
            "issuers:\n  - name: corp\n    issuer: {ISS}\n    jwks_file: {}\n    audiences: [{AUD}]\n\
             revocation: {{url: '{url}', resync_interval: 1h, timeout: 200ms}}\n\
             telemetry: {{log_level: {level}}}\n",
            jwks_path.display()
        )
    };
    let config = dir.path().join("config.yaml");
    let running = start_watching(&config, &body(&db.url, "warn")).await;
    let shared = running.shared.clone();
    eventually(Duration::from_secs(10), || shared.is_ready()).await;
    let mut client = client(&running).await;
    let mut claims = claims(ISS, AUD);
    claims["jti"] = json!("jti-reload");
    let revoked = key.sign(&claims);
    claims["jti"] = json!("jti-kept");
    let kept = key.sign(&claims);
    assert_eq!(
        revoke(&db.url, &["--jti", "jti-reload"]).status.code(),
        Some(0)
    );
    let started = Instant::now();
    while reason(&authenticate(&mut client, &revoked).await) != Some(Reason::Revoked) {
        assert!(started.elapsed() < Duration::from_secs(1), "not revoked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let reloaded = |generation: u64| {
        let shared = shared.clone();
        move || shared.generation() > generation
    };
    let generation = shared.generation();
    rewrite(&config, &body(&db.url, "error"));
    eventually(Duration::from_secs(10), reloaded(generation)).await;
    assert_eq!(
        reason(&authenticate(&mut client, &revoked).await),
        Some(Reason::Revoked),
        "an unrelated reload keeps the list"
    );

    let unreachable = format!("postgres://postgres@127.0.0.1:{}/none", free_port());
    let generation = shared.generation();
    rewrite(&config, &body(&unreachable, "error"));
    eventually(Duration::from_secs(10), reloaded(generation)).await;
    assert_eq!(
        reason(&authenticate(&mut client, &revoked).await),
        Some(Reason::Revoked),
        "the old list applies until the new database's has loaded"
    );
    assert_eq!(reason(&authenticate(&mut client, &kept).await), None);
    running.shutdown().await.unwrap();
    db.drop_database().await;
}

/// A TCP forwarder whose connections can be frozen: after `freeze`, what arrives on the
/// connections open at that moment goes nowhere and their sockets stay open (a peer gone
/// without a reset, as behind a dead NAT); connections made later are forwarded.
struct FreezingProxy {
    port: u16,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FreezingProxy {
    async fn start(target: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let current = generation.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(upstream_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(upstream_read), Box::new(client_write)),
                ] {
                    let current = current.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let Ok(read) = from.read(&mut buffer).await else {
                                return;
                            };
                            if read == 0 {
                                return;
                            }
                            if current.load(Ordering::SeqCst) != born {
                                // Frozen: hold both sockets open, forward nothing.
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { port, generation }
    }

    fn freeze(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A listening connection that dies without failing (no reset, no error: the peer just
/// stops answering) is noticed by its liveness query and replaced within seconds, and the
/// revocations made meanwhile apply; without it, they would wait for the hourly resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_connection_that_dies_silently_is_replaced() {
    let Some(db) = test_database().await else {
        return;
    };
    db.cli(&["keys", "migrate"]);
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(ES256, "k1");
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&key]).to_string()).unwrap();
    let (scheme_and_credentials, rest) = db.url.rsplit_once('@').expect("a URL with a host");
    let (address, database) = rest.split_once('/').expect("a URL with a database");
    let proxy = FreezingProxy::start(address.to_owned()).await;
    let through_proxy = format!(
        "{scheme_and_credentials}@127.0.0.1:{}/{database}",
        proxy.port
    );
    let (grpc, admin) = (free_port(), free_port());
    let config = dir.path().join("silent.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{grpc_listen: 127.0.0.1:{grpc}, admin_listen: 127.0.0.1:{admin}}}\n\
             issuers:\n  - name: corp\n    issuer: {ISS}\n    jwks_file: {}\n    audiences: [{AUD}]\n\
             revocation: {{url: env:PORTCULLIS_REPLICA_DB, resync_interval: 1h, timeout: 1s}}\n\
             telemetry: {{log_level: info, log_format: text}}\n",
            jwks_path.display()
        ),
    )
    .unwrap();
    let mut replica = process::ServerProcess::spawn_ready(
        &config,
        &format!("127.0.0.1:{admin}"),
        process::Options {
            env: &[("PORTCULLIS_REPLICA_DB", &through_proxy)],
            capture_logs: true,
            ..Default::default()
        },
    );
    let logs = replica.log_lines();
    let mut client = connect(grpc).await;
    let mut claims = claims(ISS, AUD);
    claims["jti"] = json!("jti-silent");
    let token = key.sign(&claims);
    assert_eq!(reason(&authenticate(&mut client, &token).await), None);

    proxy.freeze();
    let output = revoke(&db.url, &["--jti", "jti-silent"]);
    assert!(output.status.success(), "{output:?}");
    let started = Instant::now();
    while reason(&authenticate(&mut client, &token).await) != Some(Reason::Revoked) {
        if started.elapsed() > Duration::from_secs(20) {
            for line in logs.try_iter() {
                eprintln!("{line}");
            }
            panic!("the silently dead listener was not replaced");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "revocation applied {:?} after the connection froze",
        started.elapsed()
    );
    drop(replica);
    db.drop_database().await;
}
