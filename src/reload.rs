//! Hot reload: watches the config file and every key or secret file it names (their
//! directories, so Kubernetes' symlink swaps are seen), and when their contents change loads
//! and validates the whole new config, builds a new pipeline and swaps it in atomically.
//! An invalid change is refused and logged; the old pipeline keeps serving.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::{
    config::{self, Config},
    pipeline::{BuildMode, Pipeline},
    server::Shared,
    telemetry::metrics::{METRICS, ResultLabels},
};

/// Files whose contents make up the running config.
fn watched_files(config_path: &Path, config: &Config) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::from([config_path.to_path_buf()]);
    for issuer in &config.issuers {
        files.extend(issuer.jwks_file.clone());
        files.extend(issuer.public_key_files.iter().map(|f| f.path().clone()));
        files.extend(issuer.hmac_secret.as_ref().and_then(|s| s.file().cloned()));
        files.extend(
            issuer
                .introspection
                .as_ref()
                .and_then(|i| i.client_secret.file().cloned()),
        );
    }
    files.extend(config.api_keys.file.clone());
    files.extend(config.basic.htpasswd_file.clone());
    files.extend(config.client_certificates.ca_files.iter().cloned());
    files
}

/// A fingerprint of the watched files' contents (missing files count as empty).
fn fingerprint(files: &BTreeSet<PathBuf>) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for file in files {
        context.update(file.as_os_str().as_encoded_bytes());
        let bytes = std::fs::read(file).unwrap_or_default();
        context.update(&(bytes.len() as u64).to_le_bytes());
        context.update(&bytes);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// Outcome of one reload attempt.
#[derive(Debug)]
pub enum ReloadOutcome {
    Applied,
    Refused(String),
}

/// Loads `config_path`, builds a pipeline and swaps it in; the old one keeps serving on error.
pub fn reload_now(config_path: &Path, shared: &Shared) -> ReloadOutcome {
    let config = match config::load_file(config_path) {
        Ok(config) => config,
        Err(errors) => return ReloadOutcome::Refused(errors.to_string()),
    };
    let current = shared.pipeline.load_full();
    if config.server != current.config.server {
        warn!("listener and shutdown settings change only on restart; keeping the running ones");
    }
    match Pipeline::build(config, &shared.client, Some(&current), BuildMode::Serve) {
        Ok(pipeline) => {
            shared.pipeline.store(Arc::new(pipeline));
            ReloadOutcome::Applied
        }
        Err(errors) => ReloadOutcome::Refused(errors.to_string()),
    }
}

/// Starts the watcher task; it ends when `shutdown` turns true.
pub fn spawn_watcher(
    config_path: PathBuf,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = events_tx.send(());
            }
        });
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(err) => {
                error!(error = %err, "cannot watch the config; hot reload is off");
                return;
            }
        };
        let mut files = watched_files(&config_path, &shared.pipeline.load().config);
        let mut dirs = watch_dirs(&mut watcher, &files, &BTreeSet::new());
        let mut last = fingerprint(&files);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                event = events.recv() => if event.is_none() { return },
            }
            // Debounce: editors and Kubernetes write in several steps.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while events.try_recv().is_ok() {}
            let now = fingerprint(&files);
            if now == last {
                continue;
            }
            match reload_now(&config_path, &shared) {
                ReloadOutcome::Applied => {
                    METRICS
                        .config_reloads
                        .get_or_create(&ResultLabels { result: "success" })
                        .inc();
                    info!("configuration reloaded");
                    files = watched_files(&config_path, &shared.pipeline.load().config);
                    dirs = watch_dirs(&mut watcher, &files, &dirs);
                    last = fingerprint(&files);
                }
                ReloadOutcome::Refused(errors) => {
                    METRICS
                        .config_reloads
                        .get_or_create(&ResultLabels { result: "failure" })
                        .inc();
                    error!(errors = %errors, "configuration change refused; the previous configuration keeps serving");
                    last = now;
                }
            }
        }
    });
}

/// Watches the parent directory of every file (non-recursively); returns the set watched.
fn watch_dirs(
    watcher: &mut notify::RecommendedWatcher,
    files: &BTreeSet<PathBuf>,
    already: &BTreeSet<PathBuf>,
) -> BTreeSet<PathBuf> {
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|file| {
            file.parent().map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
        })
        .collect();
    for dir in dirs.difference(already) {
        if let Err(err) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            warn!(dir = %dir.display(), error = %err, "cannot watch directory");
        }
    }
    dirs
}
