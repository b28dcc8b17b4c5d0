//! The file source: watch every `--policies` path and reload on change.
//!
//! Directories are watched (recursively), never single files: editors
//! replace files by renaming a temporary over them, and Kubernetes ConfigMap
//! mounts swap a `..data` link, both of which a watch on the file itself
//! would miss. A path given as a file is watched through its directory. Any
//! change under a watched directory (dot-entries included, since that is
//! where ConfigMap versions live) schedules one reload after a quiet period;
//! the reload reads every path again and publishes the set only if it
//! loads and differs.

use super::{rebuild, Sources};
use crate::server::State;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("cannot start the file watcher: {0}")]
    Start(notify::Error),
    #[error("cannot start the reload thread: {0}")]
    Thread(std::io::Error),
}

/// Watches until dropped.
pub struct FileWatcher {
    _debouncer: notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
    /// Ends when the debouncer (and with it the channel) is dropped.
    _thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher").finish_non_exhaustive()
    }
}

/// The directories to watch for `paths`, and how.
fn watch_targets(paths: &[PathBuf]) -> Vec<(PathBuf, RecursiveMode)> {
    let mut out: Vec<(PathBuf, RecursiveMode)> = Vec::new();
    for p in paths {
        let target = if p.is_dir() {
            (p.clone(), RecursiveMode::Recursive)
        } else {
            let parent = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            (parent.to_path_buf(), RecursiveMode::NonRecursive)
        };
        match out.iter_mut().find(|(d, _)| *d == target.0) {
            Some(existing) if target.1 == RecursiveMode::Recursive => existing.1 = target.1,
            Some(_) => {}
            None => out.push(target),
        }
    }
    out
}

/// Starts watching `paths`; changes are applied to `state` after `quiet`
/// without further events.
pub fn watch(
    state: Arc<State>,
    sources: Arc<Sources>,
    quiet: Duration,
) -> Result<FileWatcher, WatchError> {
    let (tx, rx) = mpsc::channel::<()>();
    let mut debouncer = new_debouncer(quiet, None, move |res: DebounceEventResult| match res {
        Ok(events) => {
            // Reading the files during a reload must not schedule another.
            if events
                .iter()
                .any(|e| !matches!(e.event.kind, EventKind::Access(_)))
            {
                let _ = tx.send(());
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "file watch error");
            }
            // Events may have been lost: reload to be sure.
            let _ = tx.send(());
        }
    })
    .map_err(WatchError::Start)?;
    for (dir, mode) in watch_targets(&sources.paths) {
        debouncer
            .watch(&dir, mode)
            .map_err(|source| WatchError::Watch {
                path: dir.clone(),
                source,
            })?;
        tracing::info!(dir = %dir.display(), "watching policies");
    }
    let thread = std::thread::Builder::new()
        .name("celgate-reload".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Coalesce whatever else arrived meanwhile into this reload.
                while rx.try_recv().is_ok() {}
                rebuild(&state, &sources);
            }
        })
        .map_err(WatchError::Thread)?;
    Ok(FileWatcher {
        _debouncer: debouncer,
        _thread: thread,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_watched_through_their_directory_once() {
        let dir = std::env::temp_dir();
        let t = watch_targets(&[dir.join("a.yaml"), dir.join("b.yaml"), dir.clone()]);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0], (dir, RecursiveMode::Recursive));
        let t = watch_targets(&[PathBuf::from("policy.yaml")]);
        assert_eq!(t[0].0, PathBuf::from("."));
    }
}
