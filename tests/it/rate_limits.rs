//! Rate limits shared through a real Redis (scripts/provision/redis.sh; each test runs its
//! own `redis-server` on 127.0.0.1 and stops it by PID): two server processes hold one
//! combined limit for an API key; with Redis stopped each replica limits alone
//! (`when_unavailable: local`), and once Redis is back they share the limit again by
//! themselves.

use std::{
    sync::Arc,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use portcullis::{
    keys::api_keys::format,
    pb::{self, Reason, auth_client::AuthClient},
};
use tonic::transport::Channel;

use crate::support::{
    process::{self, Replica, free_port},
    redis::Redis,
    *,
};

/// A replica whose API keys come from `keys`, counted in the Redis on `redis_port`.
fn replica(dir: &std::path::Path, keys: &std::path::Path, redis_port: u16) -> Replica {
    process::replica(
        dir,
        &format!(
            "api_keys: {{file: {}}}\n\
             rate_limits:\n  redis: {{url: 'redis://127.0.0.1:{redis_port}/', timeout: 100ms, when_unavailable: local}}\n\
             telemetry: {{log_level: error}}\n",
            keys.display()
        ),
        &[],
    )
}

/// Drives `key` from 4 concurrent callers per replica for `duration`; the allowed and
/// limited counts, and how long the run took.
async fn drive(grpc_ports: &[u16], key: &str, duration: Duration) -> (usize, usize, Duration) {
    let allowed = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut callers = Vec::new();
    for port in grpc_ports {
        for _ in 0..4 {
            let mut client: AuthClient<Channel> =
                AuthClient::connect(format!("http://127.0.0.1:{port}"))
                    .await
                    .unwrap();
            let (allowed, limited, key) = (allowed.clone(), limited.clone(), key.to_owned());
            callers.push(tokio::spawn(async move {
                while started.elapsed() < duration {
                    let answer = client
                        .authenticate(pb::AuthenticateRequest {
                            credential: Some(pb::Credential {
                                kind: Some(pb::credential::Kind::ApiKey(key.clone())),
                            }),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    match reason(&answer) {
                        None => allowed.fetch_add(1, Ordering::Relaxed),
                        Some(Reason::RateLimited) => limited.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected {other:?}"),
                    };
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
    }
    for caller in callers {
        caller.await.unwrap();
    }
    (
        allowed.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_keys_limit_through_redis_and_fall_back_while_it_is_down() {
    let Some(binary) = Redis::binary() else {
        return;
    };
    let redis_port = free_port();
    let redis = Redis::start(&binary, redis_port);
    let dir = tempfile::tempdir().unwrap();
    let key = format::generate("pcl").unwrap();
    let keys = dir.path().join("keys.yaml");
    std::fs::write(
        &keys,
        format!(
            "keys:\n  - {{id: k_limited, sha256: {}, subject: billing, rate_limit: {{rate: 20/s, burst: 10}}}}\n",
            format::hex(&format::digest(&key))
        ),
    )
    .unwrap();
    let (a, b) = (
        replica(dir.path(), &keys, redis_port),
        replica(dir.path(), &keys, redis_port),
    );
    let (grpc_a, grpc_b) = (a.grpc, b.grpc);

    // Shared: both replicas together get the burst plus the rate over the run.
    let (allowed, limited, took) = drive(&[grpc_a, grpc_b], &key, Duration::from_secs(2)).await;
    let expected = 10.0 + 20.0 * took.as_secs_f64();
    let error = (allowed as f64 - expected) / expected;
    eprintln!(
        "shared limit: {allowed} allowed, {limited} limited in {took:?}; expected {expected:.1}, error {:+.1}%",
        error * 100.0
    );
    assert!(limited > allowed, "the callers went well over the limit");
    assert!(
        error.abs() < 0.10,
        "combined limit off by {:+.1}%",
        error * 100.0
    );

    // Redis stops: each replica limits alone (more gets through, but not without limit).
    redis.stop();
    let (allowed, limited, took) = drive(&[grpc_a], &key, Duration::from_secs(1)).await;
    eprintln!("Redis down, one replica: {allowed} allowed, {limited} limited in {took:?}");
    assert!(allowed > 0 && limited > 0, "the local limit applies");
    assert!(
        (allowed as f64) <= 10.0 + 20.0 * took.as_secs_f64() + 2.0,
        "no more than one replica's limit: {allowed}"
    );

    // Redis is back (empty). Each replica tries it again a second after its last failure
    // and its connection reconnects by itself: after a warm-up of normal traffic, the
    // replicas share the limit again (alone, each would let the full rate through).
    let redis = Redis::start(&binary, redis_port);
    drive(&[grpc_a, grpc_b], &key, Duration::from_secs(3)).await;
    let (allowed, _, took) = drive(&[grpc_a, grpc_b], &key, Duration::from_secs(2)).await;
    let shared = 20.0 * took.as_secs_f64();
    eprintln!("Redis back: {allowed} allowed in {took:?}; shared rate gives {shared:.1}");
    assert!(
        (allowed as f64) < shared * 1.25,
        "the replicas share the limit again: {allowed} allowed, {shared:.1} expected"
    );
    drop((a, b));
    assert_eq!(redis.port, redis_port);
}

/// A config reload does not hand a client a fresh burst: the in-process counters are kept
/// by the next generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_reset_the_counters() {
    let dir = tempfile::tempdir().unwrap();
    let key = format::generate("pcl").unwrap();
    let keys = dir.path().join("keys.yaml");
    std::fs::write(
        &keys,
        format!(
            "keys:\n  - {{id: k_hourly, sha256: {}, subject: billing, rate_limit: {{rate: 1/h, burst: 1}}}}\n",
            format::hex(&format::digest(&key))
        ),
    )
    .unwrap();
    let body = |level: &str| {
        format!(
            "api_keys: {{file: {}}}\ntelemetry: {{log_level: {level}}}\n",
            keys.display()
        )
    };
    let config = dir.path().join("config.yaml");
    let running = start_watching(&config, &body("warn")).await;
    let mut client = client(&running).await;
    let call = |client: &mut AuthClient<Channel>| {
        let request = pb::AuthenticateRequest {
            credential: Some(pb::Credential {
                kind: Some(pb::credential::Kind::ApiKey(key.clone())),
            }),
            ..Default::default()
        };
        let mut client = client.clone();
        async move { reason(&client.authenticate(request).await.unwrap().into_inner()) }
    };
    assert_eq!(call(&mut client).await, None);
    assert_eq!(call(&mut client).await, Some(Reason::RateLimited));
    let generation = running.shared.generation();
    let staged = config.with_extension("staged");
    std::fs::write(
        &staged,
        format!(
            "server: {{grpc_listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0, limits: {{max_queue_delay: 0s}}}}\n{}",
            body("error")
        ),
    )
    .unwrap();
    std::fs::rename(&staged, &config).unwrap();
    let shared = running.shared.clone();
    eventually(Duration::from_secs(10), move || {
        shared.generation() > generation
    })
    .await;
    assert_eq!(
        call(&mut client).await,
        Some(Reason::RateLimited),
        "still limited after the reload"
    );
    running.shutdown().await.unwrap();
}
