//! Hot reload: watches the config file and every key or secret file it names (their
//! directories, so Kubernetes' symlink swaps are seen), and when their contents change loads
//! and validates the whole new config, builds a new pipeline and swaps it in atomically.
//! An invalid change is refused and logged; the old pipeline keeps serving.
//!
//! No change can be lost: the fingerprint recorded for a generation is taken *before* its
//! build reads the files, a change seen while a build runs always triggers another build,
//! and the files are also compared on a timer in case the file system drops an event. So
//! once writes settle, the serving generation is built from the files on disk.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{error, warn};

use crate::{
    build::{self, BuildMode},
    config::{self, Config},
    serving::Shared,
    telemetry,
};

/// Files whose contents make up the running config: the config file and what it reads.
fn watched_files(config_path: &Path, config: &Config) -> BTreeSet<PathBuf> {
    let mut files = config.files();
    files.insert(config_path.to_path_buf());
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
    /// Serving now, as this generation.
    Applied(u64),
    Refused(String),
}

/// Loads `config_path`, builds a pipeline and swaps it in; the old one keeps serving on error.
pub fn reload_now(config_path: &Path, shared: &Shared) -> ReloadOutcome {
    let config = match config::load_file(config_path) {
        Ok(config) => config,
        Err(errors) => return ReloadOutcome::Refused(errors.to_string()),
    };
    let current = shared.pipeline.load_full();
    let tls = match (&shared.tls, &config.server.tls) {
        (Some(_), Some(files)) => match crate::tls::server_config(files) {
            Ok(tls) => Some(tls),
            Err(err) => return ReloadOutcome::Refused(format!("server.tls: {err}")),
        },
        _ => None,
    };
    if restart_only_settings_differ(&config.server, &current.config.server) {
        warn!(
            "listener and shutdown settings (other than the TLS files) change only on restart; keeping the running ones"
        );
    }
    match build::pipeline(
        config,
        &shared.client,
        &shared.metrics,
        Some(&current),
        BuildMode::Serve,
    ) {
        Ok(pipeline) => {
            if let (Some(serving), Some(tls)) = (&shared.tls, tls) {
                serving.store(tls);
            }
            ReloadOutcome::Applied(shared.install(pipeline))
        }
        Err(errors) => ReloadOutcome::Refused(errors.to_string()),
    }
}

/// Whether `new` differs from the running server settings in what a reload cannot apply:
/// anything but the TLS files (turning TLS on or off included).
fn restart_only_settings_differ(
    new: &config::ServerConfig,
    running: &config::ServerConfig,
) -> bool {
    let mut new = new.clone();
    if new.tls.is_some() && running.tls.is_some() {
        new.tls.clone_from(&running.tls);
    }
    new != *running
}

/// How often the files are compared even without a file-system event.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Editors and Kubernetes write in several steps: wait this long after an event.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Starts the watcher task; it ends when `shutdown` turns true. `built_from` is the
/// fingerprint of the files the running generation was built from, taken before that build
/// read them (see [`fingerprint_now`]).
pub fn spawn_watcher(
    config_path: PathBuf,
    shared: Arc<Shared>,
    built_from: [u8; 32],
    changed_since_load: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Only changes count: opening or reading a file (the watcher's own fingerprint and
            // the build read them) must not trigger another reload.
            if event.is_ok_and(|event| is_change(&event.kind)) {
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
        let mut last = built_from;
        // Set when something changed while a build ran: build again without waiting.
        let mut dirty = changed_since_load;
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !dirty {
                let event = tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    event = events.recv() => if event.is_none() { return } else { true },
                    _ = resync.tick() => false,
                };
                if event {
                    tokio::time::sleep(DEBOUNCE).await;
                }
            }
            while events.try_recv().is_ok() {}
            // The files the config on disk names now (a refused config may name new ones).
            let (on_disk, before) = {
                let path = config_path.clone();
                match tokio::task::spawn_blocking(move || {
                    let files = files_named_by(&path);
                    let print = fingerprint(&files);
                    (files, print)
                })
                .await
                {
                    Ok(found) => found,
                    Err(_) => continue,
                }
            };
            if on_disk != files {
                dirs = watch_dirs(&mut watcher, &on_disk, &dirs);
                files = on_disk;
            }
            if before == last && !dirty {
                continue;
            }
            dirty = false;
            let outcome = {
                let (path, shared) = (config_path.clone(), shared.clone());
                tokio::task::spawn_blocking(move || reload_now(&path, &shared))
                    .await
                    .unwrap_or_else(|err| ReloadOutcome::Refused(format!("reload failed: {err}")))
            };
            last = before;
            // Anything written while the build ran may not be in it.
            while events.try_recv().is_ok() {
                dirty = true;
            }
            match outcome {
                ReloadOutcome::Applied(generation) => {
                    telemetry::reload_finished(&shared.metrics, Ok(generation));
                    let now_watched = watched_files(&config_path, &shared.pipeline.load().config);
                    if now_watched != files {
                        // The new generation reads other files: fingerprint those next time.
                        dirs = watch_dirs(&mut watcher, &now_watched, &dirs);
                        files = now_watched;
                        dirty = true;
                    }
                }
                ReloadOutcome::Refused(errors) => {
                    telemetry::reload_finished(&shared.metrics, Err(&errors));
                }
            }
        }
    });
}

/// The fingerprint of the files `config_path` makes up right now, taken before the first
/// build reads them.
pub fn fingerprint_now(config_path: &Path) -> [u8; 32] {
    fingerprint(&files_named_by(config_path))
}

/// The config file and every file the config on disk names (what parsed of it, when it has
/// errors: a refused config's new files are watched too).
fn files_named_by(config_path: &Path) -> BTreeSet<PathBuf> {
    let (config, _) = config::load_file_partial(config_path);
    watched_files(config_path, &config)
}

/// Whether a file-system event changes contents or names (not an open, read or close).
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
    }
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
