//! The PostgreSQL API key store against a real PostgreSQL (scripts/provision/postgres.sh):
//! schema by `portcullis keys migrate`, revocation by `portcullis keys revoke` reaching another
//! replica (a second server process) within one second through LISTEN/NOTIFY, and a database
//! outage: cached keys keep working, uncached ones are UPSTREAM_UNAVAILABLE, and the store
//! reconnects by itself once the database is back.
//!
//! Reads `PORTCULLIS_TEST_DATABASE_URL`; each test creates and drops its own database. Under
//! CI=true a missing database fails the test; elsewhere it is skipped with a message.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use portcullis::{
    keys::api_keys::{ApiKeyRecord, format, postgres},
    pb::{self, Reason, auth_client::AuthClient},
};
use sqlx::{Executor, PgPool};

use crate::support::{
    postgres::test_database,
    process::{self, BIN, Replica},
    *,
};

/// Inserts a key record as `keys generate` prints it; returns the key.
async fn insert_key(pool: &PgPool, id: &str, subject: &str) -> String {
    let key = format::generate("pcl").unwrap();
    let record = ApiKeyRecord {
        id: id.to_owned(),
        subject: subject.to_owned(),
        scopes: vec!["orders:read".to_owned()],
        expires_at: None,
        disabled: false,
        metadata: serde_json::json!({"team": "payments"})
            .as_object()
            .unwrap()
            .clone(),
        rate_limit: None,
    };
    let statement = postgres::insert_statement(&format::hex(&format::digest(&key)), &record);
    pool.execute(statement.as_str()).await.unwrap();
    key
}

async fn authenticate_key(
    client: &mut AuthClient<tonic::transport::Channel>,
    key: &str,
) -> Option<Reason> {
    let response = client
        .authenticate(pb::AuthenticateRequest {
            credential: Some(pb::Credential {
                kind: Some(pb::credential::Kind::ApiKey(key.to_owned())),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    reason(&response)
}

/// A `portcullis serve` process on the database; ready once its change listener listens.
fn replica(dir: &std::path::Path, url: &str) -> Replica {
    process::replica(
        dir,
        "api_keys:\n  postgres: {url: env:PORTCULLIS_REPLICA_DB, cache_ttl: 5m, negative_cache_ttl: 5m}\n",
        &[("PORTCULLIS_REPLICA_DB", url)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_another_replica_within_a_second() {
    let Some(db) = test_database().await else {
        return;
    };
    db.cli(&["keys", "migrate"]);
    db.cli(&["keys", "migrate"]); // idempotent
    let pool = PgPool::connect(&db.url).await.unwrap();
    let revoked = insert_key(&pool, "k_old", "billing").await;
    let rotated = insert_key(&pool, "k_new", "billing").await;

    let dir = tempfile::tempdir().unwrap();
    let a = replica(dir.path(), &db.url);
    let b = replica(dir.path(), &db.url);
    let mut client_a = AuthClient::connect(format!("http://127.0.0.1:{}", a.grpc))
        .await
        .unwrap();
    let mut client_b = AuthClient::connect(format!("http://127.0.0.1:{}", b.grpc))
        .await
        .unwrap();
    for client in [&mut client_a, &mut client_b] {
        // Both keys of the subject work and are now cached (for 5 minutes) on both replicas.
        assert_eq!(authenticate_key(client, &revoked).await, None);
        assert_eq!(authenticate_key(client, &rotated).await, None);
    }
    // A key inserted after a replica remembered its digest as unknown is seen at once too.
    let late = format::generate("pcl").unwrap();
    assert_eq!(
        authenticate_key(&mut client_b, &late).await,
        Some(Reason::UnknownKey)
    );

    db.cli(&["keys", "revoke", "k_old"]);
    let revoked_at = Instant::now();
    loop {
        let reason = authenticate_key(&mut client_b, &revoked).await;
        if reason == Some(Reason::Revoked) {
            break;
        }
        assert_eq!(reason, None);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "the other replica still accepts the revoked key after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    assert_eq!(
        authenticate_key(&mut client_a, &revoked).await,
        Some(Reason::Revoked)
    );
    assert_eq!(
        authenticate_key(&mut client_b, &rotated).await,
        None,
        "the subject's other key still works"
    );

    let output = Command::new(BIN)
        .args(["keys", "revoke", "k_missing"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!output.status.success(), "revoking an unknown id fails");

    drop((a, b));
    pool.close().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_serves_cached_keys_and_the_store_reconnects() {
    let Some(db) = test_database().await else {
        return;
    };
    db.cli(&["keys", "migrate"]);
    let pool = PgPool::connect(&db.url).await.unwrap();
    let cached = insert_key(&pool, "k_cached", "svc").await;
    let uncached = insert_key(&pool, "k_uncached", "svc").await;
    pool.close().await;

    let running = start(&format!(
        "api_keys:\n  postgres: {{url: \"{}\", cache_ttl: 60s, negative_cache_ttl: 1s, timeout: 1s}}\n",
        db.url
    ))
    .await;
    let shared = running.shared.clone();
    eventually(Duration::from_secs(10), || shared.is_ready()).await;
    let mut client = client(&running).await;
    let response = client
        .authenticate(pb::AuthenticateRequest {
            credential: Some(pb::Credential {
                kind: Some(pb::credential::Kind::ApiKey(cached.clone())),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let principal = response.principal.expect("authenticated");
    assert_eq!(principal.issuer, "api_keys.postgres");
    assert_eq!(principal.key_id, "k_cached");
    assert_eq!(principal.subject, "svc");
    assert_eq!(principal.credential_type, pb::CredentialType::ApiKey as i32);
    assert!(principal.claims.unwrap().fields.contains_key("team"));

    // The database goes away: no new connections, existing ones cut.
    db.go_down().await;
    assert_eq!(
        authenticate_key(&mut client, &cached).await,
        None,
        "cached keys keep working"
    );
    let started = Instant::now();
    assert_eq!(
        authenticate_key(&mut client, &uncached).await,
        Some(Reason::UpstreamUnavailable),
        "uncached keys fail closed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "within the configured timeout"
    );

    // The database is back: the store reconnects by itself.
    db.come_back().await;
    let back = Instant::now();
    while authenticate_key(&mut client, &uncached).await.is_some() {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the store did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(authenticate_key(&mut client, &cached).await, None);
    running.shutdown().await.unwrap();
    db.drop_database().await;
}

/// `keys rotate`: the successor (same subject, scopes, metadata) is printed once and works at
/// once on a replica; the old key keeps working through the overlap and is EXPIRED after
/// it; `keys list` shows both with their relation; a rotated key is not rotated twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_overlaps_then_only_the_successor_works() {
    let Some(db) = test_database().await else {
        return;
    };
    db.cli(&["keys", "migrate"]);
    let pool = PgPool::connect(&db.url).await.unwrap();
    let old = insert_key(&pool, "k_rotating", "billing").await;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(dir.path(), &db.url);
    let mut client = AuthClient::connect(format!("http://127.0.0.1:{}", a.grpc))
        .await
        .unwrap();
    assert_eq!(authenticate_key(&mut client, &old).await, None);

    let rotated_at = Instant::now();
    let output = db.cli(&["keys", "rotate", "k_rotating", "--overlap", "3s"]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let successor = stdout
        .lines()
        .find(|line| line.starts_with("pcl_"))
        .expect("the new key, printed once")
        .to_owned();
    assert!(stdout.contains("rotated k_rotating -> k_"), "{stdout}");
    let principal = |response: pb::AuthenticateResponse| response.principal.expect("a principal");
    let answer = client
        .authenticate(pb::AuthenticateRequest {
            credential: Some(pb::Credential {
                kind: Some(pb::credential::Kind::ApiKey(successor.clone())),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let successor_principal = principal(answer);
    assert_eq!(successor_principal.subject, "billing");
    assert_eq!(successor_principal.scopes, ["orders:read"]);
    let claims = successor_principal.claims.expect("claims").fields;
    assert!(claims.contains_key("team") && claims.contains_key("rotated_from"));
    if rotated_at.elapsed() < Duration::from_millis(1800) {
        assert_eq!(
            authenticate_key(&mut client, &old).await,
            None,
            "the old key works during the overlap"
        );
    }
    let listing = String::from_utf8(db.cli(&["keys", "list"]).stdout).unwrap();
    let line = |id: &str| {
        listing
            .lines()
            .find(|line| line.starts_with(id))
            .unwrap_or_else(|| panic!("{id} listed:\n{listing}"))
            .to_owned()
    };
    assert!(line("k_rotating").contains("rotated to k_"), "{listing}");
    assert!(listing.contains("successor of k_rotating"), "{listing}");
    assert!(
        !listing.contains(&successor) && !listing.contains(&old[4..]),
        "no key listed"
    );

    let again = Command::new(BIN)
        .args(["keys", "rotate", "k_rotating", "--overlap", "1h"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already rotated"));

    let deadline = rotated_at + Duration::from_secs(10);
    loop {
        match authenticate_key(&mut client, &old).await {
            Some(Reason::Expired) => break,
            None => assert!(
                Instant::now() < deadline,
                "the old key outlived its overlap"
            ),
            other => panic!("the old key: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        rotated_at.elapsed() >= Duration::from_secs(2),
        "not before the overlap ends"
    );

    drop(a);
    pool.close().await;
    db.drop_database().await;
}

/// Usage and activity across replicas: each replica counts its uses in memory and writes
/// them in batches; `keys show` and `keys list` report the sum with the last use and client
/// address, a key never used shows none, and keys near expiry are a per-store gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_from_two_replicas_is_written_in_batches_and_shown() {
    let Some(db) = test_database().await else {
        return;
    };
    db.cli(&["keys", "migrate"]);
    let pool = PgPool::connect(&db.url).await.unwrap();
    let used = insert_key(&pool, "k_used", "billing").await;
    insert_key(&pool, "k_idle", "billing").await;
    insert_key(&pool, "k_soon", "billing").await;
    pool.execute(
        "UPDATE portcullis_api_keys SET expires_at = now() + interval '3 days' WHERE id = 'k_soon'",
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let a = usage_replica(dir.path(), &db.url);
    let b = usage_replica(dir.path(), &db.url);
    let mut clients = [
        AuthClient::connect(format!("http://127.0.0.1:{}", a.grpc))
            .await
            .unwrap(),
        AuthClient::connect(format!("http://127.0.0.1:{}", b.grpc))
            .await
            .unwrap(),
    ];
    for (client, times) in clients.iter_mut().zip([5, 3]) {
        for _ in 0..times {
            assert_eq!(authenticate_key(client, &used).await, None);
        }
    }
    let started = Instant::now();
    let shown = loop {
        let output = db.cli(&["keys", "show", "k_used"]);
        let text = String::from_utf8(output.stdout).unwrap();
        if text.contains("uses: 8") {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the replicas' usage was not written: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(shown.contains("last client address: 127.0.0.1"), "{shown}");
    assert!(!shown.contains("last used: never"), "{shown}");
    assert!(!shown.contains(&used), "never the key");
    let listed = String::from_utf8(db.cli(&["keys", "list"]).stdout).unwrap();
    let line = |id: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("{id}\t")))
            .unwrap_or_else(|| panic!("{id} listed:\n{listed}"))
            .to_owned()
    };
    assert!(line("k_used").contains("\t8\t"), "{listed}");
    assert!(line("k_idle").ends_with("\t0\tnever"), "{listed}");

    let metrics = loop {
        let metrics = process::http_get(&a.admin, "/metrics").unwrap();
        if metrics
            .contains("portcullis_api_keys_expiring{store=\"api_keys.postgres\",within=\"7d\"} 1")
        {
            break metrics;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!metrics.contains("k_soon"), "no per-key label");
    let missing = Command::new(BIN)
        .args(["keys", "show", "k_missing"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    drop((a, b));
    pool.close().await;
    db.drop_database().await;
}

/// A replica that writes usage every second.
fn usage_replica(dir: &std::path::Path, url: &str) -> Replica {
    process::replica(
        dir,
        "api_keys:\n  usage_flush_interval: 1s\n  postgres: {url: env:PORTCULLIS_REPLICA_DB}\n",
        &[("PORTCULLIS_REPLICA_DB", url)],
    )
}

/// A key's own rate limit in PostgreSQL: the second request within the hour is
/// RATE_LIMITED, and `keys rotate` gives the successor the same limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_own_rate_limit_applies_and_survives_rotation() {
    let Some(db) = test_database().await else {
        return;
    };
    db.cli(&["keys", "migrate"]);
    let pool = PgPool::connect(&db.url).await.unwrap();
    let key = insert_key(&pool, "k_limited", "billing").await;
    pool.execute(
        "UPDATE portcullis_api_keys SET rate_limit_per_second = 1.0 / 3600, rate_limit_burst = 1 WHERE id = 'k_limited'",
    )
    .await
    .unwrap();
    let refused = pool
        .execute("UPDATE portcullis_api_keys SET rate_limit_per_second = 1e-9, rate_limit_burst = 1 WHERE id = 'k_limited'")
        .await;
    assert!(
        refused.is_err(),
        "slower than one a day is refused by the table"
    );

    let dir = tempfile::tempdir().unwrap();
    let one = replica(dir.path(), &db.url);
    let mut client = AuthClient::connect(format!("http://127.0.0.1:{}", one.grpc))
        .await
        .unwrap();
    assert_eq!(authenticate_key(&mut client, &key).await, None);
    assert_eq!(
        authenticate_key(&mut client, &key).await,
        Some(Reason::RateLimited)
    );

    db.cli(&["keys", "rotate", "k_limited", "--overlap", "1h"]);
    let limits: Vec<(f64, i32)> = sqlx::query_as(
        "SELECT rate_limit_per_second, rate_limit_burst FROM portcullis_api_keys ORDER BY created_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(limits.len(), 2);
    assert_eq!(limits[0], limits[1], "the successor has the same limit");
    drop(one);
    pool.close().await;
    db.drop_database().await;
}
