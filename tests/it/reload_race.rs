//! A reload never loses a change: rapid writes to a large key file while requests run,
//! including the pattern that used to lose a revocation (a harmless edit, then a
//! `disabled: true` 0.2-0.4 s later, while the first build still reads the file). After the
//! last write settles, the serving generation reflects the file on disk within 2 s, every
//! round; the generation and last-reload metrics say so too.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::*;
use portcullis::{
    keys::api_keys::format,
    pb::{self, Reason},
};

/// The key file: `count` keys, the first being `watched` (disabled or not), and a
/// `revision` in every record's metadata so that each write differs.
fn key_file(keys: &[String], disabled: bool, revision: usize) -> String {
    let mut text = String::from("keys:\n");
    for (i, key) in keys.iter().enumerate() {
        let disabled = if i == 0 && disabled {
            ", disabled: true"
        } else {
            ""
        };
        text.push_str(&format!(
            "  - {{id: k{i}, sha256: {}, subject: s{i}, metadata: {{revision: \"{revision}\"}}{disabled}}}\n",
            format::hex(&format::digest(key))
        ));
    }
    text
}

/// Replaces the file atomically (write a sibling, rename over), as Kubernetes and most
/// editors do: a reader never sees half a file.
fn write(path: &Path, text: &str) {
    let staged = path.with_extension("tmp");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

async fn is_revoked(
    client: &mut pb::auth_client::AuthClient<tonic::transport::Channel>,
    key: &str,
) -> bool {
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
    match reason(&response) {
        None => false,
        Some(Reason::Revoked) => true,
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_generation_reflects_the_final_files_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..2000)
        .map(|_| format::generate("pcl").unwrap())
        .collect();
    let keys_path = dir.path().join("keys.yaml");
    write(&keys_path, &key_file(&keys, false, 0));
    let config_path = dir.path().join("portcullis.yaml");
    let running = start_watching(
        &config_path,
        &format!("api_keys: {{prefix: pcl, file: {}}}\n", keys_path.display()),
    )
    .await;

    // Load: requests for the watched key and another one all along.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for other in [keys[0].clone(), keys[1999].clone()] {
        let (stop, served) = (stop.clone(), served.clone());
        let mut client = client(&running).await;
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = is_revoked(&mut client, &other).await;
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let mut client = client(&running).await;
    let mut revision = 1;
    // The watcher wakes 200 ms after the first event and builds; the real change lands at
    // offsets that walk across that build, so some round writes while a build reads.
    for (round, offset) in (170..=330).step_by(8).enumerate() {
        let final_disabled = round % 2 == 0;
        if round % 4 == 0 {
            // A burst of rapid writes of both states first.
            for i in 0..6 {
                write(&keys_path, &key_file(&keys, i % 2 == 0, revision));
                revision += 1;
                tokio::time::sleep(Duration::from_millis(5 * (i as u64 % 3))).await;
            }
        }
        // A harmless edit, then the real change `offset` ms later.
        write(&keys_path, &key_file(&keys, !final_disabled, revision));
        revision += 1;
        tokio::time::sleep(Duration::from_millis(offset)).await;
        write(&keys_path, &key_file(&keys, final_disabled, revision));
        revision += 1;
        let settled = Instant::now();
        loop {
            if is_revoked(&mut client, &keys[0]).await == final_disabled {
                break;
            }
            assert!(
                settled.elapsed() < Duration::from_secs(2),
                "round {round}: the final file (disabled: {final_disabled}) is not served 2 s after the last write"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // And it stays that way: no late build of an older write replaces it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            is_revoked(&mut client, &keys[0]).await,
            final_disabled,
            "round {round}: a stale generation replaced the final one"
        );
    }
    stop.store(true, Ordering::Relaxed);
    // Once writes stop, nothing rebuilds: the watcher's own reads are not changes.
    let settled = running.shared.generation();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        running.shared.generation(),
        settled,
        "no reload without a change"
    );
    for task in load {
        task.await.unwrap();
    }
    assert!(
        served.load(Ordering::Relaxed) > 0,
        "requests ran during the writes"
    );
    assert!(
        running.shared.generation() > 20,
        "every round applied generations"
    );

    let metrics = reqwest::get(format!("http://{}/metrics", running.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} exported:\n{metrics}"))
    };
    assert!(value("portcullis_config_generation") > 20.0);
    assert_eq!(value("portcullis_config_last_reload_successful"), 1.0);
    assert!(value("portcullis_config_last_reload_success_timestamp_seconds") > 1.7e9);
    running.shutdown().await.unwrap();
}

/// A config refused because it names a key file that does not exist yet is applied as soon
/// as that file appears: the watcher follows the files the config on disk names.
#[tokio::test]
async fn a_refused_config_is_applied_once_the_file_it_names_appears() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..2).map(|_| format::generate("pcl").unwrap()).collect();
    let first = dir.path().join("first.yaml");
    write(&first, &key_file(&keys[..1], false, 0));
    let config_path = dir.path().join("portcullis.yaml");
    let running = start_watching(
        &config_path,
        &format!("api_keys: {{prefix: pcl, file: {}}}\n", first.display()),
    )
    .await;
    let mut client = client(&running).await;
    assert!(!is_revoked(&mut client, &keys[0]).await);
    // Point the config at a file in a new directory that does not exist yet: refused.
    let later_dir = dir.path().join("later");
    let later = later_dir.join("keys.yaml");
    write(
        &config_path,
        &format!(
            "server: {{grpc_listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0}}\napi_keys: {{prefix: pcl, file: {}}}\n",
            later.display()
        ),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let generation = running.shared.generation();
    // The file appears (its directory too): the change is applied without touching the config.
    std::fs::create_dir_all(&later_dir).unwrap();
    write(&later, &key_file(&keys, true, 1));
    let started = Instant::now();
    while !is_revoked(&mut client, &keys[0]).await {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the config naming the new file was never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running.shared.generation() > generation);
    running.shutdown().await.unwrap();
}
